"""Adaptors turn a model's output (and its batch) into the dict the distillers read.

An adaptor is ``adaptor(batch, model_outputs) -> dict`` with keys from ``ADAPTOR_KEYS`` (``logits``,
``logits_mask``, ``losses``, ``inputs_mask``, ``labels``, ``hidden``, ``attention``) or a name appended to
``FEATURES``. ``hidden`` / ``attention`` / custom features are lists indexed by layer. Attention lists that hold
probabilities (as Hugging Face models return) are marked by wrapping them in :class:`AttentionProbs`.

Leave the adaptor out (``None``) for Hugging Face models: :func:`hf_adaptor` is used.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import AdaptorError
from .hf import AttentionProbs, hf_adaptor  # noqa: F401

_LISTED = ("logits", "logits_mask", "losses", "labels")


def normalize_output(out: object, who: str) -> dict:
    """TextBrewer's ``post_adaptor``: wrap ``logits``/``logits_mask``/``losses``/``labels`` in lists.

    ``who`` (e.g. ``"adaptor_S"``) is used in error messages.
    """
    if not isinstance(out, Mapping):
        raise AdaptorError(f"{who} must return a dict, got {type(out).__name__}")
    out = dict(out)
    for key in _LISTED:
        if key in out and out[key] is not None and not isinstance(out[key], (list, tuple)):
            out[key] = [out[key]]
    return out


def validate_output(out: dict, who: str, features: list[str], keys: list[str]) -> None:
    """Check an adaptor's dict once (on the first batch): known keys, lists of tensors where lists belong."""
    allowed = list(keys) + [f for f in features if f not in keys]
    for key, value in out.items():
        if key not in allowed:
            import difflib

            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise AdaptorError(f"{who} returned unknown key {key!r}.{hint} Allowed keys: {', '.join(allowed)} "
                               "(append a custom feature name to brewkit.presets.FEATURES)")
    for key in [k for k in out if k in features]:
        value = out[key]
        if isinstance(value, torch.Tensor):
            raise AdaptorError(f"{who}[{key!r}] must be a list of per-layer tensors, got a single tensor of shape "
                               f"{tuple(value.shape)}; wrap it as [tensor] (or list(...) over layers)")
        if not isinstance(value, (list, tuple)):
            raise AdaptorError(f"{who}[{key!r}] must be a list of per-layer tensors, got {type(value).__name__}")
    for key in _LISTED:
        for i, t in enumerate(out.get(key) or []):
            if not isinstance(t, torch.Tensor):
                raise AdaptorError(f"{who}[{key!r}][{i}] must be a tensor, got {type(t).__name__}")
    mask = out.get("inputs_mask")
    if mask is not None and not isinstance(mask, torch.Tensor):
        raise AdaptorError(f"{who}['inputs_mask'] must be a (B, L) tensor, got {type(mask).__name__}")
