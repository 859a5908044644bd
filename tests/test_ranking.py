"""Coupled-RankDistil against hand arithmetic and a plain-Python reference written here."""
import itertools
import math

import pytest
import torch

from brewkit.errors import ConfigError
from brewkit.losses.ranking import coupled_rank_distil_expected, coupled_rank_distil_kd_loss, coupled_rank_distil_loss

EPS = 1e-10
LAM = math.log(EPS)
LN = math.log

# The documented example (TF-Ranking's doctest).
TEACHER = torch.tensor([[0.0, 2.0, 1.0], [1.0, 0.0, 2.0]])
STUDENT = torch.tensor([[0.0, LN(3), LN(2)], [0.0, LN(2), LN(3)]])
STUDENT64 = torch.tensor([[0.0, LN(3), LN(2)], [0.0, LN(2), LN(3)]], dtype=torch.float64)


# -- a reference in plain Python floats ------------------------------------------------------------------
def ref_nll(s, order, k, valid, faithful):
    """-log P_k(order | s): TF's fillers and i*eps leak when faithful; invalid items skipped when clean."""
    if faithful:
        sc = [x if v else LAM for x, v in zip(s, valid)]
    else:
        sc = list(s)
        order = [j for j in order if valid[j]]
        k = min(k, len(order))
    total = 0.0
    for i in range(k):
        norm = sum(math.exp(sc[j]) for j in order[i:]) + (i * EPS if faithful else 0.0)
        total += math.log(norm) - sc[order[i]]
    return total


def ref_expected(s, t, k, valid, faithful):
    """sum over ordered k-prefixes of the teacher PL probability times the student NLL (one list)."""
    items = list(range(len(s))) if faithful else [j for j in range(len(s)) if valid[j]]
    tt = [x if v else LAM for x, v in zip(t, valid)] if faithful else list(t)
    k = min(k, len(items))
    total = 0.0
    for prefix in itertools.permutations(items, k):
        q, remaining = 1.0, list(items)
        for p in prefix:
            q *= math.exp(tt[p]) / sum(math.exp(tt[j]) for j in remaining)
            remaining.remove(p)
        total += q * ref_nll(s, list(prefix) + remaining, k, valid, faithful)
    if faithful and sum(x for x, v in zip(t, valid) if v) <= 0:
        return 0.0
    return total


def perms_of(*rows):
    """[B, 1, N] permutations from one ranking per list."""
    return torch.tensor([[list(r)] for r in rows])


# -- the documented example ------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["faithful", "clean"])
def test_doctest_value_with_tf_permutation(mode):
    perms = perms_of([2, 0, 1], [2, 0, 1])
    loss = coupled_rank_distil_loss(STUDENT, TEACHER, topk=2, perms=perms, mode=mode)
    # list 0: -ln(2/6) - ln(1/4) = ln 12; list 1: -ln(3/6) - ln(1/3) = ln 6; mean = ln 72 / 2
    assert loss.item() == pytest.approx(2.138333, abs=1e-6)
    assert loss.item() == pytest.approx(LN(72) / 2, abs=1e-6)
    none = coupled_rank_distil_loss(STUDENT, TEACHER, topk=2, perms=perms, mode=mode, reduction="none")
    assert none.shape == (2,)
    assert none.tolist() == pytest.approx([LN(12), LN(6)], abs=1e-6)
    total = coupled_rank_distil_loss(STUDENT, TEACHER, topk=2, perms=perms, mode=mode, reduction="sum")
    assert total.item() == pytest.approx(LN(72), abs=1e-6)


def test_doctest_table_of_prefix_nlls():
    # the reference table: prefix -> NLL for list 0 (e^s = [1, 3, 2]) and list 1 (e^s = [1, 2, 3])
    table = {(0, 1): (LN(10), LN(15)), (0, 2): (LN(15), LN(10)), (1, 0): (LN(6), LN(12)),
             (1, 2): (LN(3), LN(4)), (2, 0): (LN(12), LN(6)), (2, 1): (LN(4), LN(3))}
    for (a, b), (nll0, nll1) in table.items():
        rest = ({0, 1, 2} - {a, b}).pop()
        perms = perms_of([a, b, rest], [a, b, rest])
        got = coupled_rank_distil_loss(STUDENT64, TEACHER.double(), topk=2, perms=perms, reduction="none")
        assert got.tolist() == pytest.approx([nll0, nll1], abs=1e-8)


@pytest.mark.parametrize("topk", [2, None])
@pytest.mark.parametrize("mode", ["faithful", "clean"])
def test_doctest_expectation(topk, mode):
    got = coupled_rank_distil_expected(STUDENT64, TEACHER.double(), topk=topk, mode=mode)
    assert got.item() == pytest.approx(1.6189875, abs=1e-7)
    ref = sum(ref_expected(STUDENT64[b].tolist(), TEACHER[b].tolist(), 2, [True] * 3, mode == "faithful")
              for b in range(2)) / 2
    assert got.item() == pytest.approx(ref, abs=1e-9)


# -- general agreement with the reference ----------------------------------------------------------------
@pytest.mark.parametrize("mode", ["faithful", "clean"])
@pytest.mark.parametrize("topk", [1, 3, None])
def test_random_lists_match_reference(mode, topk):
    g = torch.Generator().manual_seed(1)
    s = torch.randn(3, 5, generator=g, dtype=torch.float64)
    t = torch.rand(3, 5, generator=g, dtype=torch.float64) * 3   # labels >= 0: all valid in both modes
    perms = torch.stack([torch.stack([torch.randperm(5, generator=g) for _ in range(4)]) for _ in range(3)])
    k = topk or 5
    got = coupled_rank_distil_loss(s, t, topk=topk, perms=perms, mode=mode, reduction="none")
    for b in range(3):
        want = sum(ref_nll(s[b].tolist(), perms[b, j].tolist(), k, [True] * 5, mode == "faithful")
                   for j in range(4)) / 4
        assert got[b].item() == pytest.approx(want, abs=1e-9)
    exp = coupled_rank_distil_expected(s, t, topk=topk, mode=mode, reduction="none")
    for b in range(3):
        assert exp[b].item() == pytest.approx(ref_expected(s[b].tolist(), t[b].tolist(), k, [True] * 5,
                                                           mode == "faithful"), abs=1e-9)


def test_gradient_matches_hand_formula():
    # d NLL / d s_j = sum_{i<k} softmax_{R_i}(s)_j - 1[j in top-k prefix]   (no gradient to the teacher)
    s = torch.tensor([[0.3, -1.2, 0.8, 0.1]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[1.0, 2.0, 0.5, 0.0]], dtype=torch.float64, requires_grad=True)
    order, k = [1, 0, 2, 3], 2
    coupled_rank_distil_loss(s, t, topk=k, perms=perms_of(order), mode="clean").backward()
    e = [math.exp(x) for x in s[0].tolist()]
    want = [0.0] * 4
    for i in range(k):
        z = sum(e[j] for j in order[i:])
        for j in order[i:]:
            want[j] += e[j] / z
        want[order[i]] -= 1.0
    assert s.grad[0].tolist() == pytest.approx(want, abs=1e-12)
    assert t.grad is None


# -- padding, masks and the faithful artefacts -----------------------------------------------------------
def test_faithful_padding_inside_topk_adds_ln_n():
    # labels [1, 0, -1]: item 2 is padding; topk=None means k = N = 3 counts it, adding exactly ln 3
    s = torch.tensor([[0.3, -0.2, 0.5]], dtype=torch.float64)
    t = torch.tensor([[1.0, 0.0, -1.0]], dtype=torch.float64)
    perms = perms_of([0, 1, 2])
    faithful = coupled_rank_distil_loss(s, t, perms=perms).item()
    clean = coupled_rank_distil_loss(s, t, perms=perms, mode="clean", valid_mask=t >= 0).item()
    hand_clean = (LN(math.exp(0.3) + math.exp(-0.2)) - 0.3) + 0.0   # second term: log(e^-0.2) - (-0.2) = 0
    assert clean == pytest.approx(hand_clean, abs=1e-12)
    assert faithful == pytest.approx(clean + LN(3), abs=1e-8)
    assert faithful == pytest.approx(ref_nll(s[0].tolist(), [0, 1, 2], 3, [True, True, False], True), abs=1e-12)
    exp_f = coupled_rank_distil_expected(s, t).item()
    exp_c = coupled_rank_distil_expected(s, t, mode="clean", valid_mask=t >= 0).item()
    assert exp_f == pytest.approx(exp_c + LN(3), abs=1e-7)


def test_faithful_fillers_with_very_negative_logits():
    # TF-Ranking's filler artefact: labels [2, 1, 0], logits [-30, -31, -32], topk 2, ranking (0, 1, 2) give
    # 8.3824 in TF, against 0.7209 without the fillers' epsilons
    s = torch.tensor([[-30.0, -31.0, -32.0]], dtype=torch.float64)
    t = torch.tensor([[2.0, 1.0, 0.0]], dtype=torch.float64)
    faithful = coupled_rank_distil_loss(s, t, topk=2, perms=perms_of([0, 1, 2])).item()
    clean = coupled_rank_distil_loss(s, t, topk=2, perms=perms_of([0, 1, 2]), mode="clean").item()
    e = [math.exp(x) for x in (-30, -31, -32)]
    assert faithful == pytest.approx(LN(sum(e)) + 30 + LN(e[1] + e[2] + EPS) + 31, abs=1e-9)
    # = 0.40760 + 7.97462; TF's value is quoted as 8.3824 (within 2e-4 of this formula)
    assert faithful == pytest.approx(8.3822, abs=1e-4)
    assert faithful == pytest.approx(8.3824, abs=1e-3)
    assert clean == pytest.approx(0.7209, abs=1e-4)


def test_modes_agree_when_padding_stays_out_of_topk():
    s = torch.tensor([[0.4, -0.3, 1.1, 0.0, 2.0]], dtype=torch.float64)
    t = torch.tensor([[3.0, 1.0, 2.0, -1.0, -1.0]], dtype=torch.float64)
    perms = perms_of([0, 2, 1, 3, 4])
    f = coupled_rank_distil_loss(s, t, topk=3, perms=perms).item()
    c = coupled_rank_distil_loss(s, t, topk=3, perms=perms, mode="clean", valid_mask=t >= 0).item()
    assert f == pytest.approx(c, rel=1e-8)
    assert f != c   # the fillers and leak are there, just tiny


@pytest.mark.parametrize("mode", ["faithful", "clean"])
def test_ragged_rows_equal_their_truncated_lists(mode):
    # rows of lengths 4, 2 and 3 padded to 4; clean mode (mask) and faithful mode (labels -1 / ragged mask)
    g = torch.Generator().manual_seed(3)
    lengths = [4, 2, 3]
    s = torch.randn(3, 4, generator=g, dtype=torch.float64)
    t = torch.rand(3, 4, generator=g, dtype=torch.float64) + 0.1
    mask = torch.arange(4)[None, :] < torch.tensor(lengths)[:, None]
    t_padded = torch.where(mask, t, -1.0)
    k = 2
    got = coupled_rank_distil_expected(s, t_padded, topk=k, mode=mode, valid_mask=mask, reduction="none")
    for b, n in enumerate(lengths):
        alone = coupled_rank_distil_expected(s[b:b + 1, :n], t[b:b + 1, :n], topk=k, mode=mode).item()
        assert got[b].item() == pytest.approx(alone, rel=1e-8)
        assert got[b].item() == pytest.approx(ref_expected(s[b].tolist(), t_padded[b].tolist(), k,
                                                           mask[b].tolist(), mode == "faithful"), abs=1e-9)
    if mode == "faithful":   # without a mask, faithful mode takes validity from labels >= 0: same numbers
        by_labels = coupled_rank_distil_expected(s, t_padded, topk=k, reduction="none")
        assert torch.allclose(by_labels, got)


def test_clean_mode_skips_invalid_items_wherever_perms_put_them():
    s = torch.tensor([[0.5, 9.0, -0.4, 1.5]], dtype=torch.float64)
    t = torch.zeros(1, 4, dtype=torch.float64)
    mask = torch.tensor([[True, False, True, True]])
    got = coupled_rank_distil_loss(s, t, perms=perms_of([1, 3, 0, 2]), mode="clean", valid_mask=mask).item()
    e = [math.exp(0.5), math.exp(-0.4), math.exp(1.5)]
    want = (LN(sum(e)) - 1.5) + (LN(e[0] + e[1]) - 0.5) + 0.0
    assert got == pytest.approx(want, abs=1e-12)


def test_clean_mode_padding_gives_finite_gradients_and_empty_lists_cost_nothing():
    s = torch.tensor([[0.5, -3.0, 1.0], [0.2, 0.1, -0.7]], requires_grad=True)
    t = torch.tensor([[-2.0, -5.0, 1.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, False, True], [False, False, False]])
    g = torch.Generator().manual_seed(0)
    loss = coupled_rank_distil_loss(s, t, sample_size=16, mode="clean", valid_mask=mask, generator=g,
                                    reduction="none")
    assert loss[1].item() == 0.0
    loss.sum().backward()
    assert torch.isfinite(s.grad).all()
    assert s.grad[0, 1].item() == 0.0 and s.grad[1].abs().sum().item() == 0.0


def test_faithful_list_weight_zero_but_counted_in_mean():
    s = torch.tensor([[0.1, 0.7, -0.2], [0.3, 0.0, 0.5]], dtype=torch.float64)
    t = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 2.0]], dtype=torch.float64)   # list 0: labels sum to 0
    perms = perms_of([0, 1, 2], [2, 0, 1])
    none = coupled_rank_distil_loss(s, t, perms=perms, reduction="none")
    assert none[0].item() == 0.0
    assert none[1].item() == pytest.approx(ref_nll(s[1].tolist(), [2, 0, 1], 3, [True] * 3, True), abs=1e-12)
    mean = coupled_rank_distil_loss(s, t, perms=perms).item()
    assert mean == pytest.approx(none[1].item() / 2, abs=1e-12)
    clean = coupled_rank_distil_loss(s, t, perms=perms, mode="clean", reduction="none")
    assert clean[0].item() > 0   # clean mode has no list weight


# -- temperature ------------------------------------------------------------------------------------------
def test_temperature_divides_the_student_only():
    perms = perms_of([2, 0, 1], [1, 2, 0])
    a = coupled_rank_distil_loss(STUDENT, TEACHER, perms=perms, temperature=2.0, reduction="none")
    b = coupled_rank_distil_loss(STUDENT / 2, TEACHER, perms=perms, reduction="none")
    assert torch.allclose(a, b)
    # the teacher is not softened: the expectation at T=2 uses the teacher's PL law at T=1
    e = coupled_rank_distil_expected(STUDENT64, TEACHER.double(), temperature=2.0).item()
    want = sum(ref_expected((STUDENT64[i] / 2).tolist(), TEACHER[i].tolist(), 3, [True] * 3, True)
               for i in range(2)) / 2
    assert e == pytest.approx(want, abs=1e-9)


def test_per_list_temperature_tensor():
    perms = perms_of([2, 0, 1], [1, 2, 0])
    tau = torch.tensor([0.5, 3.0])
    got = coupled_rank_distil_loss(STUDENT, TEACHER, perms=perms, temperature=tau, reduction="none")
    for b in range(2):
        one = coupled_rank_distil_loss(STUDENT[b:b + 1], TEACHER[b:b + 1], perms=perms[b:b + 1],
                                       temperature=float(tau[b]), reduction="none")
        assert got[b].item() == pytest.approx(one.item(), abs=1e-6)
    got_col = coupled_rank_distil_loss(STUDENT, TEACHER, perms=perms, temperature=tau[:, None], reduction="none")
    assert torch.allclose(got, got_col)


# -- sampling ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["faithful", "clean"])
def test_sampled_estimate_converges_to_expectation(mode):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 5, generator=g)
    t = torch.rand(2, 5, generator=g) * 3
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    t = torch.where(mask, t, -1.0)
    exp = coupled_rank_distil_expected(s.double(), t.double(), topk=None, mode=mode, valid_mask=mask).item()
    est = coupled_rank_distil_loss(s, t, sample_size=40_000, mode=mode, valid_mask=mask,
                                   generator=torch.Generator().manual_seed(5)).item()
    assert est == pytest.approx(exp, abs=0.02)   # MC standard error here is ~0.005


def test_doctest_sampling_converges_and_generator_reproduces():
    est = coupled_rank_distil_loss(STUDENT, TEACHER, topk=2, sample_size=100_000,
                                   generator=torch.Generator().manual_seed(1)).item()
    assert est == pytest.approx(1.6189875, abs=0.01)
    a = coupled_rank_distil_loss(STUDENT, TEACHER, generator=torch.Generator().manual_seed(7))
    b = coupled_rank_distil_loss(STUDENT, TEACHER, generator=torch.Generator().manual_seed(7))
    assert a.item() == b.item()


def test_faithful_float32_keys_tie_underflowed_items():
    # teacher [100, 0, 1]: after item 0, PL picks item 2 before item 1 with probability e/(1+e) = 0.731, but
    # TF's float32 keys log(softmax + 1e-10) make items 1 and 2 tie, so the tie-break shuffle picks 50/50.
    s = torch.tensor([[0.0, 0.0, 5.0]], dtype=torch.float64)
    t = torch.tensor([[100.0, 0.0, 1.0]])
    nll_01 = LN(2 + math.exp(5)) + LN(1 + math.exp(5))          # prefix (0, 1)
    nll_02 = LN(2 + math.exp(5)) + LN(1 + math.exp(5)) - 5      # prefix (0, 2)
    p = math.e / (1 + math.e)
    gen = torch.Generator().manual_seed(11)
    faithful = coupled_rank_distil_loss(s, t, topk=2, sample_size=40_000, generator=gen).item()
    clean = coupled_rank_distil_loss(s, t, topk=2, sample_size=40_000, mode="clean", generator=gen).item()
    assert faithful == pytest.approx(0.5 * nll_01 + 0.5 * nll_02, abs=0.06)
    assert clean == pytest.approx((1 - p) * nll_01 + p * nll_02, abs=0.06)


def test_sampling_is_vectorised_and_fast_enough():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(64, 50, generator=g, requires_grad=True)
    t = torch.randn(64, 50, generator=g)
    loss = coupled_rank_distil_loss(s, t, sample_size=32, topk=10, mode="clean", generator=g)
    loss.backward()
    assert torch.isfinite(s.grad).all() and loss.item() > 0


# -- the KD_LOSS_MAP entry ---------------------------------------------------------------------------------
def test_kd_loss_softens_both_sides_and_accepts_negative_teacher_logits():
    s = torch.tensor([[0.2, -1.0, 0.7, 0.0], [1.0, 0.5, -0.5, 2.0]], dtype=torch.float64)
    t = torch.tensor([[-3.0, -1.0, -2.0, -4.0], [-0.5, -2.5, 1.0, 0.0]], dtype=torch.float64)   # negative: valid
    tau = 2.0
    got = coupled_rank_distil_kd_loss(s, t, tau, sample_size=20_000, generator=torch.Generator().manual_seed(2))
    want = sum(ref_expected((s[b] / tau).tolist(), (t[b] / tau).tolist(), 4, [True] * 4, False)
               for b in range(2)) / 2
    assert got.item() == pytest.approx(want, abs=0.03)
    same = coupled_rank_distil_loss(s, t / tau, sample_size=20_000, temperature=tau, mode="clean",
                                    generator=torch.Generator().manual_seed(2))
    assert got.item() == pytest.approx(same.item(), abs=1e-9)


def test_kd_loss_per_row_temperature_and_tau_squared():
    s = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    t = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    tau = torch.tensor([1.0, 2.0, 4.0])
    plain = coupled_rank_distil_kd_loss(s, t, tau, generator=torch.Generator().manual_seed(3))
    rows = coupled_rank_distil_loss(s, t / tau[:, None], temperature=tau, mode="clean", reduction="none",
                                    generator=torch.Generator().manual_seed(3))
    assert plain.item() == pytest.approx(rows.mean().item(), abs=1e-6)
    sq = coupled_rank_distil_kd_loss(s, t, tau, temperature_squared=True, generator=torch.Generator().manual_seed(3))
    assert sq.item() == pytest.approx((rows * tau**2).mean().item(), abs=1e-5)


def test_kd_loss_trains_student_towards_teacher_order():
    torch.manual_seed(0)
    t = torch.randn(16, 6) * 2
    s = torch.zeros(16, 6, requires_grad=True)
    opt = torch.optim.SGD([s], lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        coupled_rank_distil_kd_loss(s, t, 1.0).backward()
        opt.step()
    agree = ((s.detach()[:, :, None] > s.detach()[:, None, :]) == (t[:, :, None] > t[:, None, :])).float()
    off_diag = ~torch.eye(6, dtype=torch.bool)
    assert agree[:, off_diag].mean().item() > 0.85


# -- bad inputs --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, field", [
    (dict(mode="exact"), "mode"),
    (dict(reduction="avg"), "reduction"),
    (dict(topk=0), "topk"),
    (dict(topk=4), "topk"),              # > N in faithful mode (TF crashes there)
    (dict(sample_size=0), "sample_size"),
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=torch.tensor([1.0, 2.0, 3.0])), "temperature"),
    (dict(valid_mask=torch.ones(2, 2, dtype=torch.bool)), "valid_mask"),
    (dict(perms=torch.tensor([[[0, 1, 1]], [[0, 1, 2]]])), "perms"),
    (dict(perms=torch.tensor([[0, 1, 2], [0, 1, 2]])), "perms"),
    (dict(perms=torch.tensor([[[0.0, 1.0, 2.0]], [[0.0, 1.0, 2.0]]])), "perms"),
])
def test_bad_arguments_raise_config_error(kwargs, field):
    with pytest.raises(ConfigError) as e:
        coupled_rank_distil_loss(STUDENT, TEACHER, **kwargs)
    assert e.value.path == field
    assert isinstance(e.value, ValueError)


def test_bad_shapes_raise_config_error():
    with pytest.raises(ConfigError, match="same shape"):
        coupled_rank_distil_loss(STUDENT, TEACHER[:, :2])
    with pytest.raises(ConfigError, match=r"\[B, N\]"):
        coupled_rank_distil_loss(STUDENT[0], TEACHER[0])
    with pytest.raises(ConfigError, match="floating point"):
        coupled_rank_distil_loss(torch.ones(2, 3, dtype=torch.long), TEACHER)
    with pytest.raises(ConfigError, match="sample_size"):
        coupled_rank_distil_expected(torch.zeros(4, 10), torch.zeros(4, 10))
    # clean mode accepts topk > N and caps it at the number of valid items
    assert coupled_rank_distil_expected(STUDENT, TEACHER, topk=9, mode="clean").item() == pytest.approx(1.6189875,
                                                                                                       abs=1e-5)
