"""Offline teacher signals (issue #20): ``brewkit capture`` writes a captured store, a run with ``teacher: {store}``
trains from it with no teacher model, and the sparse (top-k + tail) losses.

The loss references are written here from the bucket formula (float64, explicit loops over the k ids and the
tail), independently of brewkit's functions; "sparse = dense" compares against the dense formulas written from
their definitions too.
"""
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
import yaml
from helpers import free_port, spawn_and_wait
from safetensors.torch import load_file
from task_helpers import GPT2, VOCAB, lm_assets, lm_run

from brewkit.build import build
from brewkit.cli import main
from brewkit.engine.batches import split_batch, split_example_index
from brewkit.errors import CheckpointError, ConfigError
from brewkit.losses.sparse import (
    SPARSE_KINDS,
    TopKTeacher,
    fused_linear_sparse_kd_loss,
    sampled_log_probs,
    sparse_form,
    sparse_kd_loss,
    topk_log_probs,
)
from brewkit.runfile import load_run
from brewkit.teacher_store import CapturedTeacherStore, read_manifest


def cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def write(path, run: dict) -> str:
    path.write_text(yaml.safe_dump(run, sort_keys=False), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return lm_assets(tmp_path_factory.mktemp("lm"))


# -- the sparse losses against hand-written references -----------------------------------------------------------
def hand_bucket_loss(kind: str, zs: torch.Tensor, zt: torch.Tensor, k: int, tau: float, **params) -> float:
    """Mean over rows of divergence ``kind`` between the teacher's and student's distributions on the buckets
    (the teacher's top-k ids, then one bucket for the rest), float64, written out per row."""
    total = 0.0
    for r in range(zs.shape[0]):
        p = torch.softmax(zt[r].double() / tau, -1)
        q = torch.softmax(zs[r].double() / tau, -1)
        top = torch.argsort(p, descending=True)[:k].tolist()
        P = [float(p[i]) for i in top]
        Q = [float(q[i]) for i in top]
        if k < len(p):
            P.append(1.0 - sum(P))
            Q.append(1.0 - sum(Q))
        P, Q = np.array(P), np.array(Q)

        def kl(a, b):
            return float(sum(x * (np.log(x) - np.log(y)) for x, y in zip(a, b) if x > 0))

        if kind == "kl":
            total += kl(P, Q)
        elif kind == "ce":
            total += -float(sum(x * np.log(y) for x, y in zip(P, Q) if x > 0))
        elif kind == "reverse_kl":
            total += kl(Q, P)
        elif kind == "jsd":
            b = params["beta"]
            m = b * P + (1 - b) * Q
            total += b * kl(P, m) + (1 - b) * kl(Q, m)
        elif kind == "skew_kl":
            a = params["alpha"]
            total += kl(P, a * P + (1 - a) * Q)
        elif kind == "skew_reverse_kl":
            a = params["alpha"]
            total += kl(Q, a * Q + (1 - a) * P)
        elif kind == "tvd":
            total += 0.5 * float(np.abs(P - Q).sum())
    return total / zs.shape[0]


PARAMS = {"jsd": {"beta": 0.3}, "skew_kl": {"alpha": 0.2}, "skew_reverse_kl": {"alpha": 0.2}}


def teacher_of(zt: torch.Tensor, k: int, tau: float) -> TopKTeacher:
    ids, logp, tail = topk_log_probs(zt, k, tau)
    return TopKTeacher(ids, logp.double(), tail.double(), tau, zt.shape[-1])


@pytest.mark.parametrize("kind", SPARSE_KINDS)
def test_sparse_loss_is_the_bucket_divergence_written_by_hand(kind):
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(6, 13, generator=g, dtype=torch.float64), 2 * torch.randn(6, 13, generator=g,
                                                                                   dtype=torch.float64)
    got = sparse_kd_loss(kind, zs, teacher_of(zt, 4, 2.0), 2.0, **PARAMS.get(kind, {}))
    assert float(got) == pytest.approx(hand_bucket_loss(kind, zs, zt, 4, 2.0, **PARAMS.get(kind, {})), rel=1e-5)
    as_int = sparse_kd_loss(kind, zs, teacher_of(zt, 4, 2.0), 2, **PARAMS.get(kind, {}))  # YAML's temperature: 2
    assert float(as_int) == float(got)


def bucket_reference(kind: str, zs: torch.Tensor, zt: torch.Tensor, k: int, tau: float, **params) -> torch.Tensor:
    """The bucket divergence by plain autograd (float64): ``Q`` sums the student's softmax over each bucket
    (the tail as ``1 - sum`` of the top ids, fine in float64 at these sizes)."""
    p, q = torch.softmax(zt / tau, -1), torch.softmax(zs / tau, -1)
    top = p.argsort(-1, descending=True)[:, :k]
    P, Q = p.gather(-1, top), q.gather(-1, top)
    P, Q = torch.cat([P, 1 - P.sum(-1, keepdim=True)], -1), torch.cat([Q, 1 - Q.sum(-1, keepdim=True)], -1)
    return dense_reference(kind, Q.log(), P.log(), 1.0, **params)


@pytest.mark.parametrize("kind", SPARSE_KINDS)
def test_sparse_loss_gradient_with_a_tail_bucket_is_the_bucket_divergences(kind):
    """The closed-form gradient (SparseKD) against autograd through the bucket formula, k < V, with a row
    whose student puts almost nothing in the tail and a row whose teacher does."""
    g = torch.Generator().manual_seed(3)
    zs, zt = torch.randn(5, 11, generator=g, dtype=torch.float64), 2 * torch.randn(5, 11, generator=g,
                                                                                   dtype=torch.float64)
    zt[1, :3] += 12.0  # the teacher's tail holds almost nothing
    zs[2, :] = -6.0
    zs[2, zt[2].argsort(descending=True)[:3]] = 6.0  # the student's tail holds almost nothing
    params = PARAMS.get(kind, {})
    mine, ref = zs.clone().requires_grad_(), zs.clone().requires_grad_()
    loss = sparse_kd_loss(kind, mine, teacher_of(zt, 3, 2.0), 2.0, temperature_squared=True, **params)
    loss.backward()
    (4.0 * bucket_reference(kind, ref, zt, 3, 2.0, **params)).backward()
    assert float(loss.detach()) == pytest.approx(4.0 * float(bucket_reference(kind, zs, zt, 3, 2.0, **params)),
                                                 rel=1e-6)
    torch.testing.assert_close(mine.grad, ref.grad, rtol=1e-6, atol=1e-9)
    assert mine.grad.abs().sum() > 0


def dense_reference(kind: str, zs: torch.Tensor, zt: torch.Tensor, tau: float, **params) -> torch.Tensor:
    """The full-vocabulary divergence, from its definition (float64, autograd for the gradient)."""
    p, q = torch.softmax(zt / tau, -1), torch.softmax(zs / tau, -1)

    def kl(a, b):
        return (a * (a.log() - b.log())).sum(-1)

    if kind == "kl":
        rows = kl(p, q)
    elif kind == "ce":
        rows = -(p * q.log()).sum(-1)
    elif kind == "reverse_kl":
        rows = kl(q, p)
    elif kind == "jsd":
        m = params["beta"] * p + (1 - params["beta"]) * q
        rows = params["beta"] * kl(p, m) + (1 - params["beta"]) * kl(q, m)
    elif kind == "skew_kl":
        rows = kl(p, params["alpha"] * p + (1 - params["alpha"]) * q)
    elif kind == "skew_reverse_kl":
        rows = kl(q, params["alpha"] * q + (1 - params["alpha"]) * p)
    else:
        rows = 0.5 * (p - q).abs().sum(-1)
    return rows.mean()


@pytest.mark.parametrize("kind", SPARSE_KINDS)
@pytest.mark.parametrize("capture_tau, train_tau", [(2.0, 2.0), (1.0, 3.0)])
def test_sparse_equals_dense_at_full_k_values_and_gradients(kind, capture_tau, train_tau):
    """k = the vocabulary: no tail bucket, and any training temperature re-tempers exactly."""
    g = torch.Generator().manual_seed(2)
    zs = torch.randn(9, 17, generator=g, dtype=torch.float64, requires_grad=True)
    zt = 3 * torch.randn(9, 17, generator=g, dtype=torch.float64)
    params = PARAMS.get(kind, {})
    sparse = sparse_kd_loss(kind, zs, teacher_of(zt, 17, capture_tau), train_tau, **params)
    dense = dense_reference(kind, zs, zt, train_tau, **params)
    assert float(sparse.detach()) == pytest.approx(float(dense.detach()), abs=1e-5)
    gs, = torch.autograd.grad(sparse, zs)
    gd, = torch.autograd.grad(dense, zs)
    torch.testing.assert_close(gs, gd, rtol=0, atol=1e-5)


def lm_head_case(seed: int, B: int = 3, L: int = 5, D: int = 4, V: int = 11):
    """float64 hidden states ``(B, L, D)``, an LM head ``(V, D)`` + bias, a mask with uncounted positions, and
    teacher logits for the counted positions, with rows whose teacher or student tail holds almost nothing."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, L, D, generator=g, dtype=torch.float64)
    w = torch.randn(V, D, generator=g, dtype=torch.float64)
    b = torch.randn(V, generator=g, dtype=torch.float64)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 3:] = False
    mask[2, 0] = False
    zt = 2 * torch.randn(int(mask.sum()), V, generator=g, dtype=torch.float64)
    zt[1, :3] += 12.0  # the teacher's tail holds almost nothing
    h[0, 1] *= 8.0  # a peaked student row
    return h, w, b, mask, zt


@pytest.mark.parametrize("kind", SPARSE_KINDS)
def test_fused_and_masked_sparse_forms_equal_the_bucket_divergence_and_its_gradients(kind):
    """From hidden states + LM head (fused), and from (B, L, V) logits with the mask, in chunks of 2 rows: the
    value and the gradients of h, W and b are autograd's through the bucket formula on logits[mask]."""
    params = PARAMS.get(kind, {})
    h, w, b, mask, zt = lm_head_case(5)
    teacher = teacher_of(zt, 3, 2.0)
    ref_in = [x.clone().requires_grad_() for x in (h, w, b)]
    ref = 4.0 * bucket_reference(kind, torch.nn.functional.linear(*ref_in)[mask], zt, 3, 2.0, **params)
    want = torch.autograd.grad(ref, ref_in)
    fused_in = [x.clone().requires_grad_() for x in (h, w, b)]
    fused = fused_linear_sparse_kd_loss(kind, fused_in[0], fused_in[1], teacher, fused_in[2], 2.0, mask=mask,
                                        temperature_squared=True, chunk_size=2, **params)
    masked_in = [x.clone().requires_grad_() for x in (h, w, b)]
    masked = sparse_kd_loss(kind, torch.nn.functional.linear(*masked_in), teacher, 2.0, mask=mask,
                            temperature_squared=True, chunk_size=2, **params)
    for loss, inputs in ((fused, fused_in), (masked, masked_in)):
        assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
        for got, expected in zip(torch.autograd.grad(loss, inputs), want):  # the reference's 1 - sum tail
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)  # loses ~1e-8 on the peaked row
    assert want[0][~mask].abs().sum() == 0  # the uncounted positions get no gradient


@pytest.mark.parametrize("kind", ["kl", "jsd", "tvd"])
def test_fused_sparse_at_full_k_with_per_row_temperatures_is_the_dense_divergence(kind):
    """k = V: the fused form re-tempers the store exactly, one temperature per counted row."""
    params = PARAMS.get(kind, {})
    h, w, b, mask, zt = lm_head_case(6)
    tau = torch.linspace(0.5, 3.0, int(mask.sum()), dtype=torch.float64)
    inputs = [x.clone().requires_grad_() for x in (h, w, b)]
    got = fused_linear_sparse_kd_loss(kind, inputs[0], inputs[1], teacher_of(zt, 11, 1.0), inputs[2], tau,
                                      mask=mask, chunk_size=3, **params)
    ref_in = [x.clone().requires_grad_() for x in (h, w, b)]
    want = dense_reference(kind, torch.nn.functional.linear(*ref_in)[mask], zt, tau.unsqueeze(-1), **params)
    assert float(got.detach()) == pytest.approx(float(want.detach()), abs=1e-6)
    for a, e in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, ref_in)):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-6)


def test_the_sparse_gradient_follows_the_upstream_scale_and_is_handed_over_once():
    h, w, b, mask, zt = lm_head_case(7)
    z1, z2 = (torch.nn.functional.linear(h, w, b).requires_grad_() for _ in range(2))
    teacher = teacher_of(zt, 3, 1.0)
    sparse_kd_loss("kl", z1, teacher, 1.0, mask=mask).backward()
    loss = sparse_kd_loss("kl", z2, teacher, 1.0, mask=mask)
    (0.25 * loss).backward(retain_graph=True)
    torch.testing.assert_close(z2.grad, 0.25 * z1.grad, rtol=1e-12, atol=0)
    with pytest.raises(RuntimeError, match="once"):
        loss.backward()
    with torch.no_grad():
        value = sparse_kd_loss("kl", z1, teacher, 1.0, mask=mask)
    assert not value.requires_grad and float(value) == pytest.approx(float(loss.detach()), rel=1e-12)


def test_bad_inputs_of_the_sparse_forms_name_the_argument():
    h, w, b, mask, zt = lm_head_case(8)
    teacher = teacher_of(zt, 3, 1.0)
    z = torch.nn.functional.linear(h, w, b)
    cases = [
        (lambda: sparse_kd_loss("kl", z, teacher), "logits_S", "mask"),
        (lambda: sparse_kd_loss("kl", z, teacher, mask=mask[:, :2]), "mask", "leading shape"),
        (lambda: sparse_kd_loss("kl", z, teacher, mask=mask, chunk_size=0), "chunk_size", "positive"),
        (lambda: fused_linear_sparse_kd_loss("kl", h, w, teacher), "mask", "mask"),
        (lambda: fused_linear_sparse_kd_loss("kl", h, w[:, :2], teacher, mask=mask), "weight_S", "(V, D)"),
        (lambda: fused_linear_sparse_kd_loss("kl", h, w, teacher, b[:4], mask=mask), "bias_S", "one value"),
        (lambda: fused_linear_sparse_kd_loss("kl", h, w.float(), teacher, mask=mask), "weight_S", "dtype"),
        (lambda: fused_linear_sparse_kd_loss("kl", h, w, teacher_of(zt, 11, 1.0), mask=mask,
                                             temperature=torch.ones(3)), "temperature", "one value per"),
    ]
    for call, path, words in cases:
        with pytest.raises(ConfigError) as e:
            call()
        assert e.value.path == path and words in str(e.value), (path, str(e.value))


def test_sparse_loss_float32_store_equals_dense_float32_at_full_k():
    g = torch.Generator().manual_seed(3)
    zs, zt = torch.randn(20, 50, generator=g), 2 * torch.randn(20, 50, generator=g)
    ids, logp, tail = topk_log_probs(zt, 50, 1.5)
    got = sparse_kd_loss("kl", zs, TopKTeacher(ids, logp, tail, 1.5, 50), 1.5, temperature_squared=True)
    want = dense_reference("kl", zs.double(), zt.double(), 1.5) * 1.5 ** 2
    assert float(got) == pytest.approx(float(want), abs=1e-5)


def test_topk_records_hold_the_largest_ids_and_the_exact_tail():
    z = torch.tensor([[0.0, 3.0, 1.0, -1.0, 2.0]])
    ids, logp, tail = topk_log_probs(z, 2, 1.0)
    p = torch.softmax(z.double(), -1)[0]
    assert ids.tolist() == [[1, 4]]
    torch.testing.assert_close(logp.double(), p[[1, 4]].log()[None], rtol=0, atol=1e-6)
    assert float(tail) == pytest.approx(float(torch.log(p[[0, 2, 3]].sum())), abs=1e-6)
    _, _, no_tail = topk_log_probs(z, 9, 1.0)  # k above the vocabulary: all ids, no tail
    assert no_tail.tolist() == [float("-inf")]


def test_a_temperature_the_store_cannot_represent_is_refused():
    zs, zt = torch.randn(3, 8), torch.randn(3, 8)
    t = teacher_of(zt, 4, 2.0)
    with pytest.raises(ConfigError) as e:
        sparse_kd_loss("kl", zs, t, 1.0)
    assert e.value.path == "temperature" and "temperature 2" in str(e.value)
    with pytest.raises(ConfigError):
        sparse_kd_loss("kl", zs, t, torch.full((3,), 2.0) + torch.arange(3))  # per-row, top-k
    sparse_kd_loss("kl", zs, t, 2.0)  # the capture temperature is exact


def test_losses_without_a_sparse_form_are_refused_with_the_reason():
    for name in ("mse", "bce"):
        with pytest.raises(ConfigError) as e:
            sparse_form(None, name)
        assert "compares each class's logit" in str(e.value)
    with pytest.raises(ConfigError) as e:
        sparse_form(None, "coupled_rank_distil")
    assert "full distribution" in str(e.value)
    assert sparse_form("jsd", "jsd") == "jsd"


def test_the_student_and_the_store_must_count_the_same_positions():
    t = teacher_of(torch.randn(3, 8), 4, 1.0)
    with pytest.raises(CheckpointError) as e:
        sparse_kd_loss("kl", torch.randn(4, 8), t, 1.0)
    assert "3" in str(e.value) and "4" in str(e.value)


# -- sampled stores ------------------------------------------------------------------------------------------------
def test_sampled_records_are_the_counts_of_inverse_cdf_draws_written_by_hand():
    z = torch.tensor([[0.0, 2.0, 1.0, -1.0, 0.5]])
    u = torch.tensor([[0.05, 0.6, 0.61, 0.97, 0.3, 0.999]])
    ids, logp, tail = sampled_log_probs(z, 6, 2.0, u)
    p = torch.softmax(z.double() / 2.0, -1)[0].tolist()
    cdf = [sum(p[:i + 1]) for i in range(5)]
    drawn = [next(i for i, c in enumerate(cdf) if x * cdf[-1] < c) for x in u[0].tolist()]
    want = {i: drawn.count(i) / 6 for i in set(drawn)}
    got = {i: v for i, v in zip(ids[0].tolist(), logp[0].exp().tolist()) if v > 0}
    assert got == pytest.approx(want, abs=1e-6)
    assert len(set(ids[0].tolist())) == 5 and tail.tolist() == [float("-inf")]  # k' = min(6, V) distinct slots
    counts = logp[0].exp().tolist()
    assert counts == sorted(counts, reverse=True)  # most often drawn first, then ids not drawn (probability 0)
    z0 = torch.tensor([[0.0, -float("inf"), 1.0]])  # an id of probability 0 is never drawn
    ids, logp, _ = sampled_log_probs(z0, 3, 1.0, torch.rand(1, 3))
    assert 1 not in [i for i, v in zip(ids[0].tolist(), logp[0].tolist()) if v > float("-inf")]
    with pytest.raises(ConfigError) as e:
        sampled_log_probs(z, 4, 1.0, u)
    assert e.value.path == "uniforms"


def test_a_sampled_store_is_an_unbiased_estimate_of_the_teacher_and_of_the_dense_gradient():
    """Means over independent draws: the counts estimate p_T, and the sparse CE gradient estimates the dense
    one, (q - p_T) / T per row, within a few standard errors; one sample's value is -sum (c_i / N) log q_i."""
    g = torch.Generator().manual_seed(0)
    zs, zt, tau, draws, reps = torch.randn(3, 12, generator=g), 2 * torch.randn(3, 12, generator=g), 1.5, 8, 600
    p_T = torch.softmax(zt.double() / tau, -1)
    q = torch.softmax(zs.double() / tau, -1)
    est, grads = torch.zeros(3, 12, dtype=torch.float64), []
    for _ in range(reps):
        ids, logp, tail = sampled_log_probs(zt, draws, tau, torch.rand(3, draws, generator=g))
        est += torch.zeros(3, 12, dtype=torch.float64).scatter_(-1, ids, logp.double().exp())
        z = zs.clone().double().requires_grad_(True)
        loss = sparse_kd_loss("ce", z, TopKTeacher(ids, logp, tail, tau, 12, sampled=True), tau)
        (grad,) = torch.autograd.grad(loss, [z])
        grads.append(grad)
        c = logp.double().exp()
        hand = -(c * torch.where(c > 0, q.log().gather(-1, ids), torch.zeros_like(c))).sum() / 3
        assert float(loss.detach()) == pytest.approx(float(hand), rel=1e-9, abs=1e-12)
    se_p = (p_T * (1 - p_T) / (draws * reps)).sqrt()
    assert ((est / reps - p_T).abs() <= 5 * se_p + 1e-9).all()
    grads = torch.stack(grads)
    dense = (q - p_T) / tau / 3
    se_g = grads.std(0) / reps ** 0.5
    assert ((grads.mean(0) - dense).abs() <= 5 * se_g + 1e-9).all()
    assert float((grads.mean(0) - dense).abs().max()) < 0.1 * float(dense.abs().max())
    top = TopKTeacher(*topk_log_probs(zt, draws, tau), tau, 12)  # the top-k support is biased: far off
    z = zs.clone().double().requires_grad_(True)
    (g_top,) = torch.autograd.grad(sparse_kd_loss("ce", z, top, tau), [z])
    assert float((g_top - dense).abs().max()) > 3 * float((grads.mean(0) - dense).abs().max())


def test_a_sampled_store_refuses_biased_kinds_and_any_other_temperature():
    zt = torch.randn(2, 6)
    t = TopKTeacher(*sampled_log_probs(zt, 8, 1.0, torch.rand(2, 8)), 1.0, 6, sampled=True)
    assert not t.full  # k' = V slots, yet an estimate: never re-tempered
    for kind in ("reverse_kl", "jsd", "tvd"):
        with pytest.raises(ConfigError) as e:
            sparse_kd_loss(kind, torch.randn(2, 6), t, 1.0)
        assert e.value.path == "kind" and "sampled teacher store" in str(e.value)
    with pytest.raises(ConfigError) as e:
        sparse_kd_loss("kl", torch.randn(2, 6), t, 2.0)
    assert e.value.path == "temperature"
    sparse_kd_loss("kl", torch.randn(2, 6), t, 1.0)


def test_a_sampled_capture_draws_per_example_and_trains_the_counts_ce(lm, tmp_path):
    """selection: sampled: the manifest says so; an example's draws do not depend on the batching (a capture at
    another batch size stores the same records); the KD term of a run from it is the CE against the counts; a run
    asking for another selection, or a loss that is not linear in the teacher, is refused."""
    run = lm_sgd_run(lm, tmp_path / "o")
    run["distillation"]["kd_loss_type"] = "ce"
    run["teacher"]["capture"] = {"k": 8, "selection": "sampled", "seed": 3, "dtype": "float32"}
    summary = capture_cli(write(tmp_path / "r.yaml", run), tmp_path / "store")
    assert summary["top_k_mass"] == "None"
    m = read_manifest(str(tmp_path / "store"))
    assert (m["selection"], m["draws"], m["seed"], m["k"]) == ("sampled", 8, 3, 8)
    assert m["fingerprint"]["selection"] == "sampled" and m["fingerprint"]["sample_seed"] == 3
    other = json.loads(json.dumps(run))
    other["data"]["batch_size"] = 5
    capture_cli(write(tmp_path / "r5.yaml", other), tmp_path / "store5")
    a, b = CapturedTeacherStore(str(tmp_path / "store")), CapturedTeacherStore(str(tmp_path / "store5"))
    assert sorted(a._entries) == sorted(b._entries)  # noqa: SLF001 -- the test reads the index
    for i in a._entries:  # noqa: SLF001
        ra, rb = a._row(i), b._row(i)  # noqa: SLF001
        assert np.array_equal(ra, rb)
        assert np.allclose(np.exp(ra["logp"]).sum(-1), 1.0)
        assert all(len(set(r)) == 8 for r in ra["ids"].tolist())
    srun = store_run(run, tmp_path / "store", tmp_path / "s")
    b_live, bs = build(load_run(run), with_optimizer=False), build(load_run(srun), with_optimizer=False)
    raw = next(iter(bs.train_loader))
    _, terms = bs.distiller.dry_run(raw)
    from brewkit.tasks import next_token_mask

    mask = next_token_mask(raw)
    inputs = {k: raw[k] for k in ("input_ids", "attention_mask", "position_ids")}
    hit = a.get(raw["idx"], raw)["logits"][0]
    with torch.no_grad():
        log_q = torch.log_softmax(bs.student(**inputs).logits[mask].double() / 2.0, -1)
    c = hit.logp.double().exp()
    hand = -(c * log_q.gather(-1, hit.ids)).sum(-1).mean() * 4
    assert float(terms["unweighted_kd_loss"]) == pytest.approx(float(hand), rel=1e-4)
    del b_live
    code, _, err = cli("train", write(tmp_path / "s.yaml", srun))
    assert code == 0, err
    for change, path in ((lambda r: r["distillation"].update(kd_loss_type="reverse_kl"), "distillation.kd_loss_type"),
                         (lambda r: r["teacher"].update(capture={"selection": "top_k", "k": 8}), "teacher.store")):
        bad = json.loads(json.dumps(srun))
        change(bad)
        with pytest.raises(ConfigError) as e:
            build(load_run(bad), with_optimizer=False)
        assert e.value.path == path, str(e.value)
        if path == "teacher.store":
            assert "another selection (store 'sampled', this run 'top_k')" in str(e.value)


# -- capture and training from the store -------------------------------------------------------------------------
def capture_cli(run_path: str, out, *extra) -> dict:
    code, stdout, err = cli("capture", run_path, "--out", out, *extra)
    assert code == 0, err
    return dict(line.split(": ", 1) for line in stdout.strip().splitlines() if ": " in line)


def lm_sgd_run(lm, out, **data) -> dict:
    run = lm_run(lm, out, **data)
    run["data"]["eval_file"] = None
    run["training"] = {**run["training"], "num_steps": 4, "optimizer": {"name": "sgd", "lr": 0.5}}
    return run


def store_run(run: dict, store, out) -> dict:
    other = json.loads(json.dumps(run))
    other["teacher"] = {"store": str(store)}
    other["output_dir"] = str(out)
    return other


def final_weights(out) -> dict:
    return load_file(os.path.join(out, "final", "model.safetensors"))


def kd_losses(out) -> list[float]:
    """The logged ``unweighted_kd_loss`` of every logged step of the run in ``out``."""
    return [r["unweighted_kd_loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "unweighted_kd_loss" in r]


def test_training_from_a_full_vocabulary_store_equals_live_teacher_training(lm, tmp_path):
    """k = vocabulary, float32 store: the student trained from the store (no teacher model built) is the one
    the live teacher gives, to float32 rounding; the KD term per step agrees too."""
    live = lm_sgd_run(lm, tmp_path / "live", prompt_column="prompt", completion_column="completion",
                      shuffle=True, padding_side="left")
    del live["data"]["text_column"]
    path = write(tmp_path / "live.yaml", live)
    summary = capture_cli(path, tmp_path / "store", "--k", "1000", "--dtype", "float32")
    assert summary["complete"] == "True" and summary["kind"] == "topk"
    assert int(summary["examples"]) == 24
    code, _, err = cli("train", path)
    assert code == 0, err
    code, _, err = cli("train", write(tmp_path / "s.yaml", store_run(live, tmp_path / "store", tmp_path / "from")))
    assert code == 0, err
    a, b = final_weights(tmp_path / "live"), final_weights(tmp_path / "from")
    for name, w in a.items():
        torch.testing.assert_close(b[name], w, rtol=0, atol=1e-5)

    assert kd_losses(tmp_path / "from") == pytest.approx(kd_losses(tmp_path / "live"), rel=1e-5)


def test_store_layout_manifest_and_bytes_per_position(lm, tmp_path):
    """k = 64 of a 100-id vocabulary in float16: 64 uint16 ids + 64 float16 log-probs + a float16 tail = 258 bytes
    a counted position; each example stores exactly its counted positions."""
    run = lm_sgd_run(lm, tmp_path / "o")
    run["teacher"]["config"]["vocab_size"] = 100
    run["student"]["config"]["vocab_size"] = 100
    path = write(tmp_path / "r.yaml", run)
    summary = capture_cli(path, tmp_path / "store")
    m = read_manifest(str(tmp_path / "store"))
    assert (m["k"], m["vocab"], m["ids_dtype"], m["dtype"], m["record_bytes"]) == (64, 100, "uint16", "float16", 258)
    assert m["complete"] and m["examples"] == 24
    store = CapturedTeacherStore(str(tmp_path / "store"))
    b = build(load_run(run), with_optimizer=False)
    counted = 0
    from brewkit.tasks import next_token_mask

    top_mass = []  # the teacher's probability on its 64 most likely ids, per counted position
    for two_part in b.train_loader:
        batch = split_batch(two_part)[1]  # the student's part: it has the labels the positions come from
        n = next_token_mask(batch).sum(-1)
        for i, c in zip(batch["idx"].tolist(), n.tolist()):
            assert store.entries()[list(store._entries).index(i)][2] == c  # noqa: SLF001 -- the test reads the index
        counted += int(n.sum())
        with torch.no_grad():
            z = b.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          position_ids=batch["position_ids"]).logits[next_token_mask(batch)]
        top_mass += torch.softmax(z.double() / 2.0, -1).topk(64, -1).values.sum(-1).tolist()
    assert int(summary["positions"]) == counted == m["positions"]
    assert float(summary["top_k_mass"]) == pytest.approx(sum(top_mass) / len(top_mass), abs=2e-3)  # float16 tails
    assert 0 < float(summary["top_k_mass"]) < 1
    data_bytes = os.path.getsize(tmp_path / "store" / "data-rank0.bin")
    assert data_bytes == 258 * counted
    assert float(summary["bytes_per_position"]) < 260 + 4096 / counted * 4  # data + index + manifest
    logits = b.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"]).logits
    hit = store.get(batch["idx"], batch)["logits"][0]
    mask = next_token_mask(batch)
    want_ids, want_logp, want_tail = topk_log_probs(logits[mask].detach(), 64, 2.0)
    assert torch.equal(hit.ids, want_ids)
    torch.testing.assert_close(hit.logp, want_logp.half().float())
    torch.testing.assert_close(hit.log_tail, want_tail.half().float())


def test_validate_from_a_store_loads_no_teacher_and_says_so(lm, tmp_path):
    run = lm_sgd_run(lm, tmp_path / "o")
    capture_cli(write(tmp_path / "r.yaml", run), tmp_path / "store", "--k", "8")
    code, out, err = cli("validate", write(tmp_path / "s.yaml", store_run(run, tmp_path / "store", tmp_path / "s")))
    assert code == 0, err
    assert "captured store" in out and "top-8 of 43 ids at temperature 2" in out
    assert "teacher_parameters" not in out


def test_a_top_k_store_trains_a_student_whose_kd_term_is_the_sparse_one(lm, tmp_path):
    """k = 8: the first step's KD term is the hand-written bucket KL (x tau^2) over the batch's counted positions."""
    run = lm_sgd_run(lm, tmp_path / "o")
    capture_cli(write(tmp_path / "r.yaml", run), tmp_path / "store", "--k", "8", "--dtype", "float32")
    srun = store_run(run, tmp_path / "store", tmp_path / "s")
    b_live = build(load_run(run), with_optimizer=False)
    b = build(load_run(srun), with_optimizer=False)
    assert b.teacher is None
    raw = next(iter(b.train_loader))
    loss, terms = b.distiller.dry_run(raw)
    from brewkit.tasks import next_token_mask

    mask = next_token_mask(raw)
    inputs = {k: raw[k] for k in ("input_ids", "attention_mask", "position_ids")}
    with torch.no_grad():
        zt = b_live.teacher(**inputs).logits[mask].double()
        zs = b.student(**inputs).logits[mask].double()
    assert float(terms["unweighted_kd_loss"]) == pytest.approx(hand_bucket_loss("kl", zs, zt, 8, 2.0) * 4, rel=1e-4)


@pytest.mark.parametrize("hard_label_weight", [0, 0.5])
def test_a_store_run_in_the_fused_form_trains_the_plain_forms_student(lm, tmp_path, hard_label_weight):
    """kd_implementation fused (from the student's hidden states and LM head) and plain (from its logits) give
    the same student from a k = 8 store, with and without hard labels beside the KD term. Without them the fused
    run asks the student for its last position's logits only (logits_to_keep=1): nothing reads the others."""
    run = lm_sgd_run(lm, tmp_path / "o")
    run["distillation"]["hard_label_weight"] = hard_label_weight
    capture_cli(write(tmp_path / "r.yaml", run), tmp_path / "store", "--k", "8", "--dtype", "float32")
    outs = {}
    for form in ("plain", "fused"):
        srun = store_run(run, tmp_path / "store", tmp_path / form)
        srun["distillation"]["kd_implementation"] = form
        code, _, err = cli("train", write(tmp_path / f"{form}.yaml", srun))
        assert code == 0, err
        outs[form] = final_weights(tmp_path / form)
        b = build(load_run(srun), with_optimizer=False)
        batch_S = split_batch(split_example_index(next(iter(b.train_loader)))[0])[1]
        results = b.distiller.student_results(batch_S, {})
        short = form == "fused" and hard_label_weight == 0
        assert b.distiller.reads_no_student_logits(b.distiller.adaptor_S) == short
        assert results["logits"][0].shape[1] == (1 if short else results["logits_mask"][0].shape[1])
    for name, w in outs["plain"].items():
        torch.testing.assert_close(outs["fused"][name], w, rtol=0, atol=1e-5)

    assert len(kd_losses(tmp_path / "plain")) == 4 and min(kd_losses(tmp_path / "plain")) > 0
    assert kd_losses(tmp_path / "fused") == pytest.approx(kd_losses(tmp_path / "plain"), rel=1e-5)


# -- fingerprint refusals --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def captured(lm, tmp_path_factory):
    root = tmp_path_factory.mktemp("captured")
    run = lm_sgd_run(lm, root / "o")
    run["teacher"]["capture"] = {"k": 8}
    path = write(root / "r.yaml", run)
    capture_cli(path, root / "store")
    return run, root / "store", root


def refused(run: dict, tmp_path, name: str) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        build(load_run(run), with_optimizer=False)
    return e.value


def swapped_tokenizer(directory) -> str:
    """A tokenizer of the same size whose ids for two words are swapped (another tokenizer, same vocab size)."""
    from transformers import BertTokenizerFast

    vocab = list(VOCAB)
    i, j = vocab.index("film"), vocab.index("movie")
    vocab[i], vocab[j] = vocab[j], vocab[i]
    BertTokenizerFast(vocab={w: n for n, w in enumerate(vocab)}).save_pretrained(str(directory))
    return str(directory)


def test_a_resumed_capture_refuses_each_differing_item(lm, captured, tmp_path):
    run, store, _ = captured
    cases = {
        "teacher": lambda r: r["training"].update(seed=1),  # other random weights
        "tokenizer": lambda r: [r[s].update(tokenizer=swapped_tokenizer(tmp_path / "tok")) for s in ("teacher",
                                                                                                      "student")],
        "max_length": lambda r: r["data"].update(max_length=30),
        "k": lambda r: r["teacher"]["capture"].update(k=16),
        "temperature": lambda r: r["teacher"]["capture"].update(temperature=3),
        "dtype": lambda r: r["teacher"]["capture"].update(dtype="float32"),
        "selection": lambda r: r["teacher"]["capture"].update(selection="sampled"),
    }
    for item, change in cases.items():
        other = json.loads(json.dumps(run))
        change(other)
        code, _, err = cli("capture", write(tmp_path / f"{item}.yaml", other), "--out", store)
        assert code == 2, (item, err)
        assert f"captured with another {item} (" in err and "--out" in err, (item, err)
    data = tmp_path / "train.csv"
    shutil.copy(lm.train, data)
    with open(data, "a", encoding="utf-8") as f:
        f.write("the film was fun,the film,was fun\n")
    other = json.loads(json.dumps(run))
    other["data"]["train_file"] = str(data)
    code, _, err = cli("capture", write(tmp_path / "data.yaml", other), "--out", store)
    assert code == 2 and "another data (the train file's content" in err


def test_a_run_from_the_store_refuses_each_differing_item(lm, captured, tmp_path):
    run, store, _ = captured
    base = store_run(run, store, tmp_path / "o")

    def variant(change) -> dict:
        other = json.loads(json.dumps(base))
        change(other)
        return other

    tok = swapped_tokenizer(tmp_path / "tok")
    data = tmp_path / "train.csv"
    shutil.copy(lm.train, data)
    with open(data, "a", encoding="utf-8") as f:
        f.write("the film was fun,the film,was fun\n")
    cases = {
        "tokenizer": lambda r: r["student"].update(tokenizer=tok),
        "data": lambda r: r["data"].update(train_file=str(data)),
        "max_length": lambda r: r["data"].update(max_length=30),
        "teacher": lambda r: r["teacher"].update(config={**GPT2, "n_layer": 2}),  # names another teacher model
        "k": lambda r: r["teacher"].update(capture={"k": 16}),
        "positions": lambda r: r["data"].update(prompt_column="prompt", completion_column="completion",
                                                text_column=None),
    }
    for item, change in cases.items():
        other = variant(change)
        if other["data"].get("text_column") is None:
            other["data"].pop("text_column")
        e = refused(other, tmp_path, item)
        assert e.path == "teacher.store" and f"captured with another {item}" in str(e), (item, str(e))
        assert "teacher.force: true" in str(e)
    same = json.loads(json.dumps(run))  # the capture's own run file with teacher.store set: nothing differs
    same["teacher"]["store"] = str(store)
    same["output_dir"] = str(tmp_path / "same")
    assert build(load_run(same), with_optimizer=False).teacher is None
    with pytest.raises(ConfigError) as e:  # the temperature: no force, no re-tempering of a top-k store
        build(load_run(variant(lambda r: r["distillation"].update(temperature=3))), with_optimizer=False)
    assert e.value.path == "distillation.temperature" and "temperature 2" in str(e.value)
    task = tmp_path / "task_store"  # a store that says it was captured for another task
    shutil.copytree(store, task)
    manifest = json.loads((task / "manifest.json").read_text())
    manifest["fingerprint"]["task"] = "token_classification"
    (task / "manifest.json").write_text(json.dumps(manifest))
    e = refused(variant(lambda r: r["teacher"].update(store=str(task))), tmp_path, "task")
    assert "another task (store 'token_classification', this run 'causal_lm')" in str(e)


def test_force_trains_from_a_store_whose_settings_differ_with_a_warning(lm, captured, tmp_path, caplog):
    run, store, _ = captured
    other = store_run(run, store, tmp_path / "o")
    other["data"]["max_length"] = 30  # the rows are shorter than 24 tokens: the same examples
    other["teacher"]["force"] = True
    code, _, err = cli("train", write(tmp_path / "f.yaml", other))
    assert code == 0, err
    assert any("teacher.force" in r.getMessage() and "max_length" in r.getMessage() for r in caplog.records)


def test_an_incomplete_store_is_refused_until_the_capture_finishes(captured, tmp_path):
    run, store, _ = captured
    partial = tmp_path / "partial"
    shutil.copytree(store, partial)
    manifest = json.loads((partial / "manifest.json").read_text())
    manifest["complete"] = False
    (partial / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError) as e:
        build(load_run(store_run(run, partial, tmp_path / "o")), with_optimizer=False)
    assert "incomplete" in str(e.value) and e.value.path == "teacher.store"


@pytest.mark.parametrize("change, path, words", [
    (lambda r: r["teacher"].update(force=True), "teacher.force", "teacher.store"),
    (lambda r: r["teacher"].update(capture={"k": 0}), "teacher.capture.k", ">= 1"),
    (lambda r: r["teacher"].update(capture={"dtype": "int8"}), "teacher.capture.dtype", "float16"),
    (lambda r: r["teacher"].update(capture={"kk": 3}), "teacher.capture", "kk"),
    (lambda r: r["teacher"].update(store=3), "teacher.store", "directory"),
    (lambda r: r["teacher"].update(capture={"selection": "random"}), "teacher.capture.selection", "sampled"),
    (lambda r: r["teacher"].update(capture={"seed": 3}), "teacher.capture.seed", "nothing is drawn"),
])
def test_broken_capture_and_store_keys_name_the_key(lm, tmp_path, change, path, words):
    run = lm_sgd_run(lm, tmp_path / "o")
    change(run)
    with pytest.raises(ConfigError) as e:
        load_run(run)
    assert e.value.path.startswith(path) and words in str(e.value)


def test_what_a_store_run_cannot_compute_is_refused(lm, captured, tmp_path):
    run, store, _ = captured
    base = store_run(run, store, tmp_path / "o")
    cases = [
        ("distillation", {"kd_loss_type": "mse"}, "distillation.kd_loss_type", "no sparse form"),
        ("distillation", {"intermediate_matches": [{"layer_T": 1, "layer_S": 1, "feature": "hidden",
                                                    "loss": "hidden_mse", "weight": 1}]},
         "distillation.intermediate_matches", "logits only"),
        ("distillation", {"temperature_scheduler": ["flsw", 1, 2]}, "distillation.temperature_scheduler", "per-row"),
        ("distillation", {"teacher_cache": "memory"}, "distillation.teacher_cache", "nothing to cache"),
    ]
    for section, update, path, words in cases:
        other = json.loads(json.dumps(base))
        other[section].update(update)
        with pytest.raises(ConfigError) as e:
            build(load_run(other), with_optimizer=False)
        assert e.value.path == path and words in str(e.value), (path, str(e.value))
    for update, path in (({"evaluation": {"metric": "teacher_agreement"}}, "evaluation.metric"),
                         ({"student": {"init_from_teacher": {"layers": [0]}}}, "student.init_from_teacher")):
        other = {**json.loads(json.dumps(base)), **update}
        with pytest.raises(ConfigError) as e:
            load_run(other)
        assert e.value.path == path
    missing = store_run(run, tmp_path / "nowhere", tmp_path / "o2")
    with pytest.raises(ConfigError) as e:
        build(load_run(missing), with_optimizer=False)
    assert e.value.path == "teacher.store" and "no captured teacher store" in str(e.value)


def test_a_store_with_changed_tokens_under_an_index_is_refused_at_the_batch(lm, captured, tmp_path):
    """force skips the fingerprint; the per-example token hashes still catch rows that are not the stored ones."""
    run, store, _ = captured
    rows = (open(lm.train, encoding="utf-8").read().splitlines())
    data = tmp_path / "train.csv"
    data.write_text("\n".join([rows[0], rows[2], rows[1], *rows[3:]]) + "\n", encoding="utf-8")  # two rows swap
    other = store_run(run, store, tmp_path / "o")
    other["data"]["train_file"] = str(data)
    other["teacher"]["force"] = True
    b = build(load_run(other), with_optimizer=False)
    with pytest.raises(CheckpointError) as e:
        for batch in b.train_loader:
            b.distiller.dry_run(batch)
    assert "tokens differ" in str(e.value)


# -- capture killed and resumed ------------------------------------------------------------------------------------
SLOW_PLUGIN = textwrap.dedent('''
    """A GPT-2 whose forward sleeps, so that a capture can be killed half way."""
    import time

    import transformers

    from brewkit.models import MODEL_BUILDERS


    class SlowGPT2(transformers.GPT2LMHeadModel):
        def forward(self, *args, **kwargs):
            time.sleep(0.15)
            return super().forward(*args, **kwargs)


    @MODEL_BUILDERS.register("slow_gpt2")
    def slow_gpt2(**sizes):
        return SlowGPT2(transformers.GPT2Config(**sizes))
''')


def index_entries(store_dir) -> list[int]:
    out = []
    for path in sorted(store_dir.glob("index-rank*.safetensors")):
        out += load_file(str(path))["idx"].tolist()
    return out


@pytest.mark.slow
def test_a_capture_killed_mid_way_resumes_and_stores_every_example_exactly_once(lm, tmp_path):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "slow_teacher_plugin.py").write_text(SLOW_PLUGIN, encoding="utf-8")
    run = lm_sgd_run(lm, tmp_path / "o")
    sizes = {k: v for k, v in GPT2.items() if k != "model_type"}
    run["teacher"] = {"builder": "slow_gpt2", "args": {**sizes, "n_layer": 3}, "tokenizer": lm.tokenizer,
                      "capture": {"k": 8, "flush_every": 1}}
    run["plugins"] = ["slow_teacher_plugin"]
    run["data"]["batch_size"] = 1
    path = write(tmp_path / "r.yaml", run)
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "plugins"), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "brewkit", "capture", path, "--out", str(store)]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (store / "index-rank0.safetensors").exists() or len(index_entries(store)) < 5:
            assert p.poll() is None, "the capture ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL)
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
    stored = index_entries(store)
    assert 5 <= len(stored) < 24 and not read_manifest(str(store))["complete"]
    with open(store / "data-rank0.bin", "ab") as f:  # what a kill mid-write leaves after the flushed index
        f.write(b"\x01" * 100)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    entries = index_entries(store)
    assert sorted(entries) == list(range(24))  # every example once: none dropped, none twice
    m = read_manifest(str(store))
    assert m["complete"] and os.path.getsize(store / "data-rank0.bin") == m["positions"] * m["record_bytes"]
    # the records are the ones an uninterrupted capture writes
    fresh = tmp_path / "fresh"
    r = subprocess.run(cmd[:-1] + [str(fresh)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    a, b = CapturedTeacherStore(str(store)), CapturedTeacherStore(str(fresh))
    for i in range(24):
        ra, rb = a._row(i), b._row(i)  # noqa: SLF001 -- the test compares raw records
        assert ra.tobytes() == rb.tobytes()


# -- DDP ----------------------------------------------------------------------------------------------------------
def _cli_process(rank: int, world: int, port: int, argv: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)
    code = main(argv)  # it ends the process group itself (close_process_group)
    if code != 0:
        raise SystemExit(code)


def launch_cli(world: int, argv: list[str]) -> None:
    """``brewkit ARGV`` in ``world`` spawned gloo processes; fails the test after 240 s."""
    spawn_and_wait(_cli_process, (world, free_port(), argv), world, timeout=240, what=argv[0])


@pytest.mark.slow
def test_capture_and_training_from_the_store_under_ddp_equal_live_ddp_training(lm, tmp_path):
    """Two gloo processes capture a shard each (data-rank0/1), then train from the store: the same student as two
    processes distilling from the live teacher (k = vocabulary, float32)."""
    live = lm_sgd_run(lm, tmp_path / "live", shuffle=True)
    live["data"]["batch_size"] = 4
    path = write(tmp_path / "live.yaml", live)
    launch_cli(2, ["capture", path, "--out", str(tmp_path / "store"), "--k", "1000", "--dtype", "float32"])
    assert (tmp_path / "store" / "data-rank1.bin").stat().st_size > 0
    assert sorted(set(index_entries(tmp_path / "store"))) == list(range(24))
    assert read_manifest(str(tmp_path / "store"))["complete"]
    launch_cli(2, ["train", path])
    launch_cli(2, ["train", write(tmp_path / "s.yaml", store_run(live, tmp_path / "store", tmp_path / "from"))])
    a, b = final_weights(tmp_path / "live"), final_weights(tmp_path / "from")
    for name, w in a.items():
        torch.testing.assert_close(b[name], w, rtol=0, atol=1e-5)


# -- sequence classification: the full logits ----------------------------------------------------------------------
def test_a_classification_store_holds_the_logits_and_trains_the_live_student(tmp_path):
    """One record of (C,) float32 logits per example; mse (which has no top-k form) and any temperature work,
    and the student equals the live-teacher one."""
    from helpers import make_cli_assets, run_dict

    assets = make_cli_assets(tmp_path)
    live = run_dict(assets, tmp_path / "live")
    live["distillation"] = {"temperature": 3, "kd_loss_type": "mse", "hard_label_weight": 1}
    live["data"]["eval_file"] = None
    live["evaluation"] = {"metric": "accuracy"}
    live["training"] = {**live["training"], "optimizer": {"name": "sgd", "lr": 0.5}}
    path = write(tmp_path / "live.yaml", live)
    summary = capture_cli(path, tmp_path / "store")
    m = read_manifest(str(tmp_path / "store"))
    assert summary["kind"] == "logits" and (m["classes"], m["dtype"], m["record_bytes"]) == (2, "float32", 8)
    assert os.path.getsize(tmp_path / "store" / "data-rank0.bin") == 8 * 32
    assert cli("train", path)[0] == 0
    code, _, err = cli("train", write(tmp_path / "s.yaml", store_run(live, tmp_path / "store", tmp_path / "from")))
    assert code == 0, err
    a, b = final_weights(tmp_path / "live"), final_weights(tmp_path / "from")
    for name, w in a.items():
        torch.testing.assert_close(b[name], w, rtol=0, atol=1e-6)
    code, _, err = cli("capture", path, "--out", tmp_path / "sampled", "--selection", "sampled")
    assert code == 2 and "teacher.capture.selection" in err and "nothing to sample" in err, err
    assert not (tmp_path / "sampled").exists()
