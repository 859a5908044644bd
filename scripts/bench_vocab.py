"""Peak memory and time of large-vocabulary logit KD: plain vs chunked vs fused (forward + backward).

    python scripts/bench_vocab.py                      # 8192 rows x 32000 classes, hidden width 256
    python scripts/bench_vocab.py --rows 512 --classes 4000 --json

Methods (all soft cross-entropy at temperature 2, student gradients only, teacher logits given):

* ``plain``         ``kd_ce_loss(logits_S, logits_T)``                  -- grads for logits_S
* ``chunked``       ``chunked_kd_loss(logits_S, logits_T)``             -- grads for logits_S
* ``plain_linear``  ``kd_ce_loss(F.linear(hidden_S, W), logits_T)``     -- grads for hidden_S and W
* ``fused``         ``fused_linear_kd_loss(hidden_S, W, logits_T)``     -- grads for hidden_S and W

How memory is measured (CPU): ``tracemalloc`` does not see torch's allocations and the torch profiler reports
per-op allocations rather than a process peak, so each method runs in a fresh subprocess that measures the
operating system's view of it. The worker builds its inputs, runs the method once on a tiny problem (so code
pages and one-time buffers are loaded), resets the kernel's resident-set high-water mark (``echo 5 >
/proc/self/clear_refs``), notes the resident size, runs forward + backward once and reads the high-water mark
``VmHWM`` again. The reported number is ``peak - baseline``: every byte the loss made resident on top of its
inputs, including the gradients it returns (``logits_S.grad`` for plain/chunked, ``hidden_S.grad`` and
``W.grad`` for plain_linear/fused) and anything the allocator kept. Large tensors are ``mmap``-ed and given
back on free, so the high-water mark follows live tensors closely. Where ``clear_refs`` cannot be written
(not Linux), ``ru_maxrss`` is used instead and the JSON says so (it can under-count if building the inputs
peaked higher than the loss).

Time is the wall time of that same single forward + backward (so first-touch page faults count, as they do
in training); ``--repeat k`` reports the best of k further runs instead.

Measured with the defaults on 2 CPU cores shared with other jobs (times vary by tens of percent run to run):

    method          peak MiB  of which grads  vs plain  vs baseline   wall s
    plain             2999.8          1000.0    100.0%       100.0%     5.33
    chunked           1175.4          1000.0     39.2%        39.2%     3.39
    plain_linear      4006.3            39.2    133.6%       100.0%    11.02
    fused              237.3            39.2      7.9%         5.9%    16.18

The fused loss peaks at under 8% of the plain loss. The chunked loss on float32 logits cannot go below a third
of it: the float32 gradient it must return is itself one of the plain loss's three (rows, classes) tensors.
With ``--dtype bfloat16`` (the usual case for large models) plain peaks at 5000 MiB and chunked at 700 MiB
(14%), and chunked is the faster of the two. The fused loss pays for its memory with time: it runs the
output-layer matmul twice (forward, and again in backward).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import subprocess
import sys
import time

METHODS = ("plain", "chunked", "plain_linear", "fused")
TEMPERATURE = 2.0


# -- worker: one method in a fresh process ---------------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> str:
    """Reset the high-water mark; returns the measurement method that will be used."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        if _status_kib("VmHWM") is not None:
            return "VmHWM"
    except OSError:
        pass
    return "ru_maxrss"


def _peak_kib(method: str) -> int:
    if method == "VmHWM":
        return _status_kib("VmHWM")
    scale = 1 if sys.platform.startswith("linux") else 1 / 1024  # macOS reports bytes
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale)


def _current_kib(method: str) -> int:
    return _status_kib("VmRSS") if method == "VmHWM" else _peak_kib(method)


def _make_inputs(method: str, rows: int, classes: int, hidden: int, dtype, seed: int = 0) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    inputs = {"logits_T": (2 * torch.randn(rows, classes, generator=g)).to(dtype)}
    if method in ("plain", "chunked"):
        inputs["logits_S"] = (2 * torch.randn(rows, classes, generator=g)).to(dtype).requires_grad_()
    else:
        inputs["hidden_S"] = torch.randn(rows, hidden, generator=g).to(dtype).requires_grad_()
        w = torch.randn(classes, hidden, generator=g) * (2 / math.sqrt(hidden))
        inputs["weight_S"] = w.to(dtype).requires_grad_()
    return inputs


def _step(method: str, inputs: dict, chunk_size: int | None):
    import torch.nn.functional as F

    from brewkit.losses.kd import kd_ce_loss
    from brewkit.losses.vocab import chunked_kd_loss, fused_linear_kd_loss

    if method == "plain":
        loss = kd_ce_loss(inputs["logits_S"], inputs["logits_T"], TEMPERATURE)
    elif method == "chunked":
        loss = chunked_kd_loss(inputs["logits_S"], inputs["logits_T"], TEMPERATURE, chunk_size=chunk_size)
    elif method == "plain_linear":
        loss = kd_ce_loss(F.linear(inputs["hidden_S"], inputs["weight_S"]), inputs["logits_T"], TEMPERATURE)
    else:
        loss = fused_linear_kd_loss(inputs["hidden_S"], inputs["weight_S"], inputs["logits_T"],
                                    temperature=TEMPERATURE, chunk_size=chunk_size)
    loss.backward()
    return float(loss.detach())


def _clear_grads(inputs: dict) -> None:
    for t in inputs.values():
        t.grad = None


def worker(args: argparse.Namespace) -> dict:
    import torch

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    _step(args.worker, _make_inputs(args.worker, 64, 512, 16, dtype), args.chunk_size)  # warm-up
    inputs = _make_inputs(args.worker, args.rows, args.classes, args.hidden, dtype)
    gc.collect()
    how = _reset_peak()
    base = _current_kib(how)
    t0, c0 = time.perf_counter(), time.process_time()
    loss = _step(args.worker, inputs, args.chunk_size)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    peak = _peak_kib(how) - base
    grads = sum(t.grad.nbytes for t in inputs.values() if t.grad is not None)
    if args.repeat > 0:
        times = []
        for _ in range(args.repeat):
            _clear_grads(inputs)
            t0, c0 = time.perf_counter(), time.process_time()
            _step(args.worker, inputs, args.chunk_size)
            times.append((time.perf_counter() - t0, time.process_time() - c0))
        seconds, cpu_seconds = min(times)
    return {"method": args.worker, "peak_mib": peak / 1024, "grads_mib": grads / 2**20, "seconds": seconds,
            "cpu_seconds": cpu_seconds, "loss": loss,
            "memory_measure": how, "threads": torch.get_num_threads()}


# -- driver ------------------------------------------------------------------------------------------------------
def run_all(args: argparse.Namespace) -> dict:
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": repo_root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    results = []
    for method in args.methods:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--rows", str(args.rows),
               "--classes", str(args.classes), "--hidden", str(args.hidden), "--dtype", args.dtype,
               "--repeat", str(args.repeat), "--threads", str(args.threads)]
        if args.chunk_size:
            cmd += ["--chunk-size", str(args.chunk_size)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"worker {method} failed:\n{proc.stderr}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return summarize(results, args)


def summarize(results: list[dict], args: argparse.Namespace) -> dict:
    """The report: the workers' results with memory ratios, and the size of one (rows, classes) tensor."""
    by = {r["method"]: r for r in results}
    for r in results:
        base = by.get("plain_linear" if r["method"] in ("plain_linear", "fused") else "plain")
        r["ratio_to_plain"] = r["peak_mib"] / by["plain"]["peak_mib"] if "plain" in by else None
        r["ratio_to_its_baseline"] = r["peak_mib"] / base["peak_mib"] if base else None
    elem = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}[args.dtype]
    return {"rows": args.rows, "classes": args.classes, "hidden": args.hidden, "dtype": args.dtype,
            "chunk_size": args.chunk_size, "one_rows_x_classes_float32_mib": args.rows * args.classes * 4 / 2**20,
            "one_rows_x_classes_input_mib": args.rows * args.classes * elem / 2**20, "results": results}


def print_table(report: dict) -> None:
    print(f"{report['rows']} rows x {report['classes']} classes (hidden {report['hidden']}, {report['dtype']}); "
          f"one (rows, classes) float32 tensor = {report['one_rows_x_classes_float32_mib']:.0f} MiB")
    print(f"{'method':<14}{'peak MiB':>10}{'of which grads':>16}{'vs plain':>10}{'vs baseline':>13}"
          f"{'wall s':>9}{'cpu s':>9}{'loss':>12}")
    for r in report["results"]:
        fmt = lambda x: "-" if x is None else f"{x:.1%}"  # noqa: E731
        print(f"{r['method']:<14}{r['peak_mib']:>10.1f}{r['grads_mib']:>16.1f}{fmt(r['ratio_to_plain']):>10}"
              f"{fmt(r['ratio_to_its_baseline']):>13}{r['seconds']:>9.2f}{r['cpu_seconds']:>9.2f}{r['loss']:>12.6f}")
    print("peak MiB: resident-set high-water mark above the inputs during forward + backward "
          f"({report['results'][0]['memory_measure']}), including the gradients returned; baseline: plain for "
          "chunked, plain_linear for fused; cpu s: process CPU time (all threads)")


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=8192)
    p.add_argument("--classes", type=int, default=32000)
    p.add_argument("--hidden", type=int, default=256, help="hidden width for plain_linear / fused")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    p.add_argument("--chunk-size", type=int, default=None, help="rows per chunk (default: automatic)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--repeat", type=int, default=0, help="extra timed runs; report the best")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return None
    report = run_all(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return report


if __name__ == "__main__":
    main()
