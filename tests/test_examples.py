"""The examples run on tiny models and do what they say."""
import importlib
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example(name):
    sys.path.insert(0, str(EXAMPLES))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(EXAMPLES))


def test_custom_loss_example_registers_and_uses_a_loss(tmp_path):
    from brewkit.presets import MATCH_LOSS_MAP

    mod = _example("custom_loss")
    assert MATCH_LOSS_MAP["hidden_l1"] is mod.hidden_l1_loss
    before, after = mod.main(["--output-dir", str(tmp_path), "--epochs", "2"])
    assert after < before


def test_custom_distiller_example_adds_a_term(tmp_path):
    sys.path.insert(0, str(EXAMPLES))
    try:
        mod = _example("custom_distiller")
        before, after = mod.main(["--output-dir", str(tmp_path), "--epochs", "2"])
    finally:
        sys.path.remove(str(EXAMPLES))
    assert after < before
    metrics = (tmp_path / "metrics.jsonl").read_text()
    assert "unweighted_cls_cosine" in metrics
