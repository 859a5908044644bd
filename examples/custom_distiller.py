"""Add a loss term by subclassing a distiller.

    python examples/custom_distiller.py

``compute_loss(results_S, results_T, micro)`` returns ``(total_loss, {term: value})``; a subclass can add its
own term and keep everything else (KD, matches, hard labels, logging, checkpoints). ``micro`` is the micro-batch
(its normalisation factors): pass it on to ``super()``. Here the extra term pulls
the student's [CLS] vector towards the teacher's by cosine distance.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from brewkit import DistillationConfig, GeneralDistiller, TrainingConfig


class CLSCosineDistiller(GeneralDistiller):
    """GeneralDistiller + ``cls_weight * (1 - cos(h_S[CLS], h_T[CLS]))`` on the last hidden layer."""

    def __init__(self, *args, cls_weight: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.cls_weight = cls_weight

    def needed_features(self) -> set[str]:
        return super().needed_features() | {"hidden"}  # ask HF models for hidden states

    def compute_loss(self, results_S, results_T, micro=None):
        total, terms = super().compute_loss(results_S, results_T, micro)
        cls_S, cls_T = results_S["hidden"][-1][:, 0], results_T["hidden"][-1][:, 0]
        cls_loss = (1 - F.cosine_similarity(cls_S.float(), cls_T.float(), dim=-1)).mean()
        terms["unweighted_cls_cosine"] = cls_loss
        return total + self.cls_weight * cls_loss, terms


def main(argv: list[str] | None = None) -> list[float]:
    from custom_loss import batches, tiny_bert

    p = argparse.ArgumentParser()
    p.add_argument("--output-dir", default="runs/custom_distiller")
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args(argv)
    teacher, student = tiny_bert(2, seed=0), tiny_bert(1, seed=1)
    distiller = CLSCosineDistiller(
        TrainingConfig(output_dir=args.output_dir, device="cpu", logging_steps=8, progress_bar=False),
        DistillationConfig(temperature=2, hard_label_weight=1.0), teacher, student, cls_weight=2.0)
    data = batches()

    def cls_distance() -> float:
        with torch.no_grad():
            d = [1 - F.cosine_similarity(student(**b, output_hidden_states=True).hidden_states[-1][:, 0],
                                         teacher(**b, output_hidden_states=True).hidden_states[-1][:, 0]).mean()
                 for b in data]
        return float(sum(d) / len(d))

    before = cls_distance()
    distiller.train(torch.optim.AdamW(student.parameters(), lr=1e-3), data, num_epochs=args.epochs)
    after = cls_distance()
    print(f"[CLS] cosine distance to the teacher: {before:.4f} -> {after:.4f}")
    return [before, after]


if __name__ == "__main__":
    main()
