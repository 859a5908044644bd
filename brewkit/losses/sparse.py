"""Sparse KD: the divergences against a teacher kept as its top-k log-probabilities plus the tail mass.

A captured teacher store (:mod:`brewkit.offline_store`) keeps, per counted position ``r``, the ids ``S_r`` of the
teacher's ``k`` most likely tokens, their log-probabilities ``a_{r,i} = log p_T(S_{r,i})`` at the capture
temperature ``T_c``, and the log of the tail mass ``log P_tail = log(1 - sum_i p_T(S_{r,i}))`` (``-inf`` when
``k`` is the whole vocabulary). :class:`TopKTeacher` holds them for a batch.

The loss is the divergence between two distributions over ``k + 1`` buckets: the ``k`` ids and the tail::

    P_r = (p_T(S_{r,1}), ..., p_T(S_{r,k}), P_tail)                      teacher (stored)
    Q_r = (q(S_{r,1}),   ..., q(S_{r,k}),   1 - sum_i q(S_{r,i}))         student, q = softmax(z_S / T)

with the student's tail computed stably as ``log Q_tail = logsumexp_{c not in S_r} log q_c`` (the same number
as ``log(1 - sum_i q_i)``, without the cancellation). The row loss is the ``kind``'s formula
(:func:`brewkit.losses.divergences.divergence_per_row`) applied to ``(log Q_r, log P_r)``; ``kl`` is
``sum_j P_j (log P_j - log Q_j)`` over the buckets, ``ce`` is ``- sum_j P_j log Q_j``. When ``k`` is the whole
vocabulary the tail bucket is dropped (both tails are 0) and the buckets are the vocabulary in another order, so
every kind equals its dense value (tests: to 1e-5).

Which divergences have a sparse form. Every f-divergence of the family, ``kl``, ``reverse_kl``, ``jsd``,
``skew_kl``, ``skew_reverse_kl``, ``tvd``, is defined between the bucket distributions: it is the divergence of
the two distributions coarse-grained onto the teacher's top-k and "the rest" (a lower bound of the full one, by
the data-processing inequality, with equality when the tail is empty), and ``ce`` is its cross-entropy
(``KL(P || Q) + H(P)``). ``mse`` and ``bce`` compare each class's *logit* (or sigmoid) on its own: the
teacher's logits outside the top-k, and the per-row constant that log-probabilities drop, are not stored, so
they have no sparse form; nor do the list-wise and sampled losses (``coupled_rank_distil``,
``rank_sampled_softmax``), which sample from the full teacher distribution. Those are refused
(:func:`sparse_form`).

Temperature. ``p_T(i; T) ∝ exp(z_i / T)``, so at another temperature ``log p_T(i; T) = (T_c / T) a_i - log Z``,
whose normaliser ``Z = sum_c exp(z_c / T)`` needs every tail logit: the tail mass at ``T_c`` fixes
``sum_{tail} exp(z_c / T_c)`` but not ``sum_{tail} exp(z_c / T)``. Hence training at ``T = T_c`` is exact for
any ``k``; at ``T != T_c`` it is exact only when the tail is empty (``k`` = the vocabulary), where
``log p_T(.; T) = log_softmax((T_c / T) a)``. Any other temperature, and per-row temperatures from a scheduler,
are a ConfigError (:func:`check_temperature`).

Sampled stores. A top-k support is biased: the tail bucket says how much mass lies outside the top k but not
where, so a student trained on it learns nothing of the tail's order (and a teacher whose top 64 ids hold half
its mass leaves half the signal there). A *sampled* store (``teacher.capture.selection: sampled``; the "random
sampling KD" of Anshumann et al., 2025) instead draws ``N`` ids per position with replacement from
``p_T(.; T_c)`` and keeps the distinct ids drawn with ``P_i = count_i / N`` (:func:`sampled_log_probs`): an
unbiased estimate of the whole distribution (``E[P_i] = p_T(i)`` for every id, tail mass 0). The bucket loss
runs unchanged on it. For ``ce`` and ``kl``, which are linear in the teacher's probabilities, the student's
gradient ``dL/dz = (q - P) / T`` has expectation ``(q - p_T) / T``, the dense loss's gradient: training from
the store is unbiased, with noise that falls as ``1/N``. The other kinds are not linear in ``P``
(``reverse_kl`` reads ``log P``, which is ``-inf`` for an id not drawn; ``jsd`` and the skews take the log of a
mixture with ``P``; ``tvd`` an absolute value), so a sampled estimate biases them: refused
(:func:`sampled_form`). A sampled store is never re-tempered (its values are counts).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..errors import CheckpointError, ConfigError
from .checks import check_temperature_squared, check_tensor, counted_row_indices
from .divergences import divergence_per_row, resolve_params
from .vocab import LogitsSide, autocast_inputs, check_bias, check_matmul_dtypes, flat_rows, row_chunks

#: The divergence kinds that have a sparse (top-k + tail) form; see the module docstring for the others.
SPARSE_KINDS = ("ce", "kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd")
#: The kinds a sampled store trains without bias: linear in the teacher's probabilities (module docstring).
SAMPLED_KINDS = ("ce", "kl")


@dataclass
class TopKTeacher:
    """The teacher side of the counted positions of a batch, read from a captured store.

    ``ids``: ``(M, k)`` int64, the top-k token ids of each counted position (rows in the order
    ``logits[mask]`` gives: row-major over the batch), distinct within a row. ``logp``: ``(M, k)`` float32, their
    log-probabilities at ``temperature`` (the capture temperature). ``log_tail``: ``(M,)`` float32,
    ``log(1 - sum exp(logp))`` (``-inf`` when ``k == vocab``). ``vocab``: the teacher's number of classes.
    ``counts``: ``(B,)`` counted positions per example (None: not known). ``sampled``: the rows are a sampled
    store's estimate (:func:`sampled_log_probs`: ``logp = log(count / draws)``, tail ``-inf``), not the teacher's
    own top-k values.
    """

    ids: torch.Tensor
    logp: torch.Tensor
    log_tail: torch.Tensor
    temperature: float
    vocab: int
    counts: torch.Tensor | None = None
    sampled: bool = False

    @property
    def k(self) -> int:
        return int(self.ids.shape[-1])

    @property
    def full(self) -> bool:
        """Whether the rows are the whole teacher distribution (every id, no tail; never for a sampled store,
        whose values are an estimate)."""
        return not self.sampled and self.k >= self.vocab

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TopKTeacher:
        return TopKTeacher(self.ids.to(device, non_blocking=non_blocking),
                           self.logp.to(device, non_blocking=non_blocking),
                           self.log_tail.to(device, non_blocking=non_blocking), self.temperature, self.vocab,
                           self.counts, self.sampled)


def sparse_form(kind: str | None, loss_name: str, path: str = "kd_loss_type") -> str:
    """``kind`` itself when it has a sparse form (:data:`SPARSE_KINDS`); else a ConfigError naming ``loss_name``
    and the reason."""
    if kind in SPARSE_KINDS:
        return kind
    if loss_name in ("mse", "bce"):
        why = ("it compares each class's logit on its own, and a top-k store keeps neither the tail logits nor "
               "the per-row constant that log-probabilities drop")
    else:
        why = "it needs the teacher's full distribution (it is not a divergence between two softmaxes)"
    raise ConfigError(f"kd_loss_type {loss_name!r} has no sparse form for a top-k teacher store: {why}; use one of "
                      f"{', '.join(SPARSE_KINDS)}, or capture the full vocabulary with a loss of those", path)


def sampled_form(kind: str | None, loss_name: str, path: str = "kd_loss_type") -> str:
    """``kind`` when a sampled store trains it without bias (:data:`SAMPLED_KINDS`); else a ConfigError."""
    if kind in SAMPLED_KINDS:
        return kind
    raise ConfigError(f"kd_loss_type {loss_name!r} cannot train from a sampled teacher store: the store holds an "
                      "unbiased estimate of the teacher's distribution, and only a loss linear in the teacher's "
                      "probabilities (soft cross-entropy, forward KL) keeps it unbiased; use one of those, or "
                      "capture with selection: top_k", path)


def check_temperature(temperature: object, capture_temperature: float, full: bool,
                      path: str = "temperature") -> None:
    """A training temperature a store captured at ``capture_temperature`` can represent (module docstring):
    equal to it, or any positive number when the store holds the full vocabulary (``full``). Per-row
    temperatures (tensors with more than one value) are refused unless equal to it everywhere."""
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1:
            if full:
                return
            raise ConfigError(f"per-row temperatures cannot be applied to top-k log-probabilities captured at "
                              f"temperature {capture_temperature:g} (the tail's logits are unknown); capture the "
                              "full vocabulary or use a fixed temperature", path)
        temperature = float(temperature)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0 \
            or not math.isfinite(temperature):
        raise ConfigError(f"must be a positive number, got {temperature!r}", path)
    if full or math.isclose(float(temperature), float(capture_temperature), rel_tol=1e-9, abs_tol=0.0):
        return
    raise ConfigError(f"is {temperature:g} but the teacher store holds top-k log-probabilities at temperature "
                      f"{capture_temperature:g}; re-tempering them needs the tail's logits, so only "
                      f"{capture_temperature:g} is exact (or capture again at {temperature:g}, or capture the full "
                      "vocabulary, which any temperature can re-temper)", path)


#: Default chunks: about this many elements in a chunk's ``(rows, V)`` float32 working tensor: 8 MiB from
#: logits (the chunk's passes run from cache), 32 MiB in the fused form (its matmuls run faster on taller chunks;
#: measured on the causal-LM demo's student, scripts/bench_offline.py --step-only).
SPARSE_CHUNK_ELEMENTS = 1 << 21
SPARSE_FUSED_CHUNK_ELEMENTS = 1 << 23


@dataclass
class SparseOptions:
    """What :class:`SparseKD` needs besides tensors: the divergence, its parameters, ``T^2``, whether the
    store holds the full vocabulary, rows per chunk, the counted rows, the compute dtype, whether to compute
    gradients."""

    kind: str
    params: dict
    t2: bool
    full: bool
    capture_tau: float
    chunk: int
    n_rows: int
    dtype: torch.dtype
    want_grad: bool


def bucket_chunk(z: torch.Tensor, ids: torch.Tensor, logp: torch.Tensor, log_tail: torch.Tensor,
                 tau: float | torch.Tensor, opts: SparseOptions) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk's ``(sum of row losses, d sum / d z or None)``.

    ``z``: ``(c, V)`` student logits in the compute dtype, outside autograd; ``ids`` / ``logp``: ``(c, k)``;
    ``log_tail``: ``(c,)``; ``tau``: a number or ``(c, 1)``. The student's buckets come from one
    ``log_softmax`` buffer, reused in place: ``log Q_i = log q(S_i)``; the top ids are set to ``-inf`` and
    ``log Q_tail = m + log sum_c exp(log q_c - m)`` with ``m`` the largest tail ``log q`` (exact: no
    ``1 - sum`` cancellation, no underflow). The row losses are the kind's formula on the small ``(c, k + 1)``
    bucket tensors, differentiated by autograd into ``w = dL / d log Q``; then, from the same buffer,
    ``dL/dz_c = (w_tail q_c / Q_tail - q_c sum_j w_j) / T`` on the tail and ``(w_i - q_i sum_j w_j) / T`` on
    the top ids (``q_c / Q_tail = exp(log q_c - m) / sum``).
    """
    tau_is_one = not isinstance(tau, torch.Tensor) and tau == 1
    log_q = F.log_softmax(z if tau_is_one else z / tau, dim=-1)
    top = log_q.gather(-1, ids)
    log_p = logp.to(log_q.dtype)
    if opts.full:
        log_Q = top
        if not isinstance(tau, torch.Tensor) and tau == opts.capture_tau:
            log_P = log_p
        else:  # re-tempering a full-vocabulary store is exact (module docstring)
            log_P = F.log_softmax(log_p * (opts.capture_tau / tau), dim=-1)
    else:
        tail = log_q.scatter_(-1, ids, float("-inf"))
        m = tail.amax(-1, keepdim=True)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # a tail of -inf logits only: mass 0
        e = tail.sub_(m).exp_()  # exp(log q_c - m) on the tail, 0 on the top ids
        s = e.sum(-1, keepdim=True)
        log_Q = torch.cat([top, m + s.log()], -1)
        log_P = torch.cat([log_p, log_tail.to(log_q.dtype).reshape(-1, 1)], -1)
    with torch.enable_grad():
        log_Q = log_Q.detach().requires_grad_(opts.want_grad)
        if opts.kind == "ce":  # -sum P log Q: a bucket with P = 0 counts 0 (its log Q may be -inf)
            p = log_P.exp()
            per_row = -(p * torch.where(p > 0, log_Q, torch.zeros_like(log_Q))).sum(-1)
        else:
            per_row = divergence_per_row(opts.kind, log_Q, log_P, 1.0, **opts.params)
        if opts.t2:
            per_row = per_row * (tau.reshape(-1) if isinstance(tau, torch.Tensor) else tau) ** 2
        loss = per_row.sum()
        if not opts.want_grad:
            return loss.detach(), None
        (w,) = torch.autograd.grad(loss, [log_Q])
    k = ids.shape[-1]
    total = w.sum(-1, keepdim=True)
    g_top = w[:, :k] - top.exp() * total
    if opts.full:  # every id is a top id: the scatter sets the whole buffer
        grad = log_q.scatter_(-1, ids, g_top)
    else:
        coef = torch.where(s > 0, w[:, k:] / s, torch.zeros_like(s)) - total * m.exp()
        grad = e.mul_(coef).scatter_(-1, ids, g_top)
    if not tau_is_one:
        grad.div_(tau)
    return loss.detach(), grad


class SparseKD(torch.autograd.Function):
    """``sum over counted rows of the bucket loss / M``, chunk by chunk, gradients computed in forward.

    Inputs: ``opts`` (:class:`SparseOptions`), ``rows`` (flat indices of the counted rows, or None: all),
    ``tau`` (a number, or ``(M, 1)``), the store's ``ids``, ``logp``, ``log_tail`` (``M`` rows), then the
    student as logits ``z`` ``(N, V)`` or as hidden states ``h`` ``(N, D)`` with output layer ``w`` ``(V, D)``
    and ``b`` ``(V,)`` (:class:`~brewkit.losses.vocab.LogitsSide`). The bucket loss's gradient is closed-form
    given ``w = dL/d log Q`` (:func:`bucket_chunk`), so each chunk's logits are made once, its gradient is
    pushed into the inputs' gradient buffers at once (``h`` and the output layer's through the matmul, as
    the fused dense form does in backward) and dropped; backward only scales the buffers.
    """

    @staticmethod
    def forward(ctx, opts: SparseOptions, rows, tau, ids, logp, log_tail, z, h, w, b):
        side = LogitsSide(z, h, w, b)
        needs = ctx.needs_input_grad[6:10]
        grads = side.new_grads(needs, opts.dtype, rows is None) if opts.want_grad and any(needs) else None
        total = torch.zeros((), dtype=opts.dtype, device=ids.device)
        for start, end, sel in row_chunks(opts.n_rows, opts.chunk, rows):
            tau_c = tau[start:end] if isinstance(tau, torch.Tensor) else tau
            loss, g = bucket_chunk(side.logits(sel, opts.dtype), ids[start:end], logp[start:end],
                                   log_tail[start:end], tau_c, opts)
            total += loss
            if grads is not None:
                side.add_grad(grads, sel, g)
            del g
        ctx.grads = None if grads is None else LogitsSide.finish(grads, [z, h, w, b])
        ctx.n_rows = opts.n_rows
        return total / max(opts.n_rows, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        if ctx.grads is None:  # the buffers were scaled in place and handed over by the first backward
            raise RuntimeError("the sparse KD loss's gradients are computed in its forward pass and handed over "
                               "once: backpropagate through it once (recompute the loss for a second pass)")
        scale = grad_out / max(ctx.n_rows, 1)
        grads = [None if g is None else g.mul_(scale.to(g.dtype)) for g in ctx.grads]
        ctx.grads = None
        return (None,) * 6 + tuple(grads)


def check_store_rows(n_rows: int, teacher: TopKTeacher, n_classes: int, name: str) -> None:
    """The student's counted rows and classes match the store's (else the error that says what changed)."""
    if teacher.ids.shape[0] != n_rows:
        raise CheckpointError(f"the student has {n_rows} counted positions in this batch but the teacher store "
                              f"gave {teacher.ids.shape[0]}; the positions counted changed since the capture "
                              "(data, task or settings): capture again")
    if n_classes != teacher.vocab:
        raise ConfigError(f"the student's logits have {n_classes} classes but the teacher store's distribution is "
                          f"over {teacher.vocab}; give the student the teacher's vocabulary size", name)


def sparse_setup(kind: str, teacher: TopKTeacher, temperature: float | torch.Tensor, temperature_squared: bool,
                 params: dict, n_rows: int, n_classes: int, chunk_size: int | None, dtype: torch.dtype,
                 want_grad: bool, device: torch.device, chunk_elements: int = SPARSE_CHUNK_ELEMENTS
                 ) -> tuple[SparseOptions, float | torch.Tensor]:
    """The checked options and tau (a number or ``(M, 1)``) of :func:`sparse_kd_loss` and
    :func:`fused_linear_sparse_kd_loss`."""
    if kind not in SPARSE_KINDS:
        raise ConfigError(f"must be one of {', '.join(SPARSE_KINDS)}; got {kind!r}", "kind")
    if teacher.sampled:
        sampled_form(kind, kind, "kind")
    params = resolve_params(kind, params)
    check_temperature_squared(temperature_squared)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise ConfigError(f"must be a positive integer (rows per chunk) or None (automatic), got {chunk_size!r}",
                          "chunk_size")
    check_temperature(temperature, teacher.temperature, teacher.full)
    if isinstance(temperature, torch.Tensor) and temperature.numel() > 1:
        tau: float | torch.Tensor = temperature.detach().to(device, dtype).reshape(-1, 1)
        if tau.shape[0] != n_rows:
            raise ConfigError(f"per-row temperatures must have one value per counted row ({n_rows}), got "
                              f"{tau.shape[0]}", "temperature")
    else:
        tau = float(temperature)
    chunk = chunk_size or max(1, chunk_elements // max(n_classes, 1))
    return SparseOptions(kind, params, bool(temperature_squared), teacher.full, float(teacher.temperature), chunk,
                         n_rows, dtype, want_grad), tau


def store_rows(mask: torch.Tensor | None, lead: tuple[int, ...], device: torch.device
               ) -> tuple[torch.Tensor | None, int]:
    """``(rows, M)``: the flat indices of the positions ``mask`` marks (None: every row of ``lead``)."""
    if mask is None:
        return None, math.prod(lead)
    if tuple(mask.shape) != tuple(lead):
        raise ConfigError(f"must have the leading shape {tuple(lead)} of the student's rows, got "
                          f"{tuple(mask.shape)}", "mask")
    rows = counted_row_indices(mask.to(device).bool())
    return rows, rows.numel()


def sparse_kd_loss(kind: str, logits_S: torch.Tensor, teacher: TopKTeacher, temperature: float | torch.Tensor = 1.0,
                   *, temperature_squared: bool = False, mask: torch.Tensor | None = None,
                   chunk_size: int | None = None, **params: float) -> torch.Tensor:
    """Mean over the ``M`` counted positions of divergence ``kind`` between the bucket distributions
    (module docstring).

    ``logits_S``: ``(M, V)`` the counted positions' logits, or ``(..., V)`` (e.g. ``(B, L, V)``) with ``mask``
    of the leading shape marking the ``M`` counted positions (row-major, the order the store's rows are in; no
    copy of the counted rows is made). ``teacher``: a :class:`TopKTeacher` of ``M`` rows. ``temperature``: the
    training temperature (see :func:`check_temperature`; per row: ``(M,)``); ``temperature_squared``: each
    row's loss times ``T^2``; ``params``: the kind's parameters (``beta``, ``alpha``); ``chunk_size``: rows
    per chunk (default: about 2M elements). Computed in float32 (float64 for float64 logits) a chunk of rows
    at a time, with the gradient of ``logits_S`` made in the same pass (:class:`SparseKD`). Returns a 0-d
    tensor (0 when ``M = 0``)."""
    check_tensor(logits_S, "logits_S")
    if logits_S.dim() < 2:
        raise ConfigError(f"must be (M, V) logits of the counted positions or (B, L, V) with a mask, got shape "
                          f"{tuple(logits_S.shape)}", "logits_S")
    if logits_S.dim() > 2 and mask is None:
        raise ConfigError(f"(B, L, V) logits need the mask of the counted positions, got shape "
                          f"{tuple(logits_S.shape)} and no mask", "logits_S")
    lead, n_classes = tuple(logits_S.shape[:-1]), logits_S.shape[-1]
    rows, n_rows = store_rows(mask, lead, logits_S.device)
    check_store_rows(n_rows, teacher, n_classes, "logits_S")
    dtype = torch.float64 if logits_S.dtype == torch.float64 else torch.float32
    want = torch.is_grad_enabled() and logits_S.requires_grad
    opts, tau = sparse_setup(kind, teacher, temperature, temperature_squared, params, n_rows, n_classes,
                             chunk_size, dtype, want, logits_S.device)
    t = teacher.to(logits_S.device, non_blocking=True)
    with torch.autocast(logits_S.device.type, enabled=False):
        return SparseKD.apply(opts, rows, tau, t.ids, t.logp, t.log_tail, logits_S.reshape(-1, n_classes),
                              None, None, None)


def fused_linear_sparse_kd_loss(kind: str, hidden_S: torch.Tensor, weight_S: torch.Tensor, teacher: TopKTeacher,
                                bias_S: torch.Tensor | None = None, temperature: float | torch.Tensor = 1.0, *,
                                temperature_squared: bool = False, mask: torch.Tensor | None = None,
                                chunk_size: int | None = None, **params: float) -> torch.Tensor:
    """:func:`sparse_kd_loss` of ``F.linear(hidden_S, weight_S, bias_S)`` without making those logits.

    ``hidden_S``: ``(M, D)``, or ``(B, L, D)`` with ``mask`` ``(B, L)``; ``weight_S``: ``(V, D)`` (the LM
    head); ``bias_S``: ``(V,)`` or None. Each chunk's logits are computed in the inputs' dtype (the autocast
    dtype under autocast, as the model's head would), upcast to float32, used for the loss and its gradient
    and dropped; the gradients of ``hidden_S``, ``weight_S`` and ``bias_S`` are accumulated chunk by chunk in
    the same pass (weight and bias in float32), so no ``(M, V)`` tensor exists. Same value and gradients as
    the logits form (tests)."""
    for name, x in (("hidden_S", hidden_S), ("weight_S", weight_S)):
        check_tensor(x, name)
    if hidden_S.dim() < 2:
        raise ConfigError(f"must be (M, D) or (B, L, D), got shape {tuple(hidden_S.shape)}", "hidden_S")
    if hidden_S.dim() > 2 and mask is None:
        raise ConfigError("(B, L, D) hidden states need the mask of the counted positions", "mask")
    if weight_S.dim() != 2 or weight_S.shape[1] != hidden_S.shape[-1]:
        raise ConfigError(f"must be (V, D) with D = hidden_S.shape[-1] = {hidden_S.shape[-1]}, got shape "
                          f"{tuple(weight_S.shape)}", "weight_S")
    lead, n_classes = tuple(hidden_S.shape[:-1]), weight_S.shape[0]
    check_bias(bias_S, n_classes, "bias_S")
    check_matmul_dtypes(hidden_S, weight_S, bias_S, "S")
    rows, n_rows = store_rows(mask, lead, hidden_S.device)
    check_store_rows(n_rows, teacher, n_classes, "weight_S")
    device_type = hidden_S.device.type
    hidden_S, weight_S, bias_S = autocast_inputs([hidden_S, weight_S, bias_S], device_type)
    dtype = torch.float64 if hidden_S.dtype == torch.float64 else torch.float32
    want = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (hidden_S, weight_S, bias_S))
    opts, tau = sparse_setup(kind, teacher, temperature, temperature_squared, params, n_rows, n_classes,
                             chunk_size, dtype, want, hidden_S.device, SPARSE_FUSED_CHUNK_ELEMENTS)
    t = teacher.to(hidden_S.device, non_blocking=True)
    with torch.autocast(device_type, enabled=False):
        return SparseKD.apply(opts, rows, tau, t.ids, t.logp, t.log_tail, None, flat_rows(hidden_S), weight_S,
                              bias_S)


def sampled_log_probs(logits: torch.Tensor, draws: int, temperature: float, uniforms: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a sampled store keeps of ``(M, V)`` teacher logits (module docstring): ``(ids (M, k'), logp (M, k'),
    log_tail (M,))`` with ``k' = min(draws, V)``.

    ``uniforms``: ``(M, draws)`` numbers in ``[0, 1)``; draw ``j`` of row ``r`` is the id ``i`` with
    ``F_{i-1} <= u_{rj} F_V < F_i``, ``F`` the cumulative sum of ``p_T = softmax(z / T)`` (inverse-CDF sampling:
    ``P(i) = p_T(i)``; an id of probability 0 is never drawn). ``ids``: the distinct ids drawn, most often first,
    then (to fill ``k'`` distinct slots) ids not drawn; ``logp = log(count / draws)`` (``-inf`` for those);
    ``log_tail = -inf`` (the estimate has no mass outside its ids). Float32."""
    if uniforms.shape != (logits.shape[0], draws):
        raise ConfigError(f"must be (M, draws) = ({logits.shape[0]}, {draws}) uniforms, got "
                          f"{tuple(uniforms.shape)}", "uniforms")
    vocab = logits.shape[-1]
    cdf = F.softmax(logits.float() / temperature, dim=-1).cumsum_(-1)
    u = uniforms.to(cdf.device, cdf.dtype) * cdf[:, -1:]
    drawn = torch.searchsorted(cdf, u, right=True).clamp_(max=vocab - 1)
    counts = torch.zeros_like(cdf).scatter_add_(-1, drawn, torch.ones_like(u))
    c, ids = counts.topk(min(int(draws), vocab), dim=-1)
    tail = torch.full(c.shape[:-1], float("-inf"), dtype=c.dtype, device=c.device)
    return ids, (c / draws).log(), tail


def topk_log_probs(logits: torch.Tensor, k: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor,
                                                                               torch.Tensor]:
    """What a store keeps of ``(M, V)`` teacher logits: ``(ids (M, k'), logp (M, k'), log_tail (M,))`` with
    ``k' = min(k, V)``, ``logp = log_softmax(z / T)`` at the ids (largest first) and
    ``log_tail = logsumexp`` of the other ids' log-probabilities (``-inf`` when ``k' = V``), in float32."""
    logp_all = F.log_softmax(logits.float() / temperature, dim=-1)
    k = min(int(k), logp_all.shape[-1])
    logp, ids = logp_all.topk(k, dim=-1)
    if k == logp_all.shape[-1]:
        tail = torch.full(logp.shape[:-1], float("-inf"), dtype=logp.dtype, device=logp.device)
    else:
        tail = torch.logsumexp(logp_all.scatter(-1, ids, float("-inf")), dim=-1)
    return ids, logp, tail
