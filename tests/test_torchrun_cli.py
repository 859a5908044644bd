"""``torchrun --nproc_per_node=2 -m brewkit train RUN.yaml`` on CPU (gloo), end to end."""
import json
import os
import socket
import subprocess
import sys

import pytest
from helpers import reference_accuracy, run_dict, write_run

pytestmark = pytest.mark.slow  # torchrun starts 2 fresh interpreters


def test_torchrun_two_processes_train_a_yaml_run(assets, tmp_path):
    out = tmp_path / "out"
    d = run_dict(assets, out)
    d["data"]["batch_size"] = 4  # 32 rows: 8 batches, 4 per process
    run_file = write_run(tmp_path / "run.yaml", d)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                        "-m", "brewkit", "train", run_file], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]  # 8 batches shared by 2 processes: 4 steps
    assert [r for r in records if "eval_accuracy" in r], "rank 0 evaluated at the checkpoint"
    assert (out / "final" / "model.safetensors").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4
    # rank 0 evaluated the final weights on the whole eval file (12 rows), not on its own shard
    assert summary["eval_accuracy"] == pytest.approx(reference_accuracy(str(out / "final"), assets.eval_rows))
