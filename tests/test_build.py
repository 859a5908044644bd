"""brewkit.build: a RunConfig to models, loaders, distiller, optimizer and LR schedule."""
import math

import pytest
import torch
from helpers import run_dict

from brewkit.build import build, build_optimizer, lr_schedule, resolve_distillation
from brewkit.errors import ConfigError
from brewkit.runfile import load_run


def test_the_lr_schedule_spans_the_plan_and_warms_up_by_ratio(assets, tmp_path):
    d = run_dict(assets, tmp_path / "out")
    d["training"].update(gradient_accumulation_steps=3, num_epochs=2, lr_scheduler={"warmup_ratio": 0.25})
    b = build(load_run(d))
    per_epoch = math.ceil(len(b.train_loader) / 3)  # 32 rows / batch 8 = 4 batches -> 2 steps per epoch
    assert len(b.train_loader) == 4 and b.plan.total_steps == 2 * per_epoch == 4
    assert b.scheduler_args == {"num_warmup_steps": 1, "num_training_steps": 4}
    d["training"].update(num_steps=10, lr_scheduler={"name": "constant", "warmup_steps": 3})
    b = build(load_run(d))
    assert b.plan.total_steps == 10 and b.scheduler_args == {"num_warmup_steps": 3}


def test_a_student_from_teacher_layers_is_noted_with_its_report(assets, tmp_path):
    d = run_dict(assets, tmp_path / "out")
    d["student"] = {"init_from_teacher": {"layers": [1, 3]}, "tokenizer": assets.tokenizer}
    d["distillation"]["intermediate_matches"] = {"preset": "uniform", "feature": "hidden", "loss": "hidden_mse",
                                                 "weight": 1}
    b = build(load_run(d), with_optimizer=False)
    assert b.optimizer is None and b.student.config.num_hidden_layers == 2
    assert len(b.notes) == 1 and b.notes[0].startswith(
        "student initialised from teacher: student layers [0, 1] <- teacher layers [1, 3] (bert.encoder.layer)")
    # uniform 4 -> 2: teacher layers 2 and 4 (hidden-state indices), plus the embeddings pair
    pairs = [(m.layer_S, m.layer_T) for m in b.distill_config.intermediate_matches]
    assert pairs == [(0, 0), (1, 2), (2, 4)]


def test_resolve_distillation_needs_depths(assets, tmp_path):
    d = run_dict(assets, tmp_path / "out")
    d["distillation"]["intermediate_matches"] = {"preset": "last"}
    run = load_run(d)
    with pytest.raises(ConfigError) as e:
        resolve_distillation(run, torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    assert e.value.path == "distillation.intermediate_matches" and "num_hidden_layers" in e.value.message


def test_build_optimizer_groups_and_options():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    model[0].bias.requires_grad_(False)
    opt = build_optimizer(model, {"name": "adamw", "lr": 0.1, "weight_decay": 0.5, "betas": [0.8, 0.9], "eps": 1e-6})
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.8, 0.9) and opt.defaults["eps"] == 1e-6
    decay, no_decay = opt.param_groups
    assert [p.shape for p in decay["params"]] == [(4, 3)] and decay["weight_decay"] == 0.5
    assert [p.shape for p in no_decay["params"]] == [(4,), (4,)] and no_decay["weight_decay"] == 0.0  # frozen bias out
    sgd = build_optimizer(model, {"name": "sgd", "lr": 0.2, "weight_decay": 0.0})
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["lr"] == 0.2


def test_lr_schedule_by_hand():
    fn, args = lr_schedule({"name": "linear", "warmup_ratio": 0.1}, 25)
    assert args == {"num_warmup_steps": 2, "num_training_steps": 25}
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = fn(opt, **args)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 22 / 23])
