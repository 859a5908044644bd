"""Which optimizer steps get a checkpoint (TextBrewer's schedule, docs/textbrewer.md), the callback after each
save, ``save_total_limit`` pruning, and teacher caching in every distiller and mode (same losses as without)."""
import json
import os
import re

import pytest
import torch
from helpers import Toy, toy_adaptor, toy_batches

from brewkit import (
    BasicDistiller,
    BasicTrainer,
    DistillationConfig,
    GeneralDistiller,
    MultiTaskDistiller,
    MultiTeacherDistiller,
    TrainingConfig,
)
from brewkit.engine.plan import TrainPlan


def tcfg(out, **kw):
    kw.setdefault("device", "cpu")
    kw.setdefault("progress_bar", False)
    kw.setdefault("logging_steps", 1)
    return TrainingConfig(output_dir=str(out), **kw)


def saved_steps(out):
    """Global steps of the checkpoints in ``out`` (directory names ``checkpoint-{step}``)."""
    names = os.listdir(out) if os.path.isdir(out) else []
    return sorted(int(m.group(1)) for m in (re.fullmatch(r"checkpoint-(\d+)", n) for n in names) if m)


def losses(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f]


def textbrewer_epoch_schedule(n_batches, accum, num_epochs, ckpt_frequency, ckpt_epoch_frequency):
    """TextBrewer's checkpoint schedule (docs/textbrewer.md): cp = {floor(spe * c / f)}, save after step g of
    epoch e when (g mod spe) in cp and the epoch is eligible ((e+1) % ckpt_epoch_frequency == 0 or it is the
    last). brewkit steps on an epoch's short tail group, so spe = ceil(n_batches / accum) (equal to TextBrewer's
    floor when accum divides)."""
    spe = -(-n_batches // accum)
    cp = {spe * c // ckpt_frequency for c in range(ckpt_frequency)}
    out = []
    for e in range(num_epochs):
        eligible = (e + 1) % ckpt_epoch_frequency == 0 or e + 1 == num_epochs
        for i in range(1, spe + 1):
            g = e * spe + i
            if eligible and g % spe in cp:
                out.append(g)
    return out


def run_trainer(out, loader, callback=None, **train_kw):
    torch.manual_seed(0)
    tc_kw = {k: train_kw.pop(k) for k in list(train_kw) if k in {f for f in TrainingConfig.__dataclass_fields__}}
    model = Toy()
    trainer = BasicTrainer(tcfg(out, **tc_kw), model, toy_adaptor)
    trainer.train(torch.optim.SGD(model.parameters(), lr=0.01), loader, callback=callback, **train_kw)
    return trainer


# -- epoch mode ---------------------------------------------------------------------------------------------
EPOCH_CASES = [
    # n_batches, accum, epochs, ckpt_frequency, ckpt_epoch_frequency, expected (by hand)
    (6, 1, 3, 1, 1, [6, 12, 18]),
    (6, 1, 3, 2, 1, [3, 6, 9, 12, 15, 18]),
    (6, 1, 3, 3, 1, [2, 4, 6, 8, 10, 12, 14, 16, 18]),
    (6, 1, 3, 1, 2, [12, 18]),                     # epoch 2, and epoch 3 because it is the last
    (6, 1, 4, 1, 2, [12, 24]),
    (6, 1, 3, 2, 2, [9, 12, 15, 18]),
    (5, 1, 2, 2, 1, [2, 5, 7, 10]),                # cp = {0, floor(5/2)} = {0, 2}
    (5, 1, 2, 3, 1, [1, 3, 5, 6, 8, 10]),          # cp = {0, 1, 3}
    (6, 2, 2, 3, 1, [1, 2, 3, 4, 5, 6]),           # 3 optimizer steps per epoch
    (5, 2, 2, 2, 1, [1, 3, 4, 6]),                 # 3 steps per epoch (2 + 2 + a tail of 1); cp = {0, 1}
]


@pytest.mark.parametrize("n, accum, epochs, freq, epoch_freq, expected", EPOCH_CASES)
def test_epoch_mode_schedule(tmp_path, n, accum, epochs, freq, epoch_freq, expected):
    assert textbrewer_epoch_schedule(n, accum, epochs, freq, epoch_freq) == expected  # the hand lists agree
    calls = []

    def callback(*, model, step):  # keyword-only: TextBrewer calls callback(model=..., step=...)
        calls.append((step, saved_steps(tmp_path / "out")[-1], model.training))
        model.eval()  # the engine must put the student back in train mode

    trainer = run_trainer(tmp_path / "out", toy_batches(n), callback, num_epochs=epochs,
                          gradient_accumulation_steps=accum, ckpt_frequency=freq, ckpt_epoch_frequency=epoch_freq)
    assert saved_steps(tmp_path / "out") == expected
    assert [c[0] for c in calls] == expected
    assert all(step == latest for step, latest, _ in calls)  # the callback runs after its checkpoint exists
    assert trainer.model_S.training


def plan_steps(plan, predicate):
    return [g for g in range(1, plan.total_steps + 1) if predicate(g)]


@pytest.mark.parametrize("n, accum, epochs, freq, epoch_freq, expected", EPOCH_CASES)
def test_the_pure_plan_has_the_epoch_schedule(n, accum, epochs, freq, epoch_freq, expected):
    config = TrainingConfig(device="cpu", gradient_accumulation_steps=accum, ckpt_frequency=freq,
                            ckpt_epoch_frequency=epoch_freq, logging_steps=4)
    plan = TrainPlan.build(config, num_batches=n, num_epochs=epochs)
    assert plan.steps_per_epoch == -(-n // accum) and plan.total_steps == plan.steps_per_epoch * epochs
    assert plan_steps(plan, plan.is_checkpoint_step) == expected
    assert plan_steps(plan, plan.is_callback_step) == expected  # the callback follows the checkpoints
    assert plan_steps(plan, plan.is_logging_step) == sorted({g for g in range(4, plan.total_steps + 1, 4)}
                                                            | {plan.total_steps})
    assert plan.state_dict() == {"total_steps": plan.total_steps, "steps_per_epoch": plan.steps_per_epoch,
                                 "num_epochs": epochs}


@pytest.mark.parametrize("num_steps, ckpt_steps, callback_steps, saves, calls", [
    (7, 3, None, [3, 6, 7], [3, 6, 7]),
    (7, None, None, [7], [7]),
    (7, None, 3, [7], [3, 6, 7]),
    (6, 2, 3, [2, 4, 6], [3, 6]),
])
def test_the_pure_plan_has_the_step_schedule(num_steps, ckpt_steps, callback_steps, saves, calls):
    config = TrainingConfig(device="cpu", ckpt_steps=ckpt_steps, callback_steps=callback_steps, ckpt_frequency=3)
    plan = TrainPlan.build(config, num_batches=None, num_steps=num_steps)
    assert plan.steps_per_epoch is None and plan.total_steps == num_steps
    assert plan_steps(plan, plan.is_checkpoint_step) == saves
    assert plan_steps(plan, plan.is_callback_step) == calls


def test_the_pure_plan_checks_finiteness_on_cpu_always_elsewhere_on_logging_and_checkpoint_steps():
    plan = TrainPlan.build(TrainingConfig(device="cpu", logging_steps=5, ckpt_steps=4), None, num_steps=12)
    assert plan_steps(plan, lambda g: plan.checks_finite(g, "cpu")) == list(range(1, 13))
    assert plan_steps(plan, lambda g: plan.checks_finite(g, "cuda")) == [4, 5, 8, 10, 12]


@pytest.mark.parametrize("kw, path, text", [
    ({"num_epochs": 2.5}, "num_epochs", "2.5"),
    ({"num_epochs": 0}, "num_epochs", "positive integer"),
    ({"num_steps": True}, "num_steps", "True"),
    ({}, "train", "num_epochs or num_steps"),
    ({"num_epochs": 1, "num_batches": 0}, "train", "empty"),
    ({"num_epochs": 1, "num_batches": None}, "train", "__len__"),
])
def test_the_pure_plan_refuses_bad_lengths(kw, path, text):
    from brewkit.errors import ConfigError

    kw = {"num_batches": 3, **kw}
    with pytest.raises(ConfigError) as e:
        TrainPlan.build(TrainingConfig(device="cpu"), **kw)
    assert e.value.path == path and text in str(e.value)


def test_an_integral_float_num_epochs_is_accepted_as_textbrewer_scripts_pass_it():
    plan = TrainPlan.build(TrainingConfig(device="cpu"), num_batches=3, num_epochs=2.0)
    assert plan.num_epochs == 2 and isinstance(plan.num_epochs, int) and plan.total_steps == 6


def test_callback_gets_the_student_and_it_trains_again_after(tmp_path):
    model_modes, calls = [], []
    torch.manual_seed(0)
    model = Toy(dropout=0.5)

    def adaptor(batch, out):
        model_modes.append(model.training)
        return toy_adaptor(batch, out)

    def callback(model, step):
        calls.append((model, step))
        model.eval()

    trainer = BasicTrainer(tcfg(tmp_path / "out", ckpt_steps=2), model, adaptor)
    trainer.train(torch.optim.SGD(model.parameters(), lr=0.01), toy_batches(3), num_steps=5, callback=callback)
    assert [s for _, s in calls] == [2, 4, 5]
    assert all(m is model for m, _ in calls)
    assert model_modes == [True] * 5


def test_ckpt_steps_in_epoch_mode_replaces_the_epoch_schedule(tmp_path):
    """brewkit 0.1 (like TextBrewer) ignored ckpt_steps in epoch mode without a word; now it checkpoints every
    ckpt_steps optimizer steps and at the end (6 batches x 3 epochs = 18 steps)."""
    steps = []
    run_trainer(tmp_path / "out", toy_batches(6), lambda model, step: steps.append(step), num_epochs=3,
                ckpt_steps=4, ckpt_frequency=2)
    assert saved_steps(tmp_path / "out") == [4, 8, 12, 16, 18]
    assert steps == [4, 8, 12, 16, 18]


# -- step mode ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_steps, ckpt_steps, expected", [
    (7, 3, [3, 6, 7]),
    (6, 3, [3, 6]),
    (7, 7, [7]),
    (7, None, [7]),      # TextBrewer: TypeError from int(None); brewkit saves at the end
    (3, 10, [3]),
    (5, 1, [1, 2, 3, 4, 5]),
])
def test_step_mode_schedule(tmp_path, num_steps, ckpt_steps, expected):
    steps = []
    run_trainer(tmp_path / "out", toy_batches(2), lambda model, step: steps.append(step), num_steps=num_steps,
                ckpt_steps=ckpt_steps, ckpt_frequency=3, ckpt_epoch_frequency=2)  # epoch settings are ignored
    assert saved_steps(tmp_path / "out") == expected
    assert steps == expected


@pytest.mark.parametrize("num_steps, ckpt_steps, callback_steps, expected_calls, expected_saves", [
    (7, None, 3, [3, 6, 7], [7]),          # the callback every 3 steps and at the end; one checkpoint, at the end
    (6, 2, 3, [3, 6], [2, 4, 6]),          # independent of the checkpoints
    (5, 1, 10, [5], [1, 2, 3, 4, 5]),
    (4, None, 1, [1, 2, 3, 4], [4]),
])
def test_callback_steps_decouple_the_callback_from_checkpoints(tmp_path, num_steps, ckpt_steps, callback_steps,
                                                               expected_calls, expected_saves):
    calls = []
    run_trainer(tmp_path / "out", toy_batches(2), lambda model, step: calls.append(step), num_steps=num_steps,
                ckpt_steps=ckpt_steps, callback_steps=callback_steps)
    assert calls == expected_calls
    assert saved_steps(tmp_path / "out") == expected_saves


def test_callback_steps_in_epoch_mode(tmp_path):
    calls = []
    run_trainer(tmp_path / "out", toy_batches(4), lambda model, step: calls.append(step), num_epochs=2,
                callback_steps=3)  # 4 steps per epoch, checkpoints at 4 and 8
    assert calls == [3, 6, 8]
    assert saved_steps(tmp_path / "out") == [4, 8]


def test_early_stopping_from_a_callback_between_checkpoints_keeps_that_step(tmp_path):
    """A callback that asks to stop at a step with no checkpoint: the engine writes one there and ends."""
    holder = {}

    def callback(model, step):
        if step == 3:
            holder["trainer"].request_stop()

    torch.manual_seed(0)
    model = Toy()
    trainer = holder["trainer"] = BasicTrainer(tcfg(tmp_path / "out", ckpt_steps=4, callback_steps=1), model,
                                               toy_adaptor)
    trainer.train(torch.optim.SGD(model.parameters(), lr=0.01), toy_batches(2), num_steps=10, callback=callback)
    assert trainer.interrupted and trainer.global_step == 3
    assert saved_steps(tmp_path / "out") == [3]
    assert len(losses(tmp_path / "out")) == 3


@pytest.mark.parametrize("num_steps, ckpt_steps, expected", [(3, 5, [3]), (10, 4, [4, 8, 10]), (4, 2, [2, 4])])
def test_multi_task_schedule(tmp_path, num_steps, ckpt_steps, expected):
    """TextBrewer's MultiTaskDistiller raised IndexError when num_steps < ckpt_steps."""
    torch.manual_seed(0)
    student, steps = Toy(), []
    d = MultiTaskDistiller(tcfg(tmp_path / "out", ckpt_steps=ckpt_steps), DistillationConfig(),
                           {"a": Toy(), "b": Toy()}, student, {"a": toy_adaptor, "b": toy_adaptor},
                           {"a": toy_adaptor, "b": toy_adaptor})
    d.train(torch.optim.SGD(student.parameters(), lr=0.01), {"a": toy_batches(2), "b": toy_batches(3, seed=1)},
            num_steps=num_steps, callback=lambda model, step: steps.append(step))
    assert saved_steps(tmp_path / "out") == expected
    assert steps == expected


def test_checkpoint_holds_the_student_of_that_step(tmp_path):
    from safetensors.torch import load_file

    snapshots = {}

    def callback(model, step):
        snapshots[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    run_trainer(tmp_path / "out", toy_batches(3), callback, num_steps=4, ckpt_steps=2)
    for step in (2, 4):
        saved = load_file(str(tmp_path / "out" / f"checkpoint-{step}" / "model.safetensors"))
        assert saved.keys() == snapshots[step].keys()
        for k, v in saved.items():
            assert torch.equal(v, snapshots[step][k]), (step, k)
    assert not torch.equal(snapshots[2]["head.weight"], snapshots[4]["head.weight"])


# -- pruning ------------------------------------------------------------------------------------------------
def test_save_total_limit_keeps_the_newest(tmp_path):
    seen = []
    run_trainer(tmp_path / "out", toy_batches(6), lambda model, step: seen.append(saved_steps(tmp_path / "out")),
                num_epochs=2, ckpt_frequency=3, save_total_limit=2)
    assert saved_steps(tmp_path / "out") == [10, 12]
    # pruned as it goes: at each callback only the two newest exist
    assert seen == [[2], [2, 4], [4, 6], [6, 8], [8, 10], [10, 12]]


def test_save_total_limit_one_in_step_mode(tmp_path):
    run_trainer(tmp_path / "out", toy_batches(2), num_steps=5, ckpt_steps=2, save_total_limit=1)
    assert saved_steps(tmp_path / "out") == [5]


# -- caching teacher outputs ----------------------------------------------------------------------------------
class CountingToy(Toy):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = 0

    def forward(self, *a, **kw):
        self.calls += 1
        return super().forward(*a, **kw)


def cached_vs_plain(tmp_path, build, train, cache_calls):
    """Run ``build(cache) -> (distiller, teachers)`` + ``train`` with and without caching; compare losses."""
    results = {}
    for cache in (False, True):
        out = tmp_path / ("cached" if cache else "plain")
        torch.manual_seed(0)
        d, teachers = build(cache, out)
        train(d, torch.optim.SGD(d.model_S.parameters(), lr=0.1))
        results[cache] = (losses(out), sum(t.calls for t in teachers),
                          [p.detach().clone() for p in d.model_S.parameters()])
    (plain, plain_calls, p_params), (cached, cached_calls, c_params) = results[False], results[True]
    assert len(cached) == len(plain)
    assert cached == pytest.approx(plain, rel=1e-6, abs=1e-7)
    for a, b in zip(p_params, c_params):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert cached_calls == cache_calls and plain_calls > cached_calls


def test_caching_basic_distiller_step_mode(tmp_path):
    """Step mode cycles over the cache (TextBrewer asserted caching was epoch-only)."""
    def build(cache, out):
        teacher = CountingToy()
        dc = DistillationConfig(is_caching_logits=cache, hard_label_weight=0.5, temperature=2)
        return BasicDistiller(tcfg(out), dc, teacher, Toy(), toy_adaptor, toy_adaptor), [teacher]

    # 4 batches, 10 steps: the teacher runs once per batch (4 calls) instead of once per step (10)
    cached_vs_plain(tmp_path, build, lambda d, opt: d.train(opt, toy_batches(4), num_steps=10), cache_calls=4)


def test_caching_basic_distiller_epoch_mode_with_accumulation(tmp_path):
    def build(cache, out):
        teacher = CountingToy()
        dc = DistillationConfig(is_caching_logits=cache, kd_loss_weight_scheduler="linear_decay")
        return BasicDistiller(tcfg(out, gradient_accumulation_steps=2), dc, teacher, Toy(), toy_adaptor,
                              toy_adaptor), [teacher]

    cached_vs_plain(tmp_path, build, lambda d, opt: d.train(opt, toy_batches(5), num_epochs=3), cache_calls=5)


@pytest.mark.parametrize("mode", ["epochs", "steps"])
def test_caching_multi_teacher(tmp_path, mode):
    def build(cache, out):
        teachers = [CountingToy(), CountingToy()]
        dc = DistillationConfig(is_caching_logits=cache, temperature=2, teacher_weights=[2, 1])
        return MultiTeacherDistiller(tcfg(out), dc, teachers, Toy(), toy_adaptor, toy_adaptor), teachers

    def train(d, opt):
        loader = torch.utils.data.DataLoader(ToyData(), batch_size=4, shuffle=False)
        if mode == "epochs":
            d.train(opt, loader, num_epochs=3)
        else:
            d.train(opt, loader, num_steps=7)

    cached_vs_plain(tmp_path, build, train, cache_calls=2 * 3)  # 2 teachers x 3 batches


def test_caching_multi_task(tmp_path):
    def build(cache, out):
        teachers = {"a": CountingToy(), "b": CountingToy()}
        dc = DistillationConfig(is_caching_logits=cache, hard_label_weight=1.0)
        d = MultiTaskDistiller(tcfg(out, ckpt_steps=4), dc, teachers, Toy(), {"a": toy_adaptor, "b": toy_adaptor},
                               {"a": toy_adaptor, "b": toy_adaptor})
        return d, list(teachers.values())

    def train(d, opt):
        d.train(opt, {"a": toy_batches(3, seed=1), "b": toy_batches(2, seed=2)}, num_steps=12)

    cached_vs_plain(tmp_path, build, train, cache_calls=3 + 2)


def test_caching_general_distiller_with_matches_step_mode(tmp_path):
    def build(cache, out):
        teacher = CountingToy(d_h=8, n_layers=3)
        dc = DistillationConfig(is_caching_logits=cache, intermediate_matches=[
            {"layer_T": 3, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1.0,
             "proj": ["linear", 6, 8]}])
        return GeneralDistiller(tcfg(out), dc, teacher, Toy(d_h=6), toy_adaptor, toy_adaptor), [teacher]

    cached_vs_plain(tmp_path, build, lambda d, opt: d.train(opt, toy_batches(3), num_steps=7), cache_calls=3)


class ToyData(torch.utils.data.Dataset):
    def __init__(self, n=12):
        self.batches = toy_batches(n, batch_size=1, seed=5)

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        return {k: v[0] for k, v in self.batches[i].items()}
