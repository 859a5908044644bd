"""Assets of the task tests (causal LM, token classification): a WordPiece tokenizer whose vocabulary splits some
words into pieces, tiny GPT-2 / BERT configs, data files and run dicts. Imported by test_causal_lm.py,
test_token_classification.py and test_tasks.py (``tests/`` is on ``sys.path``)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import torch

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "a", "film", "movie", "plot", "was", "is", "good", "bad", "dull", "fun", "long", "short", "and",
         "it", "so", "very", "john", "smith", "lives", "in", "new", "york", "paris", "works", "at", "acme", "play",
         "?", "what", "user", "assistant", "[", "]"]
PIECES = ["##s", "##ing", "##ed", "##er"]
VOCAB = SPECIAL + WORDS + PIECES
CHAT_TEMPLATE = ("{% for m in messages %}[ {{ m['role'] }} ] {{ m['content'] }} [SEP] {% endfor %}"
                 "{% if add_generation_prompt %}[ assistant ] {% endif %}")

GPT2 = {"model_type": "gpt2", "vocab_size": len(VOCAB), "n_positions": 40, "n_embd": 16, "n_head": 2,
        "n_layer": 2, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "bos_token_id": 2,
        "eos_token_id": 3, "pad_token_id": 0, "initializer_range": 0.3}  # far from uniform outputs: KD is no ~0
BERT = {"model_type": "bert", "vocab_size": len(VOCAB), "hidden_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 40,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]


def make_tokenizer(directory: Path, chat_template: str | None = None):
    """A ``BertTokenizerFast`` over :data:`VOCAB` (``films`` -> ``film ##s``), saved to ``directory``."""
    from transformers import BertTokenizerFast

    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)})
    if chat_template is not None:
        tok.chat_template = chat_template
    tok.save_pretrained(str(directory))
    return tok


def lm_rows(n: int, seed: int) -> list[dict]:
    """``n`` rows with ``text`` and a ``prompt`` / ``completion`` pair, of varied lengths (some words in pieces)."""
    g = torch.Generator().manual_seed(seed)
    pool = ["the", "a", "film", "films", "movie", "plot", "was", "is", "good", "bad", "dull", "fun", "long",
            "short", "and", "it", "so", "very", "playing", "played", "player"]
    rows = []
    for i in range(n):
        k = int(torch.randint(2, 9, (1,), generator=g))
        words = [pool[int(j)] for j in torch.randint(0, len(pool), (k,), generator=g)]
        cut = int(torch.randint(1, k, (1,), generator=g))
        rows.append({"text": " ".join(words) + f" {'so' if i % 2 else 'very'}", "prompt": " ".join(words[:cut]),
                     "completion": " ".join(words[cut:]) + (" so" if i % 3 else "")})
    return rows


def write_rows(path: Path, rows: list[dict]) -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return str(path)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def lm_assets(root: Path) -> SimpleNamespace:
    """A tokenizer (and one with a chat template), train / eval csv files of :func:`lm_rows`, a chat jsonl."""
    make_tokenizer(root / "tokenizer")
    make_tokenizer(root / "chat_tokenizer", CHAT_TEMPLATE)
    train, evaluation = lm_rows(24, seed=0), lm_rows(8, seed=1)
    chats = [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]},
                           {"role": "user", "content": "what ?"}, {"role": "assistant", "content": "it is fun"}]}
             for r in train[:12]]
    return SimpleNamespace(root=root, tokenizer=str(root / "tokenizer"), chat_tokenizer=str(root / "chat_tokenizer"),
                           train=write_rows(root / "train.csv", train), eval=write_rows(root / "eval.csv", evaluation),
                           chats=write_jsonl(root / "chats.jsonl", chats), train_rows=train, cache=str(root / "cache"))


def lm_run(a: SimpleNamespace, output_dir, **data) -> dict:
    """A causal-LM distillation run: a 3-layer GPT-2 teacher, a 2-layer student, KL at temperature 2, hard labels."""
    return {
        "task": "causal_lm",
        "teacher": {"config": {**GPT2, "n_layer": 3}, "tokenizer": a.tokenizer},
        "student": {"config": dict(GPT2), "tokenizer": a.tokenizer},
        "data": {"train_file": a.train, "eval_file": a.eval, "text_column": "text", "max_length": 24,
                 "batch_size": 8, "cache_dir": a.cache, "group_by_length": False, "shuffle": False, **data},
        "distiller": "general",
        "distillation": {"temperature": 2, "kd_loss_type": "kl", "kd_temperature_squared": True,
                         "hard_label_weight": 1},
        "training": {"num_steps": 2, "device": "cpu", "seed": 0, "logging_steps": 1, "progress_bar": False,
                     "optimizer": {"lr": 1e-2}},
        "output_dir": str(output_dir),
    }


# -- token classification -------------------------------------------------------------------------------------
NER = [(["john", "smith", "lives", "in", "new", "york"], ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC"]),
       (["john", "works", "at", "acme"], ["B-PER", "O", "O", "B-ORG"]),
       (["smith", "playing", "in", "paris"], ["B-PER", "O", "O", "B-LOC"]),
       (["the", "films", "played", "in", "new", "york"], ["O", "O", "O", "O", "B-LOC", "I-LOC"]),
       (["acme", "works", "in", "paris", "and", "york"], ["B-ORG", "O", "O", "B-LOC", "O", "B-LOC"]),
       (["a", "player", "lives", "in", "paris"], ["O", "O", "O", "O", "B-LOC"])]


def ner_rows(n: int, seed: int) -> list[dict]:
    """``n`` rows ``{tokens: [...], tags: [...]}`` drawn from :data:`NER` (tags as names)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        words, tags = NER[int(torch.randint(0, len(NER), (1,), generator=g))]
        out.append({"tokens": list(words) + ["so"] * (i % 3), "tags": list(tags) + ["O"] * (i % 3)})
    return out


def ner_assets(root: Path) -> SimpleNamespace:
    make_tokenizer(root / "tokenizer")
    train, evaluation = ner_rows(24, 0), ner_rows(10, 1)
    return SimpleNamespace(root=root, tokenizer=str(root / "tokenizer"), train=write_jsonl(root / "train.jsonl", train),
                           eval=write_jsonl(root / "eval.jsonl", evaluation), eval_rows=evaluation,
                           cache=str(root / "cache"))


def ner_run(a: SimpleNamespace, output_dir) -> dict:
    return {
        "task": "token_classification",
        "teacher": {"config": {**BERT, "num_hidden_layers": 3}, "tokenizer": a.tokenizer},
        "student": {"config": dict(BERT), "tokenizer": a.tokenizer},
        "data": {"train_file": a.train, "eval_file": a.eval, "text_column": "tokens", "label_column": "tags",
                 "labels": list(TAGS), "max_length": 24, "batch_size": 8, "cache_dir": a.cache, "dedupe": False},
        "distiller": "general",
        "distillation": {"temperature": 2, "kd_loss_type": "kl", "hard_label_weight": 1},
        # 8 steps: the eval F1 is neither 0 nor 1 (0.62 here), so the end-to-end check compares real counts
        "training": {"num_steps": 8, "device": "cpu", "seed": 0, "logging_steps": 1, "progress_bar": False,
                     "optimizer": {"lr": 1e-2}},
        "output_dir": str(output_dir),
    }
