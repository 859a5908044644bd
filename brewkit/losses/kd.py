"""Knowledge-distillation losses on logits: ``f(logits_S, logits_T, temperature=1, mask=None, **options)``.

Shapes: ``logits_S`` and ``logits_T`` are ``(..., C)`` with the same shape; every leading position is a *row*
(``B`` examples, ``B * L`` tokens, or ``M`` tokens after a ``logits_mask``).

``temperature`` (tau) is a Python number, a 0-d tensor, or a tensor with one value per row (shape
``logits.shape[:-1]``, or ``(N,)`` for the rows flattened; as the ``flsw`` / ``cwsm`` schedulers return); a
per-row tensor is broadcast over the classes.

``mask`` (optional, shape ``logits.shape[:-1]``, bool or 0/1 integers) and ``labels`` (optional, the same
shape, integer; rows whose label is ``ignore_index``, default -100, do not count) select the rows that count;
the loss averages over those (with ``mask=None`` and ``labels=None``, over all rows, as before). When no row
counts the loss is 0. A per-row temperature may then also have one value per counted row, ``(M,)``.

``temperature_squared=True`` multiplies each row's loss by that row's tau^2 before averaging (Hinton's
factor, which keeps the gradient scale independent of tau). It is off by default, so the default numbers of
``kd_ce_loss`` and ``kd_mse_loss`` are TextBrewer's, which never multiplies by tau^2.

``softcap=c`` applies final-logit soft-capping ``z -> c * tanh(z / c)`` to both models' logits before the
temperature (for models whose config has ``final_logit_softcapping``, e.g. Gemma-2); None (default) leaves
the logits as they are.

Every loss computes in float32: half and bfloat16 inputs are upcast first (float64 inputs stay float64),
and the result is a 0-d tensor. Differences from TextBrewer common to all: TextBrewer computed in the input
dtype, and bad arguments (mismatched shapes, a temperature tensor of the wrong shape, a temperature <= 0)
raise :class:`~brewkit.errors.ConfigError` instead of broadcasting or dividing by zero. With ``mask``,
``labels`` and ``softcap`` left at None every value is computed exactly as before they existed.

``kd_ce_loss`` and ``kd_kl_loss`` share their row formula with the divergence family
(:mod:`brewkit.losses.divergences`), so their chunked and fused forms (:mod:`brewkit.losses.vocab`) give
the same numbers.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .checks import (
    IGNORE_INDEX,
    check_softcap,
    check_temperature_squared,
    counted_logits,
    mean_or_zero,
    scale_by_tau_squared,
    soft_cap,
)
from .divergences import softmax_kd_loss


def elementwise_kd_loss(per_element: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                        logits_S: torch.Tensor, logits_T: torch.Tensor, temperature: float | torch.Tensor,
                        mask: torch.Tensor | None, temperature_squared: bool, softcap: float | None,
                        labels: torch.Tensor | None, ignore_index: int) -> torch.Tensor:
    """Mean over counted rows x classes of ``per_element(z^S / tau, z^T / tau)`` (the losses without a softmax:
    ``mse``, ``bce``), each element times its row's tau^2 with ``temperature_squared``."""
    check_temperature_squared(temperature_squared)
    softcap = check_softcap(softcap)
    zS, zT, tau = counted_logits(logits_S, logits_T, temperature, mask, labels, ignore_index)
    zS, zT = soft_cap(zS, softcap), soft_cap(zT, softcap)
    loss = per_element(zS / tau, zT / tau)
    if temperature_squared:
        loss = scale_by_tau_squared(loss, tau)
    return mean_or_zero(loss)


def kd_ce_loss(logits_S: torch.Tensor, logits_T: torch.Tensor, temperature: float | torch.Tensor = 1,
               mask: torch.Tensor | None = None, *, temperature_squared: bool = False,
               softcap: float | None = None, labels: torch.Tensor | None = None,
               ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Soft cross-entropy (TextBrewer ``'ce'``).

    ``loss = mean_r [ - sum_c softmax(z^T_r / tau_r)_c * log_softmax(z^S_r / tau_r)_c ]`` over the counted
    rows ``r`` (all rows by default).

    This equals ``KL(p_T || p_S) + H(p_T)``: the gradient is the KL's, but the value includes the teacher's
    entropy and never reaches 0 (use :func:`kd_kl_loss` for the KL itself). The gradient with respect to the
    student logits is ``(softmax(z^S / tau) - softmax(z^T / tau)) / (tau * rows)``.
    Differences from TextBrewer: ``mask`` / ``labels``, ``temperature_squared``, ``softcap`` (all off by
    default).
    """
    return softmax_kd_loss("ce", logits_S, logits_T, temperature, mask, temperature_squared=temperature_squared,
                           softcap=softcap, labels=labels, ignore_index=ignore_index)


def kd_mse_loss(logits_S: torch.Tensor, logits_T: torch.Tensor, temperature: float | torch.Tensor = 1,
                mask: torch.Tensor | None = None, *, temperature_squared: bool = False,
                softcap: float | None = None, labels: torch.Tensor | None = None,
                ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean squared error of tempered logits (TextBrewer ``'mse'``).

    ``loss = mean over the elements (counted rows x classes) of (z^S / tau - z^T / tau)^2``.
    With ``temperature_squared`` each element is multiplied by its row's tau^2 before the mean.
    Differences from TextBrewer: ``mask`` / ``labels``, ``temperature_squared``, ``softcap`` (all off by
    default).
    """
    return elementwise_kd_loss(lambda s, t: (s - t) ** 2, logits_S, logits_T, temperature, mask,
                               temperature_squared, softcap, labels, ignore_index)


def kd_kl_loss(logits_S: torch.Tensor, logits_T: torch.Tensor, temperature: float | torch.Tensor = 1,
               mask: torch.Tensor | None = None, *, temperature_squared: bool = False,
               softcap: float | None = None, labels: torch.Tensor | None = None,
               ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """KL divergence ``KL(p_T || p_S)`` of tempered softmaxes, batch mean (new; not in TextBrewer).

    ``loss = mean_r sum_c p^T_{r,c} (log p^T_{r,c} - log p^S_{r,c})`` with ``p = softmax(z / tau)`` and the
    mean over the counted rows ``r`` (all rows by default: PyTorch's ``reduction='batchmean'`` when rows are
    examples). Terms where ``p^T = 0`` count as 0 (``0 log 0 = 0``), so teacher logits of ``-inf`` give no
    NaN; equal logits give exactly 0. It equals ``kd_ce_loss`` minus the teacher entropy and has the same
    gradient. ``KD_LOSS_MAP['kl']``; the forward end of the divergence family (:mod:`.divergences`).
    """
    return softmax_kd_loss("kl", logits_S, logits_T, temperature, mask, temperature_squared=temperature_squared,
                           softcap=softcap, labels=labels, ignore_index=ignore_index)


def kd_bce_loss(logits_S: torch.Tensor, logits_T: torch.Tensor, temperature: float | torch.Tensor = 1,
                mask: torch.Tensor | None = None, *, temperature_squared: bool = False,
                softcap: float | None = None, labels: torch.Tensor | None = None,
                ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Multi-label KD: binary cross-entropy against the teacher's tempered sigmoids (new; TextBrewer issue #50).

    ``loss = mean over the elements (counted rows x classes) of BCE(sigmoid(z^S / tau), sigmoid(z^T / tau))``
    ``= mean [ -q log sigmoid(z^S/tau) - (1 - q) log(1 - sigmoid(z^S/tau)) ]`` with ``q = sigmoid(z^T / tau)``,
    computed stably from the logits. Each class is an independent yes/no decision (no softmax).
    """
    def per_element(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(s, torch.sigmoid(t), reduction="none")

    return elementwise_kd_loss(per_element, logits_S, logits_T, temperature, mask, temperature_squared, softcap,
                               labels, ignore_index)
