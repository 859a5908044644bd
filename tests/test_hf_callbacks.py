"""transformers.TrainerCallback objects in train(callbacks=...): the events and their order, args/state/control,
the control flags (stop, save, evaluate, log), EarlyStoppingCallback with its exact resume, transformers' own
TensorBoardCallback, bad items, and the stop agreed by every process under DDP."""
import json
import os

import pytest
import torch
from helpers import Toy, ToyDataset, free_port, spawn_and_wait, toy_adaptor
from transformers import EarlyStoppingCallback, TrainerCallback

from brewkit import DistillationConfig, GeneralDistiller, TrainingConfig
from brewkit.engine.hf_callbacks import EVENTS, TRAINING_STOP, HFCallbacks
from brewkit.errors import ConfigError


class Recorder(TrainerCallback):
    """Writes down ``(event, state.global_step, what came with it)`` for every event."""

    def __init__(self):
        self.events = []
        self.seen = {}

    def __getattribute__(self, name):
        if name in EVENTS:
            def record(args, state, control, **kw):
                extra = kw.get("logs", kw.get("metrics"))
                self.events.append((name, state.global_step, dict(extra) if extra is not None else None))
                self.seen[name] = (args, state, kw)
            return record
        return super().__getattribute__(name)


def distiller(out, **tc):
    torch.manual_seed(0)
    teacher, student = Toy(d_h=8, n_layers=3), Toy()
    dc = DistillationConfig(temperature=2, hard_label_weight=1.0)
    config = TrainingConfig(output_dir=str(out), device="cpu", progress_bar=False,
                            **{"seed": 0, "logging_steps": 1, **tc})
    return GeneralDistiller(config, dc, teacher, student, toy_adaptor, toy_adaptor)


def loader():
    return torch.utils.data.DataLoader(ToyDataset(24), batch_size=4, shuffle=False)  # 6 batches


def evaluator(d, values):
    """The evaluation ``train()`` runs: it reports ``values[step]`` as eval_accuracy through log_metrics."""
    def callback(model, step):
        d.log_metrics({"eval_accuracy": values[step]}, step)
    return callback


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_events_come_in_the_loops_order_with_args_state_and_logs(tmp_path):
    d = distiller(tmp_path, ckpt_steps=2, callback_steps=2)
    rec = Recorder()
    opt = torch.optim.SGD(d.model_S.parameters(), lr=0.1)
    d.train(opt, loader(), num_steps=4, callback=evaluator(d, {2: 0.25, 4: 0.5}), callbacks=[rec])
    names = [(e, s) for e, s, _ in rec.events]
    assert names == [("on_train_begin", 0),
                     ("on_step_end", 1), ("on_log", 1),
                     ("on_step_end", 2), ("on_log", 2), ("on_save", 2), ("on_log", 2), ("on_evaluate", 2),
                     ("on_step_end", 3), ("on_log", 3),
                     ("on_step_end", 4), ("on_log", 4), ("on_save", 4), ("on_log", 4), ("on_evaluate", 4),
                     ("on_train_end", 4)]
    records = metrics(tmp_path)
    logs = [x for e, _, x in rec.events if e == "on_log"]
    for logged, record in zip(logs, records):  # transformers' spelling of each record, without its step
        expected = {("learning_rate" if k == "lr" else k): v for k, v in record.items() if k not in ("step", "epoch")}
        assert logged == {**expected, "epoch": record["step"] / 6}  # 6 batches: step 3 is half an epoch
    assert [x for e, _, x in rec.events if e == "on_evaluate"] == [{"eval_accuracy": 0.25}, {"eval_accuracy": 0.5}]
    args, state, kw = rec.seen["on_train_end"]
    assert (args.output_dir, args.max_steps, args.logging_steps, args.eval_steps, args.save_steps) == \
        (str(tmp_path), 4, 1, 2, 2)
    assert args.eval_strategy == "steps" and args.learning_rate == 0.1 and json.loads(args.to_json_string())
    assert (state.max_steps, state.global_step, state.is_world_process_zero) == (4, 4, True)
    assert len(state.log_history) == len(records) == 6 and state.log_history[-1] == {"step": 4, "eval_accuracy": 0.5,
                                                                                     "epoch": 4 / 6}
    assert kw["model"] is d.model_S and kw["optimizer"] is opt


class Steer(TrainerCallback):
    """Sets control flags at chosen steps: ``{step: [flag, ...]}``."""

    def __init__(self, plan, rank=None):
        self.plan, self.rank = plan, rank

    def on_step_end(self, args, state, control, **kw):
        if self.rank is None or self.rank == args.process_index:
            for flag in self.plan.get(state.global_step, []):
                setattr(control, flag, True)


def test_control_flags_save_evaluate_log_and_stop_at_the_step_they_are_set(tmp_path):
    d = distiller(tmp_path, logging_steps=100)  # step mode: a checkpoint and a record only at the end
    evaluated = []

    def callback(model, step):
        evaluated.append(step)

    steer = Steer({2: ["should_save", "should_evaluate"], 3: ["should_log"], 5: ["should_training_stop"]})
    d.train(torch.optim.SGD(d.model_S.parameters(), lr=0.1), loader(), num_steps=8, callback=callback,
            callbacks=[steer])
    assert d.global_step == 5 and d.interrupted
    assert d.stop_reason == f"{TRAINING_STOP} (Steer.on_step_end at step 5)"
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-5"]
    assert evaluated == [2]  # should_evaluate at 2; the stop at 5 checkpoints without evaluating
    assert [r["step"] for r in metrics(tmp_path)] == [3]


def test_a_callback_class_is_instantiated_and_a_wrong_item_is_an_error_before_anything_runs(tmp_path):
    class Counter(TrainerCallback):
        made = []

        def __init__(self):
            Counter.made.append(self)

        def on_step_end(self, args, state, control, **kw):
            self.steps = state.global_step

    d = distiller(tmp_path)
    d.train(torch.optim.SGD(d.model_S.parameters(), lr=0.1), loader(), num_steps=2, callbacks=[Counter])
    assert len(Counter.made) == 1 and Counter.made[0].steps == 2
    for bad, path in (([object()], "callbacks[0]"), ([Recorder(), print], "callbacks[1]"), ("x", "callbacks"),
                      (HFCallbacks([], metric_for_best_model=3), "callbacks.metric_for_best_model")):
        out = tmp_path / f"bad{path}"
        d = distiller(out)
        with pytest.raises(ConfigError) as e:
            d.train(torch.optim.SGD(d.model_S.parameters(), lr=0.1), loader(), num_steps=2, callbacks=bad)
        assert e.value.path == path
        assert not out.exists()  # refused before the run was set up


VALUES = {1: 0.5, 2: 0.6, 3: 0.6, 4: 0.55, 5: 0.9, 6: 0.9, 7: 0.9, 8: 0.9}


def early_stopping_run(out, *, crash_at=None, resume=False, threshold=0.0):
    d = distiller(out, ckpt_steps=1, callback_steps=1, resume_from_checkpoint=resume or None)
    cbs = [EarlyStoppingCallback(early_stopping_patience=2, early_stopping_threshold=threshold)]
    if crash_at is not None:
        class Crash(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step == crash_at:
                    raise SystemExit(0)  # killed after the optimizer step, before anything of it is saved
        cbs.append(Crash())
    try:
        d.train(torch.optim.SGD(d.model_S.parameters(), lr=0.1), loader(), num_steps=8,
                callback=evaluator(d, VALUES), callbacks=HFCallbacks(cbs, metric_for_best_model="accuracy"))
    except SystemExit:
        pass
    return d


def test_early_stopping_callback_stops_after_patience_evaluations_without_improvement(tmp_path):
    # 0.5 (best), 0.6 (better, best), 0.6 (not better: 1), 0.55 (2 = patience): stop at step 4
    d = early_stopping_run(tmp_path)
    assert d.global_step == 4 and d.stop_reason.startswith(f"{TRAINING_STOP} (EarlyStoppingCallback.on_evaluate")
    state = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())
    assert (state["best_metric"], state["best_global_step"]) == (0.6, 2)
    assert state["best_model_checkpoint"] == str(tmp_path / "checkpoint-2")
    assert state["stateful_callbacks"]["EarlyStoppingCallback"]["attributes"] == {"early_stopping_patience_counter": 2}
    # with a threshold, 0.6 over 0.5 is no improvement either: 1 at step 2, 2 at step 3
    assert early_stopping_run(tmp_path / "threshold", threshold=0.15).global_step == 3


def test_early_stopping_resumes_exactly_with_its_counter_and_best_metric(tmp_path):
    full = early_stopping_run(tmp_path / "full")
    early_stopping_run(tmp_path / "part", crash_at=4)  # checkpoint-3: best 0.6 at step 2, counter 1
    state = json.loads((tmp_path / "part" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["stateful_callbacks"]["EarlyStoppingCallback"]["attributes"] == {"early_stopping_patience_counter": 1}
    resumed = early_stopping_run(tmp_path / "part", resume=True)
    assert resumed.global_step == full.global_step == 4  # a fresh counter would not stop before step 6
    for a, b in zip(full.model_S.parameters(), resumed.model_S.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    state = json.loads((tmp_path / "part" / "checkpoint-4" / "trainer_state.json").read_text())
    assert [r["step"] for r in state["log_history"]] == [1, 1, 2, 2, 3, 3, 4, 4]  # each step once, across the resume


def test_transformers_tensorboard_callback_logs_brewkits_records(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers.integrations import TensorBoardCallback

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "hf_tb"))
    d = distiller(tmp_path / "out", callback_steps=2)
    d.train(torch.optim.SGD(d.model_S.parameters(), lr=0.1), loader(), num_steps=4,
            callback=evaluator(d, {2: 0.25, 4: 0.5}), callbacks=[TensorBoardCallback()])
    events = EventAccumulator(str(tmp_path / "hf_tb"))
    events.Reload()
    records = metrics(tmp_path / "out")
    train = [r for r in records if "loss" in r]
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == \
        [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in train]
    assert [e.value for e in events.Scalars("train/learning_rate")] == [pytest.approx(r["lr"]) for r in train]
    assert [(e.step, e.value) for e in events.Scalars("eval/accuracy")] == [(2, 0.25), (4, 0.5)]


# -- DDP ----------------------------------------------------------------------------------------------------------
def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    d = distiller(out, logging_steps=100)
    # only rank 1 asks: a checkpoint at step 2 (collective: rank 0 writes it) and a stop at step 3
    steer = Steer({2: ["should_save"], 3: ["should_training_stop"]}, rank=1)
    d.train(torch.optim.SGD(d.model_S.parameters(), lr=0.1), loader(), num_steps=8, callbacks=[steer])
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"step": d.global_step, "reason": d.stop_reason}, f)


@pytest.mark.slow
def test_under_ddp_one_ranks_control_flags_are_every_ranks(tmp_path):
    # a flag one rank acted on alone would hang the other in a collective: a timeout
    spawn_and_wait(_ddp_worker, (2, free_port(), str(tmp_path)), 2, what="the DDP run")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["step"] for r in ranks] == [3, 3]
    assert ranks[1]["reason"].startswith(TRAINING_STOP) and ranks[0]["reason"] == "another process"
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
