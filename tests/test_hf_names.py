"""transformers.TrainingArguments names in run files: each one is brewkit's setting (same resolved values), both
spellings at once are an error naming both, errors name the key the run file used, the old schedule and optimizer
spellings keep their numbers, every get_scheduler name is built by transformers, and validate prints the values."""
import math
import os

import pytest
import torch
import transformers
import yaml
from helpers import run_dict

from brewkit import hf_names
from brewkit.build import OPTIMIZER_CLASSES, build, build_optimizer, lr_schedule
from brewkit.engine.plan import TrainPlan
from brewkit.errors import ConfigError
from brewkit.run import training_arguments, validate_run
from brewkit.runfile import OPTIMIZERS, load_run, lr_schedule_names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def base(assets, tmp_path) -> dict:
    """The helpers' run without the settings the tests spell both ways."""
    d = run_dict(assets, tmp_path / "out")
    del d["training"]["optimizer"], d["training"]["lr_scheduler"], d["training"]["num_epochs"]
    del d["data"]["batch_size"]
    d["training"]["num_epochs"] = 1
    return d


def resolved(d: dict) -> dict:
    run = load_run(d)
    return {"training": run.training.to_dict(), "optim": run.optim.to_dict(), "data": run.data.to_dict(),
            "evaluation": run.evaluation.to_dict()}


def put(d: dict, path: str, value) -> None:
    *parents, key = path.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[key] = value


# (TrainingArguments key, value) -> [(brewkit path, value)]: the same run either way
SAME_SETTING = [
    ({"learning_rate": 3e-4}, {"training.optimizer.lr": 3e-4}),
    ({"weight_decay": 0.1}, {"training.optimizer.weight_decay": 0.1}),
    ({"adam_beta1": 0.8, "adam_beta2": 0.95}, {"training.optimizer.betas": [0.8, 0.95]}),
    ({"adam_beta1": 0.8}, {"training.optimizer.betas": [0.8, 0.999]}),  # transformers' default beta2
    ({"adam_beta2": 0.98}, {"training.optimizer.betas": [0.9, 0.98]}),
    ({"adam_epsilon": 1e-6}, {"training.optimizer.eps": 1e-6}),
    ({"optim": "adamw_torch_fused"}, {"training.optimizer.name": "adamw_torch_fused"}),
    ({"optim": "adafactor", "learning_rate": 1e-3}, {"training.optimizer.name": "adafactor",
                                                    "training.optimizer.lr": 1e-3}),
    ({"num_train_epochs": 3.0}, {"training.num_epochs": 3}),  # transformers' float epochs, when whole
    ({"max_steps": 7}, {"training.num_steps": 7}),
    ({"max_steps": -1}, {}),  # transformers' "not set"
    ({"per_device_train_batch_size": 4}, {"data.batch_size": 4}),
    ({"per_device_eval_batch_size": 5}, {"data.eval_batch_size": 5}),
    ({"gradient_accumulation_steps": 2}, {"training.gradient_accumulation_steps": 2}),
    ({"warmup_ratio": 0.25}, {"training.lr_scheduler.warmup_ratio": 0.25}),
    ({"warmup_steps": 3}, {"training.lr_scheduler.warmup_steps": 3}),
    ({"warmup_steps": 0.2}, {"training.lr_scheduler.warmup_ratio": 0.2}),  # transformers 5: a ratio below 1
    ({"warmup_steps": 0}, {}),
    ({"lr_scheduler_type": "cosine_with_restarts", "lr_scheduler_kwargs": {"num_cycles": 2}},
     {"training.lr_scheduler.name": "cosine_with_restarts", "training.lr_scheduler.kwargs": {"num_cycles": 2}}),
    ({"lr_scheduler_type": "constant"}, {"training.lr_scheduler.name": "constant"}),
    ({"save_steps": 2}, {"training.ckpt_steps": 2}),
    ({"eval_steps": 2}, {"evaluation.steps": 2}),
    ({"logging_dir": "tb"}, {"training.log_dir": "tb"}),
    ({"dataloader_num_workers": 0}, {"data.num_workers": 0}),
    ({"metric_for_best_model": "accuracy", "greater_is_better": True},
     {"evaluation.metric_for_best_model": "accuracy", "evaluation.greater_is_better": True}),
    ({"max_grad_norm": 0.5, "logging_steps": 3, "save_total_limit": 2, "seed": 7, "bf16": True},
     {"training.max_grad_norm": 0.5, "training.logging_steps": 3, "training.save_total_limit": 2,
      "training.seed": 7, "training.bf16": True}),
]


@pytest.mark.parametrize("hf, brewkit", SAME_SETTING, ids=lambda x: ",".join(x) or "none")
def test_a_trainingarguments_name_is_brewkits_setting(assets, tmp_path, hf, brewkit):
    a, b = base(assets, tmp_path), base(assets, tmp_path)
    if "num_train_epochs" in hf:
        a["training"].pop("num_epochs")
    a["training"].update(hf)
    for path, value in brewkit.items():
        put(b, path, value)
    if "max_steps" in hf and hf["max_steps"] != -1:
        b["training"].pop("num_epochs")  # max_steps wins over epochs, in both spellings
        a["training"].pop("num_epochs")
    assert resolved(a) == resolved(b)


def test_report_to_tensorboard_writes_to_output_dir_runs_unless_log_dir_is_given(assets, tmp_path):
    d = base(assets, tmp_path)
    d["training"]["report_to"] = ["tensorboard"]
    assert load_run(d).training.log_dir == os.path.join(str(tmp_path / "out"), "runs")
    d["training"]["report_to"] = "tensorboard"
    d["training"]["logging_dir"] = str(tmp_path / "tb")
    assert load_run(d).training.log_dir == str(tmp_path / "tb")
    d["training"].update(report_to="none")
    del d["training"]["logging_dir"]
    assert load_run(d).training.log_dir is None


# (the run file's training keys added to base(), where the error is, a fragment of its message)
BOTH_SPELLINGS = [
    ({"learning_rate": 1e-3, "optimizer": {"lr": 1e-3}}, "training.learning_rate", "training.optimizer.lr"),
    ({"weight_decay": 0.0, "optimizer": {"weight_decay": 0.0}}, "training.weight_decay",
     "training.optimizer.weight_decay"),
    ({"adam_beta2": 0.9, "optimizer": {"betas": [0.9, 0.99]}}, "training.adam_beta2", "training.optimizer.betas"),
    ({"adam_epsilon": 1e-6, "optimizer": {"eps": 1e-6}}, "training.adam_epsilon", "training.optimizer.eps"),
    ({"optim": "sgd", "optimizer": {"name": "sgd"}}, "training.optim", "training.optimizer.name"),
    ({"num_train_epochs": 1}, "training.num_train_epochs", "training.num_epochs"),  # base() has num_epochs
    ({"max_steps": 3, "num_steps": 3}, "training.max_steps", "training.num_steps"),
    ({"max_steps": -1, "num_steps": 3}, "training.max_steps", "training.num_steps"),
    ({"warmup_ratio": 0.1, "lr_scheduler": {"warmup_ratio": 0.1}}, "training.warmup_ratio",
     "training.lr_scheduler.warmup_ratio"),
    ({"warmup_ratio": 0.1, "warmup_steps": 0.2}, "training.warmup_steps", "training.warmup_ratio"),
    ({"warmup_steps": 4, "lr_scheduler": {"warmup_steps": 4}}, "training.warmup_steps",
     "training.lr_scheduler.warmup_steps"),
    ({"lr_scheduler_type": "linear", "lr_scheduler": {"name": "linear"}}, "training.lr_scheduler_type",
     "training.lr_scheduler.name"),
    ({"save_steps": 2, "ckpt_steps": 2}, "training.save_steps", "training.ckpt_steps"),
    ({"logging_dir": "a", "log_dir": "a"}, "training.logging_dir", "training.log_dir"),
    ({"per_device_train_batch_size": 8}, "training.per_device_train_batch_size", "data.batch_size"),
    ({"dataloader_num_workers": 0}, "training.dataloader_num_workers", "data.num_workers"),
]


@pytest.mark.parametrize("keys, path, other", BOTH_SPELLINGS, ids=lambda x: x if isinstance(x, str) else None)
def test_both_spellings_of_one_setting_is_an_error_naming_both(assets, tmp_path, keys, path, other):
    d = base(assets, tmp_path)
    d["training"].update(keys)
    if path == "training.per_device_train_batch_size":
        d["data"]["batch_size"] = 8
    if path == "training.dataloader_num_workers":
        d["data"]["num_workers"] = 0
    with pytest.raises(ConfigError) as e:
        load_run(d)
    assert e.value.path == path
    assert other in e.value.message and path in e.value.message and "give only one" in e.value.message


def test_eval_steps_and_evaluation_steps_are_one_setting(assets, tmp_path):
    d = base(assets, tmp_path)
    d["training"]["eval_steps"] = 2
    d["evaluation"]["steps"] = 2
    with pytest.raises(ConfigError) as e:
        load_run(d)
    assert e.value.path == "training.eval_steps" and "evaluation.steps" in e.value.message


# (training keys, the path the error names, a fragment of its message)
BAD_VALUES = [
    ({"learning_rate": -1}, "training.learning_rate", "positive number"),
    ({"weight_decay": "lots"}, "training.weight_decay", "number"),
    ({"adam_beta1": 1.5}, "training.adam_beta1", "[0, 1)"),
    ({"adam_epsilon": 0}, "training.adam_epsilon", "positive"),
    ({"optim": "adam"}, "training.optim", "adamw_torch"),
    ({"optim": "adamw_bnb_8bit"}, "training.optim", "does not build"),
    ({"num_train_epochs": 1.5}, "training.num_train_epochs", "max_steps"),
    ({"max_steps": 0}, "training.max_steps", ">= 1"),
    ({"warmup_steps": 2.5}, "training.warmup_steps", "whole number"),
    ({"warmup_steps": -3}, "training.warmup_steps", ">= 0"),
    ({"warmup_ratio": 1.5}, "training.warmup_ratio", "[0, 1)"),
    ({"lr_scheduler_type": "linaer"}, "training.lr_scheduler_type", "cosine_with_min_lr"),
    ({"lr_scheduler_type": "cosine_with_min_lr"}, "training.lr_scheduler_type", "min_lr"),  # needs kwargs
    ({"lr_scheduler_type": "linear", "lr_scheduler_kwargs": {"power": 2}}, "training.lr_scheduler_kwargs", "power"),
    ({"lr_scheduler_kwargs": [1]}, "training.lr_scheduler_kwargs", "mapping"),
    ({"lr_scheduler_type": "constant", "warmup_ratio": 0.1}, "training.lr_scheduler_type", "constant_with_warmup"),
    ({"lr_scheduler_type": "reduce_lr_on_plateau", "warmup_steps": 2}, "training.lr_scheduler_type", "no warm-up"),
    ({"save_steps": 0.5}, "training.save_steps", "integer"),
    ({"per_device_train_batch_size": 0}, "training.per_device_train_batch_size", ">= 1"),
    ({"report_to": ["wandb"]}, "training.report_to", "tensorboard only"),
    ({"report_to": ["none", "tensorboard"]}, "training.report_to", "one of them"),
    ({"report_to": "none", "log_dir": "tb"}, "training.report_to", "training.log_dir"),
    ({"metric_for_best_model": "f1"}, "training.metric_for_best_model", "eval_accuracy"),
    ({"greater_is_better": "yes"}, "training.greater_is_better", "true or false"),
    ({"learning_rat": 1e-3}, "training.learning_rat", "did you mean 'learning_rate'"),
]


@pytest.mark.parametrize("keys, path, fragment", BAD_VALUES, ids=lambda x: x if isinstance(x, str) else None)
def test_a_bad_value_names_the_key_the_run_file_used(assets, tmp_path, keys, path, fragment):
    d = base(assets, tmp_path)
    d["training"].update(keys)
    with pytest.raises(ConfigError) as e:
        load_run(d)
    assert e.value.path == path, e.value
    assert fragment in e.value.message
    assert "\n" not in str(e.value)


def test_report_to_tensorboard_without_tensorboard_says_how_to_install_it(assets, tmp_path, monkeypatch):
    monkeypatch.setattr(hf_names, "tensorboard_installed", lambda: False)
    d = base(assets, tmp_path)
    d["training"]["report_to"] = ["tensorboard"]
    with pytest.raises(ConfigError) as e:
        load_run(d)
    assert e.value.path == "training.report_to" and "pip install tensorboard" in e.value.message
    d["training"]["report_to"] = "all"  # transformers' "every installed integration": none here, no error
    assert load_run(d).training.log_dir is None


# -- the schedules -----------------------------------------------------------------------------------------------
def lrs(fn, args, steps: int) -> list[float]:
    """The LR before each of ``steps`` optimizer steps (base LR 1), and after the last."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = fn(opt, **args)
    out = []
    for _ in range(steps + 1):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def by_hand(name: str, warmup: int, total: int) -> list[float]:
    """transformers' formulas, written out: linear warm-up from 0, then linear decay to 0 / half a cosine to 0 /
    constant."""
    out = []
    for s in range(total + 1):
        if s < warmup:
            out.append(s / max(1, warmup))
            continue
        progress = (s - warmup) / max(1, total - warmup)
        out.append({"linear": max(0.0, (total - s) / max(1, total - warmup)),
                    "cosine": max(0.0, 0.5 * (1 + math.cos(math.pi * progress))),
                    "constant": 1.0}[name])
    return out


OLD = {"linear": transformers.get_linear_schedule_with_warmup,
       "cosine": transformers.get_cosine_schedule_with_warmup,
       "constant": transformers.get_constant_schedule_with_warmup}


@pytest.mark.parametrize("name", ["linear", "cosine", "constant"])
@pytest.mark.parametrize("warmup", [{"warmup_ratio": 0.0}, {"warmup_ratio": 0.3}, {"warmup_ratio": 0.3,
                                                                                  "warmup_steps": 4}])
def test_the_old_schedule_spellings_give_the_old_learning_rates(name, warmup):
    total = 11
    fn, args = lr_schedule({"name": name, **warmup}, total)
    w = warmup.get("warmup_steps", int(warmup["warmup_ratio"] * total))  # 0, 3 (int(3.3): rounded down), 4
    assert args["num_warmup_steps"] == w
    old_args = {"num_warmup_steps": w} if name == "constant" else {"num_warmup_steps": w, "num_training_steps": total}
    assert lrs(fn, args, total) == lrs(OLD[name], old_args, total)  # what brewkit built before: bit for bit
    assert lrs(fn, args, total) == pytest.approx(by_hand(name, w, total), abs=1e-12)


def test_transformers_constant_is_flat_and_cosine_with_min_lr_floors_at_the_rate(assets, tmp_path):
    d = base(assets, tmp_path)
    d["training"].update(lr_scheduler_type="constant")
    run = load_run(d)
    fn, args = lr_schedule(run.optim.lr_scheduler, 6)
    assert lrs(fn, args, 6) == [1.0] * 7
    fn, args = lr_schedule({"name": "cosine_with_min_lr", "warmup_ratio": 0.0, "kwargs": {"min_lr_rate": 0.1}}, 10)
    got = lrs(fn, args, 10)
    # lr(s) = min_rate + (1 - min_rate) * (1 + cos(pi s / 10)) / 2
    assert got == pytest.approx([0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / 10)) for s in range(11)], abs=1e-12)


@pytest.mark.parametrize("name", lr_schedule_names())
def test_every_get_scheduler_name_is_built_by_transformers(name):
    kwargs = {"min_lr_rate": 0.1} if "min_lr" in name else {"num_decay_steps": 5} if name == "warmup_stable_decay" \
        else {}
    fn, args = lr_schedule({"name": name, "warmup_ratio": 0.0, "kwargs": kwargs}, 20)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = fn(opt, **args)
    expected = transformers.get_scheduler("constant_with_warmup" if name == "constant" else name, opt,
                                          num_warmup_steps=args.get("num_warmup_steps"),
                                          num_training_steps=args.get("num_training_steps"),
                                          scheduler_specific_kwargs=kwargs)
    inner = getattr(sched, "scheduler", sched)  # a metric-driven schedule comes wrapped
    assert type(inner) is type(expected)
    assert getattr(sched, "follows_metric", None) is None and fn.follows_metric == (name in ("reduce_lr_on_plateau",
                                                                                            "greedy"))


def test_a_metric_driven_schedule_steps_on_the_metric_only():
    fn, args = lr_schedule({"name": "reduce_lr_on_plateau", "warmup_ratio": 0.0,
                            "kwargs": {"patience": 0, "factor": 0.5}}, 10, metric_mode="max")
    assert args == {}
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = fn(opt)
    for _ in range(5):
        sched.step()  # the engine's step after each optimizer step: nothing happens
    assert opt.param_groups[0]["lr"] == 1.0
    sched.step(0.5)  # the first evaluation: the best so far
    sched.step(0.5)  # no improvement (mode max, patience 0): halve
    assert opt.param_groups[0]["lr"] == 0.5
    sched.step(0.7)
    assert opt.param_groups[0]["lr"] == 0.5
    assert sched.state_dict()["mode"] == "max"


# -- the optimizers ----------------------------------------------------------------------------------------------
def test_every_optimizer_name_has_its_builder():
    assert set(OPTIMIZERS) == set(OPTIMIZER_CLASSES)


@pytest.mark.parametrize("name, cls, extra", [
    ("adamw", torch.optim.AdamW, {"fused": None}), ("adamw_torch", torch.optim.AdamW, {"fused": None}),
    ("adamw_torch_fused", torch.optim.AdamW, {"fused": True}), ("sgd", torch.optim.SGD, {}),
    ("adagrad", torch.optim.Adagrad, {}), ("rmsprop", torch.optim.RMSprop, {}),
    ("adafactor", transformers.Adafactor, {"scale_parameter": False, "relative_step": False})])
def test_build_optimizer_builds_transformers_choice_for_each_name(name, cls, extra):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, {"name": name, "lr": 0.01, "weight_decay": 0.3, "betas": [0.8, 0.9], "eps": 1e-6})
    assert type(opt) is cls and opt.defaults["lr"] == 0.01
    for k, v in extra.items():
        assert opt.defaults[k] == v, k
    if "adamw" in name:  # betas / eps go to the Adam-type optimizers only, as in transformers
        assert opt.defaults["betas"] == (0.8, 0.9) and opt.defaults["eps"] == 1e-6
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.3 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [(4, 3)]
    x = torch.randn(2, 3)
    model(x).sum().backward()
    before = model[0].weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model[0].weight)


# -- the demo's run files and the validate printout --------------------------------------------------------------
BREWKIT_SPELLING = {  # what configs/demo_*.yaml said before they used the TrainingArguments names
    "teacher": {"num_steps": 500, "optimizer": {"lr": 1.0e-4, "weight_decay": 0.01}},
    "distill": {"num_epochs": 1, "optimizer": {"lr": 1.0e-4, "weight_decay": 0.01}},
    "baseline": {"num_epochs": 1, "optimizer": {"lr": 2.0e-4, "weight_decay": 0.01}},
}


@pytest.mark.parametrize("stage", list(BREWKIT_SPELLING))
def test_the_demo_run_files_resolve_as_their_brewkit_spelling(stage):
    with open(os.path.join(ROOT, "configs", f"demo_{stage}.yaml"), encoding="utf-8") as f:
        hf = yaml.safe_load(f)
    assert {"learning_rate", "optim", "lr_scheduler_type", "warmup_ratio", "per_device_train_batch_size"} <= \
        set(hf["training"])
    old = {**hf, "data": {**hf["data"], "batch_size": 32}}
    old["training"] = {"lr_scheduler": {"name": "linear", "warmup_ratio": 0.1}, "max_grad_norm": 1.0, "seed": 42,
                       "logging_steps": 50, "save_total_limit": 1, **BREWKIT_SPELLING[stage]}
    a, b = load_run(hf), load_run(old)
    assert a.optim.optimizer == {**b.optim.optimizer, "name": "adamw_torch"}  # torch's AdamW, same options
    assert (a.optim.num_epochs, a.optim.num_steps, a.optim.lr_scheduler, a.optim.max_grad_norm) == \
        (b.optim.num_epochs, b.optim.num_steps, b.optim.lr_scheduler, b.optim.max_grad_norm)
    assert a.training.to_dict() == b.training.to_dict() and a.data.to_dict() == b.data.to_dict()
    for batches in (339, 3):  # the full run's and --quick's batches per epoch
        plans = [TrainPlan.build(r.training, batches, r.optim.num_epochs, r.optim.num_steps) for r in (a, b)]
        assert plans[0] == plans[1]
        scheds = [lr_schedule(r.optim.lr_scheduler, p.total_steps) for r, p in zip((a, b), plans)]
        assert scheds[0][1] == scheds[1][1] and scheds[0][0].name == scheds[1][0].name == "linear"
        assert training_arguments(a, plans[0], scheds[0][1]) == training_arguments(b, plans[1], scheds[1][1])


def test_validate_prints_the_resolved_training_arguments(assets, tmp_path):
    d = base(assets, tmp_path)
    d["training"].update(learning_rate=2e-3, warmup_ratio=0.3, num_train_epochs=2, adam_beta2=0.95,
                         per_device_train_batch_size=8)
    d["training"].pop("num_epochs")
    run = load_run(d)
    b = build(run, with_optimizer=False)
    rows = {name: (value, where) for name, value, where in training_arguments(run, b.plan, b.scheduler_args)}
    assert b.plan.total_steps == 8  # 32 rows / batch 8 = 4 steps per epoch, 2 epochs
    assert rows["learning_rate"] == (2e-3, "training.optimizer.lr")
    assert rows["warmup_steps"][0] == 2  # int(0.3 x 8)
    assert rows["max_steps"][0] == 8 and rows["num_train_epochs"][0] == 2
    assert rows["adam_beta1"][0] == 0.9 and rows["adam_beta2"][0] == 0.95 and rows["adam_epsilon"][0] == 1e-8
    assert rows["optim"][0] == "adamw_torch" and rows["per_device_train_batch_size"] == (8, "data.batch_size")
    text = validate_run(run)
    assert "training arguments (resolved" in text
    for line in ("  learning_rate: 0.002", "  warmup_steps: 2", "  max_steps: 8", "  lr_scheduler_type: \"linear\""):
        assert any(row.startswith(line) for row in text.splitlines()), line
