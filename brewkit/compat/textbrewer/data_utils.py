"""``textbrewer.data_utils``: TextBrewer's token-list augmentations.

Each function takes a list of tokens and returns a new list; randomness comes from NumPy's global generator,
drawn in TextBrewer's order, so that ``np.random.seed(s)`` gives TextBrewer's outputs. (brewkit's own data
augmentation for distillation is ``data.augment`` in run files, :mod:`brewkit.data.augment`.)
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...errors import ConfigError

__all__ = ["deleting", "long_disorder", "masking", "n_gram_sampling", "short_disorder"]


def masking(tokens: list, p: float = 0.1, mask: str = "[MASK]") -> list:
    """Each token replaced by ``mask`` with probability ``p`` (one uniform draw per token, in order)."""
    return [mask if np.random.rand() < p else t for t in tokens]


def deleting(tokens: list, p: float = 0.1) -> list:
    """Each token dropped with probability ``p`` (one Binomial(1, 1 - p) draw per token, all at once)."""
    keep = np.random.binomial(1, 1 - p, len(tokens))
    return [t for t, k in zip(tokens, keep) if k == 1]


def n_gram_sampling(tokens: list, p_ng: Sequence[float] = (0.2, 0.2, 0.2, 0.2, 0.2),
                    l_ng: Sequence[int] = (1, 2, 3, 4, 5)) -> list:
    """A random contiguous span: its length drawn from ``l_ng`` with probabilities ``p_ng``, then its start
    uniformly among the positions where it fits."""
    span = int(np.random.choice(list(l_ng), p=list(p_ng)))
    if span > len(tokens):
        raise ConfigError(f"drew a span of {span} tokens from a list of {len(tokens)}; give longer token lists "
                          "or shorter l_ng", "n_gram_sampling.tokens")
    start = int(np.random.randint(0, len(tokens) - span + 1))
    return tokens[start:start + span]


def short_disorder(tokens: list, p: Sequence[float] = (0.9, 0.1, 0, 0, 0)) -> list:
    """Local shuffles, left to right. At each position one of five cases is drawn with probabilities ``p``:
    keep (move on by 1), swap with the next token (``ab -> ba``), swap with the one after (``abc -> cba``),
    or rotate three (``abc -> cab`` or ``abc -> bca``); after a change the scan skips the tokens it touched.
    At the second-to-last position every change is a swap with the last token."""
    out = list(tokens)
    n, i = len(out), 0
    while i < n - 1:
        case = int(np.random.choice([0, 1, 2, 3, 4], p=list(p)))
        if case != 0 and i == n - 2:
            case = 1
        if case == 0:
            i += 1
        elif case == 1:
            out[i], out[i + 1] = out[i + 1], out[i]
            i += 2
        else:
            a, b, c = out[i:i + 3]
            out[i:i + 3] = {2: [c, b, a], 3: [c, a, b], 4: [b, c, a]}[case]
            i += 3
    return out


def long_disorder(tokens: list, p: float = 0.1, length: float = 20) -> list:
    """Swap the two halves of a span of ``length`` tokens (rounded up to even; a ``length <= 1`` is a fraction
    of the list's length) with probability ``p`` at each position, left to right; after a swap the scan moves
    past the span."""
    out = list(tokens)
    if int(length) <= 1:
        length = len(tokens) * length
    length = (int(length) + 1) // 2 * 2
    half, i = length // 2, 0
    while i <= len(out) - length:
        if np.random.rand() < p:
            out[i:i + length] = out[i + half:i + length] + out[i:i + half]
            i += length
        else:
            i += 1
    return out
