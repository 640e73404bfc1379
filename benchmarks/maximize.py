"""Activation maximization of all classes in one vmapped call, against a call per class and torch.

What is measured: the wall time of activation maximization with the l2 prior (Montavon et al.,
DSP 2018, Eq. 3.1: maximize log p(c|x) - lambda ||x||^2, lambda 0.01, Adam 0.05, x clipped to
[-1, 1] after every step) of the heatmapping.org tutorial CNN (`sumpool_cnn`, pool_scale 0.5,
32x32x1 inputs, 10 classes; random weights, seed 0, biases perturbed by
`benchmarks.explain.nonzero_biases`), `--steps` steps from the same starting points (0.1 x
N(0, 1), numpy seed 0):

  * vmapped: one `xjax.explain.maximize` call for the 10 classes (every class one problem of one
    `jax.vmap`-ed, jit-compiled optax optimization);
  * one class: one `maximize` call for class 0 (what the vmapped call is compared with);
  * 10 calls: `maximize` once per class, one after the other (what a loop over classes costs);
  * torch: the same optimization in PyTorch eager on the twin (`SumPoolCNNTorch`, same weights),
    the 10 classes stacked in one batch tensor with one `torch.optim.Adam` (Adam is elementwise,
    so one optimizer on the stack is 10 independent problems, as in the vmapped call).

Each xjax time is of a whole `maximize` call as a user makes it: tracing and XLA compilation
included (each call compiles its own optimization: about a second here), the scan segments, and
the copy of the results to numpy. `--rounds` alternating rounds (vmapped, one class, 10 calls,
torch), the median reported with the min..max of the rounds.

Correctness first: before timing, `--check_steps` steps of the vmapped call and of torch from the
same starts, with plain gradient ascent (SGD 0.05) in place of Adam; the prototypes must agree to
`TOLERANCE` (relative L2). Not with Adam: it divides each pixel's gradient by its running scale,
and where that gradient is ~1e-7 (the l2 term cancelling the network's), float32's 2e-8 between
the frameworks' gradients is a few percent of the update; measured, Adam's prototypes agree to
2e-6 after one step and drift to 3e-2 after 20, SGD's stay at float32 rounding.

The last line printed: `vmapped/one_class=... ten_calls/vmapped=... torch/vmapped=...`; the
acceptance for the first is at most 2.

Run: `python -m benchmarks.maximize [--steps 500] [--rounds 3] [--check_steps 20]
[--torch_device cpu|cuda]`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import numpy as np
import optax
import torch
import torch.nn.functional as F

from benchmarks.explain import nonzero_biases, relative_l2, to_nchw, to_nhwc
from benchmarks.torch_models import flax_to_torch, make_torch_model
from xjax.explain.maximize import maximize
from xjax.nn.registry import get_model, init_variables, logits_fn

SHAPE = (32, 32, 1)
NUM_CLASSES = 10
WEIGHT = 0.01
LEARNING_RATE = 0.05
BOUNDS = (-1.0, 1.0)
TOLERANCE = 1e-4


class Setup:
  """The tutorial CNN in both frameworks with the same weights, and the shared starting points."""

  def __init__(self, seed: int = 0, device: str = "cpu"):
    model = get_model("sumpool_cnn", num_classes=NUM_CLASSES, pool_scale=0.5)
    self.variables = nonzero_biases(init_variables(model, jax.random.key(seed), SHAPE), seed)
    self.apply_fn = logits_fn(model)
    twin = make_torch_model("sumpool_cnn", num_classes=NUM_CLASSES, pool_scale=0.5,
                            in_channels=SHAPE[-1])
    self.device = torch.device(device)
    self.twin = flax_to_torch("sumpool_cnn", self.variables, twin).eval().to(self.device)
    rng = np.random.default_rng(seed)
    self.init = np.clip(0.1 * rng.standard_normal((NUM_CLASSES, *SHAPE)), *BOUNDS).astype(
        np.float32)

  def xjax(self, classes: list[int], steps: int, adam: bool = True) -> np.ndarray:
    optimizer = (optax.adam if adam else optax.sgd)(LEARNING_RATE)
    return maximize(self.apply_fn, self.variables, classes, input_shape=SHAPE,
                    key=jax.random.key(0), prior="l2", weight=WEIGHT, steps=steps,
                    optimizer=optimizer, bounds=BOUNDS,
                    init=self.init[classes], progress=False).x

  def torch(self, classes: list[int], steps: int, adam: bool = True) -> np.ndarray:
    x = to_nchw(self.init[classes]).to(self.device).requires_grad_(True)
    targets = torch.as_tensor(classes, device=self.device)
    rows = torch.arange(len(classes), device=self.device)
    optimizer = (torch.optim.Adam if adam else torch.optim.SGD)([x], lr=LEARNING_RATE)
    for _ in range(steps):
      optimizer.zero_grad()
      log_prob = F.log_softmax(self.twin(x), dim=1)[rows, targets]
      total = log_prob - WEIGHT * x.square().flatten(1).sum(1)
      (-total.sum()).backward()  # ascent on every problem's own total
      optimizer.step()
      with torch.no_grad():
        x.clamp_(*BOUNDS)
    return to_nhwc(x)


def print_header() -> None:
  print(f"device: {jax.devices()} ({platform.processor() or platform.machine()}), "
        f"os.cpu_count()={os.cpu_count()}; torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, jax {jax.__version__}")


def timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, float]:
  """Runs the benchmark; returns the median seconds per call of each run and the ratios."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=500,
                      help="optimizer steps per maximization (the experiment's)")
  parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds")
  parser.add_argument("--check_steps", type=int, default=20,
                      help="steps of the correctness check, xjax against torch")
  parser.add_argument("--torch_device", default="cpu",
                      help="the PyTorch side's device, e.g. cuda (default cpu)")
  args = parser.parse_args(argv)
  if args.steps < 1 or args.rounds < 1 or args.check_steps < 1:
    parser.error("--steps, --rounds and --check_steps must be at least 1")

  torch.set_num_threads(os.cpu_count())
  print_header()
  setup = Setup(device=args.torch_device)
  classes = list(range(NUM_CLASSES))
  difference = relative_l2(setup.xjax(classes, args.check_steps, adam=False),
                           setup.torch(classes, args.check_steps, adam=False))
  print(f"check: {args.check_steps} SGD steps from the same starts, prototypes xjax vs torch, "
        f"relative L2 {difference:.2e} (tolerance {TOLERANCE:.0e})")
  if not difference <= TOLERANCE:
    raise SystemExit(f"xjax and torch disagree: relative L2 {difference:.2e} > {TOLERANCE:.0e}")

  runs = {
      "vmapped (10 classes, 1 call)": lambda: setup.xjax(classes, args.steps),
      "one class (1 call)": lambda: setup.xjax([0], args.steps),
      "10 calls (1 class each)": lambda: [setup.xjax([c], args.steps) for c in classes],
      "torch eager (10 classes)": lambda: setup.torch(classes, args.steps),
  }
  times = {name: [] for name in runs}
  for _ in range(args.rounds):
    for name, run in runs.items():
      times[name].append(timed(run))
  print(f"{args.steps} steps of l2 activation maximization, sumpool_cnn 32x32x1, seconds per "
        f"call (median of {args.rounds} rounds, min..max; xjax compile included):")
  median = {name: statistics.median(t) for name, t in times.items()}
  for name, t in times.items():
    print(f"  {name:30s} {median[name]:8.3f} s  ({min(t):.3f}..{max(t):.3f})")
  vmapped, one, ten, eager = (median[name] for name in runs)
  print(f"vmapped/one_class={vmapped / one:.2f} ten_calls/vmapped={ten / vmapped:.2f} "
        f"torch/vmapped={eager / vmapped:.2f}")
  return {"vmapped_s": vmapped, "one_class_s": one, "ten_calls_s": ten, "torch_s": eager,
          "vmapped/one_class": vmapped / one, "ten_calls/vmapped": ten / vmapped,
          "torch/vmapped": eager / vmapped}


if __name__ == "__main__":
  main()
