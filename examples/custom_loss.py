"""Register a match loss and use it by name.

    python examples/custom_loss.py

A tiny random BERT teacher and a 1-layer student; the student's last hidden layer is matched to the
teacher's with a masked L1 loss registered as ``'hidden_l1'``.
"""
from __future__ import annotations

import argparse

import torch
from transformers import BertConfig, BertForSequenceClassification

from brewkit import DistillationConfig, GeneralDistiller, TrainingConfig
from brewkit.presets import MATCH_LOSS_MAP


@MATCH_LOSS_MAP.register("hidden_l1", overwrite=True)
def hidden_l1_loss(feature_S: torch.Tensor, feature_T: torch.Tensor, mask: torch.Tensor | None = None):
    """Mean absolute difference of hidden states (B, L, D), over valid tokens when a mask is given."""
    diff = (feature_S.float() - feature_T.float()).abs()
    if mask is None:
        return diff.mean()
    m = mask.to(diff).unsqueeze(-1)
    return (diff * m).sum() / (m.sum() * diff.shape[-1]).clamp_min(1)


def tiny_bert(layers: int, seed: int) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, num_labels=2, attn_implementation="eager"))


def batches(n: int = 8, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(1, 100, (8, 12), generator=g),
             "attention_mask": torch.ones(8, 12, dtype=torch.long),
             "labels": torch.randint(0, 2, (8,), generator=g)} for _ in range(n)]


def main(argv: list[str] | None = None) -> list[float]:
    p = argparse.ArgumentParser()
    p.add_argument("--output-dir", default="runs/custom_loss")
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args(argv)
    teacher, student = tiny_bert(2, seed=0), tiny_bert(1, seed=1)
    distill_config = DistillationConfig(
        temperature=2, hard_label_weight=1.0,
        intermediate_matches=[{"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_l1", "weight": 1.0}])
    train_config = TrainingConfig(output_dir=args.output_dir, device="cpu", logging_steps=8, progress_bar=False)
    distiller = GeneralDistiller(train_config, distill_config, teacher, student)  # HF models: no adaptor code
    data = batches()

    def l1_now() -> float:
        with torch.no_grad():
            return sum(float(hidden_l1_loss(student(**b, output_hidden_states=True).hidden_states[1],
                                            teacher(**b, output_hidden_states=True).hidden_states[2],
                                            b["attention_mask"])) for b in data) / len(data)

    before = l1_now()
    distiller.train(torch.optim.AdamW(student.parameters(), lr=1e-3), data, num_epochs=args.epochs)
    after = l1_now()
    print(f"hidden L1 to the teacher: {before:.4f} -> {after:.4f}")
    return [before, after]


if __name__ == "__main__":
    main()
