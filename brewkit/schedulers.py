"""Loss-weight and temperature schedulers.

Weight schedulers map training progress ``x = global_step / total_steps`` in (0, 1] to a weight.
TextBrewer's two (``linear_decay``, ``linear_growth``) *replace* the configured weight after the first
optimizer step; the ``scaled_*`` ones multiply the configured base weight instead (registered with
``scales_base=True``, which the distillers read).

Temperature schedulers map ``(logits_S, logits_T, base_temperature)`` to a number or a per-row tensor of
shape ``logits.shape[:-1]`` (rows = examples, or valid tokens after ``logits_mask``). The builders
(``flsw``, ``cwsm``) take parameters and return such a scheduler.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .errors import ConfigError

TemperatureFn = Callable[[torch.Tensor, torch.Tensor, float], "float | torch.Tensor"]


# -- weight schedulers ----------------------------------------------------------------------------------
def linear_decay_weight_scheduler(x: float) -> float:
    """1 - x; replaces the configured weight after the first step (TextBrewer), ending at 0."""
    return 1.0 - x


def linear_growth_weight_scheduler(x: float) -> float:
    """x; replaces the configured weight after the first step (TextBrewer), ending at 1."""
    return x


def cosine_decay_weight_scheduler(x: float) -> float:
    """(1 + cos(pi x)) / 2 times the configured base weight: base -> 0 along a half cosine."""
    return 0.5 * (1.0 + math.cos(math.pi * x))


# -- temperature schedulers -----------------------------------------------------------------------------
def constant_temperature_scheduler(logits_S: torch.Tensor, logits_T: torch.Tensor,
                                   base_temperature: float) -> float:
    """tau = base temperature."""
    return base_temperature


def _clamp(tau: torch.Tensor, tau_min: float | None) -> torch.Tensor:
    return tau if tau_min is None else tau.clamp_min(tau_min)


def _is_number(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _check_tau_min(tau_min: float | None, name: str) -> None:
    if tau_min is not None and not (_is_number(tau_min) and tau_min > 0):
        raise ConfigError(f"tau_min must be a positive number or None, got {tau_min!r}", name)


def _check_number(value: object, name: str, positive: bool = False) -> None:
    """Parameters are checked when the scheduler is built (config time), not at the first training step."""
    if not _is_number(value) or (positive and value <= 0):
        raise ConfigError(f"must be a {'positive ' if positive else ''}finite number, got {value!r}", name)


def flsw_temperature_scheduler_builder(beta: float, gamma: float, eps: float = 1e-4,
                                       tau_min: float | None = None) -> TemperatureFn:
    """Build flsw (arXiv:1911.07471): tau_r = tau_0 + beta * (mean_r' w_r' - w_r), w_r = (1 - cos_r)^gamma.

    ``cos_r`` is the cosine between the student and teacher logit rows (each divided by ``||row|| + eps``).
    Rows where the models disagree get a lower temperature. Difference from TextBrewer: the optional
    ``tau_min`` clamps tau_r >= tau_min (TextBrewer can produce zero or negative temperatures); with the
    default ``tau_min=None`` the numbers are TextBrewer's.
    """
    _check_number(beta, "flsw.beta")
    _check_number(gamma, "flsw.gamma")
    _check_number(eps, "flsw.eps", positive=True)
    _check_tau_min(tau_min, "flsw.tau_min")

    def flsw_temperature_scheduler(logits_S: torch.Tensor, logits_T: torch.Tensor,
                                   base_temperature: float) -> torch.Tensor:
        with torch.no_grad():
            s, t = logits_S.detach().float(), logits_T.detach().float()
            v = s / (torch.norm(s, dim=-1, keepdim=True) + eps)
            u = t / (torch.norm(t, dim=-1, keepdim=True) + eps)
            w = torch.pow(1 - (v * u).sum(dim=-1), gamma)
            return _clamp(base_temperature + beta * (w.mean() - w), tau_min)

    return flsw_temperature_scheduler


def cwsm_temperature_scheduler_builder(beta: float, *args, tau_min: float | None = None) -> TemperatureFn:
    """Build cwsm: tau_r = tau_0 + beta * (mean_r' w_r' - w_r), w_r = 1 / (max_c softmax(z^S_r)_c + 1e-3).

    Rows where the student is less confident get a lower temperature. Extra positional arguments are
    ignored, as in TextBrewer. Difference from TextBrewer: the keyword ``tau_min`` (e.g.
    ``['cwsm', {'beta': 1, 'tau_min': 0.5}]``) clamps tau_r >= tau_min; by default there is no clamp.
    """
    _check_number(beta, "cwsm.beta")
    _check_tau_min(tau_min, "cwsm.tau_min")

    def cwsm_temperature_scheduler(logits_S: torch.Tensor, logits_T: torch.Tensor,
                                   base_temperature: float) -> torch.Tensor:
        with torch.no_grad():
            q = F.softmax(logits_S.detach().float(), dim=-1).max(dim=-1).values
            w = 1.0 / (q + 1e-3)
            return _clamp(base_temperature + beta * (w.mean() - w), tau_min)

    return cwsm_temperature_scheduler
