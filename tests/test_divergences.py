"""The divergence family for logit KD (``kl``, ``reverse_kl``, ``jsd``, ``skew_kl``, ``skew_reverse_kl``, ``tvd``).

* each entry against a reference written here from the paper's formula (GKD Eq. 1 for jsd, in TRL's log-space
  form; DistiLLM for the skew KLs; the total variation distance), in float64, at several beta / alpha / tau,
  with masks; hand-computed values on a two-class example;
* the edge values (beta in {0, 1}, alpha in {0, 1}), identical distributions (loss 0, gradient 0), rows that
  do not count (0, never NaN), ``-inf`` teacher logits;
* plain = chunked = fused in value and gradients (float32 to 1e-5; bfloat16 within the bound stated below),
  with bool masks, labels with ignore_index -100, scalar and per-row temperature, tau^2 and soft-capping;
* registration (``brewkit presets``), ``kd_loss_implementation``, ``kd_loss_args`` validation, bad inputs.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from brewkit import DistillationConfig
from brewkit.errors import ConfigError
from brewkit.losses import (
    kd_ce_loss,
    kd_jsd_loss,
    kd_kl_loss,
    kd_reverse_kl_loss,
    kd_skew_kl_loss,
    kd_skew_reverse_kl_loss,
    kd_tvd_loss,
)
from brewkit.losses.divergences import check_kd_loss_args, kd_loss_implementation
from brewkit.losses.vocab import chunked_kd_loss, fused_linear_kd_loss
from brewkit.presets import KD_LOSS_MAP

TOL = {"rtol": 1e-5, "atol": 1e-5}
#: The divergences and parameter values every test runs through (name, kd_loss_args).
CASES = [("kl", {}), ("reverse_kl", {}), ("tvd", {}), ("ce", {}),
         ("jsd", {"beta": 0.0}), ("jsd", {"beta": 0.1}), ("jsd", {"beta": 0.5}), ("jsd", {"beta": 0.9}),
         ("jsd", {"beta": 1.0}),
         ("skew_kl", {"alpha": 0.0}), ("skew_kl", {"alpha": 0.1}), ("skew_kl", {"alpha": 0.5}),
         ("skew_kl", {"alpha": 1.0}),
         ("skew_reverse_kl", {"alpha": 0.0}), ("skew_reverse_kl", {"alpha": 0.3}),
         ("skew_reverse_kl", {"alpha": 1.0})]
DIVERGENCES = [c for c in CASES if c[0] != "ce"]
PLAIN = {"kl": kd_kl_loss, "reverse_kl": kd_reverse_kl_loss, "jsd": kd_jsd_loss, "skew_kl": kd_skew_kl_loss,
         "skew_reverse_kl": kd_skew_reverse_kl_loss, "tvd": kd_tvd_loss, "ce": kd_ce_loss}


def case_id(case):
    name, params = case
    return name + "".join(f"-{k}{v}" for k, v in params.items())


# -- the references, from the papers ---------------------------------------------------------------------------
def _kl(log_a, log_b):
    """KL(a || b) per row, a * log(a / b) with 0 log 0 = 0 (torch.xlogy handles a = 0)."""
    a = log_a.exp()
    return (torch.xlogy(a, a) - torch.where(a > 0, a * log_b, torch.zeros_like(a))).sum(-1)


def _log_mix(log_a, log_b, w):
    """log(w a + (1 - w) b) in log space, as TRL's generalized_jsd_loss forms the mixture."""
    return torch.logsumexp(torch.stack([log_a + math.log(w), log_b + math.log(1 - w)]), dim=0)


def reference_rows(name, zs, zt, tau, params, softcap=None):
    """Row losses in float64. p: teacher, q: student (both tempered softmaxes)."""
    zs, zt = zs.double(), zt.double()
    if softcap is not None:
        zs, zt = softcap * torch.tanh(zs / softcap), softcap * torch.tanh(zt / softcap)
    log_p = zt / tau - torch.logsumexp(zt / tau, dim=-1, keepdim=True)
    log_q = zs / tau - torch.logsumexp(zs / tau, dim=-1, keepdim=True)
    if name == "ce":
        return -(log_p.exp() * log_q).sum(-1)
    if name == "kl":
        return _kl(log_p, log_q)
    if name == "reverse_kl":
        return _kl(log_q, log_p)
    if name == "tvd":
        return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)
    if name == "jsd":  # GKD Eq. 1 with TRL's ends
        b = params["beta"]
        if b == 0:
            return _kl(log_p, log_q)
        if b == 1:
            return _kl(log_q, log_p)
        log_m = _log_mix(log_p, log_q, b)
        return b * _kl(log_p, log_m) + (1 - b) * _kl(log_q, log_m)
    a = params["alpha"]  # DistiLLM: SKL = KL(p || a p + (1-a) q), SRKL = KL(q || a q + (1-a) p)
    if a == 1:
        return 0 * (log_q.sum(-1) + torch.nan_to_num(log_p, neginf=0.0).sum(-1))  # 0, connected to both
    if name == "skew_kl":
        return _kl(log_p, log_q if a == 0 else _log_mix(log_p, log_q, a))
    return _kl(log_q, log_p if a == 0 else _log_mix(log_q, log_p, a))


def reference(name, zs, zt, tau=1.0, params=None, mask=None, t2=False, softcap=None):
    """Mean of the row losses over the counted rows (0 when none), tau a number or one value per row."""
    params = params or {}
    lead = zs.shape[:-1]
    tau_rows = tau.double().reshape(*lead, 1) if isinstance(tau, torch.Tensor) and tau.dim() else tau
    rows = reference_rows(name, zs, zt, tau_rows, params, softcap)
    if t2:
        rows = rows * (tau_rows.squeeze(-1) if isinstance(tau_rows, torch.Tensor) else torch.tensor(tau_rows)) ** 2
    if mask is not None:
        rows = rows[mask]
    return rows.sum() / max(rows.numel(), 1)


def logits_pair(shape, seed=0, scale=3.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    zs = (scale * torch.randn(*shape, generator=g)).to(dtype).requires_grad_()
    zt = (scale * torch.randn(*shape, generator=g)).to(dtype).requires_grad_()
    return zs, zt


def grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


def assert_value_and_grads(got, want, inputs, **tol):
    tol = tol or TOL
    torch.testing.assert_close(got.double(), want.double(), **tol)
    for a, b in zip(grads(got, *inputs), grads(want, *inputs)):
        torch.testing.assert_close(a.double(), b.double(), **tol)


# -- against the papers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("tau", [1.0, 2.5, "per_row"])
@pytest.mark.parametrize("masked", [False, True])
def test_plain_entry_matches_the_paper_formula(case, tau, masked):
    name, params = case
    zs, zt = logits_pair((3, 5, 11), seed=1)
    if tau == "per_row":
        tau = torch.rand(3, 5, generator=torch.Generator().manual_seed(2)) * 3 + 0.5
    mask = torch.rand(3, 5, generator=torch.Generator().manual_seed(3)) > 0.4 if masked else None
    got = KD_LOSS_MAP[name](zs, zt, tau, mask, **params)
    want = reference(name, zs, zt, tau, params, mask)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert_value_and_grads(got, want, (zs, zt))


def test_two_class_values_by_hand():
    """p_T = (1/2, 1/2), p_S = (1/4, 3/4): logits are the log-probabilities, tau = 1."""
    zt = torch.tensor([[math.log(0.5), math.log(0.5)]])
    zs = torch.tensor([[math.log(0.25), math.log(0.75)]])
    ln = math.log
    kl_pq = 0.5 * ln(0.5 / 0.25) + 0.5 * ln(0.5 / 0.75)
    kl_qp = 0.25 * ln(0.25 / 0.5) + 0.75 * ln(0.75 / 0.5)
    # beta = 0.5: m = (3/8, 5/8)
    jsd = 0.5 * (0.5 * ln(0.5 / 0.375) + 0.5 * ln(0.5 / 0.625)) + \
        0.5 * (0.25 * ln(0.25 / 0.375) + 0.75 * ln(0.75 / 0.625))
    # beta = 0.2: m = 0.2 p + 0.8 q = (0.3, 0.7)
    jsd2 = 0.2 * (0.5 * ln(0.5 / 0.3) + 0.5 * ln(0.5 / 0.7)) + 0.8 * (0.25 * ln(0.25 / 0.3) + 0.75 * ln(0.75 / 0.7))
    # alpha = 0.1: skew_kl mixes 0.1 p + 0.9 q = (0.275, 0.725); skew_reverse_kl 0.1 q + 0.9 p = (0.475, 0.525)
    skl = 0.5 * ln(0.5 / 0.275) + 0.5 * ln(0.5 / 0.725)
    srkl = 0.25 * ln(0.25 / 0.475) + 0.75 * ln(0.75 / 0.525)
    expected = {"kl": (kl_pq, {}), "reverse_kl": (kl_qp, {}), "jsd": (jsd, {"beta": 0.5}),
                "tvd": (0.25, {}), "skew_kl": (skl, {"alpha": 0.1}), "skew_reverse_kl": (srkl, {"alpha": 0.1})}
    for name, (value, params) in expected.items():
        assert KD_LOSS_MAP[name](zs, zt, 1.0, **params).item() == pytest.approx(value, rel=1e-5), name
    assert kd_jsd_loss(zs, zt, beta=0.2).item() == pytest.approx(jsd2, rel=1e-5)
    assert kd_jsd_loss(zs, zt).item() == pytest.approx(jsd, rel=1e-5)  # beta defaults to 0.5
    assert kd_skew_kl_loss(zs, zt).item() == pytest.approx(skl, rel=1e-5)  # alpha defaults to 0.1
    assert kd_jsd_loss(zs, zt).item() <= math.log(2)


def test_jsd_matches_trl_generalized_jsd_loss_with_labels():
    """TRL's generalized_jsd_loss (F.kl_div, log-space mixture, mean over tokens whose label is not -100)."""
    zs, zt = logits_pair((2, 6, 9), seed=4)
    labels = torch.randint(0, 9, (2, 6), generator=torch.Generator().manual_seed(5))
    labels[0, :2] = -100
    labels[1, 4:] = -100
    for beta in (0.0, 0.3, 1.0):
        for tau in (1.0, 2.0):
            s_log = F.log_softmax(zs / tau, -1)
            t_log = F.log_softmax(zt / tau, -1)
            if beta == 0:
                per = F.kl_div(s_log, t_log, reduction="none", log_target=True)
            elif beta == 1:
                per = F.kl_div(t_log, s_log, reduction="none", log_target=True)
            else:
                b = torch.tensor(beta)
                mix = torch.logsumexp(torch.stack([s_log + torch.log(1 - b), t_log + torch.log(b)]), dim=0)
                per = b * F.kl_div(mix, t_log, reduction="none", log_target=True) + \
                    (1 - b) * F.kl_div(mix, s_log, reduction="none", log_target=True)
            keep = labels != -100
            trl = per[keep].sum() / keep.sum()
            got = kd_jsd_loss(zs, zt, tau, labels=labels, beta=beta)
            assert_value_and_grads(got, trl, (zs, zt))


def test_skew_kl_is_distillm_code_minus_teacher_entropy():
    """DistiLLM's skewed_forward_kl returns -sum p log(a p + (1-a) q), i.e. skew_kl + H(p_T)."""
    zs, zt = logits_pair((8, 13), seed=6)
    alpha = 0.1
    p, q = F.softmax(zt, -1), F.softmax(zs, -1)
    distillm = -(p * torch.log(alpha * p + (1 - alpha) * q)).sum(-1).mean()
    entropy = -(p * torch.log(p)).sum(-1).mean()
    torch.testing.assert_close(kd_skew_kl_loss(zs, zt, alpha=alpha), distillm - entropy, **TOL)
    g_ours, = grads(kd_skew_kl_loss(zs, zt, alpha=alpha), zs)
    g_distillm, = grads(distillm, zs)
    torch.testing.assert_close(g_ours, g_distillm, **TOL)  # the entropy is constant in the student


# -- edge values ---------------------------------------------------------------------------------------------------
def test_edge_parameters_are_the_named_divergences():
    zs, zt = logits_pair((4, 7, 10), seed=7)
    for tau in (1.0, 3.0):
        fwd, rev = kd_kl_loss(zs, zt, tau), kd_reverse_kl_loss(zs, zt, tau)
        for fn, want in ((lambda: kd_jsd_loss(zs, zt, tau, beta=0.0), fwd),
                         (lambda: kd_jsd_loss(zs, zt, tau, beta=1.0), rev),
                         (lambda: kd_skew_kl_loss(zs, zt, tau, alpha=0.0), fwd),
                         (lambda: kd_skew_reverse_kl_loss(zs, zt, tau, alpha=0.0), rev)):
            got = fn()
            assert got.item() == want.item()  # the same formula, bit for bit
    for fn in (kd_skew_kl_loss, kd_skew_reverse_kl_loss):  # alpha = 1 mixes the distribution with itself
        loss = fn(zs, zt, 2.0, alpha=1.0)
        assert abs(loss.item()) < 1e-6
        g_s, = grads(loss, zs)
        assert torch.all(g_s.abs() < 1e-7)
    # JSD is symmetric at beta = 0.5 and beta <-> 1 - beta swaps the roles
    torch.testing.assert_close(kd_jsd_loss(zs, zt, beta=0.5), kd_jsd_loss(zt, zs, beta=0.5), **TOL)
    torch.testing.assert_close(kd_jsd_loss(zs, zt, beta=0.2), kd_jsd_loss(zt, zs, beta=0.8), **TOL)


@pytest.mark.parametrize("case", DIVERGENCES, ids=case_id)
def test_identical_distributions_give_zero_loss_and_zero_gradient(case):
    name, params = case
    zs, _ = logits_pair((3, 4, 17), seed=8)
    same = zs.detach().clone().requires_grad_()
    shifted = (zs.detach() + 5.0).requires_grad_()  # the same softmax up to rounding
    for tau in (1.0, torch.rand(3, 4) + 0.5):
        for zt in (same, shifted):
            loss = KD_LOSS_MAP[name](zs, zt, tau, **params)
            assert abs(loss.item()) < 1e-6, loss.item()
            if name == "tvd" and zt is shifted:
                continue  # |p - q| is not differentiable at 0: rounding picks a side (a subgradient)
            for g in grads(loss, zs, zt):
                assert torch.all(g.abs() < 1e-6), g.abs().max()
        for g in grads(KD_LOSS_MAP[name](zs, same, tau, **params), zs, same):  # equal inputs: exactly 0
            assert torch.all(g == 0) if name == "tvd" else torch.all(g.abs() < 1e-6)


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("form", ["plain", "chunked", "fused"])
def test_rows_that_do_not_count_give_zero_not_nan(case, form):
    name, params = case
    h = torch.randn(2, 3, 4, requires_grad=True)
    w = torch.randn(6, 4, requires_grad=True)
    zs = (h @ w.t()).detach().requires_grad_()
    zt = torch.randn(2, 3, 6)
    zt[0] = float("nan")  # rows that do not count are never read
    fn = kd_loss_implementation(name, form)
    for how in ({"mask": torch.zeros(2, 3, dtype=torch.bool)}, {"labels": torch.full((2, 3), -100)}):
        if form == "fused":
            loss = fn(h, w, zt, 2.0, **how, **params)
            inputs = (h, w)
        else:
            loss = fn(zs, zt, 2.0, **how, **params)
            inputs = (zs,)
        assert loss.item() == 0.0
        assert all(torch.all(g == 0) for g in grads(loss, *inputs))
    # a row of NaN that does not count leaves the value finite and equal to the reference over the other rows
    mask = torch.ones(2, 3, dtype=torch.bool)
    mask[0] = False
    loss = fn(h, w, zt, 2.0, mask=mask, **params) if form == "fused" else fn(zs, zt, 2.0, mask=mask, **params)
    want = reference(name, zs.detach()[1], zt[1], 2.0, params)
    torch.testing.assert_close(loss.double(), want, **TOL)


@pytest.mark.parametrize("case", DIVERGENCES, ids=case_id)
def test_minus_inf_teacher_logits(case):
    """Classes the teacher rules out (-inf): finite for every entry but the reverse KL ends, which are +inf."""
    name, params = case
    zs, zt = logits_pair((5, 8), seed=9)
    zt = zt.detach().clone()
    zt[:, :3] = float("-inf")
    reverse = name == "reverse_kl" or (name == "jsd" and params["beta"] == 1.0) or (
        name == "skew_reverse_kl" and params["alpha"] == 0.0)
    loss = KD_LOSS_MAP[name](zs, zt, 1.5, **params)
    if reverse:
        assert loss.item() == math.inf
    else:
        assert torch.isfinite(loss)
        want = reference(name, zs, zt, 1.5, params)
        torch.testing.assert_close(loss.double(), want, **TOL)
        g, = grads(loss, zs)
        g_want, = grads(want, zs)
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g.double(), g_want.double(), **TOL)
    # the same classes ruled out by both models: every entry is finite, reverse ones included
    both = zs.detach().clone()
    both[:, :3] = float("-inf")
    both.requires_grad_()
    loss = KD_LOSS_MAP[name](both, zt, 1.5, **params)
    assert torch.isfinite(loss)
    g, = grads(loss, both)
    assert torch.isfinite(g).all() and torch.all(g[:, :3] == 0)


# -- one semantics: plain = chunked = fused -------------------------------------------------------------------------
def _inputs(seed=10, lead=(3, 5), d=6, c=19, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(*lead, d, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(c, d, generator=g) * 1.5).to(dtype).requires_grad_()
    b = torch.randn(c, generator=g).to(dtype).requires_grad_()
    h_t = torch.randn(*lead, 4, generator=g).to(dtype).requires_grad_()
    w_t = (torch.randn(c, 4, generator=g) * 2).to(dtype).requires_grad_()
    return h, w, b, h_t, w_t


SETTINGS = {
    "scalar": {"temperature": 2.0},
    "bool_mask_per_row_tau": {"temperature": "lead", "mask": "bool", "temperature_squared": True},
    "labels_counted_tau": {"temperature": "counted", "labels": True},
    "softcap": {"temperature": 1.5, "softcap": 3.0, "mask": "int"},
    "softcap_labels_t2": {"temperature": "lead", "softcap": 2.0, "labels": True, "temperature_squared": True},
}


def _options(setting, lead):
    s = dict(SETTINGS[setting])
    g = torch.Generator().manual_seed(11)
    keep = torch.rand(lead, generator=g) > 0.35
    out = {}
    if s.pop("mask", None) == "bool":
        out["mask"] = keep
    elif SETTINGS[setting].get("mask") == "int":
        out["mask"] = keep.long()
    if s.pop("labels", False):
        out["labels"] = torch.where(keep, torch.randint(0, 5, lead, generator=g), torch.full(lead, -100))
    tau = s.pop("temperature")
    if tau == "lead":
        tau = torch.rand(lead, generator=g) * 2 + 0.5
    elif tau == "counted":
        tau = torch.rand(int(keep.sum()), generator=g) * 2 + 0.5
    out["temperature"] = tau
    out.update(s)
    return out, keep


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_plain_chunked_fused_agree_in_float32(case, setting):
    name, params = case
    h, w, b, h_t, w_t = _inputs()
    lead = tuple(h.shape[:-1])
    opts, keep = _options(setting, lead)
    counted = "mask" in opts or "labels" in opts
    def z_s():
        return F.linear(h, w, b)

    def z_t():
        return F.linear(h_t, w_t)

    plain = kd_loss_implementation(name, "plain")(z_s(), z_t(), **opts, **params)
    # the reference from the paper, on the counted rows
    tau = opts["temperature"]
    if isinstance(tau, torch.Tensor) and tau.shape != lead:  # one value per counted row
        full = torch.ones(lead)
        full[keep] = tau
        tau = full
    ref = reference(name, z_s(), z_t(), tau, params, keep if counted else None,
                    opts.get("temperature_squared", False), opts.get("softcap"))
    params_all = (h, w, b, h_t, w_t)
    want = [ref.detach()] + list(grads(ref, *params_all))

    def check(loss):
        got = [loss.detach()] + list(grads(loss, *params_all))
        for a, e in zip(got, want):
            torch.testing.assert_close(a.double(), e.double(), **TOL)

    check(plain)
    for chunk in (1, 4, None):
        check(kd_loss_implementation(name, "chunked")(z_s(), z_t(), **opts, chunk_size=chunk, **params))
        check(kd_loss_implementation(name, "fused")(h, w, z_t(), bias_S=b, chunk_size=chunk, **opts, **params))
        check(kd_loss_implementation(name, "fused")(h, w, bias_S=b, hidden_T=h_t, weight_T=w_t, chunk_size=chunk,
                                                    **opts, **params))


@pytest.mark.parametrize("case", [("kl", {}), ("reverse_kl", {}), ("jsd", {"beta": 0.5}), ("skew_kl", {"alpha": 0.1}),
                                  ("skew_reverse_kl", {"alpha": 0.1}), ("tvd", {})], ids=case_id)
def test_bf16_forms_agree_within_the_stated_bound(case):
    """bf16 inputs: every form upcasts the same bf16 logits and computes in float32, so values agree to 1e-5;
    gradients are float32 rounded to bf16 (chunked: within one bf16 rounding, rel 2^-7); the fused weight
    gradient sums chunks in float32 where autograd's bf16 matmul rounds, so it agrees to rel 2e-2 / abs 2e-3."""
    name, params = case
    h, w, b, _, _ = _inputs(seed=12, dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(13)
    z_t = (torch.randn(3, 5, 19, generator=g) * 3).bfloat16()
    mask = torch.rand(3, 5, generator=g) > 0.3
    plain = KD_LOSS_MAP[name](F.linear(h, w, b), z_t, 2.0, mask, **params)  # the bf16 output layer a model runs
    assert plain.dtype == torch.float32
    chunked = chunked_kd_loss(F.linear(h, w, b), z_t, 2.0, kind=name, mask=mask, chunk_size=4, **params)
    fused = fused_linear_kd_loss(h, w, z_t, bias_S=b, temperature=2.0, kind=name, mask=mask, chunk_size=4, **params)
    torch.testing.assert_close(chunked, plain, **TOL)
    torch.testing.assert_close(fused, plain, **TOL)
    g_plain = grads(plain, h, w, b)
    g_chunked = grads(chunked, h, w, b)
    g_fused = grads(fused, h, w, b)
    for a, e in zip(g_chunked, g_plain):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), e.float(), rtol=2 ** -7, atol=1e-6)
    for a, e in zip(g_fused, g_plain):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), e.float(), rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("name", ["kl", "jsd", "tvd", "skew_reverse_kl"])
def test_softcap_is_the_capped_logits_in_every_form(name):
    """softcap=c equals the loss of c * tanh(z / c) computed outside, gradients through the cap included."""
    h, w, b, _, _ = _inputs(seed=14)
    z_t = torch.randn(3, 5, 19) * 8  # large logits, so the cap matters
    cap = 5.0

    def z_s():
        return F.linear(h, w, b) * 4

    want = KD_LOSS_MAP[name](cap * torch.tanh(z_s() / cap), cap * torch.tanh(z_t / cap), 2.0)
    expected = [want.detach()] + list(grads(want, h, w, b))
    for form in ("plain", "chunked", "fused"):
        if form == "fused":
            got = kd_loss_implementation(name, form)(h, w * 4, z_t, 2.0, bias_S=b * 4, softcap=cap, chunk_size=3)
        else:
            got = kd_loss_implementation(name, form)(z_s(), z_t, 2.0, softcap=cap)
        for a, e in zip([got.detach()] + list(grads(got, h, w, b)), expected):
            torch.testing.assert_close(a, e, **TOL)
    uncapped = KD_LOSS_MAP[name](z_s(), z_t, 2.0)
    assert abs(uncapped.item() - want.item()) > 1e-3  # the cap changed the number: it was really applied


def test_temperature_squared_scales_each_row():
    zs, zt = logits_pair((4, 9), seed=15)
    tau = torch.tensor([1.0, 2.0, 3.0, 0.5])
    rows = reference_rows("jsd", zs, zt, tau.double()[:, None], {"beta": 0.4})
    got = kd_jsd_loss(zs, zt, tau, beta=0.4, temperature_squared=True)
    torch.testing.assert_close(got.double(), (rows * tau.double() ** 2).mean(), **TOL)


def test_mask_forms_agree():
    """A bool mask, a 0/1 integer mask, labels with -100 and a custom ignore_index select the same rows."""
    zs, zt = logits_pair((2, 4, 7), seed=16)
    keep = torch.tensor([[True, False, True, True], [False, False, True, False]])
    labels = torch.where(keep, torch.tensor(3), torch.tensor(-100))
    for name, params in (("tvd", {}), ("jsd", {"beta": 0.7})):
        fn = KD_LOSS_MAP[name]
        want = fn(zs[keep], zt[keep], 2.0, **params)
        for kwargs in ({"mask": keep}, {"mask": keep.int()}, {"labels": labels},
                       {"labels": torch.where(keep, 0, 7), "ignore_index": 7},
                       {"mask": torch.ones(2, 4, dtype=torch.bool), "labels": labels}):
            torch.testing.assert_close(fn(zs, zt, 2.0, **kwargs, **params), want, **TOL)
        # both given: a row counts when both keep it
        both = fn(zs, zt, 2.0, mask=torch.tensor([[True] * 4, [False] * 4]), labels=labels, **params)
        torch.testing.assert_close(both, fn(zs[0][keep[0]], zt[0][keep[0]], 2.0, **params), **TOL)


def test_temperature_may_be_flat_or_per_counted_row():
    zs, zt = logits_pair((2, 3, 5), seed=17)
    tau = torch.rand(2, 3) + 0.5
    mask = torch.tensor([[True, False, True], [True, True, False]])
    want = kd_reverse_kl_loss(zs, zt, tau, mask)
    for t in (tau.reshape(6), tau[mask]):
        for form in ("plain", "chunked"):
            torch.testing.assert_close(kd_loss_implementation("reverse_kl", form)(zs, zt, t, mask), want, **TOL)
    torch.testing.assert_close(kd_reverse_kl_loss(zs, zt, tau.reshape(6)), kd_reverse_kl_loss(zs, zt, tau), **TOL)


# -- registration and choosing a form -----------------------------------------------------------------------------
def test_presets_lists_the_entries_with_their_parameters(capsys):
    from brewkit.cli import print_presets

    print_presets()
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    for name in ("kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd"):
        assert "plain | chunked | fused" in lines[name], lines[name]
    assert "beta=0.5 (a number in [0, 1])" in lines["jsd"]
    assert "alpha=0.1 (a number in [0, 1])" in lines["skew_kl"] and "alpha=0.1" in lines["skew_reverse_kl"]
    assert "[plain]" in lines["mse"]
    assert KD_LOSS_MAP.meta("jsd")["params"]["beta"].default == 0.5
    assert KD_LOSS_MAP.meta("tvd")["params"] == {} and KD_LOSS_MAP.meta("tvd")["kind"] == "tvd"


def test_kd_loss_implementation_returns_the_asked_form():
    zs, zt = logits_pair((4, 9), seed=18)
    assert kd_loss_implementation("jsd", "plain") is KD_LOSS_MAP["jsd"]
    assert kd_loss_implementation("chunked_kl", "plain") is KD_LOSS_MAP["chunked_kl"]
    assert kd_loss_implementation("jsd", "chunked") is kd_loss_implementation("jsd", "chunked")  # cached
    chunked = kd_loss_implementation("chunked_kl", "chunked")
    torch.testing.assert_close(chunked(zs, zt, 2.0), kd_kl_loss(zs, zt, 2.0), **TOL)
    fused = kd_loss_implementation("ce", "fused")
    h, w = torch.randn(4, 3), torch.randn(9, 3)
    torch.testing.assert_close(fused(h, w, zt, 2.0), kd_ce_loss(h @ w.t(), zt, 2.0), **TOL)
    with pytest.raises(ConfigError) as e:
        kd_loss_implementation("jsd", "triton")
    assert e.value.path == "kd_implementation" and "'fused'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        kd_loss_implementation("jds", "plain")
    assert e.value.path == "kd_loss_type" and "'jsd'" in str(e.value)
    for name in ("mse", "bce", "coupled_rank_distil"):
        with pytest.raises(ConfigError) as e:
            kd_loss_implementation(name, "fused")
        assert e.value.path == "kd_implementation" and "only a plain implementation" in str(e.value)


def test_a_registered_user_loss_has_a_plain_form_and_signature_checked_args():
    def my_loss(logits_S, logits_T, temperature, mask=None, *, margin=1.0):
        return (logits_S - logits_T).abs().mean() * margin

    KD_LOSS_MAP.register("test_user_margin_kd", overwrite=True)(my_loss)
    try:
        assert kd_loss_implementation("test_user_margin_kd", "plain") is my_loss
        with pytest.raises(ConfigError):
            kd_loss_implementation("test_user_margin_kd", "chunked")
        c = DistillationConfig(kd_loss_type="test_user_margin_kd", kd_loss_args={"margin": 2.0})
        assert c.kd_loss_args == {"margin": 2.0}
        with pytest.raises(ConfigError) as e:
            DistillationConfig(kd_loss_type="test_user_margin_kd", kd_loss_args={"mask": 1})
        assert e.value.path == "kd_loss_args.mask" and "margin" in str(e.value)
    finally:
        del KD_LOSS_MAP["test_user_margin_kd"]


def test_kd_loss_args_in_the_config_round_trip_and_are_checked():
    c = DistillationConfig(kd_loss_type="skew_reverse_kl", kd_loss_args={"alpha": 0.25}, kd_implementation="chunked")
    assert DistillationConfig.from_dict(c.to_dict()) == c
    assert DistillationConfig.from_yaml(c.to_yaml()) == c
    assert DistillationConfig().kd_loss_args is None and DistillationConfig().kd_implementation == "plain"
    assert DistillationConfig(kd_loss_type="jsd", kd_loss_args={"beta": 1}).kd_loss_args == {"beta": 1.0}
    for args, path, words in [({"beta": -0.1}, "kd_loss_args.beta", ["[0, 1]"]),
                              ({"beta": float("nan")}, "kd_loss_args.beta", ["number"]),
                              ({"betta": 0.5}, "kd_loss_args.betta", ["known: beta"]),
                              ("beta=0.5", "kd_loss_args", ["mapping"])]:
        with pytest.raises(ConfigError) as e:
            DistillationConfig(kd_loss_type="jsd", kd_loss_args=args)
        assert e.value.path == path and all(w in str(e.value) for w in words), str(e.value)
    with pytest.raises(ConfigError) as e:
        DistillationConfig(kd_loss_type="skew_kl", kd_loss_args={"alpha": 1.01})
    assert e.value.path == "kd_loss_args.alpha"
    spec = KD_LOSS_MAP.meta("coupled_rank_distil")["params"]
    assert check_kd_loss_args("coupled_rank_distil", KD_LOSS_MAP["coupled_rank_distil"], spec,
                              {"sample_size": 4, "topk": None}) == {"sample_size": 4, "topk": None}


# -- bad inputs ----------------------------------------------------------------------------------------------------
def _raises(path, fn, *words):
    with pytest.raises(ConfigError) as err:
        fn()
    assert err.value.path == path, str(err.value)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_bad_arguments():
    zs, zt = logits_pair((2, 3, 5), seed=19)
    _raises("beta", lambda: kd_jsd_loss(zs, zt, beta=1.5), "[0, 1]")
    _raises("beta", lambda: kd_jsd_loss(zs, zt, beta="0.5"))
    _raises("alpha", lambda: kd_skew_kl_loss(zs, zt, alpha=-0.1))
    _raises("alpha", lambda: chunked_kd_loss(zs, zt, kind="skew_reverse_kl", alpha=2.0))
    _raises("beta", lambda: chunked_kd_loss(zs, zt, kind="kl", beta=0.5), "takes no parameters")
    _raises("alpha", lambda: chunked_kd_loss(zs, zt, kind="jsd", alpha=0.5), "beta")
    _raises("kind", lambda: chunked_kd_loss(zs, zt, kind="js"), "'jsd'")
    for bad in (0, -1.0, float("inf"), "3", True):
        _raises("softcap", lambda: kd_tvd_loss(zs, zt, softcap=bad), "final_logit_softcapping")
        _raises("softcap", lambda: chunked_kd_loss(zs, zt, kind="tvd", softcap=bad))
    _raises("mask", lambda: kd_jsd_loss(zs, zt, 2.0, True), "temperature_squared")  # the old 4th positional
    _raises("mask", lambda: kd_jsd_loss(zs, zt, mask=torch.full((2, 3), -100)), "labels=")
    _raises("mask", lambda: kd_jsd_loss(zs, zt, mask=torch.ones(2, 3)), "bool")
    _raises("mask", lambda: kd_jsd_loss(zs, zt, mask=torch.ones(3, 2, dtype=torch.bool)), "(2, 3)")
    _raises("labels", lambda: kd_jsd_loss(zs, zt, labels=torch.zeros(2, 3)), "integer")
    _raises("labels", lambda: kd_jsd_loss(zs, zt, labels=torch.zeros(2, 2, dtype=torch.long)), "(2, 3)")
    _raises("ignore_index", lambda: kd_jsd_loss(zs, zt, labels=torch.zeros(2, 3, dtype=torch.long),
                                                ignore_index=-1.5))
    _raises("temperature", lambda: kd_jsd_loss(zs, zt, torch.ones(4)), "(2, 3)", "(6,)")
    _raises("temperature", lambda: kd_jsd_loss(zs, zt, torch.ones(5), torch.ones(2, 3, dtype=torch.bool)), "(6,)")
    _raises("temperature", lambda: kd_tvd_loss(zs, zt, 0.0))
    _raises("temperature_squared", lambda: kd_tvd_loss(zs, zt, temperature_squared=1))
    _raises("logits_T", lambda: kd_reverse_kl_loss(zs, zt[..., :4]), "same shape")
    _raises("logits_S", lambda: kd_skew_kl_loss(zs.long(), zt), "floating")
    h, w = torch.randn(2, 3, 4), torch.randn(5, 4)
    _raises("labels", lambda: fused_linear_kd_loss(h, w, zt, kind="jsd", labels=torch.zeros(3, 2, dtype=torch.long)))
    _raises("beta", lambda: fused_linear_kd_loss(h, w, zt, kind="jsd", beta=-1))


# -- from YAML -----------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name, args", [("kl", None), ("reverse_kl", None), ("jsd", {"beta": 0.3}),
                                        ("skew_kl", {"alpha": 0.2}), ("skew_reverse_kl", {"alpha": 0.2}),
                                        ("tvd", None)])
def test_a_yaml_run_of_each_divergence_trains(assets, tmp_path, name, args):
    import json

    import yaml
    from helpers import run_dict, write_run

    from brewkit.cli import main

    d = run_dict(assets, tmp_path / "out")
    d["distillation"].update({"kd_loss_type": name, "hard_label_weight": 0, "kd_loss_args": args})
    assert main(["train", write_run(tmp_path / "run.yaml", d)]) == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    kd = [r["unweighted_kd_loss"] for r in records if "unweighted_kd_loss" in r]
    assert kd and all(math.isfinite(v) and v >= 0 for v in kd)
    resolved = yaml.safe_load((tmp_path / "out" / "run.yaml").read_text())["distillation"]
    assert resolved["kd_loss_type"] == name and resolved["kd_loss_args"] == args
