"""Coupled-RankDistil (Reddi et al. 2021), as TF-Ranking's ``CoupledRankDistilLoss`` computes it.

The teacher scores ``t`` of a list of N items define a Plackett-Luce (PL) distribution over rankings
(item j is picked next with probability proportional to ``exp(t_j)``). The loss draws S rankings ``pi`` from it
with the Gumbel-max trick and charges the student the negative log-likelihood of each ranking's top-k prefix
under the student's PL model::

    loss_b = 1/S sum_s  sum_{i<k} [ log sum_{m>=i} exp(s[pi(m)]) - s[pi(i)] ]        s = scores_S / temperature

The teacher only chooses orderings: no gradient ever reaches ``scores_T``.

Two modes:

* ``"faithful"`` reproduces TF-Ranking 0.5.5 to float32 rounding, artefacts included. Items with a teacher
  score < 0 are padding (or, when ``valid_mask`` is given, the items outside it, like TF's ``ragged=True``).
  Padding is not removed: it takes the filler score ``lambda = ln 1e-10`` on both sides, so each padded item
  adds 1e-10 to every normaliser; position i's normaliser also leaks ``i * 1e-10`` from the already placed
  slots; ``k = topk or N`` counts padding, so every padded slot that falls inside the top-k adds exactly
  ``ln N``; the sort keys are ``log(softmax(t + G) + 1e-10)`` in float32 with random tie-breaking; and a list
  whose valid teacher scores sum to <= 0 gets weight 0 (but still counts in the ``"mean"`` denominator).
* ``"clean"`` drops invalid items (validity from ``valid_mask``, all valid when None, whatever the sign of
  the teacher scores), uses ``k_b = min(k, #valid_b)``, no filler, no leak, no list weight. This is what
  list-wise KD on teacher logits (which can be negative) needs.

When no padding reaches the top-k the two modes agree to about ``1e-10 * (N + k) / sum_j exp(s_j)``
(relative). TF's random stream cannot be reproduced in PyTorch; pass ``perms`` (or a ``generator``) for
reproducible values, and use :func:`coupled_rank_distil_expected` for the exact ``sample_size -> inf`` value.
"""
from __future__ import annotations

import itertools
import math

import torch

from ..errors import ConfigError
from .checks import IGNORE_INDEX, counted_rows

#: TF-Ranking's epsilon and its log, the filler score of invalid items in faithful mode.
EPSILON = 1e-10
LOG_EPSILON = math.log(EPSILON)
# In clean mode invalid items are given a score this far below the lowest valid score of their list:
# exp(-200) vanishes against any valid term in float32 and float64, and unlike -inf it keeps gradients finite.
_CLEAN_GAP = 200.0
_MAX_EXPECTED_TERMS = 20_000_000

_MODES = ("faithful", "clean")
_REDUCTIONS = ("mean", "sum", "none")


# -- argument checks ------------------------------------------------------------------------------------
def _check_scores(scores_S: torch.Tensor, scores_T: torch.Tensor) -> None:
    for name, x in (("scores_S", scores_S), ("scores_T", scores_T)):
        if not isinstance(x, torch.Tensor):
            raise ConfigError(f"must be a tensor of shape [B, N], got {type(x).__name__}", name)
        if x.dim() != 2 or x.shape[1] < 1:
            raise ConfigError(f"must have shape [B, N] (lists of N >= 1 scores), got {tuple(x.shape)}", name)
    if scores_S.shape != scores_T.shape:
        raise ConfigError(f"scores_S {tuple(scores_S.shape)} and scores_T {tuple(scores_T.shape)} must have the "
                          "same shape [B, N]", "scores_T")
    if not scores_S.is_floating_point():
        raise ConfigError(f"student scores must be floating point, got {scores_S.dtype}", "scores_S")


def _check_choice(value: object, name: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"must be one of {', '.join(map(repr, allowed))}; got {value!r}", name)


def _check_topk(topk: int | None, n: int, mode: str) -> int:
    if topk is None:
        return n
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ConfigError(f"must be a positive integer or None, got {topk!r}", "topk")
    if mode == "faithful" and topk > n:
        raise ConfigError(f"topk ({topk}) cannot be greater than the list size N ({n}) in faithful mode "
                          "(TF-Ranking fails on it); clean mode caps k at the number of valid items", "topk")
    return min(topk, n)


def _temperature_column(temperature: float | torch.Tensor, batch: int, like: torch.Tensor) -> torch.Tensor | float:
    """A positive number, or a per-list tensor ([B] or [B, 1]) returned as [B, 1]."""
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() == 1:
            temperature = temperature.reshape(())
        elif temperature.shape not in ((batch,), (batch, 1)):
            raise ConfigError(f"a temperature tensor must be a scalar or have shape [B] or [B, 1] with B={batch}; "
                              f"got {tuple(temperature.shape)}", "temperature")
        if not bool((temperature > 0).all()):
            raise ConfigError("every temperature must be > 0", "temperature")
        t = temperature.detach().to(device=like.device, dtype=like.dtype)
        return t if t.dim() == 0 else t.reshape(batch, 1)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ConfigError(f"must be a number > 0 or a per-list tensor, got {temperature!r}", "temperature")
    return float(temperature)


def _validity(scores_T: torch.Tensor, valid_mask: torch.Tensor | None, mode: str) -> torch.Tensor:
    if valid_mask is not None:
        if not isinstance(valid_mask, torch.Tensor) or valid_mask.shape != scores_T.shape:
            got = tuple(valid_mask.shape) if isinstance(valid_mask, torch.Tensor) else type(valid_mask).__name__
            raise ConfigError(f"must be a bool tensor of shape {tuple(scores_T.shape)} (like the scores); got {got}",
                              "valid_mask")
        return valid_mask.to(device=scores_T.device, dtype=torch.bool)
    if mode == "faithful":
        return scores_T >= 0
    return torch.ones_like(scores_T, dtype=torch.bool)


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def _reduce(per_list: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_list
    total = per_list.sum()
    return total / per_list.shape[0] if reduction == "mean" else total


# -- permutations ---------------------------------------------------------------------------------------
def _check_perms(perms: torch.Tensor, batch: int, n: int, device: torch.device) -> torch.Tensor:
    if not isinstance(perms, torch.Tensor) or perms.dim() != 3 or perms.shape[0] != batch or perms.shape[2] != n \
            or perms.shape[1] < 1:
        got = tuple(perms.shape) if isinstance(perms, torch.Tensor) else type(perms).__name__
        raise ConfigError(f"must be an integer tensor [B, S, N] = [{batch}, S, {n}] of item indices with S >= 1; "
                          f"got {got}", "perms")
    if perms.is_floating_point() or perms.dtype == torch.bool or perms.is_complex():
        raise ConfigError(f"must hold integer item indices, got dtype {perms.dtype}", "perms")
    perms = perms.to(device=device, dtype=torch.long)
    if not torch.equal(perms.sort(dim=-1).values, torch.arange(n, device=device).expand_as(perms)):
        raise ConfigError(f"every perms[b, s] must be a permutation of 0..{n - 1}", "perms")
    return perms


@torch.no_grad()
def _sample_perms(t: torch.Tensor, valid: torch.Tensor, sample_size: int, mode: str,
                  generator: torch.Generator | None) -> torch.Tensor:
    """S Plackett-Luce rankings per list by the Gumbel-max trick: argsort of t + Gumbel noise, [B, S, N]."""
    b, n = t.shape
    kw = {"device": t.device, "dtype": torch.float32, "generator": generator}
    u = torch.rand((b, sample_size, n), **kw)
    gumbel = -torch.log(-torch.log(u + 1e-20) + 1e-20)
    if mode == "clean":
        z = torch.where(valid.unsqueeze(1), t.float().unsqueeze(1) + gumbel, float("-inf"))
        return z.sort(dim=-1, descending=True, stable=True).indices
    # TF: keys log(softmax(z) + eps) in float32 (a monotone map that ties items of probability < ~3e-18), then
    # a stable descending sort after a random pre-shuffle, so that ties are broken uniformly at random.
    filled = torch.where(valid, t.float(), LOG_EPSILON)
    keys = torch.log(torch.softmax(filled.unsqueeze(1) + gumbel, dim=-1) + EPSILON)
    shuffle = torch.rand((b, sample_size, n), **kw).sort(dim=-1, stable=True).indices
    order = keys.gather(-1, shuffle).sort(dim=-1, descending=True, stable=True).indices
    return shuffle.gather(-1, order)


# -- the student's Plackett-Luce negative log-likelihood -------------------------------------------------
def _clean_fill(s: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Student scores with invalid items moved ``_CLEAN_GAP`` below the list's lowest valid score."""
    low = torch.where(valid, s.detach(), float("inf")).amin(dim=-1, keepdim=True)
    low = torch.where(torch.isfinite(low), low, torch.zeros_like(low))  # lists with no valid item
    return torch.where(valid, s, low - _CLEAN_GAP)


def _faithful_nll(s: torch.Tensor, valid: torch.Tensor, perms: torch.Tensor, k: int) -> torch.Tensor:
    """[B, S] top-k PL NLL with TF's fillers and the i*eps leak of already placed slots."""
    filled = torch.where(valid, s, torch.full_like(s, LOG_EPSILON))
    sp = filled.unsqueeze(1).expand(-1, perms.shape[1], -1).gather(-1, perms)           # [B, S, N]
    tail = torch.logcumsumexp(sp.flip(-1), dim=-1).flip(-1)[..., :k]                   # log sum_{m>=i}
    i = torch.arange(k, device=s.device, dtype=s.dtype)
    leak = torch.log(i) + LOG_EPSILON                                                   # -inf at i = 0
    return (torch.logaddexp(tail, leak) - sp[..., :k]).sum(-1)


def _clean_nll(s: torch.Tensor, valid: torch.Tensor, perms: torch.Tensor, k: int) -> torch.Tensor:
    """[B, S] top-k PL NLL over the valid items only (invalid ones are skipped wherever perms puts them)."""
    sz = perms.shape[1]
    valid_in_order = valid.unsqueeze(1).expand(-1, sz, -1).gather(-1, perms)
    first_valid = valid_in_order.to(torch.uint8).sort(dim=-1, descending=True, stable=True).indices
    perms = perms.gather(-1, first_valid)                       # same order, invalid items moved to the end
    sp = _clean_fill(s, valid).unsqueeze(1).expand(-1, sz, -1).gather(-1, perms)
    tail = torch.logcumsumexp(sp.flip(-1), dim=-1).flip(-1)[..., :k]
    k_eff = valid.sum(-1).clamp(max=k)                                                   # [B]
    counted = torch.arange(k, device=s.device) < k_eff[:, None, None]                    # [B, 1, k]
    return torch.where(counted, tail - sp[..., :k], torch.zeros_like(tail)).sum(-1)


# -- public API -----------------------------------------------------------------------------------------
def coupled_rank_distil_loss(scores_S: torch.Tensor, scores_T: torch.Tensor, sample_size: int = 8,
                             topk: int | None = None, temperature: float | torch.Tensor = 1.0,
                             mode: str = "faithful", reduction: str = "mean",
                             valid_mask: torch.Tensor | None = None, perms: torch.Tensor | None = None,
                             generator: torch.Generator | None = None) -> torch.Tensor:
    """TF-Ranking's Coupled-RankDistil loss on lists of scores.

    Args:
        scores_S: student logits ``[B, N]`` (TF's ``y_pred``); gradients flow here only.
        scores_T: teacher scores ``[B, N]`` (TF's ``y_true``); they only choose the sampled rankings.
        sample_size: S, the number of rankings drawn per list (ignored when ``perms`` is given).
        topk: k, the length of the ranked prefix the student pays for (None: k = N; faithful mode counts
            padding in N, clean mode uses ``min(k, #valid)`` per list).
        temperature: divides the student scores only, as in TF (the teacher is not softened); a number or a
            per-list tensor ``[B]``.
        mode: ``"faithful"`` (TF exactly) or ``"clean"`` (invalid items dropped); see the module docstring.
        reduction: ``"mean"`` (sum over lists / B, TF's AUTO), ``"sum"``, or ``"none"`` (``[B]``).
        valid_mask: bool ``[B, N]``, True for real items. Clean mode: all valid when None. Faithful mode: when
            None, ``scores_T >= 0``; when given, it replaces that test (TF's ``ragged=True`` structure).
        perms: LongTensor ``[B, S, N]``, each ``perms[b, s]`` a ranking (best first) of item indices, used
            instead of sampling (then S = ``perms.shape[1]``).
        generator: ``torch.Generator`` for the Gumbel noise (and faithful mode's tie-break shuffle).

    Returns:
        A scalar, or ``[B]`` for ``reduction="none"``.
    """
    _check_scores(scores_S, scores_T)
    _check_choice(mode, "mode", _MODES)
    _check_choice(reduction, "reduction", _REDUCTIONS)
    b, n = scores_S.shape
    k = _check_topk(topk, n, mode)
    valid = _validity(scores_T, valid_mask, mode)
    s = scores_S.to(_work_dtype(scores_S))
    s = s / _temperature_column(temperature, b, s)
    t = scores_T.detach().to(device=s.device, dtype=s.dtype)
    valid = valid.to(scores_S.device)

    if perms is not None:
        perms = _check_perms(perms, b, n, scores_S.device)
    else:
        if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 1:
            raise ConfigError(f"must be a positive integer, got {sample_size!r}", "sample_size")
        perms = _sample_perms(t, valid, sample_size, mode, generator)

    if mode == "faithful":
        per_list = _faithful_nll(s, valid, perms, k).mean(-1)
        per_list = per_list * (torch.where(valid, t, 0.0).sum(-1) > 0).to(s.dtype)
    else:
        per_list = _clean_nll(s, valid, perms, k).mean(-1)
    return _reduce(per_list, reduction)


def coupled_rank_distil_expected(scores_S: torch.Tensor, scores_T: torch.Tensor, topk: int | None = None,
                                 temperature: float | torch.Tensor = 1.0, mode: str = "faithful",
                                 reduction: str = "mean", valid_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The exact expectation of :func:`coupled_rank_distil_loss` over the teacher's rankings (S -> inf).

    Sums over every ordered top-k prefix ``p`` (N!/(N-k)! of them, so for small lists only)::

        E[loss_b] = sum_p Q(p) * l(p),   Q(p) = prod_{i<k} exp(t[p_i]) / sum_{j in R_i} exp(t_j),
        l(p) = sum_{i<k} [ log(sum_{j in R_i} exp(s_j) + i*eps) - s[p_i] ]

    with ``R_i`` the items not in ``p_0..p_{i-1}``. Faithful mode keeps TF's fillers and leak (``eps = 1e-10``);
    clean mode drops invalid items and uses ``k_b = min(k, #valid_b)`` (and no leak). Arguments are those of
    :func:`coupled_rank_distil_loss`; the result is differentiable in ``scores_S``. Faithful mode ignores the
    float32 tie artefact of TF's sort keys (it only matters for teacher score ranges beyond ~40).
    """
    _check_scores(scores_S, scores_T)
    _check_choice(mode, "mode", _MODES)
    _check_choice(reduction, "reduction", _REDUCTIONS)
    b, n = scores_S.shape
    k = _check_topk(topk, n, mode)
    terms = math.perm(n, k) * k * n * b
    if terms > _MAX_EXPECTED_TERMS:
        raise ConfigError(f"the exact expectation needs {math.perm(n, k)} prefixes per list ({terms} terms); "
                          "use smaller lists or topk, or coupled_rank_distil_loss with a large sample_size",
                          "scores_S")
    valid = _validity(scores_T, valid_mask, mode).to(scores_S.device)
    s = scores_S.to(_work_dtype(scores_S))
    s = s / _temperature_column(temperature, b, s)
    t = scores_T.detach().to(device=s.device, dtype=s.dtype)

    if mode == "faithful":
        t_f = torch.where(valid, t, LOG_EPSILON)
        s_f = torch.where(valid, s, torch.full_like(s, LOG_EPSILON))
        per_list = _expected_terms(s_f, t_f, k, leak=True)
        per_list = per_list * (torch.where(valid, t, 0.0).sum(-1) > 0).to(s.dtype)
    else:
        t_c = torch.where(valid, t, float("-inf"))
        s_c = _clean_fill(s, valid)
        k_eff = valid.sum(-1).clamp(max=k)
        per_list = torch.zeros(b, dtype=s.dtype, device=s.device)
        for kk in k_eff.unique().tolist():      # one enumeration per distinct prefix length, not per list
            if kk == 0:
                continue
            rows = (k_eff == kk).nonzero().squeeze(1)
            per_list = per_list.index_put((rows,), _expected_terms(s_c[rows], t_c[rows], kk, leak=False))
    return _reduce(per_list, reduction)


def _expected_terms(s: torch.Tensor, t: torch.Tensor, k: int, leak: bool) -> torch.Tensor:
    """sum over all ordered k-prefixes of Q(prefix | t) * NLL(prefix | s), per list: [B]."""
    n = s.shape[1]
    prefixes = torch.tensor(list(itertools.permutations(range(n), k)), device=s.device).reshape(-1, k)  # [P, k]
    placed = torch.nn.functional.one_hot(prefixes, n)
    remaining = (placed.cumsum(1) - placed) == 0                                          # [P, k, N]: R_i

    def log_norm(x):                                        # log sum_{j in R_i} exp(x_j): [B, P, k]
        return torch.logsumexp(torch.where(remaining, x[:, None, None, :], float("-inf")), dim=-1)

    log_q = (t[:, prefixes] - log_norm(t)).sum(-1)                                       # [B, P]
    norm = log_norm(s)
    if leak:
        i = torch.arange(k, device=s.device, dtype=s.dtype)
        norm = torch.logaddexp(norm, torch.log(i) + LOG_EPSILON)
    nll = (norm - s[:, prefixes]).sum(-1)                                                 # [B, P]
    return (log_q.exp() * nll).sum(-1)


def coupled_rank_distil_kd_loss(logits_S: torch.Tensor, logits_T: torch.Tensor,
                                temperature: float | torch.Tensor = 1.0, mask: torch.Tensor | None = None, *,
                                temperature_squared: bool = False, sample_size: int = 8, topk: int | None = None,
                                valid_mask: torch.Tensor | None = None,
                                generator: torch.Generator | None = None) -> torch.Tensor:
    """``KD_LOSS_MAP['coupled_rank_distil']``: list-wise KD on ``[B, N]`` scores, clean mode, batch mean.

    Each row of ``logits_T`` / ``logits_S`` scores one list of N candidates (any sign: every item is valid
    unless ``valid_mask`` says otherwise). The temperature softens **both** sides, as every other KD loss
    does: rankings are drawn from the teacher's PL model at ``logits_T / tau`` and the student pays its NLL at
    ``logits_S / tau``, so the optimum is still ``logits_S = logits_T``, and a larger tau makes the sampled
    teacher rankings more random (softer targets). This differs from TF-Ranking's own ``temperature``, which
    divides the student only (use :func:`coupled_rank_distil_loss` for that). ``temperature`` may be a number
    or a per-list tensor ``[B]``; ``temperature_squared=True`` multiplies each list's loss by its tau^2 (off by
    default, like the other KD losses). ``mask`` (optional, bool or 0/1 ``[B]``) selects the lists that
    count, as for the other KD entries: the loss is the mean over those (0 when none counts); a per-list
    temperature may then have shape ``[B]`` or one value per counted list.
    """
    _check_scores(logits_S, logits_T)
    if mask is not None:
        keep = counted_rows(mask, None, IGNORE_INDEX, (logits_S.shape[0],), logits_S.device)
        if isinstance(temperature, torch.Tensor) and temperature.shape in ((logits_S.shape[0],),
                                                                            (logits_S.shape[0], 1)):
            temperature = temperature.reshape(-1)[keep.to(temperature.device)]
        logits_S, logits_T = logits_S[keep], logits_T[keep]
        valid_mask = None if valid_mask is None else valid_mask[keep.to(valid_mask.device)]
        if logits_S.shape[0] == 0:
            return logits_S.sum() * 0.0  # no list counts: a defined 0 with a zero gradient
    teacher = logits_T.detach().to(_work_dtype(logits_S))
    tau = _temperature_column(temperature, logits_S.shape[0], teacher)
    per_list = coupled_rank_distil_loss(logits_S, teacher / tau, sample_size=sample_size, topk=topk,
                                        temperature=temperature, mode="clean", reduction="none",
                                        valid_mask=valid_mask, generator=generator)
    if temperature_squared:
        per_list = per_list * (tau.reshape(-1) ** 2 if isinstance(tau, torch.Tensor) else tau ** 2)
    return per_list.mean()
