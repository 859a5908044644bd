"""Logit KD for large vocabularies, computed a chunk of rows at a time: every divergence of the family.

The plain losses (:mod:`brewkit.losses.kd`, :mod:`brewkit.losses.divergences`) build several float32
``(N, C)`` tensors (tempered logits, both softmaxes, their products) and autograd keeps some of them alive
until backward. For ``N = 8192`` tokens and ``C = 32000`` classes each is 1 GB. The functions here give the
same value and gradients while holding at most one chunk of rows in float32:

* :func:`chunked_kd_loss` takes both logits tensors. Forward walks over chunks of rows and keeps only the
  running sum; backward walks again, recomputes each chunk's row losses with autograd and writes that chunk
  of the gradient. The only ``(N, C)`` tensor it creates is the gradient of the student logits, in their
  dtype (float32 logits: one 1 GB tensor where the plain loss peaks near three).
* :func:`fused_linear_kd_loss` takes the student's final hidden states and output-layer weight instead of
  its logits, so even that gradient disappears: each chunk's logits ``h W^T + b`` are made, used and dropped,
  and backward accumulates the gradients of ``h``, ``W`` and ``b`` chunk by chunk. The teacher may be given
  the same way (``hidden_T``, ``weight_T``).

One semantics: each chunk's row losses come from :func:`~brewkit.losses.divergences.divergence_per_row`,
the function the plain losses call, so ``kind`` is any divergence of the family
(``ce``, ``kl``, ``reverse_kl``, ``jsd`` (``beta``), ``skew_kl`` / ``skew_reverse_kl`` (``alpha``), ``tvd``;
formulas in :mod:`brewkit.losses.divergences`), and the options mean the same in every form: the loss is the
mean of the row losses over the counted rows (``mask`` / ``labels`` with ``ignore_index``; 0 when none
counts), ``temperature_squared=True`` multiplies each row's loss by its tau^2, and ``softcap=c`` applies
``z -> c * tanh(z / c)`` to both sides' logits before the temperature (Gemma-2's
``final_logit_softcapping``; in the fused form to the logits each chunk computes, exactly where the model
would apply it).

Precision: each chunk's softmaxes and losses are computed in float32 (float64 when an input is float64),
as in the plain losses. The temperature is a constant for autograd (the temperature schedulers return
detached values). Teacher logits / hidden states / weights that require grad get their gradients too (a
frozen teacher's do not).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..errors import ConfigError
from .checks import (
    IGNORE_INDEX,
    check_same_device,
    check_softcap,
    check_temperature_squared,
    check_tensor,
    compute_dtype,
    counted_row_indices,
    counted_rows,
    row_temperature,
    shape_of,
)
from .divergences import CHUNK_TEMPORARIES, check_kind, divergence_per_row, resolve_params

#: Default chunks: about this many float32 elements in all of a chunk's (rows x classes) temporaries together
#: (divergences.CHUNK_TEMPORARIES of them): 64 MiB for chunked_kd_loss, 256 MiB for fused_linear_kd_loss, whose
#: matmuls run markedly faster on taller chunks. For ``ce`` that is 16 MiB / 64 MiB per temporary.
_CHUNK_ELEMENTS = 1 << 24
_FUSED_CHUNK_ELEMENTS = 1 << 26


# -- argument checks -----------------------------------------------------------------------------------------
def _check_options(kind: object, chunk_size: object, temperature_squared: object) -> None:
    check_kind(kind)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise ConfigError(f"must be a positive integer (rows per chunk) or None (automatic), got {chunk_size!r}",
                          "chunk_size")
    check_temperature_squared(temperature_squared)


def _auto_chunk(chunk_size: int | None, n_classes: int, elements: int, kind: str) -> int:
    """``chunk_size``, or the rows whose temporaries of divergence ``kind`` hold about ``elements`` floats."""
    if chunk_size is not None:
        return chunk_size
    return max(1, elements // (max(n_classes, 1) * CHUNK_TEMPORARIES[kind]))


class _Options:
    """What the autograd Function needs besides tensors (one object, so input positions stay fixed)."""

    def __init__(self, kind: str, params: dict, softcap: float | None, t2: bool, chunk: int, n_rows: int,
                 dtype: torch.dtype):
        self.kind, self.params, self.softcap, self.t2 = kind, params, softcap, t2
        self.chunk, self.n_rows, self.dtype = chunk, n_rows, dtype

    def row_losses(self, zS: torch.Tensor, zT: torch.Tensor, tau_c: float | torch.Tensor) -> torch.Tensor:
        """The chunk's row losses, times tau^2 when asked: ``(rows,)``."""
        per_row = divergence_per_row(self.kind, zS, zT, tau_c, softcap=self.softcap, **self.params)
        return per_row * _per_row(tau_c) ** 2 if self.t2 else per_row


# -- the shared autograd Function ----------------------------------------------------------------------------
class LogitsSide:
    """One model's logits for a chunk of rows: from a logits tensor ``z`` ``(N, C)``, or from hidden states
    ``h`` ``(N, D)`` times an output layer ``W`` ``(C, D)`` plus ``b`` ``(C,)``."""

    def __init__(self, z: torch.Tensor | None, h: torch.Tensor | None, w: torch.Tensor | None,
                 b: torch.Tensor | None):
        self.z, self.h, self.w, self.b = z, h, w, b

    def logits(self, sel: slice | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The chunk's logits in ``dtype``, outside any autograd graph."""
        with torch.no_grad():
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


def row_chunks(n_rows: int, chunk: int, rows: torch.Tensor | None):
    """``(start, end, selector)`` over the counted rows: a slice of all rows, or a slice of ``rows``."""
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
    """``mean over counted rows of divergence(student logits, teacher logits)``, one chunk of rows at a time.

    Inputs: ``opts`` (:class:`_Options`), ``rows`` (flat indices of the counted rows, or None for all), ``tau``
    (float or per-counted-row tensor), then the student's ``z, h, w, b`` and the teacher's ``z, h, w, b``
    (unused ones None). Forward keeps nothing but the inputs; backward recomputes each chunk's row losses
    under autograd and turns the gradient of its logits into the gradients of the inputs.
    """

    @staticmethod
    def forward(ctx, opts: _Options, rows, tau, zS, hS, wS, bS, zT, hT, wT, bT):
        S, T = LogitsSide(zS, hS, wS, bS), LogitsSide(zT, hT, wT, bT)
        total = torch.zeros((), dtype=opts.dtype, device=(zS if zS is not None else hS).device)
        for start, end, sel in row_chunks(opts.n_rows, opts.chunk, rows):
            tau_c = _tau_chunk(tau, start, end)
            total += opts.row_losses(S.logits(sel, opts.dtype), T.logits(sel, opts.dtype), tau_c).sum()
        ctx.opts = opts
        ctx.tau_float = None if isinstance(tau, torch.Tensor) else tau
        ctx.save_for_backward(rows, tau if isinstance(tau, torch.Tensor) else None, zS, hS, wS, bS, zT, hT, wT, bT)
        return total / max(opts.n_rows, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        opts = ctx.opts
        rows, tau_tensor, zS, hS, wS, bS, zT, hT, wT, bT = ctx.saved_tensors
        tau = ctx.tau_float if tau_tensor is None else tau_tensor
        S, T = LogitsSide(zS, hS, wS, bS), LogitsSide(zT, hT, wT, bT)
        needs_S, needs_T = ctx.needs_input_grad[3:7], ctx.needs_input_grad[7:11]
        grads_S = S.new_grads(needs_S, opts.dtype, rows is None) if any(needs_S) else None
        grads_T = T.new_grads(needs_T, opts.dtype, rows is None) if any(needs_T) else None
        scale = grad_out.to(opts.dtype) / max(opts.n_rows, 1)
        device_type = (zS if zS is not None else hS).device.type
        with torch.autocast(device_type, enabled=False):
            for start, end, sel in row_chunks(opts.n_rows, opts.chunk, rows):
                tau_c = _tau_chunk(tau, start, end)
                z_S = S.logits(sel, opts.dtype).detach().requires_grad_(grads_S is not None)
                z_T = T.logits(sel, opts.dtype).detach().requires_grad_(grads_T is not None)
                with torch.enable_grad():  # the chunk's graph only: its logits are fresh leaves
                    chunk_loss = opts.row_losses(z_S, z_T, tau_c).sum() * scale
                    got = torch.autograd.grad(chunk_loss, [z for z in (z_S, z_T) if z.requires_grad])
                del chunk_loss, z_S, z_T
                # Outside grad mode: the gradient buffers must not join any graph.
                if grads_S is not None:
                    S.add_grad(grads_S, sel, got[0])
                if grads_T is not None:
                    T.add_grad(grads_T, sel, got[-1])
                del got
        out_S = LogitsSide.finish(grads_S, [zS, hS, wS, bS]) if grads_S is not None else [None] * 4
        out_T = LogitsSide.finish(grads_T, [zT, hT, wT, bT]) if grads_T is not None else [None] * 4
        return (None,) * 3 + tuple(out_S) + tuple(out_T)


def autocast_inputs(tensors: list[torch.Tensor | None], device_type: str) -> list[torch.Tensor | None]:
    """Inside autocast, an output layer's matmul would run in the autocast dtype: cast its inputs the same way."""
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return [t if t is None or not t.is_floating_point() else t.to(dtype) for t in tensors]


def _counted(mask: object, labels: object, ignore_index: object, lead: tuple[int, ...], temperature: object,
             like: torch.Tensor) -> tuple[torch.Tensor | None, int, float | torch.Tensor]:
    """``(rows, n_rows, tau)``: the counted rows' flat indices (None: all), their number, their detached tau."""
    rows = counted_row_indices(counted_rows(mask, labels, ignore_index, lead, like.device))
    n_rows = math.prod(lead) if rows is None else rows.numel()
    tau = row_temperature(temperature, lead, rows, n_rows, like)
    return rows, n_rows, tau.detach() if isinstance(tau, torch.Tensor) else tau


# -- public functions ----------------------------------------------------------------------------------------
def chunked_kd_loss(logits_S: torch.Tensor, logits_T: torch.Tensor, temperature: float | torch.Tensor = 1.0,
                    kind: str = "ce", chunk_size: int | None = None, temperature_squared: bool = False,
                    mask: torch.Tensor | None = None, *, softcap: float | None = None,
                    labels: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX,
                    beta: float | None = None, alpha: float | None = None) -> torch.Tensor:
    """Logit KD with divergence ``kind`` (default ``"ce"``, soft cross-entropy), chunk by chunk over rows.

    Shapes: ``logits_S``, ``logits_T``: ``(N, C)`` or ``(B, L, C)`` (any ``(..., C)``), same shape; every
    leading position is a row. ``mask``: optional, the leading shape (``(B, L)``), bool or 0/1 integers; only
    rows where it is true count. ``labels``: optional, the leading shape, integer; rows whose label is
    ``ignore_index`` (default -100) do not count. ``temperature``: a positive number, a 0-d tensor, or one value
    per row (shape ``logits.shape[:-1]``, ``(N,)`` for the rows flattened, or ``(M,)`` for the ``M`` counted
    rows). ``beta`` (``jsd``) and ``alpha`` (``skew_kl``, ``skew_reverse_kl``): the divergence's parameter
    (None: its default); giving one a kind does not take is an error. ``softcap``: see the module docstring.

    Value and gradients equal the plain loss of the same kind on the counted rows (``loss = mean_r
    rowloss_r``), but no float32 ``(N, C)`` tensor is kept: each chunk of ``chunk_size`` rows is upcast, used
    and dropped, in forward and again in backward. The default chunk keeps the chunk's temporaries near 64 MiB
    together (``ce``: 16 MiB of logits per chunk; the heavier divergences take fewer rows). With no counted
    row the loss is 0 and so are the gradients.
    """
    _check_options(kind, chunk_size, temperature_squared)
    params = resolve_params(kind, {"beta": beta, "alpha": alpha})
    softcap = check_softcap(softcap)
    check_tensor(logits_S, "logits_S")
    check_tensor(logits_T, "logits_T")
    if logits_S.dim() < 1:
        raise ConfigError("must have at least one dimension (the classes, last)", "logits_S")
    if logits_S.shape != logits_T.shape:
        raise ConfigError(f"logits_S and logits_T must have the same shape (..., C), got "
                          f"{shape_of(logits_S)} and {shape_of(logits_T)}", "logits_T")
    check_same_device({"logits_S": logits_S, "logits_T": logits_T})
    lead, n_classes = shape_of(logits_S)[:-1], logits_S.shape[-1]
    dtype = compute_dtype(logits_S, logits_T)
    rows, n_rows, tau = _counted(mask, labels, ignore_index, lead, temperature,
                                 logits_S.new_empty((), dtype=dtype))
    zS, zT = logits_S.reshape(-1, n_classes), logits_T.reshape(-1, n_classes)
    opts = _Options(kind, params, softcap, temperature_squared,
                    _auto_chunk(chunk_size, n_classes, _CHUNK_ELEMENTS, kind), n_rows, dtype)
    with torch.autocast(logits_S.device.type, enabled=False):
        return _ChunkedKD.apply(opts, rows, tau, zS, None, None, None, zT, None, None, None)


def fused_linear_kd_loss(hidden_S: torch.Tensor, weight_S: torch.Tensor, logits_T: torch.Tensor | None = None,
                         bias_S: torch.Tensor | None = None, temperature: float | torch.Tensor = 1.0,
                         kind: str = "ce", chunk_size: int | None = None, mask: torch.Tensor | None = None,
                         temperature_squared: bool = False, hidden_T: torch.Tensor | None = None,
                         weight_T: torch.Tensor | None = None, bias_T: torch.Tensor | None = None, *,
                         softcap: float | None = None, labels: torch.Tensor | None = None,
                         ignore_index: int = IGNORE_INDEX, beta: float | None = None,
                         alpha: float | None = None) -> torch.Tensor:
    """KD from the student's final hidden states and output layer, without making its ``(N, C)`` logits.

    Equals ``chunked_kd_loss(F.linear(hidden_S, weight_S, bias_S), logits_T, ...)`` in value and in the
    gradients of ``hidden_S``, ``weight_S`` and ``bias_S``, for every ``kind`` of the divergence family.

    Shapes: ``hidden_S``: ``(N, D)`` or ``(B, L, D)``; ``weight_S``: ``(C, D)`` (an ``nn.Linear`` / LM head
    weight); ``bias_S``: ``(C,)`` or None. The teacher is either ``logits_T`` of shape
    ``hidden_S.shape[:-1] + (C,)``, or ``hidden_T`` (``hidden_S.shape[:-1] + (D_T,)``) with ``weight_T``
    ``(C, D_T)`` and optional ``bias_T`` ``(C,)``. ``mask``, ``labels``, ``ignore_index``, ``temperature``,
    ``kind``, ``beta``, ``alpha``, ``softcap`` and ``temperature_squared`` are as in :func:`chunked_kd_loss`
    (``mask`` / ``labels`` have the leading shape of ``hidden_S``); ``chunk_size`` (rows per chunk) defaults to
    a working set near 256 MiB (``ce``: 64 MiB of float32 logits per chunk; heavier divergences fewer rows).

    Each chunk's logits ``hidden @ weight^T + bias`` are computed in the inputs' dtype (in the autocast dtype
    under autocast, as the model's own output layer would be), upcast, soft-capped when ``softcap`` is given,
    and used for the losses; the hidden-state gradient is computed in that dtype too. ``softcap`` caps
    ``logits_T`` as well, so give the teacher raw logits (or hidden + weight) with it: a Gemma-2 forward's
    logits are capped already and would be capped twice. The weight and bias
    gradients are computed and summed over chunks in float32 (float64 for float64 inputs) and returned in
    the weight's dtype.
    """
    _check_options(kind, chunk_size, temperature_squared)
    params = resolve_params(kind, {"beta": beta, "alpha": alpha})
    softcap = check_softcap(softcap)
    check_tensor(hidden_S, "hidden_S")
    check_tensor(weight_S, "weight_S")
    if hidden_S.dim() < 2:
        raise ConfigError(f"must be (N, D) or (B, L, D), got shape {shape_of(hidden_S)}", "hidden_S")
    if weight_S.dim() != 2 or weight_S.shape[1] != hidden_S.shape[-1]:
        raise ConfigError(f"must be (C, D) with D = hidden_S.shape[-1] = {hidden_S.shape[-1]}, got shape "
                          f"{shape_of(weight_S)}", "weight_S")
    lead, n_classes = shape_of(hidden_S)[:-1], weight_S.shape[0]
    check_bias(bias_S, n_classes, "bias_S")
    check_matmul_dtypes(hidden_S, weight_S, bias_S, "S")
    if logits_T is not None:
        if hidden_T is not None or weight_T is not None or bias_T is not None:
            raise ConfigError("give the teacher as logits_T or as hidden_T + weight_T (+ bias_T), not both",
                              "logits_T")
        check_tensor(logits_T, "logits_T")
        if shape_of(logits_T) != lead + (n_classes,):
            raise ConfigError(f"must have shape {lead + (n_classes,)} (hidden_S's rows x weight_S's classes), got "
                              f"{shape_of(logits_T)}", "logits_T")
    else:
        if hidden_T is None or weight_T is None:
            raise ConfigError("the teacher is missing: give logits_T, or hidden_T and weight_T",
                              "logits_T" if hidden_T is None and weight_T is None else
                              ("hidden_T" if hidden_T is None else "weight_T"))
        check_tensor(hidden_T, "hidden_T")
        check_tensor(weight_T, "weight_T")
        if shape_of(hidden_T)[:-1] != lead:
            raise ConfigError(f"must have the rows of hidden_S, i.e. shape {lead} + (D_T,), got "
                              f"{shape_of(hidden_T)}", "hidden_T")
        if weight_T.dim() != 2 or shape_of(weight_T) != (n_classes, hidden_T.shape[-1]):
            raise ConfigError(f"must be (C, D_T) = ({n_classes}, {hidden_T.shape[-1]}) (the student's classes, "
                              f"hidden_T's width), got shape {shape_of(weight_T)}", "weight_T")
        check_bias(bias_T, n_classes, "bias_T")
        check_matmul_dtypes(hidden_T, weight_T, bias_T, "T")
    check_same_device({"hidden_S": hidden_S, "weight_S": weight_S, "bias_S": bias_S, "logits_T": logits_T,
                       "hidden_T": hidden_T, "weight_T": weight_T, "bias_T": bias_T})
    device_type = hidden_S.device.type
    hidden_S, weight_S, bias_S, hidden_T, weight_T, bias_T = autocast_inputs(
        [hidden_S, weight_S, bias_S, hidden_T, weight_T, bias_T], device_type)
    dtype = compute_dtype(hidden_S, logits_T, hidden_T)
    rows, n_rows, tau = _counted(mask, labels, ignore_index, lead, temperature,
                                 hidden_S.new_empty((), dtype=dtype))
    opts = _Options(kind, params, softcap, temperature_squared,
                    _auto_chunk(chunk_size, n_classes, _FUSED_CHUNK_ELEMENTS, kind), n_rows, dtype)
    with torch.autocast(device_type, enabled=False):
        return _ChunkedKD.apply(opts, rows, tau, None, flat_rows(hidden_S), weight_S, bias_S,
                                flat_rows(logits_T), flat_rows(hidden_T), weight_T, bias_T)


def flat_rows(x: torch.Tensor | None) -> torch.Tensor | None:
    """``(..., F)`` as ``(rows, F)``."""
    return None if x is None else x.reshape(-1, x.shape[-1])


def check_bias(bias: object, n_classes: int, name: str) -> None:
    if bias is None:
        return
    check_tensor(bias, name)
    if shape_of(bias) != (n_classes,):
        raise ConfigError(f"must have shape ({n_classes},) (one value per class), got {shape_of(bias)}", name)


def check_matmul_dtypes(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, side: str) -> None:
    if torch.is_autocast_enabled(hidden.device.type):
        return  # everything is cast to the autocast dtype
    for name, t in ((f"weight_{side}", weight), (f"bias_{side}", bias)):
        if t is not None and t.dtype != hidden.dtype:
            raise ConfigError(f"has dtype {t.dtype} but hidden_{side} has {hidden.dtype}; the output layer's "
                              "inputs must share one dtype (or run under torch.autocast)", name)


# -- KD_LOSS_MAP-shaped wrappers: f(logits_S, logits_T, temperature, mask=None, **options) -------------------
def chunked_kd_ce_loss(logits_S: torch.Tensor, logits_T: torch.Tensor, temperature: float | torch.Tensor = 1,
                       mask: torch.Tensor | None = None, *, temperature_squared: bool = False,
                       softcap: float | None = None, labels: torch.Tensor | None = None,
                       ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """:func:`chunked_kd_loss` with ``kind="ce"``: the value of ``kd_ce_loss`` without its float32 copies."""
    return chunked_kd_loss(logits_S, logits_T, temperature, kind="ce", temperature_squared=temperature_squared,
                           mask=mask, softcap=softcap, labels=labels, ignore_index=ignore_index)


def chunked_kd_kl_loss(logits_S: torch.Tensor, logits_T: torch.Tensor, temperature: float | torch.Tensor = 1,
                       mask: torch.Tensor | None = None, *, temperature_squared: bool = False,
                       softcap: float | None = None, labels: torch.Tensor | None = None,
                       ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """:func:`chunked_kd_loss` with ``kind="kl"``: the value of ``kd_kl_loss`` without its float32 copies."""
    return chunked_kd_loss(logits_S, logits_T, temperature, kind="kl", temperature_squared=temperature_squared,
                           mask=mask, softcap=softcap, labels=labels, ignore_index=ignore_index)
