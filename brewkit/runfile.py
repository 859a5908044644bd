"""The run file: its sections as plain config objects, ``--set`` overrides, and :func:`load_run`.

A run file has these sections (see ``configs/`` for complete examples)::

    task:         causal_lm        # sequence_classification (default) | token_classification (brewkit.tasks)
    teacher:      {path: DIR | pkg://DIST/path, num_labels: 2}     # or config: {...} / builder: NAME
    student:      {init_from_teacher: {layers: [0, 2, 4]}}         # or path / config / builder
    data:         {train_file: ..., text_column: text, label_column: label, max_length: 64, ...}
    distiller:    general          # general | basic | train (plain supervised training, no teacher)
    distillation: {temperature: 4, hard_label_weight: 1, intermediate_matches: [...] or {preset: ...}}
    training:     {num_train_epochs: 3, learning_rate: 1e-4, warmup_ratio: 0.1, ...TrainingConfig}
                  # transformers.TrainingArguments names, or brewkit's: {num_epochs: 3, optimizer: {lr: 1e-4}, ...}
    evaluation:   {metric: accuracy, early_stopping_patience: 3}
    plugins:      [my_package.my_losses]     # imported first, so their registrations exist
    output_dir:   runs/my_run

Every mistake is a :class:`ConfigError` whose path points into the file (``distillation.temperature``).
Loading validates everything that does not need the models; a layer-map preset is expanded when the models
are built (:func:`brewkit.build.resolve_distillation`), because it needs their depths.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml

from .configs import DistillationConfig, TrainingConfig
from .data import DataConfig
from .errors import ConfigError, brief
from .evaluation import METRICS, produced_metrics
from .hf_names import NAMES as HF_NAMES
from .hf_names import renamed, translate
from .layer_maps import LAYER_MAPS
from .models import HEADS, ModelSpec
from .tasks import DEFAULT_TASK, TASKS, get_task
from .validation import ConfigBase, check_bool, check_int, check_keys, check_number, safe_load
from .yamlio import load_file

SECTIONS = ["task", "teacher", "student", "data", "distiller", "distillation", "training", "evaluation", "plugins",
            "output_dir"]
#: ``training.seed`` of a run file that gives none (``TrainingConfig.seed`` defaults to None: no reseeding).
DEFAULT_SEED = 42
DISTILLERS = ["general", "basic", "train"]
PRESET_KEYS = ["preset", "feature", "loss", "weight", "proj"]
"""The keys of ``distillation.intermediate_matches`` when it is a layer-map preset rather than a list."""

R = TypeVar("R")

#: ``training.optimizer.name`` (transformers' ``optim``): what builds each (:func:`brewkit.build.build_optimizer`).
OPTIMIZERS = {
    "adamw": "torch.optim.AdamW (brewkit's name for adamw_torch)",
    "adamw_torch": "torch.optim.AdamW",
    "adamw_torch_fused": "torch.optim.AdamW(fused=True)",
    "sgd": "torch.optim.SGD",
    "adagrad": "torch.optim.Adagrad",
    "rmsprop": "torch.optim.RMSprop",
    "adafactor": "transformers.Adafactor(scale_parameter=False, relative_step=False), as transformers.Trainer",
}
#: The Adam-type optimizers: they take ``betas`` and ``eps`` (transformers' ``adam_beta1/2``, ``adam_epsilon``).
ADAM_TYPE = ("adamw", "adamw_torch", "adamw_torch_fused")
#: Schedules that follow an evaluation metric: stepped after each evaluation, not after each optimizer step.
METRIC_SCHEDULES = ("reduce_lr_on_plateau", "greedy")


def lr_schedule_names() -> list[str]:
    """``training.lr_scheduler.name`` (transformers' ``lr_scheduler_type``): every name of
    ``transformers.SchedulerType``, which ``transformers.get_scheduler`` builds. brewkit's ``constant`` is
    constant after its warm-up (transformers' ``constant_with_warmup``; the same with no warm-up)."""
    from transformers import SchedulerType

    return [s.value for s in SchedulerType]


def check_schedule_options(name: str, kwargs: dict) -> None:
    """Build schedule ``name`` with ``kwargs`` once, on a throwaway optimizer, so that a missing or unknown
    option (``cosine_with_min_lr`` needs ``min_lr`` or ``min_lr_rate``) is an error now, not at the first step."""
    import torch
    import transformers

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        transformers.get_scheduler(name, opt, num_warmup_steps=0, num_training_steps=1_000_000,
                                   scheduler_specific_kwargs=dict(kwargs))
    except (TypeError, ValueError) as e:
        where = "lr_scheduler.kwargs" if kwargs else "lr_scheduler.name"  # options missing: the schedule's
        raise ConfigError(f"schedule {name!r} with {brief(kwargs)}: {one_line(e)}", where) from None


def in_section(prefix: str, fn: Callable[..., R], *args: Any) -> R:
    """``fn(*args)``, with ``prefix`` put in front of the path of a :class:`ConfigError` it raises."""
    try:
        return fn(*args)
    except ConfigError as e:
        raise e.at(prefix) from None


def one_line(e: BaseException) -> str:
    """``str(e)`` with its whitespace (a YAML error's newlines) folded into single spaces."""
    return " ".join(str(e).split())


# -- the sections that are not library configs -----------------------------------------------------------
@dataclass
class OptimConfig(ConfigBase):
    """The ``training`` keys that are not TrainingConfig fields: how long, the optimizer, the LR schedule."""

    num_epochs: int | None = None
    num_steps: int | None = None
    max_grad_norm: float = 1.0
    optimizer: dict = field(default_factory=lambda: {"name": "adamw", "lr": 5e-5, "weight_decay": 0.01})
    lr_scheduler: dict = field(default_factory=lambda: {"name": "linear", "warmup_ratio": 0.0})
    overwrite_output_dir: bool = False  # replace a finished or unfinished run in output_dir (see run_directory.py)

    def __post_init__(self) -> None:
        check_bool(self.overwrite_output_dir, "overwrite_output_dir")
        if self.num_epochs is None and self.num_steps is None:
            raise ConfigError("give num_epochs or num_steps", "num_epochs")
        check_int(self.num_epochs, "num_epochs", minimum=1, allow_none=True)
        check_int(self.num_steps, "num_steps", minimum=1, allow_none=True)
        check_number(self.max_grad_norm, "max_grad_norm")
        check_keys(self.optimizer or {}, ["name", "lr", "weight_decay", "betas", "eps"], "optimizer")
        opt = {"name": "adamw", "lr": 5e-5, "weight_decay": 0.01, **(self.optimizer or {})}
        if opt["name"] not in OPTIMIZERS:
            from transformers.training_args import OptimizerNames

            others = [n for n in OPTIMIZERS if n not in ("adamw", "sgd")]
            if opt["name"] in [o.value for o in OptimizerNames]:
                raise ConfigError(f"{opt['name']!r} is a transformers optimizer that brewkit does not build (it needs "
                                  f"another package or transformers.Trainer itself); brewkit builds "
                                  f"{', '.join(OPTIMIZERS)}", "optimizer.name")
            raise ConfigError(f"must be 'adamw' or 'sgd' (brewkit's names) or one of transformers' names "
                              f"{', '.join(others)}; got {brief(opt['name'])}", "optimizer.name")
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
        check_keys(self.lr_scheduler or {}, ["name", "warmup_ratio", "warmup_steps", "kwargs"], "lr_scheduler")
        sch = {"name": "linear", "warmup_ratio": 0.0, **(self.lr_scheduler or {})}
        names = lr_schedule_names()
        if sch["name"] not in names:
            raise ConfigError(f"must be one of {', '.join(names)} (transformers.get_scheduler's names); got "
                              f"{brief(sch['name'])}", "lr_scheduler.name")
        r = sch["warmup_ratio"]
        if not (isinstance(r, (int, float)) and not isinstance(r, bool) and 0 <= r < 1):
            raise ConfigError(f"must be a number in [0, 1), got {r!r}", "lr_scheduler.warmup_ratio")
        if "warmup_steps" in sch:
            check_int(sch["warmup_steps"], "lr_scheduler.warmup_steps", minimum=0)
        if "kwargs" in sch:
            if sch["kwargs"] is None:
                sch["kwargs"] = {}
            if not isinstance(sch["kwargs"], dict):
                raise ConfigError(f"must be a mapping of the schedule's options, got {brief(sch['kwargs'])}",
                                  "lr_scheduler.kwargs")
        check_schedule_options(sch["name"], sch.get("kwargs") or {})
        self.lr_scheduler = sch


@dataclass
class EvalConfig(ConfigBase):
    """Evaluation on the eval split: at every checkpoint (TextBrewer's callback schedule), or every ``steps``
    optimizer steps, and at the end."""

    metric: str = "accuracy"
    steps: int | None = None
    early_stopping_patience: int | None = None  # transformers.EarlyStoppingCallback, from the run file
    early_stopping_threshold: float | None = None
    metric_for_best_model: str | None = None  # default eval_{metric}; tracks best_metric in trainer_state.json
    greater_is_better: bool | None = None  # default: True (false for a metric whose name ends in 'loss')

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"must be one of {', '.join(METRICS)}; got {self.metric!r}", "metric")
        self.steps = check_int(self.steps, "steps", minimum=1, allow_none=True)
        self.early_stopping_patience = check_int(self.early_stopping_patience, "early_stopping_patience", minimum=1,
                                                 allow_none=True)
        if self.early_stopping_threshold is not None:
            self.early_stopping_threshold = check_number(self.early_stopping_threshold, "early_stopping_threshold")
            if self.early_stopping_threshold < 0:
                raise ConfigError(f"must be a number >= 0, got {self.early_stopping_threshold}",
                                  "early_stopping_threshold")
            if self.early_stopping_patience is None:
                raise ConfigError("needs early_stopping_patience (how many evaluations without improvement stop "
                                  "the run)", "early_stopping_threshold")
        m = self.metric_for_best_model
        if m is not None:
            produced = produced_metrics(self.metric)
            if not isinstance(m, str) or m.removeprefix("eval_") not in produced:
                raise ConfigError(f"must be a metric the evaluation gives ({', '.join(f'eval_{p}' for p in produced)}"
                                  f"; without the eval_ prefix too), got {brief(m)}", "metric_for_best_model")
        if self.greater_is_better is not None:
            check_bool(self.greater_is_better, "greater_is_better")

    @property
    def best_metric_key(self) -> str | None:
        """The metric ``best_metric`` follows (``eval_accuracy``), or None when neither early stopping nor
        ``metric_for_best_model`` asks for one."""
        if self.metric_for_best_model is None and self.early_stopping_patience is None:
            return None
        m = self.metric_for_best_model or self.metric
        return m if m.startswith("eval_") else f"eval_{m}"

    @property
    def higher_is_better(self) -> bool:
        """``greater_is_better`` as transformers resolves it: given, or whether the metric is not a loss."""
        if self.greater_is_better is not None:
            return self.greater_is_better
        return not (self.best_metric_key or "").endswith(("loss", "perplexity"))

    def describe(self) -> str:
        when = "at each checkpoint" if self.steps is None else f"every {self.steps} steps"
        text = f"evaluation: {self.metric} on the eval split {when} and at the end"
        if self.early_stopping_patience is not None:
            threshold = self.early_stopping_threshold or 0.0
            text += (f"; early stopping after {self.early_stopping_patience} evaluation(s) without "
                     f"{self.best_metric_key} {'rising' if self.higher_is_better else 'falling'}"
                     + (f" by more than {threshold:g}" if threshold else ""))
        return text


@dataclass
class RunConfig:
    """A loaded run file: one validated object per section.

    ``distillation`` stays a dict until the models exist (a layer-map preset needs their depths); ``source``
    is the file after ``--set`` overrides, for the resolved copy written next to the results.
    """

    teacher: ModelSpec | None
    student: ModelSpec
    data: DataConfig
    distiller: str
    distillation: dict
    training: TrainingConfig
    optim: OptimConfig
    evaluation: EvalConfig
    plugins: list[str]
    output_dir: str
    source: dict
    task: str = DEFAULT_TASK  # the run's task (brewkit.tasks.TASKS): teacher.task == student.task == task
    #: ``teacher: {store: DIR}``: train from a captured store (``teacher`` is then None; brewkit.offline_store)
    teacher_store: Any = None
    #: ``teacher.capture``: the settings of ``brewkit capture`` (a :class:`brewkit.offline_store.CaptureConfig`)
    capture: Any = None


# -- --set overrides --------------------------------------------------------------------------------------
_INDEX = re.compile(r"^(\w+)\[(\d+)\]$")


def apply_override(d: dict, assignment: str) -> None:
    """Apply ``a.b[1].c=value`` (value in YAML syntax) to the nested dict ``d``, in place.

    Missing mappings on the way are created; a list index must exist. Errors are at ``--set``.
    """
    if "=" not in assignment:
        raise ConfigError(f"expected KEY.PATH=VALUE, got {assignment!r}", "--set")
    key, raw = assignment.split("=", 1)
    try:
        value = safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"value of {key!r} is not valid YAML: {one_line(e)}", "--set") from None
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


# -- loading ------------------------------------------------------------------------------------------------
def read_run_file(path_or_dict: str | os.PathLike | dict) -> dict:
    """The run file as a dict (a copy when given a dict); safe YAML with YAML 1.2 floats."""
    if isinstance(path_or_dict, dict):
        raw = copy.deepcopy(path_or_dict)
    elif not isinstance(path_or_dict, (str, os.PathLike)):
        raise ConfigError(f"a run file must be a mapping of sections, got {type(path_or_dict).__name__}",
                          "(top level)")
    else:
        if not os.path.isfile(path_or_dict):
            raise ConfigError(f"no such run file: {path_or_dict}")
        raw = load_file(path_or_dict)  # names the file, line and column of a YAML error, a duplicate key, ...
    if not isinstance(raw, dict):
        raise ConfigError("a run file must be a mapping of sections", "(top level)")
    return raw


def import_plugins(plugins: Any) -> list[str]:
    """Import the ``plugins:`` modules (so that their registrations exist); returns their names."""
    plugins = plugins or []
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError("must be a list of module names", "plugins")
    for i, name in enumerate(plugins):
        try:
            importlib.import_module(name)
        except Exception as e:  # a plugin's SyntaxError or clashing registration names the plugin too
            raise ConfigError(f"cannot import {name!r}: {type(e).__name__}: {one_line(e)}", f"plugins[{i}]") from None
    return plugins


def load_run(path_or_dict: str | os.PathLike | dict, overrides: Sequence[str] = ()) -> RunConfig:
    """Read (safe YAML, with YAML 1.2 floats), apply ``--set`` overrides, rewrite transformers.TrainingArguments
    names into brewkit's (:mod:`brewkit.hf_names`), import plugins, validate each section. An error about a
    value given under a TrainingArguments name names that key."""
    raw = read_run_file(path_or_dict)
    for o in overrides:
        apply_override(raw, o)
    check_keys(raw, SECTIONS)
    origins = translate(raw)
    try:
        return run_config(raw)
    except ConfigError as e:
        raise renamed(e, origins) from None


def run_config(raw: dict) -> RunConfig:
    """The :class:`RunConfig` of a run-file dict in brewkit's names (``--set`` applied)."""
    plugins = import_plugins(raw.get("plugins"))

    distiller = raw.get("distiller", "general")
    if distiller not in DISTILLERS:
        raise ConfigError(f"must be one of {', '.join(DISTILLERS)}; got {distiller!r}", "distiller")
    output_dir = raw.get("output_dir")
    if not isinstance(output_dir, str) or not output_dir:
        raise ConfigError("must be a directory path", "output_dir")
    output_dir = os.path.expanduser(output_dir)
    if isinstance(raw.get("training"), dict) and isinstance(raw["training"].get("output_dir"), str):
        raw["training"]["output_dir"] = os.path.expanduser(raw["training"]["output_dir"])
    if "student" not in raw:
        raise ConfigError("missing section", "student")
    if distiller != "train" and "teacher" not in raw:
        raise ConfigError(f"distiller {distiller!r} needs a teacher", "teacher")
    if "data" not in raw:
        raise ConfigError("missing section", "data")
    task = resolve_task(raw)

    def spec(d: Any, role: str) -> ModelSpec:
        return ModelSpec.from_dict({**d, "task": task} if isinstance(d, dict) else d, role=role)

    teacher, store, capture = teacher_section(raw.get("teacher"), lambda d: in_section("teacher", spec, d, "teacher"))
    student = in_section("student", spec, raw["student"], "student")
    if store is not None:
        check_store_run(store, student, distiller, raw)
    data = in_section("data", DataConfig.from_dict, raw["data"])
    data = in_section("data", get_task(task).check_data, data, raw["data"])
    training, optim, evaluation = load_training(with_task_metric(raw, task), output_dir)
    task_evaluation(evaluation, task, distiller)

    dist = raw.get("distillation") or {}
    if distiller == "train" and dist:
        raise ConfigError("distiller 'train' has no teacher; remove the distillation section", "distillation")
    if not isinstance(dist, dict):
        raise ConfigError("must be a mapping", "distillation")
    check_distillation(dist, distiller)
    return RunConfig(teacher, student, data, distiller, dist, training, optim, evaluation, plugins, output_dir,
                     raw, task, store, capture)


def teacher_section(section: Any, parse: Callable[[dict], ModelSpec]) -> tuple[ModelSpec | None, Any, Any]:
    """``(teacher model spec, store spec, capture settings)`` of the ``teacher`` section: with ``store`` the run
    trains from a captured store and loads no teacher (:class:`brewkit.offline_store.StoreSpec`); ``capture``
    holds ``brewkit capture``'s settings (:class:`brewkit.offline_store.CaptureConfig`)."""
    from .offline_store import capture_config, store_spec

    if section is None:
        return None, None, None
    if isinstance(section, dict) and section.get("store") is not None:
        return None, store_spec(section, None, parse), None
    if isinstance(section, dict) and ("capture" in section or "force" in section or "store" in section):
        if "force" in section:
            raise ConfigError("is for a run from a captured store (teacher.store); remove it", "teacher.force")
        capture = capture_config(section["capture"]) if section.get("capture") is not None else None
        rest = {k: v for k, v in section.items() if k not in ("capture", "store")}
        return parse(rest), None, capture
    return parse(section), None, None


def check_store_run(store: Any, student: ModelSpec, distiller: str, raw: dict) -> None:
    """What a run from a captured store cannot do, named in the run file (a student copied from the teacher's
    layers, the supervised distiller, agreement with the teacher)."""
    if distiller == "train":
        raise ConfigError("distiller 'train' has no teacher; remove teacher.store", "teacher.store")
    if student.init_from_teacher is not None:
        raise ConfigError("copies the teacher's layers, but a run from a teacher store loads no teacher; give the "
                          "student a path or config", "student.init_from_teacher")
    evaluation = raw.get("evaluation") or {}
    if isinstance(evaluation, dict) and evaluation.get("metric") == "teacher_agreement":
        raise ConfigError("compares the student with the teacher, which a run from a teacher store does not load; "
                          "use perplexity", "evaluation.metric")


def resolve_task(raw: dict) -> str:
    """The run's task: the top-level ``task``, else the one ``teacher.task`` / ``student.task`` name (they must
    agree, and agree with a top-level one), else ``sequence_classification``. It must be a training task
    (:data:`brewkit.tasks.TASKS`); ``masked_lm`` / ``base`` only build models."""
    named = {role: raw[role]["task"] for role in ("teacher", "student")
             if isinstance(raw.get(role), dict) and raw[role].get("task") is not None}
    top = raw.get("task")
    if top is not None:
        where = "task"
        for role, t in named.items():
            if t != top:
                raise ConfigError(f"is {brief(t)} but the run's task is {brief(top)}; teacher and student train for "
                                  "one task (set it once, at the top level)", f"{role}.task")
    elif len(set(map(str, named.values()))) > 1:
        raise ConfigError(f"is {brief(named['student'])} but teacher.task is {brief(named['teacher'])}; teacher and "
                          "student train for one task (set it once, at the top level: task: ...)", "student.task")
    else:
        where = next((f"{role}.task" for role in ("student", "teacher") if role in named), "task")
        top = named.get("student", named.get("teacher", DEFAULT_TASK))
    if not isinstance(top, str) or top not in TASKS:
        extra = " (it builds a model, but brewkit has no training task for it)" if top in HEADS else ""
        raise ConfigError(f"must be one of the tasks {', '.join(TASKS)}{extra}; got {brief(top)}. A new task is "
                          "registered with @brewkit.tasks.TASKS.register (docs/tasks.md) in a plugin", where)
    return top


def with_task_metric(raw: dict, task: str) -> dict:
    """``raw`` (not changed) with ``evaluation.metric`` set to the task's default metric when it names none."""
    section = raw.get("evaluation")
    if section is None:
        section = {}
    if not isinstance(section, dict) or section.get("metric") is not None:
        return raw
    return {**raw, "evaluation": {**section, "metric": get_task(task).metrics[0]}}


def task_evaluation(evaluation: EvalConfig, task: str, distiller: str) -> None:
    """A metric of another task (or ``teacher_agreement`` without a teacher) is a ConfigError at
    ``evaluation.metric``."""
    metrics = get_task(task).metrics
    if evaluation.metric not in metrics:
        raise ConfigError(f"task {task} is evaluated by {', '.join(metrics)}; got {brief(evaluation.metric)}",
                          "evaluation.metric")
    if evaluation.metric == "teacher_agreement" and distiller == "train":
        raise ConfigError("teacher_agreement compares the student with the teacher, and distiller 'train' has none; "
                          f"use {metrics[0]}", "evaluation.metric")


def load_training(raw: dict, output_dir: str) -> tuple[TrainingConfig, OptimConfig, EvalConfig]:
    """The ``training`` section split into its TrainingConfig and OptimConfig keys, and ``evaluation``.

    The run has one output directory (``training.output_dir`` may only repeat it), and one evaluation
    schedule (``evaluation.steps`` is the engine's ``callback_steps``).
    """
    if not isinstance(raw.get("training") or {}, dict):
        raise ConfigError("must be a mapping", "training")
    training = dict(raw.get("training") or {})
    optim_keys = [f.name for f in dataclasses.fields(OptimConfig)]
    optim = in_section("training", OptimConfig.from_dict,
                       {k: training.pop(k) for k in list(training) if k in optim_keys})
    if training.setdefault("output_dir", output_dir) != output_dir:
        raise ConfigError(f"is {training['output_dir']!r} but the run's output_dir is {output_dir!r}; set only the "
                          "top-level output_dir", "training.output_dir")
    tc_keys = [f.name for f in dataclasses.fields(TrainingConfig)]
    hf_only = [k for k in HF_NAMES if k not in tc_keys + optim_keys]  # translated already; listed for the hint
    in_section("training", check_keys, training, tc_keys + optim_keys + hf_only)
    evaluation = in_section("evaluation", EvalConfig.from_dict, raw.get("evaluation") or {})
    if evaluation.steps is not None:
        if training.setdefault("callback_steps", evaluation.steps) != evaluation.steps:
            raise ConfigError(f"is {training['callback_steps']!r} but evaluation.steps is {evaluation.steps}; "
                              "set only evaluation.steps", "training.callback_steps")
    training.setdefault("seed", DEFAULT_SEED)  # run files are seeded; the Python API reseeds only when told
    return in_section("training", TrainingConfig.from_dict, training), optim, evaluation


def check_distillation(dist: dict, distiller: str) -> None:
    """Validate the ``distillation`` section as far as possible without the models (a layer-map preset is
    checked for its keys and name; it is expanded once the models' depths are known)."""
    matches = dist.get("intermediate_matches")
    if distiller == "basic" and matches:
        raise ConfigError("the basic distiller has no intermediate matches; use distiller: general",
                          "distillation.intermediate_matches")
    if isinstance(matches, dict):
        in_section("distillation.intermediate_matches", check_preset, matches)
        in_section("distillation", DistillationConfig.from_dict, {**dist, "intermediate_matches": None})
    else:
        in_section("distillation", DistillationConfig.from_dict, dist)


def check_preset(spec: dict) -> None:
    """A layer-map preset mapping: only :data:`PRESET_KEYS`, and a registered ``preset`` name."""
    check_keys(spec, PRESET_KEYS)
    if spec.get("preset") not in LAYER_MAPS:
        raise ConfigError(f"must be one of {', '.join(LAYER_MAPS)}; got {spec.get('preset')!r}", "preset")
