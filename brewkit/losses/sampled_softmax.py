"""TAPAS two-pass sampled softmax: ``tf.contrib.nn.rank_sampled_softmax_loss`` (Bai, Goldman, Zhang 2017).

For an output layer with very many classes (weights ``W [C, D]``, biases ``b [C]``), each step uses only a few
of them:

1. **Candidates.** ``num_sampled`` distinct class ids drawn by a learned-unigram sampler (or supplied as
   ``sampled_values``), with their expected counts ``Q``.
2. **Adaptive resampling** (no gradient). Each candidate c gets the batch-pooled score
   ``logsumexp_r((w_c . x_r + b_c) / tau)`` over *all* rows r of the batch; the ``num_resampled`` best are kept
   (ties go to the earlier candidate; kept ids stay in their phase-1 order). Expected counts are *not*
   re-estimated: phase 1's values are carried over (biased by design, as in TF).
3. **Sampled softmax** on the kept classes, ``tf.nn.sampled_softmax_loss``'s formula per row b::

       u_t = w_{y_t} . x_b + b_{y_t} - log Q(y_t)          (t < num_true)
       v_q = w_{c_q} . x_b + b_{c_q} - log Q(c_q)  (- FLT_MAX on an accidental hit)
       loss_b = logsumexp([u, v]) - mean_t u_t

   An accidental hit (a kept id equal to one of the row's labels) is masked at the id's *last* position
   among the kept ids only, by adding ``-FLT_MAX`` (= -3.4028235e38, finite, as TF does).

The result is generally an underestimate of the full softmax loss; evaluate with the full softmax.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import ConfigError

FLT_MAX = 3.4028234663852886e38      # TF masks accidental hits with -FLT_MAX (float32 max), not -inf
_PARTITION_STRATEGIES = ("div", "mod")

Params = torch.Tensor | Sequence[torch.Tensor]


# -- learned-unigram candidate sampler ------------------------------------------------------------------
def _first_occurrence(ids: torch.Tensor) -> torch.Tensor:
    """Bool mask of the entries of a 1-D tensor that are the first occurrence of their value."""
    values, order = ids.sort(stable=True)
    first_sorted = torch.ones_like(values, dtype=torch.bool)
    first_sorted[1:] = values[1:] != values[:-1]
    first = torch.empty_like(first_sorted)
    first[order] = first_sorted
    return first


class LearnedUnigramSampler:
    """``tf.nn.learned_unigram_candidate_sampler(unique=True)``: a stateful unigram sampler.

    Every class starts with weight 1 (so the first call samples uniformly). A call draws with replacement from
    ``p_c = weight_c / sum(weight)`` until ``num_sampled`` distinct ids are collected (``num_tries`` draws),
    returns them in the order first drawn with the expected counts ``1 - (1 - p_c)^num_tries`` (``p_c * S``
    when no draw was a repeat), and only then adds 1 to the weight of every entry of ``true_classes``
    (duplicates count), so a batch's labels shape the draws of later batches.
    """

    def __init__(self, num_classes: int, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"must be a positive integer, got {num_classes!r}", "num_classes")
        self.num_classes = num_classes
        self.generator = generator
        dev = generator.device if generator is not None and device is None else device
        self.counts = torch.ones(num_classes, dtype=torch.float64, device=dev)

    def _draw_unique(self, p: torch.Tensor, num_sampled: int) -> tuple[torch.Tensor, int]:
        chunks: list[torch.Tensor] = []
        seen = torch.zeros(self.num_classes, dtype=torch.bool, device=p.device)
        need, tries = num_sampled, 0
        while need > 0:                       # one multinomial call per chunk of draws, not per draw
            draws = torch.multinomial(p, max(2 * need, 64), replacement=True, generator=self.generator)
            new = _first_occurrence(draws) & ~seen[draws]
            found = new.cumsum(0)
            if int(found[-1]) >= need:
                stop = int((found >= need).nonzero()[0]) + 1
                chunks.append(draws[:stop][new[:stop]])
                tries += stop
                need = 0
            else:
                chunks.append(draws[new])
                seen[draws[new]] = True
                tries += draws.numel()
                need -= int(found[-1])
        return torch.cat(chunks), tries

    def __call__(self, true_classes: torch.Tensor, num_sampled: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(sampled [S] long, true_expected_count like true_classes, sampled_expected_count [S])``."""
        if num_sampled > self.num_classes:
            raise ConfigError(f"num_sampled ({num_sampled}) cannot be greater than num_classes "
                              f"({self.num_classes})", "num_sampled")
        labels = true_classes.to(self.counts.device, torch.long)
        p = self.counts / self.counts.sum()
        sampled, tries = self._draw_unique(p, num_sampled)

        def expected(q: torch.Tensor) -> torch.Tensor:
            if tries == num_sampled:
                return q * num_sampled
            return -torch.expm1(tries * torch.log1p(-q))

        true_expected = expected(p[labels]).float()
        sampled_expected = expected(p[sampled]).float()
        self.counts.index_add_(0, labels.reshape(-1), torch.ones(labels.numel(), dtype=self.counts.dtype,
                                                                  device=self.counts.device))
        return sampled, true_expected, sampled_expected


# One default sampler per (num_classes, device), like the single stateful sampler op of a TF graph.
_DEFAULT_SAMPLERS: dict[tuple[int, str], LearnedUnigramSampler] = {}


def default_sampler(num_classes: int, device: torch.device | str = "cpu") -> LearnedUnigramSampler:
    """The process-wide sampler :func:`rank_sampled_softmax_loss` uses when given no ``sampled_values``."""
    key = (num_classes, str(torch.device(device)))
    if key not in _DEFAULT_SAMPLERS:
        _DEFAULT_SAMPLERS[key] = LearnedUnigramSampler(num_classes, device=device)
    return _DEFAULT_SAMPLERS[key]


# -- sharded lookups (tf.nn.embedding_lookup) ----------------------------------------------------------
def _shards(params: Params, name: str) -> list[torch.Tensor]:
    if isinstance(params, torch.Tensor):
        return [params]
    if isinstance(params, (list, tuple)) and params and all(isinstance(p, torch.Tensor) for p in params):
        return list(params)
    raise ConfigError(f"must be a tensor or a non-empty list of tensor shards, got {type(params).__name__}", name)


def _check_layout(shards: list[torch.Tensor], strategy: str, name: str) -> int:
    """Check the shard sizes follow ``strategy``'s layout; return the total number of rows."""
    sizes = [p.shape[0] if p.dim() else -1 for p in shards]
    total, count = sum(sizes), len(shards)
    if strategy == "mod":
        expected = [len(range(i, total, count)) for i in range(count)]
    else:
        per, extra = divmod(total, count)
        expected = [per + 1 if i < extra else per for i in range(count)]
    if sizes != expected:
        raise ConfigError(f"shard sizes {sizes} do not follow partition_strategy {strategy!r} for {total} rows "
                          f"(expected {expected})", name)
    return total


def _lookup(shards: list[torch.Tensor], ids: torch.Tensor, strategy: str) -> torch.Tensor:
    """Rows ``ids`` of the (virtually concatenated) sharded table, as ``tf.nn.embedding_lookup``."""
    if len(shards) == 1:
        return shards[0][ids]
    flat = ids.reshape(-1)
    count = len(shards)
    if strategy == "mod":
        shard, row = flat % count, flat // count
    else:
        per, extra = divmod(sum(p.shape[0] for p in shards), count)
        cut = extra * (per + 1)
        low = flat < cut
        rest = flat - cut
        per_ = max(per, 1)
        shard = torch.where(low, flat // (per + 1), extra + rest // per_)
        row = torch.where(low, flat % (per + 1), rest % per_)
    pieces, where = [], []
    for i, table in enumerate(shards):              # a loop over shards, each a single vectorised gather
        hit = (shard == i).nonzero().squeeze(1)
        pieces.append(table[row[hit].to(table.device)])
        where.append(hit)
    gathered = torch.cat(pieces)[torch.cat(where).argsort()]
    return gathered.reshape(*ids.shape, *gathered.shape[1:])


# -- argument checks ------------------------------------------------------------------------------------
def _int_arg(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"must be an integer >= {minimum}, got {value!r}", name)
    return value


def _id_tensor(x: object, name: str, num_classes: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConfigError(f"must be an integer tensor of class ids, got {got}", name)
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= num_classes):
        raise ConfigError(f"class ids must lie in [0, num_classes={num_classes}); got values in "
                          f"[{int(x.min())}, {int(x.max())}]", name)
    return x.long()


# -- the loss -------------------------------------------------------------------------------------------
def rank_sampled_softmax_loss(weights: Params, biases: Params, labels: torch.Tensor, inputs: torch.Tensor,
                              num_sampled: int, num_resampled: int, num_classes: int, num_true: int = 1,
                              sampled_values: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                              resampling_temperature: float | torch.Tensor = 1.0,
                              remove_accidental_hits: bool = True, partition_strategy: str = "mod", *,
                              sampler: LearnedUnigramSampler | None = None) -> torch.Tensor:
    """TAPAS rank-based resampled softmax; returns the per-example loss ``[B]`` (see the module docstring).

    Args:
        weights: class embeddings ``[C, D]``, or a list of shards along dimension 0.
        biases: class biases ``[C]``, or shards laid out like ``weights``.
        labels: int ``[B, num_true]`` target classes (``[B]`` is accepted when ``num_true == 1``).
        inputs: ``[B, D]`` activations.
        num_sampled: S, candidates drawn in phase 1 (``<= num_classes``).
        num_resampled: R, candidates kept in phase 2 (``< num_sampled``).
        num_classes: C.
        num_true: labels per example; the target puts ``1/num_true`` on each.
        sampled_values: ``(sampled [S], true_expected_count [B, num_true], sampled_expected_count [S])``; when
            None, ``sampler`` (default: :func:`default_sampler` for ``num_classes``, shared in the process)
            draws them and then learns from ``labels``.
        resampling_temperature: tau > 0 of phase 2; lower is "more adaptive".
        remove_accidental_hits: mask kept classes that equal a label of the row.
        partition_strategy: ``"mod"`` (id -> shard ``id % P``, row ``id // P``) or ``"div"`` (contiguous blocks,
            the first ``C % P`` shards one row longer); only matters for sharded ``weights`` / ``biases``.
        sampler: keyword-only brewkit extra, a :class:`LearnedUnigramSampler` to use instead of the default.

    Raises:
        ConfigError (a ValueError) with TF's messages: "num_sampled (S) cannot be greater than num_classes (C)",
        "num_resampled (R) must be less than num_sampled (S)", "unsupported partition_strategy (P)"; and for
        malformed shapes, ids or shard layouts.
    """
    num_sampled = _int_arg(num_sampled, "num_sampled", 1)
    num_resampled = _int_arg(num_resampled, "num_resampled", 1)
    num_classes = _int_arg(num_classes, "num_classes", 1)
    num_true = _int_arg(num_true, "num_true", 1)
    # TF's three checks, in TF's order and with TF's words.
    if num_sampled > num_classes:
        raise ConfigError(f"num_sampled ({num_sampled}) cannot be greater than num_classes ({num_classes})",
                          "num_sampled")
    if num_sampled <= num_resampled:
        raise ConfigError(f"num_resampled ({num_resampled}) must be less than num_sampled ({num_sampled})",
                          "num_resampled")
    if partition_strategy not in _PARTITION_STRATEGIES:
        raise ConfigError(f"unsupported partition_strategy ({partition_strategy})", "partition_strategy")

    w_shards, b_shards = _shards(weights, "weights"), _shards(biases, "biases")
    if any(w.dim() != 2 for w in w_shards) or len({w.shape[1] for w in w_shards}) != 1:
        raise ConfigError(f"must be [num_classes, dim] (or shards [rows, dim] of one dim), got shapes "
                          f"{[tuple(w.shape) for w in w_shards]}", "weights")
    if any(b.dim() != 1 for b in b_shards):
        raise ConfigError(f"must be [num_classes] (or 1-D shards), got shapes {[tuple(b.shape) for b in b_shards]}",
                          "biases")
    rows = _check_layout(w_shards, partition_strategy, "weights")
    if _check_layout(b_shards, partition_strategy, "biases") != rows:
        raise ConfigError(f"biases have {sum(b.shape[0] for b in b_shards)} rows but weights have {rows}", "biases")
    if rows < num_classes:
        raise ConfigError(f"weights have {rows} rows, fewer than num_classes ({num_classes})", "weights")
    dim = w_shards[0].shape[1]
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 2 or inputs.shape[1] != dim:
        got = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ConfigError(f"must have shape [batch_size, dim={dim}], got {got}", "inputs")
    batch = inputs.shape[0]
    labels = _id_tensor(labels, "labels", num_classes).to(inputs.device)
    if labels.dim() == 1 and num_true == 1:
        labels = labels.unsqueeze(1)
    if labels.shape != (batch, num_true):
        raise ConfigError(f"must have shape [batch_size, num_true] = [{batch}, {num_true}], got "
                          f"{tuple(labels.shape)}", "labels")
    if isinstance(resampling_temperature, torch.Tensor):
        if resampling_temperature.numel() != 1 or not float(resampling_temperature) > 0:
            raise ConfigError("must be a scalar > 0", "resampling_temperature")
        tau = float(resampling_temperature)
    elif isinstance(resampling_temperature, bool) or not isinstance(resampling_temperature, (int, float)) \
            or not resampling_temperature > 0:
        raise ConfigError(f"must be a scalar > 0, got {resampling_temperature!r}", "resampling_temperature")
    else:
        tau = float(resampling_temperature)

    # Phase 1: candidates and their expected counts (never differentiated).
    if sampled_values is None:
        if sampler is None:
            sampler = default_sampler(num_classes, labels.device)
        elif not isinstance(sampler, LearnedUnigramSampler) or sampler.num_classes != num_classes:
            raise ConfigError(f"must be a LearnedUnigramSampler for num_classes={num_classes}", "sampler")
        sampled_values = sampler(labels, num_sampled)
    if not (isinstance(sampled_values, (tuple, list)) and len(sampled_values) == 3):
        raise ConfigError("must be a tuple (sampled, true_expected_count, sampled_expected_count)", "sampled_values")
    sampled = _id_tensor(sampled_values[0], "sampled_values[0]", num_classes).to(inputs.device)
    if sampled.dim() != 1 or sampled.numel() <= num_resampled:
        raise ConfigError(f"sampled candidates must be a 1-D tensor of more than num_resampled ({num_resampled}) "
                          f"ids, got shape {tuple(sampled.shape)}", "sampled_values[0]")
    dtype = inputs.dtype if inputs.dtype in (torch.float32, torch.float64) else torch.float32
    true_count = torch.as_tensor(sampled_values[1]).detach().to(inputs.device, dtype)
    sampled_count = torch.as_tensor(sampled_values[2]).detach().to(inputs.device, dtype)
    if sampled_count.shape != sampled.shape:
        raise ConfigError(f"sampled_expected_count must have the shape of the sampled ids {tuple(sampled.shape)}, "
                          f"got {tuple(sampled_count.shape)}", "sampled_values[2]")
    try:
        true_count = true_count.expand(batch, num_true)
    except RuntimeError:
        raise ConfigError(f"true_expected_count must broadcast to [batch_size, num_true] = [{batch}, {num_true}], "
                          f"got {tuple(true_count.shape)}", "sampled_values[1]") from None

    x = inputs.to(dtype)
    w_cand = _lookup(w_shards, sampled, partition_strategy).to(x.device, dtype)        # [S, D]
    b_cand = _lookup(b_shards, sampled, partition_strategy).to(x.device, dtype)        # [S]

    # Phase 2: keep the R candidates with the largest batch-pooled scores (no gradient).
    with torch.no_grad():
        pooled = torch.logsumexp((x @ w_cand.T) / tau, dim=0) + b_cand / tau             # [S]
        kept = pooled.sort(descending=True, stable=True).indices[:num_resampled].sort().values
    kept_ids = sampled[kept]

    # Phase 3: sampled softmax on the kept candidates.
    w_true = _lookup(w_shards, labels, partition_strategy).to(x.device, dtype)          # [B, T, D]
    b_true = _lookup(b_shards, labels, partition_strategy).to(x.device, dtype)          # [B, T]
    true_logits = (w_true * x.unsqueeze(1)).sum(-1) + b_true - torch.log(true_count)
    sampled_logits = x @ w_cand[kept].T + b_cand[kept] - torch.log(sampled_count[kept])  # [B, R]
    if remove_accidental_hits:
        last = _first_occurrence(kept_ids.flip(0)).flip(0)                               # TF keeps the last copy
        hits = (labels.unsqueeze(2) == kept_ids.view(1, 1, -1)).any(1) & last           # [B, R]
        sampled_logits = sampled_logits + torch.where(hits, -FLT_MAX, 0.0).to(dtype)
    logits = torch.cat([true_logits, sampled_logits], dim=1)
    return torch.logsumexp(logits, dim=1) - true_logits.mean(1)
