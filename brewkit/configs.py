"""``TrainingConfig`` and ``DistillationConfig``: TextBrewer's fields and defaults as validated dataclasses.

Every field is checked when the config is built; a bad value raises :class:`ConfigError` naming the field
(``intermediate_matches[2].loss``) and what is allowed. Configs are plain data: the distillers never change
them (TextBrewer overwrote weights and caching flags during training), and they round-trip through
``to_dict`` / ``from_dict``, JSON and YAML.

One concept, the two library configs and their checks, hence the length; the validators themselves are
:mod:`brewkit.validation`.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, brief
from .validation import (
    NONE,
    ConfigBase,
    check_bool,
    check_choice,
    check_int,
    check_keys,
    check_number,
    check_registered,
    is_int,
    is_number,
)

# -- TrainingConfig -------------------------------------------------------------------------------------
#: ``TrainingConfig.checkpoint_format``: what each checkpoint writes.
CHECKPOINT_FORMATS = {
    "brewkit": "checkpoint-N/ directories (student, projections, optimizer, scheduler, RNG, data position)",
    "textbrewer": "the same, plus TextBrewer's gs{N}.pkl student state dict in output_dir",
}


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class TrainingConfig(ConfigBase):
    """How to train: accumulation, checkpoints, precision, devices, logging, resume.

    TextBrewer fields keep their names and defaults, except ``device`` (default: CUDA when available, else
    CPU) and ``fp16`` (native ``torch.amp`` with a GradScaler; ``fp16_opt_level`` is accepted and ignored).
    Unlike TextBrewer, building the config creates no directory.

    ``loss_normalization='effective_batch'`` (default) averages each loss term over the whole effective batch
    (all micro-batches of an optimizer step, on all processes), so that gradient accumulation and the number of
    processes do not change the update; with one process and no accumulation it is TextBrewer's mean.
    ``'micro_batch'`` averages per micro-batch and divides by the accumulation steps, as TextBrewer did.

    ``seed`` (default None): when given, ``train()`` seeds Python, NumPy and torch with it first; when None it
    leaves the random state as the script set it, as TextBrewer did (``brewkit train`` run files default to
    42). ``max_grad_norm`` clips the student's parameters only, as TextBrewer did; ``clip_projections=True``
    clips the projections together with them. ``checkpoint_format='textbrewer'`` also writes TextBrewer's
    checkpoint at every checkpoint step: the student's ``state_dict`` as ``output_dir/gs{step}.pkl``, readable
    with ``torch.load(path, weights_only=True)`` (see ``CHECKPOINT_FORMATS``).
    """

    gradient_accumulation_steps: int = 1
    ckpt_frequency: int = 1
    ckpt_epoch_frequency: int = 1
    ckpt_steps: int | None = None
    callback_steps: int | None = None  # brewkit: the callback every N optimizer steps, not at checkpoints
    log_dir: str | None = None
    output_dir: str = "./saved_models"
    device: str | None = None
    fp16: bool = False
    fp16_opt_level: str = "O1"
    bf16: bool = False
    data_parallel: bool = False
    local_rank: int = -1
    # brewkit additions
    seed: int | None = None  # None: train() does not reseed (TextBrewer); YAML runs default to 42
    logging_steps: int = 50
    save_total_limit: int | None = None
    resume_from_checkpoint: bool | str | None = None
    progress_bar: bool | None = None
    skip_nonfinite_steps: bool = False
    teacher_dtype: str | None = None
    compile: bool = False
    ddp_find_unused_parameters: bool = False
    loss_normalization: str = "effective_batch"
    force_resume: bool = False
    clip_projections: bool = False
    checkpoint_format: str = "brewkit"
    parallel: str = "ddp"  # under torchrun: 'ddp' (replicate) or 'fsdp' (shard; see brewkit.fsdp)
    fsdp_teachers: str = "shard"  # with parallel='fsdp': 'shard' the frozen teachers too, or 'replicate' them

    def __post_init__(self):
        self.gradient_accumulation_steps = check_int(self.gradient_accumulation_steps, "gradient_accumulation_steps",
                                                minimum=1)
        self.ckpt_frequency = check_int(self.ckpt_frequency, "ckpt_frequency", minimum=1)
        self.ckpt_epoch_frequency = check_int(self.ckpt_epoch_frequency, "ckpt_epoch_frequency", minimum=1)
        self.ckpt_steps = check_int(self.ckpt_steps, "ckpt_steps", minimum=1, allow_none=True)
        self.callback_steps = check_int(self.callback_steps, "callback_steps", minimum=1, allow_none=True)
        if self.log_dir is not None and not isinstance(self.log_dir, str):
            raise ConfigError(f"must be a directory path or null, got {self.log_dir!r}", "log_dir")
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise ConfigError(f"must be a directory path, got {self.output_dir!r}", "output_dir")
        # ~ means the home directory here too, not a directory named '~' in the working directory
        self.output_dir = os.path.expanduser(self.output_dir)
        if self.log_dir is not None:
            self.log_dir = os.path.expanduser(self.log_dir)
        if self.device is None:
            self.device = default_device()
        if not isinstance(self.device, str):
            self.device = str(self.device)  # accepts torch.device
        if not (self.device == "cpu" or self.device.startswith("cuda") or self.device in ("mps", "xpu")):
            raise ConfigError(f"must be 'cpu', 'cuda', 'cuda:N', 'mps' or 'xpu', got {self.device!r}", "device")
        self.fp16 = check_bool(self.fp16, "fp16")
        self.bf16 = check_bool(self.bf16, "bf16")
        if self.fp16 and self.bf16:
            raise ConfigError("fp16 and bf16 are mutually exclusive; choose one", "bf16")
        if self.fp16 and self.device == "cpu":
            raise ConfigError("fp16 needs a CUDA device (use bf16 on CPU)", "fp16")
        check_choice(self.fp16_opt_level, "fp16_opt_level", ["O0", "O1", "O2", "O3"])
        self.data_parallel = check_bool(self.data_parallel, "data_parallel")
        self.local_rank = check_int(self.local_rank, "local_rank", minimum=-1)
        if self.data_parallel and self.local_rank != -1:
            raise ConfigError("data_parallel and DDP (local_rank >= 0) are mutually exclusive", "data_parallel")
        self.seed = check_int(self.seed, "seed", minimum=0, allow_none=True)
        self.logging_steps = check_int(self.logging_steps, "logging_steps", minimum=1)
        self.save_total_limit = check_int(self.save_total_limit, "save_total_limit", minimum=1, allow_none=True)
        r = self.resume_from_checkpoint
        if not (r is None or isinstance(r, (bool, str))):
            raise ConfigError(f"must be true (latest in output_dir), false/null, or a checkpoint path; got {r!r}",
                              "resume_from_checkpoint")
        if isinstance(r, str):
            self.resume_from_checkpoint = os.path.expanduser(r)
        if self.progress_bar is not None:
            check_bool(self.progress_bar, "progress_bar")
        self.skip_nonfinite_steps = check_bool(self.skip_nonfinite_steps, "skip_nonfinite_steps")
        if self.teacher_dtype is not None:
            check_choice(self.teacher_dtype, "teacher_dtype", ["float32", "bfloat16", "float16"])
        self.compile = check_bool(self.compile, "compile")
        self.ddp_find_unused_parameters = check_bool(self.ddp_find_unused_parameters, "ddp_find_unused_parameters")
        check_choice(self.loss_normalization, "loss_normalization", ["effective_batch", "micro_batch"])
        self.force_resume = check_bool(self.force_resume, "force_resume")
        self.clip_projections = check_bool(self.clip_projections, "clip_projections")
        check_choice(self.checkpoint_format, "checkpoint_format", list(CHECKPOINT_FORMATS))
        check_choice(self.parallel, "parallel", ["ddp", "fsdp"])
        check_choice(self.fsdp_teachers, "fsdp_teachers", ["shard", "replicate"])
        if self.parallel == "fsdp" and self.fp16:
            raise ConfigError("fp16 is not supported with parallel='fsdp' (its gradient scaler does not handle "
                              "sharded gradients here); use bf16", "fp16")
        if self.parallel == "fsdp" and self.compile:
            raise ConfigError("compile is not supported with parallel='fsdp' yet; set one of them", "compile")

    @property
    def amp_dtype(self):
        import torch

        return torch.bfloat16 if self.bf16 else torch.float16 if self.fp16 else None


# -- intermediate matches -------------------------------------------------------------------------------
def _optimizer_options() -> set[str]:
    import torch

    names = set()
    for cls in vars(torch.optim).values():
        if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer:
            names.update(p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "params"))
    return names


#: The keys a projection's optimizer group (``proj[3]``) may set: every option of torch's built-in optimizers
#: (``lr``, ``weight_decay``, ``betas``, ``eps``, ``momentum``, ...). Add a name for another optimizer's option.
PROJ_GROUP_OPTIONS: set[str] = _optimizer_options()
_NON_NEGATIVE_OPTIONS = ("lr", "weight_decay", "eps", "momentum", "dampening")
_BOOL_OPTIONS = ("amsgrad", "nesterov", "maximize", "centered", "decoupled_weight_decay", "capturable",
                 "differentiable")


def check_group_options(options: dict, path: str = "proj[3]") -> dict:
    """Check a projection's optimizer group options (``{lr: 1e-3, weight_decay: 0}``) and return them.

    A key not in :data:`PROJ_GROUP_OPTIONS` is a ConfigError at ``{path}.{key}`` listing the known ones, as is
    a bad value of ``lr`` / ``weight_decay`` / ``eps`` / ``momentum`` / ``dampening`` (numbers >= 0),
    ``betas`` (two numbers in [0, 1)) or a boolean switch (``amsgrad``, ``nesterov``, ...).
    """
    import difflib

    out = {}
    for key, value in options.items():
        where = f"{path}.{key}"
        if key not in PROJ_GROUP_OPTIONS:
            close = difflib.get_close_matches(str(key), sorted(PROJ_GROUP_OPTIONS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            common = ["lr", "weight_decay", "betas", "eps", "momentum"]
            others = sorted(PROJ_GROUP_OPTIONS - set(common))
            raise ConfigError(f"unknown optimizer group option{hint}; known: {', '.join(common)} and the other "
                              f"options of torch.optim optimizers: {', '.join(others)} (add a name to "
                              "brewkit.configs.PROJ_GROUP_OPTIONS for another optimizer)", where)
        if key in _NON_NEGATIVE_OPTIONS:
            value = check_number(value, where)
            if value < 0:
                raise ConfigError(f"must be a number >= 0, got {brief(value)}", where)
        elif key == "betas":
            if not (isinstance(value, (list, tuple)) and len(value) == 2
                    and all(is_number(b) and 0 <= b < 1 for b in value)):
                raise ConfigError(f"must be a list of two numbers in [0, 1) such as [0.9, 0.999], got "
                                  f"{brief(value)}", where)
            value = [float(b) for b in value]
        elif key in _BOOL_OPTIONS or (key in ("foreach", "fused") and value is not None):
            value = check_bool(value, where)
        out[key] = value
    return out


@dataclass
class IntermediateMatch(ConfigBase):
    """One intermediate-feature match, in TextBrewer's dict format.

    ``layer_T`` / ``layer_S`` index the adaptors' feature lists (for Hugging Face ``hidden``, 0 is the
    embeddings); two-layer losses (fsp, gram, mmd, nst) take lists of two indices. ``proj`` is
    ``[name, dim_S, dim_T]`` or ``[name, dim_S, dim_T, {optimizer group options}]`` and maps the student
    feature to the teacher's width.
    """

    layer_T: int | list[int]
    layer_S: int | list[int]
    feature: str
    loss: str
    weight: float
    proj: list | None = None

    def __post_init__(self):
        from .presets import FEATURES, MATCH_LOSS_MAP, PROJ_MAP

        if self.feature not in FEATURES:
            raise ConfigError(f"unknown feature {self.feature!r}; known: {', '.join(map(repr, FEATURES))} "
                              "(append a name to brewkit.presets.FEATURES to add one)", "feature")
        check_registered(MATCH_LOSS_MAP, self.loss, "loss")
        self.weight = check_number(self.weight, "weight")
        two = bool(MATCH_LOSS_MAP.meta(self.loss).get("two_layer"))
        for name in ("layer_T", "layer_S"):
            v = getattr(self, name)
            if two:
                if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(is_int(i) and i >= 0 for i in v)):
                    raise ConfigError(f"loss {self.loss!r} compares two layers: give a list of two non-negative "
                                      f"layer indices such as [0, 2]; got {v!r}", name)
                setattr(self, name, [int(i) for i in v])
            else:
                if not (is_int(v) and v >= 0):
                    raise ConfigError(f"must be a non-negative layer index (an integer); got {v!r}", name)
                setattr(self, name, int(v))
        if self.proj is not None:
            p = self.proj
            if not (isinstance(p, (list, tuple)) and len(p) in (3, 4)):
                raise ConfigError(f"must be [name, dim_S, dim_T] or [name, dim_S, dim_T, {{group options}}]; "
                                  f"got {p!r}", "proj")
            check_registered(PROJ_MAP, p[0], "proj[0]")
            check_int(p[1], "proj[1]", minimum=1)
            check_int(p[2], "proj[2]", minimum=1)
            if len(p) == 4 and not isinstance(p[3], dict):
                raise ConfigError(f"optimizer group options must be a mapping, got {p[3]!r}", "proj[3]")
            self.proj = [p[0], int(p[1]), int(p[2]), check_group_options(p[3]) if len(p) == 4 else {}]

    @property
    def name(self) -> str:
        """TextBrewer's log key: ``{feature}_{loss}_{S}_{T}`` (list layers joined with '-')."""
        def j(x):
            return "-".join(map(str, x)) if isinstance(x, list) else str(x)

        return f"{self.feature}_{self.loss}_{j(self.layer_S)}_{j(self.layer_T)}"


# -- DistillationConfig ---------------------------------------------------------------------------------
#: ``DistillationConfig.textbrewer_numerics``: which TextBrewer release's numbers the TextBrewer presets give.
TEXTBREWER_NUMERICS = {
    "master": "TextBrewer's GitHub master (brewkit's default)",
    "0.2.1": "PyPI 0.2.1.post1: masked mmd/nst Gram matrices divided by the sequence length L; the KD term is "
             "the last logits pair's loss only",
}


@dataclass
class DistillationConfig(ConfigBase):
    """What to distill: the KD loss, its temperature, the loss weights and the intermediate matches.

    The objective (GeneralDistiller; the others use parts of it)::

        L = w_kd * sum_k KD(z_S_k, z_T_k; tau_k) + sum_m w_m * Match_m(f_S_m, f_T_m; mask) + w_hl * sum_j mean(loss_j)

    brewkit additions: ``kd_temperature_squared`` (Hinton's tau^2 factor on the KD term; off by default as
    in TextBrewer), ``teacher_aggregation`` / ``teacher_weights`` for MultiTeacherDistiller, and
    ``is_caching_logits`` in every distiller and mode (teacher logits and the matched features are cached on
    the CPU after the first pass), and ``teacher_cache`` ('none' | 'memory' | 'disk'): the teacher's logits and
    matched features stored per example (batches carry ``idx``), so that later epochs skip the teacher;
    ``teacher_cache_dir`` (default ``<output_dir>/teacher_cache``) and ``teacher_cache_dtype`` (storage
    precision: float32, float16 or bfloat16). See :mod:`brewkit.teacher_store`.

    ``textbrewer_numerics`` ('master' | '0.2.1', see ``TEXTBREWER_NUMERICS``): TextBrewer's GitHub master
    numbers (default), or the PyPI 0.2.1.post1 release's, whose masked ``mmd`` / ``nst`` divide each Gram
    matrix by the sequence length and whose KD term counts only the last logits pair when an adaptor returns
    several (``docs/textbrewer_compat.md`` lists each difference).

    ``kd_loss_args`` (a mapping or None): the KD entry's parameters, e.g. ``{beta: 0.5}`` for ``jsd`` or
    ``{alpha: 0.1}`` for ``skew_kl`` / ``skew_reverse_kl``; checked against what ``kd_loss_type`` declares
    (``brewkit presets`` lists them): an unknown key is a ConfigError at ``kd_loss_args.<key>`` listing the
    known ones, a value out of range names its key too. None (default) uses the entry's defaults.
    ``kd_implementation`` ('plain' | 'chunked' | 'fused'): the form the KD term is computed in
    (``brewkit.losses.divergences.kd_loss_implementation``): plain tensors, row chunks (no float32
    ``(N, C)`` copies), or fused with the student's output layer (its ``(N, C)`` logits never exist; the
    engine builds the hidden states and LM head from the task). Chunked and fused exist for the softmax
    divergences (``ce``, ``kl``, ``reverse_kl``, ``jsd``, ``skew_kl``, ``skew_reverse_kl``, ``tvd``); the same
    value and gradients in every form.
    """

    temperature: float = 4
    temperature_scheduler: str | list | tuple = NONE
    hard_label_weight: float = 0
    hard_label_weight_scheduler: str = NONE
    kd_loss_type: str = "ce"
    kd_loss_weight: float = 1
    kd_loss_weight_scheduler: str = NONE
    probability_shift: bool = False
    intermediate_matches: list | None = None
    is_caching_logits: bool = False
    # brewkit additions
    kd_temperature_squared: bool = False
    teacher_aggregation: str = "logits_mean"
    teacher_weights: list | None = None
    teacher_cache: str = "none"
    teacher_cache_dir: str | None = None
    teacher_cache_dtype: str = "float32"
    textbrewer_numerics: str = "master"
    kd_loss_args: dict | None = None
    kd_implementation: str = "plain"

    def __post_init__(self):
        from .losses.divergences import IMPLEMENTATIONS, check_kd_loss_args, kd_loss_implementation
        from .presets import KD_LOSS_MAP, TEMPERATURE_SCHEDULER, WEIGHT_SCHEDULER

        self.temperature = check_number(self.temperature, "temperature", positive=True)
        ts = self.spec("temperature_scheduler")
        if ts is None or ts == NONE:
            self.temperature_scheduler = NONE
        elif isinstance(ts, str):
            check_registered(TEMPERATURE_SCHEDULER, ts, "temperature_scheduler")
            if TEMPERATURE_SCHEDULER.meta(ts).get("builder"):
                raise ConfigError(f"{ts!r} needs parameters: write it as a list such as [{ts!r}, 1, 2] or "
                                  f"[{ts!r}, {{beta: 1}}]", "temperature_scheduler")
        elif isinstance(ts, (list, tuple)):
            if not ts or not isinstance(ts[0], str):
                raise ConfigError(f"a scheduler spec starts with its name, got {ts!r}", "temperature_scheduler")
            check_registered(TEMPERATURE_SCHEDULER, ts[0], "temperature_scheduler[0]")
            try:
                TEMPERATURE_SCHEDULER[list(ts)]  # builds once to check the parameters
            except ConfigError as e:
                # keep the builder's own parameter path (e.g. 'flsw.beta') in the message
                inner = f"{e.path}: " if e.path and e.path != TEMPERATURE_SCHEDULER.name else ""
                raise ConfigError(inner + e.message, "temperature_scheduler") from None
            self.temperature_scheduler = list(ts)
        else:
            raise ConfigError(f"must be 'none', a scheduler name, or a list spec such as ['flsw', 1, 2]; got {ts!r}",
                              "temperature_scheduler")
        self.hard_label_weight = check_number(self.hard_label_weight, "hard_label_weight")
        self.kd_loss_weight = check_number(self.kd_loss_weight, "kd_loss_weight")
        for name in ("hard_label_weight_scheduler", "kd_loss_weight_scheduler"):
            setattr(self, name, check_registered(WEIGHT_SCHEDULER, self.spec(name), name, none_ok=True))
        check_registered(KD_LOSS_MAP, self.kd_loss_type, "kd_loss_type")
        self.kd_loss_args = check_kd_loss_args(self.kd_loss_type, KD_LOSS_MAP[self.kd_loss_type],
                                               KD_LOSS_MAP.meta(self.kd_loss_type).get("params"), self.kd_loss_args)
        check_choice(self.kd_implementation, "kd_implementation", list(IMPLEMENTATIONS))
        kd_loss_implementation(self.kd_loss_type, self.kd_implementation)  # refuses a form the entry lacks
        self.probability_shift = check_bool(self.probability_shift, "probability_shift")
        self.is_caching_logits = check_bool(self.is_caching_logits, "is_caching_logits")
        self.kd_temperature_squared = check_bool(self.kd_temperature_squared, "kd_temperature_squared")
        check_choice(self.teacher_aggregation, "teacher_aggregation", ["logits_mean", "probs_mean"])
        if self.teacher_weights is not None:
            tw = self.teacher_weights
            if not (isinstance(tw, (list, tuple)) and tw
                    and all(is_number(w) and math.isfinite(w) and w >= 0 for w in tw) and sum(tw) > 0):
                raise ConfigError(f"must be a list of non-negative numbers with a positive sum, got {tw!r}",
                                  "teacher_weights")
            self.teacher_weights = [float(w) for w in tw]
        if self.teacher_aggregation == "probs_mean" and self.spec("temperature_scheduler") != NONE:
            raise ConfigError("probs_mean averages teacher probabilities at the base temperature; it cannot be "
                              "combined with a temperature_scheduler", "teacher_aggregation")
        self.intermediate_matches = self._matches(self.intermediate_matches)
        check_choice(self.teacher_cache, "teacher_cache", ["none", "memory", "disk"])
        check_choice(self.teacher_cache_dtype, "teacher_cache_dtype", ["float32", "float16", "bfloat16"])
        if self.teacher_cache_dir is not None and (not isinstance(self.teacher_cache_dir, str)
                                                   or not self.teacher_cache_dir):
            raise ConfigError(f"must be a directory path or null, got {self.teacher_cache_dir!r}",
                              "teacher_cache_dir")
        if self.teacher_cache_dir is not None:
            self.teacher_cache_dir = os.path.expanduser(self.teacher_cache_dir)
        if self.teacher_cache != "none" and self.is_caching_logits:
            raise ConfigError("choose one cache: is_caching_logits (TextBrewer's, one pass kept in memory as "
                              "batches) or teacher_cache (per example, memory or disk)", "teacher_cache")
        check_choice(self.textbrewer_numerics, "textbrewer_numerics", list(TEXTBREWER_NUMERICS))

    @staticmethod
    def _matches(ms):
        if ms is None:
            return None
        if not isinstance(ms, (list, tuple)):
            raise ConfigError(f"must be a list of match dicts, got {type(ms).__name__}", "intermediate_matches")
        out = []
        for i, m in enumerate(ms):
            path = f"intermediate_matches[{i}]"
            if isinstance(m, IntermediateMatch):
                out.append(m)
                continue
            allowed = [f.name for f in dataclasses.fields(IntermediateMatch)]
            check_keys(m, allowed, path)
            missing = [k for k in ("layer_T", "layer_S", "feature", "loss", "weight") if k not in m]
            if missing:
                raise ConfigError(f"missing required key(s) {', '.join(missing)}", path)
            try:
                out.append(IntermediateMatch(**m))
            except ConfigError as e:
                raise e.at(path) from None
        return out

    # -- resolved callables (used by the distillers; the config itself stays plain data) ---------------
    def spec(self, name: str) -> Any:
        """The stored, plain-data value of field ``name``: what ``to_dict`` writes and the engine resolves.

        In this class it is simply the attribute. ``brewkit.compat.textbrewer.DistillationConfig`` shows
        TextBrewer's resolved callables under the three scheduler attributes instead, and keeps the specs
        here; code that must work with both reads ``spec(...)`` or the ``*_fn`` methods below.
        """
        stored = vars(self)
        return stored[name] if name in stored else getattr(self, name)

    def temperature_scheduler_fn(self) -> Callable | None:
        """``f(logits_S, logits_T, base_temperature)`` built from ``temperature_scheduler``; None for 'none'."""
        from .presets import TEMPERATURE_SCHEDULER

        ts = self.spec("temperature_scheduler")
        if ts is None or ts == NONE:
            return None
        return TEMPERATURE_SCHEDULER[ts]

    def weight_scheduler_fn(self, name: str) -> Callable[[float], float] | None:
        """``f(progress) -> weight`` for ``name`` ('kd_loss_weight_scheduler' or 'hard_label_weight_scheduler');
        None for 'none'. progress = global_step / total_steps in (0, 1].

        TextBrewer's schedulers (``linear_decay``, ``linear_growth``) give the weight itself (they replace the
        configured weight after the first optimizer step); those registered with ``scales_base=True``
        (``scaled_linear_decay``, ``cosine_decay``, ...) are multiplied by the configured base weight here.
        """
        from .presets import WEIGHT_SCHEDULER

        if name not in ("kd_loss_weight_scheduler", "hard_label_weight_scheduler"):
            raise ConfigError("is not a weight scheduler field; use 'kd_loss_weight_scheduler' or "
                              "'hard_label_weight_scheduler'", name)
        spec = self.spec(name)
        if spec is None or spec == NONE:
            return None
        fn = WEIGHT_SCHEDULER[spec]
        if not WEIGHT_SCHEDULER.meta(spec).get("scales_base"):
            return fn
        base = self.spec(name[: -len("_scheduler")])
        return functools.partial(_scaled, fn, base)

    def match_loss_fn(self, loss: str) -> Callable:
        """The ``MATCH_LOSS_MAP`` entry ``loss``, under ``textbrewer_numerics``: with ``'0.2.1'`` the built-in
        ``mmd`` / ``nst`` use PyPI 0.2.1's masked scaling (Gram matrices divided by the sequence length L instead
        of each model's hidden size); every other loss is the registered function itself."""
        from .losses import mmd_loss
        from .presets import MATCH_LOSS_MAP

        fn = MATCH_LOSS_MAP[loss]
        if self.textbrewer_numerics == "0.2.1" and fn is mmd_loss:
            return functools.partial(mmd_loss, legacy_pypi_scaling=True)
        return fn


def _scaled(fn: Callable[[float], float], base: float, progress: float) -> float:
    return base * fn(progress)
