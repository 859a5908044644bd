"""EasyTransfer's knowledge-distillation losses (``easytransfer/losses/kd_loss.py``), in PyTorch.

Logits are ``[B, num_labels]``; ``labels`` are integer class ids ``[B]`` or ``[B, 1]``; the probe losses take
Python lists of per-layer logits (index 0 from the embeddings, the last entry from the final layer).

``faithful=True`` (the default) gives the original's numbers, quirks included (the quirks are listed below):

* ``'mse'``: ``0.5 * sum_{b,c} (t - s)^2`` -- ``tf.nn.l2_loss`` sums over the batch too, so it grows with B;
  ignores labels, temperature and task_balance.
* ``'xent'``: ``tb * mean_b CE(y_b, s_b) + (1 - tb) * mean_b[-sum_c softmax(t_b / T)_c log softmax(s_b)_c]``:
  only the teacher is softened; the student enters at T = 1; no T^2.
* any other string (``'kld'``, but also typos) -> the shipped ``kld_loss``, whose misplaced parenthesis makes it
  ``D = sum_{b,c} p_s * log(q_s - log q_t)`` with ``p_s = softmax(s/T)``, ``q_s = softmax(s/T + 1e-5)``,
  ``q_t = softmax(t/T + 1e-5)`` (the ``+1e-5`` cancels inside the softmax): not a divergence (it can be negative
  and is not minimised at p_s = p_t), summed over the batch, no stop-gradient on the teacher;
  ``loss = tb * mean_b CE(y_b, s_b) + (1 - tb) * D``. A warning is issued for names other than ``'kld'``.

``faithful=False`` gives the fixed versions:

* ``'mse'``: the mean of ``(t - s)^2`` over all elements (independent of the batch size);
* ``'xent'``: as above (it was already the intended formula), teacher detached;
* ``'kld'``: ``tb * mean_b CE(y_b, s_b) + (1 - tb) * mean_b sum_c p_s (log(p_s + 1e-5) - log(p_t + 1e-5))``, the
  per-example KL(student || teacher) at temperature T averaged over the batch (``kl_direction="teacher||student"``
  gives Hinton's KL(teacher || student)), teacher detached;
* unknown ``loss_type`` raises ``ConfigError``; ``temperature_squared=True`` multiplies the distillation term by T^2
  (neither mode applies it by default).

Both modes reject missing or non-integer labels for ``'xent'`` / ``'kld'`` (the original crashed), and accept
``[1, 1]`` labels (the original's ``squeeze`` crashed on a batch of one).
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..layer_maps import ceil_div

_KNOWN = ("mse", "xent", "kld")
_DIRECTIONS = ("student||teacher", "teacher||student")


def _check_logits(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> None:
    for name, x in (("teacher_logits", teacher_logits), ("student_logits", student_logits)):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise ConfigError(f"must be a floating-point tensor, got {type(x).__name__}", name)
    if teacher_logits.shape != student_logits.shape:
        raise ConfigError(f"teacher {tuple(teacher_logits.shape)} and student {tuple(student_logits.shape)} logits "
                          "must have the same shape", "student_logits")


def _labels(labels: torch.Tensor | None, logits: torch.Tensor, loss_type: str) -> torch.Tensor:
    if labels is None:
        raise ConfigError(f"loss_type {loss_type!r} needs integer class labels [B] or [B, 1]; got None", "labels")
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
        got = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ConfigError(f"must be integer class ids [B] or [B, 1] (sparse cross-entropy), got {got}", "labels")
    batch = logits.shape[0] if logits.dim() > 1 else 1
    if labels.numel() != batch or labels.dim() > 2:
        raise ConfigError(f"must have shape [B] or [B, 1] with B={batch}, got {tuple(labels.shape)}", "labels")
    return labels.reshape(-1).to(logits.device, torch.long)


def _task_ce(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mean_b CE(onehot(y_b), softmax(s_b)), the hard-label term of xent and kld."""
    return F.cross_entropy(student_logits.reshape(labels.shape[0], -1), labels)


def build_kd_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, task_balance: float = 0.3,
                  distill_temperature: float = 2.0, labels: torch.Tensor | None = None, loss_type: str = "mse",
                  faithful: bool = True, *, kl_direction: str = "student||teacher",
                  temperature_squared: bool = False, distill_tempreture: float | None = None) -> torch.Tensor:
    """EasyTransfer's ``build_kd_loss`` (the original spells the temperature ``distill_tempreture``).

    Args:
        teacher_logits, student_logits: ``[B, num_labels]``.
        task_balance: tb, the weight of the hard-label cross-entropy (xent, kld); ``1 - tb`` weighs distillation.
        distill_temperature: T.
        labels: integer ``[B]`` or ``[B, 1]``; needed by xent and kld.
        loss_type: ``'mse'``, ``'xent'`` or ``'kld'`` (faithful mode sends any other string to kld, as the
            original does).
        faithful: True for the original's numbers, False for the fixed versions (module docstring).
        kl_direction, temperature_squared: options of the fixed versions (``faithful=False``) only.
        distill_tempreture: the original's misspelt keyword, accepted as an alias of ``distill_temperature``.

    Returns:
        A scalar tensor.
    """
    _check_logits(teacher_logits, student_logits)
    if distill_tempreture is not None:
        distill_temperature = distill_tempreture
    if kl_direction not in _DIRECTIONS:
        raise ConfigError(f"must be one of {', '.join(map(repr, _DIRECTIONS))}; got {kl_direction!r}",
                          "kl_direction")
    if faithful and (kl_direction != "student||teacher" or temperature_squared):
        raise ConfigError("kl_direction and temperature_squared are options of the fixed losses; "
                          "pass faithful=False to use them", "faithful")
    if isinstance(distill_temperature, bool) or not isinstance(distill_temperature, (int, float)) \
            or not distill_temperature > 0:
        raise ConfigError(f"must be a number > 0, got {distill_temperature!r}", "distill_temperature")
    if not isinstance(loss_type, str):
        raise ConfigError(f"must be one of {', '.join(map(repr, _KNOWN))}; got {loss_type!r}", "loss_type")
    if not faithful and loss_type not in _KNOWN:
        raise ConfigError(f"unknown loss_type {loss_type!r}; known: {', '.join(map(repr, _KNOWN))}", "loss_type")
    tb, temp = float(task_balance), float(distill_temperature)
    t, s = teacher_logits, student_logits

    if loss_type == "mse":
        return F.mse_loss(s, t.detach()) if not faithful else 0.5 * ((t - s) ** 2).sum()

    y = _labels(labels, s, loss_type)
    task = _task_ce(s, y)
    if loss_type == "xent":
        target = F.softmax(t.detach() / temp, dim=-1)
        distill = -(target * F.log_softmax(s, dim=-1)).sum(-1).mean()
        if temperature_squared:
            distill = distill * temp**2
        return tb * task + (1 - tb) * distill

    if faithful:
        if loss_type != "kld":
            warnings.warn(f"loss_type {loss_type!r} is not 'mse', 'xent' or 'kld'; like EasyTransfer, brewkit "
                          "computes the (buggy) kld loss for it", stacklevel=2)
        p_s = F.softmax(s / temp, dim=-1)
        q_s = F.softmax(s / temp + 1e-5, dim=-1)
        q_t = F.softmax(t / temp + 1e-5, dim=-1)
        distill = (p_s * torch.log(q_s - torch.log(q_t))).sum()
        return tb * task + (1 - tb) * distill

    p_s = F.softmax(s / temp, dim=-1)
    p_t = F.softmax(t.detach() / temp, dim=-1)
    log_s, log_t = torch.log(p_s + 1e-5), torch.log(p_t + 1e-5)
    if kl_direction == "student||teacher":
        distill = (p_s * (log_s - log_t)).sum(-1).mean()
    else:
        distill = (p_t * (log_t - log_s)).sum(-1).mean()
    if temperature_squared:
        distill = distill * temp**2
    return tb * task + (1 - tb) * distill


def probe_layer_pairs(num_teacher: int, num_student: int, layer_map: str = "ceil") -> list[tuple[int, int]]:
    """``(student_index, teacher_index)`` pairs of :func:`build_kd_probes_loss` for lists of these lengths.

    ``T_L = num_teacher - 1``, ``S_L = num_student - 1``; student entries ``i = 0 .. S_L - 1`` (the final one is
    left to a separate ``build_kd_loss`` call, as in EasyTransfer) meet teacher entry ``ceil(i * T_L / S_L)``
    (``layer_map="ceil"``, Python 3) or ``floor(i * T_L / S_L)`` (``"floor"``: what the Python-2 runs computed).
    """
    if layer_map not in ("ceil", "floor"):
        raise ConfigError(f"must be 'ceil' or 'floor'; got {layer_map!r}", "layer_map")
    t_l, s_l = num_teacher - 1, num_student - 1
    if layer_map == "ceil":
        return [(i, ceil_div(i * t_l, s_l)) for i in range(s_l)]
    return [(i, i * t_l // s_l) for i in range(s_l)]


def build_kd_probes_loss(teacher_logits: Sequence[torch.Tensor], student_logits: Sequence[torch.Tensor],
                         task_balance: float = 0.3, distill_temperature: float = 2.0,
                         labels: torch.Tensor | None = None, loss_type: str = "mse", faithful: bool = True, *,
                         layer_map: str = "ceil", kl_direction: str = "student||teacher",
                         temperature_squared: bool = False, distill_tempreture: float | None = None
                         ) -> torch.Tensor:
    """EasyTransfer's ``build_kd_probes_loss``: the sum of :func:`build_kd_loss` over proportional probe pairs.

    ``teacher_logits`` / ``student_logits`` are lists of per-layer probe logits ``[B, num_labels]``. The student's
    last entry is excluded and student entry i meets teacher entry ``ceil(i * T_L / S_L)``
    (:func:`probe_layer_pairs`; e.g. 13 teacher / 5 student entries -> 0, 3, 6, 9; 3 / 5 -> 0, 1, 1, 2).
    A one-entry student list gives an empty sum, 0. ``faithful`` and the options act on each pair's loss;
    ``layer_map="floor"`` reproduces the Python-2 runs (the original's ``/`` was integer division there).
    """
    if distill_tempreture is not None:
        distill_temperature = distill_tempreture
    for name, xs in (("teacher_logits", teacher_logits), ("student_logits", student_logits)):
        if isinstance(xs, torch.Tensor) or not isinstance(xs, (list, tuple)) or not xs:
            raise ConfigError(f"must be a non-empty list of per-layer logits, got {type(xs).__name__}", name)
    total = torch.zeros((), dtype=student_logits[0].dtype if isinstance(student_logits[0], torch.Tensor)
                        else torch.float32,
                        device=student_logits[0].device if isinstance(student_logits[0], torch.Tensor) else None)
    for i, j in probe_layer_pairs(len(teacher_logits), len(student_logits), layer_map):
        total = total + build_kd_loss(teacher_logits[j], student_logits[i], task_balance, distill_temperature,
                                      labels, loss_type, faithful, kl_direction=kl_direction,
                                      temperature_squared=temperature_squared)
    return total
