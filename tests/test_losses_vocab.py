"""Chunked and fused large-vocabulary KD: value and gradients equal plain softmax formulas, masks, per-row
temperature, uneven chunks, bf16, autocast, what autograd keeps alive, bad inputs, and the benchmark script."""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from brewkit.errors import ConfigError
from brewkit.losses.kd import kd_ce_loss, kd_kl_loss
from brewkit.losses.vocab import chunked_kd_ce_loss, chunked_kd_kl_loss, chunked_kd_loss, fused_linear_kd_loss

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = dict(rtol=1e-5, atol=1e-5)


# -- the reference: plain softmax formulas on the selected rows -----------------------------------------------
def reference(zs, zt, tau=1.0, kind="ce", t2=False, mask=None):
    """mean over (selected) rows of -sum p_T log p_S  or  sum p_T (log p_T - log p_S), times tau^2 if t2."""
    zs, zt = zs.float(), zt.float()
    if isinstance(tau, torch.Tensor) and tau.dim() > 0:
        tau = tau.float()
        if mask is not None and tau.shape == mask.shape:
            tau = tau[mask.bool()]
        tau = tau.reshape(-1, 1)
    if mask is not None:
        zs, zt = zs[mask.bool()], zt[mask.bool()]
    zs, zt = zs.reshape(-1, zs.shape[-1]), zt.reshape(-1, zt.shape[-1])
    p_t = torch.softmax(zt / tau, dim=-1)
    log_p_s = torch.log_softmax(zs / tau, dim=-1)
    if kind == "ce":
        rows = -(p_t * log_p_s).sum(-1)
    else:
        log_p_t = torch.log_softmax(zt / tau, dim=-1)
        rows = (p_t * torch.where(p_t > 0, log_p_t - log_p_s, torch.zeros_like(p_t))).sum(-1)
    if t2:
        rows = rows * (tau.reshape(-1) if isinstance(tau, torch.Tensor) else torch.tensor(tau)) ** 2
    return rows.mean()


def grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


def logits_pair(shape, seed=0, dtype=torch.float32, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    zs = (scale * torch.randn(*shape, generator=g)).to(dtype).requires_grad_()
    zt = (scale * torch.randn(*shape, generator=g)).to(dtype).requires_grad_()
    return zs, zt


def check_equal_to_reference(zs, zt, tau, kind, t2=False, mask=None, chunk_size=None):
    got = chunked_kd_loss(zs, zt, tau, kind=kind, chunk_size=chunk_size, temperature_squared=t2, mask=mask)
    want = reference(zs, zt, tau, kind, t2, mask)
    torch.testing.assert_close(got, want, **TOL)
    for g_got, g_want in zip(grads(got, zs, zt), grads(want, zs, zt)):
        torch.testing.assert_close(g_got, g_want, **TOL)
    return got


# -- chunked_kd_loss ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ce", "kl"])
@pytest.mark.parametrize("chunk_size", [1, 3, 7, 16, 1000])  # 16 rows: 3 and 7 leave an uneven last chunk
@pytest.mark.parametrize("t2", [False, True])
def test_chunked_equals_reference_2d(kind, chunk_size, t2):
    torch.manual_seed(0)
    zs, zt = logits_pair((16, 37))
    check_equal_to_reference(zs, zt, 2.5, kind, t2, chunk_size=chunk_size)


@pytest.mark.parametrize("kind", ["ce", "kl"])
def test_chunked_equals_the_library_plain_losses(kind):
    zs, zt = logits_pair((4, 6, 50), seed=1)
    plain = kd_ce_loss if kind == "ce" else kd_kl_loss
    for tau, t2 in [(1, False), (4.0, True), (torch.rand(4, 6) + 0.5, True)]:
        got = chunked_kd_loss(zs, zt, tau, kind=kind, chunk_size=5, temperature_squared=t2)
        want = plain(zs, zt, tau, temperature_squared=t2)
        torch.testing.assert_close(got, want, **TOL)
        for a, b in zip(grads(got, zs, zt), grads(want, zs, zt)):
            torch.testing.assert_close(a, b, **TOL)
    wrapper = chunked_kd_ce_loss if kind == "ce" else chunked_kd_kl_loss
    torch.testing.assert_close(wrapper(zs, zt, 3.0, temperature_squared=True),
                               plain(zs, zt, 3.0, temperature_squared=True), **TOL)


@pytest.mark.parametrize("kind", ["ce", "kl"])
def test_per_row_temperature_and_mask(kind):
    torch.manual_seed(2)
    zs, zt = logits_pair((3, 5, 23), seed=2)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    tau = torch.rand(3, 5) * 3 + 0.3
    loss = check_equal_to_reference(zs, zt, tau, kind, t2=True, mask=mask, chunk_size=4)
    # tau given for the selected rows only, in row-major order, and a bool mask: the same numbers
    same = chunked_kd_loss(zs, zt, tau[mask.bool()], kind=kind, temperature_squared=True, mask=mask.bool(),
                           chunk_size=2)
    torch.testing.assert_close(same, loss, **TOL)
    # unselected rows get exactly zero gradient
    g_s, = grads(chunked_kd_loss(zs, zt.detach(), tau, kind=kind, mask=mask, chunk_size=3), zs)
    assert g_s.shape == zs.shape
    assert torch.all(g_s[~mask.bool()] == 0) and torch.all(g_s[mask.bool()].abs().sum(-1) > 0)


def test_zero_d_tensor_temperature_and_single_row():
    zs, zt = logits_pair((9,), seed=3)  # one row: logits of shape (C,)
    check_equal_to_reference(zs, zt, torch.tensor(1.7), "kl", t2=True, chunk_size=2)


def test_mask_selecting_nothing_gives_zero_loss_and_zero_gradients():
    zs, zt = logits_pair((2, 3, 8), seed=4)
    loss = chunked_kd_loss(zs, zt, 2.0, mask=torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0
    g_s, g_t = grads(loss, zs, zt)
    assert torch.all(g_s == 0) and torch.all(g_t == 0)


def test_kl_with_minus_inf_teacher_logits_is_finite_and_matches_reference():
    zs, zt = logits_pair((6, 10), seed=5)
    zt = zt.detach().clone()
    zt[:, :4] = float("-inf")
    zt.requires_grad_()
    loss = chunked_kd_loss(zs, zt, 2.0, kind="kl", chunk_size=4)
    assert torch.isfinite(loss)
    want = reference(zs, zt, 2.0, "kl")
    torch.testing.assert_close(loss, want, **TOL)
    g_got, g_want = grads(loss, zs)[0], grads(want, zs)[0]
    torch.testing.assert_close(g_got, g_want, **TOL)
    g_t, = grads(chunked_kd_loss(zs, zt, 2.0, kind="kl", chunk_size=4), zt)
    assert torch.all(torch.isfinite(g_t)) and torch.all(g_t[:, :4] == 0)


@pytest.mark.parametrize("kind", ["ce", "kl"])
def test_bf16_logits(kind):
    zs, zt = logits_pair((4, 5, 64), seed=6, dtype=torch.bfloat16)
    mask = torch.rand(4, 5, generator=torch.Generator().manual_seed(0)) > 0.3
    got = chunked_kd_loss(zs, zt, 2.0, kind=kind, mask=mask, chunk_size=3)
    assert got.dtype == torch.float32  # computed in float32, like the plain losses
    torch.testing.assert_close(got, reference(zs, zt, 2.0, kind, mask=mask), **TOL)
    g_got = grads(got, zs, zt)
    g_want = grads(reference(zs, zt, 2.0, kind, mask=mask), zs, zt)
    for a, b in zip(g_got, g_want):
        assert a.dtype == torch.bfloat16
        # both are float32 gradients rounded to bf16; allow one bf16 rounding step
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-2, atol=1e-6)


def test_float64_logits_stay_float64():
    zs, zt = logits_pair((5, 12), seed=7, dtype=torch.float64)
    got = chunked_kd_loss(zs, zt, 1.5, chunk_size=2)
    assert got.dtype == torch.float64
    want = reference(zs.double(), zt.double(), 1.5)
    assert abs(got.item() - kd_ce_loss(zs, zt, 1.5).item()) < 1e-12
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def _saved_tensor_sizes(fn):
    """Element counts of the tensors autograd saves while running ``fn`` (excluding the inputs themselves)."""
    sizes = []

    def pack(t):
        sizes.append((t.numel(), t.data_ptr()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sizes


def test_autograd_keeps_no_rows_x_classes_tensor_beyond_the_inputs():
    n, c = 64, 300
    zs, zt = logits_pair((n, c), seed=8)
    plain = _saved_tensor_sizes(lambda: kd_ce_loss(zs, zt, 2.0))
    assert sum(1 for k, _ in plain if k == n * c) >= 2  # the plain loss keeps softmax outputs
    inputs = {zs.data_ptr(), zt.data_ptr()}
    chunked = _saved_tensor_sizes(lambda: chunked_kd_loss(zs, zt, 2.0, chunk_size=8))
    assert not [k for k, ptr in chunked if k >= n * c and ptr not in inputs]
    h = torch.randn(n, 16, requires_grad=True)
    w = torch.randn(c, 16, requires_grad=True)
    fused = _saved_tensor_sizes(lambda: fused_linear_kd_loss(h, w, zt.detach(), temperature=2.0, chunk_size=8))
    assert not [k for k, ptr in fused if k >= n * c and ptr != zt.data_ptr()]


# -- fused_linear_kd_loss ----------------------------------------------------------------------------------------
def linear_inputs(lead=(3, 7), d=12, c=41, seed=9, dtype=torch.float32, bias=True):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(*lead, d, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(c, d, generator=g) / d ** 0.5 * 3).to(dtype).requires_grad_()
    b = (torch.randn(c, generator=g)).to(dtype).requires_grad_() if bias else None
    zt = (3 * torch.randn(*lead, c, generator=g)).to(dtype)
    return h, w, b, zt


@pytest.mark.parametrize("kind", ["ce", "kl"])
@pytest.mark.parametrize("chunk_size", [1, 4, 64])
def test_fused_equals_reference_with_mask_and_per_row_temperature(kind, chunk_size):
    h, w, b, zt = linear_inputs()
    mask = torch.rand(3, 7, generator=torch.Generator().manual_seed(1)) > 0.4
    tau = torch.rand(3, 7) * 2 + 0.5
    got = fused_linear_kd_loss(h, w, zt, bias_S=b, temperature=tau, kind=kind, chunk_size=chunk_size, mask=mask,
                               temperature_squared=True)
    want = reference(h @ w.t() + b, zt, tau, kind, t2=True, mask=mask)
    torch.testing.assert_close(got, want, **TOL)
    for a, e in zip(grads(got, h, w, b), grads(want, h, w, b)):
        torch.testing.assert_close(a, e, **TOL)


def test_fused_two_dimensional_hidden_without_bias():
    h, w, _, zt = linear_inputs(lead=(10,), bias=False, seed=10)
    got = fused_linear_kd_loss(h, w, zt, temperature=3.0, chunk_size=3)
    want = reference(h @ w.t(), zt, 3.0)
    torch.testing.assert_close(got, want, **TOL)
    for a, e in zip(grads(got, h, w), grads(want, h, w)):
        torch.testing.assert_close(a, e, **TOL)


@pytest.mark.parametrize("kind", ["ce", "kl"])
def test_fused_teacher_given_as_hidden_and_weight(kind):
    h, w, b, _ = linear_inputs(seed=11)
    g = torch.Generator().manual_seed(12)
    h_t = torch.randn(3, 7, 20, generator=g, requires_grad=True)
    w_t = torch.randn(41, 20, generator=g, requires_grad=True)
    b_t = torch.randn(41, generator=g, requires_grad=True)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 3:] = False
    got = fused_linear_kd_loss(h, w, bias_S=b, hidden_T=h_t, weight_T=w_t, bias_T=b_t, temperature=1.5, kind=kind,
                               chunk_size=5, mask=mask)
    want = reference(h @ w.t() + b, h_t @ w_t.t() + b_t, 1.5, kind, mask=mask)
    torch.testing.assert_close(got, want, **TOL)
    params = (h, w, b, h_t, w_t, b_t)  # teacher-side gradients too, when they are asked for
    for a, e in zip(grads(got, *params), grads(want, *params)):
        torch.testing.assert_close(a, e, **TOL)


def test_fused_bf16_matches_bf16_output_layer_then_plain_loss():
    h, w, b, zt = linear_inputs(seed=13, dtype=torch.bfloat16)
    got = fused_linear_kd_loss(h, w, zt, bias_S=b, temperature=2.0, chunk_size=4)
    want = reference(F.linear(h, w, b), zt, 2.0)  # the bf16 output layer a model would run, then float32
    torch.testing.assert_close(got, want, **TOL)
    for a, e in zip(grads(got, h, w, b), grads(want, h, w, b)):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), e.float(), rtol=2e-2, atol=2e-3)


def test_fused_under_autocast_runs_the_output_layer_in_bf16():
    h, w, b, zt = linear_inputs(seed=14)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fused_linear_kd_loss(h, w, zt, bias_S=b, temperature=2.0, chunk_size=4)
    want = reference(F.linear(h.bfloat16(), w.bfloat16(), b.bfloat16()), zt, 2.0)
    torch.testing.assert_close(got, want, **TOL)
    g_h, g_w = grads(got, h, w)
    assert g_h.dtype == torch.float32 and g_w.dtype == torch.float32  # gradients reach the float32 leaves
    e_h, e_w = grads(reference(h @ w.t() + b, zt, 2.0), h, w)
    torch.testing.assert_close(g_h, e_h, rtol=5e-2, atol=5e-3)


# -- bad inputs ---------------------------------------------------------------------------------------------------
def _raises(path, fn):
    with pytest.raises(ConfigError) as err:
        fn()
    assert err.value.path == path, str(err.value)
    return str(err.value)


def test_bad_arguments_of_chunked_kd_loss():
    zs, zt = logits_pair((2, 3, 5))
    assert "'ce'" in _raises("kind", lambda: chunked_kd_loss(zs, zt, kind="js"))
    for bad in (0, -2, 1.5, True):
        assert "positive integer" in _raises("chunk_size", lambda: chunked_kd_loss(zs, zt, chunk_size=bad))
    _raises("temperature_squared", lambda: chunked_kd_loss(zs, zt, temperature_squared="yes"))
    _raises("logits_S", lambda: chunked_kd_loss([[1.0]], zt))
    _raises("logits_S", lambda: chunked_kd_loss(torch.ones(2, 3, 5, dtype=torch.long), zt))
    assert "same shape" in _raises("logits_T", lambda: chunked_kd_loss(zs, zt[:, :2]))
    for bad in (0, -1.0, float("nan"), "2"):
        _raises("temperature", lambda: chunked_kd_loss(zs, zt, bad))
    assert "(2, 3)" in _raises("temperature", lambda: chunked_kd_loss(zs, zt, torch.ones(3, 2)))
    msg = _raises("temperature", lambda: chunked_kd_loss(zs, zt, torch.ones(5), mask=torch.ones(2, 3).bool()))
    assert "(6,)" in msg  # names the selected-rows shape too
    assert "(2, 3)" in _raises("mask", lambda: chunked_kd_loss(zs, zt, mask=torch.ones(3, 2, dtype=torch.bool)))
    assert "bool" in _raises("mask", lambda: chunked_kd_loss(zs, zt, mask=torch.ones(2, 3)))
    _raises("mask", lambda: chunked_kd_loss(zs, zt, mask=[[1, 1, 1], [1, 1, 1]]))


def test_bad_arguments_of_fused_linear_kd_loss():
    h, w, b, zt = linear_inputs(lead=(2, 3), d=4, c=6)
    _raises("hidden_S", lambda: fused_linear_kd_loss(torch.ones(4), w, zt))
    assert "(C, D)" in _raises("weight_S", lambda: fused_linear_kd_loss(h, torch.ones(6, 5), zt))
    _raises("bias_S", lambda: fused_linear_kd_loss(h, w, zt, bias_S=torch.ones(5)))
    assert "(2, 3, 6)" in _raises("logits_T", lambda: fused_linear_kd_loss(h, w, zt[..., :5]))
    _raises("logits_T", lambda: fused_linear_kd_loss(h, w))
    _raises("logits_T", lambda: fused_linear_kd_loss(h, w, zt, hidden_T=h, weight_T=w))
    _raises("weight_T", lambda: fused_linear_kd_loss(h, w, hidden_T=h))
    _raises("hidden_T", lambda: fused_linear_kd_loss(h, w, weight_T=w))
    _raises("hidden_T", lambda: fused_linear_kd_loss(h, w, hidden_T=torch.ones(2, 2, 4), weight_T=w))
    _raises("weight_T", lambda: fused_linear_kd_loss(h, w, hidden_T=torch.ones(2, 3, 5), weight_T=w))
    assert "dtype" in _raises("weight_S", lambda: fused_linear_kd_loss(h, w.double(), zt))
    _raises("kind", lambda: fused_linear_kd_loss(h, w, zt, kind="mse"))
    _raises("mask", lambda: fused_linear_kd_loss(h, w, zt, mask=torch.ones(6, dtype=torch.bool)))


# -- the benchmark script --------------------------------------------------------------------------------------
def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_vocab", os.path.join(REPO, "scripts", "bench_vocab.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memory is read from /proc")
@pytest.mark.parametrize("kind", ["ce", "jsd"])
def test_bench_worker_measures_less_memory_and_equal_losses(capsys, kind):
    """The script's worker, in this process (the script runs each in a fresh one): small, so chunks are small."""
    bench = _bench_module()
    args = bench.argparse.Namespace(rows=2048, classes=8000, hidden=32, dtype="float32", chunk_size=64, repeat=0,
                                    threads=0, kind=kind)
    by = {m: bench.worker(bench.argparse.Namespace(worker=m, **vars(args))) for m in bench.METHODS}
    assert by["chunked"]["loss"] == pytest.approx(by["plain"]["loss"], rel=1e-5)
    assert by["fused"]["loss"] == pytest.approx(by["plain_linear"]["loss"], rel=1e-5)
    one = 2048 * 8000 * 4 / 2**20  # MiB of one (rows, classes) float32 tensor (mmap-ed: over 32 MiB)
    assert by["chunked"]["grads_mib"] == pytest.approx(one)
    assert by["plain"]["peak_mib"] > 2 * one  # the plain loss holds several (rows, classes) tensors at once
    assert by["chunked"]["peak_mib"] < 0.7 * by["plain"]["peak_mib"]
    assert by["fused"]["peak_mib"] < 0.25 * by["plain"]["peak_mib"]  # the target, for every kind
    if kind == "ce":  # few temporaries: under half of one (rows, classes) tensor (small chunks reuse heap memory)
        assert by["fused"]["peak_mib"] < 0.5 * one
    assert all(r["kind"] == kind for r in by.values())
    report = bench.summarize(list(by.values()), args)
    assert report["results"][1]["ratio_to_plain"] == pytest.approx(by["chunked"]["peak_mib"] / by["plain"]["peak_mib"])
    assert report["machine"]["cpu"] and "bf16_flags" in report["machine"]
    bench.print_table(report)
    out = capsys.readouterr().out
    assert "chunked" in out and out.startswith("CPU: ") and kind in out
