"""Knowledge-distillation losses on logits: ``f(logits_S, logits_T, temperature=1, temperature_squared=False)``.

Shapes: ``logits_S`` and ``logits_T`` are ``(..., C)`` with the same shape; every leading position is a *row*
(``B`` examples, ``B * L`` tokens, or ``M`` tokens after a ``logits_mask``).

``temperature`` (tau) is a Python number, a 0-d tensor, or a tensor of shape ``logits.shape[:-1]`` (one value
per row, as the ``flsw`` / ``cwsm`` schedulers return); a per-row tensor is broadcast over the classes.

``temperature_squared=True`` multiplies each row's loss by that row's tau^2 before averaging (Hinton's
factor, which keeps the gradient scale independent of tau). It is off by default, so the default numbers of
``kd_ce_loss`` and ``kd_mse_loss`` are TextBrewer's, which never multiplies by tau^2.

Every loss computes in float32: half and bfloat16 inputs are upcast first (float64 inputs stay float64),
and the result is a 0-d tensor. Differences from TextBrewer common to all: TextBrewer computed in the input
dtype, and bad arguments (mismatched shapes, a temperature tensor of the wrong shape, a temperature <= 0)
raise :class:`~brewkit.errors.ConfigError` instead of broadcasting or dividing by zero.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError


# -- shared argument handling (match.py uses these too) ------------------------------------------------------
def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for half / bfloat16 / float32 inputs, float64 for float64 inputs."""
    return torch.promote_types(x.dtype, torch.float32)


def _float_tensor(x: object, name: str) -> torch.Tensor:
    """``x`` as a floating tensor in its compute dtype, or a ConfigError naming the argument."""
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"must be a torch.Tensor, got {type(x).__name__}", name)
    if not x.is_floating_point():
        raise ConfigError(f"must be a floating-point tensor, got dtype {x.dtype}", name)
    return x.to(_compute_dtype(x))


def _shape(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def _logits_pair(logits_S: object, logits_T: object) -> tuple[torch.Tensor, torch.Tensor]:
    zS = _float_tensor(logits_S, "logits_S")
    zT = _float_tensor(logits_T, "logits_T")
    if zS.dim() < 1:
        raise ConfigError("must have at least one dimension (the classes, last)", "logits_S")
    if zS.shape != zT.shape:
        raise ConfigError(f"logits_S and logits_T must have the same shape (..., C), got {_shape(zS)} and "
                          f"{_shape(zT)}", "logits_T")
    dtype = torch.promote_types(zS.dtype, zT.dtype)
    return zS.to(dtype), zT.to(dtype)


def _temperature(temperature: object, logits: torch.Tensor) -> float | torch.Tensor:
    """tau ready to divide ``logits`` by: a float, a 0-d tensor, or a ``(..., 1)`` tensor (per row)."""
    if isinstance(temperature, torch.Tensor):
        if temperature.dim() == 0:
            return temperature.to(device=logits.device, dtype=logits.dtype)
        if temperature.shape == logits.shape[:-1]:
            return temperature.to(device=logits.device, dtype=logits.dtype).unsqueeze(-1)
        raise ConfigError(f"a temperature tensor must be 0-d or have one value per row, i.e. shape "
                          f"{_shape(logits)[:-1]} for logits of shape {_shape(logits)}; got shape "
                          f"{_shape(temperature)}", "temperature")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ConfigError(f"must be a positive number or a tensor, got {temperature!r}", "temperature")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"must be a positive finite number, got {temperature!r}", "temperature")
    return float(temperature)


def _scale_by_tau_squared(loss: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
    """``loss`` (per row ``(...)`` or per element ``(..., C)``) times tau^2 of its row."""
    if isinstance(tau, torch.Tensor) and tau.dim() > 0 and loss.dim() == tau.dim() - 1:
        tau = tau.squeeze(-1)  # per-row loss: drop the class axis of the (..., 1) temperature
    return loss * tau ** 2


# -- the losses ----------------------------------------------------------------------------------------------
def _mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over all elements; 0 (not NaN) when there are none, e.g. a ``logits_mask`` that keeps no row."""
    return x.mean() if x.numel() else x.sum()


def kd_ce_loss(logits_S: torch.Tensor, logits_T: torch.Tensor, temperature: float | torch.Tensor = 1,
               temperature_squared: bool = False) -> torch.Tensor:
    """Soft cross-entropy (TextBrewer ``'ce'``).

    ``loss = mean_r [ - sum_c softmax(z^T_r / tau_r)_c * log_softmax(z^S_r / tau_r)_c ]`` over all rows ``r``.

    This equals ``KL(p_T || p_S) + H(p_T)``: the gradient is the KL's, but the value includes the teacher's
    entropy and never reaches 0 (use :func:`kd_kl_loss` for the KL itself). The gradient with respect to the
    student logits is ``(softmax(z^S / tau) - softmax(z^T / tau)) / (tau * rows)``.
    Difference from TextBrewer: ``temperature_squared`` (off by default).
    """
    zS, zT = _logits_pair(logits_S, logits_T)
    tau = _temperature(temperature, zS)
    p_T = F.softmax(zT / tau, dim=-1)
    per_row = -(p_T * F.log_softmax(zS / tau, dim=-1)).sum(dim=-1)
    if temperature_squared:
        per_row = _scale_by_tau_squared(per_row, tau)
    return _mean(per_row)


def kd_mse_loss(logits_S: torch.Tensor, logits_T: torch.Tensor, temperature: float | torch.Tensor = 1,
                temperature_squared: bool = False) -> torch.Tensor:
    """Mean squared error of tempered logits (TextBrewer ``'mse'``).

    ``loss = mean over all elements (rows and classes) of (z^S / tau - z^T / tau)^2``.
    With ``temperature_squared`` each element is multiplied by its row's tau^2 before the mean.
    Difference from TextBrewer: ``temperature_squared`` (off by default).
    """
    zS, zT = _logits_pair(logits_S, logits_T)
    tau = _temperature(temperature, zS)
    per_element = (zS / tau - zT / tau) ** 2
    if temperature_squared:
        per_element = _scale_by_tau_squared(per_element, tau)
    return _mean(per_element)


def kd_kl_loss(logits_S: torch.Tensor, logits_T: torch.Tensor, temperature: float | torch.Tensor = 1,
               temperature_squared: bool = False) -> torch.Tensor:
    """KL divergence ``KL(p_T || p_S)`` of tempered softmaxes, batch mean (new; not in TextBrewer).

    ``loss = mean_r sum_c p^T_{r,c} (log p^T_{r,c} - log p^S_{r,c})`` with ``p = softmax(z / tau)`` and the
    mean over all rows ``r`` (PyTorch's ``reduction='batchmean'`` when rows are examples). Terms where
    ``p^T = 0`` count as 0 (``0 log 0 = 0``), so teacher logits of ``-inf`` give no NaN; equal logits give
    exactly 0. It equals ``kd_ce_loss`` minus the teacher entropy and has the same gradient.
    """
    zS, zT = _logits_pair(logits_S, logits_T)
    tau = _temperature(temperature, zS)
    log_p_T = F.log_softmax(zT / tau, dim=-1)
    log_p_S = F.log_softmax(zS / tau, dim=-1)
    p_T = log_p_T.exp()
    # Select before multiplying, so that -inf - (-inf) where p_T = 0 reaches neither value nor gradient.
    support = p_T > 0
    log_ratio = torch.where(support, log_p_T - log_p_S, torch.zeros_like(log_p_T))
    per_row = (p_T * log_ratio).sum(dim=-1)
    if temperature_squared:
        per_row = _scale_by_tau_squared(per_row, tau)
    return _mean(per_row)


def kd_bce_loss(logits_S: torch.Tensor, logits_T: torch.Tensor, temperature: float | torch.Tensor = 1,
                temperature_squared: bool = False) -> torch.Tensor:
    """Multi-label KD: binary cross-entropy against the teacher's tempered sigmoids (new; TextBrewer issue #50).

    ``loss = mean over all elements of BCE(sigmoid(z^S / tau), sigmoid(z^T / tau))``
    ``= mean [ -q log sigmoid(z^S/tau) - (1 - q) log(1 - sigmoid(z^S/tau)) ]`` with ``q = sigmoid(z^T / tau)``,
    computed stably from the logits. Each class is an independent yes/no decision (no softmax).
    """
    zS, zT = _logits_pair(logits_S, logits_T)
    tau = _temperature(temperature, zS)
    target = torch.sigmoid(zT / tau)
    per_element = F.binary_cross_entropy_with_logits(zS / tau, target, reduction="none")
    if temperature_squared:
        per_element = _scale_by_tau_squared(per_element, tau)
    return _mean(per_element)
