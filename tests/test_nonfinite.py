"""Numerical faults: NaN / inf injected into a loss term or a gradient at step 3 of a short run.

Required behaviour (the issue): without ``skip_nonfinite_steps`` the run stops with ``NonFiniteLossError``
naming the loss term and the step, and the last good checkpoint stays intact; with
``skip_nonfinite_steps=True`` the step is skipped (weights and optimizer state unchanged by it) and the
skips are counted in ``metrics.jsonl``. A NaN gradient behind a finite loss and a NaN loss behind a finite
gradient are both caught, on logging steps and on the others.
"""
import json
import math
import os

import pytest
import torch
from helpers import Toy, toy_adaptor, toy_batches
from safetensors.torch import load_file

from brewkit import DistillationConfig, GeneralDistiller, TrainingConfig
from brewkit.checkpoint import latest_checkpoint, list_checkpoints
from brewkit.errors import NonFiniteLossError
from brewkit.presets import MATCH_LOSS_MAP

BAD_STEP, NUM_STEPS = 3, 5
VALUES = pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])


class Run:
    """A 5-step GeneralDistiller run on Toy models with a checkpoint after every step.

    ``snapshots[g]`` holds the trainable parameters after step g (``snapshots[0]``: before training).
    """

    def __init__(self, out, skip=False, adaptor_S=toy_adaptor, match_loss="hidden_mse", logging_steps=1):
        torch.manual_seed(0)
        self.out, self.logging_steps = str(out), logging_steps
        self.teacher, self.student = Toy(d_h=8, n_layers=3), Toy(d_h=6)
        dc = DistillationConfig(temperature=2, hard_label_weight=0.5, intermediate_matches=[
            {"layer_T": 3, "layer_S": 2, "feature": "hidden", "loss": match_loss, "weight": 1.0,
             "proj": ["linear", 6, 8]}])
        tc = TrainingConfig(output_dir=self.out, device="cpu", logging_steps=logging_steps, progress_bar=False,
                            ckpt_steps=1, skip_nonfinite_steps=skip)
        self.distiller = GeneralDistiller(tc, dc, self.teacher, self.student, toy_adaptor, adaptor_S)
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=0.05)
        self.snapshots = {0: self.params()}

    def params(self):
        return [p.detach().clone() for p in self.distiller.trainable_parameters()]

    def train(self):
        def callback(model, step):
            self.snapshots[step] = self.params()

        self.distiller.train(self.optimizer, toy_batches(4), num_steps=NUM_STEPS, callback=callback)

    def metrics(self):
        path = os.path.join(self.out, "metrics.jsonl")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(line) for line in f]


def _equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _finite(params):
    return all(torch.isfinite(p).all() for p in params)


def bad_logits_adaptor(bad):
    """A student adaptor whose logits become ``bad`` at step BAD_STEP (the KD term turns non-finite)."""
    calls = [0]

    def adaptor(batch, out):
        calls[0] += 1
        results = toy_adaptor(batch, out)
        if calls[0] == BAD_STEP:
            results["logits"] = results["logits"] + bad
        return results

    return adaptor


@pytest.fixture
def bad_match_loss(request):
    """A registered match loss (hidden MSE) that returns ``bad`` on its BAD_STEP-th call."""
    bad, name, calls = request.param, "test_nonfinite_at_step", [0]

    def loss(feature_S, feature_T, mask=None):
        calls[0] += 1
        value = ((feature_S - feature_T) ** 2).mean()
        return value + bad if calls[0] == BAD_STEP else value

    MATCH_LOSS_MAP.register(name, overwrite=True)(loss)
    yield name
    del MATCH_LOSS_MAP[name]


def break_gradient(run, bad):
    """Make the gradient of the student's head weight ``bad`` in the backward pass of step BAD_STEP."""
    calls = [0]

    def hook(grad):
        calls[0] += 1
        return torch.full_like(grad, bad) if calls[0] == BAD_STEP else grad

    run.student.head.weight.register_hook(hook)


def assert_stopped_at_bad_step_with_good_checkpoint(run, error):
    message = str(error.value)
    assert f"step {BAD_STEP}" in message, message
    # the last good checkpoint is the one before the bad step, intact and equal to the weights of that step
    latest = latest_checkpoint(run.out)
    assert latest == os.path.join(run.out, f"checkpoint-{BAD_STEP - 1}")
    assert [s for s, _ in list_checkpoints(run.out)] == list(range(1, BAD_STEP))
    assert not [n for n in os.listdir(run.out) if n.startswith(".tmp-")]
    saved = load_file(os.path.join(latest, "model.safetensors"))
    good = run.snapshots[BAD_STEP - 1]
    assert _finite(saved.values())
    assert _equal([saved[k] for k, _ in run.student.named_parameters()], good[:len(saved)])
    # the bad step changed nothing, and no metrics were logged for it
    assert _equal(run.params(), good)
    assert [r["step"] for r in run.metrics()] == [g for g in range(1, BAD_STEP) if g % run.logging_steps == 0]


def assert_step_skipped(run):
    assert run.distiller.global_step == NUM_STEPS
    snaps = run.snapshots
    assert _equal(snaps[BAD_STEP], snaps[BAD_STEP - 1])  # the skipped step left the weights alone
    for g in range(1, NUM_STEPS + 1):
        assert _finite(snaps[g])
        if g != BAD_STEP:
            assert not _equal(snaps[g], snaps[g - 1]), f"step {g} should have updated the weights"
    # AdamW counted only the applied steps (the skipped one never reached the optimizer)
    for p in run.student.parameters():
        assert int(run.optimizer.state[p]["step"]) == NUM_STEPS - 1
    records = run.metrics()
    assert [r["step"] for r in records] == list(range(1, NUM_STEPS + 1))
    skipped = [r.get("skipped_steps", 0) for r in records]
    # counted from the bad step on (a running total or a per-interval count are both fine)
    assert skipped[:BAD_STEP - 1] == [0] * (BAD_STEP - 1) and skipped[BAD_STEP - 1] == 1
    assert set(skipped[BAD_STEP:]) <= {0, 1}


# -- a non-finite loss -------------------------------------------------------------------------------------
@VALUES
def test_nonfinite_kd_term_stops_the_run_naming_term_and_step(tmp_path, bad):
    run = Run(tmp_path / "out", adaptor_S=bad_logits_adaptor(bad))
    with pytest.raises(NonFiniteLossError) as error:
        run.train()
    assert "unweighted_kd_loss" in str(error.value)
    assert "hard_label" not in str(error.value) and "hidden" not in str(error.value)  # finite terms not blamed
    assert_stopped_at_bad_step_with_good_checkpoint(run, error)


@pytest.mark.parametrize("bad_match_loss", [math.nan, math.inf], ids=["nan", "inf"], indirect=True)
def test_nonfinite_registered_match_loss_is_named(tmp_path, bad_match_loss):
    run = Run(tmp_path / "out", match_loss=bad_match_loss)
    with pytest.raises(NonFiniteLossError) as error:
        run.train()
    assert f"unweighted_hidden_{bad_match_loss}_2_3" in str(error.value)
    assert "kd_loss" not in str(error.value)
    assert_stopped_at_bad_step_with_good_checkpoint(run, error)


@VALUES
def test_nonfinite_loss_step_is_skipped_when_asked(tmp_path, bad):
    run = Run(tmp_path / "out", skip=True, adaptor_S=bad_logits_adaptor(bad))
    run.train()
    assert_step_skipped(run)


@pytest.mark.parametrize("bad_match_loss", [math.nan, math.inf], ids=["nan", "inf"], indirect=True)
def test_nonfinite_loss_with_finite_gradient_is_skipped_when_asked(tmp_path, bad_match_loss):
    run = Run(tmp_path / "out", skip=True, match_loss=bad_match_loss)
    run.train()
    assert_step_skipped(run)


# -- a non-finite gradient ---------------------------------------------------------------------------------


@pytest.mark.parametrize("logging_steps", [1, 4],
                         ids=["bad_step_is_logged", "bad_step_not_logged"])
@VALUES
def test_nonfinite_gradient_stops_the_run_before_the_update(tmp_path, bad, logging_steps):
    run = Run(tmp_path / "out", logging_steps=logging_steps)
    break_gradient(run, bad)
    with pytest.raises(NonFiniteLossError) as error:
        run.train()
    assert "grad" in str(error.value).lower()
    assert_stopped_at_bad_step_with_good_checkpoint(run, error)


@VALUES
def test_nonfinite_gradient_step_is_skipped_and_counted(tmp_path, bad):
    run = Run(tmp_path / "out", skip=True)
    break_gradient(run, bad)
    run.train()
    assert_step_skipped(run)
