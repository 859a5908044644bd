"""The README's Python walkthrough runs as written, and its test command is the one CI runs."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    marker = text.index("<!-- walkthrough")
    return re.search(r"```python\n(.*?)```", text[marker:], re.S).group(1)


def test_python_walkthrough_runs(tmp_path, monkeypatch):
    import json

    from brewkit.presets import MATCH_LOSS_MAP

    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    try:
        exec(compile(_walkthrough(), "README.md", "exec"), scope)
    finally:
        MATCH_LOSS_MAP.pop("my_l1", None)
    assert scope["distiller"].global_step == 8
    records = [json.loads(line) for line in (tmp_path / "runs/walkthrough/metrics.jsonl").read_text().splitlines()]
    assert "unweighted_hidden_my_l1_2_4" in records[-1]
    assert (tmp_path / "runs/walkthrough/checkpoint-8/model.safetensors").exists()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"# 2\. the tests\n(.*)\n", readme).group(1).strip()
    assert command in (ROOT / ".ci/run").read_text()
