"""Building a run: from a :class:`~brewkit.runfile.RunConfig` to models, data loaders, the distiller, the
optimizer and the LR schedule (:func:`build`).

The order matters and is fixed here: seed (so random weights and projections repeat), the teacher, the student
(which may copy teacher layers), the tokenizer, the process group under ``torchrun`` (set up once, here; the
distiller's ``train()`` finds it), the loaders (sharded per rank), the distiller, and the training plan that the
LR schedule's length comes from.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import transformers
from torch import nn

from . import distributed
from .configs import DistillationConfig
from .data import DataConfig, augmenter_for, build_dataloaders, tokenizer_fingerprint
from .distillers import BasicDistiller, BasicTrainer, GeneralDistiller
from .engine.plan import TrainPlan
from .engine.rng import seed_everything
from .errors import ConfigError, brief
from .layer_maps import expand_layer_map
from .models import ModelSpec, build_model, build_model_with_report
from .runfile import ADAM_TYPE, METRIC_SCHEDULES, RunConfig, in_section
from .tasks import get_task

R = TypeVar("R")

#: ``training.optimizer.name`` -> what builds it: what transformers.Trainer builds for each ``optim`` name
#: (``transformers/trainer_optimizer.py``), here over brewkit's parameter groups.
OPTIMIZER_CLASSES: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "adamw_torch": torch.optim.AdamW,
    "adamw_torch_fused": functools.partial(torch.optim.AdamW, fused=True),
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "rmsprop": torch.optim.RMSprop,
    "adafactor": functools.partial(transformers.Adafactor, scale_parameter=False, relative_step=False),
}


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
    task: Any = None  # the run's brewkit.tasks.Task


def build_optimizer(model: torch.nn.Module, opt: dict) -> torch.optim.Optimizer:
    """The optimizer ``opt["name"]`` (:data:`OPTIMIZER_CLASSES`) over the trainable parameters of ``model``, at
    ``lr``; ``opt`` is ``OptimConfig.optimizer``. ``betas`` / ``eps`` (transformers' ``adam_beta1/2``,
    ``adam_epsilon``) go to the Adam-type optimizers only, as in transformers; unset, they are torch's defaults.

    Biases and norm weights (1-D tensors, or names containing ``norm``) get no weight decay.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": opt["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    adam = opt["name"] in ADAM_TYPE
    kw = {k: tuple(v) if k == "betas" else v for k, v in opt.items() if adam and k in ("betas", "eps")}
    return OPTIMIZER_CLASSES[opt["name"]](groups, lr=opt["lr"], **kw)


class MetricSchedule:
    """A schedule that follows an evaluation metric (``reduce_lr_on_plateau``, ``greedy``): the engine's step()
    after each optimizer step does nothing; :meth:`step` with the metric (after each evaluation, as
    transformers.Trainer does) steps the wrapped scheduler. Its state is the wrapped scheduler's."""

    def __init__(self, scheduler: Any):
        self.scheduler = scheduler

    def step(self, metric: float | None = None) -> None:
        if metric is not None:
            self.scheduler.step(metric)

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


class HFSchedule:
    """``scheduler_class`` for ``train()``: ``HFSchedule(name, kwargs)(optimizer, num_warmup_steps=...,
    num_training_steps=...)`` is ``transformers.get_scheduler(name, ...)``, with ``kwargs`` as its
    ``scheduler_specific_kwargs``. brewkit's ``constant`` is transformers' ``constant_with_warmup`` (constant
    after its warm-up; with no warm-up the same as transformers' ``constant``). A metric-driven schedule comes
    wrapped in a :class:`MetricSchedule`. The last one built is ``built``."""

    def __init__(self, name: str, kwargs: dict | None = None, *, metric_mode: str | None = None):
        self.name, self.kwargs = name, dict(kwargs or {})
        self.__name__ = f"get_scheduler({name!r})"
        if name in METRIC_SCHEDULES and metric_mode is not None:
            self.kwargs.setdefault("mode", metric_mode)  # transformers' 'min' suits a loss, not an accuracy
        self.built: Any = None

    def __call__(self, optimizer: torch.optim.Optimizer, num_warmup_steps: int | None = None,
                 num_training_steps: int | None = None) -> Any:
        name = "constant_with_warmup" if self.name == "constant" else self.name
        sched = transformers.get_scheduler(name, optimizer, num_warmup_steps=num_warmup_steps,
                                           num_training_steps=num_training_steps,
                                           scheduler_specific_kwargs=dict(self.kwargs))
        self.built = MetricSchedule(sched) if self.name in METRIC_SCHEDULES else sched
        return self.built

    @property
    def follows_metric(self) -> bool:
        return self.name in METRIC_SCHEDULES


def warmup_steps(sch: dict, total_steps: int) -> int:
    """Warm-up steps of ``OptimConfig.lr_scheduler`` over ``total_steps``: ``warmup_steps``, else
    ``int(warmup_ratio * total_steps)`` (rounded down; transformers rounds up)."""
    return sch.get("warmup_steps", int(sch["warmup_ratio"] * total_steps))


def lr_schedule(sch: dict, total_steps: int, *, metric_mode: str | None = None) -> tuple[HFSchedule, dict]:
    """``(scheduler_class, scheduler_args)`` for ``train()``: ``transformers.get_scheduler`` of ``sch["name"]``
    (:class:`HFSchedule`) with the warm-up of :func:`warmup_steps`, over ``total_steps``.

    ``sch`` is ``OptimConfig.lr_scheduler``; ``kwargs`` are the schedule's own options (transformers'
    ``lr_scheduler_kwargs``). ``metric_mode`` ('max' / 'min') is the default ``mode`` of a metric-driven schedule.
    """
    fn = HFSchedule(sch["name"], sch.get("kwargs"), metric_mode=metric_mode)
    if sch["name"] in METRIC_SCHEDULES:
        return fn, {}
    args = {"num_warmup_steps": warmup_steps(sch, total_steps)}
    if sch["name"] not in ("constant", "constant_with_warmup"):
        args["num_training_steps"] = total_steps
    return fn, args


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


# -- checks that need the numbers or the built models ----------------------------------------------------------
MAX_SIZE = 2**31 - 1
"""The largest ``batch_size``, ``eval_batch_size``, ``max_length`` or ``pad_to_multiple_of`` a run accepts: larger
values overflow the integer types of torch's index arithmetic and of the tokenizers (``batch_size: 10**30`` did)."""
MAX_SEED = 2**64 - 1
"""The largest ``training.seed``: ``torch.manual_seed`` takes 64-bit seeds."""
POSITION_TABLES = ("position_embeddings", "wpe", "embed_positions")
"""Names of learned absolute position tables (BERT, RoBERTa, DistilBERT, ELECTRA; GPT-2; BART): a model that has
one fails on inputs longer than its rows. Rotary and relative schemes have none, so no limit is read from them."""


def check_sizes(run: RunConfig) -> None:
    """The sizes of ``data`` and ``training.seed`` fit the integer types they are used with (:data:`MAX_SIZE`,
    :data:`MAX_SEED`); a larger one is a :class:`ConfigError` naming the field."""
    for key in ("batch_size", "eval_batch_size", "max_length", "pad_to_multiple_of"):
        value = getattr(run.data, key)
        if value is not None and value > MAX_SIZE:
            raise ConfigError(f"{brief(value, 60)} is too large to represent: brewkit takes at most {MAX_SIZE:,} "
                              "(torch and the tokenizers index with fixed-size integers); "
                              + ("a batch_size as large as the training set already makes one batch of it"
                                 if "batch" in key else "no model takes inputs that long"), f"data.{key}")
    if run.training.seed is not None and run.training.seed > MAX_SEED:
        raise ConfigError(f"{brief(run.training.seed, 60)} is too large to represent: torch takes seeds up to "
                          f"2**64 - 1 ({MAX_SEED:,})", "training.seed")


def size_field(section: str, spec: ModelSpec | None, key: str) -> str:
    """Where a model size is set in the run file: ``student.config.vocab_size``, ``student.args.vocab_size``,
    else the section's ``path`` (a pretrained model's own size) or the section itself."""
    if spec is not None and spec.config is not None:
        return f"{section}.config.{key}"
    if spec is not None and spec.builder is not None:
        return f"{section}.args.{key}" if key in spec.args else f"{section}.args"
    return f"{section}.path" if spec is not None and spec.path is not None else section


def input_rows(model: nn.Module) -> int | None:
    """Rows of ``model``'s input embedding (``get_input_embeddings()``), or None when it has no such table."""
    get = getattr(model, "get_input_embeddings", None)
    try:
        emb = get() if callable(get) else None
    except NotImplementedError:
        return None
    return emb.num_embeddings if isinstance(emb, nn.Embedding) else None


def check_vocabulary(model: nn.Module, tokenizer: Any, section: str, spec: ModelSpec | None) -> None:
    """Every token id of ``tokenizer`` (``0 .. len(tokenizer) - 1``) indexes a row of the model's input
    embedding; a smaller embedding is a :class:`ConfigError` naming both sizes (the model would fail on the
    first such id with an ``IndexError``)."""
    rows, n = input_rows(model), len(tokenizer)
    if rows is not None and rows < n:
        raise ConfigError(f"the {section}'s input embedding has {rows} rows (its vocab_size) but the tokenizer has "
                          f"{n} tokens, so ids {rows}..{n - 1} would index past it; give the {section} a vocab_size "
                          f"of at least {n}, or the tokenizer it was trained with", size_field(section, spec,
                                                                                               "vocab_size"))


def position_limit(model: nn.Module) -> tuple[int, str] | None:
    """``(longest input, the table's name)`` for a model with a learned absolute position table
    (:data:`POSITION_TABLES`), else None. The usable rows are the table's, less BART's ``offset`` and, for
    RoBERTa-style tables that count positions after ``padding_idx``, ``padding_idx + 1``."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and name.rsplit(".", 1)[-1] in POSITION_TABLES:
            rows = module.num_embeddings - int(getattr(module, "offset", 0) or 0)
            if module.padding_idx is not None:
                rows = module.num_embeddings - module.padding_idx - 1
            return rows, name
    return None


def check_positions(model: nn.Module, max_length: int, section: str) -> None:
    """``data.max_length`` fits the model's position table (:func:`position_limit`); a longer one is a
    :class:`ConfigError` at ``data.max_length`` naming both numbers (the model would fail on the first row
    longer than its table, mid-training)."""
    limit = position_limit(model)
    if limit is not None and max_length > limit[0]:
        rows, name = limit
        raise ConfigError(f"{max_length} is more than the {section} takes: its position table ({name}) holds "
                          f"{rows} positions (max_position_embeddings), so a row longer than {rows} tokens would "
                          f"fail in the model; set data.max_length to at most {rows}", "data.max_length")


def check_trainable(student: nn.Module, spec: ModelSpec) -> None:
    """At least one student parameter is trainable; none (every one frozen by ``student.freeze``) is a
    :class:`ConfigError` at ``student.freeze``."""
    params = list(student.parameters())
    if any(p.requires_grad for p in params):
        return
    if spec.freeze:
        raise ConfigError(f"freezes every one of the student's {len(params)} parameter tensors, so nothing is left "
                          "to train; remove the prefix that covers the part to train (e.g. the classifier)",
                          "student.freeze")
    raise ConfigError(f"the student has no trainable parameters ({len(params)} tensors, none with requires_grad); "
                      "build it with trainable weights", "student")


def check_models(run: RunConfig, teacher: nn.Module | None, student: nn.Module, tokenizer: Any,
                 second: Any) -> None:
    """The checks between the built models and the data: vocabularies, position tables, trainable weights.
    The teacher reads ``tokenizer``'s ids, the student ``second``'s when it has its own tokenizer."""
    if teacher is not None:
        check_vocabulary(teacher, tokenizer, "teacher", run.teacher)
        check_positions(teacher, run.data.max_length, "teacher")
    check_vocabulary(student, second if second is not None else tokenizer, "student", run.student)
    check_positions(student, run.data.max_length, "student")
    check_trainable(student, run.student)


def tokenizer_source(spec: ModelSpec | None) -> str:
    """Where a section's tokenizer comes from, for messages: its ``tokenizer``, ``path`` or builder."""
    if spec is None:
        return "no teacher"
    where = spec.tokenizer or spec.path or (f"builder {spec.builder}" if spec.builder else "the teacher's")
    return brief(where, 120)


def store_tokenizer(directory: str) -> Any:
    """The tokenizer a captured store saved (``DIR/tokenizer``), for a run whose student names none."""
    from .models import load_tokenizer

    path = os.path.join(directory, "tokenizer")
    if not os.path.isdir(path):
        return None
    return in_section("teacher.store", load_tokenizer, path)


def open_run_store(run: RunConfig, task: Any, tokenizer: Any, student: nn.Module, adaptor: Any,
                   dc: DistillationConfig, rank: int) -> Any:
    """The captured store of ``teacher.store`` for this run: its fingerprint items compared with the run's
    (:func:`brewkit.offline_store.open_for_training`), what the distillation asks checked against what it holds,
    the student's vocabulary (or label count) against the store's, and the task's positions handed to it (each
    row's count is checked on every batch)."""
    from . import offline_store
    from .tasks import output_rows

    spec = run.teacher_store
    manifest = offline_store.read_manifest(spec.directory)
    items = offline_store.run_items(run.data, task, run.task, tokenizer)
    current = offline_store.training_items(spec, manifest, items, run.training.seed)
    store = offline_store.open_for_training(spec, current, rank=rank)
    offline_store.check_distillation(dc, manifest)
    if manifest["kind"] == "topk":
        rows = output_rows(student)
        if rows is not None and rows != manifest["vocab"]:
            raise ConfigError(f"the student's output layer has {rows} rows but the teacher store's distribution is "
                              f"over {manifest['vocab']} ids; give the student the teacher's vocab_size",
                              size_field("student", run.student, "vocab_size"))
        store.positions = getattr(adaptor, "positions", None)
    else:
        labels = getattr(getattr(student, "config", None), "num_labels", None)
        if labels is not None and labels != manifest["classes"]:
            raise ConfigError(f"the student has {labels} labels but the teacher store holds {manifest['classes']} "
                              "logits per example", "student.num_labels")
    return store


def build(run: RunConfig, *, with_optimizer: bool = True) -> Built:
    """Models, data, the distiller, the optimizer and the LR schedule for a run."""
    check_sizes(run)
    if run.training.seed is not None:  # randomly initialised weights and projections repeat under a seed
        seed_everything(run.training.seed)
    num_labels = len(run.data.labels) if run.data.labels else None
    notes: list[str] = []
    teacher = tok_T = None
    if run.teacher is not None:  # with distiller 'train', only a source for init_from_teacher
        teacher, tok_T = in_section("teacher", build_model, run.teacher, num_labels)
    if run.teacher_store is not None:  # the RNG as the live run's teacher left it, for the student's init
        from .offline_store import restore_teacher_rng

        restore_teacher_rng(run.teacher_store.directory, run.training.seed)
    student, tok_S, report = in_section("student", build_model_with_report, run.student, num_labels, teacher)
    if run.student.keep_layers is not None:
        notes.append(f"student keeps layers {run.student.keep_layers} of {run.student.path}")
    elif report:
        notes.append(f"student initialised from teacher: {report}")
    tokenizer = tok_T or tok_S
    if tokenizer is None and run.teacher_store is not None:  # the tokenizer the store was captured with
        tokenizer = store_tokenizer(run.teacher_store.directory)
    if tokenizer is None:
        raise ConfigError("no tokenizer: give a model path (with tokenizer files) or `tokenizer:`", "teacher")
    second = tok_S if (tok_S is not None and tok_T is not None and tok_S is not tok_T) else None
    check_models(run, teacher, student, tokenizer, second)
    task = get_task(run.task)
    differs = second is not None and tokenizer_fingerprint(second) != tokenizer_fingerprint(tokenizer)
    task.check_models(teacher if run.distiller != "train" else None, student, tokenizer,
                      second if differs else None, (tokenizer_source(run.teacher), tokenizer_source(run.student)))
    inputs_S = task.model_inputs(student)
    inputs_T = task.teacher_inputs(teacher) if teacher is not None and run.distiller != "train" else inputs_S

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
        num_replicas=world, rank=rank, augment=augment, task=task, model_inputs=(inputs_T, inputs_S)))

    dc = None
    source = teacher if run.distiller != "train" else None
    adaptor = task.adaptor(source, student, tokenizer, run.data)
    if run.distiller == "train":
        distiller = BasicTrainer(run.training, student, adaptor)
    else:
        dc = resolve_distillation(run, teacher, student)
        cls = GeneralDistiller if run.distiller == "general" else BasicDistiller
        model_T = teacher
        if run.teacher_store is not None:  # no teacher model: the captured store serves the teacher side
            model_T = open_run_store(run, task, tokenizer, student, adaptor, dc, rank)
            notes.append(f"teacher side from the captured store {run.teacher_store.directory}")
        adaptor_T = adaptor if run.teacher_store is not None else \
            task.teacher_adaptor(source, student, tokenizer, run.data)
        distiller = cls(run.training, dc, model_T, student, adaptor_T, adaptor)
    task.configure(distiller)
    optimizer = build_optimizer(student, run.optim.optimizer) if with_optimizer else None
    plan = TrainPlan.build(run.training, len(train_loader), num_epochs=run.optim.num_epochs,
                           num_steps=run.optim.num_steps)
    sched, sched_args = lr_schedule(run.optim.lr_scheduler, plan.total_steps,
                                    metric_mode="max" if run.evaluation.higher_is_better else "min")
    return Built(teacher, student, tokenizer, train_loader, eval_loader, distiller, optimizer, sched, sched_args,
                 dc, notes, plan, rank, task)


# -- capture ----------------------------------------------------------------------------------------------------
@dataclass
class CaptureBuilt:
    """What ``brewkit capture`` runs: the teacher (eval mode, on the device), its tokenizer and adaptor (the
    student's: it counts the run's positions from the batch's labels), this rank's loader over the training set
    (batches with every key the positions need), and the indices of every training example (``expected``)."""

    teacher: nn.Module
    tokenizer: Any
    adaptor: Any
    loader: Any
    task: Any
    expected: list[int]
    rank: int = 0
    world_size: int = 1
    rng_state: torch.Tensor | None = None  # torch's RNG right after the teacher was built (seeded runs)
    teacher_keys: frozenset[str] | None = None  # the batch keys the teacher's forward takes (a causal LM's: no labels)


def build_capture(run: RunConfig) -> CaptureBuilt:
    """The teacher, tokenizer and training loader of ``run`` for a capture (no student, no optimizer): the same
    seed, teacher, tokenisation and positions as :func:`build`, every example once (``drop_last`` off), one shard
    per process under ``torchrun``."""
    if run.teacher_store is not None:
        raise ConfigError("brewkit capture runs the teacher model, but this run file reads a captured store; give "
                          "the teacher's path / config (without store) to capture", "teacher.store")
    if run.teacher is None:
        raise ConfigError("brewkit capture needs a teacher model (path, config or builder)", "teacher")
    if run.data.augment is not None:
        raise ConfigError("altered copies of the training rows are drawn anew by each run, so a store cannot hold "
                          "their teacher outputs; remove data.augment to capture", "data.augment")
    check_sizes(run)
    if run.training.seed is not None:  # a randomly initialised teacher comes out as it does in build()
        seed_everything(run.training.seed)
    num_labels = len(run.data.labels) if run.data.labels else None
    teacher, tokenizer = in_section("teacher", build_model, run.teacher, num_labels)
    rng_state = torch.get_rng_state()  # where build() would build the student
    if tokenizer is None and run.student.tokenizer is not None:
        from .models import load_tokenizer

        tokenizer = in_section("student", load_tokenizer, run.student.tokenizer)
    if tokenizer is None:
        raise ConfigError("no tokenizer: give the teacher a model path (with tokenizer files) or `tokenizer:`",
                          "teacher")
    check_vocabulary(teacher, tokenizer, "teacher", run.teacher)
    check_positions(teacher, run.data.max_length, "teacher")
    task = get_task(run.task)
    inputs = task.model_inputs(teacher)
    rank, world = 0, 1
    device = torch.device(run.training.device)
    if distributed.wanted(run.training.local_rank):
        rank, world, device = distributed.setup(run.training.local_rank, device)
    data = run.data.replace(drop_last=False)
    loader, _ = in_data_section(lambda: build_dataloaders(
        data.replace(eval_file=None, split=None) if data.eval_file is not None and data.split is None else data,
        tokenizer, None, seed=run.training.seed or 0, device=run.training.device, num_replicas=world, rank=rank,
        task=task, model_inputs=(inputs, inputs)))
    dtype = getattr(torch, run.training.teacher_dtype) if run.training.teacher_dtype else None
    teacher.to(device, dtype=dtype) if dtype is not None else teacher.to(device)
    teacher.eval()
    dataset = loader.dataset
    expected = list(dataset["idx"]) if "idx" in getattr(dataset, "column_names", []) else list(range(len(dataset)))
    from .adaptors import hf_adaptor

    adaptor = task.adaptor(teacher, teacher, tokenizer, run.data) or hf_adaptor  # None: the Hugging Face one
    return CaptureBuilt(teacher, tokenizer, adaptor, loader, task, expected, rank, world, rng_state,
                        task.teacher_inputs(teacher))
