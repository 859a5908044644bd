"""A 50,000-class student trained with TAPAS rank-sampled softmax plus logit KD on the sampled classes.

No dataset shipped with this environment has 50k labels, so the task is synthetic and says so: an
extreme-classification problem with Zipf-distributed class frequencies (like words or products). Class c has
a prototype ``mu_c`` (a random 16-d latent mapped to 32-d features); an example of class c is
``x = mu_c + sigma * noise``.

* Teacher: the Bayes-optimal classifier of that generator, a 50,000-way linear layer
  ``z_T = x . mu_c / sigma^2 - |mu_c|^2 / (2 sigma^2) + log prior_c`` (it stands in for a large trained model).
* Student: a small network (32 -> 32 with tanh) and its own 50,000 x 32 output layer, randomly initialised.
  Each step never touches the full softmax:

  - hard labels: ``brewkit.losses.rank_sampled_softmax_loss`` (1,024 candidates from a learned-unigram
    sampler, the 256 most relevant kept by TAPAS's second pass);
  - KD: ``brewkit.losses.kd_ce_loss`` between teacher and student logits restricted to the step's candidate
    classes (the labels plus the phase-1 candidates), i.e. both softmaxes renormalised over those classes.

* Metric: full-softmax top-1 accuracy and cross-entropy over all 50,000 classes on held-out examples.

Run: ``python examples/large_output_sampled_softmax.py`` (``--quick`` for a few-second run).
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from brewkit.losses import kd_ce_loss, rank_sampled_softmax_loss
from brewkit.losses.sampled_softmax import LearnedUnigramSampler


class SyntheticTask:
    """Zipf-distributed classes with Gaussian examples around random prototypes."""

    def __init__(self, num_classes: int, dim: int = 32, latent: int = 16, sigma: float = 1.0, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.generator = g
        self.sigma = sigma
        self.mu = torch.randn(num_classes, latent, generator=g) @ (torch.randn(latent, dim, generator=g)
                                                                   / math.sqrt(latent))
        ranks = torch.arange(1, num_classes + 1, dtype=torch.float64)
        prior = ranks.pow(-1.1)
        self.prior = (prior / prior.sum()).float()
        # the Bayes-optimal teacher: log N(x; mu_c, sigma^2 I) + log prior_c, up to a constant
        self.teacher_weight = self.mu / sigma**2
        self.teacher_bias = -(self.mu**2).sum(-1) / (2 * sigma**2) + self.prior.log()

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.multinomial(self.prior, n, replacement=True, generator=self.generator)
        x = self.mu[labels] + self.sigma * torch.randn(n, self.mu.shape[1], generator=self.generator)
        return x, labels


class Student(nn.Module):
    def __init__(self, num_classes: int, dim: int = 32):
        super().__init__()
        self.body = nn.Linear(dim, dim)
        self.out_weight = nn.Parameter(torch.randn(num_classes, dim) * 0.01)
        self.out_bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.body(x))


def full_softmax_metrics(weight: torch.Tensor, bias: torch.Tensor, h: torch.Tensor, labels: torch.Tensor
                         ) -> tuple[float, float]:
    """(top-1 accuracy, mean cross-entropy) over all classes, in chunks of rows."""
    correct, nll = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(labels), 250):
            logits = h[i:i + 250] @ weight.T + bias
            y = labels[i:i + 250]
            correct += (logits.argmax(-1) == y).sum().item()
            nll += F.cross_entropy(logits, y, reduction="sum").item()
    return correct / len(labels), nll / len(labels)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few-second run (fewer steps)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 1500, quick 60)")
    parser.add_argument("--num-classes", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    steps = args.steps or (60 if args.quick else 1500)
    num_classes, num_sampled, num_resampled, batch = args.num_classes, 1024, 256, 256
    torch.manual_seed(args.seed)

    task = SyntheticTask(num_classes, seed=args.seed)
    student = Student(num_classes)
    sampler = LearnedUnigramSampler(num_classes, generator=torch.Generator().manual_seed(args.seed + 1))
    x_eval, y_eval = task.sample(500 if args.quick else 2000)

    def evaluate() -> tuple[float, float]:
        with torch.no_grad():
            return full_softmax_metrics(student.out_weight, student.out_bias, student(x_eval), y_eval)

    teacher = full_softmax_metrics(task.teacher_weight, task.teacher_bias, x_eval, y_eval)
    before = evaluate()
    print(f"{num_classes} classes; teacher (Bayes-optimal): top-1 {teacher[0]:.3f}, cross-entropy {teacher[1]:.3f}")
    print(f"before: student top-1 {before[0]:.3f}, full-softmax cross-entropy {before[1]:.3f}")

    opt = torch.optim.Adam(student.parameters(), lr=0.01)
    for step in range(1, steps + 1):
        x, labels = task.sample(batch)
        h = student(x)
        sampled_values = sampler(labels[:, None], num_sampled)
        hard = rank_sampled_softmax_loss(student.out_weight, student.out_bias, labels[:, None], h, num_sampled,
                                         num_resampled, num_classes, sampled_values=sampled_values,
                                         resampling_temperature=1.0).mean()
        classes = torch.unique(torch.cat([labels, sampled_values[0]]))
        logits_S = h @ student.out_weight[classes].T + student.out_bias[classes]
        with torch.no_grad():
            logits_T = x @ task.teacher_weight[classes].T + task.teacher_bias[classes]
        kd = kd_ce_loss(logits_S, logits_T, temperature=2.0)
        loss = 0.5 * hard + 0.5 * kd
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(steps // 5, 1) == 0:
            print(f"step {step:5d}  sampled softmax {hard.item():.3f}  kd {kd.item():.3f}")

    after = evaluate()
    print(f"after:  student top-1 {after[0]:.3f}, full-softmax cross-entropy {after[1]:.3f}")
    print(f"RESULT metric=full_softmax_top1 before={before[0]:.4f} after={after[0]:.4f}")
    return {"before": before[0], "after": after[0], "ce_before": before[1], "ce_after": after[1],
            "teacher": teacher[0]}


if __name__ == "__main__":
    main()
