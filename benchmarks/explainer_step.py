"""Cost of the ICNN filter loss in the explainer network's train step, and of vmap over filters.

What is measured (Zhang, Yang & Wu, AAAI 2019; the filter loss of Zhang, Wu & Zhu, CVPR 2018):

  * step: seconds per explainer train step (forward through the frozen performer and the
    explainer, Eq. 1's loss, backward, Adam on the explainer's parameters) on a fixed random batch
    (default 32 images of 32x32x3; the performer a VGG with conv stack (32, M, 64, M, 128, M) and
    dense (256, 256), random weights), with the filter loss (`--form`, default "paper") against
    the same step without it: with/without.
  * filter loss: seconds per call of the filter loss and its gradient on the interpretable maps of
    that batch (B, n, n, D), `jax.vmap` over the D filters (the library's way, one jitted call)
    against a Python loop over the filters (D calls of the jitted single-filter loss, what a
    port of the public code's per-filter loop costs): loop/vmap.

Correctness first: the vmapped loss and gradient equal the loop's (to float32 rounding).

How it is measured: compiled and warmed up first; then `--rounds` alternating rounds of
`--steps` calls each, each round ending in `jax.block_until_ready`; the median over rounds.

Run: `python -m benchmarks.explainer_step [--batch 32] [--image_size 32] [--steps 5]
[--rounds 3] [--form paper]`; about a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xjax.methods import filter_loss as icnn
from xjax.methods.explainer import Explainer
from xjax.train.losses import LOSS_TERMS, ModelOutputs

# The MI of random-init maps is ~1e-5, a sum of differences of O(1) log-probabilities: float32
# rounding, summed in another order under vmap than in the loop, is ~1e-7 on the value and ~1e-3
# of the gradient's norm.
VALUE_TOLERANCE, GRADIENT_TOLERANCE = 1e-6, 3e-3
PERFORMER = {"config": (32, "M", 64, "M", 128, "M"), "dense": (256, 256)}


def _median_time(fn, args, steps: int, rounds: int) -> float:
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    for _ in range(steps):
      out = fn(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / steps)
  return statistics.median(times)


def make_step(model, with_filter_loss: bool, form: str):
  names = ["explainer_reconstruction", "explainer_p"] + (["filter_loss"] if with_filter_loss
                                                         else [])
  terms = [LOSS_TERMS.get(n, **({"form": form} if n == "filter_loss" else {})) for n in names]
  optimizer = optax.adam(1e-3)

  def loss(trainable, frozen, x):
    params = {**trainable, "performer": frozen}
    logits, out = model.apply({"params": params}, x)
    return sum(term(params, {}, ModelOutputs(logits, out)) for term in terms)

  @jax.jit
  def step(trainable, opt_state, frozen, x):
    value, grads = jax.value_and_grad(loss)(trainable, frozen, x)
    updates, opt_state = optimizer.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, value

  return step, optimizer


def measure_step(args) -> dict[str, float]:
  model = Explainer(performer="vgg", performer_options=PERFORMER, num_classes=10)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(args.batch, args.image_size,
                                                          args.image_size, 3)), jnp.float32)
  params = model.init(jax.random.key(0), x)["params"]
  frozen = params.pop("performer")
  result = {}
  for name, with_loss in (("with", True), ("without", False)):
    step, optimizer = make_step(model, with_loss, args.form)
    state = (params, optimizer.init(params))
    run = lambda p, s, step=step: step(p, s, frozen, x)
    jax.block_until_ready(run(*state))  # compile
    result[name] = _median_time(run, state, args.steps, args.rounds)
  _, out = jax.jit(model.apply)({"params": {**params, "performer": frozen}}, x)
  result["maps"] = out["interp_2"]
  return result


def measure_filter_loss(maps: jax.Array, args) -> dict[str, float]:
  loss = icnn.filter_loss_paper
  vmapped = jax.jit(jax.value_and_grad(lambda m: jnp.sum(loss(m))))
  single = jax.jit(jax.value_and_grad(lambda m: jnp.sum(loss(m))))

  def loop(m):
    outs = [single(m[..., f:f + 1]) for f in range(m.shape[-1])]
    return sum(o[0] for o in outs), jnp.concatenate([o[1] for o in outs], -1)

  value_v, grad_v = vmapped(maps)
  value_l, grad_l = loop(maps)
  error = float(jnp.linalg.norm(grad_v - grad_l) / (jnp.linalg.norm(grad_l) + 1e-30))
  if abs(float(value_v - value_l)) > VALUE_TOLERANCE or error > GRADIENT_TOLERANCE:
    raise AssertionError(f"vmapped and looped filter losses differ: {float(value_v)} vs "
                         f"{float(value_l)}, gradient {error:.1e}")
  return {"vmap": _median_time(vmapped, (maps,), args.steps, args.rounds),
          "loop": _median_time(loop, (maps,), args.steps, args.rounds), "error": error}


def main(argv: list[str] | None = None) -> dict[str, float]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--form", default="paper", choices=("paper", "code"))
  args = parser.parse_args(argv)
  print(f"explainer step, batch {args.batch} of {args.image_size}x{args.image_size}, performer "
        f"{PERFORMER}; JAX {jax.__version__} on {jax.devices()}", flush=True)
  step = measure_step(args)
  maps = step.pop("maps")
  filters = measure_filter_loss(maps, args)
  result = {"step_with_s": step["with"], "step_without_s": step["without"],
            "with/without": step["with"] / step["without"],
            "filter_vmap_s": filters["vmap"], "filter_loop_s": filters["loop"],
            "loop/vmap": filters["loop"] / filters["vmap"]}
  print(f"train step: with the filter loss {1e3 * step['with']:.1f} ms, without "
        f"{1e3 * step['without']:.1f} ms: with/without={result['with/without']:.2f}", flush=True)
  print(f"filter loss and gradient on {tuple(maps.shape)}: vmap {1e3 * filters['vmap']:.2f} ms, "
        f"loop over {maps.shape[-1]} filters {1e3 * filters['loop']:.2f} ms (same values: "
        f"{filters['error']:.1e}): loop/vmap={result['loop/vmap']:.2f}", flush=True)
  return result


if __name__ == "__main__":
  main()
