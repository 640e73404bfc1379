"""The same batch scored by xjax's metrics (JAX, batched, jit-compiled) and by Quantus 0.6.0.

What is measured: the wall time of one call of each metric on one batch (`--batch`, default 32)
of 28x28x1 images: the built-in shapes data (`xjax.data.shapes.render_batch`, 4 classes, seed 0,
the RGB images averaged to one grey channel in [0, 1]), the target the image's label, its
ground-truth `mask` the object's pixels, and the relevance gradient x input of the target's logit
computed once by xjax and given to both as the same array. The model is the Table-1 MNIST CNN
(`cnn_mnist`, 4 classes, random weights, seed 0): xjax's Flax model, and for Quantus its PyTorch
twin (`benchmarks/torch_models.py`, `CNNMnistTorch`, same weights, eval mode).

The metrics, with the settings under which Quantus's scores equal xjax's (those of
tests/metrics/test_quantus_parity.py and test_quantus_faithfulness.py; `normalise=False` on all,
`disable_warnings=True`, no progress bar, Quantus given NCHW arrays, `channel_first=True`,
`batch_size` = the batch, `device="cpu"`):

  * pixel_flipping: `PixelFlipping(features_in_step=F, perturb_baseline="black", abs=False)`
    called with `softmax=False`: all 784 pixels flipped, F (`--features_in_step`, default 16) a
    step, so 784 / F steps (49: about 2% a step); Quantus returns the target's logit after each
    step, xjax's `pixel_flipping(steps=784 // F, baseline=x.min((1, 2, 3)))` its `curves[:, 1:]`.
    Quantus's "black" is each image's minimum; with one channel Quantus's features are pixels.
  * region_perturbation: `RegionPerturbation(patch_size=P, regions_evaluation=all patches)`,
    `softmax=False`: P (`--patch_size`) 4, 49 patches; Quantus returns the drops f(x) - f(x^(k)),
    xjax's `curves[:, :1] - curves[:, 1:]`.
  * faithfulness_correlation: `FaithfulnessCorrelation(nr_runs=N, subset_size=S,
    perturb_baseline="black", return_aggregate=False)` (N 100 as Quantus's default, S
    `--subset_size` 64 of the 784 pixels). The two draw their random subsets differently (numpy
    against a JAX key); the check records Quantus's subsets (a `perturb_func` wrapping its own)
    and scores them with xjax's `subset_correlation`; the timed xjax call is
    `faithfulness_correlation` drawing its own N subsets of S pixels.
  * pointing_game, attribution_localisation (`positive_attributions=True`),
    relevance_mass_accuracy, relevance_rank_accuracy: `abs=False`, Quantus given the mask as
    `s_batch` and `model=None` (it runs no model for these, as the parity tests call them).
  * sparseness, complexity: Quantus's defaults but `normalise=False`, `model=None`.

xjax: `jax.jit(functools.partial(metric, apply_fn, **static options))` called with the params,
x, target, relevance and the array options (mask, baseline, key) as arguments; its first call
(tracing, XLA compilation and one run) is timed apart and printed as "compile"; every timed
call ends with `jax.block_until_ready`. Quantus: the metric object built once, outside the
timing; each timed call is its `__call__` as a user makes it (which wraps the torch model, runs
its checks and the metric), on a fresh copy of the relevance (Quantus edits `a_batch` in place).

Correctness first (`check_metrics`): before timing, every metric runs once in both on the timed
batch and the scores must agree to `TOLERANCE` (those of the parity tests; the pointing game
exactly); the largest difference is printed.

How it is timed: `--rounds` alternating rounds; in each round every metric runs `n` calls in
xjax and then `m` calls in Quantus (`n`, `m` chosen from the check so that each side takes about
`--round_s` seconds). Reported per metric: seconds per call, the median over the rounds with the
min..max, and `quantus/xjax` = Quantus's median / xjax's median (> 1: xjax is faster), after
"of minima" the same ratio of the fastest rounds (the least disturbed by other processes; where
the two differ much, the machine was busy: see "Threads"). The last line holds the ratios of the
two metrics of the acceptance (pixel flipping, region perturbation: xjax at least 10x Quantus's
speed on the same batch, model and CPU).

Threads: XLA's default CPU thread pool (all cores) for xjax. For the torch model under Quantus,
`--torch_threads` N, or by default the faster of 1 and all cores (`pick_torch_threads`: 10
forward passes of the batch with each, twice, alternating; the choice and the times printed), so
that Quantus is not slowed by a thread setting that does not suit the machine. On a machine whose
cores other processes also use, torch's OpenMP threads wait for each other: measured on 2 shared
cores (load average 3-7), 49 forward passes of the MNIST CNN on 32 images took 0.6-0.9 s with
one torch thread and 4-5 s with two (0.3-0.4 s with two when the load dropped); XLA's times moved
by far less (up to 2x between rounds). With two torch threads throughout, such a run gave
quantus/xjax 13 on pixel flipping, where one thread gave 2. The header prints the load average.

What bounds the ratio on the faithfulness metrics: both run the same number of forward passes of the
same network, B images each (pixel flipping: 50 in xjax, the unperturbed image included, 49 in
Quantus; region perturbation 50 and faithfulness correlation 101 in both), so the ratio is about
that of XLA's compiled CNN to torch eager, plus Quantus's numpy work per step (perturbing, and
comparing every perturbed image with the original for its "perturbation caused no change" warning,
which runs whether or not warnings are disabled; ~10% of its pixel-flipping time in a profile).

Run: `python -m benchmarks.metrics [--batch 32] [--rounds 3] [--round_s 0.5]
[--features_in_step 16] [--patch_size 4] [--subset_size 64] [--torch_threads N] [--quick]`.
`--quick`: batch 8, one round of 0.2 s (under a minute). Numbers from a machine shared with other
processes are noisy: look at the min..max of the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import torch

from benchmarks.quantus_loader import hidden, import_quantus
from benchmarks.torch_models import flax_to_torch, make_torch_model
from xjax.data.shapes import render_batch
from xjax.explain.gradients import gradient_x_input
from xjax.metrics import (
  attribution_localisation,
  complexity,
  faithfulness_correlation,
  pixel_flipping,
  pointing_game,
  region_perturbation,
  relevance_mass_accuracy,
  relevance_rank_accuracy,
  sparseness,
)
from xjax.metrics.faithfulness_correlation import subset_correlation
from xjax.nn.registry import get_model, init_variables, logits_fn

MODEL = "cnn_mnist"
IMAGE_SIZE = 28
NUM_CLASSES = 4
SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 1)
# The parity tests' tolerances: the metrics that run the model (float32 logits of XLA and torch
# convolutions) to 1e-4, those that only read the relevance to 1e-5; the pointing game exactly.
MODEL_TOLERANCE = dict(atol=1e-4, rtol=1e-4)
RELEVANCE_TOLERANCE = dict(atol=1e-5, rtol=1e-5)
TOLERANCE: dict[str, dict[str, float]] = {
    "pixel_flipping": MODEL_TOLERANCE,
    "region_perturbation": MODEL_TOLERANCE,
    "faithfulness_correlation": MODEL_TOLERANCE,
    "pointing_game": dict(atol=0.0, rtol=0.0),
    "attribution_localisation": RELEVANCE_TOLERANCE,
    "relevance_mass_accuracy": RELEVANCE_TOLERANCE,
    "relevance_rank_accuracy": RELEVANCE_TOLERANCE,
    "sparseness": RELEVANCE_TOLERANCE,
    "complexity": RELEVANCE_TOLERANCE,
}
ACCEPTANCE = ("pixel_flipping", "region_perturbation")


quantus = import_quantus()
from quantus.functions.perturb_func import (  # noqa: E402 (after import_quantus, as above)
  batch_baseline_replacement_by_indices,
)

# --------------------------------------------------------------------------------------------------
# The batch, the model in both frameworks, and the metrics' calls.


def nchw(a: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.transpose(a, (0, 3, 1, 2)))


class Setup:
  """The batch, the relevance and the MNIST CNN in both frameworks with the same weights."""

  def __init__(self, batch_size: int, seed: int = 0):
    model = get_model(MODEL, num_classes=NUM_CLASSES)
    self.variables = init_variables(model, jax.random.key(seed), SHAPE)
    self.apply_fn = logits_fn(model)
    twin = make_torch_model(MODEL, num_classes=NUM_CLASSES, image_size=IMAGE_SIZE, in_channels=1)
    self.twin = flax_to_torch(MODEL, self.variables, twin).eval()
    data = render_batch(np.random.default_rng(seed), batch_size, image_size=IMAGE_SIZE,
                        num_classes=NUM_CLASSES)
    self.x = (data["image"].astype(np.float32).mean(-1, keepdims=True) / 255).astype(np.float32)
    self.y = data["label"].astype(np.int64)
    self.mask = data["mask"].astype(bool)
    explain = jax.jit(functools.partial(gradient_x_input, self.apply_fn))
    self.relevance = np.asarray(explain(self.variables, self.x, self.y), np.float32)
    self.black = self.x.min((1, 2, 3), keepdims=True)  # Quantus's "black": each image's minimum

  def quantus(self, metric, model: bool = True, masks: bool = False, **options) -> np.ndarray:
    """Quantus's scores as a user gets them: `metric(...)` on NCHW copies, as float64.

    Copies (`nchw` of a one-channel array is a view): Quantus edits `a_batch` in place (e.g. its
    abs=True), which would change the relevance of every later call in both frameworks.
    """
    s_batch = nchw(self.mask[..., None].astype(np.float32)) if masks else None
    with hidden(("tensorflow", "keras")), warnings.catch_warnings():
      warnings.simplefilter("ignore")  # e.g. "perturbation caused no change"; still computed
      scores = metric(model=self.twin if model else None, x_batch=nchw(self.x).copy(),
                      y_batch=self.y, a_batch=nchw(self.relevance).copy(), s_batch=s_batch,
                      channel_first=True, batch_size=len(self.y), device="cpu", **options)
    return np.asarray(scores, np.float64)


class Metric(NamedTuple):
  """One metric in both: the timed calls, and the pair of score arrays the check compares."""

  xjax: Callable[[], Any]  # one jitted call, blocked on
  quantus: Callable[[], Any]  # one Quantus __call__
  check: Callable[[], tuple[np.ndarray, np.ndarray]]  # (xjax's scores, Quantus's) as float64


def _blocked(fn: Callable, *args, **kwargs) -> Callable[[], Any]:
  return lambda: jax.block_until_ready(fn(*args, **kwargs))


def make_metrics(setup: Setup, features_in_step: int = 16, patch_size: int = 4,
                 subset_size: int = 64, num_samples: int = 100) -> dict[str, Metric]:
  """The metrics of the module docstring, in the order printed."""
  s = setup
  args = (s.variables, s.x, s.y, s.relevance)
  num_pixels = IMAGE_SIZE * IMAGE_SIZE
  if num_pixels % features_in_step:
    raise ValueError(f"features_in_step must divide the {num_pixels} pixels (Quantus asserts "
                     f"it); got {features_in_step}")
  metrics: dict[str, Metric] = {}

  def as_float(fn):
    return lambda: np.asarray(fn(), np.float64)

  # Pixel flipping: Quantus's curve is the logit after steps 1..n.
  xjax_pf = jax.jit(functools.partial(pixel_flipping, s.apply_fn,
                                      steps=num_pixels // features_in_step))
  call_pf = _blocked(xjax_pf, *args, baseline=s.black)
  quantus_pf = quantus.PixelFlipping(features_in_step=features_in_step, perturb_baseline="black",
                                     abs=False, normalise=False, disable_warnings=True,
                                     display_progressbar=False)
  run_pf = lambda: s.quantus(quantus_pf, softmax=False)
  metrics["pixel_flipping"] = Metric(
      call_pf, run_pf, lambda: (np.asarray(call_pf().curves[:, 1:], np.float64), run_pf()))

  # Region perturbation: Quantus returns the drops f(x) - f(x^(k)), k = 1..all patches.
  xjax_rp = jax.jit(functools.partial(region_perturbation, s.apply_fn, patch_size=patch_size))
  call_rp = _blocked(xjax_rp, *args, baseline=s.black)
  regions = math.ceil(IMAGE_SIZE / patch_size) ** 2
  quantus_rp = quantus.RegionPerturbation(patch_size=patch_size, regions_evaluation=regions,
                                          perturb_baseline="black", normalise=False,
                                          disable_warnings=True, display_progressbar=False)
  run_rp = lambda: s.quantus(quantus_rp, softmax=False)

  def check_rp():
    curves = np.asarray(call_rp().curves, np.float64)
    assert curves.shape[1] == regions + 1, curves.shape
    return curves[:, :1] - curves[:, 1:], run_rp()

  metrics["region_perturbation"] = Metric(call_rp, run_rp, check_rp)

  # Faithfulness correlation: timed on its own random subsets in each; checked on Quantus's.
  xjax_fc = jax.jit(functools.partial(faithfulness_correlation, s.apply_fn,
                                      subset_size=subset_size, num_samples=num_samples))
  call_fc = _blocked(xjax_fc, *args, baseline=s.black, key=jax.random.key(0))

  def quantus_fc(perturb_func=None):
    options = {} if perturb_func is None else {"perturb_func": perturb_func}
    return quantus.FaithfulnessCorrelation(nr_runs=num_samples, subset_size=subset_size,
                                           perturb_baseline="black", normalise=False,
                                           return_aggregate=False, disable_warnings=True,
                                           display_progressbar=False, **options)

  timed_fc = quantus_fc()
  run_fc = lambda: s.quantus(timed_fc)  # softmax=False is its default

  def check_fc():
    recorded = []

    def recording(arr, indices, **kwargs):
      recorded.append(np.array(indices))
      return batch_baseline_replacement_by_indices(arr=arr, indices=indices, **kwargs)

    np.random.seed(0)
    theirs = s.quantus(quantus_fc(recording))
    subsets = np.stack(recorded)  # (num_samples, B, subset_size)
    assert subsets.shape == (num_samples, len(s.y), subset_size), subsets.shape
    ours = subset_correlation(s.apply_fn, *args, subsets, baseline=s.black)
    return np.asarray(ours, np.float64), theirs

  metrics["faithfulness_correlation"] = Metric(call_fc, run_fc, check_fc)

  # Localisation against the mask, and complexity: no model run in either.
  readers = {
      "pointing_game": (pointing_game, quantus.PointingGame, {}),
      "attribution_localisation": (attribution_localisation, quantus.AttributionLocalisation,
                                   {"positive_attributions": True}),
      "relevance_mass_accuracy": (relevance_mass_accuracy, quantus.RelevanceMassAccuracy, {}),
      "relevance_rank_accuracy": (relevance_rank_accuracy, quantus.RelevanceRankAccuracy, {}),
      "sparseness": (sparseness, quantus.Sparseness, None),
      "complexity": (complexity, quantus.Complexity, None),
  }
  for name, (ours, cls, options) in readers.items():
    masks = options is not None
    if masks:
      call = _blocked(jax.jit(functools.partial(ours, s.apply_fn)), *args, mask=s.mask)
      # AttributionLocalisation(abs=False) prints "An absolute operation should be applied ..."
      # whatever disable_warnings says (print, not warnings.warn): kept out of the output.
      with contextlib.redirect_stdout(io.StringIO()):
        metric = cls(abs=False, normalise=False, disable_warnings=True,
                     display_progressbar=False, **options)
    else:  # Quantus's default abs=True is what xjax does in any case
      call = _blocked(jax.jit(functools.partial(ours, s.apply_fn)), *args)
      metric = cls(normalise=False, disable_warnings=True, display_progressbar=False)
    run = functools.partial(s.quantus, metric, model=False, masks=masks)
    metrics[name] = Metric(call, run, functools.partial(_both, as_float(call), run))
  return metrics


def _both(ours: Callable[[], np.ndarray], theirs: Callable[[], np.ndarray]):
  return ours(), theirs()


def check_metrics(setup: Setup, metrics: dict[str, Metric]) -> dict[str, dict[str, Any]]:
  """Each metric's scores in xjax and Quantus on the setup's batch, without the timing rounds.

  Per metric: the largest absolute difference of the finite scores, whether all agree to
  `TOLERANCE` (NaN where the other is NaN too), how many are not finite, the largest |Quantus
  score|; and the seconds of xjax's first call (tracing and compilation included), of one more
  xjax call, and of the check (one call in each; an estimate of a Quantus call).
  """
  results = {}
  inputs = (setup.x.copy(), setup.relevance.copy())
  for name, metric in metrics.items():
    start = time.perf_counter()
    metric.xjax()
    first = time.perf_counter() - start
    start = time.perf_counter()
    metric.xjax()
    xjax_s = time.perf_counter() - start
    start = time.perf_counter()
    ours, theirs = metric.check()
    check_s = time.perf_counter() - start
    assert ours.shape == theirs.shape, (name, ours.shape, theirs.shape)
    finite = np.isfinite(ours) & np.isfinite(theirs)
    same_nan = bool(np.array_equal(np.isfinite(ours), np.isfinite(theirs)))
    difference = float(np.max(np.abs(ours - theirs)[finite], initial=0.0))
    agree = same_nan and bool(np.allclose(ours, theirs, equal_nan=True, **TOLERANCE[name]))
    results[name] = dict(max_abs_diff=difference, agree=agree, nonfinite=int((~finite).sum()),
                         scale=float(np.max(np.abs(theirs[finite]), initial=0.0)),
                         first_call_s=first, xjax_s=xjax_s, check_s=check_s, shape=theirs.shape)
    assert np.array_equal(setup.x, inputs[0]) and np.array_equal(setup.relevance, inputs[1]), (
        f"{name} changed the inputs in place")
  return results


# --------------------------------------------------------------------------------------------------
# Timing.


def print_header() -> None:
  print(f"device: {jax.devices()} ({platform.processor() or platform.machine()}), "
        f"os.cpu_count()={os.cpu_count()}, affinity={len(os.sched_getaffinity(0))} cores")
  load = os.getloadavg()
  print(f"load average (1, 5, 15 min): {', '.join(f'{v:.2f}' for v in load)}"
        + (f" > {os.cpu_count()} cores: a shared machine, expect noisy times (see the module "
           "docstring, Threads)" if load[0] > os.cpu_count() else ""))
  print(f"versions: jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads), quantus {quantus.__version__}, numpy {np.__version__}, python "
        f"{platform.python_version()}")


def pick_torch_threads(setup: Setup, passes: int = 10) -> tuple[int, dict[int, float]]:
  """The faster torch thread count for the twin on the setup's batch, 1 or all cores, and the
  best time of `passes` forward passes with each (two alternating tries each, after a warm-up)."""
  x = torch.from_numpy(nchw(setup.x).copy())
  counts = sorted({1, os.cpu_count() or 1})
  best = dict.fromkeys(counts, math.inf)
  with torch.no_grad():
    for _ in range(2):
      for n in counts:
        torch.set_num_threads(n)
        setup.twin(x)
        start = time.perf_counter()
        for _ in range(passes):
          setup.twin(x)
        best[n] = min(best[n], time.perf_counter() - start)
  return min(counts, key=best.__getitem__), best


def _timed(fn: Callable[[], Any], calls: int) -> float:
  start = time.perf_counter()
  for _ in range(calls):
    fn()
  return (time.perf_counter() - start) / calls


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
  """Runs the benchmark; returns per metric the median seconds per call of each side, and
  quantus/xjax of the medians and of the minima."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=32, help="images in the batch")
  parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds")
  parser.add_argument("--round_s", type=float, default=0.5,
                      help="seconds each framework spends on a metric per round (at least 1 call)")
  parser.add_argument("--features_in_step", type=int, default=16,
                      help="pixels flipped per pixel-flipping step (must divide 784)")
  parser.add_argument("--patch_size", type=int, default=4, help="region perturbation's patches")
  parser.add_argument("--subset_size", type=int, default=64,
                      help="faithfulness correlation's pixels per random subset")
  parser.add_argument("--torch_threads", type=int, default=None,
                      help="torch's intra-op threads (Quantus's model); default: the faster of 1 "
                           "and all cores on this batch")
  parser.add_argument("--quick", action="store_true",
                      help="batch 8, one round of 0.2 s: the whole run in under a minute")
  args = parser.parse_args(argv)
  if args.quick:
    args.batch, args.rounds, args.round_s = 8, 1, 0.2
  if (args.batch < 1 or args.rounds < 1 or args.round_s <= 0
      or (args.torch_threads is not None and args.torch_threads < 1)):
    parser.error("--batch, --rounds and --torch_threads must be at least 1, --round_s positive")

  setup = Setup(args.batch)
  if args.torch_threads is None:
    threads, seconds = pick_torch_threads(setup)
    choice = (f"torch threads: {threads}, the faster on this batch (10 forward passes: "
              + ", ".join(f"{n} thread(s) {t:.4f} s" for n, t in seconds.items()) + ")")
  else:
    threads, choice = args.torch_threads, f"torch threads: {args.torch_threads} (--torch_threads)"
  torch.set_num_threads(threads)
  print_header()
  print(choice)
  metrics = make_metrics(setup, args.features_in_step, args.patch_size, args.subset_size)
  print(f"batch: {args.batch} shapes images {IMAGE_SIZE}x{IMAGE_SIZE}x1, {MODEL} (random "
        f"weights), gradient x input; pixel flipping {args.features_in_step} pixels a step "
        f"({IMAGE_SIZE ** 2 // args.features_in_step} steps), region perturbation "
        f"{args.patch_size}x{args.patch_size} patches (all), faithfulness correlation 100 "
        f"subsets of {args.subset_size} pixels")
  checks = check_metrics(setup, metrics)
  print("check: xjax vs Quantus on this batch, max |difference| (largest |Quantus score|):")
  for name, check in checks.items():
    tolerance = TOLERANCE[name]
    print(f"  {name:25s} {check['max_abs_diff']:.2e} ({check['scale']:.2e}; scores "
          f"{check['shape']}, non-finite {check['nonfinite']}; tolerance atol "
          f"{tolerance['atol']:.0e} rtol {tolerance['rtol']:.0e})")
  failed = [name for name, check in checks.items() if not check["agree"]]
  if failed:
    raise SystemExit(f"xjax and Quantus disagree on {', '.join(failed)}")

  calls = {name: (max(1, round(args.round_s / max(c["xjax_s"], 1e-6))),
                  max(1, round(args.round_s / max(c["check_s"], 1e-6))))
           for name, c in checks.items()}
  times = {name: ([], []) for name in metrics}
  for _ in range(args.rounds):
    for name, metric in metrics.items():
      n, m = calls[name]
      times[name][0].append(_timed(metric.xjax, n))
      times[name][1].append(_timed(metric.quantus, m))
  print(f"seconds per call of the batch of {args.batch} (median of {args.rounds} rounds, "
        f"min..max; xjax compile = its first call, not timed below):")
  ratios, best = {}, {}
  for name, (ours, theirs) in times.items():
    x_med, q_med = statistics.median(ours), statistics.median(theirs)
    ratios[name], best[name] = q_med / x_med, min(theirs) / min(ours)
    print(f"  {name:25s} xjax {x_med:9.5f} s ({min(ours):.5f}..{max(ours):.5f}; compile "
          f"{checks[name]['first_call_s']:.2f} s)  quantus {q_med:9.5f} s ({min(theirs):.5f}.."
          f"{max(theirs):.5f})  of minima {best[name]:.1f}  quantus/xjax={ratios[name]:.1f}")
  print(" ".join(f"{name} quantus/xjax={ratios[name]:.1f} (of minima {best[name]:.1f})"
                 for name in ACCEPTANCE))
  return {name: {"xjax_s": statistics.median(ours), "quantus_s": statistics.median(theirs),
                 "ratio": ratios[name], "of_minima": best[name]}
          for name, (ours, theirs) in times.items()}


if __name__ == "__main__":
  main()
