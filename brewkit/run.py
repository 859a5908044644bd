"""YAML runs: a run file maps onto plain config objects; ``train_run`` is the visible recipe.

A run file has these sections (see ``configs/`` for complete examples)::

    teacher:      {path: DIR | pkg://DIST/path, num_labels: 2}     # or config: {...} / builder: NAME
    student:      {init_from_teacher: {layers: [0, 2, 4]}}         # or path / config / builder
    data:         {train_file: ..., text_column: text, label_column: label, max_length: 64, ...}
    distiller:    general          # general | basic | train (plain supervised training, no teacher)
    distillation: {temperature: 4, hard_label_weight: 1, intermediate_matches: [...] or {preset: ...}}
    training:     {num_epochs: 3, optimizer: {lr: 1e-4}, lr_scheduler: {warmup_ratio: 0.1}, ...TrainingConfig}
    evaluation:   {metric: accuracy}
    plugins:      [my_package.my_losses]     # imported first, so their registrations exist
    output_dir:   runs/my_run

Every mistake is a :class:`ConfigError` whose path points into the file (``distillation.temperature``).
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import yaml

from . import distributed
from .configs import DistillationConfig, TrainingConfig
from .distillers.utils import split_example_index
from .errors import AdaptorError, ConfigError
from .validation import ConfigBase, check_int, check_keys, check_number, safe_load

SECTIONS = ["teacher", "student", "data", "distiller", "distillation", "training", "evaluation", "plugins",
            "output_dir"]
DISTILLERS = ["general", "basic", "train"]
METRICS = ["accuracy", "macro_f1"]


# -- the run file ---------------------------------------------------------------------------------------
@dataclass
class OptimConfig(ConfigBase):
    """The ``training`` keys that are not TrainingConfig fields: how long, the optimizer, the LR schedule."""

    num_epochs: int | None = None
    num_steps: int | None = None
    max_grad_norm: float = 1.0
    optimizer: dict = field(default_factory=lambda: {"name": "adamw", "lr": 5e-5, "weight_decay": 0.01})
    lr_scheduler: dict = field(default_factory=lambda: {"name": "linear", "warmup_ratio": 0.0})

    def __post_init__(self):
        if self.num_epochs is None and self.num_steps is None:
            raise ConfigError("give num_epochs or num_steps", "num_epochs")
        check_int(self.num_epochs, "num_epochs", minimum=1, allow_none=True)
        check_int(self.num_steps, "num_steps", minimum=1, allow_none=True)
        check_number(self.max_grad_norm, "max_grad_norm")
        check_keys(self.optimizer or {}, ["name", "lr", "weight_decay", "betas", "eps"], "optimizer")
        opt = {"name": "adamw", "lr": 5e-5, "weight_decay": 0.01, **(self.optimizer or {})}
        if opt["name"] not in ("adamw", "sgd"):
            raise ConfigError(f"must be 'adamw' or 'sgd', got {opt['name']!r}", "optimizer.name")
        check_number(opt["lr"], "optimizer.lr", positive=True)
        check_number(opt["weight_decay"], "optimizer.weight_decay")
        b = opt.get("betas")
        if b is not None and not (isinstance(b, (list, tuple)) and len(b) == 2 and
                                  all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < 1
                                      for x in b)):
            raise ConfigError(f"must be a list of two numbers in [0, 1) such as [0.9, 0.999], got {b!r}",
                              "optimizer.betas")
        if "eps" in opt:
            check_number(opt["eps"], "optimizer.eps", positive=True)
        self.optimizer = opt
        check_keys(self.lr_scheduler or {}, ["name", "warmup_ratio", "warmup_steps"], "lr_scheduler")
        sch = {"name": "linear", "warmup_ratio": 0.0, **(self.lr_scheduler or {})}
        if sch["name"] not in ("linear", "cosine", "constant"):
            raise ConfigError(f"must be 'linear', 'cosine' or 'constant', got {sch['name']!r}", "lr_scheduler.name")
        r = sch["warmup_ratio"]
        if not (isinstance(r, (int, float)) and not isinstance(r, bool) and 0 <= r < 1):
            raise ConfigError(f"must be a number in [0, 1), got {r!r}", "lr_scheduler.warmup_ratio")
        if "warmup_steps" in sch:
            check_int(sch["warmup_steps"], "lr_scheduler.warmup_steps", minimum=0)
        self.lr_scheduler = sch


@dataclass
class EvalConfig(ConfigBase):
    """Evaluation on the eval split: at every checkpoint (TextBrewer's callback schedule), or every ``steps``
    optimizer steps, and at the end."""

    metric: str = "accuracy"
    steps: int | None = None

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ConfigError(f"must be one of {', '.join(METRICS)}; got {self.metric!r}", "metric")
        self.steps = check_int(self.steps, "steps", minimum=1, allow_none=True)

    def describe(self) -> str:
        when = "at each checkpoint" if self.steps is None else f"every {self.steps} steps"
        return f"evaluation: {self.metric} on the eval split {when} and at the end"


@dataclass
class RunConfig:
    teacher: Any
    student: Any
    data: Any
    distiller: str
    distillation: dict
    training: TrainingConfig
    optim: OptimConfig
    evaluation: EvalConfig
    plugins: list[str]
    output_dir: str
    source: dict  # the file after --set overrides, for the resolved copy written next to the results


def _at(prefix: str, fn, *args):
    try:
        return fn(*args)
    except ConfigError as e:
        raise e.at(prefix) from None


_INDEX = re.compile(r"^(\w+)\[(\d+)\]$")


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def apply_override(d: dict, assignment: str) -> None:
    """Apply ``a.b[1].c=value`` (value in YAML syntax) to the nested dict ``d``."""
    if "=" not in assignment:
        raise ConfigError(f"expected KEY.PATH=VALUE, got {assignment!r}", "--set")
    key, raw = assignment.split("=", 1)
    try:
        value = safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"value of {key!r} is not valid YAML: {_one_line(e)}", "--set") from None
    node: Any = d
    parts = key.strip().split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        m = _INDEX.match(part)
        name, index = (m.group(1), int(m.group(2))) if m else (part, None)
        if not name:
            raise ConfigError(f"empty key in {key!r}", "--set")
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(parts[:i])} is not a mapping", "--set")
        if index is None:
            if last:
                node[name] = value
            else:
                if node.get(name) is None:
                    node[name] = {}
                node = node[name]
        else:
            seq = node.get(name)
            if not isinstance(seq, list) or index >= len(seq):
                raise ConfigError(f"{name}[{index}] does not exist", "--set")
            if last:
                seq[index] = value
            else:
                node = seq[index]


def load_run(path_or_dict: str | dict, overrides: list[str] = ()) -> RunConfig:
    """Read (safe YAML, with YAML 1.2 floats), apply ``--set`` overrides, import plugins, validate each section."""
    if isinstance(path_or_dict, dict):
        raw = copy.deepcopy(path_or_dict)
    elif not isinstance(path_or_dict, (str, os.PathLike)):
        raise ConfigError(f"a run file must be a mapping of sections, got {type(path_or_dict).__name__}",
                          "(top level)")
    else:
        if not os.path.isfile(path_or_dict):
            raise ConfigError(f"no such run file: {path_or_dict}")
        with open(path_or_dict, encoding="utf-8") as f:
            try:
                raw = safe_load(f)
            except yaml.YAMLError as e:
                raise ConfigError(f"{path_or_dict} is not valid YAML: {_one_line(e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError("a run file must be a mapping of sections", "(top level)")
    for o in overrides:
        apply_override(raw, o)
    check_keys(raw, SECTIONS)

    plugins = raw.get("plugins") or []
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError("must be a list of module names", "plugins")
    for i, name in enumerate(plugins):
        try:
            importlib.import_module(name)
        except Exception as e:  # a plugin's SyntaxError or clashing registration names the plugin too
            msg = " ".join(str(e).split())
            raise ConfigError(f"cannot import {name!r}: {type(e).__name__}: {msg}", f"plugins[{i}]") from None

    from .data import DataConfig
    from .models import ModelSpec

    distiller = raw.get("distiller", "general")
    if distiller not in DISTILLERS:
        raise ConfigError(f"must be one of {', '.join(DISTILLERS)}; got {distiller!r}", "distiller")
    output_dir = raw.get("output_dir")
    if not isinstance(output_dir, str) or not output_dir:
        raise ConfigError("must be a directory path", "output_dir")
    if "student" not in raw:
        raise ConfigError("missing section", "student")
    if distiller != "train" and "teacher" not in raw:
        raise ConfigError(f"distiller {distiller!r} needs a teacher", "teacher")
    if "data" not in raw:
        raise ConfigError("missing section", "data")
    teacher = _at("teacher", lambda d: ModelSpec.from_dict(d, role="teacher"), raw["teacher"]) \
        if raw.get("teacher") is not None else None
    student = _at("student", lambda d: ModelSpec.from_dict(d, role="student"), raw["student"])
    data = _at("data", DataConfig.from_dict, raw["data"])

    if not isinstance(raw.get("training") or {}, dict):
        raise ConfigError("must be a mapping", "training")
    training = dict(raw.get("training") or {})
    optim_keys = [f.name for f in dataclasses.fields(OptimConfig)]
    optim = _at("training", OptimConfig.from_dict, {k: training.pop(k) for k in list(training) if k in optim_keys})
    # One output directory per run: checkpoints and metrics go where run.yaml and final/ go.
    if training.setdefault("output_dir", output_dir) != output_dir:
        raise ConfigError(f"is {training['output_dir']!r} but the run's output_dir is {output_dir!r}; set only the "
                          "top-level output_dir", "training.output_dir")
    tc_keys = [f.name for f in dataclasses.fields(TrainingConfig)]
    _at("training", check_keys, training, tc_keys + optim_keys)
    evaluation = _at("evaluation", EvalConfig.from_dict, raw.get("evaluation") or {})
    if evaluation.steps is not None:  # the evaluation callback's schedule is the engine's callback_steps
        if training.setdefault("callback_steps", evaluation.steps) != evaluation.steps:
            raise ConfigError(f"is {training['callback_steps']!r} but evaluation.steps is {evaluation.steps}; "
                              "set only evaluation.steps", "training.callback_steps")
    train_cfg = _at("training", TrainingConfig.from_dict, training)

    dist = raw.get("distillation") or {}
    if distiller == "train" and dist:
        raise ConfigError("distiller 'train' has no teacher; remove the distillation section", "distillation")
    if not isinstance(dist, dict):
        raise ConfigError("must be a mapping", "distillation")
    _check_distillation(dist, distiller)
    return RunConfig(teacher, student, data, distiller, dist, train_cfg, optim, evaluation, plugins, output_dir,
                     raw)


def _check_distillation(dist: dict, distiller: str) -> None:
    """Validate now everything that does not need the models (layer-map presets need their depths)."""
    matches = dist.get("intermediate_matches")
    if distiller == "basic" and matches:
        raise ConfigError("the basic distiller has no intermediate matches; use distiller: general",
                          "distillation.intermediate_matches")
    if isinstance(matches, dict):
        _at("distillation.intermediate_matches", _check_preset, matches)
        _at("distillation", DistillationConfig.from_dict, {**dist, "intermediate_matches": None})
    else:
        _at("distillation", DistillationConfig.from_dict, dist)


PRESET_KEYS = ["preset", "feature", "loss", "weight", "proj"]


def _check_preset(spec: dict) -> None:
    from .layer_maps import LAYER_MAPS

    check_keys(spec, PRESET_KEYS)
    if spec.get("preset") not in LAYER_MAPS:
        raise ConfigError(f"must be one of {', '.join(LAYER_MAPS)}; got {spec.get('preset')!r}", "preset")


def _depth(model: torch.nn.Module) -> int:
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if not isinstance(n, int):
        raise ConfigError("a layer-map preset needs models whose config has num_hidden_layers",
                          "distillation.intermediate_matches")
    return n


def resolve_distillation(run: RunConfig, teacher: torch.nn.Module, student: torch.nn.Module) -> DistillationConfig:
    """The DistillationConfig, with a layer-map preset expanded for these models' depths."""
    from .layer_maps import expand_layer_map

    dist = dict(run.distillation)
    matches = dist.get("intermediate_matches")
    if isinstance(matches, dict):
        spec = dict(matches)
        preset = spec.pop("preset")
        try:
            dist["intermediate_matches"] = expand_layer_map(preset, _depth(teacher), _depth(student), **spec)
        except ConfigError as e:
            raise e.at("distillation.intermediate_matches") from None
    return _at("distillation", DistillationConfig.from_dict, dist)


# -- building -------------------------------------------------------------------------------------------
@dataclass
class Built:
    teacher: torch.nn.Module | None
    student: torch.nn.Module
    tokenizer: Any
    train_loader: Any
    eval_loader: Any
    distiller: Any
    optimizer: torch.optim.Optimizer
    scheduler_class: Any
    scheduler_args: dict
    distill_config: DistillationConfig | None
    notes: list[str]
    rank: int = 0


def _optimizer(model: torch.nn.Module, opt: dict) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": opt["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    if opt["name"] == "sgd":
        return torch.optim.SGD(groups, lr=opt["lr"])
    kw = {k: tuple(v) if k == "betas" else v for k, v in opt.items() if k in ("betas", "eps")}
    return torch.optim.AdamW(groups, lr=opt["lr"], **kw)


def _scheduler(sch: dict, total_steps: int):
    import transformers

    warmup = sch.get("warmup_steps", int(sch["warmup_ratio"] * total_steps))
    fn = {"linear": transformers.get_linear_schedule_with_warmup,
          "cosine": transformers.get_cosine_schedule_with_warmup,
          "constant": transformers.get_constant_schedule_with_warmup}[sch["name"]]
    args = {"num_warmup_steps": warmup}
    if sch["name"] != "constant":
        args["num_training_steps"] = total_steps
    return fn, args


def drop_example_index(batch: Any) -> Any:
    """Batches carry ``idx`` (the example index, for caches); models must not receive it."""
    return split_example_index(batch)[0]


def _data_errors(fn):
    """Run ``fn``; errors about a data field (``train_file``, ``text_column``) get the ``data.`` prefix."""
    from .data import DataConfig

    try:
        return fn()
    except ConfigError as e:
        fields = {f.name for f in dataclasses.fields(DataConfig)}
        if e.path and re.split(r"[.\[]", e.path)[0] in fields:
            raise e.at("data") from None
        raise


def build(run: RunConfig, *, with_optimizer: bool = True) -> Built:
    """Models, data, the distiller, the optimizer and the LR schedule for a run."""
    from . import BasicDistiller, BasicTrainer, GeneralDistiller
    from .data import augmenter_for, build_dataloaders
    from .models import build_model

    from .distillers.utils import seed_everything

    if run.training.seed is not None:  # randomly initialised weights and projections repeat under a seed
        seed_everything(run.training.seed)
    num_labels = len(run.data.labels) if run.data.labels else None
    notes: list[str] = []
    teacher = tok_T = None
    if run.teacher is not None:  # with distiller 'train', only a source for init_from_teacher
        teacher, tok_T = _at("teacher", build_model, run.teacher, num_labels)
    student, tok_S = _at("student", build_model, run.student, num_labels, teacher)
    report = getattr(student, "brewkit_init_report", None)
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
        augment = _at("data", augmenter_for, run.data.augment, teacher if teacher is not None else student,
                      tokenizer)
    train_loader, eval_loader = _data_errors(lambda: build_dataloaders(
        run.data, tokenizer, second, seed=run.training.seed or 0, device=run.training.device,
        num_replicas=world, rank=rank, augment=augment))
    if world > 1 and eval_loader is not None:  # rank 0 evaluates on the whole eval split
        eval_loader = _data_errors(lambda: build_dataloaders(
            run.data, tokenizer, second, seed=run.training.seed or 0, device=run.training.device))[1]
    o = run.optim
    accum = run.training.gradient_accumulation_steps
    total = o.num_steps or math.ceil(len(train_loader) / accum) * o.num_epochs
    dc = None
    if run.distiller == "train":
        distiller = BasicTrainer(run.training, student, None)
    else:
        dc = resolve_distillation(run, teacher, student)
        cls = GeneralDistiller if run.distiller == "general" else BasicDistiller
        distiller = cls(run.training, dc, teacher, student, None, None)
    optimizer = _optimizer(student, o.optimizer) if with_optimizer else None
    sched, sched_args = _scheduler(o.lr_scheduler, total)
    return Built(teacher, student, tokenizer, train_loader, eval_loader, distiller, optimizer, sched, sched_args,
                 dc, notes, rank)


# -- evaluation -----------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: str, metric: str = "accuracy") -> dict[str, float]:
    """Accuracy (or macro-F1) of a sequence classifier over ``loader``."""
    from .distillers.utils import move_to_device, split_batch

    was_training = model.training
    model.eval()
    preds, golds = [], []
    for batch in loader:
        _, batch_S, _ = split_batch(batch)
        batch_S = move_to_device(drop_example_index(batch_S), device)
        labels = batch_S.pop("labels")
        logits = model(**batch_S).logits
        preds.append(logits.argmax(-1).cpu())
        golds.append(labels.cpu())
    model.train(was_training)
    p, g = torch.cat(preds), torch.cat(golds)
    out = {"accuracy": float((p == g).float().mean())}
    if metric == "macro_f1":
        f1s = []
        for c in torch.unique(torch.cat([p, g])):
            tp = float(((p == c) & (g == c)).sum())
            prec = tp / max(float((p == c).sum()), 1)
            rec = tp / max(float((g == c).sum()), 1)
            f1s.append(0.0 if tp == 0 else 2 * prec * rec / (prec + rec))
        out["macro_f1"] = sum(f1s) / len(f1s)
    return out


# -- commands -------------------------------------------------------------------------------------------
def _count(model: torch.nn.Module | None) -> int:
    return sum(p.numel() for p in model.parameters()) if model is not None else 0


def validate_run(run: RunConfig) -> str:
    """Everything short of training: build, run one batch through both models and adaptors, print the plan."""
    from .distillers.utils import move_to_device

    b = build(run, with_optimizer=False)
    d = b.distiller
    batch = drop_example_index(next(iter(b.train_loader)))
    d._prepare_models()
    if run.training.seed is not None:
        torch.manual_seed(run.training.seed)  # dropout is active: a seed makes the printed losses repeatable
    try:
        with torch.no_grad():
            loss, terms = d.train_on_batch(move_to_device(batch, d.device), {})
    except AdaptorError as e:  # the models and the run file disagree: a mistake in the run file
        text = str(e)
        raise ConfigError(text if not text.startswith("intermediate_matches") else text.split(": ", 1)[1],
                          None if not text.startswith("intermediate_matches") else
                          "distillation." + text.split(": ", 1)[0]) from None
    finally:
        d._restore_teacher_flags()
    lines = [f"run: {run.distiller} distiller, output_dir {run.output_dir}"]
    if b.teacher is not None:
        lines.append(f"teacher: {_describe(b.teacher)}")
    lines.append(f"student: {_describe(b.student)}")
    if b.teacher is not None:
        lines.append(f"compression: {_count(b.student) / max(_count(b.teacher), 1):.1%} of the teacher's parameters")
    lines += [f"  {n}" for n in b.notes]
    lines.append(f"data: {len(b.train_loader.dataset)} train / "
                 f"{len(b.eval_loader.dataset) if b.eval_loader is not None else 0} eval examples, "
                 f"{len(b.train_loader)} batches per epoch")
    aug = run.data.augment
    if aug is not None:
        lines.append(f"augmentation: {aug.copies} altered cop{'y' if aug.copies == 1 else 'ies'} of each training "
                     f"row (word replacement p={aug.replace_prob:g} from {aug.neighbours} embedding neighbours)")
    lines.append("loss terms:")
    dc = b.distill_config
    if dc is None:
        lines.append("  the model's own loss (supervised training)")
    else:
        if b.teacher is not None:
            t2 = " x tau^2" if dc.kd_temperature_squared else ""
            lines.append(f"  kd: {dc.kd_loss_type} at temperature {dc.temperature}"
                         f"{'' if dc.temperature_scheduler == 'none' else f' ({dc.temperature_scheduler})'}"
                         f"{t2}, weight {dc.kd_loss_weight}"
                         f"{'' if dc.kd_loss_weight_scheduler == 'none' else f' ({dc.kd_loss_weight_scheduler})'}")
        lines.append(f"  hard labels: weight {dc.hard_label_weight}")
        for i, (m, proj) in enumerate(zip(dc.intermediate_matches or [], getattr(d, "projs", []))):
            p = "" if proj is None else f", proj {m.proj[0]} {m.proj[1]}->{m.proj[2]} ({_count(proj)} params)"
            lines.append(f"  match[{i}]: {m.feature} S{m.layer_S} <- T{m.layer_T} {m.loss} weight {m.weight}{p}")
    if b.eval_loader is not None:
        lines.append(run.evaluation.describe())
    lines.append("first batch: " + ", ".join([f"loss={float(loss):.4f}"] +
                                             [f"{k}={float(v):.4f}" for k, v in terms.items()]))
    lines.append("ok: the run file is valid")
    return "\n".join(lines)


def _describe(model: torch.nn.Module) -> str:
    try:
        from .models import describe_model

        return describe_model(model)
    except ImportError:
        return f"{type(model).__name__}, {_count(model):,} parameters"


def train_run(run: RunConfig) -> dict:
    """Train as the run file says; leave the resolved config, metrics, checkpoints and ``final/`` behind."""
    from .checkpoint import write_json

    t0 = time.perf_counter()
    b = build(run)
    main = b.rank == 0  # under torchrun only rank 0 writes files and evaluates
    os.makedirs(run.output_dir, exist_ok=True)
    if main:
        b.tokenizer.save_pretrained(os.path.join(run.output_dir, "tokenizer"))  # for `brewkit eval` on checkpoints
    resolved = copy.deepcopy(run.source)
    if b.distill_config is not None:
        resolved["distillation"] = b.distill_config.to_dict()
    resolved["training"] = {**run.training.to_dict(), **run.optim.to_dict()}
    del resolved["training"]["output_dir"]  # the top-level output_dir says it (and --set output_dir=... works)
    if main:
        with open(os.path.join(run.output_dir, "run.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(resolved, f, sort_keys=False)
    history: list[dict] = []
    metrics_path = os.path.join(run.output_dir, "metrics.jsonl")

    def callback(model, step):
        if b.eval_loader is None or not main:
            return
        result = {"step": step, **{f"eval_{k}": v for k, v in
                                   evaluate(model, b.eval_loader, run.training.device, run.evaluation.metric).items()}}
        history.append(result)
        with open(metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(result) + "\n")

    o = run.optim
    keep_index = b.distill_config is not None and b.distill_config.teacher_cache != "none"  # the engine takes it
    b.distiller.train(b.optimizer, b.train_loader, num_epochs=o.num_epochs, num_steps=o.num_steps,
                      scheduler_class=b.scheduler_class, scheduler_args=b.scheduler_args,
                      max_grad_norm=o.max_grad_norm, callback=callback,
                      batch_postprocessor=None if keep_index else drop_example_index)
    final = os.path.join(run.output_dir, "final")
    if not main:
        return {"rank": b.rank, "steps": b.distiller.global_step}
    if b.distiller.interrupted:  # Ctrl-C: the checkpoint is written; a final/ now would pass for a finished run
        from .checkpoint import latest_checkpoint

        summary = {"output_dir": run.output_dir, "interrupted": True, "steps": b.distiller.global_step,
                   "checkpoint": latest_checkpoint(run.output_dir),
                   "resume": "run again with --set training.resume_from_checkpoint=true",
                   "train_seconds": round(time.perf_counter() - t0, 1)}
        write_json(os.path.join(run.output_dir, "summary.json"), summary)
        return summary
    b.student.save_pretrained(final, safe_serialization=True)
    b.tokenizer.save_pretrained(final)
    summary = {"output_dir": run.output_dir, "final_model": final, "steps": b.distiller.global_step,
               "student_parameters": _count(b.student), "teacher_parameters": _count(b.teacher),
               "train_seconds": round(time.perf_counter() - t0, 1)}
    if b.eval_loader is not None:
        if history and history[-1]["step"] == b.distiller.global_step:  # evaluated at the last checkpoint
            final_eval = {k: v for k, v in history[-1].items() if k != "step"}
        else:
            final_eval = {f"eval_{k}": v for k, v in
                          evaluate(b.student, b.eval_loader, run.training.device, run.evaluation.metric).items()}
        summary.update(final_eval)
        summary["eval_history"] = history
    write_json(os.path.join(run.output_dir, "summary.json"), summary)
    return summary


def eval_run(run: RunConfig, checkpoint: str) -> dict:
    """Evaluate a saved student (``final/`` or a ``checkpoint-N`` directory) on the run's eval split."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .data import build_dataloaders

    if not os.path.isfile(os.path.join(checkpoint, "config.json")):
        raise ConfigError(f"{checkpoint} holds no saved model (config.json)", "--checkpoint")
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint, local_files_only=True,
                                                               attn_implementation="eager")
    candidates = [checkpoint, os.path.join(run.output_dir, "tokenizer"), os.path.join(run.output_dir, "final")]
    tok_dir = next((c for c in candidates if os.path.isfile(os.path.join(c, "tokenizer_config.json"))), None)
    if tok_dir is not None:
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    else:  # the run file's own tokenizer (the teacher's, as in training)
        from .models import load_tokenizer

        section = "teacher" if run.teacher is not None else "student"
        spec = run.teacher if run.teacher is not None else run.student
        tokenizer = _at(section, load_tokenizer, spec.tokenizer or spec.path)
    _, eval_loader = _data_errors(lambda: build_dataloaders(run.data, tokenizer, None, seed=run.training.seed or 0,
                                                            device=run.training.device))
    if eval_loader is None:
        raise ConfigError("the run has no eval split", "data")
    model.to(run.training.device)
    return {"checkpoint": checkpoint,
            **{f"eval_{k}": v for k, v in evaluate(model, eval_loader, run.training.device,
                                                   run.evaluation.metric).items()}}


def format_summary(summary: dict) -> str:
    return "\n".join(f"{k}: {v}" for k, v in summary.items() if k != "eval_history")
