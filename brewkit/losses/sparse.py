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
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..errors import CheckpointError, ConfigError
from .checks import check_temperature_squared, mean_or_zero
from .divergences import divergence_per_row, resolve_params

#: The divergence kinds that have a sparse (top-k + tail) form; see the module docstring for the others.
SPARSE_KINDS = ("ce", "kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd")


@dataclass
class TopKTeacher:
    """The teacher side of the counted positions of a batch, read from a captured store.

    ``ids``: ``(M, k)`` int64, the top-k token ids of each counted position (rows in the order
    ``logits[mask]`` gives: row-major over the batch). ``logp``: ``(M, k)`` float32, their log-probabilities at
    ``temperature`` (the capture temperature). ``log_tail``: ``(M,)`` float32, ``log(1 - sum exp(logp))``
    (``-inf`` when ``k == vocab``). ``vocab``: the teacher's number of classes. ``counts``: ``(B,)`` counted
    positions per example (None: not known).
    """

    ids: torch.Tensor
    logp: torch.Tensor
    log_tail: torch.Tensor
    temperature: float
    vocab: int
    counts: torch.Tensor | None = None

    @property
    def k(self) -> int:
        return int(self.ids.shape[-1])

    @property
    def full(self) -> bool:
        """Whether the support is the whole vocabulary (no tail)."""
        return self.k >= self.vocab

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TopKTeacher:
        return TopKTeacher(self.ids.to(device, non_blocking=non_blocking),
                           self.logp.to(device, non_blocking=non_blocking),
                           self.log_tail.to(device, non_blocking=non_blocking), self.temperature, self.vocab,
                           self.counts)


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


def bucket_log_probs(logits_S: torch.Tensor, teacher: TopKTeacher,
                     temperature: float | torch.Tensor = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log Q, log P)``, each ``(M, k + 1)`` (``(M, k)`` when ``teacher.full``): the bucket log-probabilities
    of the module docstring, in float32 (float64 for float64 student logits).

    ``logits_S``: ``(M, V)`` the student's logits at the counted positions. ``temperature``: the training
    temperature ``T`` (a number, or ``(M,)`` / ``(M, 1)`` per row for a full-vocabulary store).
    """
    if logits_S.dim() != 2:
        raise ConfigError(f"must be (M, V) logits of the counted positions, got shape {tuple(logits_S.shape)}",
                          "logits_S")
    M, V = logits_S.shape
    if teacher.ids.shape[0] != M:
        raise CheckpointError(f"the student has {M} counted positions in this batch but the teacher store gave "
                              f"{teacher.ids.shape[0]}; the positions counted changed since the capture (data, "
                              "task or settings): capture again")
    if V != teacher.vocab:
        raise ConfigError(f"the student's logits have {V} classes but the teacher store's distribution is over "
                          f"{teacher.vocab}; give the student the teacher's vocabulary size", "logits_S")
    check_temperature(temperature, teacher.temperature, teacher.full)
    dtype = torch.float64 if logits_S.dtype == torch.float64 else torch.float32
    if isinstance(temperature, torch.Tensor) and temperature.numel() > 1:
        tau = temperature.to(logits_S.device, dtype).reshape(-1, 1)
        same = False
    else:
        tau = float(temperature)
        same = tau == float(teacher.temperature)
    ids = teacher.ids.to(logits_S.device)
    log_p = teacher.logp.to(logits_S.device, dtype)
    if not same:  # only for a full-vocabulary store (check_temperature): re-tempering is then exact
        log_p = F.log_softmax(log_p * (teacher.temperature / tau), dim=-1)
    log_q = StudentBuckets.apply(logits_S, ids, tau, not teacher.full)
    if teacher.full:
        return log_q, log_p
    log_p_tail = teacher.log_tail.to(logits_S.device, dtype).reshape(-1, 1)
    return log_q, torch.cat([log_p, log_p_tail], -1)


class StudentBuckets(torch.autograd.Function):
    """``log Q``: the student's bucket log-probabilities ``(M, k)``, plus the tail column ``(M, k + 1)`` with
    ``with_tail``, from ``(M, V)`` logits, with one hand-written backward pass.

    Forward: ``log q = log_softmax(z / T)`` (float32, or float64 for float64 logits), ``log Q_i = log q(S_i)``
    and ``log Q_tail = logsumexp`` of the other ids' ``log q`` (stable: no ``1 - sum`` cancellation). Backward
    takes ``q`` from the saved ``log q`` (the one ``(M, V)`` tensor kept) and, with ``w_j = dL/dlog Q_j`` (the
    small ``(M, k + 1)`` gradient),
    gives ``dL/dz_c = (w_{b(c)} q_c / Q_{b(c)} - q_c sum_j w_j) / T`` where ``b(c)`` is ``c``'s bucket
    (``q_c / Q_c = 1`` for the top-k ids, ``exp(log q_c - log Q_tail)`` in the tail). Plain autograd through
    ``log_softmax``, ``gather``, ``scatter`` and ``logsumexp`` kept several ``(M, V)`` tensors and ran a
    backward pass for each.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, ids: torch.Tensor, tau: float | torch.Tensor,
                with_tail: bool) -> torch.Tensor:
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        log_q = F.log_softmax(logits.to(dtype) / tau, dim=-1)
        out = log_q.gather(-1, ids)
        if with_tail:  # the complement of k < V ids is never empty
            out = torch.cat([out, torch.logsumexp(log_q.scatter(-1, ids, float("-inf")), -1, keepdim=True)], -1)
        saved_tau = tau if isinstance(tau, torch.Tensor) else torch.tensor(float(tau), dtype=dtype)
        ctx.save_for_backward(log_q, ids, out, saved_tau)
        ctx.logits_dtype = logits.dtype
        ctx.with_tail = with_tail
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, w: torch.Tensor):
        log_q, ids, log_Q, tau = ctx.saved_tensors
        k = ids.shape[-1]
        total = w.sum(-1, keepdim=True)
        if ctx.with_tail:  # the tail ids: w_tail q_c / Q_tail - q_c sum_j w_j
            grad = (log_q - log_Q[:, k:]).exp_().mul_(w[:, k:]).addcmul_(log_q.exp(), total, value=-1)
        else:  # k = V: every id is a top-k bucket, all set by the scatter below
            grad = torch.empty_like(log_q)
        grad.scatter_(-1, ids, w[:, :k] - log_q.gather(-1, ids).exp() * total)  # the top ids: w_i - q_i sum_j w_j
        grad.div_(tau)
        return grad.to(ctx.logits_dtype), None, None, None


def sparse_kd_loss(kind: str, logits_S: torch.Tensor, teacher: TopKTeacher, temperature: float | torch.Tensor = 1.0,
                   *, temperature_squared: bool = False, **params: float) -> torch.Tensor:
    """Mean over the ``M`` counted positions of divergence ``kind`` between the bucket distributions
    (module docstring). ``logits_S``: ``(M, V)``; ``teacher``: a :class:`TopKTeacher` of ``M`` rows;
    ``temperature``: the training temperature (see :func:`check_temperature`); ``temperature_squared``:
    each row's loss times ``T^2``; ``params``: the kind's parameters (``beta``, ``alpha``). Returns a 0-d
    tensor (0 when ``M = 0``)."""
    if kind not in SPARSE_KINDS:
        raise ConfigError(f"must be one of {', '.join(SPARSE_KINDS)}; got {kind!r}", "kind")
    params = resolve_params(kind, params)
    check_temperature_squared(temperature_squared)
    log_q, log_p = bucket_log_probs(logits_S, teacher, temperature)
    if kind == "ce":  # -sum P log Q: a bucket with P = 0 counts 0 (its log Q may be -inf)
        p = log_p.exp()
        per_row = -(p * torch.where(p > 0, log_q, torch.zeros_like(log_q))).sum(-1)
    else:
        per_row = divergence_per_row(kind, log_q, log_p, 1.0, **params)
    if temperature_squared:
        tau = temperature.to(per_row).reshape(-1) if isinstance(temperature, torch.Tensor) else temperature
        per_row = per_row * tau ** 2
    return mean_or_zero(per_row)


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
