"""Intermediate-feature match losses: ``f(feature_S, feature_T, mask=None) -> scalar``.

Notation: B batch, H heads, L sequence length, D hidden size. ``mask`` is the ``(B, L)`` inputs mask (bool,
int or float; converted with ``.to(float32)``, so its values act as weights ``m_{b,i}``), and
``n_b = sum_i m_{b,i}``.

Two families of attention losses:

* ``att_mse_loss``, ``att_mse_sum_loss``, ``att_ce_loss``, ``att_ce_mean_loss`` are TextBrewer's. They expect
  **pre-softmax scores** with an additive mask (about -10000) on padded keys, and reproduce TextBrewer's
  numbers, quirks included: without a mask every score ``<= -1e-3`` is treated as padding (set to 0, or its
  teacher probability set to 0), which also drops legitimately negative scores; with ``-inf`` masked scores
  some of them give NaN, exactly as TextBrewer does.
* ``att_probs_mse_loss``, ``att_probs_ce_loss``, ``att_probs_kl_loss`` (new) take **probabilities**, what
  Hugging Face models return with ``output_attentions=True``. Masked positions are selected away before any
  arithmetic, so zeros, ``-inf`` or NaN there never reach the value or the gradient.

Every loss computes in float32 (half and bfloat16 inputs are upcast; float64 stays float64) and returns a
0-d tensor. Where TextBrewer divided 0 by 0 and gave NaN, brewkit gives a defined value: an all-zero mask gives
0; a fully padded example in ``fsp`` gives that example Gram matrices of 0 (it adds 0 but still counts in the
mean); a zero [CLS] vector in ``pkd`` stays a zero vector (see each docstring). Every finite value is
TextBrewer's.

Differences from TextBrewer common to all: TextBrewer computed in the input dtype; the arguments are named
``feature_S, feature_T`` (TextBrewer: ``attention_S`` / ``state_S``, ...); wrong ranks, mismatched shapes and
masks that do not fit raise :class:`~brewkit.errors.ConfigError` naming the argument instead of broadcasting.
Per-function differences are listed in each docstring.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .checks import float_tensor, shape_of

#: Smallest positive normal float32; ``log`` of probabilities is clamped here so that 0 stays finite.
_TINY = torch.finfo(torch.float32).tiny
#: TextBrewer's threshold: unmasked attention scores ``<= -1e-3`` are treated as padding.
_PAD_THRESHOLD = -1e-3


# -- argument checks ---------------------------------------------------------------------------------------
def _ranked(x: object, name: str, ranks: tuple[int, ...], layout: str) -> torch.Tensor:
    t = float_tensor(x, name)
    if t.dim() not in ranks:
        raise ConfigError(f"must have shape {layout}, got shape {shape_of(t)}", name)
    return t


def _common_dtype(*xs: torch.Tensor) -> list[torch.Tensor]:
    dtype = xs[0].dtype
    for x in xs[1:]:
        dtype = torch.promote_types(dtype, x.dtype)
    return [x.to(dtype) for x in xs]


def _same_shape(a: torch.Tensor, b: torch.Tensor, layout: str, hint: str = "") -> None:
    if a.shape != b.shape:
        raise ConfigError(f"feature_S and feature_T must have the same shape {layout}, got {shape_of(a)} and "
                          f"{shape_of(b)}{hint}", "feature_T")


def _mask_weights(mask: object, like: torch.Tensor, batch: int, length: int, layout: str) -> torch.Tensor:
    """The ``(B, L)`` mask as weights in ``like``'s dtype and device."""
    if not isinstance(mask, torch.Tensor):
        raise ConfigError(f"must be a (B, L) tensor or None, got {type(mask).__name__}", "mask")
    if shape_of(mask) != (batch, length):
        raise ConfigError(f"must have shape (B, L) = {(batch, length)} to match features of shape {layout}, "
                          f"got {shape_of(mask)}", "mask")
    return mask.to(device=like.device, dtype=like.dtype)


def _attention_pair(feature_S: object, feature_T: object, *, same_heads: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    layout = "(B, H, L, L) or (B, L, L)"
    a_S = _ranked(feature_S, "feature_S", (3, 4), layout)
    a_T = _ranked(feature_T, "feature_T", (3, 4), layout)
    if same_heads or a_S.dim() != a_T.dim():
        _same_shape(a_S, a_T, layout)
    elif a_S.shape[0] != a_T.shape[0] or a_S.shape[2:] != a_T.shape[2:]:
        # The head axis is reduced away, so only (B, L, L) has to agree.
        raise ConfigError(f"feature_S and feature_T must agree on (B, L, L) (the head counts may differ), got "
                          f"{shape_of(a_S)} and {shape_of(a_T)}", "feature_T")
    a_S, a_T = _common_dtype(a_S, a_T)
    return a_S, a_T


def _attention_mask(mask: object, attention: torch.Tensor) -> torch.Tensor:
    """The ``(B, L)`` mask for ``(B, [H,] L, L)`` attention; masking query and key needs a square map."""
    if attention.shape[-1] != attention.shape[-2]:
        raise ConfigError(f"a mask applies to square (..., L, L) self-attention maps, got shape "
                          f"{shape_of(attention)}", "feature_S")
    return _mask_weights(mask, attention, attention.shape[0], attention.shape[-1], "(B, [H,] L, L)")


def _query_key(m: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of the ``(B, L)`` mask that broadcast over ``(B, [H,] L_query, L_key)``: ``(m_query, m_key)``."""
    if rank == 4:
        return m[:, None, :, None], m[:, None, None, :]
    return m[:, :, None], m[:, None, :]


def _heads(attention: torch.Tensor) -> int:
    return attention.shape[1] if attention.dim() == 4 else 1


def _drop_padding(x: torch.Tensor) -> torch.Tensor:
    """TextBrewer's unmasked clipping: values ``<= -1e-3`` become 0 (NaN is kept, as in TextBrewer)."""
    return torch.where(x <= _PAD_THRESHOLD, torch.zeros_like(x), x)


def _two_layers(x: object, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(x, torch.Tensor) or not isinstance(x, Sequence) or len(x) != 2:
        got = f"a tensor of shape {shape_of(x)}" if isinstance(x, torch.Tensor) else (
            f"a {type(x).__name__} of length {len(x)}" if isinstance(x, Sequence) else type(x).__name__)
        raise ConfigError(f"a two-layer loss takes a list of two (B, L, D) tensors [X0, X1] (use list layers "
                          f"such as layer_S: [0, 1]), got {got}", name)
    x0 = _ranked(x[0], f"{name}[0]", (3,), "(B, L, D)")
    x1 = _ranked(x[1], f"{name}[1]", (3,), "(B, L, D)")
    if x0.shape[:2] != x1.shape[:2]:
        raise ConfigError(f"{name}[0] and {name}[1] must agree on (B, L), got {shape_of(x0)} and {shape_of(x1)}",
                          name)
    x0, x1 = _common_dtype(x0, x1)
    return x0, x1


def _safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator``, and 0 when the denominator is 0 (then the numerator is 0 as well)."""
    return numerator / torch.where(denominator > 0, denominator, torch.ones_like(denominator))


# -- TextBrewer's attention losses (pre-softmax scores) ----------------------------------------------------
def att_mse_loss(feature_S: torch.Tensor, feature_T: torch.Tensor, mask: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """MSE of attention scores (TextBrewer ``attention_mse``).

    Shapes: ``(B, H, L, L)`` (or ``(B, L, L)``, taken as H = 1), mask ``(B, L)``.

    * No mask: ``A~ = 0 where A <= -1e-3 else A`` for S and T separately, ``loss = mean (A~^S - A~^T)^2``.
      The clipping is meant to drop padded keys and also drops every negative score; on probabilities it is
      a no-op, so this loss also suits Hugging Face attentions.
    * Mask (query and key): ``loss = sum_{b,h,i,j} m_{bi} m_{bj} (A^S - A^T)^2 / (H * sum_b n_b^2)``, with no
      clipping: ``-inf`` scores in both models give NaN, as in TextBrewer (use ``att_probs_mse_loss``).

    Difference from TextBrewer: 3-D input also works with a mask (TextBrewer's masked branch needs 4-D).
    """
    a_S, a_T = _attention_pair(feature_S, feature_T)
    if mask is None:
        return F.mse_loss(_drop_padding(a_S), _drop_padding(a_T))
    m = _attention_mask(mask, a_S)
    m_query, m_key = _query_key(m, a_S.dim())
    total = ((a_S - a_T) ** 2 * m_query * m_key).sum()
    return _safe_divide(total, _heads(a_S) * (m.sum(dim=1) ** 2).sum())


def att_mse_sum_loss(feature_S: torch.Tensor, feature_T: torch.Tensor, mask: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """MSE of head-summed attention scores (TextBrewer ``attention_mse_sum``).

    Shapes: ``(B, H, L, L)`` (summed over heads first: ``S = sum_h A_h``; S and T may have different H) or
    ``(B, L, L)`` (used as is), mask ``(B, L)``.

    * No mask: ``loss = mean_{b,i,j} (S~^S - S~^T)^2`` with the ``<= -1e-3 -> 0`` clipping after the head sum.
    * Mask: ``loss = sum_{b,i,j} m_{bi} m_{bj} (S^S - S^T)^2 / sum_b n_b^2``.
    """
    a_S, a_T = _attention_pair(feature_S, feature_T, same_heads=False)
    if a_S.dim() == 4:
        a_S, a_T = a_S.sum(dim=1), a_T.sum(dim=1)
    if mask is None:
        return F.mse_loss(_drop_padding(a_S), _drop_padding(a_T))
    m = _attention_mask(mask, a_S)
    m_query, m_key = _query_key(m, 3)
    return _safe_divide(((a_S - a_T) ** 2 * m_query * m_key).sum(), (m.sum(dim=1) ** 2).sum())


def _scores_ce(a_S: torch.Tensor, a_T: torch.Tensor, mask: object) -> torch.Tensor:
    """TextBrewer's attention cross-entropy on ``(B, H, L, L)`` or ``(B, L, L)`` scores."""
    p_T = F.softmax(a_T, dim=-1)
    log_q_S = F.log_softmax(a_S, dim=-1)
    if mask is None:
        p_T = torch.where(a_T <= _PAD_THRESHOLD, torch.zeros_like(p_T), p_T)
        return -(p_T * log_q_S).sum(dim=-1).mean()
    m = _attention_mask(mask, a_S)
    m_key = _query_key(m, a_S.dim())[1]
    m_row = m[:, None, :] if a_S.dim() == 4 else m  # broadcasts over the (B, [H,] L) query rows
    total = ((p_T * log_q_S * m_key).sum(dim=-1) * m_row).sum()
    return -_safe_divide(total, _heads(a_S) * m.sum())


def att_ce_loss(feature_S: torch.Tensor, feature_T: torch.Tensor, mask: torch.Tensor | None = None
                ) -> torch.Tensor:
    """Cross-entropy between softmaxed attention scores (TextBrewer ``attention_ce``).

    Shapes: ``(B, H, L, L)`` (or ``(B, L, L)``, taken as H = 1), mask ``(B, L)``.
    ``P^T = softmax_j(A^T)``, ``log Q^S = log_softmax_j(A^S)``, over the key axis.

    * No mask: ``P~^T = 0 where A^T <= -1e-3 else P^T`` (not renormalised),
      ``loss = mean_{b,h,i} [ - sum_j P~^T_{bhij} log Q^S_{bhij} ]``.
    * Mask: ``loss = - sum_{b,h,i} m_{bi} sum_j m_{bj} P^T log Q^S / (H * sum_b n_b)``; the softmax still
      runs over all keys.

    Student scores of ``-inf`` give NaN (``0 * -inf``), as in TextBrewer; on probabilities this loss
    applies a second softmax. Use ``att_probs_ce_loss`` for Hugging Face attentions.
    Difference from TextBrewer: 3-D input also works with a mask.
    """
    a_S, a_T = _attention_pair(feature_S, feature_T)
    return _scores_ce(a_S, a_T, mask)


def att_ce_mean_loss(feature_S: torch.Tensor, feature_T: torch.Tensor, mask: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """Cross-entropy of head-averaged attention scores (TextBrewer ``attention_ce_mean``).

    Shapes: ``(B, H, L, L)`` (scores averaged over heads first, ``A = mean_h A_h``, a mean of logits; S and T
    may have different H) or ``(B, L, L)``, mask ``(B, L)``. Then as :func:`att_ce_loss` on ``(B, L, L)``:
    no mask, thresholded and averaged over the ``B * L`` rows; mask, divided by ``sum_b n_b``.
    """
    a_S, a_T = _attention_pair(feature_S, feature_T, same_heads=False)
    if a_S.dim() == 4:
        a_S, a_T = a_S.mean(dim=1), a_T.mean(dim=1)
    return _scores_ce(a_S, a_T, mask)


# -- attention probabilities (new) -------------------------------------------------------------------------
def _probs_pair(feature_S: object, feature_T: object, mask: object
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(P_S, P_T, m)`` with every position outside the valid (query, key) pairs replaced by 0."""
    p_S, p_T = _attention_pair(feature_S, feature_T)
    if mask is None:
        return p_S, p_T, None
    m = _attention_mask(mask, p_S)
    m_query, m_key = _query_key(m, p_S.dim())
    valid = (m_query * m_key) != 0
    zero = torch.zeros((), dtype=p_S.dtype, device=p_S.device)
    return torch.where(valid, p_S, zero), torch.where(valid, p_T, zero), m


def _probs_rows_mean(per_entry: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
    """Sum ``per_entry`` (B, [H,] L, L) over valid keys, then average over valid query rows."""
    if m is None:
        return per_entry.sum(dim=-1).mean()
    rank = per_entry.dim()
    m_query, m_key = _query_key(m, rank)
    per_row = (per_entry * m_key).sum(dim=-1, keepdim=True)
    return _safe_divide((per_row * m_query).sum(), _heads(per_entry) * m.sum())


def att_probs_mse_loss(feature_S: torch.Tensor, feature_T: torch.Tensor, mask: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """MSE of attention probabilities (new).

    Shapes: ``(B, H, L, L)`` or ``(B, L, L)`` (H = 1) probabilities, mask ``(B, L)``.

    * No mask: ``loss = mean (P^S - P^T)^2``.
    * Mask: ``loss = sum_{b,h,i,j} m_{bi} m_{bj} (P^S - P^T)^2 / (H * sum_b n_b^2)``; positions outside the
      valid (query, key) pairs are never read, so 0, ``-inf`` or NaN there is harmless. An all-zero mask
      gives 0.

    Unlike ``att_mse_loss`` there is no ``-1e-3`` clipping (probabilities are never negative).
    """
    p_S, p_T, m = _probs_pair(feature_S, feature_T, mask)
    if m is None:
        return F.mse_loss(p_S, p_T)
    m_query, m_key = _query_key(m, p_S.dim())
    total = ((p_S - p_T) ** 2 * m_query * m_key).sum()
    return _safe_divide(total, _heads(p_S) * (m.sum(dim=1) ** 2).sum())


def att_probs_ce_loss(feature_S: torch.Tensor, feature_T: torch.Tensor, mask: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """Cross-entropy ``-sum_j P^T log P^S`` of attention probabilities (new).

    Shapes: ``(B, H, L, L)`` or ``(B, L, L)`` (H = 1) probabilities, mask ``(B, L)``.
    Per query row ``(b, h, i)``: ``c = - sum_j m_{bj} P^T_{bhij} log max(P^S_{bhij}, tiny)`` (tiny = smallest
    normal float32, so 0 probabilities stay finite); ``loss = sum m_{bi} c / (H * sum_b n_b)``, i.e. the
    mean over valid query rows. Without a mask, the mean of ``c`` over all ``B * H * L`` rows. Masked
    positions are never read; an all-zero mask gives 0.
    """
    p_S, p_T, m = _probs_pair(feature_S, feature_T, mask)
    per_entry = -p_T * torch.log(p_S.clamp_min(_TINY))
    return _probs_rows_mean(per_entry, m)


def att_probs_kl_loss(feature_S: torch.Tensor, feature_T: torch.Tensor, mask: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """KL divergence ``KL(P^T || P^S)`` of attention probabilities, per query row (new; MiniLM-style).

    Shapes and averaging as :func:`att_probs_ce_loss`; per row
    ``k = sum_j m_{bj} P^T (log max(P^T, tiny) - log max(P^S, tiny))``, so ``0 log 0`` counts as 0 and
    identical inputs give exactly 0.
    """
    p_S, p_T, m = _probs_pair(feature_S, feature_T, mask)
    per_entry = p_T * (torch.log(p_T.clamp_min(_TINY)) - torch.log(p_S.clamp_min(_TINY)))
    return _probs_rows_mean(per_entry, m)


# -- hidden-state losses -----------------------------------------------------------------------------------
def _hidden_pair(feature_S: object, feature_T: object) -> tuple[torch.Tensor, torch.Tensor]:
    layout = "(B, L, D) or (B, D)"
    h_S = _ranked(feature_S, "feature_S", (2, 3), layout)
    h_T = _ranked(feature_T, "feature_T", (2, 3), layout)
    hint = " (add proj: ['linear', D_S, D_T] to the match)" if h_S.shape[:-1] == h_T.shape[:-1] else ""
    _same_shape(h_S, h_T, layout, hint)
    h_S, h_T = _common_dtype(h_S, h_T)
    return h_S, h_T


def hid_mse_loss(feature_S: torch.Tensor, feature_T: torch.Tensor, mask: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """MSE of hidden states (TextBrewer ``hidden_mse``).

    Shapes: ``(B, L, D)``, mask ``(B, L)``.

    * No mask: ``loss = mean_{b,i,d} (h^S - h^T)^2``.
    * Mask: ``loss = sum_{b,i,d} m_{bi} (h^S - h^T)^2 / (D * sum_b n_b)``.

    Difference from TextBrewer: pooled ``(B, D)`` features are accepted and the mask is ignored for them
    (there are no positions to mask; TextBrewer broadcast the mask into a value B times too large).
    """
    h_S, h_T = _hidden_pair(feature_S, feature_T)
    if mask is None or h_S.dim() == 2:
        return F.mse_loss(h_S, h_T)
    m = _mask_weights(mask, h_S, h_S.shape[0], h_S.shape[1], "(B, L, D)")
    return _safe_divide(((h_S - h_T) ** 2 * m[:, :, None]).sum(), m.sum() * h_S.shape[-1])


def cos_loss(feature_S: torch.Tensor, feature_T: torch.Tensor, mask: torch.Tensor | None = None
             ) -> torch.Tensor:
    """1 - cosine similarity per position (TextBrewer ``cos``; DistilBERT's cosine embedding loss).

    Shapes: ``(B, L, D)``, mask ``(B, L)``. Rows: all ``B * L`` positions, or those with ``m != 0``.
    ``loss = mean_rows [1 - cos(h^S_r, h^T_r)]`` with ``F.cosine_embedding_loss``'s epsilon.

    Differences from TextBrewer: non-contiguous inputs work; pooled ``(B, D)`` features are accepted (each
    example is one row; the mask is ignored).
    """
    h_S, h_T = _hidden_pair(feature_S, feature_T)
    if mask is not None and h_S.dim() == 3:
        keep = _mask_weights(mask, h_S, h_S.shape[0], h_S.shape[1], "(B, L, D)") != 0
        rows_S, rows_T = h_S[keep], h_T[keep]
    else:
        rows_S, rows_T = h_S.reshape(-1, h_S.shape[-1]), h_T.reshape(-1, h_T.shape[-1])
    target = torch.ones(rows_S.shape[0], dtype=rows_S.dtype, device=rows_S.device)
    if rows_S.shape[0] == 0:  # every position masked: a defined 0 (TextBrewer: NaN)
        return (rows_S.sum() + rows_T.sum()) * 0
    return F.cosine_embedding_loss(rows_S, rows_T, target, reduction="mean")


def pkd_loss(feature_S: torch.Tensor, feature_T: torch.Tensor, mask: torch.Tensor | None = None
             ) -> torch.Tensor:
    """MSE of L2-normalised [CLS] vectors (TextBrewer ``pkd``; BERT-PKD).

    Shapes: ``(B, L, D)`` (position 0 is used) or ``(B, D)`` (used as is), independently for S and T.
    ``u = x / ||x||_2`` and ``loss = mean_b ||u^S_b - u^T_b||^2 = mean_b (2 - 2 cos_b)``. The mask is ignored.

    Difference from TextBrewer: a zero [CLS] vector stays 0 instead of being divided by its zero norm, so it
    contributes ``||u_other||^2`` (1, or 0 when both are zero) instead of TextBrewer's NaN; every other
    value is TextBrewer's (no epsilon is added).
    """
    layout = "(B, L, D) or (B, D)"
    x_S = _ranked(feature_S, "feature_S", (2, 3), layout)
    x_T = _ranked(feature_T, "feature_T", (2, 3), layout)
    cls_S = x_S[:, 0] if x_S.dim() == 3 else x_S
    cls_T = x_T[:, 0] if x_T.dim() == 3 else x_T
    if cls_S.shape != cls_T.shape:
        raise ConfigError(f"the [CLS] vectors must have the same shape (B, D), got {shape_of(cls_S)} (from "
                          f"{shape_of(x_S)}) and {shape_of(cls_T)} (from {shape_of(x_T)})", "feature_T")
    cls_S, cls_T = _common_dtype(cls_S, cls_T)
    u_S = _safe_divide(cls_S, torch.norm(cls_S, dim=1, keepdim=True))  # a zero vector stays 0 (TextBrewer: NaN)
    u_T = _safe_divide(cls_T, torch.norm(cls_T, dim=1, keepdim=True))
    return (u_S - u_T).pow(2).sum(dim=-1).mean()


# -- two-layer losses --------------------------------------------------------------------------------------
def fsp_loss(feature_S: Sequence[torch.Tensor], feature_T: Sequence[torch.Tensor],
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """MSE of FSP / Gram matrices of two layers (TextBrewer ``fsp``, alias ``gram``).

    Shapes: ``feature_S = [X0, X1]`` and ``feature_T = [Y0, Y1]``, each ``(B, L, D)``; S and T must have the
    same widths (use ``proj``, which is applied to both student tensors). Mask ``(B, L)``.

    * No mask: ``G = X0^T X1 / L`` (``(B, D, D)``), ``loss = mean_{b,d,e} (G^S - G^T)^2``.
    * Mask: ``X <- X * m``, ``G_b = X0_b^T X1_b / n_b``, same mean over ``B * D * D``. An example with
      ``n_b = 0`` (fully padded) has ``G_b = 0`` for both models, so it adds 0 to the sum but still counts in
      the mean (TextBrewer: NaN, from 0 / 0).
    """
    s0, s1 = _two_layers(feature_S, "feature_S")
    t0, t1 = _two_layers(feature_T, "feature_T")
    s0, s1, t0, t1 = _common_dtype(s0, s1, t0, t1)
    if (s0.shape[0], s0.shape[-1], s1.shape[-1]) != (t0.shape[0], t0.shape[-1], t1.shape[-1]):
        raise ConfigError(f"fsp compares (B, D, D) Gram matrices, so student and teacher need the same batch "
                          f"and widths (add proj: ['linear', D_S, D_T] to the match); got student "
                          f"{shape_of(s0)}, {shape_of(s1)} and teacher {shape_of(t0)}, {shape_of(t1)}", "feature_T")
    if mask is None:
        gram_S = torch.bmm(s0.transpose(1, 2), s1) / s1.shape[1]
        gram_T = torch.bmm(t0.transpose(1, 2), t1) / t1.shape[1]
    else:
        if s0.shape[1] != t0.shape[1]:
            raise ConfigError(f"with a mask, student and teacher need the same length L, got {shape_of(s0)} and "
                              f"{shape_of(t0)}", "feature_T")
        m = _mask_weights(mask, s0, s0.shape[0], s0.shape[1], "(B, L, D)")[:, :, None]  # (B, L, 1)
        lengths = m.sum(dim=1, keepdim=True)  # (B, 1, 1)
        gram_S = _safe_divide(torch.bmm((s0 * m).transpose(1, 2), s1 * m), lengths)
        gram_T = _safe_divide(torch.bmm((t0 * m).transpose(1, 2), t1 * m), lengths)
    return F.mse_loss(gram_S, gram_T)


def mmd_loss(feature_S: Sequence[torch.Tensor], feature_T: Sequence[torch.Tensor],
             mask: torch.Tensor | None = None, *, legacy_pypi_scaling: bool = False) -> torch.Tensor:
    """MSE of token-by-token similarity matrices of two layers (TextBrewer ``mmd``, alias ``nst``).

    Shapes: ``feature_S = [X0, X1]``, each ``(B, L, D_S)``, and ``feature_T = [Y0, Y1]``, each ``(B, L, D_T)``;
    ``D_S`` and ``D_T`` may differ. Mask ``(B, L)``.
    ``G = X0 X1^T / D_own`` (``(B, L, L)``, each model divided by its own width).

    * No mask: ``loss = mean_{b,i,j} (G^S - G^T)^2``.
    * Mask: ``loss = sum_{b,i,j} m_{bi} m_{bj} (G^S - G^T)^2 / sum_b n_b^2`` (GitHub master).

    ``legacy_pypi_scaling=True`` reproduces PyPI 0.2.1.post1, whose masked branch divides both Gram matrices
    by the sequence length L instead of ``D_own`` (the unmasked branch is the same in both versions).
    The name is loose: this is an MSE between Gram matrices, not NST's polynomial-kernel MMD.
    """
    s0, s1 = _two_layers(feature_S, "feature_S")
    t0, t1 = _two_layers(feature_T, "feature_T")
    s0, s1, t0, t1 = _common_dtype(s0, s1, t0, t1)
    for name, x0, x1 in (("feature_S", s0, s1), ("feature_T", t0, t1)):
        if x0.shape[-1] != x1.shape[-1]:
            raise ConfigError(f"{name}[0] and {name}[1] must have the same width D, got {shape_of(x0)} and "
                              f"{shape_of(x1)}", name)
    if s0.shape[:2] != t0.shape[:2]:
        raise ConfigError(f"mmd compares (B, L, L) similarity matrices, so student and teacher need the same "
                          f"(B, L); got {shape_of(s0)} and {shape_of(t0)}", "feature_T")
    scale_dim = 1 if (mask is not None and legacy_pypi_scaling) else 2
    gram_S = torch.bmm(s0, s1.transpose(1, 2)) / s1.shape[scale_dim]
    gram_T = torch.bmm(t0, t1.transpose(1, 2)) / t1.shape[scale_dim]
    if mask is None:
        return F.mse_loss(gram_S, gram_T)
    m = _mask_weights(mask, s0, s0.shape[0], s0.shape[1], "(B, L, D)")
    m_query, m_key = _query_key(m, 3)
    return _safe_divide(((gram_S - gram_T) ** 2 * m_query * m_key).sum(), (m.sum(dim=1) ** 2).sum())
