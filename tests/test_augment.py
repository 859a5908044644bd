"""Neighbour-replacement augmentation (brewkit.data.augment): config errors, the neighbour table against a
brute-force cosine ranking, what a copy changes and keeps, determinism, the eval split left alone, BPE-style
vocabularies, and a YAML run that trains on the grown set."""
import os
import random

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from brewkit.data import AugmentConfig, DataConfig, NeighbourAugmenter, augmenter_for, load_splits
from brewkit.data.augment import word_tokens
from brewkit.errors import ConfigError

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "movie", "film", "show", "the", "a"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture
def tok(tmp_path):
    from transformers import BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + WORDS + ["##s", "##y", ",", "!", "2"]) + "\n")
    return BertTokenizerFast(vocab=str(vocab))


def _embeddings(tok, seed=0, dim=6):
    """Random rows, except that the three 'positive', 'negative' and 'noun' words form tight clusters."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(len(tok.get_vocab()), dim, generator=g)
    centres = torch.eye(dim)[:3] * 5
    for c, group in enumerate((["good", "great", "fine"], ["bad", "awful", "poor"], ["movie", "film", "show"])):
        for w in group:
            emb[tok.convert_tokens_to_ids(w)] = centres[c] + 0.1 * torch.randn(dim, generator=g)
    return emb


# -- config ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("augment,path,needle", [
    ({"copies": 0}, "augment.copies", ">= 1"),
    ({"replace_prob": 0}, "augment.replace_prob", "(0, 1]"),
    ({"replace_prob": 1.5}, "augment.replace_prob", "(0, 1]"),
    ({"replace_prob": True}, "augment.replace_prob", "(0, 1]"),
    ({"neighbours": 0}, "augment.neighbours", ">= 1"),
    ({"seed": -2}, "augment.seed", ">= 0"),
    ({"copy": 2}, "augment.copy", "did you mean 'copies'"),
    ("yes", "augment", "mapping"),
])
def test_bad_augment_config_names_the_field(augment, path, needle):
    with pytest.raises(ConfigError) as e:
        DataConfig.from_dict({"train_file": "x.csv", "augment": augment})
    assert e.value.path == path and needle in str(e.value)


def test_config_round_trips():
    cfg = DataConfig.from_dict({"train_file": "x.csv", "augment": {"copies": 2, "replace_prob": 0.5}})
    assert isinstance(cfg.augment, AugmentConfig)
    again = DataConfig.from_dict(cfg.to_dict())
    assert again.augment == AugmentConfig(copies=2, replace_prob=0.5, neighbours=8, seed=0)


# -- the neighbour table --------------------------------------------------------------------------------
def test_word_tokens_keep_whole_alphabetic_words(tok):
    words = set(word_tokens(tok).values())
    assert words == set(WORDS) - {"a"}  # not specials, ## pieces, punctuation, digits or one-letter words


def test_neighbours_match_a_brute_force_cosine_ranking(tok):
    emb = _embeddings(tok, seed=3)
    aug = NeighbourAugmenter(AugmentConfig(neighbours=3), emb, tok)
    table = aug.neighbours(["Good", "film", "awful", "unknownword", "s"])
    assert set(table) == {"good", "film", "awful"}
    candidates = [w for w in WORDS if w != "a"]
    for word, got in table.items():
        v = emb[tok.convert_tokens_to_ids(word)]
        sims = {w: torch.cosine_similarity(v, emb[tok.convert_tokens_to_ids(w)], dim=0).item()
                for w in candidates if w != word}
        assert got == sorted(sims, key=sims.get, reverse=True)[:3]
    # the clusters built into the embeddings come first
    assert set(table["good"][:2]) == {"great", "fine"} and set(table["awful"][:2]) == {"bad", "poor"}


def test_too_few_words_for_the_neighbour_count(tok):
    with pytest.raises(ConfigError) as e:
        NeighbourAugmenter(AugmentConfig(neighbours=50), _embeddings(tok), tok)
    assert e.value.path == "augment.neighbours" and "10 whole-word tokens" in str(e.value)


def test_bpe_style_vocabularies_use_the_word_start_marker():
    class Vocab:
        all_special_tokens = ["<s>", "</s>"]

        def get_vocab(self):
            return {t: i for i, t in enumerate(["<s>", "</s>", "Ġgood", "Ġbad", "good", "Ġ!", "Ġx", "ing", "▁"])}

    assert word_tokens(Vocab()) == {2: "good", 3: "bad"}


def test_a_model_without_input_embeddings_is_refused(tok):
    with pytest.raises(ConfigError) as e:
        augmenter_for(AugmentConfig(), torch.nn.Linear(2, 2), tok)
    assert e.value.path == "augment" and "get_input_embeddings" in str(e.value)


# -- the copies -----------------------------------------------------------------------------------------
ROWS = {"text": ["The good movie, 2 thumbs!", "a bad films"], "label": [1, 0], "group": ["m1", "m2"]}


def test_every_word_replaced_at_probability_one(tok):
    aug = NeighbourAugmenter(AugmentConfig(copies=2, replace_prob=1.0, neighbours=2), _embeddings(tok), tok)
    out = aug(ROWS)
    assert out["text"][:2] == ROWS["text"]  # the originals first, unchanged
    assert out["label"] == [1, 0] * 3 and out["group"] == ["m1", "m2"] * 3
    table = aug.neighbours(["the", "good", "movie", "bad"])
    for text in (out["text"][2], out["text"][4]):
        first, second, third, rest = text.split(" ", 3)
        assert first[0].isupper() and first.lower() in table["the"]  # a capital first letter is kept
        assert second in table["good"] and third.rstrip(",") in table["movie"] and third.endswith(",")
        assert rest == "2 thumbs!"  # a number and a word outside the vocabulary stay
    for text in (out["text"][3], out["text"][5]):
        a, b, films = text.split(" ")
        # 'a' is one letter and 'films' two pieces (film ##s): neither is a whole-word token
        assert a == "a" and b in table["bad"] and films == "films"


def test_replace_prob_sets_the_share_of_words_replaced(tok):
    rows = {"text": ["good bad movie film"] * 500, "label": [0] * 500}
    out = NeighbourAugmenter(AugmentConfig(replace_prob=0.3, neighbours=2), _embeddings(tok), tok)(rows)
    changed = sum(a != b for t in out["text"][500:] for a, b in zip(t.split(), "good bad movie film".split()))
    assert abs(changed / 2000 - 0.3) < 0.04


def test_copies_repeat_under_a_seed_and_differ_across_seeds(tok):
    emb = _embeddings(tok)
    rows = {"text": ["good movie", "bad film", "the great show"] * 10, "label": [1, 0, 1] * 10}

    def run(seed):
        return NeighbourAugmenter(AugmentConfig(replace_prob=0.5, seed=seed, neighbours=3), emb, tok)(rows)["text"]

    assert run(0) == run(0) and run(0) != run(1)


def test_text_pairs_are_altered_too(tok):
    rows = {"text": ["good"], "text_pair": ["bad movie"], "label": [1]}
    aug = NeighbourAugmenter(AugmentConfig(replace_prob=1.0, neighbours=1), _embeddings(tok), tok)
    out = aug(rows)
    table = aug.neighbours(["good", "bad", "movie"])  # one neighbour each: every word becomes it
    assert out["text"] == ["good", table["good"][0]]
    assert out["text_pair"] == ["bad movie", f"{table['bad'][0]} {table['movie'][0]}"]


def test_only_the_training_split_grows(tmp_path, tok):
    import csv

    rng = random.Random(0)
    path = tmp_path / "d.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "movie"])
        for i in range(40):
            w.writerow([" ".join(rng.choice(WORDS) for _ in range(4)) + f" {i}", rng.choice(["neg", "pos"]),
                        f"m{i % 8}"])
    cfg = DataConfig.from_dict({"train_file": str(path), "labels": ["neg", "pos"], "group_by_length": False,
                                "split": {"eval_fraction": 0.25, "group_by": "movie"},
                                "cache_dir": str(tmp_path / "cache")})
    train0, eval0 = load_splits(cfg)
    aug = NeighbourAugmenter(AugmentConfig(copies=2), _embeddings(tok), tok)
    train, evaluation = load_splits(cfg, augment=aug)
    assert evaluation["text"][:] == eval0["text"][:]
    assert len(train) == 3 * len(train0) and train["text"][:len(train0)] == train0["text"][:]
    assert train["idx"][:] == list(range(len(train)))  # unique keys, e.g. for the teacher cache
    assert train["group"][:] == train0["group"][:] * 3 and train["label"][:] == train0["label"][:] * 3
