"""brewkit plot: the figure's curves are the metrics file's records; the PNG, the command, the demo's helper, and
the one-line error without matplotlib."""
import importlib.util
import json
import os

import pytest

from brewkit import plot
from brewkit.cli import main

pytest.importorskip("matplotlib")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def records() -> tuple[list[dict], list[dict]]:
    train = [{"step": s, "epoch": 0 if s <= 3 else 1, "loss": 3.0 - 0.1 * s, "unweighted_kd_loss": 1.0 / s,
              "unweighted_hidden_hidden_mse_1_2": 0.5 + 0.01 * s, "lr": 1e-3 * (7 - s) / 6, "kd_loss_weight": 1.0,
              "grad_norm": 0.9, "samples_per_s": 100.0} for s in range(1, 7)]
    evals = [{"step": 3, "eval_accuracy": 0.6, "eval_macro_f1": 0.5},
             {"step": 6, "eval_accuracy": 0.7, "eval_macro_f1": 0.65}]
    return train, evals


@pytest.fixture
def run_dir(tmp_path):
    train, evals = records()
    lines = [json.dumps(r) for r in train[:3] + evals[:1] + train[3:] + evals[1:]]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 7, "lo', encoding="utf-8")  # torn line
    return tmp_path


def curves(ax) -> dict[str, tuple[list, list]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()
            if not line.get_label().startswith("_")}


def test_the_figure_draws_the_records(run_dir):
    train, evals = records()
    fig = plot.figure(str(run_dir))
    loss, lr, ev = fig.axes[:3]
    steps = [r["step"] for r in train]
    assert curves(loss) == {"loss (weighted total)": (steps, [r["loss"] for r in train]),
                            "kd_loss": (steps, [r["unweighted_kd_loss"] for r in train]),
                            "hidden_hidden_mse_1_2": (steps, [r["unweighted_hidden_hidden_mse_1_2"] for r in train])}
    assert loss.get_yscale() == "log"  # every loss positive
    assert list(lr.get_lines()[0].get_ydata()) == [r["lr"] for r in train]
    assert curves(ev) == {"eval_accuracy": ([3, 6], [0.6, 0.7]), "eval_macro_f1": ([3, 6], [0.5, 0.65])}
    for ax in (loss, lr, ev):  # the epoch boundary: between the last record of epoch 0 and the first of epoch 1
        assert [list(line.get_xdata()) for line in ax.get_lines() if line.get_linestyle() == ":"] == [[3.5, 3.5]]
    assert fig.get_suptitle() == f"{run_dir.name}: 6 steps; final eval_accuracy 0.7000, eval_macro_f1 0.6500"


def test_a_loss_that_reaches_zero_is_drawn_on_a_linear_scale(tmp_path):
    rows = [{"step": 1, "loss": 1.0, "unweighted_kd_loss": 0.0, "lr": 1.0}, {"step": 2, "loss": 0.5, "lr": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    fig = plot.figure(str(tmp_path))
    assert fig.axes[0].get_yscale() == "linear"
    assert curves(fig.axes[0])["kd_loss"] == ([1], [0.0])
    assert fig.axes[2].texts[0].get_text() == "no evaluation records"


def test_plot_run_writes_a_png_next_to_the_metrics_or_where_told(run_dir, tmp_path):
    path = plot.plot_run(str(run_dir))
    assert path == str(run_dir / "run.png")
    out = tmp_path / "pictures" / "deep" / "x.png"
    assert plot.plot_run(str(run_dir), str(out)) == str(out)
    for p in (path, out):
        data = open(p, "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_brewkit_plot_command(run_dir, tmp_path, capsys):
    out = tmp_path / "run.png"
    assert main(["plot", str(run_dir), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out) and out.is_file()
    assert main(["plot", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: PlotError: no metrics.jsonl in ")


def test_without_matplotlib_plot_says_how_to_install_it(run_dir, monkeypatch, capsys):
    monkeypatch.setattr(plot, "matplotlib_installed", lambda: False)
    with pytest.raises(plot.PlotError, match=r"pip install 'brewkit\[plot\]'"):
        plot.plot_run(str(run_dir))
    assert main(["plot", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs matplotlib" in err
    assert not (run_dir / "run.png").exists()


def demo_module():
    spec = importlib.util.spec_from_file_location("demo_script", os.path.join(ROOT, "scripts", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_demo_saves_a_plot_of_each_stage_and_skips_it_without_matplotlib(run_dir, monkeypatch, capsys):
    demo = demo_module()
    assert demo.save_plot(str(run_dir)) == str(run_dir / "run.png") and (run_dir / "run.png").is_file()
    (run_dir / "run.png").unlink()
    monkeypatch.setattr(plot, "matplotlib_installed", lambda: False)
    assert demo.save_plot(str(run_dir)) is None
    assert "matplotlib is not installed" in capsys.readouterr().out and not (run_dir / "run.png").exists()
