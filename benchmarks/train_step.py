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
the rounds (printed as min..max). `--quick`: batch 32, 1 round of 2 steps (no timing worth
quoting; a smoke run). `--torch_device cuda` runs the PyTorch side on the GPU (default `cpu`);
xjax runs on JAX's default device.

Per-layer profile (`--profile`): where a train step's time goes, layer by layer, xjax beside
PyTorch. The layers are read from the model itself: `model.apply` in training mode is traced
(`jax.make_jaxpr`) with a Flax method interceptor, which records every Conv, Dense and BatchNorm
module called with its input shape; the traced program adds the pooling between them (max / average
`reduce_window`, and the global mean of ResNet-18), in program order. Each layer is then timed in
isolation at the benchmark's batch size on its actual input shape (random standard-normal inputs and
output cotangents): xjax the `jax.jit`-compiled Flax module (`module.apply`; BatchNorm in training
mode, its running statistics updated) or `lax` pooling, PyTorch the twin's module of the same name
(`train()` mode) or `torch.nn.functional` pooling on the same shapes in NCHW. Three times per layer:
forward; input gradient; weight gradient (kernel and bias, or scale and bias). The gradients are
timed as a backward pass on a recorded forward: xjax jits the pullback of `jax.vjp` (residuals
computed outside the timing), PyTorch calls `torch.autograd.grad(y, [x] or params, g,
retain_graph=True)` on a `y` computed outside the timing. The first layer's input gradient is not
part of a train step (the images need none) and is not timed. `--rounds` alternating rounds (each
op xjax then torch, a few calls each, about `--round_s` s), medians printed in ms per call, with the
total over layers, xjax/torch (speed: torch time / xjax time, > 1: xjax faster) and each layer's
share of xjax's total; below, the whole train step measured as in the benchmark, for what the
layers leave out (activations, dropout, residual additions, loss, optimizer, XLA's fusion across
layers). Run: `python -m benchmarks.train_step --profile [--models ...] [--batch 128] [--rounds 3]
[--quick]` (`--quick`: batch 32, one round, no whole-step row).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from torch import nn

from benchmarks.torch_models import flax_to_torch, make_torch_model
from xjax.data.sharding import make_mesh, replicated, shard_batch
from xjax.nn.registry import MODELS, count_params, get_model, init_variables, model_fields
from xjax.ops import max_pool as xjax_max_pool
from xjax.train.losses import build_loss_terms
from xjax.train.optim import make_optimizer
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
               batch: dict[str, np.ndarray], device: str = "cpu"):
    torch_kwargs = dict(kwargs)
    if name == "cnn_cifar10":
      torch_kwargs["image_size"] = batch["image"].shape[1]
    self.device = torch.device(device)
    self.model = flax_to_torch(name, variables, make_torch_model(name, **torch_kwargs))
    self.model.to(self.device).train()
    self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    self.loss_fn = nn.CrossEntropyLoss()
    self.x = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous().to(self.device)
    self.y = torch.from_numpy(batch["label"].astype(np.int64)).to(self.device)
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
    _sync(self.device)
    return time.perf_counter() - t0


def _sync(device: torch.device) -> None:
  """Waits for the device's queued work (CUDA is asynchronous; PyTorch eager on CPU is not)."""
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def _relative(a: np.ndarray, b: np.ndarray) -> float:
  """max |a - b| / max |b|."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _torch_params(model: nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().cpu().numpy().astype(np.float64) for k, v in model.named_parameters()}


def check_correctness(name: str, batch: dict[str, np.ndarray],
                      runner: XjaxRunner | None = None, device: str = "cpu") -> dict[str, Any]:
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
  `runner` may be a dropout-free XjaxRunner of `name` to reuse (it is reset afterwards);
  `device` is the PyTorch twin's (the results are numpy either way).
  """
  kwargs = model_kwargs(name, dropout=False)
  xj = runner if runner is not None else XjaxRunner(name, kwargs, batch)
  xj.reset()
  variables0 = xj.variables()
  tr = TorchRunner(name, kwargs, variables0, batch, device)
  kernel = f"{FIRST_CONV[name]}.weight"
  kernel_init = tr.model.get_parameter(kernel).detach().cpu().numpy().copy()

  xj.step()
  tr.step()
  loss_x, loss_t = float(xj.metrics["loss"]), float(tr.loss.item())
  # xjax's new weights and momentum trace, converted to PyTorch layout through fresh twins.
  variables1 = xj.variables()
  trace = jax.device_get(optax.tree.get(xj.state.opt_state, "trace"))
  params_x = _torch_params(TorchRunner(name, kwargs, variables1, batch).model)
  trace_x = _torch_params(TorchRunner(name, kwargs, {**variables1, "params": trace}, batch).model)
  params_t = _torch_params(tr.model)
  trace_t = {k: tr.optimizer.state[p]["momentum_buffer"].cpu().numpy().astype(np.float64)
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


def benchmark_model(name: str, batch: dict[str, np.ndarray], steps: int, rounds: int,
                    device: str = "cpu") -> tuple[float, float]:
  """Correctness check, then alternating timed rounds; returns median (xjax, torch) images/s."""
  size = batch["image"].shape[0]
  timed_kwargs = model_kwargs(name, dropout=True)
  has_dropout = timed_kwargs != model_kwargs(name, dropout=False)

  t0 = time.perf_counter()
  xj = XjaxRunner(name, timed_kwargs, batch)
  compile_runner = None if has_dropout else xj  # no dropout: the check reuses the compiled step
  check = check_correctness(name, batch, compile_runner, device)
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
  tr = TorchRunner(name, timed_kwargs, xj.variables(), batch, device)
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


# --------------------------------------------------------------------------------------------------
# Per-layer profile (`--profile`; see the module docstring).

LAYER_MODULES = {fnn.Conv: "conv", fnn.Dense: "dense", fnn.BatchNorm: "batch_norm"}
POOL_PRIMITIVES = {"reduce_window_max": "max_pool", "reduce_window_sum": "avg_pool"}


@dataclasses.dataclass
class Layer:
  """One layer of a model as the profile times it.

  `name`: the Flax module path joined by "." (the twin's submodule of that name), or
  "<kind><i>" for the i-th pooling of that kind; `kind`: conv, dense, batch_norm, max_pool,
  avg_pool or mean (global average pooling); `input_shape`: the layer's input in the xjax model
  (NHWC, or (B, features)); `weight_shape`: the kernel (HWIO / (in, out)) or the batch-norm
  scale, None for pooling; `module`, `variables`: the unbound Flax module and its variables
  (layers) or None (pooling); `options`: pooling's window, strides and padding (per spatial
  axis), or the reduced axes of the mean.
  """

  name: str
  kind: str
  input_shape: tuple[int, ...]
  weight_shape: tuple[int, ...] | None = None
  module: fnn.Module | None = None
  variables: dict | None = None
  options: dict[str, Any] = dataclasses.field(default_factory=dict)


def _subtree(tree: dict, path: tuple[str, ...]) -> dict | None:
  """`tree[path[0]][path[1]]...`, or None where a key is missing."""
  for key in path:
    if key not in tree:
      return None
    tree = tree[key]
  return tree


def profile_layers(name: str, batch_size: int, image_size: int = 32, seed: int = 0
                   ) -> list[Layer]:
  """The layers of model `name` (the benchmark's fields, training mode) in program order."""
  model = get_model(name, **model_kwargs(name, dropout=True))
  variables = init_variables(model, jax.random.key(seed), (image_size, image_size, 3))
  calls: dict[tuple[str, ...], tuple[fnn.Module, tuple[int, ...]]] = {}

  def record(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == "__call__" and type(module) in LAYER_MODULES:
      calls.setdefault(tuple(module.path), (module.clone(parent=None), tuple(args[0].shape)))
    return next_fun(*args, **kwargs)

  def apply(v, x):
    return model.apply(v, x, train=True, mutable=["batch_stats"],
                       rngs={"dropout": jax.random.key(seed)})

  x = jax.ShapeDtypeStruct((batch_size, image_size, image_size, 3), jnp.float32)
  with fnn.intercept_methods(record):
    jaxpr = jax.make_jaxpr(apply)(variables, x).jaxpr
  top = type(model).__name__
  layers, seen, counts = [], set(), {}
  for eqn in jaxpr.eqns:
    scope = tuple(str(eqn.source_info.name_stack).split("/"))
    path = scope[1:] if scope[:1] == (top,) else scope
    if path in calls and path not in seen:  # the first operation of a recorded module
      seen.add(path)
      module, shape = calls[path]
      own = {c: _subtree(variables[c], path) for c in variables}
      own = {c: v for c, v in own.items() if v is not None}
      weight = own["params"].get("kernel", own["params"].get("scale"))
      layers.append(Layer(".".join(path), LAYER_MODULES[type(module)], shape,
                          tuple(weight.shape), module, own))
      continue
    if any(path[:len(p)] == p for p in calls):
      continue  # inside a recorded module (its bias, batch statistics, ...)
    eqn = _pooling_inside(eqn)
    prim = eqn.primitive.name
    shape = tuple(eqn.invars[0].aval.shape)
    if prim in POOL_PRIMITIVES:
      kind = POOL_PRIMITIVES[prim]
      options = {"window": eqn.params["window_dimensions"][1:-1],
                 "strides": eqn.params["window_strides"][1:-1],
                 "padding": tuple(eqn.params["padding"][1:-1])}
    elif prim == "reduce_sum" and len(shape) == 4 and tuple(eqn.params["axes"]) == (1, 2):
      kind, options = "mean", {"axes": (1, 2)}
    else:
      continue
    counts[kind] = counts.get(kind, 0) + 1
    layers.append(Layer(f"{kind}{counts[kind]}", kind, shape, options=options))
  missing = sorted(".".join(p) for p in set(calls) - seen)
  if missing:
    raise RuntimeError(f"{name}: modules not found in the traced program: {missing}")
  return layers


def _pooling_inside(eqn):
  """The pooling equation a custom-gradient call wraps (`xjax.ops.max_pool` on CPU),
  else `eqn` itself."""
  body = eqn.params.get("call_jaxpr") or eqn.params.get("fun_jaxpr")
  if eqn.primitive.name.startswith("custom_vjp_call") and body is not None:
    inner = [e for e in getattr(body, "jaxpr", body).eqns if e.primitive.name in POOL_PRIMITIVES]
    if len(inner) == 1:
      return inner[0]
  return eqn


def _pool_fn(layer: Layer) -> Callable[[jax.Array], jax.Array]:
  """The xjax pooling of a pooling layer (the models' own: `xjax.ops.max_pool`, flax's average)."""
  o = layer.options
  if layer.kind == "mean":
    return lambda x: jnp.mean(x, axis=o["axes"])
  pool = xjax_max_pool if layer.kind == "max_pool" else fnn.avg_pool
  return lambda x: pool(x, o["window"], strides=o["strides"], padding=o["padding"])


def _torch_pool(layer: Layer) -> Callable[[torch.Tensor], torch.Tensor]:
  """The same pooling in torch, NCHW (symmetric padding, as the models use)."""
  o = layer.options
  if layer.kind == "mean":
    return lambda x: x.mean(dim=(2, 3))
  padding = tuple(lo for lo, _ in o["padding"])
  if any(lo != hi for lo, hi in o["padding"]):
    raise ValueError(f"{layer.name}: asymmetric padding {o['padding']} has no torch pooling twin")
  pool = torch.nn.functional.max_pool2d if layer.kind == "max_pool" else (
      lambda x, k, s, p: torch.nn.functional.avg_pool2d(x, k, s, p, count_include_pad=True))
  return lambda x: pool(x, o["window"], o["strides"], padding)


def _nchw_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  return (shape[0], shape[3], shape[1], shape[2]) if len(shape) == 4 else shape


def layer_ops(layer: Layer, twin: nn.Module, device: torch.device, input_grad: bool = True,
              seed: int = 0) -> dict[tuple[str, str], Callable[[], Any]]:
  """The six timed calls of a layer: (op, framework) -> a blocking call, op in fwd, dx, dw.

  dx is left out without `input_grad`, dw for layers without weights (pooling).
  """
  rng = np.random.default_rng(seed)
  x_np = rng.standard_normal(layer.input_shape, np.float32)
  x = jnp.asarray(x_np)
  ops: dict[tuple[str, str], Callable[[], Any]] = {}

  # xjax: the Flax module (or pooling), jit-compiled; gradients as pullbacks of jax.vjp.
  if layer.module is None:
    fn = _pool_fn(layer)
    forward = jax.jit(fn)
    apply = lambda x, p: fn(x)
    params = {}
  else:
    module, variables = layer.module, layer.variables
    state = {c: v for c, v in variables.items() if c != "params"}
    if state:  # batch norm in training mode: the output, and the new running statistics
      forward = jax.jit(lambda x, p: module.apply({"params": p, **state}, x, mutable=list(state)))
      apply = lambda x, p: module.apply({"params": p, **state}, x, mutable=list(state))[0]
    else:
      forward = jax.jit(lambda x, p: module.apply({"params": p}, x))
      apply = lambda x, p: module.apply({"params": p}, x)
    params = jax.device_put(variables["params"])
  y_shape = jax.eval_shape(apply, x, params).shape
  g_np = rng.standard_normal(y_shape, np.float32)
  g = jnp.asarray(g_np)
  pull = jax.jit(lambda vjp_fn, g: vjp_fn(g))
  ops["fwd", "xjax"] = (lambda: jax.block_until_ready(forward(x))) if layer.module is None else (
      lambda: jax.block_until_ready(forward(x, params)))
  if input_grad:
    _, vjp_x = jax.jit(lambda x, p: jax.vjp(lambda x_: apply(x_, p), x))(x, params)
    ops["dx", "xjax"] = lambda: jax.block_until_ready(pull(vjp_x, g))
  if layer.module is not None:
    _, vjp_p = jax.jit(lambda x, p: jax.vjp(lambda p_: apply(x, p_), p))(x, params)
    ops["dw", "xjax"] = lambda: jax.block_until_ready(pull(vjp_p, g))

  # PyTorch: the twin's module of the same name (train mode), or functional pooling, NCHW.
  if layer.module is None:
    module_t = _torch_pool(layer)
    weights = []
  else:
    module_t = twin.get_submodule(layer.name).train()
    weights = list(module_t.parameters())
  to_torch = lambda a: torch.from_numpy(
      np.ascontiguousarray(a.transpose(0, 3, 1, 2) if a.ndim == 4 else a)).to(device)
  xt = to_torch(x_np).requires_grad_(True)
  gt = to_torch(g_np)
  if tuple(xt.shape) != _nchw_shape(layer.input_shape):
    raise AssertionError((layer.name, tuple(xt.shape)))

  def timed_torch(fn):
    def call():
      out = fn()
      _sync(device)
      return out
    return call

  ops["fwd", "torch"] = timed_torch(lambda: module_t(xt))  # records the graph, as in training
  yt = module_t(xt)
  if tuple(yt.shape) != tuple(gt.shape):
    raise AssertionError(f"{layer.name}: torch output {tuple(yt.shape)}, xjax "
                         f"{_nchw_shape(y_shape)}")
  if input_grad:
    ops["dx", "torch"] = timed_torch(lambda: torch.autograd.grad(yt, [xt], gt, retain_graph=True))
  if weights:
    ops["dw", "torch"] = timed_torch(lambda: torch.autograd.grad(yt, weights, gt,
                                                                 retain_graph=True))
  return ops


def _per_call(fn: Callable[[], Any], calls: int) -> float:
  t0 = time.perf_counter()
  for _ in range(calls):
    fn()
  return (time.perf_counter() - t0) / calls


def profile_model(name: str, batch_size: int, rounds: int, round_s: float = 0.05,
                  image_size: int = 32, device: str = "cpu", whole_step: bool = True,
                  step_rounds: int | None = None) -> dict[str, Any]:
  """Times every layer of `name` in both frameworks; prints the markdown table, returns it.

  Returns `{"layers": [(Layer, {(op, framework): median seconds})], "total": {framework: s},
  "step": {framework: s per whole train step} (empty without `whole_step`), "table": str}`.
  """
  t0 = time.perf_counter()
  device_t = torch.device(device)
  layers = profile_layers(name, batch_size, image_size)
  kwargs = dict(model_kwargs(name, dropout=True))
  if name == "cnn_cifar10":
    kwargs["image_size"] = image_size
  variables = init_variables(get_model(name, **model_kwargs(name)), jax.random.key(0),
                             (image_size, image_size, 3))
  twin = flax_to_torch(name, jax.device_get(variables), make_torch_model(name, **kwargs))
  twin.to(device_t)
  all_ops = [layer_ops(layer, twin, device_t, input_grad=i > 0) for i, layer in enumerate(layers)]
  calls = []
  for ops in all_ops:  # compile and warm up (untimed); calls per round from the warm-up
    for fn in ops.values():
      fn()
    calls.append({key: max(1, math.ceil(round_s / max(_per_call(fn, 1), 1e-6)))
                  for key, fn in ops.items()})
  print(f"{name}: {len(layers)} layers at batch {batch_size}; compile and warm-up took "
        f"{time.perf_counter() - t0:.1f} s; timing {rounds} rounds (about {round_s} s per op, "
        f"framework and round)")
  times = [{key: [] for key in ops} for ops in all_ops]
  for _ in range(rounds):
    for ops, n, t in zip(all_ops, calls, times):
      for op in ("fwd", "dx", "dw"):
        for side in ("xjax", "torch"):
          if (op, side) in ops:
            t[op, side].append(_per_call(ops[op, side], n[op, side]))
  medians = [{key: statistics.median(v) for key, v in t.items()} for t in times]
  totals = {side: sum(v for m in medians for (_, s), v in m.items() if s == side)
            for side in ("xjax", "torch")}
  step: dict[str, float] = {}
  if whole_step:
    batch = make_batch(batch_size, image_size)
    xj = XjaxRunner(name, model_kwargs(name, dropout=True), batch)
    tr = TorchRunner(name, model_kwargs(name, dropout=True), xj.variables(), batch, device)
    xj.run(1)
    tr.run(1)
    runs = {"xjax": [], "torch": []}
    for _ in range(step_rounds or rounds):
      runs["xjax"].append(xj.run(1))
      runs["torch"].append(tr.run(1))
    step = {side: statistics.median(v) for side, v in runs.items()}
  table = profile_table(name, batch_size, layers, medians, totals, step)
  print(table)
  return {"layers": list(zip(layers, medians)), "total": totals, "step": step, "table": table}


def profile_table(name: str, batch_size: int, layers: list[Layer],
                  medians: list[dict[tuple[str, str], float]], totals: dict[str, float],
                  step: dict[str, float]) -> str:
  """The markdown table of `profile_model` (ms per call; xjax/torch = torch time / xjax time)."""
  ms = lambda s: "-" if s is None else f"{1e3 * s:.2f}"
  head = ("| layer | op | input | fwd xjax | fwd torch | dx xjax | dx torch | dw xjax | dw torch "
          "| total xjax | total torch | xjax/torch | % of xjax |")
  rows = [f"{name}, batch {batch_size}: ms per call, median over rounds (xjax/torch > 1: xjax "
          f"faster)", "", head, "|" + "---|" * (head.count("|") - 1)]
  for layer, m in zip(layers, medians):
    x = sum(v for (_, s), v in m.items() if s == "xjax")
    t = sum(v for (_, s), v in m.items() if s == "torch")
    shape = "x".join(str(d) for d in layer.input_shape)
    rows.append(f"| {layer.name} | {layer.kind} | {shape} | " + " | ".join(
        ms(m.get((op, side))) for op in ("fwd", "dx", "dw") for side in ("xjax", "torch"))
        + f" | {ms(x)} | {ms(t)} | {t / x:.2f} | {100 * x / totals['xjax']:.1f} |")
  op_total = {key: sum(m.get(key, 0.0) for m in medians)
              for key in [(op, side) for op in ("fwd", "dx", "dw") for side in ("xjax", "torch")]}
  rows.append("| **total** | | | " + " | ".join(ms(v) for v in op_total.values())
              + f" | {ms(totals['xjax'])} | {ms(totals['torch'])} | "
              f"{totals['torch'] / totals['xjax']:.2f} | 100 |")
  if step:
    rows.append(f"| whole train step | measured | | | | | | | | {ms(step['xjax'])} | "
                f"{ms(step['torch'])} | {step['torch'] / step['xjax']:.2f} | "
                f"{100 * step['xjax'] / totals['xjax']:.0f} |")
  return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
  """Runs the benchmark (or with `--profile` the per-layer profile); returns per model
  `{"xjax": img/s, "torch": img/s, "ratio": xjax/torch}` (profile: `profile_model`'s dict)."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default="cnn_cifar10,resnet18",
                      help=f"comma list of {', '.join(MODEL_KWARGS)}")
  parser.add_argument("--batch", type=int, default=None, help="batch size (default 128)")
  parser.add_argument("--steps", type=int, default=None,
                      help=f"timed steps per round (default per model: {DEFAULT_STEPS})")
  parser.add_argument("--rounds", type=int, default=None,
                      help="alternating rounds per framework (default 3)")
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--torch_device", default="cpu",
                      help="the PyTorch side's device, e.g. cuda (default cpu)")
  parser.add_argument("--profile", action="store_true",
                      help="per-layer profile (forward, input and weight gradient) instead")
  parser.add_argument("--round_s", type=float, default=0.05,
                      help="--profile: seconds per op, framework and round, about")
  parser.add_argument("--quick", action="store_true",
                      help="batch 32, one round of 2 steps (profile: no whole-step row)")
  args = parser.parse_args(argv)
  models = [m.strip() for m in args.models.split(",") if m.strip()]
  unknown = [m for m in models if m not in MODEL_KWARGS]
  if unknown:
    parser.error(f"unknown model(s) {unknown}; choose from {list(MODEL_KWARGS)}")
  batch_size = args.batch or (32 if args.quick else 128)
  rounds = args.rounds or (1 if args.quick else 3)
  steps = {m: args.steps or (2 if args.quick else DEFAULT_STEPS[m]) for m in models}

  torch.set_num_threads(os.cpu_count())
  print_header()
  print(f"torch device: {args.torch_device}")
  if args.profile:
    print(f"per-layer profile: batch {batch_size} x {args.image_size}x{args.image_size}x3, "
          f"rounds {rounds}")
    return {name: profile_model(name, batch_size, rounds, args.round_s, args.image_size,
                                args.torch_device, whole_step=not args.quick)
            for name in models}
  batch = make_batch(batch_size, args.image_size)
  print(f"batch {batch_size} x {args.image_size}x{args.image_size}x3, rounds {rounds}, "
        f"steps per round " + ", ".join(f"{m}={steps[m]}" for m in models))
  results = {}
  for name in models:
    x, t = benchmark_model(name, batch, steps[name], rounds, args.torch_device)
    results[name] = {"xjax": x, "torch": t, "ratio": x / t}
  print("xjax/torch train-step throughput: "
        + " ".join(f"{m}={r['ratio']:.2f}" for m, r in results.items()))
  return results


if __name__ == "__main__":
  main()
