"""The seed-loss examples run quickly and improve their metric."""
import re
import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, capsys) -> tuple[dict, str]:
    module = runpy.run_path(str(EXAMPLES / name), run_name="example_under_test")   # defines main(), runs nothing
    result = module["main"](["--quick"])
    return result, capsys.readouterr().out


def reported(out: str) -> tuple[float, float]:
    m = re.search(r"^RESULT metric=\w+ before=([\d.]+) after=([\d.]+)$", out, re.MULTILINE)
    assert m, out
    return float(m.group(1)), float(m.group(2))


def test_ranking_distillation_improves_teacher_order_agreement(capsys):
    result, out = run_example("ranking_distillation.py", capsys)
    before, after = reported(out)
    assert "before:" in out and "after:" in out
    assert before == pytest.approx(result["before"], abs=1e-4) and after == pytest.approx(result["after"], abs=1e-4)
    assert 0.4 < before < 0.6            # an untrained scorer agrees with the teacher about half the time
    assert after > before + 0.08
    assert result["label_after"] > result["label_before"]   # and it ranks fresh reviews higher, never told how


def test_large_output_sampled_softmax_improves_full_softmax_accuracy(capsys):
    result, out = run_example("large_output_sampled_softmax.py", capsys)
    before, after = reported(out)
    assert "50000 classes" in out
    assert before < 0.01
    assert after > 0.2
    assert result["ce_after"] < result["ce_before"] - 2.0
