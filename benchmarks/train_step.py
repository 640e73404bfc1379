"""Train-step throughput of xjax against PyTorch eager, on the same CPU, in the same process.

What is measured: images per second of one full training step (forward, cross-entropy loss,
backward, SGD with momentum 0.9 at lr 0.01, batch-norm statistics update where the model has
batch norm, dropout as in training)
on a fixed random batch (default 128 images of 32x32x3, standard-normal pixels, random labels),
for two models:

  * cnn_cifar10: the Table-1 CIFAR10 CNN (C32-C32-MaxP-C64-C64-MaxP-D512-D10, 1.25 M parameters);
  * resnet18: ResNet-18 with the CIFAR stem and 10 classes (11.2 M parameters).

xjax runs exactly the library's train step: `create_train_state`, `make_optimizer("sgd", ...)`,
`build_loss_terms({"cross_entropy": {}})`, `compile_train_step(make_train_step(...), make_mesh())`,
the batch placed with `shard_batch` (its metrics - loss, accuracy, grad norm - are part of the
step). PyTorch runs the twin of `benchmarks/torch_models.py`, filled with the same initial weights
(`flax_to_torch`), in `train()` mode with `torch.optim.SGD(lr=0.01, momentum=0.9)` and
`nn.CrossEntropyLoss` (zero_grad / backward / step) on the same pixels in NCHW, with
`torch.set_num_threads(os.cpu_count())`. BatchNorm momenta are equivalent (Flax 0.9 keeps 0.9 of
the running average; PyTorch's 0.1 is the weight of the new batch).

How it is measured: both frameworks are compiled / warmed up first (not timed); then `--rounds`
alternating rounds (xjax, torch, xjax, torch, ...) of `--steps` steps each, so that the noise of a
shared machine hits both alike. The xjax round ends with `jax.block_until_ready` on the new state
and metrics (PyTorch eager on CPU is synchronous). Reported: the median over rounds of
batch * steps / round time, for each framework, and xjax/torch (> 1: xjax is faster). The last
line printed holds the ratios of all models.

Correctness first: before timing, each model is built with every dropout rate 0 and both
frameworks take two steps from the same weights on the same batch. Step 1's loss shows they run
the same forward pass; step 2's loss and the update of step 1 (-lr x the momentum buffer, i.e. the
gradient; xjax's converted to PyTorch layout) show the same gradients and optimizer. Asserted: both
losses agree to 1e-4 (relative); the updates agree to 1e-4 (relative L2 over all parameters) for
cnn_cifar10 and to 2e-2 for resnet18, whose float32 gradients at initialisation carry ~3e-3 of
rounding noise in either framework (batch-norm backward; see UPDATE_TOLERANCE).

Run: `python -m benchmarks.train_step [--models cnn_cifar10,resnet18] [--batch 128] [--steps N]
[--rounds 3] [--image_size 32]`. Default steps per round: 10 for cnn_cifar10 and 3 for resnet18
(one ResNet-18 step at batch 128 takes ~5 s on 2 cores; `--steps` sets both); with 3 rounds the
default run takes about 4 minutes on 2 shared cores. Numbers from a machine shared with other
processes are noisy: compare the ratio rather than the absolute rates, and look at the spread of
the rounds (printed as min..max).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Any

import flax
import jax
import numpy as np
import optax
import torch
from torch import nn

from benchmarks.torch_models import flax_to_torch, make_torch_model
from xjax.nn.registry import MODELS, count_params, get_model, model_fields
from xjax.train.losses import build_loss_terms
from xjax.train.optim import make_optimizer
from xjax.train.sharding import make_mesh, replicated, shard_batch
from xjax.train.state import create_train_state
from xjax.train.step import compile_train_step, make_train_step

LEARNING_RATE = 0.01
MOMENTUM = 0.9
TOLERANCE = 1e-4

# Fields of each benchmarked model (beyond its defaults) and its first convolution.
MODEL_KWARGS: dict[str, dict[str, Any]] = {
    "cnn_cifar10": {"num_classes": 10},
    "resnet18": {"num_classes": 10, "stem": "cifar"},
}
FIRST_CONV = {"cnn_cifar10": "conv1", "resnet18": "stem_conv"}
DEFAULT_STEPS = {"cnn_cifar10": 10, "resnet18": 3}
# Bound on `update_l2_rel_diff`. ResNet-18's float32 gradients at initialisation are noisy: the
# batch-norm backward pass cancels large terms, and each framework's float32 gradient lies ~3e-3
# (relative L2) from a float64 PyTorch reference, so xjax and PyTorch differ by as much
# (measured 3.6e-3 at batch 128) while their losses agree to ~1e-7. The CNN has no batch norm.
UPDATE_TOLERANCE = {"cnn_cifar10": 1e-4, "resnet18": 2e-2}


def make_batch(batch_size: int, image_size: int, num_classes: int = 10,
               seed: int = 0) -> dict[str, np.ndarray]:
  """The fixed random batch both frameworks train on: NHWC float32 images and int32 labels."""
  rng = np.random.default_rng(seed)
  return {"image": rng.standard_normal((batch_size, image_size, image_size, 3), np.float32),
          "label": rng.integers(0, num_classes, batch_size).astype(np.int32)}


def model_kwargs(name: str, dropout: bool = True) -> dict[str, Any]:
  """The benchmark's fields for `name`; with `dropout=False` every dropout rate is 0."""
  kwargs = dict(MODEL_KWARGS[name])
  if not dropout:
    kwargs.update({f: 0.0 for f in model_fields(MODELS[name]) if "dropout" in f})
  return kwargs


class XjaxRunner:
  """The library's real train step for one model: state, compiled step and the sharded batch."""

  def __init__(self, name: str, kwargs: dict[str, Any], batch: dict[str, np.ndarray],
               seed: int = 0):
    self.model = get_model(name, **kwargs)
    self.tx = make_optimizer("sgd", learning_rate=LEARNING_RATE, momentum=MOMENTUM,
                             steps_per_epoch=1000)
    terms = build_loss_terms({"cross_entropy": {}})
    self.mesh = make_mesh()
    self.step_fn = compile_train_step(make_train_step(self.model, self.tx, terms), self.mesh)
    self.batch = shard_batch(batch, self.mesh)
    self.image_shape = tuple(batch["image"].shape[1:])
    self.seed = seed
    self.reset()

  def reset(self) -> None:
    """A fresh state from the same seed (the compiled step is reused)."""
    state = create_train_state(self.model, self.tx, jax.random.key(self.seed), self.image_shape)
    self.state = jax.device_put(state, replicated(self.mesh))
    self.metrics = None

  def variables(self) -> dict:
    """The current variables as numpy (a copy: the step donates the state)."""
    return jax.device_get({"params": self.state.params, **self.state.model_state})

  def step(self) -> None:
    self.state, self.metrics = self.step_fn(self.state, self.batch)

  def run(self, steps: int) -> float:
    """`steps` steps, blocking at the end; returns the seconds taken."""
    t0 = time.perf_counter()
    for _ in range(steps):
      self.step()
    jax.block_until_ready((self.state, self.metrics))
    return time.perf_counter() - t0


class TorchRunner:
  """The PyTorch twin with the given Flax variables, SGD with momentum and cross-entropy."""

  def __init__(self, name: str, kwargs: dict[str, Any], variables: dict,
               batch: dict[str, np.ndarray]):
    torch_kwargs = dict(kwargs)
    if name == "cnn_cifar10":
      torch_kwargs["image_size"] = batch["image"].shape[1]
    self.model = flax_to_torch(name, variables, make_torch_model(name, **torch_kwargs))
    self.model.train()
    self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    self.loss_fn = nn.CrossEntropyLoss()
    self.x = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous()
    self.y = torch.from_numpy(batch["label"].astype(np.int64))
    self.loss = None

  def step(self) -> None:
    self.optimizer.zero_grad()
    self.loss = self.loss_fn(self.model(self.x), self.y)
    self.loss.backward()
    self.optimizer.step()

  def run(self, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
      self.step()
    return time.perf_counter() - t0


def _relative(a: np.ndarray, b: np.ndarray) -> float:
  """max |a - b| / max |b|."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _torch_params(model: nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().astype(np.float64) for k, v in model.named_parameters()}


def check_correctness(name: str, batch: dict[str, np.ndarray],
                      runner: XjaxRunner | None = None) -> dict[str, Any]:
  """Two steps of both frameworks, dropout off, from the same weights on the same batch.

  Returns:
    `loss_xjax`, `loss_torch` (step 1), `loss2_xjax`, `loss2_torch` (step 2) and their relative
    differences `loss_rel_diff`, `loss2_rel_diff`;
    `kernel_init`, `kernel_xjax`, `kernel_torch`: the first convolution's kernel before and after
    step 1 in PyTorch layout (OIHW; xjax's converted back with `flax_to_torch`), and
    `kernel_rel_diff`, max |kernel_xjax - kernel_torch| / max |kernel_torch|;
    `kernel_update_rel_diff`, `update_rel_diff`: the step-1 update, -lr times the momentum buffer
    (optax's trace, PyTorch's `momentum_buffer`, both equal to the gradient after one step),
    max |u_xjax - u_torch| / max |u_torch| for that kernel and the largest over all parameters
    (`worst_update` names it), and `update_l2_rel_diff`, ||u_xjax - u_torch|| / ||u_torch||
    over all parameters together. Comparing buffers rather than `new - old` weights avoids float32
    cancellation, which alone gives ~1e-4 on updates 1e-4 the size of the weights.
  `runner` may be a dropout-free XjaxRunner of `name` to reuse (it is reset afterwards).
  """
  kwargs = model_kwargs(name, dropout=False)
  xj = runner if runner is not None else XjaxRunner(name, kwargs, batch)
  xj.reset()
  variables0 = xj.variables()
  tr = TorchRunner(name, kwargs, variables0, batch)
  kernel = f"{FIRST_CONV[name]}.weight"
  kernel_init = tr.model.get_parameter(kernel).detach().numpy().copy()

  xj.step()
  tr.step()
  loss_x, loss_t = float(xj.metrics["loss"]), float(tr.loss.item())
  # xjax's new weights and momentum trace, converted to PyTorch layout through fresh twins.
  variables1 = xj.variables()
  trace = jax.device_get(optax.tree.get(xj.state.opt_state, "trace"))
  params_x = _torch_params(TorchRunner(name, kwargs, variables1, batch).model)
  trace_x = _torch_params(TorchRunner(name, kwargs, {**variables1, "params": trace}, batch).model)
  params_t = _torch_params(tr.model)
  trace_t = {k: tr.optimizer.state[p]["momentum_buffer"].numpy().astype(np.float64)
             for k, p in tr.model.named_parameters()}
  xj.step()
  tr.step()
  loss2_x, loss2_t = float(xj.metrics["loss"]), float(tr.loss.item())
  xj.reset()

  update_rel = {k: _relative(-LEARNING_RATE * trace_x[k], -LEARNING_RATE * trace_t[k])
                for k in trace_t}
  return {
      "loss_xjax": loss_x, "loss_torch": loss_t,
      "loss_rel_diff": abs(loss_x - loss_t) / abs(loss_t),
      "loss2_xjax": loss2_x, "loss2_torch": loss2_t,
      "loss2_rel_diff": abs(loss2_x - loss2_t) / abs(loss2_t),
      "kernel_init": kernel_init, "kernel_xjax": params_x[kernel], "kernel_torch": params_t[kernel],
      "kernel_rel_diff": _relative(params_x[kernel], params_t[kernel]),
      "kernel_update_rel_diff": update_rel[kernel],
      "update_rel_diff": max(update_rel.values()),
      "worst_update": max(update_rel, key=update_rel.get),
      "update_l2_rel_diff": float(np.sqrt(sum(np.sum((trace_x[k] - trace_t[k])**2) for k in trace_t)
                                          / sum(np.sum(trace_t[k]**2) for k in trace_t))),
  }


def print_header() -> None:
  print(f"device: {jax.devices()} ({platform.processor() or platform.machine()}), "
        f"os.cpu_count()={os.cpu_count()}, affinity={len(os.sched_getaffinity(0))} cores")
  print(f"versions: jax {jax.__version__}, flax {flax.__version__}, torch {torch.__version__}, "
        f"numpy {np.__version__}, python {platform.python_version()}")
  print(f"threads: jax = XLA CPU default intra-op pool over all {os.cpu_count()} cores "
        f"(XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}); torch intra-op "
        f"{torch.get_num_threads()}, inter-op {torch.get_num_interop_threads()}")


def benchmark_model(name: str, batch: dict[str, np.ndarray], steps: int, rounds: int
                    ) -> tuple[float, float]:
  """Correctness check, then alternating timed rounds; returns median (xjax, torch) images/s."""
  size = batch["image"].shape[0]
  timed_kwargs = model_kwargs(name, dropout=True)
  has_dropout = timed_kwargs != model_kwargs(name, dropout=False)

  t0 = time.perf_counter()
  xj = XjaxRunner(name, timed_kwargs, batch)
  compile_runner = None if has_dropout else xj  # no dropout: the check reuses the compiled step
  check = check_correctness(name, batch, compile_runner)
  print(f"{name}: {count_params(xj.state.params):,} params; correctness check (dropout 0, same "
        f"weights and batch, 2 steps):\n"
        f"  step-1 loss  xjax {check['loss_xjax']:.6f}  torch {check['loss_torch']:.6f}  "
        f"rel diff {check['loss_rel_diff']:.1e}\n"
        f"  step-2 loss  xjax {check['loss2_xjax']:.6f}  torch {check['loss2_torch']:.6f}  "
        f"rel diff {check['loss2_rel_diff']:.1e}\n"
        f"  step-1 update (-lr x momentum buffer) rel diff: all params (L2) "
        f"{check['update_l2_rel_diff']:.1e}, {FIRST_CONV[name]} (max) "
        f"{check['kernel_update_rel_diff']:.1e}, worst param (max) {check['update_rel_diff']:.1e} "
        f"({check['worst_update']}); {FIRST_CONV[name]} kernel after step 1 rel diff "
        f"{check['kernel_rel_diff']:.1e}")
  bounds = {"loss_rel_diff": TOLERANCE, "loss2_rel_diff": TOLERANCE,
            "update_l2_rel_diff": UPDATE_TOLERANCE[name]}
  for key, bound in bounds.items():
    assert check[key] < bound, f"{name}: {key} = {check[key]:.3g} >= {bound}"

  # Timed models: the default dropout, as in training. Warm up (xjax: compile) untimed.
  tr = TorchRunner(name, timed_kwargs, xj.variables(), batch)
  warmup = 2 if has_dropout else 1  # without dropout the check already compiled and ran xj's step
  xj.run(warmup)
  tr.run(warmup)
  print(f"{name}: setup, check, compile and warm-up took {time.perf_counter() - t0:.1f} s; "
        f"timing {rounds} rounds x {steps} steps of batch {size} per framework")
  rates: dict[str, list[float]] = {"xjax": [], "torch": []}
  for _ in range(rounds):
    rates["xjax"].append(size * steps / xj.run(steps))
    rates["torch"].append(size * steps / tr.run(steps))
  x, t = statistics.median(rates["xjax"]), statistics.median(rates["torch"])
  spread = lambda r: f"{min(r):.1f}..{max(r):.1f}"
  print(f"{name}  xjax {x:.1f} img/s  torch {t:.1f} img/s  xjax/torch {x / t:.2f}   "
        f"(rounds: xjax {spread(rates['xjax'])}, torch {spread(rates['torch'])})")
  return x, t


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default="cnn_cifar10,resnet18",
                      help=f"comma list of {', '.join(MODEL_KWARGS)}")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=None,
                      help=f"timed steps per round (default per model: {DEFAULT_STEPS})")
  parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per framework")
  parser.add_argument("--image_size", type=int, default=32)
  args = parser.parse_args(argv)
  models = [m.strip() for m in args.models.split(",") if m.strip()]
  unknown = [m for m in models if m not in MODEL_KWARGS]
  if unknown:
    parser.error(f"unknown model(s) {unknown}; choose from {list(MODEL_KWARGS)}")

  torch.set_num_threads(os.cpu_count())
  print_header()
  batch = make_batch(args.batch, args.image_size)
  print(f"batch {args.batch} x {args.image_size}x{args.image_size}x3, rounds {args.rounds}, "
        f"steps per round " + ", ".join(f"{m}={args.steps or DEFAULT_STEPS[m]}" for m in models))
  ratios = {}
  for name in models:
    x, t = benchmark_model(name, batch, args.steps or DEFAULT_STEPS[name], args.rounds)
    ratios[name] = x / t
  print("xjax/torch train-step throughput: " + " ".join(f"{m}={r:.2f}" for m, r in ratios.items()))


if __name__ == "__main__":
  main()
