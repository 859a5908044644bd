"""Token classification from YAML (``task: token_classification``): word labels on first sub-tokens, KD on real
tokens, entity-level F1 as seqeval computes it (checked against hand-counted entities) and token accuracy."""
import contextlib
import io
import json

import pytest
import torch
from task_helpers import TAGS, VOCAB, ner_assets, ner_run, write_jsonl

from brewkit.build import build
from brewkit.cli import main
from brewkit.errors import ConfigError
from brewkit.evaluation import entity_scores, entity_spans
from brewkit.run import drop_example_index
from brewkit.runfile import load_run


def cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def ner(tmp_path_factory):
    return ner_assets(tmp_path_factory.mktemp("ner"))


# -- entities, by hand -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tags, spans", [
    (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),
    (["O", "O"], []),
    (["I-PER", "I-PER", "O"], [("PER", 0, 1)]),           # an I- without its B- starts an entity (seqeval default)
    (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 0), ("LOC", 1, 2)]),  # a change of type ends one, starts another
    (["B-PER", "B-PER", "I-PER"], [("PER", 0, 0), ("PER", 1, 2)]),  # B- after B- starts a new one
    (["B-ORG"], [("ORG", 0, 0)]),                          # an entity at the very end
    (["O", "I-LOC", "B-LOC", "I-LOC", "O", "I-ORG"], [("LOC", 1, 1), ("LOC", 2, 3), ("ORG", 5, 5)]),
])
def test_entity_spans_follow_seqeval_chunking(tags, spans):
    assert entity_spans(tags) == spans


def test_entity_scores_are_micro_over_sentences_by_hand():
    golds = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-LOC", "I-LOC"], ["O", "O"]]
    preds = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "B-LOC", "O"], ["B-PER", "O"]]
    # gold entities: PER(0,0-1) LOC(0,3) ORG(1,0) LOC(1,2-3) = 4; predicted: PER(0,0-1) ORG(0,3) ORG(1,0) LOC(1,2)
    # PER(2,0) = 5; right: PER(0,0-1), ORG(1,0) = 2 -> P = 2/5, R = 2/4, F1 = 2 * 0.4 * 0.5 / 0.9 = 4/9
    got = entity_scores(golds, preds)
    assert got["entity_precision"] == pytest.approx(2 / 5)
    assert got["entity_recall"] == pytest.approx(2 / 4)
    assert got["entity_f1"] == pytest.approx(4 / 9)
    # the same entity in two sentences counts twice, and a prediction never matches across sentences
    assert entity_scores([["B-PER"], ["O"]], [["O"], ["B-PER"]])["entity_f1"] == 0.0
    assert entity_scores([["O"]], [["O"]]) == {"entity_precision": 0.0, "entity_recall": 0.0, "entity_f1": 0.0}


# -- encoding: tags on first sub-tokens ----------------------------------------------------------------------
def test_word_tags_go_to_the_first_sub_token(ner):
    from transformers import AutoTokenizer

    from brewkit.data import DataConfig
    from brewkit.tasks import get_task

    tok = AutoTokenizer.from_pretrained(ner.tokenizer)
    data = DataConfig(train_file=ner.train, text_column="tokens", label_column="tags", labels=list(TAGS))
    enc = get_task("token_classification").encode({"text": [["smith", "playing", "in", "paris"]],
                                                   "label": [[1, 0, 0, 3]]}, tok, data)
    v = {w: VOCAB.index(w) for w in VOCAB}
    assert enc["input_ids"] == [[v["[CLS]"], v["smith"], v["play"], v["##ing"], v["in"], v["paris"], v["[SEP]"]]]
    assert enc["labels"] == [[-100, 1, 0, -100, 0, 3, -100]]


def test_kd_on_real_tokens_and_cross_entropy_on_first_sub_tokens_by_hand(ner, tmp_path):
    b = build(load_run(ner_run(ner, tmp_path / "o")), with_optimizer=False)
    batch = drop_example_index(next(iter(b.train_loader)))
    mask, labels = batch["attention_mask"].bool(), batch["labels"]
    assert (~mask).any() and ((labels == -100) & mask).any()  # padding, and sub-tokens that carry no tag
    _, terms = b.distiller.dry_run(batch)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        z_t, z_s = b.teacher(**inputs).logits.double(), b.student(**inputs).logits.double()
    tau = 2.0
    log_p_t, log_p_s = torch.log_softmax(z_t[mask] / tau, -1), torch.log_softmax(z_s[mask] / tau, -1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()  # mean over every real token
    tagged = labels != -100
    ce = -torch.log_softmax(z_s[tagged], -1).gather(-1, labels[tagged][:, None]).mean()
    assert float(terms["unweighted_kd_loss"]) == pytest.approx(float(kl), rel=1e-5, abs=1e-7)
    assert float(terms["unweighted_hard_label_loss"]) == pytest.approx(float(ce), rel=1e-5)


# -- a whole run ------------------------------------------------------------------------------------------------
def reference_metrics(model_dir: str, rows: list[dict]) -> dict:
    """From the saved model alone, one row at a time (no padding): each word's tag is the argmax at its first
    sub-token; token accuracy over words, entity scores over the rows."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    model = AutoModelForTokenClassification.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    golds, preds = [], []
    with torch.no_grad():
        for row in rows:
            enc = tok(row["tokens"], is_split_into_words=True, return_tensors="pt")
            pred = model(**enc).logits[0].argmax(-1)
            firsts, seen = [], set()
            for j, w in enumerate(enc.word_ids(0)):
                if w is not None and w not in seen:
                    seen.add(w)
                    firsts.append(j)
            preds.append([TAGS[int(pred[j])] for j in firsts])
            golds.append(row["tags"])
    words = sum(len(g) for g in golds)
    return {"token_accuracy": sum(a == b for g, p in zip(golds, preds) for a, b in zip(g, p)) / words,
            **entity_scores(golds, preds)}


def test_a_token_classification_run_end_to_end(ner, tmp_path):
    import yaml

    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump(ner_run(ner, tmp_path / "out")), encoding="utf-8")
    code, out, err = cli("validate", run_file)
    assert code == 0, err
    assert "task: token_classification (AutoModelForTokenClassification)" in out
    assert "evaluation: entity_f1 on the eval split" in out
    counts = next(line for line in out.splitlines() if line.startswith("positions counted in the first batch"))
    assert "real tokens (KD)" in counts and "words (hard labels)" in counts
    code, out, err = cli("train", run_file)
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    expected = reference_metrics(str(tmp_path / "out" / "final"), ner.eval_rows)
    assert 0 < expected["entity_f1"] < 1 and 0 < expected["token_accuracy"] < 1
    for key, value in expected.items():
        assert summary[f"eval_{key}"] == pytest.approx(value, abs=1e-12), key
    code, out, err = cli("eval", run_file, "--checkpoint", tmp_path / "out" / "final")
    assert code == 0, err
    assert f"eval_entity_f1: {summary['eval_entity_f1']}" in out


# -- broken data --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows, path, fragment", [
    ([{"tokens": ["john", "smith"], "tags": ["B-PER"]}], "data.label_column", "has 2 words but"),
    ([{"tokens": ["john"], "tags": ["B-PERSON"]}], "data.labels", "'B-PERSON', which is not in labels"),
    ([{"tokens": "john smith", "tags": ["B-PER", "I-PER"]}], "data.text_column", "must hold a list of words"),
])
def test_broken_token_rows_name_the_row(ner, tmp_path, rows, path, fragment):
    run = ner_run(ner, tmp_path / "o")
    run["data"]["train_file"] = write_jsonl(tmp_path / "bad.jsonl", rows * 4 + [{"tokens": ["a"], "tags": ["O"]}])
    with pytest.raises(ConfigError) as e:
        build(load_run(run), with_optimizer=False)
    assert e.value.path == path and fragment in str(e.value)


def test_tag_ids_in_the_file_are_taken_as_ids(ner, tmp_path):
    rows = [{"tokens": ["john", "lives", "in", "paris"], "tags": [1, 0, 0, 3]},
            {"tokens": ["acme", "works"], "tags": [5, 0]}]
    run = ner_run(ner, tmp_path / "o")
    run["data"]["train_file"] = write_jsonl(tmp_path / "ids.jsonl", rows)
    run["data"]["eval_file"] = None
    b = build(load_run(run), with_optimizer=False)
    batch = next(iter(b.train_loader))
    tagged = sorted(int(t) for t in batch["labels"][batch["labels"] != -100])
    assert tagged == sorted([1, 0, 0, 3, 5, 0])
