"""``TrainingConfig`` and ``DistillationConfig``: TextBrewer's fields and defaults as validated dataclasses.

Every field is checked when the config is built; a bad value raises :class:`ConfigError` naming the field
(``intermediate_matches[2].loss``) and what is allowed. Configs are plain data: the distillers never change
them (TextBrewer overwrote weights and caching flags during training), and they round-trip through
``to_dict`` / ``from_dict``, JSON and YAML.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import ConfigError


class _SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-4`` and ``2E5`` as floats, as YAML 1.2 does (PyYAML's YAML 1.1
    rules read a mantissa without a dot, or an exponent without a sign, as a string)."""


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def safe_load(stream: Any) -> Any:
    """``yaml.safe_load`` (no Python objects are ever built) with YAML 1.2 floats such as ``lr: 2e-4``."""
    return yaml.load(stream, Loader=_SafeLoader)

NONE = "none"


# -- small validators -----------------------------------------------------------------------------------
def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _int(value: Any, path: str, *, minimum: int | None = None, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if not _is_int(value) or (minimum is not None and value < minimum):
        need = f"an integer >= {minimum}" if minimum is not None else "an integer"
        raise ConfigError(f"must be {need}{' or null' if allow_none else ''}, got {value!r}", path)
    return int(value)


def _num(value: Any, path: str, *, positive: bool = False, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if not _is_num(value) or (positive and not value > 0):
        need = "a positive number" if positive else "a number"
        raise ConfigError(f"must be {need}{' or null' if allow_none else ''}, got {value!r}", path)
    if not math.isfinite(value):
        raise ConfigError(f"must be a finite number, got {value!r}", path)
    return int(value) if _is_int(value) else float(value)  # plain Python numbers (numpy ones break JSON)


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"must be true or false, got {value!r}", path)
    return value


def _choice(value: Any, path: str, allowed: list) -> Any:
    if value not in allowed:
        raise ConfigError(f"must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}", path)
    return value


def _registered(registry, name: Any, path: str, *, none_ok: bool = False) -> Any:
    if none_ok and (name is None or name == NONE):
        return NONE
    if not isinstance(name, str):
        raise ConfigError(f"must be a {registry.what} name (a string), got {name!r}", path)
    if name not in registry:
        raise ConfigError(registry.unknown(name).message, path)
    return name


def check_keys(d: Any, allowed: list[str], path: str = "") -> None:
    """Raise ConfigError for a non-mapping or for keys not in ``allowed`` (closest allowed key suggested)."""
    if not isinstance(d, dict):
        raise ConfigError(f"must be a mapping, got {type(d).__name__}", path or None)
    for key in d:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown key{hint}; allowed: {', '.join(allowed)}",
                              f"{path}.{key}" if path else str(key))


class _Config:
    """Shared dict / JSON / YAML round-tripping. Subclasses are dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list):
                v = [x.to_dict() if hasattr(x, "to_dict") else x for x in v]
            out[f.name] = v
        return json.loads(json.dumps(out))  # plain data only (tuples -> lists)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        check_keys(d, [f.name for f in dataclasses.fields(cls)])
        return cls(**d)

    @classmethod
    def from_json_file(cls, path: str):
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str):
        return cls.from_dict(safe_load(text) or {})

    def replace(self, **changes):
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def __str__(self) -> str:
        return "\n".join(f"{k} : {v}" for k, v in self.to_dict().items())


# -- TrainingConfig -------------------------------------------------------------------------------------
def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class TrainingConfig(_Config):
    """How to train: accumulation, checkpoints, precision, devices, logging, resume.

    TextBrewer fields keep their names and defaults, except ``device`` (default: CUDA when available, else
    CPU) and ``fp16`` (native ``torch.amp`` with a GradScaler; ``fp16_opt_level`` is accepted and ignored).
    Unlike TextBrewer, building the config creates no directory.

    ``loss_normalization='effective_batch'`` (default) averages each loss term over the whole effective batch
    (all micro-batches of an optimizer step, on all processes), so that gradient accumulation and the number of
    processes do not change the update; with one process and no accumulation it is TextBrewer's mean.
    ``'micro_batch'`` averages per micro-batch and divides by the accumulation steps, as TextBrewer did.
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
    seed: int | None = 42
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

    def __post_init__(self):
        self.gradient_accumulation_steps = _int(self.gradient_accumulation_steps, "gradient_accumulation_steps",
                                                minimum=1)
        self.ckpt_frequency = _int(self.ckpt_frequency, "ckpt_frequency", minimum=1)
        self.ckpt_epoch_frequency = _int(self.ckpt_epoch_frequency, "ckpt_epoch_frequency", minimum=1)
        self.ckpt_steps = _int(self.ckpt_steps, "ckpt_steps", minimum=1, allow_none=True)
        self.callback_steps = _int(self.callback_steps, "callback_steps", minimum=1, allow_none=True)
        if self.log_dir is not None and not isinstance(self.log_dir, str):
            raise ConfigError(f"must be a directory path or null, got {self.log_dir!r}", "log_dir")
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise ConfigError(f"must be a directory path, got {self.output_dir!r}", "output_dir")
        if self.device is None:
            self.device = default_device()
        if not isinstance(self.device, str):
            self.device = str(self.device)  # accepts torch.device
        if not (self.device == "cpu" or self.device.startswith("cuda") or self.device in ("mps", "xpu")):
            raise ConfigError(f"must be 'cpu', 'cuda', 'cuda:N', 'mps' or 'xpu', got {self.device!r}", "device")
        self.fp16 = _bool(self.fp16, "fp16")
        self.bf16 = _bool(self.bf16, "bf16")
        if self.fp16 and self.bf16:
            raise ConfigError("fp16 and bf16 are mutually exclusive; choose one", "bf16")
        if self.fp16 and self.device == "cpu":
            raise ConfigError("fp16 needs a CUDA device (use bf16 on CPU)", "fp16")
        _choice(self.fp16_opt_level, "fp16_opt_level", ["O0", "O1", "O2", "O3"])
        self.data_parallel = _bool(self.data_parallel, "data_parallel")
        self.local_rank = _int(self.local_rank, "local_rank", minimum=-1)
        if self.data_parallel and self.local_rank != -1:
            raise ConfigError("data_parallel and DDP (local_rank >= 0) are mutually exclusive", "data_parallel")
        self.seed = _int(self.seed, "seed", minimum=0, allow_none=True)
        self.logging_steps = _int(self.logging_steps, "logging_steps", minimum=1)
        self.save_total_limit = _int(self.save_total_limit, "save_total_limit", minimum=1, allow_none=True)
        r = self.resume_from_checkpoint
        if not (r is None or isinstance(r, (bool, str))):
            raise ConfigError(f"must be true (latest in output_dir), false/null, or a checkpoint path; got {r!r}",
                              "resume_from_checkpoint")
        if self.progress_bar is not None:
            _bool(self.progress_bar, "progress_bar")
        self.skip_nonfinite_steps = _bool(self.skip_nonfinite_steps, "skip_nonfinite_steps")
        if self.teacher_dtype is not None:
            _choice(self.teacher_dtype, "teacher_dtype", ["float32", "bfloat16", "float16"])
        self.compile = _bool(self.compile, "compile")
        self.ddp_find_unused_parameters = _bool(self.ddp_find_unused_parameters, "ddp_find_unused_parameters")
        _choice(self.loss_normalization, "loss_normalization", ["effective_batch", "micro_batch"])
        self.force_resume = _bool(self.force_resume, "force_resume")

    @property
    def amp_dtype(self):
        import torch

        return torch.bfloat16 if self.bf16 else torch.float16 if self.fp16 else None


# -- intermediate matches -------------------------------------------------------------------------------
@dataclass
class IntermediateMatch(_Config):
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
        _registered(MATCH_LOSS_MAP, self.loss, "loss")
        self.weight = _num(self.weight, "weight")
        two = bool(MATCH_LOSS_MAP.meta(self.loss).get("two_layer"))
        for name in ("layer_T", "layer_S"):
            v = getattr(self, name)
            if two:
                if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(i) and i >= 0 for i in v)):
                    raise ConfigError(f"loss {self.loss!r} compares two layers: give a list of two non-negative "
                                      f"layer indices such as [0, 2]; got {v!r}", name)
                setattr(self, name, [int(i) for i in v])
            else:
                if not (_is_int(v) and v >= 0):
                    raise ConfigError(f"must be a non-negative layer index (an integer); got {v!r}", name)
                setattr(self, name, int(v))
        if self.proj is not None:
            p = self.proj
            if not (isinstance(p, (list, tuple)) and len(p) in (3, 4)):
                raise ConfigError(f"must be [name, dim_S, dim_T] or [name, dim_S, dim_T, {{group options}}]; "
                                  f"got {p!r}", "proj")
            _registered(PROJ_MAP, p[0], "proj[0]")
            _int(p[1], "proj[1]", minimum=1)
            _int(p[2], "proj[2]", minimum=1)
            if len(p) == 4 and not isinstance(p[3], dict):
                raise ConfigError(f"optimizer group options must be a mapping, got {p[3]!r}", "proj[3]")
            self.proj = [p[0], int(p[1]), int(p[2]), dict(p[3]) if len(p) == 4 else {}]

    @property
    def name(self) -> str:
        """TextBrewer's log key: ``{feature}_{loss}_{S}_{T}`` (list layers joined with '-')."""
        def j(x):
            return "-".join(map(str, x)) if isinstance(x, list) else str(x)

        return f"{self.feature}_{self.loss}_{j(self.layer_S)}_{j(self.layer_T)}"


# -- DistillationConfig ---------------------------------------------------------------------------------
@dataclass
class DistillationConfig(_Config):
    """What to distill: the KD loss, its temperature, the loss weights and the intermediate matches.

    The objective (GeneralDistiller; the others use parts of it)::

        L = w_kd * sum_k KD(z_S_k, z_T_k; tau_k) + sum_m w_m * Match_m(f_S_m, f_T_m; mask) + w_hl * sum_j mean(loss_j)

    brewkit additions: ``kd_temperature_squared`` (Hinton's tau^2 factor on the KD term; off by default as
    in TextBrewer), ``teacher_aggregation`` / ``teacher_weights`` for MultiTeacherDistiller, and
    ``is_caching_logits`` in every distiller and mode (teacher logits and the matched features are cached on
    the CPU after the first pass), and ``teacher_cache`` ('none' | 'memory' | 'disk'): the teacher's logits and
    matched features stored per example (batches carry ``idx``), so that later epochs skip the teacher;
    ``teacher_cache_dir`` (default ``<output_dir>/teacher_cache``) and ``teacher_cache_dtype`` (storage
    precision: float32, float16 or bfloat16). See :mod:`brewkit.teacher_cache`.
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

    def __post_init__(self):
        from .presets import KD_LOSS_MAP, TEMPERATURE_SCHEDULER, WEIGHT_SCHEDULER

        self.temperature = _num(self.temperature, "temperature", positive=True)
        ts = self.temperature_scheduler
        if ts is None or ts == NONE:
            self.temperature_scheduler = NONE
        elif isinstance(ts, str):
            _registered(TEMPERATURE_SCHEDULER, ts, "temperature_scheduler")
            if TEMPERATURE_SCHEDULER.meta(ts).get("builder"):
                raise ConfigError(f"{ts!r} needs parameters: write it as a list such as [{ts!r}, 1, 2] or "
                                  f"[{ts!r}, {{beta: 1}}]", "temperature_scheduler")
        elif isinstance(ts, (list, tuple)):
            if not ts or not isinstance(ts[0], str):
                raise ConfigError(f"a scheduler spec starts with its name, got {ts!r}", "temperature_scheduler")
            _registered(TEMPERATURE_SCHEDULER, ts[0], "temperature_scheduler[0]")
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
        self.hard_label_weight = _num(self.hard_label_weight, "hard_label_weight")
        self.kd_loss_weight = _num(self.kd_loss_weight, "kd_loss_weight")
        for name in ("hard_label_weight_scheduler", "kd_loss_weight_scheduler"):
            setattr(self, name, _registered(WEIGHT_SCHEDULER, getattr(self, name), name, none_ok=True))
        _registered(KD_LOSS_MAP, self.kd_loss_type, "kd_loss_type")
        self.probability_shift = _bool(self.probability_shift, "probability_shift")
        self.is_caching_logits = _bool(self.is_caching_logits, "is_caching_logits")
        self.kd_temperature_squared = _bool(self.kd_temperature_squared, "kd_temperature_squared")
        _choice(self.teacher_aggregation, "teacher_aggregation", ["logits_mean", "probs_mean"])
        if self.teacher_weights is not None:
            tw = self.teacher_weights
            if not (isinstance(tw, (list, tuple)) and tw and all(_is_num(w) and math.isfinite(w) and w >= 0 for w in tw)
                    and sum(tw) > 0):
                raise ConfigError(f"must be a list of non-negative numbers with a positive sum, got {tw!r}",
                                  "teacher_weights")
            self.teacher_weights = [float(w) for w in tw]
        if self.teacher_aggregation == "probs_mean" and self.temperature_scheduler != NONE:
            raise ConfigError("probs_mean averages teacher probabilities at the base temperature; it cannot be "
                              "combined with a temperature_scheduler", "teacher_aggregation")
        self.intermediate_matches = self._matches(self.intermediate_matches)
        _choice(self.teacher_cache, "teacher_cache", ["none", "memory", "disk"])
        _choice(self.teacher_cache_dtype, "teacher_cache_dtype", ["float32", "float16", "bfloat16"])
        if self.teacher_cache_dir is not None and (not isinstance(self.teacher_cache_dir, str)
                                                   or not self.teacher_cache_dir):
            raise ConfigError(f"must be a directory path or null, got {self.teacher_cache_dir!r}",
                              "teacher_cache_dir")
        if self.teacher_cache != "none" and self.is_caching_logits:
            raise ConfigError("choose one cache: is_caching_logits (TextBrewer's, one pass kept in memory as "
                              "batches) or teacher_cache (per example, memory or disk)", "teacher_cache")

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
    def temperature_scheduler_fn(self):
        from .presets import TEMPERATURE_SCHEDULER

        ts = self.temperature_scheduler
        if ts == NONE:
            return None
        return TEMPERATURE_SCHEDULER[ts] if isinstance(ts, list) else TEMPERATURE_SCHEDULER[ts]
