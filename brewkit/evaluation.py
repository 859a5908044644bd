"""Evaluating a model on an eval loader, per task: a sequence classifier (accuracy, macro-F1), a token
classifier (entity-level F1 as seqeval computes it, token accuracy) and a causal LM (perplexity, top-1
agreement with the teacher).

Under DDP the eval loader is sharded like the training loader (its batch sampler has ``num_replicas > 1``):
every rank evaluates its shard and the predictions are gathered, so that every rank returns the metrics of the
whole eval split and no process evaluates alone. Batches carry ``idx`` (the example index); an example that a
tiny split repeats across ranks is counted once.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .engine.batches import move_to_device, split_batch, split_example_index

METRICS = ["accuracy", "macro_f1", "entity_f1", "token_accuracy", "perplexity", "teacher_agreement"]
"""Every ``evaluation.metric`` name; which ones a run may use is its task's (``brewkit.tasks.Task.metrics``)."""
IGNORE_INDEX = -100


def produced_metrics(metric: str) -> list[str]:
    """The metrics an evaluation with ``evaluation.metric = metric`` reports (``eval_`` keys without the prefix);
    ``teacher_agreement`` needs a teacher to be there."""
    if metric in ("accuracy", "macro_f1"):
        return ["accuracy"] + (["macro_f1"] if metric == "macro_f1" else [])
    if metric in ("entity_f1", "token_accuracy"):
        return ["entity_f1", "entity_precision", "entity_recall", "token_accuracy"]
    return ["loss", "perplexity", "teacher_agreement"]


def accuracy(preds: torch.Tensor, golds: torch.Tensor) -> float:
    """``mean(preds == golds)`` over 1-D label tensors of the same length N > 0."""
    return float((preds == golds).float().mean())


def macro_f1(preds: torch.Tensor, golds: torch.Tensor) -> float:
    """The unweighted mean over classes c (every class that occurs in ``preds`` or ``golds``) of
    ``F1_c = 2 P_c R_c / (P_c + R_c)``, with ``P_c = TP_c / #(pred = c)``, ``R_c = TP_c / #(gold = c)``;
    ``F1_c = 0`` when ``TP_c = 0``."""
    f1s = []
    for c in torch.unique(torch.cat([preds, golds])):
        tp = float(((preds == c) & (golds == c)).sum())
        prec = tp / max(float((preds == c).sum()), 1)
        rec = tp / max(float((golds == c).sum()), 1)
        f1s.append(0.0 if tp == 0 else 2 * prec * rec / (prec + rec))
    return sum(f1s) / len(f1s)


def is_sharded(loader: Iterable) -> bool:
    """Whether ``loader`` holds one DDP rank's shard (its batch sampler or sampler has ``num_replicas > 1``)."""
    samplers = (getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None))
    return any((getattr(s, "num_replicas", 1) or 1) > 1 for s in samplers)


def gather_predictions(preds: torch.Tensor, golds: torch.Tensor,
                       idx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's predictions and gold labels (1-D), on every rank; a collective call (every rank calls it).

    With example indices, each example is kept once (the first rank's copy) and the result is ordered by
    index, so it equals a single process's evaluation of the whole split. Without a process group of more
    than one rank it returns the inputs.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return preds, golds
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (preds, golds, idx))
    if any(i is None for _, _, i in parts):
        return torch.cat([p for p, _, _ in parts]), torch.cat([g for _, g, _ in parts])
    seen: dict[int, tuple[int, int]] = {}
    for p, g, i in parts:
        for k in range(len(i)):
            seen.setdefault(int(i[k]), (int(p[k]), int(g[k])))
    order = sorted(seen)
    return torch.tensor([seen[k][0] for k in order]), torch.tensor([seen[k][1] for k in order])


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: str | torch.device,
             metric: str = "accuracy") -> dict[str, float]:
    """``{"accuracy": ...}`` (plus ``"macro_f1"`` when ``metric='macro_f1'``) of ``model`` over ``loader``.

    Each batch is a dict with ``labels`` ``[B]`` and the model's inputs (or ``{"teacher", "student"}``; the
    student's part is used); the prediction is ``argmax`` of ``model(**inputs).logits`` ``[B, C]``. The
    model's train/eval mode is restored afterwards. A sharded loader (:func:`is_sharded`) must be evaluated
    on every rank at once: the ranks' predictions are gathered (:func:`gather_predictions`).
    """
    was_training = model.training
    model.eval()
    preds, golds, indices = [], [], []
    for batch in loader:
        _, batch_S, _ = split_batch(batch)
        batch_S, idx = split_example_index(batch_S)
        batch_S = move_to_device(batch_S, device)
        labels = batch_S.pop("labels")
        logits = model(**batch_S).logits
        preds.append(logits.argmax(-1).cpu())
        golds.append(labels.cpu())
        indices.append(None if idx is None else idx.cpu())
    model.train(was_training)
    p, g = torch.cat(preds), torch.cat(golds)
    idx_all = None if any(i is None for i in indices) else torch.cat(indices)
    if is_sharded(loader):
        p, g = gather_predictions(p, g, idx_all)
    out = {"accuracy": accuracy(p, g)}
    if metric == "macro_f1":
        out["macro_f1"] = macro_f1(p, g)
    return out


# -- gathering per-example results under DDP --------------------------------------------------------------------
def gather_examples(items: dict[int, Any]) -> dict[int, Any]:
    """Every rank's ``{example index: result}``, merged on every rank (the first rank's copy of an example that
    several hold); a collective call. Without a process group of more than one rank it returns ``items``."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    merged: dict[int, Any] = {}
    for part in parts:
        for k, v in part.items():
            merged.setdefault(k, v)
    return merged


def _keyed(idx: torch.Tensor | None, start: int, n: int) -> list[int]:
    """Example keys of a batch's ``n`` rows: its ``idx``, else running row numbers from ``start``."""
    return [int(i) for i in idx] if idx is not None else list(range(start, start + n))


def _student_inputs(batch: Any, device: Any) -> tuple[dict, dict | None, torch.Tensor | None]:
    """``(student inputs, teacher inputs or None, idx)`` of an eval batch, on ``device``, without ``labels``."""
    batch_T, batch_S, _ = split_batch(batch)
    batch_S, idx = split_example_index(batch_S)
    batch_S = move_to_device(batch_S, device)
    teacher_part = None
    if batch_T is not batch:
        batch_T, _ = split_example_index(batch_T)
        teacher_part = {k: v for k, v in move_to_device(batch_T, device).items() if k != "labels"}
    return batch_S, teacher_part, idx


# -- token classification ------------------------------------------------------------------------------------
def split_tag(tag: str) -> tuple[str, str]:
    """``'B-PER'`` -> ``('B', 'PER')``, ``'O'`` -> ``('O', '_')``: the prefix letter and the type (``'_'`` when the
    tag has none), as seqeval reads IOB tags."""
    prefix, type_ = tag[0], tag[1:].split("-", maxsplit=1)[-1]
    return prefix, type_ or "_"


def entity_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """The entities of one tag sequence as ``(type, first, last)`` word spans, by seqeval's default (lenient)
    chunking of IOB tags: an entity starts at ``B-X``, or at ``I-X`` after ``O`` or after another type (an
    ``I-`` without its ``B-`` still starts one), and ends before the next ``B-``, ``O`` or change of type."""
    spans, start = [], 0
    prev_tag, prev_type = "O", ""
    for i, chunk in enumerate(list(tags) + ["O"]):
        tag, type_ = split_tag(chunk)
        ends = (prev_tag in ("E", "S") or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
                or (prev_tag not in ("O", ".") and prev_type != type_))
        if ends:
            spans.append((prev_type, start, i - 1))
        starts = (tag in ("B", "S") or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
                  or (tag not in ("O", ".") and prev_type != type_))
        if starts:
            start = i
        prev_tag, prev_type = tag, type_
    return spans


def entity_scores(golds: list[list[str]], preds: list[list[str]]) -> dict[str, float]:
    """Micro precision, recall and F1 of entities (seqeval's ``f1_score`` with its defaults): ``P = |T & P| / |P|``,
    ``R = |T & P| / |T|`` over the ``(sentence, type, first, last)`` spans of :func:`entity_spans`, ``F1 = 2PR /
    (P + R)``; each is 0 when its denominator is."""
    true = {(s, *e) for s, tags in enumerate(golds) for e in entity_spans(tags)}
    pred = {(s, *e) for s, tags in enumerate(preds) for e in entity_spans(tags)}
    hit = len(true & pred)
    p = hit / len(pred) if pred else 0.0
    r = hit / len(true) if true else 0.0
    return {"entity_precision": p, "entity_recall": r, "entity_f1": 2 * p * r / (p + r) if p + r else 0.0}


@torch.no_grad()
def evaluate_tokens(model: nn.Module, loader: Iterable, device: str | torch.device,
                    tag_names: list[str] | None) -> dict[str, float]:
    """``entity_f1`` / ``entity_precision`` / ``entity_recall`` (:func:`entity_scores`, when ``tag_names`` maps
    ids to IOB tags) and ``token_accuracy`` (the fraction of words whose tag is right) of a token classifier.

    Each batch has ``labels`` ``[B, L]``: a tag id on each word's first sub-token, -100 elsewhere; a word's
    prediction is ``argmax`` of ``model(**inputs).logits`` ``[B, L, C]`` at that sub-token. Sharded loaders
    are gathered (every rank gets the whole split's metrics).
    """
    was_training = model.training
    model.eval()
    rows: dict[int, tuple[list[int], list[int]]] = {}
    for batch in loader:
        batch_S, _, idx = _student_inputs(batch, device)
        labels = batch_S.pop("labels")
        pred = model(**batch_S).logits.argmax(-1)
        for key, g, p in zip(_keyed(idx, len(rows), labels.shape[0]), labels.cpu(), pred.cpu()):
            keep = g != IGNORE_INDEX
            rows.setdefault(key, (g[keep].tolist(), p[keep].tolist()))
    model.train(was_training)
    if is_sharded(loader):
        rows = gather_examples(rows)
    pairs = [rows[k] for k in sorted(rows)]
    words = sum(len(g) for g, _ in pairs)
    out = {"token_accuracy": sum(a == b for g, p in pairs for a, b in zip(g, p)) / max(words, 1)}
    if tag_names is not None:
        names = [str(t) for t in tag_names]
        out.update(entity_scores([[names[i] for i in g] for g, _ in pairs], [[names[i] for i in p] for _, p in pairs]))
    return out


# -- causal LM ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_lm(model: nn.Module, loader: Iterable, device: str | torch.device,
                teacher: nn.Module | None = None) -> dict[str, float]:
    """``loss`` (the mean next-token negative log-likelihood), ``perplexity`` = exp(loss) and, with a
    ``teacher``, ``teacher_agreement``: the fraction of those positions where the student's top-1 token is the
    teacher's (over the ids both models have).

    Each batch has ``labels`` ``[B, L]`` (-100: not a target); position ``t`` of ``model(**inputs).logits``
    predicts ``labels[:, t + 1]``, and the means run over every target of the split (not per batch). The
    models never see ``labels``. Sharded loaders are gathered.
    """
    was = [(m, m.training) for m in (model, teacher) if m is not None]
    for m, _ in was:
        m.eval()
    rows: dict[int, tuple[float, int, int]] = {}
    for batch in loader:
        batch_S, batch_T, idx = _student_inputs(batch, device)
        labels = batch_S.pop("labels")
        logits = model(**batch_S).logits[:, :-1].float()
        targets = labels[:, 1:]
        counted = targets != IGNORE_INDEX
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets.clamp_min(0), reduction="none")
        nll = (nll * counted).sum(-1)
        agree = torch.zeros_like(nll)
        if teacher is not None:
            logits_T = teacher(**(batch_T if batch_T is not None else batch_S)).logits[:, :-1]
            shared = min(logits.shape[-1], logits_T.shape[-1])
            same = logits[..., :shared].argmax(-1) == logits_T[..., :shared].argmax(-1)
            agree = (same & counted).sum(-1).to(nll.dtype)
        for key, a, n, c in zip(_keyed(idx, len(rows), labels.shape[0]), nll.cpu(), counted.sum(-1).cpu(),
                                agree.cpu()):
            rows.setdefault(key, (float(a), int(n), int(c)))
    for m, mode in was:
        m.train(mode)
    if is_sharded(loader):
        rows = gather_examples(rows)
    total = sum(n for _, n, _ in rows.values())
    loss = sum(a for a, _, _ in rows.values()) / max(total, 1)
    out = {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}
    if teacher is not None:
        out["teacher_agreement"] = sum(c for _, _, c in rows.values()) / max(total, 1)
    return out
