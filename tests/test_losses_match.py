"""Match losses against references written here (loops over positions, or explicit einsum / sums)."""
import math
import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from brewkit.errors import ConfigError  # noqa: E402
from brewkit.losses import (  # noqa: E402
    att_ce_loss,
    att_ce_mean_loss,
    att_mse_loss,
    att_mse_sum_loss,
    att_probs_ce_loss,
    att_probs_kl_loss,
    att_probs_mse_loss,
    cos_loss,
    fsp_loss,
    hid_mse_loss,
    mmd_loss,
    pkd_loss,
)

B, H, L, D = 3, 2, 5, 4
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def rand(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=gen(seed)) * scale


def mask_variants(mask=MASK):
    return [mask.bool(), mask.long(), mask.int(), mask.float()]


def approx(x, **kw):
    return pytest.approx(float(x), rel=kw.get("rel", 1e-5), abs=kw.get("abs", 1e-6))


def heads_of(a):
    """(B, H, L, L) as is, (B, L, L) as one head."""
    return a if a.dim() == 4 else a.unsqueeze(1)


# -- references ------------------------------------------------------------------------------------------------
def clip(x):
    return torch.where(x <= -1e-3, torch.zeros_like(x), x)


def ref_pair_mse(a_S, a_T, mask):
    """sum over (b, h, valid i, valid j) of (a_S - a_T)^2 / (H * sum_b n_b^2), by loops."""
    a_S, a_T = heads_of(a_S).double(), heads_of(a_T).double()
    nb, nh, nl, _ = a_S.shape
    total, count = 0.0, 0.0
    for b in range(nb):
        for h in range(nh):
            for i in range(nl):
                for j in range(nl):
                    w = float(mask[b, i]) * float(mask[b, j])
                    if w:
                        total += w * (a_S[b, h, i, j] - a_T[b, h, i, j]).item() ** 2
        count += nh * float(mask[b].sum()) ** 2
    return total / count


def ref_scores_ce(a_S, a_T, mask):
    """TextBrewer attention CE by loops over query rows; ``mask=None`` uses the -1e-3 threshold."""
    a_S, a_T = heads_of(a_S).double(), heads_of(a_T).double()
    nb, nh, nl, _ = a_S.shape
    total, rows = 0.0, 0.0
    for b in range(nb):
        for h in range(nh):
            for i in range(nl):
                s, t = a_S[b, h, i].tolist(), a_T[b, h, i].tolist()
                zs, zt = math.log(sum(math.exp(x) for x in s)), sum(math.exp(x) for x in t)
                row = 0.0
                for j in range(nl):
                    p_T = math.exp(t[j]) / zt
                    if mask is None:
                        weight = 0.0 if t[j] <= -1e-3 else 1.0
                    else:
                        weight = float(mask[b, j])
                    row += weight * p_T * (s[j] - zs)
                q = 1.0 if mask is None else float(mask[b, i])
                total += -row * q
                rows += q
    return total / rows


def ref_probs_rows(p_S, p_T, mask, kind):
    """Per valid query row: CE -sum P_T log P_S or KL, over valid keys; averaged over valid rows."""
    p_S, p_T = heads_of(p_S).double(), heads_of(p_T).double()
    nb, nh, nl, _ = p_S.shape
    tiny = torch.finfo(torch.float32).tiny
    total, rows = 0.0, 0.0
    for b in range(nb):
        for h in range(nh):
            for i in range(nl):
                if mask is not None and not mask[b, i]:
                    continue
                row = 0.0
                for j in range(nl):
                    if mask is not None and not mask[b, j]:
                        continue
                    pt, ps = p_T[b, h, i, j].item(), p_S[b, h, i, j].item()
                    if kind == "ce":
                        row += -pt * math.log(max(ps, tiny))
                    elif pt > 0:
                        row += pt * (math.log(pt) - math.log(max(ps, tiny)))
                total += row
                rows += 1
    return total / rows if rows else 0.0


def softmax_probs(seed, shape=(B, H, L, L), mask=None):
    """Hugging Face-style attention probabilities; with a mask, padded keys get probability exactly 0."""
    scores = rand(*shape, seed=seed, scale=2)
    if mask is not None:
        key = mask.bool()[:, None, None, :] if len(shape) == 4 else mask.bool()[:, None, :]
        scores = scores.masked_fill(~key, -math.inf)
    return torch.softmax(scores, dim=-1)


# -- att_mse ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rank", [3, 4])
def test_att_mse_unmasked_is_mean_of_clipped(rank):
    shape = (B, H, L, L) if rank == 4 else (B, L, L)
    a_S, a_T = rand(*shape, seed=1), rand(*shape, seed=2)
    expected = ((clip(a_S) - clip(a_T)) ** 2).sum() / a_S.numel()
    assert att_mse_loss(a_S, a_T).item() == approx(expected)


def test_att_mse_clipping_quirk_by_hand():
    a_S = torch.tensor([[[[0.5, -0.0005], [-0.001, -5.0]]]])  # (1, 1, 2, 2)
    a_T = torch.zeros(1, 1, 2, 2)
    # -0.001 and -5 are <= -1e-3, so they count as 0: only 0.5 and -0.0005 survive
    assert att_mse_loss(a_S, a_T).item() == approx((0.25 + 0.0005 ** 2) / 4)
    # att_mse_sum clips after the head sum: heads 0.3 and -0.3 sum to 0; -0.7 + 0.2 = -0.5 is clipped
    two_heads = torch.tensor([[[[0.3, -0.7]], [[-0.3, 0.2]]]])  # (1, 2, 1, 2)
    assert att_mse_sum_loss(two_heads, torch.zeros(1, 2, 1, 2)).item() == 0.0
    # the threshold is inclusive: exactly -1e-3 is clipped too
    edge = torch.full((1, 1, 1, 1), -1e-3)
    assert att_mse_loss(edge, torch.zeros(1, 1, 1, 1)).item() == 0.0
    assert att_mse_sum_loss(edge, torch.zeros(1, 1, 1, 1)).item() == 0.0
    # the masked branch does not clip: (-5)^2 counts
    assert att_mse_loss(a_S, a_T, torch.ones(1, 2)).item() == approx((0.25 + 0.0005 ** 2 + 0.001 ** 2 + 25) / 4)


@pytest.mark.parametrize("rank", [3, 4])
def test_att_mse_masked(rank):
    shape = (B, H, L, L) if rank == 4 else (B, L, L)
    a_S, a_T = rand(*shape, seed=3), rand(*shape, seed=4)
    expected = ref_pair_mse(a_S, a_T, MASK)
    values = [att_mse_loss(a_S, a_T, m).item() for m in mask_variants()]
    assert values[0] == approx(expected)
    assert values == [values[0]] * 4  # bool / long / int / float masks agree


def test_att_mse_masked_uses_query_and_key():
    a_T = torch.zeros(1, 1, 3, 3)
    a_S = torch.zeros(1, 1, 3, 3)
    a_S[0, 0, 2, 0] = 100.0  # padded query row
    a_S[0, 0, 0, 2] = 100.0  # padded key column
    a_S[0, 0, 1, 1] = 2.0    # valid pair
    assert att_mse_loss(a_S, a_T, torch.tensor([[1, 1, 0]])).item() == approx(4 / 4)


def test_att_mse_masked_neg_inf_is_nan_as_in_textbrewer_but_probs_is_finite():
    key = MASK.bool()[:, None, None, :]
    scores_S = rand(B, H, L, L, seed=5).masked_fill(~key, -math.inf)
    scores_T = rand(B, H, L, L, seed=6).masked_fill(~key, -math.inf)
    # documented TextBrewer behaviour: (-inf) - (-inf) = NaN, and NaN * 0 stays NaN
    assert torch.isnan(att_mse_loss(scores_S, scores_T, MASK))
    # the unmasked branch clips -inf to 0 and stays finite
    assert torch.isfinite(att_mse_loss(scores_S, scores_T))
    p_S, p_T = torch.softmax(scores_S, -1), torch.softmax(scores_T, -1)
    for fn, ref in ((att_probs_mse_loss, lambda: ref_pair_mse(p_S, p_T, MASK)),
                    (att_probs_ce_loss, lambda: ref_probs_rows(p_S, p_T, MASK, "ce")),
                    (att_probs_kl_loss, lambda: ref_probs_rows(p_S, p_T, MASK, "kl"))):
        got = fn(p_S, p_T, MASK)
        assert torch.isfinite(got) and got.item() == approx(ref())
    # TextBrewer's CE on such scores is NaN too (0 * -inf)
    assert torch.isnan(att_ce_loss(scores_S, scores_T, MASK))


# -- att_mse_sum -----------------------------------------------------------------------------------------------
def test_att_mse_sum_4d_different_heads():
    a_S, a_T = rand(B, 2, L, L, seed=7), rand(B, 3, L, L, seed=8)
    s_S, s_T = a_S.sum(1), a_T.sum(1)
    expected = ((clip(s_S) - clip(s_T)) ** 2).mean()
    assert att_mse_sum_loss(a_S, a_T).item() == approx(expected)
    masked = [att_mse_sum_loss(a_S, a_T, m).item() for m in mask_variants()]
    assert masked[0] == approx(ref_pair_mse(s_S, s_T, MASK))
    assert masked == [masked[0]] * 4


def test_att_mse_sum_3d():
    a_S, a_T = rand(B, L, L, seed=9), rand(B, L, L, seed=10)
    assert att_mse_sum_loss(a_S, a_T).item() == approx(((clip(a_S) - clip(a_T)) ** 2).mean())
    assert att_mse_sum_loss(a_S, a_T, MASK).item() == approx(ref_pair_mse(a_S, a_T, MASK))


# -- att_ce / att_ce_mean --------------------------------------------------------------------------------------
@pytest.mark.parametrize("rank", [3, 4])
@pytest.mark.parametrize("masked", [False, True])
def test_att_ce(rank, masked):
    shape = (B, H, L, L) if rank == 4 else (B, L, L)
    a_S, a_T = rand(*shape, seed=11, scale=2), rand(*shape, seed=12, scale=2)
    m = MASK if masked else None
    expected = ref_scores_ce(a_S, a_T, m)
    assert att_ce_loss(a_S, a_T, m).item() == approx(expected)
    if masked:
        values = [att_ce_loss(a_S, a_T, v).item() for v in mask_variants()]
        assert values == [values[0]] * 4


def test_att_ce_threshold_drops_teacher_probability_without_renormalising():
    a_T = torch.tensor([[[[0.0, -0.01]]]])  # second key is below -1e-3
    a_S = torch.tensor([[[[0.0, 0.0]]]])
    p0 = 1 / (1 + math.exp(-0.01))
    assert att_ce_loss(a_S, a_T).item() == approx(-p0 * math.log(0.5))
    # inclusive threshold, and the same rule in att_ce_mean
    a_T = torch.tensor([[[[0.0, -1e-3]]]])
    p0 = 1 / (1 + math.exp(-1e-3))
    assert att_ce_loss(a_S, a_T).item() == approx(-p0 * math.log(0.5))
    assert att_ce_mean_loss(a_S, a_T).item() == approx(-p0 * math.log(0.5))


@pytest.mark.parametrize("rank", [3, 4])
@pytest.mark.parametrize("masked", [False, True])
def test_att_ce_mean(rank, masked):
    shape = (B, 3, L, L) if rank == 4 else (B, L, L)
    a_S = rand(*shape, seed=13, scale=2)
    a_T = rand(B, 2, L, L, seed=14, scale=2) if rank == 4 else rand(*shape, seed=14, scale=2)
    m = MASK if masked else None
    mean_S = a_S.mean(1) if rank == 4 else a_S
    mean_T = a_T.mean(1) if rank == 4 else a_T
    assert att_ce_mean_loss(a_S, a_T, m).item() == approx(ref_scores_ce(mean_S, mean_T, m))
    if masked:
        values = [att_ce_mean_loss(a_S, a_T, v).item() for v in mask_variants()]
        assert values == [values[0]] * 4


# -- att_probs_* -----------------------------------------------------------------------------------------------
PROBS = {"mse": att_probs_mse_loss, "ce": att_probs_ce_loss, "kl": att_probs_kl_loss}


def probs_reference(kind, p_S, p_T, mask):
    if kind == "mse":
        if mask is None:
            return ((p_S.double() - p_T.double()) ** 2).mean().item()
        return ref_pair_mse(p_S, p_T, mask)
    return ref_probs_rows(p_S, p_T, mask, kind)


@pytest.mark.parametrize("kind", PROBS)
@pytest.mark.parametrize("rank", [3, 4])
@pytest.mark.parametrize("masked", [False, True])
def test_att_probs(kind, rank, masked):
    shape = (B, H, L, L) if rank == 4 else (B, L, L)
    m = MASK if masked else None
    p_S, p_T = softmax_probs(15, shape, m), softmax_probs(16, shape, m)
    got = PROBS[kind](p_S, p_T, m)
    assert got.item() == approx(probs_reference(kind, p_S, p_T, m))
    if masked:
        values = [PROBS[kind](p_S, p_T, v).item() for v in mask_variants()]
        assert values == [values[0]] * 4


@pytest.mark.parametrize("kind", PROBS)
def test_att_probs_ignore_garbage_in_padded_positions(kind):
    p_S, p_T = softmax_probs(17, mask=MASK), softmax_probs(18, mask=MASK)
    expected = probs_reference(kind, p_S, p_T, MASK)
    pad = ~(MASK.bool()[:, None, :, None] & MASK.bool()[:, None, None, :])
    pad = pad.expand(B, H, L, L)
    for garbage in (math.nan, -math.inf, math.inf, 0.0):
        g_S = p_S.masked_fill(pad, garbage).requires_grad_(True)
        g_T = p_T.masked_fill(pad, garbage)
        loss = PROBS[kind](g_S, g_T, MASK)
        assert loss.item() == approx(expected)
        loss.backward()
        assert torch.isfinite(g_S.grad).all()
        assert (g_S.grad[pad] == 0).all()


@pytest.mark.parametrize("kind", PROBS)
def test_att_probs_zero_probabilities_unmasked_are_finite(kind):
    p_S = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]]).requires_grad_(True)
    p_T = torch.tensor([[[[0.5, 0.5], [0.0, 1.0]]]])
    loss = PROBS[kind](p_S, p_T)
    tiny = torch.finfo(torch.float32).tiny
    if kind == "mse":
        expected = (0.25 + 0.25) / 4
    elif kind == "ce":  # row 0: -(0.5 log 1 + 0.5 log tiny); row 1: -log 1
        expected = -0.5 * math.log(tiny) / 2
    else:  # row 0: 0.5 (log .5 - 0) + 0.5 (log .5 - log tiny); row 1: 0
        expected = (math.log(0.5) - 0.5 * math.log(tiny)) / 2
    assert loss.item() == approx(expected)
    loss.backward()
    assert torch.isfinite(p_S.grad).all()


@pytest.mark.parametrize("kind", PROBS)
def test_att_probs_all_zero_mask_is_zero(kind):
    p_S, p_T = softmax_probs(19), softmax_probs(20)
    p_S.requires_grad_(True)
    loss = PROBS[kind](p_S, p_T, torch.zeros(B, L, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert (p_S.grad == 0).all()


def test_att_probs_kl_zero_for_identical_and_ce_minus_entropy():
    p = softmax_probs(21, mask=MASK)
    assert att_probs_kl_loss(p, p.clone(), MASK).item() == 0.0
    assert att_probs_kl_loss(p, p.clone()).item() == 0.0
    q = softmax_probs(22, mask=MASK)
    # KL = CE - entropy of the teacher, row-averaged the same way
    entropy = ref_probs_rows(q, q, MASK, "ce")
    assert att_probs_kl_loss(p, q, MASK).item() == approx(att_probs_ce_loss(p, q, MASK).item() - entropy)


# -- hidden states ---------------------------------------------------------------------------------------------
def test_hid_mse():
    h_S, h_T = rand(B, L, D, seed=23), rand(B, L, D, seed=24)
    assert hid_mse_loss(h_S, h_T).item() == approx(((h_S - h_T) ** 2).sum() / (B * L * D))
    total, count = 0.0, 0.0
    for b in range(B):
        for i in range(L):
            if MASK[b, i]:
                total += ((h_S[b, i] - h_T[b, i]) ** 2).sum().item()
                count += D
    values = [hid_mse_loss(h_S, h_T, m).item() for m in mask_variants()]
    assert values[0] == approx(total / count)
    assert values == [values[0]] * 4


def test_hid_mse_gradient():
    h_S, h_T = rand(B, L, D, seed=53), rand(B, L, D, seed=54)
    h_S.requires_grad_(True)
    hid_mse_loss(h_S, h_T, MASK).backward()
    m = MASK.float()[:, :, None]
    torch.testing.assert_close(h_S.grad, 2 * m * (h_S.detach() - h_T) / (D * MASK.sum()))


def test_hid_mse_pooled_features_ignore_the_mask():
    h_S, h_T = rand(B, D, seed=25), rand(B, D, seed=26)
    expected = ((h_S - h_T) ** 2).mean()
    assert hid_mse_loss(h_S, h_T, MASK).item() == approx(expected)


def _cos_ref(rows_S, rows_T):
    out = []
    for s, t in zip(rows_S, rows_T):
        out.append(1 - (s @ t).item() / math.sqrt(((s @ s).item() + 1e-12) * ((t @ t).item() + 1e-12)))
    return sum(out) / len(out)


def test_cos_loss():
    h_S, h_T = rand(B, L, D, seed=27), rand(B, L, D, seed=28)
    all_rows = [(h_S[b, i], h_T[b, i]) for b in range(B) for i in range(L)]
    assert cos_loss(h_S, h_T).item() == approx(_cos_ref(*zip(*all_rows)))
    valid = [(h_S[b, i], h_T[b, i]) for b in range(B) for i in range(L) if MASK[b, i]]
    values = [cos_loss(h_S, h_T, m).item() for m in mask_variants()]
    assert values[0] == approx(_cos_ref(*zip(*valid)))
    assert values == [values[0]] * 4
    # non-contiguous input works (TextBrewer's .view raised)
    assert cos_loss(h_S.transpose(0, 1), h_T.transpose(0, 1)).item() == approx(_cos_ref(*zip(*all_rows)))
    # identical vectors: loss 0
    assert cos_loss(h_S, h_S.clone()).item() == approx(0.0, abs=1e-6)


def test_pkd_loss_uses_cls_and_ignores_mask():
    h_S, h_T = rand(B, L, D, seed=29), rand(B, L, D, seed=30)
    total = 0.0
    for b in range(B):
        u, v = h_S[b, 0] / h_S[b, 0].norm(), h_T[b, 0] / h_T[b, 0].norm()
        total += ((u - v) ** 2).sum().item()
    expected = total / B
    assert pkd_loss(h_S, h_T).item() == approx(expected)
    assert pkd_loss(h_S, h_T, MASK).item() == approx(expected)
    assert pkd_loss(h_S[:, 0], h_T).item() == approx(expected)  # (B, D) student, (B, L, D) teacher
    # scale invariance and the 2 - 2 cos identity on a hand example
    a, c = torch.tensor([[3.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    assert pkd_loss(a, 5 * c).item() == approx(2 - 2 * (1 / math.sqrt(2)))
    # a zero vector: TextBrewer (no eps) gave NaN; brewkit leaves it at 0, so the loss is |u_T|^2 = 1
    assert pkd_loss(torch.zeros(1, 2), c).item() == approx(1.0)


# -- two-layer losses ------------------------------------------------------------------------------------------
def test_fsp_equal_widths():
    S = [rand(B, L, D, seed=31), rand(B, L, D, seed=32)]
    T = [rand(B, L, D, seed=33), rand(B, L, D, seed=34)]
    g_S = torch.einsum("bld,ble->bde", S[0], S[1]) / L
    g_T = torch.einsum("bld,ble->bde", T[0], T[1]) / L
    assert fsp_loss(S, T).item() == approx(((g_S - g_T) ** 2).mean())
    # masked: Gram over valid positions only, divided by n_b
    g_S = torch.zeros(B, D, D)
    g_T = torch.zeros(B, D, D)
    for b in range(B):
        n = int(MASK[b].sum())
        for i in range(L):
            if MASK[b, i]:
                g_S[b] += torch.outer(S[0][b, i], S[1][b, i]) / n
                g_T[b] += torch.outer(T[0][b, i], T[1][b, i]) / n
    values = [fsp_loss(S, T, m).item() for m in mask_variants()]
    assert values[0] == approx(((g_S - g_T) ** 2).mean())
    assert values == [values[0]] * 4
    assert fsp_loss(tuple(S), tuple(T), MASK).item() == values[0]


def test_fsp_needs_equal_widths():
    S = [rand(B, L, D, seed=35), rand(B, L, D, seed=36)]
    T = [rand(B, L, 6, seed=37), rand(B, L, 6, seed=38)]
    with pytest.raises(ConfigError, match="proj") as e:
        fsp_loss(S, T)
    assert e.value.path == "feature_T"


def _mmd_grams(X, divide_by):
    return torch.einsum("bid,bjd->bij", X[0], X[1]) / divide_by


def test_mmd_different_widths():
    S = [rand(B, L, D, seed=39), rand(B, L, D, seed=40)]
    T = [rand(B, L, 7, seed=41), rand(B, L, 7, seed=42)]
    g_S, g_T = _mmd_grams(S, D), _mmd_grams(T, 7)
    assert mmd_loss(S, T).item() == approx(((g_S - g_T) ** 2).mean())
    values = [mmd_loss(S, T, m).item() for m in mask_variants()]
    assert values[0] == approx(ref_pair_mse(g_S, g_T, MASK))
    assert values == [values[0]] * 4
    # PyPI 0.2.1.post1: the masked branch divides both models by L instead of their own width
    legacy = mmd_loss(S, T, MASK, legacy_pypi_scaling=True)
    assert legacy.item() == approx(ref_pair_mse(_mmd_grams(S, L), _mmd_grams(T, L), MASK))
    assert legacy.item() != approx(values[0])
    # ...and the unmasked branch is the same in both versions
    assert mmd_loss(S, T, legacy_pypi_scaling=True).item() == mmd_loss(S, T).item()


# -- dtypes and all-zero masks for the TextBrewer names -------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_features_compute_in_float32(dtype):
    a_S, a_T = rand(B, H, L, L, seed=43).to(dtype), rand(B, H, L, L, seed=44).to(dtype)
    got = att_mse_loss(a_S, a_T, MASK)
    assert got.dtype == torch.float32
    assert got.item() == approx(ref_pair_mse(a_S.float(), a_T.float(), MASK))
    h_S, h_T = rand(B, L, D, seed=45).to(dtype), rand(B, L, D, seed=46).to(dtype)
    got = hid_mse_loss(h_S, h_T, MASK)
    assert got.dtype == torch.float32
    expected = (((h_S.float() - h_T.float()) ** 2).sum(-1) * MASK).sum() / (MASK.sum() * D)
    assert got.item() == approx(expected)
    p_S, p_T = softmax_probs(47).to(dtype), softmax_probs(48).to(dtype)
    got = att_probs_ce_loss(p_S, p_T, MASK)
    assert got.dtype == torch.float32
    assert got.item() == approx(ref_probs_rows(p_S.float(), p_T.float(), MASK, "ce"))


def test_all_zero_mask_gives_a_defined_zero_where_textbrewer_gave_nan():
    zero = torch.zeros(B, L)
    a_S, a_T = rand(B, H, L, L, seed=49), rand(B, H, L, L, seed=50)
    h_S, h_T = rand(B, L, D, seed=51), rand(B, L, D, seed=52)
    for value in (att_mse_loss(a_S, a_T, zero), att_mse_sum_loss(a_S, a_T, zero), att_ce_loss(a_S, a_T, zero),
                  att_ce_mean_loss(a_S, a_T, zero), hid_mse_loss(h_S, h_T, zero), cos_loss(h_S, h_T, zero),
                  mmd_loss([h_S, h_S], [h_T, h_T], zero), fsp_loss([h_S, h_S], [h_T, h_T], zero)):
        assert value.item() == 0.0
    # one fully padded example in fsp: its Gram matrices are 0, the others are unchanged
    m = torch.ones(B, L)
    m[0] = 0
    value = fsp_loss([h_S, h_S], [h_T, h_T], m)
    hs, ht = h_S * m[..., None], h_T * m[..., None]
    g_S = torch.einsum("bld,ble->bde", hs, hs) / m.sum(1).clamp_min(1)[:, None, None]
    g_T = torch.einsum("bld,ble->bde", ht, ht) / m.sum(1).clamp_min(1)[:, None, None]
    assert value.item() == approx(((g_S - g_T) ** 2).mean().item(), rel=1e-5)


# -- bad input -------------------------------------------------------------------------------------------------
ATTENTION = [att_mse_loss, att_mse_sum_loss, att_ce_loss, att_ce_mean_loss,
             att_probs_mse_loss, att_probs_ce_loss, att_probs_kl_loss]


@pytest.mark.parametrize("fn", ATTENTION)
def test_attention_errors(fn):
    with pytest.raises(ConfigError, match=r"\(B, H, L, L\).*\(3, 5\)") as e:
        fn(torch.zeros(3, 5), torch.zeros(3, 5))
    assert e.value.path == "feature_S"
    with pytest.raises(ConfigError, match=r"\(3, 5, 5\).*\(3, 4, 4\)") as e:
        fn(torch.zeros(3, 5, 5), torch.zeros(3, 4, 4))
    assert e.value.path == "feature_T"
    with pytest.raises(ConfigError, match=r"\(3, 5\).*\(3, 4\)") as e:
        fn(torch.zeros(3, 2, 5, 5), torch.zeros(3, 2, 5, 5), torch.ones(3, 4))
    assert e.value.path == "mask"
    with pytest.raises(ConfigError) as e:
        fn(torch.zeros(3, 2, 5, 5, dtype=torch.long), torch.zeros(3, 2, 5, 5))
    assert e.value.path == "feature_S"


@pytest.mark.parametrize("fn", [att_mse_loss, att_ce_loss, att_probs_mse_loss, att_probs_ce_loss,
                                att_probs_kl_loss])
def test_per_head_losses_need_equal_heads(fn):
    with pytest.raises(ConfigError, match=r"\(2, 4, 3, 3\).*\(2, 2, 3, 3\)"):
        fn(torch.zeros(2, 4, 3, 3), torch.zeros(2, 2, 3, 3))


@pytest.mark.parametrize("fn", [hid_mse_loss, cos_loss, pkd_loss])
def test_hidden_errors(fn):
    with pytest.raises(ConfigError, match=r"\(B, L, D\)") as e:
        fn(torch.zeros(2, 3, 4, 5), torch.zeros(2, 3, 4, 5))
    assert e.value.path == "feature_S"
    with pytest.raises(ConfigError, match=r"\(2, 3, 4\).*\(2, 3, 6\)") as e:
        fn(torch.zeros(2, 3, 4), torch.zeros(2, 3, 6))
    assert e.value.path == "feature_T"


def test_hidden_mask_shape_error():
    with pytest.raises(ConfigError, match=r"\(2, 3\).*\(2, 5\)") as e:
        hid_mse_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.ones(2, 5))
    assert e.value.path == "mask"
    with pytest.raises(ConfigError) as e:
        cos_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), [[1, 1, 1], [1, 1, 0]])
    assert e.value.path == "mask"


@pytest.mark.parametrize("fn", [fsp_loss, mmd_loss])
def test_two_layer_errors(fn):
    x = torch.zeros(2, 3, 4)
    with pytest.raises(ConfigError, match="list of two") as e:
        fn(x, [x, x])
    assert e.value.path == "feature_S"
    with pytest.raises(ConfigError, match="list of two") as e:
        fn([x, x], [x, x, x])
    assert e.value.path == "feature_T"
    with pytest.raises(ConfigError, match=r"\(B, L, D\)") as e:
        fn([x, torch.zeros(2, 3)], [x, x])
    assert e.value.path == "feature_S[1]"
    with pytest.raises(ConfigError, match=r"\(2, 3, 4\).*\(2, 5, 4\)"):
        fn([x, torch.zeros(2, 5, 4)], [x, x])


def test_mmd_needs_same_length():
    x, y = torch.zeros(2, 3, 4), torch.zeros(2, 5, 4)
    with pytest.raises(ConfigError, match=r"\(2, 3, 4\).*\(2, 5, 4\)") as e:
        mmd_loss([x, x], [y, y])
    assert e.value.path == "feature_T"
