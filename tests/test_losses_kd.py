"""KD losses on logits against row-by-row reference formulas written here with ``math`` (float64)."""
import math
import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from brewkit.errors import ConfigError  # noqa: E402
from brewkit.losses import kd_bce_loss, kd_ce_loss, kd_kl_loss, kd_mse_loss  # noqa: E402

LOSSES = {"ce": kd_ce_loss, "mse": kd_mse_loss, "kl": kd_kl_loss, "bce": kd_bce_loss}


# -- independent reference -----------------------------------------------------------------------------------
def _softmax(xs):
    top = max(xs)
    e = [math.exp(x - top) for x in xs]
    return [v / sum(e) for v in e]


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def reference(kind, z_S, z_T, tau, squared=False):
    """Loss computed row by row. ``tau`` is a number or a tensor of shape ``logits.shape[:-1]``."""
    C = z_S.shape[-1]
    rows_S = z_S.double().reshape(-1, C).tolist()
    rows_T = z_T.double().reshape(-1, C).tolist()
    taus = [float(tau)] * len(rows_S) if not isinstance(tau, torch.Tensor) or tau.dim() == 0 else \
        tau.double().reshape(-1).tolist()
    total = 0.0
    for s, t, tr in zip(rows_S, rows_T, taus):
        factor = tr ** 2 if squared else 1.0
        s, t = [x / tr for x in s], [x / tr for x in t]
        if kind in ("ce", "kl"):
            p_T, p_S = _softmax(t), _softmax(s)
            ce = -sum(pt * math.log(ps) for pt, ps in zip(p_T, p_S))
            entropy = -sum(pt * math.log(pt) for pt in p_T if pt > 0)
            total += factor * (ce if kind == "ce" else ce - entropy)
        elif kind == "mse":
            total += factor * sum((a - b) ** 2 for a, b in zip(s, t)) / C
        else:  # bce, per element, averaged over the classes of the row here
            row = 0.0
            for a, b in zip(s, t):
                q, p = _sigmoid(b), _sigmoid(a)
                row += -q * math.log(p) - (1 - q) * math.log(1 - p)
            total += factor * row / C
    return total / len(rows_S)


def analytic_grad(kind, z_S, z_T, tau, squared=False):
    """d loss / d z_S from the formulas in the module docstrings."""
    z_S, z_T = z_S.double(), z_T.double()
    tau_b = torch.as_tensor(tau, dtype=torch.float64)
    if tau_b.dim() > 0:
        tau_b = tau_b.unsqueeze(-1)
    C = z_S.shape[-1]
    rows = z_S.numel() // C
    s, t = z_S / tau_b, z_T / tau_b
    if kind in ("ce", "kl"):
        soft_S = torch.exp(s) / torch.exp(s).sum(-1, keepdim=True)
        soft_T = torch.exp(t) / torch.exp(t).sum(-1, keepdim=True)
        g = (soft_S - soft_T) / (tau_b * rows)
    elif kind == "mse":
        g = 2 * (s - t) / (tau_b * rows * C)
    else:
        g = (1 / (1 + torch.exp(-s)) - 1 / (1 + torch.exp(-t))) / (tau_b * rows * C)
    return g * tau_b ** 2 if squared else g


def logits(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * 2, torch.randn(*shape, generator=g) * 2


# -- values ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("tau", [1, 4.0, 0.5])
def test_scalar_temperature(kind, tau):
    z_S, z_T = logits(3, 5)
    got = LOSSES[kind](z_S, z_T, tau)
    assert got.dim() == 0 and got.dtype == torch.float32
    assert got.item() == pytest.approx(reference(kind, z_S, z_T, tau), rel=1e-5, abs=1e-6)
    # a 0-d tensor temperature gives the same number
    assert LOSSES[kind](z_S, z_T, torch.tensor(tau)).item() == pytest.approx(got.item(), rel=1e-6)


@pytest.mark.parametrize("kind", LOSSES)
def test_default_temperature_is_one(kind):
    z_S, z_T = logits(2, 4, seed=1)
    assert LOSSES[kind](z_S, z_T).item() == pytest.approx(reference(kind, z_S, z_T, 1.0), rel=1e-5)


@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 6)])
def test_per_row_temperature(kind, shape):
    z_S, z_T = logits(*shape, seed=2)
    tau = torch.linspace(0.5, 3.0, math.prod(shape[:-1])).reshape(shape[:-1])
    got = LOSSES[kind](z_S, z_T, tau)
    assert got.item() == pytest.approx(reference(kind, z_S, z_T, tau), rel=1e-5, abs=1e-6)
    # per-row really is per row: it differs from using the mean temperature everywhere
    assert got.item() != pytest.approx(reference(kind, z_S, z_T, tau.mean().item()), rel=1e-3)


@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("per_row", [False, True])
def test_temperature_squared(kind, per_row):
    z_S, z_T = logits(2, 3, 5, seed=3)
    tau = torch.tensor([[1.0, 2.0, 3.0], [0.5, 4.0, 1.5]]) if per_row else 3.0
    got = LOSSES[kind](z_S, z_T, tau, temperature_squared=True)
    assert got.item() == pytest.approx(reference(kind, z_S, z_T, tau, squared=True), rel=1e-5, abs=1e-6)
    if not per_row:  # with one tau it is simply tau^2 times the plain loss
        plain = LOSSES[kind](z_S, z_T, tau)
        assert got.item() == pytest.approx(9 * plain.item(), rel=1e-5)


def test_ce_hand_computed():
    # two classes, equal student logits: log softmax = log(1/2) each; CE = log 2 whatever the teacher
    z_S = torch.zeros(1, 2)
    z_T = torch.tensor([[3.0, -1.0]])
    assert kd_ce_loss(z_S, z_T, 2).item() == pytest.approx(math.log(2), rel=1e-6)
    # mse at tau=2: ((0-3)/2)^2 + ((0+1)/2)^2 = 2.25 + 0.25, mean over 2 elements
    assert kd_mse_loss(z_S, z_T, 2).item() == pytest.approx(1.25, rel=1e-6)


@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_compute_in_float32(kind, dtype):
    z_S, z_T = logits(4, 7, seed=4)
    z_S, z_T = z_S.to(dtype), z_T.to(dtype)
    got = LOSSES[kind](z_S, z_T, 2.0)
    assert got.dtype == torch.float32
    expected = LOSSES[kind](z_S.float(), z_T.float(), 2.0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert got.item() == pytest.approx(reference(kind, z_S.float(), z_T.float(), 2.0), rel=1e-5, abs=1e-6)


# -- gradients -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("case", ["scalar", "per_row", "per_row_squared", "3d"])
def test_student_gradient_matches_formula(kind, case):
    shape = (2, 3, 5) if case == "3d" else (4, 5)
    z_S, z_T = logits(*shape, seed=5)
    tau = 2.0 if case == "scalar" else torch.linspace(0.7, 2.5, math.prod(shape[:-1])).reshape(shape[:-1])
    squared = case == "per_row_squared"
    z_S.requires_grad_(True)
    LOSSES[kind](z_S, z_T, tau, temperature_squared=squared).backward()
    expected = analytic_grad(kind, z_S.detach(), z_T, tau, squared)
    torch.testing.assert_close(z_S.grad.double(), expected, rtol=1e-4, atol=1e-7)


# -- kl --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [1.0, 3.0, "rows"])
def test_kl_is_ce_minus_teacher_entropy(tau):
    z_S, z_T = logits(5, 4, seed=6)
    if tau == "rows":
        tau = torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0])
    t = tau if isinstance(tau, float) else tau.unsqueeze(-1)
    p_T = torch.exp(z_T / t) / torch.exp(z_T / t).sum(-1, keepdim=True)
    entropy = -(p_T * torch.log(p_T)).sum(-1).mean()
    assert kd_kl_loss(z_S, z_T, tau).item() == pytest.approx((kd_ce_loss(z_S, z_T, tau) - entropy).item(),
                                                             abs=1e-5)


def test_kl_zero_for_equal_logits_and_positive_otherwise():
    z, other = logits(3, 2, 6, seed=7)
    assert kd_kl_loss(z, z.clone(), 2.0).item() == 0.0
    assert kd_kl_loss(z, z.clone(), torch.full((3, 2), 1.5)).item() == 0.0
    assert kd_kl_loss(other, z, 2.0).item() > 0


def test_kl_with_exact_zero_teacher_probabilities_is_finite():
    z_T = torch.tensor([[2.0, -math.inf, 0.5], [-math.inf, 1.0, -math.inf]])
    z_S = torch.tensor([[1.0, 0.0, -1.0], [0.3, -0.2, 0.9]], requires_grad=True)
    loss = kd_kl_loss(z_S, z_T, 1.0)
    # row 0: p_T over classes {0, 2}; row 1: p_T = one-hot(1) so KL = -log p_S[1]
    p0 = _softmax([2.0, 0.5])
    s0, s1 = _softmax([1.0, 0.0, -1.0]), _softmax([0.3, -0.2, 0.9])
    row0 = p0[0] * (math.log(p0[0]) - math.log(s0[0])) + p0[1] * (math.log(p0[1]) - math.log(s0[2]))
    row1 = -math.log(s1[1])
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-5)
    loss.backward()
    assert torch.isfinite(z_S.grad).all()
    assert kd_kl_loss(z_T, z_T, 1.0).item() == 0.0  # identical, with -inf entries


def test_bce_is_multilabel():
    # classes are independent: the loss of one class does not depend on the others' logits
    z_S = torch.tensor([[0.0, 5.0]])
    z_T = torch.tensor([[0.0, -5.0]])
    z_S2 = torch.tensor([[0.0, -5.0]])
    q = _sigmoid(-5.0)
    elem1 = -q * math.log(_sigmoid(5.0)) - (1 - q) * math.log(1 - _sigmoid(5.0))
    assert kd_bce_loss(z_S, z_T).item() == pytest.approx((math.log(2) + elem1) / 2, rel=1e-5)
    entropy = -q * math.log(q) - (1 - q) * math.log(1 - q)
    assert kd_bce_loss(z_S2, z_T).item() == pytest.approx((math.log(2) + entropy) / 2, rel=1e-5)


# -- bad input -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", LOSSES)
def test_shape_mismatch_names_both_shapes(kind):
    with pytest.raises(ConfigError, match=r"\(2, 3\).*\(2, 4\)") as e:
        LOSSES[kind](torch.zeros(2, 3), torch.zeros(2, 4))
    assert e.value.path == "logits_T"


@pytest.mark.parametrize("kind", LOSSES)
def test_bad_temperature(kind):
    z = torch.zeros(2, 3, 4)
    with pytest.raises(ConfigError, match=r"\(2, 3\)") as e:
        LOSSES[kind](z, z, torch.ones(2))  # per-example tau for per-token logits
    assert e.value.path == "temperature"
    for bad in (0, -1.0, float("nan"), "4", True):
        with pytest.raises(ConfigError) as e:
            LOSSES[kind](z, z, bad)
        assert e.value.path == "temperature"


@pytest.mark.parametrize("kind", LOSSES)
def test_non_float_logits(kind):
    with pytest.raises(ConfigError) as e:
        LOSSES[kind](torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3))
    assert e.value.path == "logits_S"
    with pytest.raises(ConfigError) as e:
        LOSSES[kind](torch.zeros(2, 3), [[0.0, 0.0, 0.0]] * 2)
    assert e.value.path == "logits_T"


# -- masks, soft-capping, and the default path unchanged ---------------------------------------------------------
def _old_formulas(kind, z_S, z_T, tau, squared):
    """The four losses exactly as they were written before mask / labels / softcap existed (torch, float32)."""
    import torch.nn.functional as F

    zS, zT = z_S.float(), z_T.float()
    if isinstance(tau, torch.Tensor) and tau.dim() > 0:
        tau = tau.float().unsqueeze(-1)
    if kind == "ce":
        out = -(F.softmax(zT / tau, dim=-1) * F.log_softmax(zS / tau, dim=-1)).sum(dim=-1)
    elif kind == "mse":
        out = (zS / tau - zT / tau) ** 2
    elif kind == "kl":
        log_p_T, log_p_S = F.log_softmax(zT / tau, dim=-1), F.log_softmax(zS / tau, dim=-1)
        p_T = log_p_T.exp()
        out = (p_T * torch.where(p_T > 0, log_p_T - log_p_S, torch.zeros_like(log_p_T))).sum(dim=-1)
    else:
        out = F.binary_cross_entropy_with_logits(zS / tau, torch.sigmoid(zT / tau), reduction="none")
    if squared:
        t = tau.squeeze(-1) if isinstance(tau, torch.Tensor) and tau.dim() > 0 and out.dim() == tau.dim() - 1 else tau
        out = out * t ** 2
    return out.mean()


@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("squared", [False, True])
def test_default_numbers_are_bit_identical_to_the_old_formulas(kind, squared):
    """TextBrewer-exact entries must not move: with no mask / labels / softcap, the same bits as before."""
    z_S, z_T = logits(3, 4, 9, seed=11)
    for tau in (1, 2.5, torch.linspace(0.5, 3.0, 12).reshape(3, 4)):
        assert torch.equal(LOSSES[kind](z_S, z_T, tau, temperature_squared=squared),
                           _old_formulas(kind, z_S, z_T, tau, squared))


@pytest.mark.parametrize("kind", LOSSES)
def test_mask_and_labels_average_over_the_counted_rows(kind):
    z_S, z_T = logits(2, 5, 6, seed=12)
    keep = torch.tensor([[True, True, False, True, False], [False, False, False, True, True]])
    tau = torch.linspace(0.5, 3.0, 10).reshape(2, 5)
    want = reference(kind, z_S[keep], z_T[keep], tau[keep], squared=True)
    labels = torch.where(keep, torch.tensor(2), torch.tensor(-100))
    for kwargs in ({"mask": keep}, {"mask": keep.long()}, {"labels": labels}):
        got = LOSSES[kind](z_S, z_T, tau, temperature_squared=True, **kwargs)
        assert got.item() == pytest.approx(want, rel=1e-5), kwargs
    # tau for the counted rows only, in row-major order
    assert LOSSES[kind](z_S, z_T, tau[keep], keep, temperature_squared=True).item() == pytest.approx(want, rel=1e-5)
    # nothing counts: 0, and a zero gradient
    z = z_S.clone().requires_grad_()
    none = LOSSES[kind](z, z_T, 2.0, torch.zeros(2, 5, dtype=torch.bool))
    none.backward()
    assert none.item() == 0.0 and torch.all(z.grad == 0)


@pytest.mark.parametrize("kind", LOSSES)
def test_softcap_caps_both_logits_before_the_temperature(kind):
    z_S, z_T = logits(4, 6, seed=13)
    z_S, z_T = z_S * 10, z_T * 10
    capped = LOSSES[kind](20 * torch.tanh(z_S / 20), 20 * torch.tanh(z_T / 20), 2.0)
    assert LOSSES[kind](z_S, z_T, 2.0, softcap=20.0).item() == pytest.approx(capped.item(), rel=1e-6)
    assert LOSSES[kind](z_S, z_T, 2.0, softcap=20).item() != pytest.approx(LOSSES[kind](z_S, z_T, 2.0).item(),
                                                                           rel=1e-4)
    for bad in (0, -3.0, float("nan"), "20", True):
        with pytest.raises(ConfigError) as e:
            LOSSES[kind](z_S, z_T, 2.0, softcap=bad)
        assert e.value.path == "softcap"


@pytest.mark.parametrize("kind", LOSSES)
def test_temperature_squared_is_keyword_only_now(kind):
    """The argument after the temperature is the mask; the old positional temperature_squared is refused."""
    z = torch.zeros(2, 3)
    with pytest.raises(ConfigError) as e:
        LOSSES[kind](z, z, 2.0, True)
    assert e.value.path == "mask" and "temperature_squared=" in str(e.value)
    with pytest.raises(ConfigError) as e:
        LOSSES[kind](z, z, 2.0, temperature_squared="yes")
    assert e.value.path == "temperature_squared"
