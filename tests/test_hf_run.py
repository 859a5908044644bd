"""One YAML run in transformers.TrainingArguments names, read back: its TensorBoard events (every record's
scalars), each checkpoint's trainer_state.json (transformers' keys, log_history), the model card in final/, and
early stopping from the run file (evaluation.early_stopping_patience)."""
import json
import os
from types import SimpleNamespace

import pytest
import torch
import yaml
from helpers import run_dict, tiny_bert, write_run

from brewkit.build import build
from brewkit.engine.step_logger import MetricsWriter
from brewkit.errors import ConfigError
from brewkit.model_card import model_card
from brewkit.run import train_run, validate_run
from brewkit.runfile import load_run

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

STEPS_PER_EPOCH = 4  # 32 training rows, 8 per batch


def hf_training(d: dict) -> dict:
    """The helpers' run with its training section in transformers' names."""
    del d["training"]["optimizer"], d["training"]["lr_scheduler"], d["training"]["num_epochs"]
    del d["data"]["batch_size"]
    d["training"].update(num_train_epochs=3, learning_rate=1e-3, warmup_ratio=0.25, lr_scheduler_type="cosine",
                         per_device_train_batch_size=8, save_steps=2, eval_steps=2, report_to=["tensorboard"],
                         logging_steps=1, optim="adamw_torch")
    return d


@pytest.fixture(scope="module")
def hf_run(assets, tmp_path_factory):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("hf_run")
    teacher = root / "teacher"  # a teacher given by a path: the model card's base_model
    tiny_bert(num_layers=4, hidden=16, heads=2, vocab=64).save_pretrained(teacher)
    AutoTokenizer.from_pretrained(assets.tokenizer).save_pretrained(teacher)
    d = hf_training(run_dict(assets, root / "out"))
    d["teacher"] = {"path": str(teacher)}
    # no accuracy in [0, 1] improves by more than 0.99: the counter rises at the 2nd and 3rd evaluation -> stop at 6
    d["evaluation"].update(early_stopping_patience=2, early_stopping_threshold=0.99)
    summary = train_run(load_run(write_run(root / "run.yaml", d)))
    out = root / "out"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return SimpleNamespace(root=root, out=out, summary=summary, teacher=str(teacher), records=records)


def test_early_stopping_from_the_run_file_stops_at_the_patience_and_finishes_the_run(hf_run):
    s = hf_run.summary
    assert s["steps"] == 6 and "interrupted" not in s  # 12 steps planned; evaluations at 2, 4, 6
    assert s["early_stopped"].startswith("should_training_stop (EarlyStoppingCallback.on_evaluate at step 6")
    assert [h["step"] for h in s["eval_history"]] == [2, 4, 6]
    assert os.path.isfile(hf_run.out / "final" / "model.safetensors")
    assert s["eval_accuracy"] == s["eval_history"][-1]["eval_accuracy"]
    assert sorted(p.name for p in hf_run.out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]


def test_tensorboard_holds_every_scalar_of_every_record(hf_run):
    events = EventAccumulator(str(hf_run.out / "runs"), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for needed in ("loss", "lr", "grad_norm", "samples_per_s", "unweighted_kd_loss", "unweighted_hard_label_loss",
                   "unweighted_hidden_hidden_mse_1_2", "unweighted_hidden_hidden_mse_2_4", "eval_accuracy"):
        assert f"scalar/{needed}" in tags, needed
    expected: dict[str, dict[int, float]] = {}
    for r in hf_run.records:
        for k, v in r.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                expected.setdefault(f"scalar/{k}", {})[r["step"]] = float(v)
    assert set(expected) == tags
    for tag, by_step in expected.items():
        got = events.Scalars(tag)
        assert [e.step for e in got] == sorted(by_step), tag  # each step once
        for e in got:
            assert e.value == pytest.approx(by_step[e.step], rel=1e-6), (tag, e.step)  # stored as float32
    assert [e.step for e in events.Scalars("scalar/eval_accuracy")] == [2, 4, 6]
    assert len(events.Scalars("scalar/loss")) == 6


def hf_entry(record: dict) -> dict:
    """transformers' log_history spelling of a metrics.jsonl record, written out."""
    out = {("learning_rate" if k == "lr" else k): v for k, v in record.items() if k != "epoch"}
    out["epoch"] = record["step"] / STEPS_PER_EPOCH
    return out


@pytest.mark.parametrize("step", [2, 4, 6])
def test_trainer_state_has_transformers_keys_and_the_log_history_so_far(hf_run, step):
    from transformers import TrainerState

    state = json.loads((hf_run.out / f"checkpoint-{step}" / "trainer_state.json").read_text())
    so_far = [r for r in hf_run.records if r["step"] <= step]
    assert state["log_history"] == [hf_entry(r) for r in so_far]  # the evaluation at `step` included
    assert so_far[-1] == {"step": step, "eval_accuracy": so_far[-1]["eval_accuracy"]}
    assert (state["global_step"], state["max_steps"], state["logging_steps"], state["save_steps"],
            state["eval_steps"], state["num_train_epochs"], state["train_batch_size"]) == (step, 12, 1, 2, 2, 3, 8)
    evals = [(r["step"], r["eval_accuracy"]) for r in so_far if "eval_accuracy" in r]
    best_step, best = evals[0]
    for s, v in evals[1:]:  # transformers: a strictly better value becomes the best (no threshold)
        if v > best:
            best_step, best = s, v
    assert (state["best_metric"], state["best_global_step"]) == (best, best_step)
    assert state["best_model_checkpoint"] == str(hf_run.out / f"checkpoint-{best_step}")
    counter = state["stateful_callbacks"]["EarlyStoppingCallback"]["attributes"]["early_stopping_patience_counter"]
    assert counter == len(evals) - 1  # the first evaluation sets the best, each later one fails the threshold
    # brewkit's own keys, which a resume reads, are still there
    assert state["plan"] == {"total_steps": 12, "steps_per_epoch": 4, "num_epochs": 3}
    assert set(state["weights"]) == {"kd_loss_weight", "hard_label_weight"} and "fingerprint" in state
    assert state["epoch"] == (step - 1) // STEPS_PER_EPOCH  # brewkit's pass index
    fields = {f for f in TrainerState.__dataclass_fields__}  # what transformers' TrainerState reads
    ts = TrainerState(**{k: v for k, v in state.items() if k in fields})
    assert ts.global_step == step and ts.log_history[-1]["eval_accuracy"] == so_far[-1]["eval_accuracy"]


def front_matter(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def test_the_model_card_in_final_states_the_run(hf_run):
    meta, body = front_matter((hf_run.out / "final" / "README.md").read_text())
    acc = hf_run.summary["eval_accuracy"]
    assert meta["base_model"] == hf_run.teacher and meta["library_name"] == "brewkit"
    assert {"distillation", "brewkit", "text-classification"} <= set(meta["tags"])
    assert meta["pipeline_tag"] == "text-classification" and meta["metrics"] == ["accuracy"]
    result = meta["model-index"][0]["results"][0]
    assert result["metrics"] == [{"type": "accuracy", "value": acc, "name": "eval_accuracy"}]
    assert result["dataset"]["name"] == "eval.csv"
    lines = body.splitlines()
    teacher_row = next(line for line in lines if line.startswith("| teacher |"))
    assert f"`{hf_run.teacher}`" in teacher_row and "| 4 | 16 |" in teacher_row  # layers, hidden
    assert any(line.startswith("| student | `builder tiny_bert`") and "| 2 | 8 |" in line for line in lines)
    assert "`ce` at temperature 2, weight 1" in body and "hard labels**: cross-entropy, weight 1" in body
    assert "| hidden | 1 | 2 | hidden_mse | 1 | linear 8 -> 16 |" in lines
    assert "| hidden | 2 | 4 | hidden_mse | 1 | linear 8 -> 16 |" in lines
    assert any("train.csv` (32 examples" in line for line in lines)
    assert any("eval.csv` (12 examples)" in line for line in lines)
    assert any(line.startswith("- 6 optimizer steps of 12 planned (3 epoch(s) of 4 steps)") for line in lines)
    assert "optimizer `adamw_torch`, learning rate 0.001" in body and "schedule `cosine` with 3 warm-up steps" in body
    assert f"| eval_accuracy | {acc:.4f} |" in lines
    for h in hf_run.summary["eval_history"]:
        assert f"| {h['step']} | {h['eval_accuracy']:.4f} |" in lines


def test_a_supervised_run_card_names_its_starting_model_and_no_distillation(hf_run, assets, tmp_path):
    d = run_dict(assets, tmp_path / "out")
    d["distiller"] = "train"
    d.pop("distillation")
    d.pop("teacher")
    d["student"] = {"path": hf_run.teacher}
    d["data"].pop("eval_file")
    run = load_run(d)
    meta, body = front_matter(model_card(run, build(run, with_optimizer=False), steps=0, final_eval=None))
    assert meta["base_model"] == hf_run.teacher and "distillation" not in meta["tags"]
    assert "metrics" not in meta and "model-index" not in meta
    assert "trained with brewkit on the labels alone" in body and "No eval split" in body
    assert "| teacher |" not in body


def test_early_stopping_without_an_eval_split_is_a_config_error_before_anything_is_written(assets, tmp_path):
    d = hf_training(run_dict(assets, tmp_path / "out"))
    d["data"].pop("eval_file")
    d["evaluation"]["early_stopping_patience"] = 2
    run = load_run(d)
    for fn in (validate_run, train_run):
        with pytest.raises(ConfigError) as e:
            fn(run)
        assert e.value.path == "evaluation.early_stopping_patience" and "eval split" in e.value.message
    assert not (tmp_path / "out" / "run.yaml").exists()


def test_a_resumed_run_purges_the_redone_steps_from_tensorboard(tmp_path):
    """Steps 1-4 written, the run killed and resumed from step 2: TensorBoard shows 3 and 4 once, as redone."""
    first = MetricsWriter(str(tmp_path), str(tmp_path / "tb"))
    for step in range(1, 5):
        first.write({"step": step, "loss": float(step)})
    first.close()
    again = MetricsWriter(str(tmp_path), str(tmp_path / "tb"))
    again.drop_after(2)
    for step in (3, 4):
        again.write({"step": step, "loss": 10.0 * step})
    again.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("scalar/loss")] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["loss"] for line in lines] == [1.0, 2.0, 30.0, 40.0]


@pytest.mark.slow
def test_reduce_lr_on_plateau_steps_on_each_evaluation(assets, tmp_path):
    d = hf_training(run_dict(assets, tmp_path / "out"))
    d["training"].update(num_train_epochs=1, lr_scheduler_type="reduce_lr_on_plateau", eval_steps=1, save_steps=4,
                         lr_scheduler_kwargs={"patience": 0, "factor": 0.5}, report_to="none")
    del d["training"]["warmup_ratio"]  # a metric-driven schedule has no warm-up
    train_run(load_run(d))
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    lr, best, expected = 1e-3, None, {}
    for r in records:  # torch's ReduceLROnPlateau (mode max, rel threshold 1e-4, patience 0), written out
        if "lr" in r:
            expected[r["step"]] = lr
        else:
            v = r["eval_accuracy"]
            if best is None or v > best * (1 + 1e-4):
                best = v
            else:
                lr *= 0.5
    assert {r["step"]: r["lr"] for r in records if "lr" in r} == pytest.approx(expected, rel=1e-12)
    assert len(expected) == 4 and min(expected.values()) < 1e-3  # the accuracy stalled at least once
    # the checkpoint of step 4 holds the schedule after the evaluation of step 4 (what a resume continues from)
    saved = torch.load(tmp_path / "out" / "checkpoint-4" / "scheduler.pt", weights_only=True)
    assert saved["best"] == best and saved["_last_lr"] == pytest.approx([lr] * 4, rel=1e-12)  # 4 param groups
