"""Tasks: what a run trains its models to predict, as a registry (``brewkit presets`` lists ``TASKS``).

A run file names its task once at the top level (``task: causal_lm``) or on ``teacher`` / ``student`` (both
spellings work; a disagreement is a ConfigError). The task owns everything that depends on what is predicted:

================================  ===========================================================================
how a row becomes model inputs    :meth:`Task.check_data` (the data keys it takes), :meth:`Task.encode`
                                  (tokenised rows with their ``labels``), ``position_ids`` in the batches
which batch keys reach a model    :meth:`Task.model_inputs`: only the named parameters of ``forward`` (and
                                  ``token_type_ids`` only for models with segment embeddings)
which positions the losses use    :meth:`Task.adaptor`: ``logits_mask`` (KD) and ``inputs_mask`` (matches)
the hard-label term               the model's own loss on the batch's ``labels`` (-100: not a target), and what
                                  both terms average over (``kd_denominator``, ``hard_label_denominator``,
                                  names of :data:`brewkit.engine.batches.DENOMINATORS`)
the evaluation                    ``metrics`` (the first is the default) and :meth:`Task.evaluate`
the Hugging Face auto class       ``auto_class``: used to build, save, evaluate and load the models
================================  ===========================================================================

Built in: ``sequence_classification`` (one label per row), ``token_classification`` (one tag per word, BIO /
IOB2) and ``causal_lm`` (next-token prediction). Writing a new task: ``docs/tasks.md``.

Causal LM positions. Position ``t`` predicts token ``t + 1``; it counts (for KD and for the hard labels) when
token ``t + 1`` is a target: a real token (not padding) that has a real token before it and, unless
``data.train_on_prompt``, is a completion token (prompt/completion data) or part of an assistant message (chat
data). The tokenised row stores this as ``labels`` (the token id where it is a target, -100 elsewhere), so the
masks and the counts the engine normalises by come from the batch, whatever the padding side.
"""
from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .adaptors import hf_adaptor
from .engine.batches import DENOMINATORS, IGNORE_INDEX, denominator_counts, split_batch
from .errors import AdaptorError, ConfigError
from .registry import Registry

TASKS = Registry("TASKS", "task")
"""Training tasks: ``@TASKS.register("name")`` on a :class:`Task` subclass; YAML: ``task: name``."""

DEFAULT_TASK = "sequence_classification"
#: Batch keys a collator may produce for a model (``idx``, the example index, never reaches a model).
MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "labels")


def get_task(name: str) -> Task:
    """The registered task ``name``, instantiated (an unknown name is a ConfigError listing the known ones)."""
    return TASKS[name]()


# -- model inputs -----------------------------------------------------------------------------------------------
def forward_parameters(model: nn.Module) -> frozenset[str] | None:
    """The names ``model.forward`` takes by keyword (``self``, ``*args`` and ``**kwargs`` left out); None when it
    names none (a ``forward(**inputs)`` may take anything)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError, AttributeError):
        return None
    names = frozenset(n for n, p in params.items()
                      if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self")
    return names or None


def has_segment_embeddings(model: nn.Module) -> bool:
    """Whether ``token_type_ids`` mean segments to ``model``: its config has ``type_vocab_size`` > 0 (BERT-style
    segment embeddings). GPT-2 takes ``token_type_ids`` but adds them through its word embeddings, so a BERT
    tokenizer's segment ids would shift its inputs. A model without a Hugging Face config that names the
    argument takes it."""
    config = getattr(model, "config", None)
    if config is None:
        return True
    return (getattr(config, "type_vocab_size", 0) or 0) > 0


# -- adaptors -------------------------------------------------------------------------------------------------
def next_token_mask(batch: Mapping) -> torch.Tensor:
    """``(B, L)`` bool: position ``t`` counts when ``labels[:, t + 1]`` is a target (not -100). Without
    ``labels``: when tokens ``t`` and ``t + 1`` are both real (the batch's ``attention_mask``)."""
    labels = batch.get("labels")
    if isinstance(labels, torch.Tensor) and labels.dim() == 2:
        following = labels[:, 1:] != IGNORE_INDEX
    else:
        real = batch["attention_mask"].bool()
        following = real[:, 1:] & real[:, :-1]
    mask = torch.zeros(following.shape[0], following.shape[1] + 1, dtype=torch.bool, device=following.device)
    mask[:, :-1] = following
    return mask


def next_token_labels(batch: Mapping, mask: torch.Tensor) -> torch.Tensor | None:
    """The targets of the positions ``mask`` selects, ``(M,)``: ``labels[:, t + 1]`` for each counted ``t``."""
    labels = batch.get("labels")
    if not (isinstance(labels, torch.Tensor) and labels.dim() == 2):
        return None
    following = torch.full_like(labels, IGNORE_INDEX)
    following[:, :-1] = labels[:, 1:]
    return following[mask.to(labels.device)]


class TokenAdaptor:
    """The Hugging Face adaptor (:func:`brewkit.adaptors.hf_adaptor`) plus the task's positions:
    ``logits_mask = positions(batch)`` (the KD term's positions), ``labels`` for those positions only (what
    ``probability_shift`` swaps), and logits cut to the first ``vocab`` ids when the model has more (teacher and
    student vocabularies that differ only by padding rows distill over the ids they share). With
    ``positions=None`` (a teacher whose batch has no labels) it returns neither: the KD term then takes the
    student's mask for the teacher's logits (:func:`brewkit.distillers.basic.teacher_mask`). A batch with no
    target at all (every label -100) gets a hard-label loss of 0, not the model's NaN mean over nothing (as the
    KD term: a defined 0 with gradient 0), so that a micro-batch of fully masked rows adds nothing to the step.

    Its ``__qualname__`` names the task and settings: the teacher store's fingerprint includes it, so stored
    teacher masks are never reused under other settings.
    """

    reads_hf_outputs = True  # hf_adaptor's outputs: the distiller asks the model for the features the loss needs

    def __init__(self, task: str, positions: Callable[[Mapping], torch.Tensor] | None,
                 targets: Callable[[Mapping, torch.Tensor], torch.Tensor | None] | None = None,
                 vocab: int | None = None, settings: str = ""):
        self.task, self.positions, self.targets, self.vocab = task, positions, targets, vocab
        self.__qualname__ = f"TokenAdaptor[{task}, vocab={vocab}{', ' + settings if settings else ''}]"

    def __call__(self, batch: Any, outputs: Any) -> dict:
        out = hf_adaptor(batch, outputs)
        if not isinstance(batch, Mapping) or "attention_mask" not in batch:
            raise AdaptorError(f"task {self.task}: a batch must be a mapping with 'attention_mask' (the padding "
                               "mask the positions come from)")
        logits = out.get("logits")
        if isinstance(logits, torch.Tensor) and self.vocab is not None and logits.shape[-1] > self.vocab:
            out["logits"] = logits[..., :self.vocab]
        if self.positions is None:
            out.pop("labels", None)
            return out
        mask = self.positions(batch)
        out["logits_mask"] = mask
        targets = self.targets(batch, mask) if self.targets is not None else None
        if targets is not None:
            out["labels"] = targets
            losses = out.get("losses")
            if losses is not None:  # the model's mean over no target is NaN: 0 instead (no device sync)
                counted = (targets != IGNORE_INDEX).any()
                out["losses"] = ([torch.where(counted, x, torch.zeros_like(x)) for x in losses]
                                 if isinstance(losses, (list, tuple)) else
                                 torch.where(counted, losses, torch.zeros_like(losses)))
        else:
            out.pop("labels", None)
        return out

    def __repr__(self) -> str:
        return self.__qualname__


def real_tokens(batch: Mapping) -> torch.Tensor:
    """``(B, L)`` bool: the batch's real tokens (its ``attention_mask``)."""
    return batch["attention_mask"].bool()


def real_token_labels(batch: Mapping, mask: torch.Tensor) -> torch.Tensor | None:
    """The ``labels`` of the positions ``mask`` selects, ``(M,)`` (-100 where a sub-token carries no tag)."""
    labels = batch.get("labels")
    if not (isinstance(labels, torch.Tensor) and labels.dim() == 2):
        return None
    return labels[mask.to(labels.device)]


def refuse_lm_keys(task: str, data: Any) -> None:
    """The causal-LM data keys are a ConfigError in a run of another task."""
    for key in ("prompt_column", "completion_column", "messages_column"):
        if getattr(data, key) is not None:
            raise ConfigError(f"is for causal_lm runs; task {task} reads text_column (and text_pair_column)", key)
    if data.train_on_prompt:
        raise ConfigError(f"is for causal_lm runs with prompts; task {task} has none", "train_on_prompt")


# -- the task interface ----------------------------------------------------------------------------------------
class Task:
    """What a run trains its models to predict. Subclass it and register the subclass with
    ``@TASKS.register("name")`` (see ``docs/tasks.md``); every method has a working default for a task whose rows
    are texts with one label each."""

    auto_class = "AutoModelForSequenceClassification"  #: the transformers Auto class of the models
    labelled = True  #: the head's size comes from the data's labels (``num_labels``)
    metrics: tuple[str, ...] = ("accuracy", "macro_f1")  #: ``evaluation.metric`` values; the first is the default
    kd_denominator = "tokens"  #: what a masked token-level KD term averages over (DENOMINATORS)
    hard_label_denominator = "rows"  #: what the hard-label term averages over (DENOMINATORS)
    same_tokenizer = False  #: KD compares positions, so teacher and student must tokenise alike
    rows = "text"  #: how the loader reads a row: "text" (strings) or "words" (a list of words and one of tags)
    position_ids = False  #: batches carry position_ids from the padding mask (left padding then changes nothing)
    #: the model's own loss is only the hard-label term and the adaptor takes its targets from the batch, so a run
    #: without that term calls the student without ``labels`` (no cross-entropy over the vocabulary for nothing)
    labels_only_for_hard_labels = False

    @property
    def name(self) -> str:
        """The name the task is registered under."""
        for key in TASKS:
            if TASKS[key] is type(self):
                return key
        return type(self).__name__

    # -- data ------------------------------------------------------------------------------------------------
    def check_data(self, data: Any, given: Mapping) -> Any:
        """The ``data`` section (a :class:`~brewkit.data.DataConfig`) checked for this task; ``given`` is the
        section as written (to tell a default from a value the user set). Returns the config to use (e.g. with
        defaults that differ by task). Errors are ConfigErrors with paths inside the section."""
        refuse_lm_keys(self.name, data)
        return data

    def fingerprint(self, data: Any, tokenizer: Any) -> list:
        """What, besides the tokenizer, ``max_length`` and the rows, decides :meth:`encode`'s result (it enters
        the key of the tokenised-data cache)."""
        return [self.name]

    def encode(self, rows: dict[str, list], tokenizer: Any, data: Any) -> dict[str, list]:
        """A batch of rows (``text`` [, ``text_pair``] [, ``label``] lists) -> token columns: ``input_ids``,
        ``attention_mask``, ``token_type_ids`` (when the tokenizer gives them), ``length``, ``labels``."""
        from .data.tokenization import encode_texts

        return encode_texts(rows, tokenizer=tokenizer, max_length=data.max_length)

    def model_inputs(self, model: nn.Module) -> frozenset[str]:
        """The batch keys (of :data:`MODEL_KEYS`) that ``model`` receives: those its ``forward`` names (all of
        them for a ``forward(**inputs)``), ``token_type_ids`` only with segment embeddings."""
        names = forward_parameters(model)
        keys = {k for k in MODEL_KEYS if names is None or k in names}
        if "token_type_ids" in keys and not has_segment_embeddings(model):
            keys.discard("token_type_ids")
        return frozenset(keys)

    def teacher_inputs(self, model: nn.Module) -> frozenset[str]:
        """The batch keys the teacher receives (default: :meth:`model_inputs`)."""
        return self.model_inputs(model)

    # -- the objective ---------------------------------------------------------------------------------------
    def check_models(self, teacher: nn.Module | None, student: nn.Module, tokenizer: Any, second: Any = None,
                     sources: tuple[str, str] = ("teacher", "student")) -> None:
        """Checks between the built models and the tokenizer(s); ``second`` is the student's own tokenizer when
        it differs from the teacher's, ``sources`` name where each came from (for messages)."""
        if self.same_tokenizer and second is not None:
            raise ConfigError(f"teacher and student use different tokenizers ({sources[0]} vs {sources[1]}); task "
                              f"{self.name} distills position by position, which needs one tokenisation: give "
                              "both the same tokenizer", "student.tokenizer")

    def adaptor(self, teacher: nn.Module | None, student: nn.Module, tokenizer: Any,
                data: Any) -> Callable | None:
        """The student's adaptor (None: :func:`~brewkit.adaptors.hf_adaptor`)."""
        return None

    def teacher_adaptor(self, teacher: nn.Module | None, student: nn.Module, tokenizer: Any,
                        data: Any) -> Callable | None:
        """The teacher's adaptor (default: :meth:`adaptor`'s)."""
        return self.adaptor(teacher, student, tokenizer, data)

    def configure(self, distiller: Any) -> None:
        """Tell the distiller what the loss terms average over (``kd_denominator``, ``hard_label_denominator``),
        and (``labels_only_for_hard_labels``) that its student needs no ``labels`` when the hard-label weight is 0."""
        for attr in ("kd_denominator", "hard_label_denominator"):
            value = getattr(self, attr)
            if value not in DENOMINATORS:
                raise ConfigError(f"task {self.name}: {attr} {value!r} is not one of {', '.join(DENOMINATORS)}")
            setattr(distiller, attr, value)
        d = getattr(distiller, "d_config", None)
        if (self.labels_only_for_hard_labels and d is not None and d.hard_label_weight == 0
                and d.hard_label_weight_scheduler in (None, "none")):
            distiller.labels_to_student = False

    # -- describing and evaluating -----------------------------------------------------------------------------
    def positions(self, data: Any) -> str:
        """What the KD and hard-label terms count, in words (``brewkit validate`` prints it)."""
        return "one prediction per row (KD and hard labels averaged over rows)"

    def counted(self, batch: Any) -> str:
        """How many positions of ``batch`` (its student part) the terms count, in words."""
        c = denominator_counts(split_batch(batch)[1])
        return f"{int(c[0])} rows counted"

    def evaluate(self, model: nn.Module, loader: Any, device: Any, metric: str, *, teacher: nn.Module | None = None,
                 data: Any = None) -> dict[str, float]:
        """Metrics of ``model`` on ``loader`` (a dict of name -> value, ``metric`` among them)."""
        from .evaluation import evaluate

        return evaluate(model, loader, device, metric)

    def describe(self) -> str:
        """One line for ``brewkit validate``."""
        return f"task: {self.name} ({self.auto_class})"


@TASKS.register("sequence_classification", description="one label per row: KD and cross-entropy on the row's "
                "logits; accuracy, macro_f1")
class SequenceClassification(Task):
    """One label per row (text or text pair): KD and cross-entropy on the row's logits; accuracy, macro-F1."""


@TASKS.register("token_classification", description="one tag per word (BIO / IOB2): KD on real tokens, "
                "cross-entropy on first sub-tokens; entity_f1, token_accuracy")
class TokenClassification(Task):
    """One tag per word (BIO / IOB2): KD on real tokens, cross-entropy on each word's first sub-token;
    entity-level F1 (micro, as seqeval computes it) and token accuracy."""

    auto_class = "AutoModelForTokenClassification"
    metrics = ("entity_f1", "token_accuracy")
    labels_only_for_hard_labels = True
    kd_denominator = "tokens"
    hard_label_denominator = "labelled_tokens"
    same_tokenizer = True
    rows = "words"

    def check_data(self, data: Any, given: Mapping) -> Any:
        data = super().check_data(data, given)
        if data.text_pair_column is not None:
            raise ConfigError("token_classification reads one list of words per row (text_column)",
                              "text_pair_column")
        if data.label_column is None:
            raise ConfigError("token_classification needs the column of tags (one list per row)", "label_column")
        if data.labels is None:
            raise ConfigError("token_classification needs the tag names in id order, e.g. [O, B-PER, I-PER, B-LOC, "
                              "I-LOC] (the column may hold the names or their ids)", "labels")
        if data.augment is not None:
            raise ConfigError("word replacement is for sequence_classification and causal_lm text", "augment")
        return data

    def encode(self, rows: dict[str, list], tokenizer: Any, data: Any) -> dict[str, list]:
        """Words -> sub-tokens (``is_split_into_words``); a word's tag goes to its first sub-token, every other
        sub-token and the special tokens get -100."""
        enc = tokenizer(rows["text"], is_split_into_words=True, truncation=True, max_length=data.max_length)
        out = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        out["length"] = [len(ids) for ids in enc["input_ids"]]
        if "label" in rows:
            labels = []
            for i, tags in enumerate(rows["label"]):
                try:
                    words = enc.word_ids(i)
                except (ValueError, AttributeError):
                    raise ConfigError(f"{type(tokenizer).__name__} is not a fast tokenizer, so it cannot say which "
                                      "word each sub-token comes from; token_classification needs a fast one "
                                      "(tokenizer.json)", "tokenizer") from None
                row, previous = [], None
                for w in words:
                    row.append(IGNORE_INDEX if w is None or w == previous else int(tags[w]))
                    previous = w
                labels.append(row)
            out["labels"] = labels
        return out

    def adaptor(self, teacher: nn.Module | None, student: nn.Module, tokenizer: Any, data: Any) -> Callable:
        return TokenAdaptor(self.name, real_tokens, real_token_labels)

    def positions(self, data: Any) -> str:
        return "KD on every real token; hard labels on the first sub-token of each word"

    def counted(self, batch: Any) -> str:
        c = denominator_counts(split_batch(batch)[1])
        return f"{int(c[0])} rows, {int(c[1])} real tokens (KD), {int(c[5])} words (hard labels)"

    def evaluate(self, model: nn.Module, loader: Any, device: Any, metric: str, *, teacher: nn.Module | None = None,
                 data: Any = None) -> dict[str, float]:
        from .evaluation import evaluate_tokens

        return evaluate_tokens(model, loader, device, list(data.labels) if data is not None else None)


@TASKS.register("causal_lm", description="next-token prediction: KD and cross-entropy on the next-token "
                "positions of real (completion) tokens; perplexity, teacher_agreement")
class CausalLM(Task):
    """Next-token prediction: KD and cross-entropy on the next-token positions of real (completion) tokens;
    perplexity and top-1 agreement with the teacher."""

    auto_class = "AutoModelForCausalLM"
    labelled = False
    labels_only_for_hard_labels = True
    metrics = ("perplexity", "teacher_agreement")
    kd_denominator = "next_tokens"
    hard_label_denominator = "next_tokens"
    same_tokenizer = True
    position_ids = True

    def check_data(self, data: Any, given: Mapping) -> Any:
        for key in ("label_column", "labels", "drop_labels", "text_pair_column"):
            if given.get(key) is not None:
                hint = ("use prompt_column and completion_column" if key == "text_pair_column"
                        else "the next tokens are the targets")
                raise ConfigError(f"a causal_lm run has no labels ({hint}); remove it", key)
        if (data.prompt_column or data.messages_column) and "text_column" in given:
            other = "messages_column" if data.messages_column else "prompt_column"
            raise ConfigError(f"is not read when {other} is set; give one source of text", "text_column")
        if data.train_on_prompt and not (data.prompt_column or data.messages_column):
            raise ConfigError("plain text has no prompt: every token is trained on already; remove it or set "
                              "prompt_column and completion_column (or messages_column)", "train_on_prompt")
        if data.augment is not None and data.messages_column is not None:
            raise ConfigError("word replacement would alter the chat's structure; use it on plain text or "
                              "prompt/completion data", "augment")
        return data.replace(label_column=None)

    def fingerprint(self, data: Any, tokenizer: Any) -> list:
        source = "messages" if data.messages_column else "pairs" if data.prompt_column else "text"
        template = getattr(tokenizer, "chat_template", None) if source == "messages" else None
        return [self.name, source, data.train_on_prompt, template]

    def encode(self, rows: dict[str, list], tokenizer: Any, data: Any) -> dict[str, list]:
        """Rows -> ``input_ids``, ``attention_mask``, ``length`` and ``labels`` (see the module docstring); no
        ``token_type_ids`` (a causal LM has no segments). Plain text: every token but the first is a target;
        prompt/completion pairs: the tokenizer's pair encoding, targets from the first completion token on;
        chat: the chat template's text, targets the tokens of the assistant messages (with what the template
        puts after each, e.g. its end-of-turn token)."""
        if data.messages_column is not None:
            ids, targets = encode_chats(rows["text"], tokenizer, data.max_length, data.train_on_prompt)
        elif data.prompt_column is not None:
            ids, targets = encode_pairs(rows["text"], rows["text_pair"], tokenizer, data.max_length,
                                        data.train_on_prompt)
        else:
            ids = encode_plain(rows["text"], tokenizer, data.max_length)
            targets = [[i > 0 for i in range(len(row))] for row in ids]
        labels = [[t if keep else IGNORE_INDEX for t, keep in zip(row, keeps)] for row, keeps in zip(ids, targets)]
        return {"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids],
                "length": [len(row) for row in ids], "labels": labels}

    def check_models(self, teacher: nn.Module | None, student: nn.Module, tokenizer: Any, second: Any = None,
                     sources: tuple[str, str] = ("teacher", "student")) -> None:
        super().check_models(teacher, student, tokenizer, second, sources)
        names = forward_parameters(student)
        if names is not None and "labels" not in names:
            raise ConfigError(f"the student's forward ({type(student).__name__}) takes no 'labels', so neither its "
                              "next-token loss nor the positions it counts can reach it; causal_lm needs a Hugging "
                              "Face causal LM (or a forward that takes labels)", "student")

    def teacher_inputs(self, model: nn.Module) -> frozenset[str]:
        """The teacher's keys, less ``labels``: its own next-token loss would be computed for nothing (a
        cross-entropy over every position and the whole vocabulary); the KD term takes its positions from the
        student's batch."""
        return self.model_inputs(model) - {"labels"}

    def adaptor(self, teacher: nn.Module | None, student: nn.Module, tokenizer: Any, data: Any) -> Callable:
        return TokenAdaptor(self.name, next_token_mask, next_token_labels, shared_vocabulary(teacher, student))

    def teacher_adaptor(self, teacher: nn.Module | None, student: nn.Module, tokenizer: Any,
                        data: Any) -> Callable:
        """Logits over the shared ids, no positions: the KD term takes the student's (:meth:`teacher_inputs`)."""
        return TokenAdaptor(self.name, None, None, shared_vocabulary(teacher, student))

    def positions(self, data: Any) -> str:
        which = "a real token (padding and each row's first token are never targets)"
        if data is not None and (data.prompt_column or data.messages_column) and not data.train_on_prompt:
            which = ("a completion token" if data.prompt_column else "an assistant token") + \
                " (prompt tokens excluded; train_on_prompt: false)"
        return f"next-token positions: t counts when token t+1 is {which}, for KD and hard labels"

    def counted(self, batch: Any) -> str:
        c = denominator_counts(split_batch(batch)[1])
        return f"{int(c[0])} rows, {int(c[1])} real tokens, {int(c[6])} next-token positions counted"

    def evaluate(self, model: nn.Module, loader: Any, device: Any, metric: str, *, teacher: nn.Module | None = None,
                 data: Any = None) -> dict[str, float]:
        from .evaluation import evaluate_lm

        return evaluate_lm(model, loader, device, teacher=teacher)

    def output_layer(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(weight [V, D], bias [V] or None)`` of ``model``'s output layer (``get_output_embeddings()``): what a
        fused-linear KD form needs besides the final hidden states, so that the ``(N, V)`` logits never exist."""
        get = getattr(model, "get_output_embeddings", None)
        head = get() if callable(get) else None
        if not isinstance(getattr(head, "weight", None), torch.Tensor):
            raise ConfigError(f"{type(model).__name__} has no output layer (get_output_embeddings()) to fuse the KD "
                              "term with", "distillation.kd_implementation")
        return head.weight, getattr(head, "bias", None)

    def generation_prompt(self, text: str, tokenizer: Any, data: Any) -> list[int]:
        """The token ids a generation from ``text`` starts with, encoded as training encoded a prompt: the
        user message of a chat (with the template's generation prompt), the prompt part of a pair, or plain text
        without the end-of-text token the tokenizer appends."""
        if data is not None and data.messages_column is not None:
            check_chat_template(tokenizer)
            rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                     add_generation_prompt=True)
            return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
        ids = list(tokenizer(text)["input_ids"])
        if data is not None and data.prompt_column is not None:
            return ids
        ends = {t for t in (getattr(tokenizer, "eos_token_id", None), getattr(tokenizer, "sep_token_id", None))
                if t is not None}
        return ids[:-1] if len(ids) > 1 and ids[-1] in ends else ids


# -- causal LM encoding ------------------------------------------------------------------------------------------
def end_token(tokenizer: Any) -> int | None:
    """The id to append to each text so the model learns where it ends: the tokenizer's eos token when its own
    encoding of a text does not already end with eos or sep (GPT-2's adds nothing; BERT's ends with [SEP])."""
    ends = [t for t in (getattr(tokenizer, "eos_token_id", None), getattr(tokenizer, "sep_token_id", None))
            if t is not None]
    probe = tokenizer("a")["input_ids"]
    if not ends or (probe and probe[-1] in ends):
        return None
    return getattr(tokenizer, "eos_token_id", None)


def encode_plain(texts: list[str], tokenizer: Any, max_length: int) -> list[list[int]]:
    """Each text's ids (with the tokenizer's special tokens, and its eos token where it adds none), at most
    ``max_length``."""
    eos = end_token(tokenizer)
    enc = tokenizer(texts, truncation=True, max_length=max_length - (eos is not None))
    return [list(ids) + ([eos] if eos is not None else []) for ids in enc["input_ids"]]


def encode_pairs(prompts: list[str], completions: list[str], tokenizer: Any, max_length: int,
                 train_on_prompt: bool) -> tuple[list[list[int]], list[list[bool]]]:
    """The tokenizer's pair encoding of each (prompt, completion) and which tokens are targets: every token from
    the first completion token on (all but the first token with ``train_on_prompt``)."""
    eos = end_token(tokenizer)
    enc = tokenizer(prompts, completions, truncation=True, max_length=max_length - (eos is not None))
    ids_out, targets = [], []
    for i, ids in enumerate(enc["input_ids"]):
        try:
            sequence = enc.sequence_ids(i)
        except (ValueError, AttributeError):
            raise ConfigError(f"{type(tokenizer).__name__} is not a fast tokenizer, so it cannot say where the "
                              "completion starts; prompt/completion data needs a fast one (tokenizer.json)",
                              "prompt_column") from None
        ids = list(ids) + ([eos] if eos is not None else [])
        sequence = list(sequence) + ([1] if eos is not None else [])
        start = next((j for j, s in enumerate(sequence) if s == 1), len(ids))
        first = 1 if train_on_prompt else max(start, 1)
        ids_out.append(ids)
        targets.append([j >= first for j in range(len(ids))])
    return ids_out, targets


def check_chat_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"the tokenizer ({type(tokenizer).__name__}, "
                          f"{getattr(tokenizer, 'name_or_path', '') or 'no path'}) has no chat template, so a "
                          "messages column cannot be rendered; use a tokenizer that has one, or give the data as "
                          "prompt_column and completion_column", "messages_column")


def encode_chats(chats: list[str], tokenizer: Any, max_length: int,
                 train_on_prompt: bool) -> tuple[list[list[int]], list[list[bool]]]:
    """Chats (JSON lists of ``{role, content}``) rendered with the tokenizer's chat template and tokenised; the
    targets are the tokens whose text lies in an assistant message's part of the rendering (the rendering of
    the chat up to and including the message, less the rendering up to it with the generation prompt)."""
    check_chat_template(tokenizer)
    ids_out, targets = [], []
    for chat in chats:
        messages = json.loads(chat)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        spans = []
        for i, m in enumerate(messages):
            if m.get("role") != "assistant":
                continue
            before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) \
                if i else ""
            upto = tokenizer.apply_chat_template(messages[:i + 1], tokenize=False)
            if not (full.startswith(upto) and upto.startswith(before)):
                raise ConfigError("the tokenizer's chat template does not render a chat as the rendering of its "
                                  "first messages followed by the rest, so the assistant tokens cannot be found; "
                                  "give the data as prompt_column and completion_column", "messages_column")
            spans.append((len(before), len(upto)))
        enc = tokenizer(full, add_special_tokens=False, truncation=True, max_length=max_length,
                        return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        keep = [j > 0 and (train_on_prompt or any(a <= start < b for a, b in spans))
                for j, (start, _) in enumerate(enc["offset_mapping"])]
        ids_out.append(ids)
        targets.append(keep)
    return ids_out, targets


def output_rows(model: nn.Module | None) -> int | None:
    """Rows of ``model``'s output layer (its logits' last dimension), from ``get_output_embeddings()`` or the
    config's ``vocab_size``; None when neither says."""
    if model is None:
        return None
    get = getattr(model, "get_output_embeddings", None)
    try:
        head = get() if callable(get) else None
    except NotImplementedError:
        head = None
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor):
        return int(weight.shape[0])
    n = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(n) if isinstance(n, int) else None


def shared_vocabulary(teacher: nn.Module | None, student: nn.Module) -> int | None:
    """The ids teacher and student both have logits for (``min`` of their output rows), when they differ;
    None when they agree (nothing to cut)."""
    rows = [r for r in (output_rows(teacher), output_rows(student)) if r is not None]
    if len(rows) < 2 or rows[0] == rows[1]:
        return None
    return min(rows)
