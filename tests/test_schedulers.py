"""Weight and temperature schedulers against formulas written here, and building them from list specs."""
import math
import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from brewkit import schedulers  # noqa: E402
from brewkit.errors import ConfigError  # noqa: E402
from brewkit.losses import kd_ce_loss  # noqa: E402
from brewkit.presets import TEMPERATURE_SCHEDULER, WEIGHT_SCHEDULER  # noqa: E402

PROGRESS = [0.0, 0.1, 0.25, 0.5, 0.9, 1.0]


# -- weight schedulers -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("x", PROGRESS)
def test_weight_schedulers(x):
    assert WEIGHT_SCHEDULER["linear_decay"](x) == pytest.approx(1 - x)
    assert WEIGHT_SCHEDULER["linear_growth"](x) == pytest.approx(x)
    assert WEIGHT_SCHEDULER["scaled_linear_decay"](x) == pytest.approx(1 - x)
    assert WEIGHT_SCHEDULER["scaled_linear_growth"](x) == pytest.approx(x)
    assert WEIGHT_SCHEDULER["cosine_decay"](x) == pytest.approx((1 + math.cos(math.pi * x)) / 2)


def test_weight_scheduler_end_points_and_base_scaling_flags():
    assert WEIGHT_SCHEDULER["linear_decay"](1.0) == 0.0
    assert WEIGHT_SCHEDULER["cosine_decay"](0.5) == pytest.approx(0.5)
    assert WEIGHT_SCHEDULER["cosine_decay"](1.0) == pytest.approx(0.0, abs=1e-12)
    # TextBrewer's names replace the configured weight; the new ones scale it
    assert WEIGHT_SCHEDULER.meta("linear_decay")["scales_base"] is False
    assert WEIGHT_SCHEDULER.meta("linear_growth")["scales_base"] is False
    for name in ("scaled_linear_decay", "scaled_linear_growth", "cosine_decay"):
        assert WEIGHT_SCHEDULER.meta(name)["scales_base"] is True


# -- temperature schedulers: references ------------------------------------------------------------------------
def flsw_reference(z_S, z_T, tau0, beta, gamma, eps=1e-4, tau_min=None):
    rows_S, rows_T = z_S.double().tolist(), z_T.double().tolist()
    w = []
    for s, t in zip(rows_S, rows_T):
        ns, nt = math.sqrt(sum(x * x for x in s)) + eps, math.sqrt(sum(x * x for x in t)) + eps
        cos = sum(a / ns * b / nt for a, b in zip(s, t))
        w.append((1 - cos) ** gamma)
    mean = sum(w) / len(w)
    taus = [tau0 + beta * (mean - wi) for wi in w]
    return [max(t, tau_min) for t in taus] if tau_min is not None else taus


def cwsm_reference(z_S, tau0, beta, tau_min=None):
    w = []
    for s in z_S.double().tolist():
        e = [math.exp(x - max(s)) for x in s]
        w.append(1 / (max(e) / sum(e) + 1e-3))
    mean = sum(w) / len(w)
    taus = [tau0 + beta * (mean - wi) for wi in w]
    return [max(t, tau_min) for t in taus] if tau_min is not None else taus


def logits(rows=6, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, classes, generator=g) * 2, torch.randn(rows, classes, generator=g) * 2


def test_constant():
    z_S, z_T = logits()
    assert TEMPERATURE_SCHEDULER["constant"](z_S, z_T, 4) == 4


@pytest.mark.parametrize("beta,gamma", [(1, 1), (1, 2), (0.5, 3)])
def test_flsw_per_row(beta, gamma):
    z_S, z_T = logits(seed=1)
    tau = TEMPERATURE_SCHEDULER[["flsw", beta, gamma]](z_S, z_T, 4.0)
    assert tau.shape == (6,)
    torch.testing.assert_close(tau.double(), torch.tensor(flsw_reference(z_S, z_T, 4.0, beta, gamma),
                                                          dtype=torch.float64), rtol=1e-5, atol=1e-5)
    # rows that disagree more (larger w) get a lower temperature; the mean stays at tau0
    assert tau.mean().item() == pytest.approx(4.0, abs=1e-5)


def test_flsw_eps_and_keyword_spec():
    z_S, z_T = logits(seed=2)
    tau = TEMPERATURE_SCHEDULER[["flsw", {"beta": 1, "gamma": 2, "eps": 0.5}]](z_S, z_T, 2.0)
    expected = flsw_reference(z_S, z_T, 2.0, 1, 2, eps=0.5)
    torch.testing.assert_close(tau.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-5)
    default = TEMPERATURE_SCHEDULER[["flsw", {"beta": 1, "gamma": 2}]](z_S, z_T, 2.0)
    assert not torch.allclose(tau, default)


@pytest.mark.parametrize("spec", [("cwsm", 1), ["cwsm", 2, "ignored", 7], ["cwsm", {"beta": 1}]])
def test_cwsm_per_row(spec):
    z_S, z_T = logits(seed=3)
    beta = spec[1]["beta"] if isinstance(spec[1], dict) else spec[1]
    tau = TEMPERATURE_SCHEDULER[spec](z_S, z_T, 4.0)
    torch.testing.assert_close(tau.double(), torch.tensor(cwsm_reference(z_S, 4.0, beta), dtype=torch.float64),
                               rtol=1e-5, atol=1e-5)
    # the teacher is not used by cwsm
    assert torch.equal(TEMPERATURE_SCHEDULER[spec](z_S, torch.zeros_like(z_T), 4.0), tau)


def test_tau_min_clamps_and_default_does_not():
    z_S, z_T = logits(seed=4)
    z_S[0] = torch.tensor([10.0, 0, 0, 0, 0])  # confident row: small w, high tau
    z_S[1] = torch.zeros(5)                     # uniform row: w = 1 / (0.2 + 1e-3), the largest: lowest tau
    raw = TEMPERATURE_SCHEDULER[["cwsm", 10]](z_S, z_T, 1.0)
    assert raw.min().item() < 0  # TextBrewer's behaviour: negative temperatures
    clamped = TEMPERATURE_SCHEDULER[["cwsm", {"beta": 10, "tau_min": 0.5}]](z_S, z_T, 1.0)
    expected = cwsm_reference(z_S, 1.0, 10, tau_min=0.5)
    torch.testing.assert_close(clamped.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5,
                               atol=1e-5)
    assert clamped.min().item() == 0.5
    flsw = TEMPERATURE_SCHEDULER[["flsw", {"beta": 50, "gamma": 1, "tau_min": 0.25}]](z_S, z_T, 1.0)
    torch.testing.assert_close(flsw.double(), torch.tensor(flsw_reference(z_S, z_T, 1.0, 50, 1, tau_min=0.25),
                                                           dtype=torch.float64), rtol=1e-5, atol=1e-5)
    assert flsw.min().item() == 0.25
    # positional tau_min for flsw: ['flsw', beta, gamma, eps, tau_min]
    same = TEMPERATURE_SCHEDULER[["flsw", 50, 1, 1e-4, 0.25]](z_S, z_T, 1.0)
    assert torch.equal(same, flsw)


def test_scheduler_output_is_detached_and_feeds_kd_loss():
    z_S, z_T = logits(seed=5)
    z_S.requires_grad_(True)
    tau = TEMPERATURE_SCHEDULER[["flsw", 1, 1]](z_S, z_T, 3.0)
    assert not tau.requires_grad
    # per-row tau in the KD loss: each row at its own temperature
    loss = kd_ce_loss(z_S, z_T, tau)
    rows = []
    for s, t, tr in zip(z_S.detach().double(), z_T.double(), tau.double()):
        p_T = torch.exp(t / tr) / torch.exp(t / tr).sum()
        log_p_S = s / tr - torch.log(torch.exp(s / tr).sum())
        rows.append(-(p_T * log_p_S).sum().item())
    assert loss.item() == pytest.approx(sum(rows) / len(rows), rel=1e-5)


def test_per_token_logits_give_per_token_temperatures():
    g = torch.Generator().manual_seed(6)
    z_S, z_T = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    tau = TEMPERATURE_SCHEDULER[["flsw", 1, 2]](z_S, z_T, 2.0)
    assert tau.shape == (2, 3)
    flat = flsw_reference(z_S.reshape(6, 4), z_T.reshape(6, 4), 2.0, 1, 2)
    torch.testing.assert_close(tau.reshape(-1).double(), torch.tensor(flat, dtype=torch.float64), rtol=1e-5,
                               atol=1e-5)


# -- building from specs: errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,fragment", [
    (["flsw", 1], "gamma"),                        # missing gamma (TextBrewer: TypeError)
    (["flsw", 1, 2, 3, 4, 5], "flsw"),             # too many
    (["flsw", {"beta": 1, "delta": 2}], "delta"),  # unknown keyword
    (["flsw", "1", 2], "beta"),
    (["flsw", 1, 2, -1.0], "eps"),
    (["cwsm", True], "beta"),
    (["cwsm", {"beta": 1, "tau_min": 0}], "tau_min"),
    (["cwsm", {"beta": 1, "tau_min": True}], "tau_min"),
    ([], "empty"),
])
def test_bad_specs_raise_config_error(spec, fragment):
    with pytest.raises(ConfigError, match=fragment):
        TEMPERATURE_SCHEDULER[spec]


def test_unknown_scheduler_name():
    with pytest.raises(ConfigError, match="TEMPERATURE_SCHEDULER") as e:
        TEMPERATURE_SCHEDULER[["flws", 1, 1]]
    assert isinstance(e.value, KeyError)
    assert str(e.value).index("'flsw'") < str(e.value).index("'cwsm'")


def test_list_specs_in_registry():
    assert ["flsw", 1, 1] in TEMPERATURE_SCHEDULER
    assert ("cwsm", 1) in TEMPERATURE_SCHEDULER
    assert ["nope", 1] not in TEMPERATURE_SCHEDULER
    assert [] not in TEMPERATURE_SCHEDULER
    # plain names give the builder itself (configs reject bare 'flsw' / 'cwsm' because of this flag)
    assert TEMPERATURE_SCHEDULER["flsw"] is schedulers.flsw_temperature_scheduler_builder
    assert TEMPERATURE_SCHEDULER.meta("flsw")["builder"] is True
    assert TEMPERATURE_SCHEDULER.meta("cwsm")["builder"] is True
    assert not TEMPERATURE_SCHEDULER.meta("constant").get("builder")
