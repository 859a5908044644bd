"""Shared test helpers: tiny models, their adaptors and batches, and the assets of a YAML run.

Test files import from here (``from helpers import Toy, run_dict``); ``tests/`` is on ``sys.path`` through
``pythonpath = ["tests"]`` in pyproject.toml. ``conftest.py`` holds only the environment set-up and fixtures
(e.g. ``assets``, built by :func:`make_cli_assets`).
"""
from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

# -- the toy layered model ----------------------------------------------------------------------------------


class Toy(nn.Module):
    """A tiny layered model: hidden_states = [x, h1, ..., hn], logits from position 0 of the last layer.

    Input ``x``: (B, L, d_in); ``hidden_states[i]``: (B, L, d_in if i == 0 else d_h); ``logits``: (B, n_cls).
    With ``labels`` the output also holds ``loss``, the cross-entropy of the logits.
    """

    def __init__(self, d_in: int = 4, d_h: int = 6, n_layers: int = 2, n_cls: int = 3, dropout: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(d_in if i == 0 else d_h, d_h) for i in range(n_layers))
        self.head = nn.Linear(d_h, n_cls)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask=None, labels=None):
        hs, h = [x], x
        for layer in self.layers:
            h = torch.tanh(self.drop(layer(h)))
            hs.append(h)
        logits = self.head(h[:, 0])
        out = {"logits": logits, "hidden_states": hs}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out


def toy_adaptor(batch: dict, out: dict) -> dict:
    """The adaptor of :class:`Toy`: logits, every hidden state, the batch's mask, and ``losses`` if present."""
    d = {"logits": out["logits"], "hidden": out["hidden_states"], "inputs_mask": batch["mask"]}
    if "loss" in out:
        d["losses"] = out["loss"]
    return d


def toy_batches(n_batches: int = 4, batch_size: int = 3, length: int = 5, d_in: int = 4, n_cls: int = 3,
                seed: int = 0) -> list[dict]:
    """``n_batches`` batches of ``x`` (B, L, d_in), a 0/1 ``mask`` (B, L) with 2..L leading ones, ``labels`` (B,)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        mask = torch.ones(batch_size, length, dtype=torch.long)
        lens = torch.randint(2, length + 1, (batch_size,), generator=g)
        for i, n in enumerate(lens):
            mask[i, n:] = 0
        out.append({"x": torch.randn(batch_size, length, d_in, generator=g), "mask": mask,
                    "labels": torch.randint(0, n_cls, (batch_size,), generator=g)})
    return out


class ToyDataset(torch.utils.data.Dataset):
    """``n`` rows for :class:`Toy`: ``x`` (L, d_in), ``mask`` (L,) with 2..L leading ones, ``labels`` ()."""

    def __init__(self, n: int = 24, length: int = 5, d_in: int = 4, n_cls: int = 3, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, length, d_in, generator=g)
        self.mask = torch.ones(n, length, dtype=torch.long)
        for i, k in enumerate(torch.randint(2, length + 1, (n,), generator=g)):
            self.mask[i, k:] = 0
        self.labels = torch.randint(0, n_cls, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "mask": self.mask[i], "labels": self.labels[i]}


# -- tiny BERTs ---------------------------------------------------------------------------------------------


def tiny_bert(num_layers: int = 2, hidden: int = 16, heads: int = 2, num_labels: int = 2, seed: int = 0,
              vocab: int = 50) -> nn.Module:
    """A randomly initialised ``BertForSequenceClassification`` (no dropout, eager attention), seeded."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=num_layers, num_attention_heads=heads,
                     intermediate_size=hidden * 2, max_position_embeddings=32, num_labels=num_labels,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager")
    return BertForSequenceClassification(cfg)


def bert_batches(n_batches: int = 3, batch_size: int = 4, length: int = 8, vocab: int = 50, seed: int = 0,
                 num_labels: int = 2) -> list[dict]:
    """Batches of ``input_ids``/``attention_mask`` (B, L), 3..L real tokens then zeros, and ``labels`` (B,)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(1, vocab, (batch_size, length), generator=g)
        mask = torch.ones(batch_size, length, dtype=torch.long)
        for i, k in enumerate(torch.randint(3, length + 1, (batch_size,), generator=g)):
            mask[i, k:] = 0
            ids[i, k:] = 0
        out.append({"input_ids": ids, "attention_mask": mask,
                    "labels": torch.randint(0, num_labels, (batch_size,), generator=g)})
    return out


# -- the assets of a YAML run (tests of brewkit.run and the brewkit command) --------------------------------

POS_WORDS = ["good", "great", "fine", "fun", "superb", "lovely"]
NEG_WORDS = ["bad", "awful", "dull", "boring", "weak", "poor"]
OTHER_WORDS = ["movie", "film", "plot", "acting", "the", "a"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIAL + POS_WORDS + NEG_WORDS + OTHER_WORDS + [str(i) for i in range(10)]

TEACHER_ARGS = {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 4, "num_attention_heads": 2,
                "intermediate_size": 32, "max_position_embeddings": 32, "seed": 0}
STUDENT_ARGS = {"vocab_size": 64, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 16, "max_position_embeddings": 32, "seed": 1}
MAX_LENGTH = 16


def labelled_rows(n: int, seed: int, groups: int) -> list[dict]:
    """``n`` labelled rows; texts are unique (a row number at the end), ``groups`` groups of equal size."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = POS_WORDS if label == "pos" else NEG_WORDS
        k = int(torch.randint(3, 7, (1,), generator=g))
        picks = [words[int(j)] for j in torch.randint(0, len(words), (k,), generator=g)]
        picks.insert(int(torch.randint(0, k, (1,), generator=g)), OTHER_WORDS[i % len(OTHER_WORDS)])
        rows.append({"text": " ".join(picks + list(str(seed * 100 + i))), "label": label,
                     "group": f"g{i % groups}"})
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label", "group"])
        w.writeheader()
        w.writerows(rows)


def make_cli_assets(root: Path) -> SimpleNamespace:
    """A word-level tokenizer directory, a train csv (32 rows, 8 groups of 4) and an eval csv (12 rows) in
    ``root``; returns their paths (``tokenizer``, ``train``, ``eval``, ``cache``) and ``eval_rows``."""
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)})
    assert tokenizer("good film")["input_ids"] == [2, VOCAB.index("good"), VOCAB.index("film"), 3]
    tokenizer.save_pretrained(str(root / "tokenizer"))
    train_rows, eval_rows = labelled_rows(32, seed=0, groups=8), labelled_rows(12, seed=1, groups=3)
    write_csv(root / "train.csv", train_rows)
    write_csv(root / "eval.csv", eval_rows)
    return SimpleNamespace(root=root, tokenizer=str(root / "tokenizer"), train=str(root / "train.csv"),
                           eval=str(root / "eval.csv"), eval_rows=eval_rows, cache=str(root / "cache"))


def run_dict(assets: SimpleNamespace, output_dir) -> dict:
    """A complete, valid run: 4-layer teacher (hidden 16), 2-layer student (hidden 8), two hidden matches."""
    return {
        "teacher": {"builder": "tiny_bert", "args": dict(TEACHER_ARGS), "tokenizer": assets.tokenizer},
        "student": {"builder": "tiny_bert", "args": dict(STUDENT_ARGS), "tokenizer": assets.tokenizer},
        "data": {"train_file": assets.train, "eval_file": assets.eval, "text_column": "text",
                 "label_column": "label", "labels": ["neg", "pos"], "max_length": MAX_LENGTH, "batch_size": 8,
                 "cache_dir": assets.cache},
        "distiller": "general",
        "distillation": {
            "temperature": 2, "kd_loss_type": "ce", "hard_label_weight": 1,
            "intermediate_matches": [
                {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
                 "proj": ["linear", 8, 16]},
                {"layer_T": 4, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
                 "proj": ["linear", 8, 16]},
            ]},
        "training": {"num_epochs": 1, "optimizer": {"lr": 1e-3}, "lr_scheduler": {"warmup_ratio": 0.0},
                     "device": "cpu", "seed": 0, "logging_steps": 1, "progress_bar": False},
        "evaluation": {"metric": "accuracy"},
        "output_dir": str(output_dir),
    }


def reference_accuracy(model_dir: str, rows: list[dict], labels=("neg", "pos")) -> float:
    """Accuracy of the saved model in ``model_dir`` on ``rows``, computed from the files alone, one row at a
    time (no padding involved): the fraction of rows whose argmax logit is ``labels.index(row["label"])``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    correct = 0
    with torch.no_grad():
        for row in rows:
            enc = tok(row["text"], truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
            pred = int(model(**enc).logits.argmax(-1))
            correct += pred == labels.index(row["label"])
    return correct / len(rows)


def write_run(path: Path, d: dict) -> str:
    """Write the run dict ``d`` as YAML to ``path``; return the path as a string."""
    path.write_text(yaml.safe_dump(d, sort_keys=False), encoding="utf-8")
    return str(path)


# -- processes and the command line ---------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port nobody listens on now (for MASTER_PORT)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_worker(rank: int, fn, args: tuple) -> None:
    """One spawned process: ``fn(rank, *args)``, then its objects are collected and the process group (if ``fn``
    joined one) ends on every process (:func:`brewkit.distributed.close_process_group`): a DDP / FSDP model or a
    gloo group left to interpreter exit can abort the process there."""
    fn(rank, *args)
    from brewkit.distributed import close_process_group

    close_process_group()


def spawn_and_wait(fn, args: tuple, nprocs: int, timeout: float = 180, what: str = "run") -> None:
    """``torch.multiprocessing`` spawn of ``fn(rank, *args)`` in ``nprocs`` processes (through
    :func:`run_worker`); a run that hangs (a stuck collective) is killed after ``timeout`` seconds and fails the
    test instead of hanging the suite."""
    import time

    import pytest
    import torch.multiprocessing as mp

    ctx = mp.start_processes(run_worker, args=(fn, args), nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{what} did not finish in {timeout:.0f} s")


def cli(*argv) -> tuple[int, str, str]:
    """``brewkit.cli.main`` in-process: (exit status, stdout, stderr)."""
    import contextlib
    import io

    from brewkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()
