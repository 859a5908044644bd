"""The divergence family for logit KD: one formula per entry, used by the plain, chunked and fused forms.

Every entry is ``f(logits_S, logits_T, temperature=1, mask=None, **params)`` and returns a 0-d tensor.

Notation: per row (every leading position of the ``(..., C)`` logits), ``z -> c * tanh(z / c)`` when a
``softcap`` ``c`` is given (both models, raw logits, before the temperature), then ``p = softmax(z^T / tau)``
(teacher), ``q = softmax(z^S / tau)`` (student), and ``KL(a || b) = sum_c a_c (log a_c - log b_c)`` with
``0 log 0 = 0`` (a class where the first distribution is 0 contributes nothing, to value and gradient).

============================  ===================================================================  ==========
entry (``kind``)              row loss                                                             params
============================  ===================================================================  ==========
``ce`` (TextBrewer)           ``- sum_c p_c log q_c`` (= ``KL(p || q) + H(p)``)
``kl``                        ``KL(p || q)`` (forward KL)
``reverse_kl``                ``KL(q || p)``
``jsd``                       ``beta KL(p || m) + (1 - beta) KL(q || m)``, ``m = beta p + (1 - beta) q``  ``beta``
                              for ``0 < beta < 1`` (GKD, Agarwal et al. 2024, Eq. 1); ``beta = 0``
                              is ``KL(p || q)`` and ``beta = 1`` is ``KL(q || p)``
``skew_kl``                   ``KL(p || alpha p + (1 - alpha) q)`` (DistiLLM, Ko et al. 2024)       ``alpha``
``skew_reverse_kl``           ``KL(q || alpha q + (1 - alpha) p)`` (DistiLLM)                       ``alpha``
``tvd``                       ``1/2 sum_c |p_c - q_c|`` (total variation distance)
============================  ===================================================================  ==========

``beta`` defaults to 0.5 and lies in [0, 1]; ``alpha`` defaults to 0.1 (DistiLLM's default) and lies in
[0, 1] (0: plain forward / reverse KL; 1: the loss is identically 0). The ``jsd`` ends follow TRL's
``generalized_jsd_loss`` (beta = 0 forward KL, beta = 1 reverse KL), so the numbers carry over from TRL:
with the same ``labels`` and temperature, ``jsd`` equals TRL's value (TRL averages over the tokens whose label
is not -100, as here). Note that JSD itself tends to 0 as beta -> 0 or 1; the ends are TRL's convention, not
the limit. DistiLLM's own ``skewed_forward_kl`` code returns the cross-entropy ``- sum p log m``, which is
``skew_kl`` plus the teacher entropy ``H(p)`` (same gradient); ``skew_kl`` here is the paper's KL, so equal
distributions give 0.

Reduction: the mean of the row losses over the *counted* rows: all rows, or those a ``mask`` (bool, or 0/1
integers, shape ``logits.shape[:-1]``) and ``labels`` (rows with ``labels == ignore_index``, default -100, do
not count) keep. When no row counts the loss is a defined 0 (gradient 0), never NaN.
``temperature``: a positive number, a 0-d tensor, or one value per row (shape ``logits.shape[:-1]``, ``(N,)``
for the ``N`` rows flattened, or ``(M,)`` for the ``M`` counted rows). ``temperature_squared=True`` multiplies
each row's loss by its tau^2 (off by default).

Soft-capping: ``softcap`` caps every logits tensor the loss is given or computes, so give it *raw* logits. A
model whose config has ``final_logit_softcapping`` (Gemma-2) already caps the logits its ``forward`` returns:
on those use ``softcap=None`` (capping twice, ``c tanh(tanh(z / c))``, is a different objective). The fused
form computes logits from hidden states itself, which is where the model's cap must be passed; give the
teacher there as ``hidden_T`` + ``weight_T`` too, or as raw logits.

Precision: the math runs in float32 (float64 for float64 inputs) whatever the input dtype. Mixtures ``m`` are
formed from probabilities and logged where positive, as DistiLLM does. ``reverse_kl`` (and ``jsd`` at beta = 1)
is +inf where the teacher gives a class probability 0 (a ``-inf`` teacher logit) and the student does not:
that is the divergence's value; mask such classes in both models, or use ``jsd`` / ``tvd``, which stay finite.

The chunked and fused forms (:mod:`brewkit.losses.vocab`) call :func:`divergence_per_row` on each chunk, so
all three forms compute the same formula; :func:`kd_loss_implementation` returns the form a config asks for.
"""
from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .checks import (
    IGNORE_INDEX,
    check_softcap,
    check_temperature_squared,
    counted_logits,
    mean_or_zero,
    scale_by_tau_squared,
    soft_cap,
)


# -- parameters ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossParam:
    """One parameter a KD loss takes from ``kd_loss_args``: its default and the values allowed.

    ``low`` / ``high`` are inclusive bounds (None: unbounded); ``integer`` asks for an ``int``; ``allow_none``
    accepts ``None`` (YAML ``null``).
    """

    default: float | int | None
    low: float | None = None
    high: float | None = None
    integer: bool = False
    allow_none: bool = False
    doc: str = ""

    def check(self, value: Any, path: str) -> float | int | None:
        """``value`` as a Python number, or ConfigError at ``path`` saying what is allowed."""
        if value is None and self.allow_none:
            return None
        ok_type = (isinstance(value, int) if self.integer else isinstance(value, (int, float)))
        if isinstance(value, bool) or not ok_type or (not self.integer and not math.isfinite(value)):
            raise ConfigError(f"must be {self.allowed()}, got {value!r}", path)
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ConfigError(f"must be {self.allowed()}, got {value!r}", path)
        return int(value) if self.integer else float(value)

    def allowed(self) -> str:
        """E.g. ``'a number in [0, 1]'``, ``'an integer >= 1 or null'``."""
        what = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            what += f" in [{_num(self.low)}, {_num(self.high)}]"
        elif self.low is not None:
            what += f" >= {_num(self.low)}"
        elif self.high is not None:
            what += f" <= {_num(self.high)}"
        return what + (" or null" if self.allow_none else "")

    def describe(self, name: str) -> str:
        """E.g. ``'beta=0.5 (a number in [0, 1])'``."""
        return f"{name}={self.default!r} ({self.allowed()})"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


BETA = LossParam(0.5, 0.0, 1.0, doc="generalized-JSD weight of the teacher: 0 forward KL, 1 reverse KL")
ALPHA = LossParam(0.1, 0.0, 1.0, doc="skew: the share of the first distribution mixed into the second")

#: The softmax divergences and the parameters each takes (``kind`` names, shared by every form).
DIVERGENCE_PARAMS: dict[str, dict[str, LossParam]] = {
    "ce": {},
    "kl": {},
    "reverse_kl": {},
    "jsd": {"beta": BETA},
    "skew_kl": {"alpha": ALPHA},
    "skew_reverse_kl": {"alpha": ALPHA},
    "tvd": {},
}
DIVERGENCE_KINDS = tuple(DIVERGENCE_PARAMS)
#: About how many float32 ``(rows, C)`` tensors a chunk of each kind holds at its peak (the backward's
#: recomputation under autograd; measured with ``scripts/bench_vocab.py``). The chunked and fused forms size
#: their default chunks with it, so that every kind has about the same working set.
CHUNK_TEMPORARIES: dict[str, int] = {"ce": 4, "kl": 8, "reverse_kl": 8, "jsd": 13, "skew_kl": 12,
                                     "skew_reverse_kl": 11, "tvd": 5}
#: The forms a KD entry can be computed in (``DistillationConfig.kd_implementation``).
IMPLEMENTATIONS = ("plain", "chunked", "fused")


def check_kind(kind: object, path: str = "kind") -> str:
    """``kind`` itself; it must be one of :data:`DIVERGENCE_KINDS`."""
    if kind not in DIVERGENCE_PARAMS:
        raise ConfigError(f"must be one of {', '.join(repr(k) for k in DIVERGENCE_KINDS)}; got {kind!r}", path)
    return kind


def resolve_params(kind: str, given: Mapping[str, Any]) -> dict[str, float]:
    """The parameters of divergence ``kind``: ``given`` (None values mean "the default") checked and completed.

    A parameter ``kind`` does not take, or a value out of range, is a ConfigError naming the parameter.
    """
    spec = DIVERGENCE_PARAMS[check_kind(kind)]
    out = {}
    for name, value in given.items():
        if value is None:
            continue
        if name not in spec:
            takes = ", ".join(spec) if spec else "no parameters"
            raise ConfigError(f"kind {kind!r} takes {takes}; got {name}={value!r}", name)
        out[name] = spec[name].check(value, name)
    for name, p in spec.items():
        if out.get(name) is None:
            out[name] = p.default
    return out


def describe_params(params: Mapping[str, LossParam] | None) -> str:
    """``'beta=0.5 (a number in [0, 1])'`` for ``brewkit presets``; ``''`` when there are none."""
    return ", ".join(p.describe(n) for n, p in (params or {}).items())


#: Arguments the engine passes to a KD loss itself; ``kd_loss_args`` may not set them.
ENGINE_ARGUMENTS = ("logits_S", "logits_T", "temperature", "mask", "temperature_squared", "softcap", "labels",
                    "ignore_index")


def check_kd_loss_args(loss_name: str, fn: Callable, params: Mapping[str, LossParam] | None,
                       args: object, path: str = "kd_loss_args") -> dict[str, Any] | None:
    """Validate ``kd_loss_args`` for the KD entry ``loss_name`` (function ``fn``, declared ``params``).

    Returns the arguments with checked values (None stays None). With declared ``params`` (the registry's
    ``params`` metadata), every key must be one of them and in range. For an entry without declarations (a
    user's loss), a key must be a keyword parameter of ``fn`` other than the ones the engine passes itself
    (:data:`ENGINE_ARGUMENTS`), unless ``fn`` takes ``**kwargs``; its value is then not checked.
    """
    if args is None:
        return None
    if not isinstance(args, Mapping):
        raise ConfigError(f"must be a mapping of parameter names to values (e.g. {{beta: 0.5}}) or null, got "
                          f"{type(args).__name__}", path)
    if params is not None:
        known = list(params)
        checked = {}
        for key, value in args.items():
            if key not in params:
                takes = f"known: {', '.join(known)}" if known else "it takes no parameters"
                raise ConfigError(f"kd_loss_type {loss_name!r} has no parameter {key!r}; {takes}",
                                  f"{path}.{key}")
            checked[key] = params[key].check(value, f"{path}.{key}")
        return checked
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return dict(args)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return dict(args)
    known = [n for n, p in sig.parameters.items()
             if n not in ENGINE_ARGUMENTS and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                         inspect.Parameter.KEYWORD_ONLY)]
    for key in args:
        if key not in known:
            takes = f"known: {', '.join(known)}" if known else "it takes no parameters"
            raise ConfigError(f"kd_loss_type {loss_name!r} has no parameter {key!r}; {takes}", f"{path}.{key}")
    return dict(args)


# -- the formulas --------------------------------------------------------------------------------------------
def _kl_rows(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """``KL(a || b)`` per row from log-probabilities; classes with ``a = 0`` count 0."""
    a = log_a.exp()
    # Select before multiplying, so that -inf - (-inf) where a = 0 reaches neither value nor gradient.
    log_ratio = torch.where(a > 0, log_a - log_b, torch.zeros_like(log_a))
    return (a * log_ratio).sum(dim=-1)


def _kl_to_mixture_rows(log_a: torch.Tensor, a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``KL(a || m)`` per row, ``m`` a mixture that is positive wherever ``a`` is; classes with ``a = 0`` count 0."""
    log_m = torch.log(torch.where(m > 0, m, torch.ones_like(m)))
    return (a * torch.where(a > 0, log_a - log_m, torch.zeros_like(log_a))).sum(dim=-1)


def divergence_per_row(kind: str, logits_S: torch.Tensor, logits_T: torch.Tensor,
                       temperature: float | torch.Tensor, *, softcap: float | None = None,
                       **params: float) -> torch.Tensor:
    """The row losses of divergence ``kind`` (see the module docstring): shape ``logits.shape[:-1]``.

    ``logits_S``, ``logits_T``: ``(..., C)`` floating tensors already in the compute dtype (no checks here:
    this is the inner formula every form calls). ``temperature``: a number, a 0-d tensor or a tensor that
    broadcasts against the logits (``(..., 1)``). ``params``: the kind's parameters, already resolved
    (:func:`resolve_params`).
    """
    zS, zT = soft_cap(logits_S, softcap), soft_cap(logits_T, softcap)
    if kind == "ce":  # TextBrewer's soft cross-entropy, the same ops as always (its numbers must not move)
        p_T = F.softmax(zT / temperature, dim=-1)
        return -(p_T * F.log_softmax(zS / temperature, dim=-1)).sum(dim=-1)
    if kind == "tvd":
        return 0.5 * (F.softmax(zT / temperature, dim=-1) - F.softmax(zS / temperature, dim=-1)).abs().sum(dim=-1)
    log_p = F.log_softmax(zT / temperature, dim=-1)
    log_q = F.log_softmax(zS / temperature, dim=-1)
    if kind == "kl":
        return _kl_rows(log_p, log_q)
    if kind == "reverse_kl":
        return _kl_rows(log_q, log_p)
    if kind == "jsd":
        beta = params["beta"]
        if beta == 0:
            return _kl_rows(log_p, log_q)
        if beta == 1:
            return _kl_rows(log_q, log_p)
        p, q = log_p.exp(), log_q.exp()
        m = beta * p + (1 - beta) * q
        return beta * _kl_to_mixture_rows(log_p, p, m) + (1 - beta) * _kl_to_mixture_rows(log_q, q, m)
    if kind == "skew_kl":
        alpha = params["alpha"]
        if alpha == 0:
            return _kl_rows(log_p, log_q)
        p = log_p.exp()
        return _kl_to_mixture_rows(log_p, p, alpha * p + (1 - alpha) * log_q.exp())
    if kind == "skew_reverse_kl":
        alpha = params["alpha"]
        if alpha == 0:
            return _kl_rows(log_q, log_p)
        q = log_q.exp()
        return _kl_to_mixture_rows(log_q, q, alpha * q + (1 - alpha) * log_p.exp())
    raise ConfigError(f"must be one of {', '.join(repr(k) for k in DIVERGENCE_KINDS)}; got {kind!r}", "kind")


def softmax_kd_loss(kind: str, logits_S: torch.Tensor, logits_T: torch.Tensor,
                    temperature: float | torch.Tensor = 1, mask: torch.Tensor | None = None, *,
                    temperature_squared: bool = False, softcap: float | None = None,
                    labels: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX,
                    **params: float) -> torch.Tensor:
    """The plain (whole-tensor, autograd) form of divergence ``kind``: mean of the row losses over counted rows.

    Shapes: ``logits_S``, ``logits_T``: ``(..., C)``, the same; ``mask`` / ``labels``: ``logits.shape[:-1]``.
    See the module docstring for the formulas, parameters, temperature shapes and reduction.
    """
    params = resolve_params(kind, params)
    check_temperature_squared(temperature_squared)
    softcap = check_softcap(softcap)
    zS, zT, tau = counted_logits(logits_S, logits_T, temperature, mask, labels, ignore_index)
    per_row = divergence_per_row(kind, zS, zT, tau, softcap=softcap, **params)
    if temperature_squared:
        per_row = scale_by_tau_squared(per_row, tau)
    return mean_or_zero(per_row)


# -- the new KD_LOSS_MAP entries (plain form) ----------------------------------------------------------------
def kd_reverse_kl_loss(logits_S: torch.Tensor, logits_T: torch.Tensor, temperature: float | torch.Tensor = 1,
                       mask: torch.Tensor | None = None, *, temperature_squared: bool = False,
                       softcap: float | None = None, labels: torch.Tensor | None = None,
                       ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Reverse KL ``KL(p_S || p_T)`` of tempered softmaxes, mean over counted rows (``KD_LOSS_MAP['reverse_kl']``).

    ``loss = mean_r sum_c q_{r,c} (log q_{r,c} - log p_{r,c})``, ``q = softmax(z^S / tau)``,
    ``p = softmax(z^T / tau)``; classes with ``q = 0`` count 0. Mode-seeking: the student is pushed to put
    its mass where the teacher's is, not to cover all of it. Shapes, masks and options: module docstring.
    """
    return softmax_kd_loss("reverse_kl", logits_S, logits_T, temperature, mask, temperature_squared=temperature_squared,
                           softcap=softcap, labels=labels, ignore_index=ignore_index)


def kd_jsd_loss(logits_S: torch.Tensor, logits_T: torch.Tensor, temperature: float | torch.Tensor = 1,
                mask: torch.Tensor | None = None, *, beta: float = 0.5, temperature_squared: bool = False,
                softcap: float | None = None, labels: torch.Tensor | None = None,
                ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence (GKD Eq. 1; ``KD_LOSS_MAP['jsd']``), mean over counted rows.

    With ``p = softmax(z^T / tau)``, ``q = softmax(z^S / tau)`` and ``m = beta p + (1 - beta) q``:
    ``row loss = beta KL(p || m) + (1 - beta) KL(q || m)`` for ``0 < beta < 1``; ``KL(p || q)`` at
    ``beta = 0`` and ``KL(q || p)`` at ``beta = 1`` (TRL's ``generalized_jsd_loss`` convention).
    ``beta = 0.5`` is the symmetric JSD, bounded by ``log 2``. Shapes, masks and options: module docstring.
    """
    return softmax_kd_loss("jsd", logits_S, logits_T, temperature, mask, temperature_squared=temperature_squared,
                           softcap=softcap, labels=labels, ignore_index=ignore_index, beta=beta)


def kd_skew_kl_loss(logits_S: torch.Tensor, logits_T: torch.Tensor, temperature: float | torch.Tensor = 1,
                    mask: torch.Tensor | None = None, *, alpha: float = 0.1, temperature_squared: bool = False,
                    softcap: float | None = None, labels: torch.Tensor | None = None,
                    ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Skew KL ``KL(p_T || alpha p_T + (1 - alpha) p_S)`` (DistiLLM; ``KD_LOSS_MAP['skew_kl']``), row mean.

    ``alpha = 0`` is the forward KL; mixing some teacher into the student's distribution keeps the
    log-ratio bounded (by ``-log alpha``) where the student is near 0. Shapes, masks and options: module
    docstring.
    """
    return softmax_kd_loss("skew_kl", logits_S, logits_T, temperature, mask, temperature_squared=temperature_squared,
                           softcap=softcap, labels=labels, ignore_index=ignore_index, alpha=alpha)


def kd_skew_reverse_kl_loss(logits_S: torch.Tensor, logits_T: torch.Tensor, temperature: float | torch.Tensor = 1,
                            mask: torch.Tensor | None = None, *, alpha: float = 0.1,
                            temperature_squared: bool = False, softcap: float | None = None,
                            labels: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Skew reverse KL ``KL(p_S || alpha p_S + (1 - alpha) p_T)`` (DistiLLM; ``KD_LOSS_MAP['skew_reverse_kl']``).

    Mean over counted rows; ``alpha = 0`` is the reverse KL. Shapes, masks and options: module docstring.
    """
    return softmax_kd_loss("skew_reverse_kl", logits_S, logits_T, temperature, mask,
                           temperature_squared=temperature_squared, softcap=softcap, labels=labels,
                           ignore_index=ignore_index, alpha=alpha)


def kd_tvd_loss(logits_S: torch.Tensor, logits_T: torch.Tensor, temperature: float | torch.Tensor = 1,
                mask: torch.Tensor | None = None, *, temperature_squared: bool = False,
                softcap: float | None = None, labels: torch.Tensor | None = None,
                ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Total variation distance ``1/2 sum_c |p_T - p_S|`` of tempered softmaxes (``KD_LOSS_MAP['tvd']``).

    Mean over counted rows; each row's value is in [0, 1]. ``|.|`` is not differentiable at 0: where
    ``p_T = p_S`` exactly its gradient is taken as 0, and where they differ only by rounding the gradient is
    the subgradient of whichever side rounding picked. Shapes, masks and options: module docstring.
    """
    return softmax_kd_loss("tvd", logits_S, logits_T, temperature, mask, temperature_squared=temperature_squared,
                           softcap=softcap, labels=labels, ignore_index=ignore_index)


# -- choosing a form -----------------------------------------------------------------------------------------
@functools.cache
def _chunked_entry(kind: str) -> Callable[..., torch.Tensor]:
    from .vocab import chunked_kd_loss  # deferred: vocab imports this module

    def loss(logits_S: torch.Tensor, logits_T: torch.Tensor, temperature: float | torch.Tensor = 1.0,
             mask: torch.Tensor | None = None, **params: Any) -> torch.Tensor:
        return chunked_kd_loss(logits_S, logits_T, temperature, kind=kind, mask=mask, **params)

    loss.__name__ = loss.__qualname__ = f"chunked_{kind}_kd_loss"
    loss.__doc__ = (f"``chunked_kd_loss(logits_S, logits_T, temperature, kind={kind!r}, mask=mask, **params)``: "
                    "the same value and gradients as the plain form, one chunk of rows at a time.")
    return loss


@functools.cache
def _fused_entry(kind: str) -> Callable[..., torch.Tensor]:
    from .vocab import fused_linear_kd_loss  # deferred: vocab imports this module

    def loss(hidden_S: torch.Tensor, weight_S: torch.Tensor, logits_T: torch.Tensor | None = None,
             temperature: float | torch.Tensor = 1.0, mask: torch.Tensor | None = None,
             **kwargs: Any) -> torch.Tensor:
        return fused_linear_kd_loss(hidden_S, weight_S, logits_T, temperature=temperature, mask=mask, kind=kind,
                                    **kwargs)

    loss.__name__ = loss.__qualname__ = f"fused_linear_{kind}_kd_loss"
    loss.__doc__ = (f"``fused_linear_kd_loss(hidden_S, weight_S, logits_T, temperature=..., mask=..., "
                    f"kind={kind!r}, **kwargs)``: from the student's final hidden states and output layer (bias_S, "
                    "or the teacher as hidden_T + weight_T [+ bias_T], by keyword).")
    return loss


def kd_loss_implementation(name: str, implementation: str = "plain") -> Callable[..., torch.Tensor]:
    """The callable that computes ``KD_LOSS_MAP[name]`` in the form ``implementation``.

    * ``"plain"``: the registered function, ``f(logits_S, logits_T, temperature, mask=None, **params)``.
    * ``"chunked"``: the same signature, computed by :func:`~brewkit.losses.vocab.chunked_kd_loss` (rows in
      chunks, softmaxes recomputed in backward; no float32 ``(N, C)`` copies).
    * ``"fused"``: ``f(hidden_S, weight_S, logits_T=None, temperature=1, mask=None, *, bias_S=None,
      hidden_T=None, weight_T=None, bias_T=None, **params)`` by
      :func:`~brewkit.losses.vocab.fused_linear_kd_loss`: the caller passes the student's final hidden states
      and output-layer weight instead of its logits (for a causal LM: the last hidden state and the LM head).

    ``params`` are the entry's ``kd_loss_args`` plus ``temperature_squared``, ``softcap``, ``labels`` and
    ``ignore_index``. ``softcap`` caps every logits tensor the loss sees or makes (module docstring): pass the
    model config's ``final_logit_softcapping`` with the fused form (whose logits the model's forward never
    capped), and None with logits a model's forward returned (already capped).

    Chunked and fused exist for the entries whose registry metadata names a divergence ``kind`` (``ce``,
    ``kl``, ``reverse_kl``, ``jsd``, ``skew_kl``, ``skew_reverse_kl``, ``tvd`` and the ``chunked_*`` aliases);
    any other combination, an unknown name or an unknown form is a ConfigError.
    """
    # deferred: brewkit.presets imports brewkit.losses
    from ..presets import KD_LOSS_MAP

    if implementation not in IMPLEMENTATIONS:
        raise ConfigError(f"must be one of {', '.join(repr(i) for i in IMPLEMENTATIONS)}; got {implementation!r}",
                          "kd_implementation")
    if name not in KD_LOSS_MAP:
        raise ConfigError(KD_LOSS_MAP.unknown(name).message, "kd_loss_type")
    if implementation == "plain":
        return KD_LOSS_MAP[name]
    kind = KD_LOSS_MAP.meta(name).get("kind")
    if kind not in DIVERGENCE_PARAMS:
        having = [n for n in KD_LOSS_MAP if KD_LOSS_MAP.meta(n).get("kind") in DIVERGENCE_PARAMS]
        raise ConfigError(f"kd_loss_type {name!r} has only a plain implementation; {implementation!r} exists for "
                          f"{', '.join(having)}", "kd_implementation")
    return _chunked_entry(kind) if implementation == "chunked" else _fused_entry(kind)
