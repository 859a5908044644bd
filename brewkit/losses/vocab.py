"""Logit KD for large vocabularies, computed a chunk of rows at a time.

The plain losses (:func:`~brewkit.losses.kd.kd_ce_loss`, :func:`~brewkit.losses.kd.kd_kl_loss`) build several
float32 ``(N, C)`` tensors (tempered logits, both softmaxes, their product) and autograd keeps some of them
alive until backward. For ``N = 8192`` tokens and ``C = 32000`` classes each is 1 GB. The functions here
give the same value and gradients while holding at most one chunk of rows in float32:

* :func:`chunked_kd_loss` takes both logits tensors. Forward walks over chunks of rows and keeps only the
  running sum; backward walks again, recomputes the softmaxes of each chunk and writes that chunk of the
  gradient. The only ``(N, C)`` tensor it creates is the gradient of the student logits, in their dtype
  (float32 logits: one 1 GB tensor where the plain loss peaks near three).
* :func:`fused_linear_kd_loss` takes the student's final hidden states and output-layer weight instead of
  its logits, so even that gradient disappears: each chunk's logits ``h W^T + b`` are made, used and dropped,
  and backward accumulates the gradients of ``h``, ``W`` and ``b`` chunk by chunk. The teacher may be given
  the same way (``hidden_T``, ``weight_T``).

Rows and reduction are those of the plain losses: every leading position is a row, the loss is the mean over
rows (over the selected rows when a ``mask`` is given). With ``p = softmax(z / tau)`` per row:

* ``kind="ce"``: ``row loss = - sum_c p^T_c log p^S_c``            (TextBrewer's soft cross-entropy)
* ``kind="kl"``: ``row loss = sum_c p^T_c (log p^T_c - log p^S_c)`` (terms with ``p^T_c = 0`` count 0)

and ``temperature_squared=True`` multiplies each row's loss by its tau^2. Both kinds have the gradient
``(p^S - p^T) / tau`` (times tau^2 and ``1 / rows``) with respect to the student logits.

Precision: softmaxes are computed in float32 (float64 when an input is float64), as in the plain losses.
The temperature is a constant for autograd (the temperature schedulers return detached values). Teacher
logits / hidden states / weights that require grad get their gradients too (a frozen teacher's do not).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..errors import ConfigError
from .kd import _temperature

#: Default chunks: about this many elements per (rows x classes) float32 temporary: 16 MiB for chunked_kd_loss,
#: 64 MiB for fused_linear_kd_loss, whose matmuls run markedly faster on taller chunks.
_CHUNK_ELEMENTS = 1 << 22
_FUSED_CHUNK_ELEMENTS = 1 << 24
_KINDS = ("ce", "kl")


# -- argument checks -----------------------------------------------------------------------------------------
def _tensor(x: object, name: str, floating: bool = True) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"must be a torch.Tensor, got {type(x).__name__}", name)
    if floating and not x.is_floating_point():
        raise ConfigError(f"must be a floating-point tensor, got dtype {x.dtype}", name)
    return x


def _check_options(kind: object, chunk_size: object, temperature_squared: object) -> None:
    if kind not in _KINDS:
        raise ConfigError(f"must be 'ce' (soft cross-entropy) or 'kl' (KL divergence), got {kind!r}", "kind")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise ConfigError(f"must be a positive integer (rows per chunk) or None (automatic), got {chunk_size!r}",
                          "chunk_size")
    if not isinstance(temperature_squared, bool):
        raise ConfigError(f"must be True or False, got {temperature_squared!r}", "temperature_squared")


def _check_same_device(tensors: dict[str, torch.Tensor | None]) -> None:
    present = [(n, t) for n, t in tensors.items() if t is not None]
    first_name, first = present[0]
    for name, t in present[1:]:
        if t.device != first.device:
            raise ConfigError(f"is on {t.device} but {first_name} is on {first.device}; put every input on one "
                              "device", name)


def _selected_rows(mask: object, lead_shape: tuple[int, ...], device: torch.device) -> torch.Tensor | None:
    """Flat indices of the rows ``mask`` selects (``None``: every row)."""
    if mask is None:
        return None
    _tensor(mask, "mask", floating=False)
    if mask.is_floating_point() or mask.is_complex():
        raise ConfigError(f"must be a bool or integer (0/1) tensor, got dtype {mask.dtype}", "mask")
    if tuple(mask.shape) != lead_shape:
        raise ConfigError(f"must have one entry per row, i.e. shape {lead_shape} (the leading dimensions of the "
                          f"logits / hidden states); got shape {tuple(mask.shape)}", "mask")
    return mask.to(device).reshape(-1).nonzero().squeeze(1)


def _row_temperature(temperature: object, lead_shape: tuple[int, ...], rows: torch.Tensor | None,
                     n_selected: int, like: torch.Tensor) -> float | torch.Tensor:
    """tau as a float, a detached 0-d tensor, or a detached ``(n_selected,)`` tensor (the selected rows')."""
    if not isinstance(temperature, torch.Tensor):
        return _temperature(temperature, like)  # a positive finite number, or kd.py's ConfigError
    tau = temperature.detach().to(device=like.device, dtype=like.dtype)
    if tau.dim() == 0:
        return tau
    if tuple(tau.shape) == lead_shape:
        tau = tau.reshape(-1)
        return tau if rows is None else tau[rows]
    if rows is not None and tau.dim() == 1 and tau.shape[0] == n_selected:
        return tau  # already one value per selected row
    allowed = f"0-d, or one value per row: shape {lead_shape}"
    if rows is not None:
        allowed += f", or ({n_selected},) for the rows the mask selects"
    raise ConfigError(f"a temperature tensor must be {allowed}; got shape {tuple(tau.shape)}", "temperature")


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _auto_chunk(chunk_size: int | None, n_classes: int, elements: int) -> int:
    return chunk_size if chunk_size is not None else max(1, elements // max(n_classes, 1))


# -- the shared autograd Function ----------------------------------------------------------------------------
class _Side:
    """One model's logits for a chunk of rows: from a logits tensor ``z`` ``(N, C)``, or from hidden states
    ``h`` ``(N, D)`` times an output layer ``W`` ``(C, D)`` plus ``b`` ``(C,)``."""

    def __init__(self, z: torch.Tensor | None, h: torch.Tensor | None, w: torch.Tensor | None,
                 b: torch.Tensor | None):
        self.z, self.h, self.w, self.b = z, h, w, b

    def logits(self, sel: slice | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.z is not None:
            return self.z[sel].to(dtype)
        # The matmul runs in the inputs' dtype, like the model's own output layer would.
        return F.linear(self.h[sel], self.w, self.b).to(dtype)

    def new_grads(self, needs: tuple[bool, bool, bool, bool], dtype: torch.dtype, full_rows: bool) -> list:
        """Gradient buffers for (z, h, w, b). ``w`` and ``b`` sum over chunks, so they accumulate in ``dtype``."""
        make = torch.empty_like if full_rows else torch.zeros_like  # rows no chunk visits must be 0
        z_grad = make(self.z) if needs[0] else None
        h_grad = make(self.h) if needs[1] else None
        w_grad = torch.zeros_like(self.w, dtype=dtype) if needs[2] else None
        b_grad = torch.zeros_like(self.b, dtype=dtype) if needs[3] else None
        return [z_grad, h_grad, w_grad, b_grad]

    def add_grad(self, grads: list, sel: slice | torch.Tensor, g: torch.Tensor) -> None:
        """Backpropagate ``g`` = d loss / d (this chunk's logits) into the buffers."""
        z_grad, h_grad, w_grad, b_grad = grads
        if z_grad is not None:
            z_grad[sel] = g.to(z_grad.dtype)
        if self.h is None:
            return
        if h_grad is not None:
            h_grad[sel] = g.to(self.h.dtype) @ self.w  # in the output layer's dtype, as autograd would
        if w_grad is not None:  # summed over chunks in the compute dtype (float32 for half inputs)
            w_grad.addmm_(g.t(), self.h[sel].to(w_grad.dtype))
        if b_grad is not None:
            b_grad += g.sum(0)

    @staticmethod
    def finish(grads: list, like: list) -> list:
        return [g if g is None or t is None else g.to(t.dtype) for g, t in zip(grads, like)]


def _chunks(n_rows: int, chunk: int, rows: torch.Tensor | None):
    """``(start, end, selector)`` over the selected rows: a slice of all rows, or a slice of ``rows``."""
    for start in range(0, n_rows, chunk):
        end = min(start + chunk, n_rows)
        yield start, end, slice(start, end) if rows is None else rows[start:end]


def _tau_chunk(tau: float | torch.Tensor, start: int, end: int) -> float | torch.Tensor:
    """The chunk's tau, ready to divide ``(rows, C)`` logits by: a number, a 0-d tensor or ``(rows, 1)``."""
    return tau[start:end].unsqueeze(-1) if isinstance(tau, torch.Tensor) and tau.dim() == 1 else tau


def _per_row(tau_c: float | torch.Tensor) -> float | torch.Tensor:
    """``tau_c`` shaped to multiply a ``(rows,)`` per-row loss."""
    return tau_c.squeeze(-1) if isinstance(tau_c, torch.Tensor) and tau_c.dim() == 2 else tau_c


class _ChunkedKD(torch.autograd.Function):
    """``mean over selected rows of KD(student logits, teacher logits)``, one chunk of rows at a time.

    Inputs after the options: ``rows`` (flat indices of the selected rows, or None for all), ``tau`` (float or
    per-selected-row tensor), then the student's ``z, h, w, b`` and the teacher's ``z, h, w, b`` (unused ones
    None). Forward keeps nothing but the inputs; backward recomputes each chunk's softmaxes.
    """

    @staticmethod
    def forward(ctx, kind: str, t2: bool, chunk: int, n_rows: int, dtype: torch.dtype, rows, tau,
                zS, hS, wS, bS, zT, hT, wT, bT):
        S, T = _Side(zS, hS, wS, bS), _Side(zT, hT, wT, bT)
        total = torch.zeros((), dtype=dtype, device=(zS if zS is not None else hS).device)
        # In-place ops below only ever touch tensors made in this loop, never the inputs.
        for start, end, sel in _chunks(n_rows, chunk, rows):
            tau_c = _tau_chunk(tau, start, end)
            log_p_S = _log_probs(S, sel, dtype, tau_c)
            log_p_T = _log_probs(T, sel, dtype, tau_c)
            p_T = log_p_T.exp()
            if kind == "ce":
                per_row = log_p_S.mul_(p_T).sum(-1).neg_()
            else:  # log p_T - log p_S, set to 0 where p_T = 0 (0 log 0 = 0; no -inf - -inf)
                per_row = log_p_T.sub_(log_p_S).masked_fill_(p_T == 0, 0.0).mul_(p_T).sum(-1)
            if t2:
                per_row = per_row * _per_row(tau_c) ** 2
            total += per_row.sum()
            del log_p_S, log_p_T, p_T
        ctx.options = (kind, t2, chunk, n_rows, dtype, None if isinstance(tau, torch.Tensor) else tau)
        ctx.save_for_backward(rows, tau if isinstance(tau, torch.Tensor) else None, zS, hS, wS, bS, zT, hT, wT, bT)
        return total / max(n_rows, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        kind, t2, chunk, n_rows, dtype, tau_float = ctx.options
        rows, tau_tensor, zS, hS, wS, bS, zT, hT, wT, bT = ctx.saved_tensors
        tau = tau_float if tau_tensor is None else tau_tensor
        S, T = _Side(zS, hS, wS, bS), _Side(zT, hT, wT, bT)
        needs_S, needs_T = ctx.needs_input_grad[7:11], ctx.needs_input_grad[11:15]
        grads_S = S.new_grads(needs_S, dtype, rows is None) if any(needs_S) else None
        grads_T = T.new_grads(needs_T, dtype, rows is None) if any(needs_T) else None
        scale = grad_out.to(dtype) / max(n_rows, 1)
        device_type = (zS if zS is not None else hS).device.type
        with torch.autocast(device_type, enabled=False):
            for start, end, sel in _chunks(n_rows, chunk, rows):
                tau_c = _tau_chunk(tau, start, end)
                # Each row's loss is divided by n_rows, maybe times tau^2, and depends on z / tau.
                row_scale = scale / tau_c
                if t2:
                    row_scale = row_scale * tau_c ** 2
                log_p_S = _log_probs(S, sel, dtype, tau_c)
                log_p_T = _log_probs(T, sel, dtype, tau_c)
                p_T = log_p_T.exp() if grads_T is not None else log_p_T.exp_()
                if grads_T is not None:
                    # d row_loss / d (z_T / tau) = p_T * (g - row_loss), g = -log p_S (ce) or log p_T - log p_S.
                    g = log_p_S.neg() if kind == "ce" else (log_p_T - log_p_S).masked_fill_(p_T == 0, 0.0)
                    g.sub_((p_T * g).sum(-1, keepdim=True)).mul_(p_T).mul_(row_scale)
                    T.add_grad(grads_T, sel, g)
                    del g
                if grads_S is not None:
                    # d row_loss / d (z_S / tau) = p_S - p_T, for both kinds.
                    S.add_grad(grads_S, sel, log_p_S.exp_().sub_(p_T).mul_(row_scale))
                del log_p_S, log_p_T, p_T
        out_S = _Side.finish(grads_S, [zS, hS, wS, bS]) if grads_S is not None else [None] * 4
        out_T = _Side.finish(grads_T, [zT, hT, wT, bT]) if grads_T is not None else [None] * 4
        return (None,) * 7 + tuple(out_S) + tuple(out_T)


def _log_probs(side: _Side, sel: slice | torch.Tensor, dtype: torch.dtype,
               tau_c: float | torch.Tensor) -> torch.Tensor:
    """``log_softmax(z / tau)`` of one chunk, a fresh tensor in ``dtype``."""
    return F.log_softmax(side.logits(sel, dtype) / tau_c, dim=-1)


def _autocast_inputs(tensors: list[torch.Tensor | None], device_type: str) -> list[torch.Tensor | None]:
    """Inside autocast, an output layer's matmul would run in the autocast dtype: cast its inputs the same way."""
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return [t if t is None or not t.is_floating_point() else t.to(dtype) for t in tensors]


# -- public functions ----------------------------------------------------------------------------------------
def chunked_kd_loss(logits_S: torch.Tensor, logits_T: torch.Tensor, temperature: float | torch.Tensor = 1.0,
                    kind: str = "ce", chunk_size: int | None = None, temperature_squared: bool = False,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """Soft cross-entropy (``kind="ce"``) or KL (``kind="kl"``) KD on logits, chunk by chunk over rows.

    Shapes: ``logits_S``, ``logits_T``: ``(N, C)`` or ``(B, L, C)`` (any ``(..., C)``), same shape; every
    leading position is a row. ``mask``: optional, the leading shape (``(B, L)``), bool or 0/1; only rows
    where it is true count. ``temperature``: a positive number, a 0-d tensor, or one value per row (shape
    ``logits.shape[:-1]``, or ``(M,)`` for the ``M`` rows the mask selects).

    Value and gradients equal ``kd_ce_loss`` / ``kd_kl_loss`` on the selected rows
    (``loss = mean_r rowloss_r``, see the module docstring), but no float32 ``(N, C)`` tensor is kept: each
    chunk of ``chunk_size`` rows (default: 4M elements' worth, 16 MiB in float32) is upcast, softmaxed and
    dropped, in forward and again in backward. With no selected row the loss is 0 (the plain losses give NaN).
    """
    _check_options(kind, chunk_size, temperature_squared)
    _tensor(logits_S, "logits_S")
    _tensor(logits_T, "logits_T")
    if logits_S.dim() < 1:
        raise ConfigError("must have at least one dimension (the classes, last)", "logits_S")
    if logits_S.shape != logits_T.shape:
        raise ConfigError(f"logits_S and logits_T must have the same shape (..., C), got "
                          f"{tuple(logits_S.shape)} and {tuple(logits_T.shape)}", "logits_T")
    _check_same_device({"logits_S": logits_S, "logits_T": logits_T})
    lead, n_classes = tuple(logits_S.shape[:-1]), logits_S.shape[-1]
    dtype = _compute_dtype(logits_S, logits_T)
    rows = _selected_rows(mask, lead, logits_S.device)
    n_rows = math.prod(lead) if rows is None else rows.numel()
    tau = _row_temperature(temperature, lead, rows, n_rows, logits_S.new_empty((), dtype=dtype))
    zS, zT = logits_S.reshape(-1, n_classes), logits_T.reshape(-1, n_classes)
    chunk = _auto_chunk(chunk_size, n_classes, _CHUNK_ELEMENTS)
    with torch.autocast(logits_S.device.type, enabled=False):
        return _ChunkedKD.apply(kind, temperature_squared, chunk, n_rows, dtype, rows, tau,
                                zS, None, None, None, zT, None, None, None)


def fused_linear_kd_loss(hidden_S: torch.Tensor, weight_S: torch.Tensor, logits_T: torch.Tensor | None = None,
                         bias_S: torch.Tensor | None = None, temperature: float | torch.Tensor = 1.0,
                         kind: str = "ce", chunk_size: int | None = None, mask: torch.Tensor | None = None,
                         temperature_squared: bool = False, hidden_T: torch.Tensor | None = None,
                         weight_T: torch.Tensor | None = None, bias_T: torch.Tensor | None = None) -> torch.Tensor:
    """KD from the student's final hidden states and output layer, without making its ``(N, C)`` logits.

    Equals ``chunked_kd_loss(F.linear(hidden_S, weight_S, bias_S), logits_T, ...)`` in value and in the
    gradients of ``hidden_S``, ``weight_S`` and ``bias_S``.

    Shapes: ``hidden_S``: ``(N, D)`` or ``(B, L, D)``; ``weight_S``: ``(C, D)`` (an ``nn.Linear`` / LM head
    weight); ``bias_S``: ``(C,)`` or None. The teacher is either ``logits_T`` of shape
    ``hidden_S.shape[:-1] + (C,)``, or ``hidden_T`` (``hidden_S.shape[:-1] + (D_T,)``) with ``weight_T``
    ``(C, D_T)`` and optional ``bias_T`` ``(C,)``. ``mask``, ``temperature``, ``kind`` and
    ``temperature_squared`` are as in :func:`chunked_kd_loss`; ``chunk_size`` (rows per chunk) defaults to
    16M elements' worth (64 MiB of float32 logits).

    Each chunk's logits ``hidden @ weight^T + bias`` are computed in the inputs' dtype (in the autocast dtype
    under autocast, as the model's own output layer would be) and upcast for the softmaxes; the hidden-state
    gradient is computed in that dtype too. The weight and bias gradients are computed and summed over chunks
    in float32 (float64 for float64 inputs) and returned in the weight's dtype.
    """
    _check_options(kind, chunk_size, temperature_squared)
    _tensor(hidden_S, "hidden_S")
    _tensor(weight_S, "weight_S")
    if hidden_S.dim() < 2:
        raise ConfigError(f"must be (N, D) or (B, L, D), got shape {tuple(hidden_S.shape)}", "hidden_S")
    if weight_S.dim() != 2 or weight_S.shape[1] != hidden_S.shape[-1]:
        raise ConfigError(f"must be (C, D) with D = hidden_S.shape[-1] = {hidden_S.shape[-1]}, got shape "
                          f"{tuple(weight_S.shape)}", "weight_S")
    lead, n_classes = tuple(hidden_S.shape[:-1]), weight_S.shape[0]
    _check_bias(bias_S, n_classes, "bias_S")
    _check_matmul_dtypes(hidden_S, weight_S, bias_S, "S")
    if logits_T is not None:
        if hidden_T is not None or weight_T is not None or bias_T is not None:
            raise ConfigError("give the teacher as logits_T or as hidden_T + weight_T (+ bias_T), not both",
                              "logits_T")
        _tensor(logits_T, "logits_T")
        if tuple(logits_T.shape) != lead + (n_classes,):
            raise ConfigError(f"must have shape {lead + (n_classes,)} (hidden_S's rows x weight_S's classes), got "
                              f"{tuple(logits_T.shape)}", "logits_T")
    else:
        if hidden_T is None or weight_T is None:
            raise ConfigError("the teacher is missing: give logits_T, or hidden_T and weight_T",
                              "logits_T" if hidden_T is None and weight_T is None else
                              ("hidden_T" if hidden_T is None else "weight_T"))
        _tensor(hidden_T, "hidden_T")
        _tensor(weight_T, "weight_T")
        if tuple(hidden_T.shape[:-1]) != lead:
            raise ConfigError(f"must have the rows of hidden_S, i.e. shape {lead} + (D_T,), got "
                              f"{tuple(hidden_T.shape)}", "hidden_T")
        if weight_T.dim() != 2 or tuple(weight_T.shape) != (n_classes, hidden_T.shape[-1]):
            raise ConfigError(f"must be (C, D_T) = ({n_classes}, {hidden_T.shape[-1]}) (the student's classes, "
                              f"hidden_T's width), got shape {tuple(weight_T.shape)}", "weight_T")
        _check_bias(bias_T, n_classes, "bias_T")
        _check_matmul_dtypes(hidden_T, weight_T, bias_T, "T")
    _check_same_device({"hidden_S": hidden_S, "weight_S": weight_S, "bias_S": bias_S, "logits_T": logits_T,
                        "hidden_T": hidden_T, "weight_T": weight_T, "bias_T": bias_T})
    device_type = hidden_S.device.type
    hidden_S, weight_S, bias_S, hidden_T, weight_T, bias_T = _autocast_inputs(
        [hidden_S, weight_S, bias_S, hidden_T, weight_T, bias_T], device_type)
    dtype = _compute_dtype(hidden_S, logits_T, hidden_T)
    rows = _selected_rows(mask, lead, hidden_S.device)
    n_rows = math.prod(lead) if rows is None else rows.numel()
    tau = _row_temperature(temperature, lead, rows, n_rows, hidden_S.new_empty((), dtype=dtype))
    flat = lambda x: None if x is None else x.reshape(-1, x.shape[-1])  # noqa: E731  (rows, features)
    chunk = _auto_chunk(chunk_size, n_classes, _FUSED_CHUNK_ELEMENTS)
    with torch.autocast(device_type, enabled=False):
        return _ChunkedKD.apply(kind, temperature_squared, chunk, n_rows, dtype, rows, tau,
                                None, flat(hidden_S), weight_S, bias_S,
                                flat(logits_T), flat(hidden_T), weight_T, bias_T)


def _check_bias(bias: object, n_classes: int, name: str) -> None:
    if bias is None:
        return
    _tensor(bias, name)
    if tuple(bias.shape) != (n_classes,):
        raise ConfigError(f"must have shape ({n_classes},) (one value per class), got {tuple(bias.shape)}", name)


def _check_matmul_dtypes(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, side: str) -> None:
    if torch.is_autocast_enabled(hidden.device.type):
        return  # everything is cast to the autocast dtype
    for name, t in ((f"weight_{side}", weight), (f"bias_{side}", bias)):
        if t is not None and t.dtype != hidden.dtype:
            raise ConfigError(f"has dtype {t.dtype} but hidden_{side} has {hidden.dtype}; the output layer's "
                              "inputs must share one dtype (or run under torch.autocast)", name)


# -- KD_LOSS_MAP-shaped wrappers: f(logits_S, logits_T, temperature, temperature_squared) ------------------------
def chunked_kd_ce_loss(logits_S: torch.Tensor, logits_T: torch.Tensor, temperature: float | torch.Tensor = 1,
                       temperature_squared: bool = False) -> torch.Tensor:
    """:func:`chunked_kd_loss` with ``kind="ce"``: the value of ``kd_ce_loss`` without its float32 copies."""
    return chunked_kd_loss(logits_S, logits_T, temperature, kind="ce", temperature_squared=temperature_squared)


def chunked_kd_kl_loss(logits_S: torch.Tensor, logits_T: torch.Tensor, temperature: float | torch.Tensor = 1,
                       temperature_squared: bool = False) -> torch.Tensor:
    """:func:`chunked_kd_loss` with ``kind="kl"``: the value of ``kd_kl_loss`` without its float32 copies."""
    return chunked_kd_loss(logits_S, logits_T, temperature, kind="kl", temperature_squared=temperature_squared)
