"""Data augmentation for distillation: the teacher labels text that has no gold label.

TinyBERT (Jiao et al., 2020) grows a small task set by replacing words with near neighbours and lets the
teacher's soft labels say what each new sentence means; a student trained on labels alone cannot use such
text, because a replacement can flip the label ("good" -> "bad"). brewkit's version needs no extra model or
word vectors: the neighbours come from the teacher's own input embeddings.

``data.augment: {copies: 1, replace_prob: 0.3, neighbours: 8, seed: 0}`` appends ``copies`` altered copies of
every training row (the eval split is never touched). In a copy, each whole word that the tokenizer spells as
one token is replaced, with probability ``replace_prob``, by one of that token's ``neighbours`` nearest tokens
by cosine similarity of the embedding rows (only whole-word, alphabetic tokens; a capital first letter is
kept). Everything else (punctuation, spacing, words split into pieces) is copied verbatim. A copy keeps its
row's gold label and group; the hard-label term therefore sees the original label, and the soft labels the
teacher's view of the new text (set ``hard_label_weight: 0`` to learn the copies from the teacher alone).
The result depends only on the data, the embeddings, the tokenizer and ``seed``.
"""
from __future__ import annotations

import dataclasses
import numbers
import random
import re
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from ..validation import check_int as _int
from ..validation import check_keys

_WORD = re.compile(r"[^\W\d_]+")  # a run of letters
_MARKERS = ("Ġ", "▁")  # word-start markers of byte-level BPE (GPT-2, RoBERTa) and SentencePiece vocabularies


@dataclass
class AugmentConfig:
    """``copies`` altered copies per training row; each word replaced with probability ``replace_prob`` by one
    of its ``neighbours`` nearest tokens in the teacher's input embeddings; ``seed`` fixes the draws."""

    copies: int = 1
    replace_prob: float = 0.3
    neighbours: int = 8
    seed: int = 0

    def __post_init__(self):
        self.copies = _int(self.copies, "copies", minimum=1)
        p = self.replace_prob
        if not isinstance(p, numbers.Real) or isinstance(p, bool) or not 0 < p <= 1:
            raise ConfigError(f"must be a number in (0, 1], got {p!r}", "replace_prob")
        self.replace_prob = float(p)
        self.neighbours = _int(self.neighbours, "neighbours", minimum=1)
        self.seed = _int(self.seed, "seed", minimum=0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "AugmentConfig":
        check_keys(d, [f.name for f in dataclasses.fields(cls)])
        return cls(**d)


def word_tokens(tokenizer) -> dict[int, str]:
    """Vocabulary ids that spell a whole alphabetic word at the start of a word -> that word."""
    vocab = tokenizer.get_vocab()
    special = set(getattr(tokenizer, "all_special_tokens", []))
    marked = any(t.startswith(_MARKERS) for t in vocab)  # BPE/SentencePiece: a word starts with a marker
    words = {}
    for tok, i in vocab.items():
        if tok in special:
            continue
        if marked:
            if not tok.startswith(_MARKERS):
                continue
            word = tok[1:]
        else:  # WordPiece: continuation pieces start with ##
            word = tok
        if len(word) > 1 and _WORD.fullmatch(word):
            words[i] = word
    return words


class NeighbourAugmenter:
    """Replace words by their nearest neighbours in an embedding matrix (see the module docstring).

    ``embeddings``: ``[vocab, dim]``, row ``i`` for token id ``i`` of ``tokenizer``. Call it on a dict of
    columns (``text`` [, ``text_pair``], ``label``, ``group``: lists of equal length); it returns the rows
    followed by ``copies`` altered copies of each.
    """

    def __init__(self, cfg: AugmentConfig, embeddings: torch.Tensor, tokenizer):
        if embeddings.dim() != 2:
            raise ConfigError(f"the embedding matrix must be [vocab, dim], got shape {tuple(embeddings.shape)}",
                              "augment")
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.embeddings = embeddings.detach().float().cpu()
        words = {i: w for i, w in word_tokens(tokenizer).items() if i < self.embeddings.shape[0]}
        if len(words) <= cfg.neighbours:
            raise ConfigError(f"the tokenizer has only {len(words)} whole-word tokens, fewer than neighbours="
                              f"{cfg.neighbours}", "augment.neighbours")
        self.candidate_ids = torch.tensor(sorted(words))
        self.candidate_words = [words[i] for i in self.candidate_ids.tolist()]
        self._unit = torch.nn.functional.normalize(self.embeddings[self.candidate_ids], dim=-1)
        self._id_of = {w.lower(): i for i, w in zip(self.candidate_ids.tolist(), self.candidate_words)}

    def neighbours(self, words: list[str]) -> dict[str, list[str]]:
        """Each word (lower case) that is one whole-word token -> its ``cfg.neighbours`` nearest such tokens."""
        known = sorted({w.lower() for w in words if w.lower() in self._id_of})
        if not known:
            return {}
        position = {int(i): p for p, i in enumerate(self.candidate_ids.tolist())}
        rows = torch.tensor([position[self._id_of[w]] for w in known])
        out: dict[str, list[str]] = {}
        for start in range(0, len(rows), 1024):  # [chunk, candidates] similarities at a time
            chunk = rows[start:start + 1024]
            sim = self._unit[chunk] @ self._unit.T
            sim[torch.arange(len(chunk)), chunk] = -2.0  # never the word itself
            top = sim.topk(self.cfg.neighbours, dim=-1).indices.tolist()
            for w, idx in zip(known[start:start + 1024], top):
                out[w] = [self.candidate_words[j] for j in idx]
        return out

    def _alter(self, text: str, table: dict[str, list[str]], rng: random.Random) -> str:
        def swap(m: re.Match) -> str:
            word = m.group(0)
            options = table.get(word.lower())
            if options is None or rng.random() >= self.cfg.replace_prob:
                return word
            new = rng.choice(options)
            return new[:1].upper() + new[1:] if word[:1].isupper() else new

        return _WORD.sub(swap, text)

    def __call__(self, rows: dict[str, list]) -> dict[str, list]:
        text_keys = [k for k in ("text", "text_pair") if k in rows]
        vocabulary = {w for k in text_keys for t in rows[k] for w in _WORD.findall(t)}
        table = self.neighbours(sorted(vocabulary))
        rng = random.Random(self.cfg.seed)
        out = {k: list(v) for k, v in rows.items()}
        for _ in range(self.cfg.copies):
            for i in range(len(rows["text"])):
                for k, v in rows.items():
                    out[k].append(self._alter(v[i], table, rng) if k in text_keys else v[i])
        return out


def augmenter_for(cfg: AugmentConfig, model: torch.nn.Module, tokenizer) -> NeighbourAugmenter:
    """A :class:`NeighbourAugmenter` over ``model``'s input embeddings (a Hugging Face model or any module
    with ``get_input_embeddings()``)."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if emb is None or not isinstance(getattr(emb, "weight", None), torch.Tensor):
        raise ConfigError(f"augmentation takes its neighbours from the teacher's input embeddings, but "
                          f"{type(model).__name__} has no get_input_embeddings()", "augment")
    return NeighbourAugmenter(cfg, emb.weight, tokenizer)
