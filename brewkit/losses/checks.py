"""Argument checks and small tensor helpers shared by the loss modules.

Every check raises :class:`~brewkit.errors.ConfigError` whose path names the argument (``logits_S``,
``temperature``, ``mask``, ...) and whose message says what is allowed. The helpers here are public so that
the loss modules (and user losses) import them by name instead of reaching into each other's private names.

Conventions for logit KD (``kd.py``, ``divergences.py``, ``vocab.py``): logits are ``(..., C)``; every
leading position is a *row*; the *counted* rows are those a ``mask`` / ``labels`` keep (all rows when both
are None).
"""
from __future__ import annotations

import math

import torch

from ..errors import ConfigError

#: The label value of positions that do not count (Hugging Face's and PyTorch's ``ignore_index``).
IGNORE_INDEX = -100


# -- dtypes and tensors --------------------------------------------------------------------------------------
def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """The dtype the losses compute in: float32 for half / bfloat16 / float32 inputs, float64 if any is float64.

    ``None`` entries are skipped.
    """
    dtype = torch.float32
    for t in tensors:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def shape_of(x: object) -> tuple[int, ...]:
    """``tuple(x.shape)``, for messages (``torch.Size`` prints as ``torch.Size([...])``)."""
    return tuple(x.shape)


def check_tensor(x: object, name: str, floating: bool = True) -> torch.Tensor:
    """``x`` itself; it must be a tensor (a floating-point one when ``floating``)."""
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"must be a torch.Tensor, got {type(x).__name__}", name)
    if floating and not x.is_floating_point():
        raise ConfigError(f"must be a floating-point tensor, got dtype {x.dtype}", name)
    return x


def float_tensor(x: object, name: str) -> torch.Tensor:
    """``x`` as a floating tensor in its compute dtype (see :func:`compute_dtype`)."""
    return check_tensor(x, name).to(compute_dtype(x))


def logits_pair(logits_S: object, logits_T: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Both logits tensors in one compute dtype; they must have the same shape ``(..., C)``."""
    zS = float_tensor(logits_S, "logits_S")
    zT = float_tensor(logits_T, "logits_T")
    if zS.dim() < 1:
        raise ConfigError("must have at least one dimension (the classes, last)", "logits_S")
    if zS.shape != zT.shape:
        raise ConfigError(f"logits_S and logits_T must have the same shape (..., C), got {shape_of(zS)} and "
                          f"{shape_of(zT)}", "logits_T")
    dtype = torch.promote_types(zS.dtype, zT.dtype)
    return zS.to(dtype), zT.to(dtype)


def check_same_device(tensors: dict[str, torch.Tensor | None]) -> None:
    """Every non-None tensor of ``{name: tensor}`` is on the first one's device."""
    present = [(n, t) for n, t in tensors.items() if t is not None]
    if not present:
        return
    first_name, first = present[0]
    for name, t in present[1:]:
        if t.device != first.device:
            raise ConfigError(f"is on {t.device} but {first_name} is on {first.device}; put every input on one "
                              "device", name)


# -- temperature ---------------------------------------------------------------------------------------------
def check_temperature_number(temperature: object) -> float:
    """A temperature given as a Python number: positive and finite."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ConfigError(f"must be a positive number or a tensor, got {temperature!r}", "temperature")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"must be a positive finite number, got {temperature!r}", "temperature")
    return float(temperature)


def temperature_value(temperature: object, logits: torch.Tensor) -> float | torch.Tensor:
    """tau ready to divide ``logits`` ``(..., C)`` by: a float, a 0-d tensor, or a ``(..., 1)`` tensor.

    A tensor temperature is 0-d, or has one value per row: shape ``logits.shape[:-1]``, or ``(N,)`` with
    ``N = logits.shape[:-1].numel()`` (the rows flattened in row-major order).
    """
    if isinstance(temperature, torch.Tensor):
        lead = shape_of(logits)[:-1]
        t = temperature.to(device=logits.device, dtype=logits.dtype)
        if t.dim() == 0:
            return t
        if shape_of(t) == lead:
            return t.unsqueeze(-1)
        if len(lead) > 1 and shape_of(t) == (math.prod(lead),):
            return t.reshape(lead + (1,))
        raise ConfigError(f"a temperature tensor must be 0-d or have one value per row, i.e. shape {lead} (or "
                          f"({math.prod(lead)},), the rows flattened) for logits of shape {shape_of(logits)}; "
                          f"got shape {shape_of(temperature)}", "temperature")
    return check_temperature_number(temperature)


def row_temperature(temperature: object, lead_shape: tuple[int, ...], rows: torch.Tensor | None,
                    n_rows: int, like: torch.Tensor) -> float | torch.Tensor:
    """tau of the counted rows: a float, a 0-d tensor, or a ``(n_rows,)`` tensor in ``like``'s dtype and device.

    ``rows`` holds the flat (row-major) indices of the counted rows, or is None when every row counts. A
    tensor temperature may have shape ``lead_shape``, ``(N,)`` (all rows flattened) or ``(n_rows,)`` (one
    value per counted row, in row-major order). The result is not detached.
    """
    if not isinstance(temperature, torch.Tensor):
        return check_temperature_number(temperature)
    tau = temperature.to(device=like.device, dtype=like.dtype)
    if tau.dim() == 0:
        return tau
    n_all = math.prod(lead_shape)
    if shape_of(tau) == tuple(lead_shape) or shape_of(tau) == (n_all,):
        tau = tau.reshape(-1)
        return tau if rows is None else tau[rows]
    if rows is not None and shape_of(tau) == (n_rows,):
        return tau  # already one value per counted row
    allowed = f"0-d, or one value per row: shape {tuple(lead_shape)} or ({n_all},)"
    if rows is not None:
        allowed += f", or ({n_rows},) for the rows that count (mask / labels)"
    raise ConfigError(f"a temperature tensor must be {allowed}; got shape {shape_of(tau)}", "temperature")


def scale_by_tau_squared(loss: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
    """``loss`` (per row ``(...)`` or per element ``(..., C)``) times tau^2 of its row.

    ``tau`` is as :func:`temperature_value` returns it (a number, 0-d, or ``(..., 1)``).
    """
    if isinstance(tau, torch.Tensor) and tau.dim() > 0 and loss.dim() == tau.dim() - 1:
        tau = tau.squeeze(-1)  # per-row loss: drop the class axis of the (..., 1) temperature
    return loss * tau ** 2


def mean_or_zero(x: torch.Tensor) -> torch.Tensor:
    """Mean over all elements; 0 (not NaN) when there are none, e.g. when no row counts."""
    return x.mean() if x.numel() else x.sum()


# -- which rows count ----------------------------------------------------------------------------------------
def counted_rows(mask: object, labels: object, ignore_index: object,
                 lead_shape: tuple[int, ...], device: torch.device) -> torch.Tensor | None:
    """The bool ``lead_shape`` tensor of rows that count, or None when every row counts.

    * ``mask``: bool (True counts) or an integer tensor of 0 / 1 (an ``attention_mask``-style mask), of shape
      ``lead_shape``. Integer values other than 0 and 1 are refused: a labels tensor passed as ``mask`` would
      otherwise count its ``-100`` positions; pass it as ``labels``.
    * ``labels``: an integer tensor of shape ``lead_shape``; rows where ``labels == ignore_index`` (default
      -100) do not count.

    Given both, a row counts when both say so.
    """
    keep = None
    if isinstance(mask, bool):
        raise ConfigError(f"got {mask!r}: the argument after the temperature is the row mask (a tensor); pass "
                          "temperature_squared=... by keyword", "mask")
    if mask is not None:
        check_tensor(mask, "mask", floating=False)
        if mask.is_floating_point() or mask.is_complex():
            raise ConfigError(f"must be a bool or integer (0/1) tensor, got dtype {mask.dtype}; use "
                              "mask.bool() for a 0/1 float mask", "mask")
        if shape_of(mask) != tuple(lead_shape):
            raise ConfigError(f"must have one entry per row, i.e. shape {tuple(lead_shape)} (the leading "
                              f"dimensions of the logits / hidden states); got shape {shape_of(mask)}", "mask")
        if mask.dtype != torch.bool:
            if bool(((mask != 0) & (mask != 1)).any()):
                raise ConfigError("an integer mask must hold only 0 and 1; for labels with ignore_index "
                                  "(-100) positions, pass labels=... instead of mask=...", "mask")
            mask = mask != 0
        keep = mask.to(device)
    if labels is not None:
        check_tensor(labels, "labels", floating=False)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ConfigError(f"must be an integer tensor of label ids, got dtype {labels.dtype}", "labels")
        if shape_of(labels) != tuple(lead_shape):
            raise ConfigError(f"must have one label per row, i.e. shape {tuple(lead_shape)}; got shape "
                              f"{shape_of(labels)}", "labels")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ConfigError(f"must be an integer label value, got {ignore_index!r}", "ignore_index")
        by_labels = (labels != ignore_index).to(device)
        keep = by_labels if keep is None else keep & by_labels
    return keep


def counted_row_indices(keep: torch.Tensor | None) -> torch.Tensor | None:
    """Flat (row-major) indices of the rows ``keep`` marks, or None (every row counts)."""
    return None if keep is None else keep.reshape(-1).nonzero().squeeze(1)


def counted_logits(logits_S: object, logits_T: object, temperature: object, mask: object = None,
                   labels: object = None, ignore_index: object = IGNORE_INDEX
                   ) -> tuple[torch.Tensor, torch.Tensor, float | torch.Tensor]:
    """``(z_S, z_T, tau)`` of the counted rows, checked and in the compute dtype.

    With no ``mask`` / ``labels`` the logits keep their shape ``(..., C)`` and tau is as
    :func:`temperature_value` returns it (``(..., 1)`` per row). Otherwise the counted rows are gathered into
    ``(M, C)`` (row-major order) and a per-row tau becomes ``(M, 1)`` (see :func:`row_temperature` for the
    shapes it may have).
    """
    zS, zT = logits_pair(logits_S, logits_T)
    lead = shape_of(zS)[:-1]
    keep = counted_rows(mask, labels, ignore_index, lead, zS.device)
    if keep is None:
        return zS, zT, temperature_value(temperature, zS)
    rows = counted_row_indices(keep)
    n_classes = zS.shape[-1]
    zS, zT = zS.reshape(-1, n_classes).index_select(0, rows), zT.reshape(-1, n_classes).index_select(0, rows)
    tau = row_temperature(temperature, lead, rows, rows.numel(), zS)
    if isinstance(tau, torch.Tensor) and tau.dim() == 1:
        tau = tau.unsqueeze(-1)
    return zS, zT, tau


def check_temperature_squared(temperature_squared: object) -> bool:
    """``temperature_squared`` must be a plain bool (a 0/1 or a string would silently mean something else)."""
    if not isinstance(temperature_squared, bool):
        raise ConfigError(f"must be True or False, got {temperature_squared!r}", "temperature_squared")
    return temperature_squared


# -- final-logit soft-capping --------------------------------------------------------------------------------
def check_softcap(softcap: object) -> float | None:
    """``None`` (no capping) or a positive finite number (Gemma-2's ``final_logit_softcapping``)."""
    if softcap is None:
        return None
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or not (
            math.isfinite(softcap) and softcap > 0):
        raise ConfigError(f"must be None or a positive finite number (the model config's "
                          f"final_logit_softcapping), got {softcap!r}", "softcap")
    return float(softcap)


def soft_cap(logits: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """``c * tanh(z / c)`` for ``softcap = c``; ``logits`` unchanged when ``softcap`` is None.

    Applied to raw logits, before the temperature. ``-inf`` becomes ``-c`` (as the model's own capping would).
    """
    if softcap is None:
        return logits
    return torch.tanh(logits / softcap) * softcap
