"""Building a run: from a :class:`~brewkit.runfile.RunConfig` to models, data loaders, the distiller, the
optimizer and the LR schedule (:func:`build`).

The order matters and is fixed here: seed (so random weights and projections repeat), the teacher, the student
(which may copy teacher layers), the tokenizer, the process group under ``torchrun`` (set up once, here; the
distiller's ``train()`` finds it), the loaders (sharded per rank), the distiller, and the training plan that the
LR schedule's length comes from.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import transformers

from . import distributed
from .configs import DistillationConfig
from .data import DataConfig, augmenter_for, build_dataloaders
from .distillers import BasicDistiller, BasicTrainer, GeneralDistiller
from .engine.plan import TrainPlan
from .engine.rng import seed_everything
from .errors import ConfigError
from .layer_maps import expand_layer_map
from .models import build_model, build_model_with_report
from .runfile import RunConfig, in_section

R = TypeVar("R")

LR_SCHEDULES = {"linear": transformers.get_linear_schedule_with_warmup,
                "cosine": transformers.get_cosine_schedule_with_warmup,
                "constant": transformers.get_constant_schedule_with_warmup}


@dataclass
class Built:
    """Everything a run trains with. ``rank`` is this process's rank under ``torchrun`` (0 otherwise); ``plan``
    is the schedule ``train()`` will follow (its ``total_steps`` sets the LR schedule's length)."""

    teacher: torch.nn.Module | None
    student: torch.nn.Module
    tokenizer: Any
    train_loader: Any
    eval_loader: Any
    distiller: Any
    optimizer: torch.optim.Optimizer | None
    scheduler_class: Callable[..., Any]
    scheduler_args: dict
    distill_config: DistillationConfig | None
    notes: list[str]
    plan: TrainPlan
    rank: int = 0


def build_optimizer(model: torch.nn.Module, opt: dict) -> torch.optim.Optimizer:
    """AdamW (or SGD) over the trainable parameters of ``model``; ``opt`` is ``OptimConfig.optimizer``.

    Biases and norm weights (1-D tensors, or names containing ``norm``) get no weight decay.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": opt["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    if opt["name"] == "sgd":
        return torch.optim.SGD(groups, lr=opt["lr"])
    kw = {k: tuple(v) if k == "betas" else v for k, v in opt.items() if k in ("betas", "eps")}
    return torch.optim.AdamW(groups, lr=opt["lr"], **kw)


def lr_schedule(sch: dict, total_steps: int) -> tuple[Callable[..., Any], dict]:
    """``(scheduler_class, scheduler_args)`` for ``train()``: a Hugging Face schedule with warm-up.

    ``sch`` is ``OptimConfig.lr_scheduler``; warm-up is ``warmup_steps``, else ``int(warmup_ratio * total_steps)``.
    """
    warmup = sch.get("warmup_steps", int(sch["warmup_ratio"] * total_steps))
    args = {"num_warmup_steps": warmup}
    if sch["name"] != "constant":
        args["num_training_steps"] = total_steps
    return LR_SCHEDULES[sch["name"]], args


def model_depth(model: torch.nn.Module) -> int:
    """``model.config.num_hidden_layers``, which a layer-map preset needs."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if not isinstance(n, int):
        raise ConfigError("a layer-map preset needs models whose config has num_hidden_layers",
                          "distillation.intermediate_matches")
    return n


def resolve_distillation(run: RunConfig, teacher: torch.nn.Module, student: torch.nn.Module) -> DistillationConfig:
    """The DistillationConfig, with a layer-map preset expanded for these models' depths."""
    dist = dict(run.distillation)
    matches = dist.get("intermediate_matches")
    if isinstance(matches, dict):
        spec = dict(matches)
        preset = spec.pop("preset")
        depth_T, depth_S = model_depth(teacher), model_depth(student)
        dist["intermediate_matches"] = in_section(
            "distillation.intermediate_matches", lambda: expand_layer_map(preset, depth_T, depth_S, **spec))
    return in_section("distillation", DistillationConfig.from_dict, dist)


def in_data_section(fn: Callable[[], R]) -> R:
    """``fn()``; an error about a data field (``train_file``, ``text_column``) gets the ``data.`` prefix."""
    fields = {f.name for f in dataclasses.fields(DataConfig)}
    try:
        return fn()
    except ConfigError as e:
        if e.path and re.split(r"[.\[]", e.path)[0] in fields:
            raise e.at("data") from None
        raise


def build(run: RunConfig, *, with_optimizer: bool = True) -> Built:
    """Models, data, the distiller, the optimizer and the LR schedule for a run."""
    if run.training.seed is not None:  # randomly initialised weights and projections repeat under a seed
        seed_everything(run.training.seed)
    num_labels = len(run.data.labels) if run.data.labels else None
    notes: list[str] = []
    teacher = tok_T = None
    if run.teacher is not None:  # with distiller 'train', only a source for init_from_teacher
        teacher, tok_T = in_section("teacher", build_model, run.teacher, num_labels)
    student, tok_S, report = in_section("student", build_model_with_report, run.student, num_labels, teacher)
    if run.student.keep_layers is not None:
        notes.append(f"student keeps layers {run.student.keep_layers} of {run.student.path}")
    elif report:
        notes.append(f"student initialised from teacher: {report}")
    tokenizer = tok_T or tok_S
    if tokenizer is None:
        raise ConfigError("no tokenizer: give a model path (with tokenizer files) or `tokenizer:`", "teacher")
    second = tok_S if (tok_S is not None and tok_T is not None and tok_S is not tok_T) else None

    rank, world = 0, 1
    if distributed.wanted(run.training.local_rank):  # under torchrun: each process trains on its shard
        rank, world, _ = distributed.setup(run.training.local_rank, torch.device(run.training.device))
    augment = None
    if run.data.augment is not None:  # neighbours from the teacher's embeddings (the student's when alone)
        augment = in_section("data", augmenter_for, run.data.augment, teacher if teacher is not None else student,
                             tokenizer)
    # Under DDP both loaders are sharded; evaluation gathers the ranks' predictions (brewkit.evaluation).
    train_loader, eval_loader = in_data_section(lambda: build_dataloaders(
        run.data, tokenizer, second, seed=run.training.seed or 0, device=run.training.device,
        num_replicas=world, rank=rank, augment=augment))

    dc = None
    if run.distiller == "train":
        distiller = BasicTrainer(run.training, student, None)
    else:
        dc = resolve_distillation(run, teacher, student)
        cls = GeneralDistiller if run.distiller == "general" else BasicDistiller
        distiller = cls(run.training, dc, teacher, student, None, None)
    optimizer = build_optimizer(student, run.optim.optimizer) if with_optimizer else None
    plan = TrainPlan.build(run.training, len(train_loader), num_epochs=run.optim.num_epochs,
                           num_steps=run.optim.num_steps)
    sched, sched_args = lr_schedule(run.optim.lr_scheduler, plan.total_steps)
    return Built(teacher, student, tokenizer, train_loader, eval_loader, distiller, optimizer, sched, sched_args,
                 dc, notes, plan, rank)
