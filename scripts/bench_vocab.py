"""Peak memory and time of large-vocabulary logit KD, per divergence: plain vs chunked vs fused (forward + backward).

    python scripts/bench_vocab.py                      # 8192 rows x 32000 classes, hidden width 256, every kind
    python scripts/bench_vocab.py --kinds jsd tvd --rows 512 --classes 4000 --json

For each divergence ``kind`` (``ce``, ``kl``, ``reverse_kl``, ``jsd`` at beta 0.5, ``skew_kl`` and
``skew_reverse_kl`` at alpha 0.1, ``tvd``; temperature 2, student gradients only, teacher logits given):

* ``plain``         ``KD_LOSS_MAP[kind](logits_S, logits_T)``                    -- grads for logits_S
* ``chunked``       ``chunked_kd_loss(logits_S, logits_T, kind=kind)``           -- grads for logits_S
* ``plain_linear``  ``KD_LOSS_MAP[kind](F.linear(hidden_S, W), logits_T)``       -- grads for hidden_S and W
* ``fused``         ``fused_linear_kd_loss(hidden_S, W, logits_T, kind=kind)``   -- grads for hidden_S and W

How memory is measured (CPU): ``tracemalloc`` does not see torch's allocations and the torch profiler reports
per-op allocations rather than a process peak, so each method runs in a fresh subprocess that measures the
operating system's view of it. The worker builds its inputs, runs the method once on a tiny problem (so code
pages and one-time buffers are loaded), resets the kernel's resident-set high-water mark (``echo 5 >
/proc/self/clear_refs``), notes the resident size, runs forward + backward once and reads the high-water mark
``VmHWM`` again. The reported number is ``peak - baseline``: every byte the loss made resident on top of its
inputs, including the gradients it returns (``logits_S.grad`` for plain/chunked, ``hidden_S.grad`` and
``W.grad`` for plain_linear/fused) and anything the allocator kept. Large tensors are ``mmap``-ed and given
back on free, so the high-water mark follows live tensors closely; blocks under glibc's mmap threshold (which
grows up to 32 MiB as large blocks are freed) come from the heap, which keeps freed memory, so losses that
work in many chunk-sized temporaries show more than their live tensors (``--malloc-mmap-threshold 4194304``
measures closer to the live tensors). Where ``clear_refs`` cannot be written
(not Linux), ``ru_maxrss`` is used instead and the JSON says so (it can under-count if building the inputs
peaked higher than the loss). Memory does not depend on what else runs on the machine; time does.

Time is the wall time of that same single forward + backward (so first-touch page faults count, as they do
in training); ``--repeat k`` reports the best of k further runs instead. The header names the CPU and its
bf16 support (``avx512_bf16`` / ``amx_bf16`` flags, torch's CPU capability).

Peak memory (MiB) measured with the defaults (float32, 8192 x 32000, hidden 256, default chunks; one
(rows, classes) float32 tensor = 1000 MiB) on an AMD EPYC (avx512_bf16, torch CPU capability AVX512), torch
2.13 CPU; "fused / plain" compares with the same kind's plain loss on logits. The last two columns are the
same run with ``--malloc-mmap-threshold 4194304`` (glibc gives freed chunk temporaries back at once):

    kind             plain  chunked  plain_linear  fused  fused / plain   | chunked*  fused*  fused* / plain
    ce                3000     1192          4006    301          10.0%   |     1023     301           10.0%
    kl                6250     1103          7256    681          10.9%   |     1044     277            4.4%
    reverse_kl        6250     1166          7256    717          11.5%   |     1045     277            4.4%
    jsd (beta 0.5)   12000     1136         13006    741           6.2%   |     1076     301            2.5%
    skew_kl (0.1)    10500     1130         11506    653           6.2%   |     1072     289            2.8%
    skew_reverse_kl   9500     1129         10505    709           7.5%   |     1067     289            3.0%
    tvd               4000     1165          4007    301           7.5%   |     1029     301            7.5%

Chunked and fused hold about one chunk's temporaries (about 256 MiB for fused by default, whatever the kind)
plus the gradients they return; the plain losses grow with the rows and with the divergence's number of
(rows, classes) intermediates (jsd keeps twelve). Times are not quoted here: they depend on what else runs on
the machine; measure them on a quiet one (``--repeat 3``).

The chunked loss on float32 logits cannot go below a third of the plain ``ce``: the float32 gradient it must
return is itself one of the plain loss's (rows, classes) tensors. The fused loss never makes the student's
(rows, classes) logits or their gradient; it pays with time, running the output-layer matmul twice
(forward, and again in backward).
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
KINDS = ("ce", "kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd")
TEMPERATURE = 2.0


def machine() -> dict:
    """The CPU model, its bf16 instruction flags and torch's CPU capability (e.g. AVX512)."""
    model, flags = "unknown", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = [x for x in line.split(":", 1)[1].split() if "bf16" in x or x.startswith("amx")]
    except OSError:
        pass
    import torch

    return {"cpu": model, "bf16_flags": flags, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "logical_cpus": os.cpu_count(), "torch": torch.__version__}


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


def _step(method: str, kind: str, inputs: dict, chunk_size: int | None):
    import torch.nn.functional as F

    from brewkit.losses.divergences import kd_loss_implementation

    if method == "plain":
        loss = kd_loss_implementation(kind, "plain")(inputs["logits_S"], inputs["logits_T"], TEMPERATURE)
    elif method == "chunked":
        loss = kd_loss_implementation(kind, "chunked")(inputs["logits_S"], inputs["logits_T"], TEMPERATURE,
                                                       chunk_size=chunk_size)
    elif method == "plain_linear":
        loss = kd_loss_implementation(kind, "plain")(F.linear(inputs["hidden_S"], inputs["weight_S"]),
                                                     inputs["logits_T"], TEMPERATURE)
    else:
        loss = kd_loss_implementation(kind, "fused")(inputs["hidden_S"], inputs["weight_S"], inputs["logits_T"],
                                                     TEMPERATURE, chunk_size=chunk_size)
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
    kind = getattr(args, "kind", "ce")
    _step(args.worker, kind, _make_inputs(args.worker, 64, 512, 16, dtype), args.chunk_size)  # warm-up
    inputs = _make_inputs(args.worker, args.rows, args.classes, args.hidden, dtype)
    gc.collect()
    how = _reset_peak()
    base = _current_kib(how)
    t0, c0 = time.perf_counter(), time.process_time()
    loss = _step(args.worker, kind, inputs, args.chunk_size)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    peak = _peak_kib(how) - base
    grads = sum(t.grad.nbytes for t in inputs.values() if t.grad is not None)
    if args.repeat > 0:
        times = []
        for _ in range(args.repeat):
            _clear_grads(inputs)
            t0, c0 = time.perf_counter(), time.process_time()
            _step(args.worker, kind, inputs, args.chunk_size)
            times.append((time.perf_counter() - t0, time.process_time() - c0))
        seconds, cpu_seconds = min(times)
    return {"kind": kind, "method": args.worker, "peak_mib": peak / 1024, "grads_mib": grads / 2**20,
            "seconds": seconds,
            "cpu_seconds": cpu_seconds, "loss": loss,
            "memory_measure": how, "threads": torch.get_num_threads()}


# -- driver ------------------------------------------------------------------------------------------------------
def run_all(args: argparse.Namespace) -> dict:
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": repo_root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if args.malloc_mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)  # glibc: mmap (and give back) from here up
    results = []
    for kind in args.kinds:
        for method in args.methods:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--kind", kind,
                   "--rows", str(args.rows), "--classes", str(args.classes), "--hidden", str(args.hidden),
                   "--dtype", args.dtype, "--repeat", str(args.repeat), "--threads", str(args.threads)]
            if args.chunk_size:
                cmd += ["--chunk-size", str(args.chunk_size)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise SystemExit(f"worker {kind}/{method} failed:\n{proc.stderr}")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            if args.progress:
                r = results[-1]
                print(f"  {kind:<16}{method:<14}{r['peak_mib']:>10.1f} MiB", file=sys.stderr, flush=True)
    return summarize(results, args)


def summarize(results: list[dict], args: argparse.Namespace) -> dict:
    """The report: the workers' results with memory ratios (within each kind), and the machine."""
    by = {(r.get("kind", "ce"), r["method"]): r for r in results}
    for r in results:
        kind = r.setdefault("kind", "ce")
        plain = by.get((kind, "plain"))
        base = by.get((kind, "plain_linear" if r["method"] in ("plain_linear", "fused") else "plain"))
        r["ratio_to_plain"] = r["peak_mib"] / plain["peak_mib"] if plain and plain["peak_mib"] > 0 else None
        r["ratio_to_its_baseline"] = r["peak_mib"] / base["peak_mib"] if base and base["peak_mib"] > 0 else None
    elem = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}[args.dtype]
    return {"rows": args.rows, "classes": args.classes, "hidden": args.hidden, "dtype": args.dtype,
            "chunk_size": args.chunk_size, "malloc_mmap_threshold": getattr(args, "malloc_mmap_threshold", None),
            "one_rows_x_classes_float32_mib": args.rows * args.classes * 4 / 2**20,
            "one_rows_x_classes_input_mib": args.rows * args.classes * elem / 2**20, "machine": machine(),
            "results": results}


def print_table(report: dict) -> None:
    m = report.get("machine") or machine()
    print(f"CPU: {m['cpu']} ({m['logical_cpus']} logical CPUs), bf16 flags: {', '.join(m['bf16_flags']) or 'none'}, "
          f"torch {m['torch']} CPU capability {m['torch_cpu_capability']}")
    print(f"{report['rows']} rows x {report['classes']} classes (hidden {report['hidden']}, {report['dtype']}); "
          f"one (rows, classes) float32 tensor = {report['one_rows_x_classes_float32_mib']:.0f} MiB")
    print(f"{'kind':<17}{'method':<14}{'peak MiB':>10}{'of which grads':>16}{'vs plain':>10}{'vs baseline':>13}"
          f"{'wall s':>9}{'cpu s':>9}{'loss':>12}")

    def fmt(x):
        return "-" if x is None else f"{x:.1%}"

    for r in report["results"]:
        print(f"{r['kind']:<17}{r['method']:<14}{r['peak_mib']:>10.1f}{r['grads_mib']:>16.1f}"
              f"{fmt(r['ratio_to_plain']):>10}{fmt(r['ratio_to_its_baseline']):>13}{r['seconds']:>9.2f}"
              f"{r['cpu_seconds']:>9.2f}{r['loss']:>12.6f}")
    print("peak MiB: resident-set high-water mark above the inputs during forward + backward "
          f"({report['results'][0]['memory_measure']}), including the gradients returned; vs plain: the same kind's "
          "plain loss on logits; baseline: plain for chunked, plain_linear for fused; cpu s: process CPU time "
          "(all threads)")


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=8192)
    p.add_argument("--classes", type=int, default=32000)
    p.add_argument("--hidden", type=int, default=256, help="hidden width for plain_linear / fused")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    p.add_argument("--chunk-size", type=int, default=None, help="rows per chunk (default: automatic)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="divergences to measure")
    p.add_argument("--progress", action="store_true", help="print each worker's peak to stderr as it finishes")
    p.add_argument("--malloc-mmap-threshold", type=int, default=None, metavar="BYTES",
                   help="glibc's MALLOC_MMAP_THRESHOLD_ for the workers: blocks this large or larger are mmap-ed and "
                        "given back when freed (default: glibc's dynamic threshold, up to 32 MiB)")
    p.add_argument("--repeat", type=int, default=0, help="extra timed runs; report the best")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--kind", choices=KINDS, default="ce", help=argparse.SUPPRESS)
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
