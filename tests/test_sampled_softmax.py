"""TAPAS rank_sampled_softmax_loss against a loop-based reference written here, plus TF's pinned numbers."""
import math

import pytest
import torch

from brewkit.errors import ConfigError
from brewkit.losses.sampled_softmax import LearnedUnigramSampler, rank_sampled_softmax_loss

FLT_MAX = 3.4028234663852886e38


def reference_loss(W, bias, labels, x, sampled, true_count, sampled_count, num_resampled, tau, remove_hits=True):
    """Plain loops: phase-2 scores, stable top-R (kept in phase-1 order), then sampled softmax per row."""
    B, nt = len(labels), len(labels[0])
    S = len(sampled)
    scores = []
    for q in range(S):
        c = sampled[q]
        terms = [float((W[c] @ x[r]).detach()) / tau for r in range(B)]
        m = max(terms)
        scores.append(m + math.log(sum(math.exp(v - m) for v in terms)) + float(bias[c].detach()) / tau)
    ranked = sorted(range(S), key=lambda q: (-scores[q], q))
    kept = sorted(ranked[:num_resampled])
    kept_ids = [sampled[q] for q in kept]
    losses = []
    for b in range(B):
        u = [W[labels[b][t]] @ x[b] + bias[labels[b][t]] - math.log(true_count[b][t]) for t in range(nt)]
        v = []
        for j, q in enumerate(kept):
            c = sampled[q]
            logit = W[c] @ x[b] + bias[c] - math.log(sampled_count[q])
            is_last = c not in kept_ids[j + 1:]
            if remove_hits and is_last and c in labels[b]:
                logit = logit - FLT_MAX
            v.append(logit)
        z = torch.stack(u + v)
        losses.append(torch.logsumexp(z, 0) - torch.stack(u).mean())
    return torch.stack(losses), kept_ids


def random_problem(seed, C=12, D=4, B=5, S=7, nt=1):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(C, D, generator=g, dtype=torch.float64)
    bias = torch.randn(C, generator=g, dtype=torch.float64)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C, (B, nt), generator=g)
    sampled = torch.randperm(C, generator=g)[:S]
    true_count = torch.rand(B, nt, generator=g, dtype=torch.float64) * 0.9 + 0.05
    sampled_count = torch.rand(S, generator=g, dtype=torch.float64) * 0.9 + 0.05
    return W, bias, labels, x, sampled, true_count, sampled_count


# -- values --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("nt", [1, 3])
@pytest.mark.parametrize("tau", [0.3, 1.0, 5.0])
def test_matches_reference_values_and_gradients(nt, tau):
    W, bias, labels, x, sampled, tc, sc = random_problem(seed=nt * 10 + int(tau * 10), nt=nt)
    labels[:, 0] = sampled[:5]             # make sure some labels are candidates (accidental hits possible)
    W.requires_grad_(True)
    x.requires_grad_(True)
    got = rank_sampled_softmax_loss(W, bias, labels, x, 7, 4, 12, num_true=nt, sampled_values=(sampled, tc, sc),
                                    resampling_temperature=tau)
    want, _ = reference_loss(W, bias, labels.tolist(), x, sampled.tolist(), tc.tolist(), sc.tolist(), 4, tau)
    assert got.shape == (5,)
    assert torch.allclose(got, want, atol=1e-10)
    gw, gx = torch.autograd.grad(got.sum(), (W, x))
    rw, rx = torch.autograd.grad(want.sum(), (W, x))
    assert torch.allclose(gw, rw, atol=1e-10) and torch.allclose(gx, rx, atol=1e-10)


def test_tf_resampling_switch_point():
    # TF's unit test: weights [[1,2],[3,4]], inputs [[6,-2.5],[-11,10.5]]: class 0 kept for tau <= 2.12,
    # class 1 for tau >= 2.13. Pooled scores: class 0 -> lse(1, 10)/tau, class 1 -> lse(8, 9)/tau.
    W = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]])
    bias = torch.zeros(3)
    x = torch.tensor([[6.0, -2.5], [-11.0, 10.5]])
    labels = torch.tensor([[2], [2]])          # a third class, so the kept candidate is never a hit
    sv = (torch.tensor([0, 1]), torch.ones(2, 1), torch.ones(2))
    for tau, kept in [(1.0, 0), (2.12, 0), (2.13, 1), (3.0, 1)]:
        got = rank_sampled_softmax_loss(W, bias, labels, x, 2, 1, 3, sampled_values=sv, resampling_temperature=tau)
        v = x @ W[kept]                       # the kept class's logit per row; the true logit is 0
        want = torch.logaddexp(torch.zeros(2), v)
        assert torch.allclose(got, want), (tau, got, want)
    # the hand arithmetic behind the switch
    def score(a, b, t):
        return t * math.log(math.exp(a / t) + math.exp(b / t))
    assert score(1, 10, 2.12) > score(8, 9, 2.12) and score(1, 10, 2.13) < score(8, 9, 2.13)


def test_logq_correction_and_bias_enter_as_documented():
    # one row, one label, one kept candidate: loss = log(e^u + e^v) - u with log-Q subtracted from each
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    bias = torch.tensor([0.5, -0.25, 0.0], dtype=torch.float64)
    x = torch.tensor([[2.0, 3.0]], dtype=torch.float64)
    sv = (torch.tensor([1, 2]), torch.tensor([[0.25]]), torch.tensor([0.5, 0.125]))
    got = rank_sampled_softmax_loss(W, bias, torch.tensor([[0]]), x, 2, 1, 3, sampled_values=sv).item()
    # pooled scores: class 1 -> 3 - 0.25 = 2.75, class 2 -> 5: class 2 kept
    u = 2.0 + 0.5 - math.log(0.25)
    v = 5.0 + 0.0 - math.log(0.125)
    assert got == pytest.approx(math.log(math.exp(u) + math.exp(v)) - u, abs=1e-12)


# -- accidental hits ------------------------------------------------------------------------------------------
def test_accidental_hit_is_masked_with_minus_flt_max():
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.5]], dtype=torch.float64)
    bias = torch.zeros(4, dtype=torch.float64)
    x = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=torch.float64)
    labels = torch.tensor([[2], [0]])
    sv = (torch.tensor([2, 1, 3]), torch.ones(2, 1, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    masked = rank_sampled_softmax_loss(W, bias, labels, x, 3, 2, 4, sampled_values=sv)
    kept_logits = rank_sampled_softmax_loss(W, bias, labels, x, 3, 2, 4, sampled_values=sv,
                                            remove_accidental_hits=False)
    # pooled scores: class 2 -> lse(3, -0.5), class 1 -> lse(2, -1), class 3 -> lse(1.5, -0.25): keep 2 and 1
    u0, v0 = 3.0, [3.0, 2.0]          # row 0: label 2 is kept -> its sampled copy is masked
    v1 = [0.5 - 1.0, -1.0]            # row 1: label 0 is not a candidate; logits of classes 2 and 1
    assert masked[0].item() == pytest.approx(math.log(math.exp(u0) + math.exp(v0[1])) - u0, abs=1e-12)
    assert kept_logits[0].item() == pytest.approx(math.log(math.exp(u0) + sum(map(math.exp, v0))) - u0, abs=1e-12)
    assert masked[1].item() == pytest.approx(math.log(math.exp(0.5) + sum(map(math.exp, v1))) - 0.5, abs=1e-12)
    assert torch.isfinite(masked).all()


def test_only_last_copy_of_a_duplicate_candidate_is_masked():
    W = torch.tensor([[1.0], [2.0], [-1.0]], dtype=torch.float64)
    bias = torch.zeros(3, dtype=torch.float64)
    x = torch.tensor([[1.0]], dtype=torch.float64)
    # user-supplied candidates with a repeated id 1 (both copies kept), label 1
    sv = (torch.tensor([1, 1, 2]), torch.ones(1, 1, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    got = rank_sampled_softmax_loss(W, bias, torch.tensor([[1]]), x, 3, 2, 3, sampled_values=sv).item()
    u = 2.0
    assert got == pytest.approx(math.log(math.exp(u) + math.exp(2.0)) - u, abs=1e-12)   # one copy remains


def test_all_true_labels_of_a_row_are_masked_once_with_num_true_2():
    W, bias, labels, x, sampled, tc, sc = random_problem(seed=4, nt=2, S=6)
    labels[0] = sampled[:2]
    labels[1] = torch.stack([sampled[0], sampled[0]])   # a duplicated label counts twice in the mean
    got = rank_sampled_softmax_loss(W, bias, labels, x, 6, 5, 12, num_true=2, sampled_values=(sampled, tc, sc))
    want, _ = reference_loss(W, bias, labels.tolist(), x, sampled.tolist(), tc.tolist(), sc.tolist(), 5, 1.0)
    assert torch.allclose(got, want, atol=1e-10)


def test_true_expected_count_broadcasts_from_b_by_1():
    W, bias, labels, x, sampled, tc, sc = random_problem(seed=5, nt=2)
    col = tc[:, :1]
    got = rank_sampled_softmax_loss(W, bias, labels, x, 7, 3, 12, num_true=2, sampled_values=(sampled, col, sc))
    full = rank_sampled_softmax_loss(W, bias, labels, x, 7, 3, 12, num_true=2,
                                     sampled_values=(sampled, col.expand(-1, 2), sc))
    assert torch.allclose(got, full)


# -- sharded weights ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["mod", "div"])
def test_sharded_weights_equal_the_full_matrix(strategy):
    W, bias, labels, x, sampled, tc, sc = random_problem(seed=6, C=11)
    P = 3
    if strategy == "mod":     # class c lives in shard c % P, row c // P
        w_sh = [W[i::P].clone().requires_grad_(True) for i in range(P)]
        b_sh = [bias[i::P].clone() for i in range(P)]
    else:                     # contiguous blocks, the first 11 % 3 = 2 shards one row longer: 4, 4, 3
        w_sh = [blk.clone().requires_grad_(True) for blk in torch.split(W, [4, 4, 3])]
        b_sh = [blk.clone() for blk in torch.split(bias, [4, 4, 3])]
    Wf = W.clone().requires_grad_(True)
    got = rank_sampled_softmax_loss(w_sh, b_sh, labels, x, 7, 4, 11, sampled_values=(sampled, tc, sc),
                                    partition_strategy=strategy)
    full = rank_sampled_softmax_loss(Wf, bias, labels, x, 7, 4, 11, sampled_values=(sampled, tc, sc),
                                     partition_strategy=strategy)
    assert torch.allclose(got, full, atol=1e-12)
    got.sum().backward()
    full.sum().backward()
    if strategy == "mod":
        rebuilt = torch.empty_like(W)
        for i in range(P):
            rebuilt[i::P] = w_sh[i].grad
    else:
        rebuilt = torch.cat([s.grad for s in w_sh])
    assert torch.allclose(rebuilt, Wf.grad, atol=1e-12)


def test_wrong_shard_layout_is_an_error():
    W = torch.randn(10, 2)
    shards = list(torch.split(W, [3, 3, 4]))      # div wants 4, 3, 3; mod wants 4, 3, 3 as well
    with pytest.raises(ConfigError, match="shard sizes") as e:
        rank_sampled_softmax_loss(shards, torch.zeros(10), torch.tensor([[0]]), torch.randn(1, 2), 4, 2, 10,
                                  sampled_values=(torch.arange(4), torch.ones(1, 1), torch.ones(4)),
                                  partition_strategy="div")
    assert e.value.path == "weights"


# -- TF's argument checks -------------------------------------------------------------------------------------
def _call(**over):
    g = torch.Generator().manual_seed(0)
    args = dict(weights=torch.randn(5, 2, generator=g), biases=torch.zeros(5), labels=torch.tensor([[1]]),
                inputs=torch.randn(1, 2, generator=g),
                num_sampled=3, num_resampled=2, num_classes=5, num_true=1,
                sampled_values=(torch.tensor([0, 2, 4]), torch.ones(1, 1), torch.ones(3)),
                resampling_temperature=1.0, remove_accidental_hits=True, partition_strategy="mod")
    args.update(over)
    return rank_sampled_softmax_loss(**args)


@pytest.mark.parametrize("over, message, path", [
    (dict(num_sampled=6), "num_sampled (6) cannot be greater than num_classes (5)", "num_sampled"),
    # TF checks num_sampled > num_classes first, even when num_resampled is also wrong
    (dict(num_sampled=6, num_resampled=7), "num_sampled (6) cannot be greater than num_classes (5)", "num_sampled"),
    (dict(num_resampled=3), "num_resampled (3) must be less than num_sampled (3)", "num_resampled"),
    (dict(num_resampled=4), "num_resampled (4) must be less than num_sampled (3)", "num_resampled"),
    (dict(partition_strategy="rand"), "unsupported partition_strategy (rand)", "partition_strategy"),
    (dict(partition_strategy=None), "unsupported partition_strategy (None)", "partition_strategy"),
])
def test_tf_argument_checks_and_messages(over, message, path):
    with pytest.raises(ValueError) as e:
        _call(**over)
    assert isinstance(e.value, ConfigError)
    assert e.value.message == message
    assert e.value.path == path


@pytest.mark.parametrize("over, path", [
    (dict(labels=torch.tensor([[7]])), "labels"),
    (dict(labels=torch.tensor([[1.0]])), "labels"),
    (dict(labels=torch.tensor([[1, 2]])), "labels"),
    (dict(inputs=torch.randn(1, 3)), "inputs"),
    (dict(sampled_values=(torch.tensor([0, 9, 4]), torch.ones(1, 1), torch.ones(3))), "sampled_values[0]"),
    (dict(sampled_values=(torch.tensor([0, 1]), torch.ones(1, 1), torch.ones(2))), "sampled_values[0]"),
    (dict(sampled_values=(torch.tensor([0, 1, 2]), torch.ones(1, 1), torch.ones(2))), "sampled_values[2]"),
    (dict(sampled_values=(torch.tensor([0, 1, 2]), torch.ones(3, 1), torch.ones(3))), "sampled_values[1]"),
    (dict(resampling_temperature=0.0), "resampling_temperature"),
    (dict(num_true=0), "num_true"),
    (dict(weights=torch.randn(4, 2), biases=torch.zeros(4)), "weights"),
    (dict(weights=[torch.randn(3, 2), torch.randn(2, 3)]), "weights"),
    (dict(biases=torch.zeros(4)), "biases"),
])
def test_other_bad_inputs(over, path):
    with pytest.raises(ConfigError) as e:
        _call(**over)
    assert e.value.path == path


def test_labels_of_shape_b_accepted_when_num_true_is_1():
    a = _call(labels=torch.tensor([1]))
    b = _call(labels=torch.tensor([[1]]))
    assert torch.equal(a, b)


# -- the learned-unigram sampler --------------------------------------------------------------------------------
def test_sampler_first_call_is_uniform_and_expected_counts_follow_num_tries():
    C, S = 20, 6
    sampler = LearnedUnigramSampler(C, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[3], [3], [7]])
    sampled, tc, sc = sampler(labels, S)
    assert sampled.shape == (S,) and len(set(sampled.tolist())) == S
    p = 1 / C
    # every class has p = 1/20, so all expected counts are equal: 1 - (1 - p)^tries (or p * S with no repeat)
    assert torch.allclose(sc, sc[0].expand(S)) and torch.allclose(tc, sc[0].expand(3, 1))
    e = sc[0].item()
    if e == pytest.approx(p * S):
        tries = S
    else:
        tries = math.log(1 - e) / math.log(1 - p)
        assert tries == pytest.approx(round(tries), abs=1e-3) and round(tries) > S
    # labels are learned after the draw, duplicates counted
    want = torch.ones(C, dtype=torch.float64)
    want[3] += 2
    want[7] += 1
    assert torch.equal(sampler.counts, want)


def test_sampler_learns_the_label_distribution():
    C = 50
    sampler = LearnedUnigramSampler(C, generator=torch.Generator().manual_seed(1))
    for _ in range(20):
        sampler(torch.full((100, 1), 42), 5)
    assert sampler.counts[42].item() == 2001 and sampler.counts.sum().item() == 2050
    sampled, tc, sc = sampler(torch.tensor([[42], [0]]), 5)
    assert 42 in sampled.tolist()
    p42, p0 = 2001 / 2050, 1 / 2050
    e42 = tc[0, 0].item()
    assert sc[sampled.tolist().index(42)].item() == pytest.approx(e42)
    # both expected counts come from the same integer number of draws: 1 - (1 - p)^tries
    tries = math.log1p(-tc[1, 0].item()) / math.log1p(-p0)
    assert tries == pytest.approx(round(tries), abs=1e-2) and round(tries) > 5
    assert e42 == pytest.approx(-math.expm1(round(tries) * math.log1p(-p42)), rel=1e-6)
    assert sampler.counts[42].item() == 2002 and sampler.counts[0].item() == 2


def test_default_sampler_path_runs_and_is_seedable():
    torch.manual_seed(0)
    W = torch.randn(30, 4, requires_grad=True)
    x = torch.randn(8, 4)
    labels = torch.randint(0, 30, (8, 1))
    s1 = LearnedUnigramSampler(30, generator=torch.Generator().manual_seed(3))
    s2 = LearnedUnigramSampler(30, generator=torch.Generator().manual_seed(3))
    a = rank_sampled_softmax_loss(W, torch.zeros(30), labels, x, 10, 4, 30, sampler=s1)
    b = rank_sampled_softmax_loss(W, torch.zeros(30), labels, x, 10, 4, 30, sampler=s2)
    assert torch.equal(a, b) and a.shape == (8,) and torch.isfinite(a).all()
    c = rank_sampled_softmax_loss(W, torch.zeros(30), labels, x, 10, 4, 30)   # the process-wide default sampler
    c.mean().backward()
    assert torch.isfinite(c).all() and W.grad is not None
    with pytest.raises(ConfigError, match="num_classes=30"):
        rank_sampled_softmax_loss(W, torch.zeros(30), labels, x, 10, 4, 30, sampler=LearnedUnigramSampler(31))


def test_underestimates_full_softmax_when_counts_are_exact():
    # with every class sampled (Q = 1), the resampled loss drops classes, so it is <= the full softmax loss
    W, bias, labels, x, *_ = random_problem(seed=8, C=10, S=10)
    sv = (torch.arange(10), torch.ones(5, 1, dtype=torch.float64), torch.ones(10, dtype=torch.float64))
    got = rank_sampled_softmax_loss(W, bias, labels, x, 10, 6, 10, sampled_values=sv)
    full = torch.nn.functional.cross_entropy(x @ W.T + bias, labels[:, 0], reduction="none")
    assert (got <= full + 1e-12).all()
