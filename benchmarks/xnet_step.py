"""Cost of XNet's drop loss in the train step: vmap on one backbone pass, k full passes, none.

What is measured: seconds per full training step (forward, loss, backward, SGD with momentum 0.9
at lr 0.1, batch-norm statistics update) of the XNet network - ResNet-18 with the CIFAR stem
(`--backbone_width`, default 16; no dropout), an explainable layer of k neurons with batch norm
and a 2-class output layer - on a fixed random batch (default 128 images of 32x32x3,
standard-normal pixels, random labels in {0, 1}, and k binary attributes per image, each 1 with
probability 0.3, int8, seed 0), for each k of `--ks` (default 3, 16, 64) and three train steps on
the same model, the same initial weights and the same batch:

  * baseline: the library's step with `cross_entropy` only (alpha = 0: no drop loss);
  * xnet: the library's step with `cross_entropy` + the `xnet_drop` term (weight alpha = 0.05,
    objective min, category j = attribute column j): the k drop losses by `jax.vmap` over the
    X-layers on ONE backbone pass (`xjax.methods.xnet.drop_losses`);
  * naive: XNet as a researcher would first write it, as in the paper's PyTorch setup
    (`make_naive_train_step`): the normal forward pass, then for j = 0..k-1 a FULL forward pass of
    the model with neuron j dropped (`model.apply(..., keep=1 - e_j)`), DL_j = the mean
    cross-entropy over the images of category j; loss = CE - alpha * min_j DL_j
    (`xnet.objective`), batch-norm statistics from the normal pass (the k extra passes' are
    discarded). Its own small step mirroring `make_train_step` (same update, same metrics).

All three are compiled by `compile_train_step(step, make_mesh())` (ahead of time, on the first
use), from `create_train_state` (jitted, from an "rbg" key: see `Setup`) and
`make_optimizer("sgd", ...)`, with the batch placed on the device once by `shard_batch` (nothing
is transferred inside the timed loop). Their metrics (loss, terms, accuracy, grad norm) are part
of the step.

XLA merges the naive step's forward passes: the k masked passes compute the same backbone (and
explainable layer) on the same weights and images - the mask comes after them - so XLA's common
subexpression elimination computes that forward once (measured, forward only: k + 1 passes by a
Python loop or by `jax.lax.map` over j take the time of one; `jax.lax.optimization_barrier` does
not stop it on CPU, XLA drops the barrier). The
backward passes stay k + 1 (their cotangents differ): the printed convolution counts show it,
e.g. k = 64: naive 2555 = 20 forward + 65 x 39 backward, against 65 x 59 = 3835 unmerged. So in
JAX the naive step costs ~1 forward + (k + 1) backward passes, less than the (k + 1) full passes
of an eager PyTorch loop, whose naive/vmap would be ~k + 1.

How it is measured: per k, the three steps are compiled and warmed up first (not timed); then
`--rounds` alternating rounds (baseline, xnet, naive, baseline, ...) of `--steps` steps each
(`--naive_steps` for naive: one naive step is already k + 1 backward passes), so that the noise
of a shared machine hits all three alike; every round ends with `jax.block_until_ready` on the new
state and metrics. Reported per k: the median over rounds of round time / steps for each step
(with the min..max of the rounds), xnet/baseline (the price of the drop loss) and naive/vmap
(naive / xnet: what one backbone pass saves over k + 1). The output ends with one line per k,
`k=3 xnet/baseline=... naive/vmap=...`.

Correctness first (`check_xnet_step`): before timing, the xnet and naive steps each take one step
from copies of the same initial state on the timed batch (the step donates its state). Asserted:
the `loss` metrics and the new parameters agree to `TOLERANCE` (1e-5, relative; L2 over all
parameters) and the updates (new - initial parameters) to `UPDATE_TOLERANCE` (1e-4, relative
L2). The updates are the strict measure: they are ~1e-2 of the weights, so a drop loss 0.1 % off
moves the new parameters by only ~1e-6 but the updates by ~3e-5 (the test's tiny
configuration). The math is the same (the
masked passes' batch-norm statistics are the normal pass's: the mask is after every batch norm),
so only float rounding differs: measured, losses identical, new parameters 2.5e-8..5.5e-8 and
updates 3.6e-6..4.2e-6 apart (k = 3, 16, 64; the backbone's gradient is one backward pass of the
summed cotangents in xnet, k + 1 summed backward passes in naive). The baseline step is run too,
to show how much the drop loss changes the update (7e-2..1e-1).

What to expect (measured on 2 cores shared with another job): xnet/baseline = 1.00 (0.99-1.00):
the vmapped drop loss is the k-fold output layer, (B, k) x (k, 2) per neuron, and its gradient,
30 us at k = 3 and 1.1 ms at k = 64 against 280-460 ms for the whole step. naive/vmap = 2.4, 8.2,
23.7 at k = 3, 16, 64: each extra pass adds a backbone backward pass (the forward alone is
~86 ms of a ~280 ms step at k = 3). Compiling the naive step grows with k too (setup, check,
compilation and warm-up: 25 s at k = 3, 43 s at k = 16, 102 s at k = 64; 5.4 GB peak memory).

Run: `python -m benchmarks.xnet_step [--ks 3,16,64] [--batch 128] [--steps 5] [--naive_steps 1]
[--rounds 5] [--image_size 32] [--backbone_width 16]`; the default run takes about 5 minutes on 2
shared cores (k = 64: a naive step is ~7 s). Numbers from a machine shared with other processes
are noisy: compare the ratios rather than the absolute times, and look at the spread of the
rounds.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from xjax.data.sharding import make_mesh, replicated, shard_batch
from xjax.methods import xnet
from xjax.nn.registry import count_params, get_model
from xjax.train.losses import build_loss_terms
from xjax.train.optim import make_optimizer
from xjax.train.state import TrainState, create_train_state
from xjax.train.step import Metrics, compile_train_step, make_train_step

LEARNING_RATE = 0.1
MOMENTUM = 0.9
ALPHA = 0.05  # weight of the drop-loss term
OBJECTIVE = "min"
ATTRIBUTE_P = 0.3  # probability that an image is in a category
NUM_CLASSES = 2
TOLERANCE = 1e-5  # loss and new parameters, relative
UPDATE_TOLERANCE = 1e-4  # updates (new - initial parameters), relative L2
VARIANTS = ("baseline", "xnet", "naive")


def make_batch(batch_size: int, image_size: int, num_attributes: int,
               seed: int = 0) -> dict[str, np.ndarray]:
  """The fixed random batch: NHWC float32 images, int32 labels in {0, 1}, int8 attributes."""
  rng = np.random.default_rng(seed)
  return {
      "image": rng.standard_normal((batch_size, image_size, image_size, 3), np.float32),
      "label": rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32),
      "attributes": (rng.random((batch_size, num_attributes)) < ATTRIBUTE_P).astype(np.int8),
  }


def make_naive_train_step(model: nn.Module, tx: optax.GradientTransformation, k: int
                          ) -> Callable[[TrainState, dict], tuple[TrainState, Metrics]]:
  """XNet's train step as a researcher would first write it: k + 1 full forward passes.

  `make_train_step` with the loss written out: CE of the normal pass, and for each neuron j a
  full forward pass of the model with neuron j dropped (`keep = 1 - e_j`) and DL_j = the mean
  cross-entropy over the images of category j (attribute column j). Loss = CE - ALPHA *
  min_j DL_j (`xnet.objective`); the batch-norm statistics kept are the normal pass's (those of
  the k extra passes are discarded). Metrics are named as the library's xnet step names them.
  Compiled, XLA computes the k + 1 identical backbone forwards once (see the module docstring).
  """
  categories = list(range(k))

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, Metrics]:
    rng = jax.random.fold_in(state.rng, state.step)
    membership = xnet.category_membership(batch["attributes"], categories).astype(jnp.float32)

    def forward(params, keep=None):
      (logits, _), model_state = model.apply(
          {"params": params, **state.model_state}, batch["image"], train=True, keep=keep,
          rngs={"dropout": rng}, mutable=list(state.model_state))
      return logits, model_state, optax.softmax_cross_entropy_with_integer_labels(
          logits, batch["label"])

    def loss_fn(params):
      logits, model_state, ce = forward(params)
      losses = []
      for j in range(k):  # neuron j dropped: a whole new forward pass
        _, _, ce_j = forward(params, keep=1.0 - jnp.eye(k)[j])
        losses.append(jnp.sum(membership[:, j] * ce_j) / jnp.maximum(membership[:, j].sum(), 1.0))
      drop = -xnet.objective(jnp.stack(losses), membership.sum(axis=0), OBJECTIVE)
      return ce.mean() + ALPHA * drop, (ce.mean(), drop, model_state, logits)

    (loss, (ce, drop, model_state, logits)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "loss/cross_entropy": ce, "loss/xnet_drop": drop,
               "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
               "grad_norm": optax.tree.norm(grads)}
    return state.replace(step=state.step + 1, params=params, model_state=model_state,
                         opt_state=opt_state), metrics

  return train_step


def train_step(variant: str, model: nn.Module, tx: optax.GradientTransformation,
               k: int) -> Callable[[TrainState, dict], tuple[TrainState, Metrics]]:
  """The uncompiled train step of one variant (see the module docstring); categories 0..k-1."""
  if variant == "baseline":
    return make_train_step(model, tx, build_loss_terms({"cross_entropy": {"weight": 1.0}}))
  if variant == "xnet":
    return make_train_step(model, tx, build_loss_terms({
        "cross_entropy": {"weight": 1.0},
        "xnet_drop": {"weight": ALPHA, "categories": list(range(k)), "objective": OBJECTIVE}}))
  if variant == "naive":
    return make_naive_train_step(model, tx, k)
  raise ValueError(f"Unknown variant {variant!r}; expected one of {VARIANTS}.")


def copy_state(state: TrainState) -> TrainState:
  """A copy in new buffers (the compiled step donates, i.e. deletes, the state it is given)."""
  return jax.tree.map(jnp.copy, state)


class Setup:
  """One k: the XNet model, its initial state, the device batch and the three compiled steps.

  `step(variant)` is the compiled `(state, batch) -> (state, metrics)` of that variant (compiled
  on first use, with XLA's `compiler_options` if given); `state0` is the common initial state
  (never passed to a step: use `copy_state`).
  """

  def __init__(self, k: int, batch_size: int, image_size: int, backbone_width: int,
               seed: int = 0, compiler_options: dict[str, Any] | None = None):
    self.k, self.compiler_options = k, compiler_options
    self.model = get_model("xnet", backbone="resnet18",
                           backbone_options={"stem": "cifar", "width": backbone_width},
                           num_neurons=k, num_classes=NUM_CLASSES, head_norm="batch")
    self.tx = make_optimizer("sgd", learning_rate=LEARNING_RATE, momentum=MOMENTUM,
                             steps_per_epoch=1000)
    self.mesh = make_mesh()
    self.host_batch = make_batch(batch_size, image_size, k, seed)
    self.batch = shard_batch(self.host_batch, self.mesh)
    # The library's initialisation, jitted, from an "rbg" key: with the default threefry key
    # XLA takes ~10 s on 2 cores to compile ResNet-18's initialisation (the weights are random
    # either way; the model has no dropout, so the step's key is never used).
    init = jax.jit(create_train_state, static_argnums=(0, 1, 3),
                   out_shardings=replicated(self.mesh))
    self.state0 = init(self.model, self.tx, jax.random.key(seed, impl="rbg"),
                       (image_size, image_size, 3))
    self._compiled: dict[str, Any] = {}

  def step(self, variant: str) -> Any:
    """The compiled step of `variant`, `compile_train_step` compiled ahead of time."""
    if variant not in self._compiled:
      jitted = compile_train_step(train_step(variant, self.model, self.tx, self.k), self.mesh)
      self._compiled[variant] = jitted.lower(self.state0, self.batch).compile(
          compiler_options=self.compiler_options)
    return self._compiled[variant]

  def convolutions(self, variant: str) -> int:
    """The convolutions in the optimised program of the step (XLA merges identical ones)."""
    return self.step(variant).as_text().count(" convolution(")

  def one_step(self, variant: str) -> tuple[TrainState, dict[str, jax.Array]]:
    """One step of `variant` from a copy of the initial state; blocks until it is done."""
    return jax.block_until_ready(self.step(variant)(copy_state(self.state0), self.batch))


class Runner:
  """The timed loop of one variant: its own state, advanced by `steps` steps per round."""

  def __init__(self, setup: Setup, variant: str):
    self.step_fn, self.batch = setup.step(variant), setup.batch
    self.state, self.metrics = copy_state(setup.state0), None

  def run(self, steps: int) -> float:
    """`steps` steps, blocking at the end; returns the seconds taken."""
    t0 = time.perf_counter()
    for _ in range(steps):
      self.state, self.metrics = self.step_fn(self.state, self.batch)
    jax.block_until_ready((self.state, self.metrics))
    return time.perf_counter() - t0


def _l2(tree: Any) -> float:
  return float(np.sqrt(sum(np.sum(np.asarray(x, np.float64)**2) for x in jax.tree.leaves(tree))))


def _l2_rel_diff(a: Any, b: Any) -> float:
  """||a - b|| / ||b|| over all leaves of two pytrees of the same structure."""
  return _l2(jax.tree.map(lambda x, y: np.asarray(x, np.float64) - np.asarray(y, np.float64),
                          a, b)) / _l2(b)


def check_xnet_step(k: int, *, batch_size: int = 8, image_size: int = 8, backbone_width: int = 4,
                    seed: int = 0, setup: Setup | None = None, with_baseline: bool = False,
                    compiler_options: dict[str, Any] | None = None) -> dict[str, Any]:
  """One xnet (vmap) step and one naive (k + 1 full passes) step from the same state and batch.

  Args:
    k: the explainable layer's neurons (= categories = attribute columns).
    batch_size, image_size, backbone_width, seed, compiler_options: the configuration (tiny by
      default) when no `setup` is given; e.g. `compiler_options={"xla_backend_optimization_level":
      0}` compiles the naive step about 3x faster (for tests).
    setup: a `Setup` to reuse (its compiled steps are run here); then the other options are
      ignored.
    with_baseline: also run the baseline step (one more compilation) for `drop_rel_effect`.

  Returns:
    `loss_xnet`, `loss_naive` (the `loss` metric) and `loss_rel_diff`; `drop_xnet`,
    `drop_naive`: the unweighted drop-loss terms (-min_j DL_j); `params_l2_rel_diff`: relative L2
    difference of the new parameters (naive vs xnet, over all parameters), `update_l2_rel_diff`
    the same for the updates (new - initial parameters), `update_rel_size`:
    ||update_xnet|| / ||initial params|| (how far the step moved); `drop_rel_effect`: relative
    L2 difference of the xnet and baseline updates (what the drop loss changes in the step;
    NaN without `with_baseline`); `present`: the categories with an image in the batch.
  """
  setup = setup or Setup(k, batch_size, image_size, backbone_width, seed, compiler_options)
  params0 = jax.device_get(setup.state0.params)
  variants = VARIANTS if with_baseline else ("xnet", "naive")
  results = {v: setup.one_step(v) for v in variants}
  new = {v: jax.device_get(state.params) for v, (state, _) in results.items()}
  metrics = {v: jax.device_get(m) for v, (_, m) in results.items()}
  update = {v: jax.tree.map(lambda p, p0: np.asarray(p, np.float64) - p0, new[v], params0)
            for v in variants}
  loss_x, loss_n = float(metrics["xnet"]["loss"]), float(metrics["naive"]["loss"])
  return {
      "loss_xnet": loss_x, "loss_naive": loss_n,
      "loss_rel_diff": abs(loss_n - loss_x) / abs(loss_x),
      "drop_xnet": float(metrics["xnet"]["loss/xnet_drop"]),
      "drop_naive": float(metrics["naive"]["loss/xnet_drop"]),
      "params_l2_rel_diff": _l2_rel_diff(new["naive"], new["xnet"]),
      "update_l2_rel_diff": _l2_rel_diff(update["naive"], update["xnet"]),
      "update_rel_size": _l2(update["xnet"]) / _l2(params0),
      "drop_rel_effect": (_l2_rel_diff(update["baseline"], update["xnet"]) if with_baseline
                          else float("nan")),
      "present": int(np.sum(setup.host_batch["attributes"].any(axis=0))),
  }


def print_header() -> None:
  print(f"device: {jax.devices()} ({platform.processor() or platform.machine()}), "
        f"os.cpu_count()={os.cpu_count()}, affinity={len(os.sched_getaffinity(0))} cores")
  print(f"versions: jax {jax.__version__}, flax {flax.__version__}, numpy {np.__version__}, "
        f"python {platform.python_version()}")
  print(f"threads: XLA CPU default intra-op pool over all {os.cpu_count()} cores "
        f"(XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r})")


def benchmark_k(k: int, batch_size: int, image_size: int, backbone_width: int, steps: int,
                naive_steps: int, rounds: int) -> dict[str, float]:
  """Check, then alternating timed rounds; prints the k's line and returns its ratios."""
  t0 = time.perf_counter()
  setup = Setup(k, batch_size, image_size, backbone_width)
  check = check_xnet_step(k, setup=setup, with_baseline=True)  # compiles and runs every step
  print(f"k={k}: {count_params(setup.state0.params):,} params, {check['present']}/{k} "
        f"categories in the batch; check (one step from the same state): loss xnet "
        f"{check['loss_xnet']:.6f} naive {check['loss_naive']:.6f} rel diff "
        f"{check['loss_rel_diff']:.1e}; drop term xnet {check['drop_xnet']:.6f} naive "
        f"{check['drop_naive']:.6f}; new params rel L2 {check['params_l2_rel_diff']:.1e}, "
        f"updates rel L2 {check['update_l2_rel_diff']:.1e} (update / params "
        f"{check['update_rel_size']:.1e}; xnet vs baseline update {check['drop_rel_effect']:.1e})")
  for key, tolerance in (("loss_rel_diff", TOLERANCE), ("params_l2_rel_diff", TOLERANCE),
                         ("update_l2_rel_diff", UPDATE_TOLERANCE)):
    assert check[key] < tolerance, f"k={k}: {key} = {check[key]:.3g} >= {tolerance}"
  print(f"k={k}: convolutions in the compiled step: "
        + ", ".join(f"{v} {setup.convolutions(v)}" for v in VARIANTS)
        + f" ({k + 1} x baseline = {(k + 1) * setup.convolutions('baseline')} if XLA did not "
        f"merge the naive step's k + 1 identical backbone forward passes)")

  runners = {v: Runner(setup, v) for v in VARIANTS}
  for runner in runners.values():  # warm-up on the runner's own state (untimed)
    runner.run(1)
  print(f"k={k}: setup, check, compile and warm-up took {time.perf_counter() - t0:.1f} s; "
        f"timing {rounds} rounds of {steps} steps (naive: {naive_steps}) of batch {batch_size}")
  seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
  for _ in range(rounds):
    for v in VARIANTS:
      n = naive_steps if v == "naive" else steps
      seconds[v].append(runners[v].run(n) / n)
  median = {v: statistics.median(s) for v, s in seconds.items()}
  spread = lambda s: f"{1e3 * min(s):.1f}..{1e3 * max(s):.1f}"
  print(f"k={k}  ms/step (median; rounds min..max): "
        + ", ".join(f"{v} {1e3 * median[v]:.1f} ({spread(seconds[v])})" for v in VARIANTS))
  return {"xnet/baseline": median["xnet"] / median["baseline"],
          "naive/vmap": median["naive"] / median["xnet"]}


def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
  """Runs the benchmark; returns the ratios of each k (those of the last lines printed)."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--ks", default="3,16,64", help="comma list of explainable-layer widths k")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=5,
                      help="timed steps per round of the baseline and xnet steps")
  parser.add_argument("--naive_steps", type=int, default=1,
                      help="timed steps per round of the naive step (k + 1 backward passes)")
  parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per variant")
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--backbone_width", type=int, default=16,
                      help="ResNet-18 width (channels of the first stage)")
  args = parser.parse_args(argv)
  try:
    ks = sorted({int(k) for k in args.ks.split(",") if k.strip()})
  except ValueError:
    parser.error(f"--ks must be a comma list of positive ints, got {args.ks!r}")
  if not ks or min(ks) < 1:
    parser.error(f"--ks must be a comma list of positive ints, got {args.ks!r}")

  print_header()
  print(f"XNet: ResNet-18 (CIFAR stem, width {args.backbone_width}) + k neurons (batch norm) + "
        f"{NUM_CLASSES} classes; batch {args.batch} x {args.image_size}x{args.image_size}x3, "
        f"attributes p={ATTRIBUTE_P}; SGD lr {LEARNING_RATE} momentum {MOMENTUM}; alpha {ALPHA} "
        f"({OBJECTIVE}); ks {ks}, rounds {args.rounds}, steps per round {args.steps} (naive "
        f"{args.naive_steps})")
  ratios = {k: benchmark_k(k, args.batch, args.image_size, args.backbone_width, args.steps,
                           args.naive_steps, args.rounds) for k in ks}
  for k in ks:
    print(f"k={k} " + " ".join(f"{name}={value:.2f}" for name, value in ratios[k].items()))
  return ratios


if __name__ == "__main__":
  main()
