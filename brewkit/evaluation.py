"""Evaluating a sequence classifier on an eval loader: accuracy and macro-F1.

Under DDP the eval loader is sharded like the training loader (its batch sampler has ``num_replicas > 1``):
every rank evaluates its shard and the predictions are gathered, so that every rank returns the metrics of the
whole eval split and no process evaluates alone. Batches carry ``idx`` (the example index); an example that a
tiny split repeats across ranks is counted once.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

from .engine.batches import move_to_device, split_batch, split_example_index

METRICS = ["accuracy", "macro_f1"]


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
