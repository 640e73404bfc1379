"""Cost of training C SRAE modules (one per class) by `jax.vmap` against a loop of C single steps.

What is measured: seconds per training step of C SRAE modules (Qi & Li, Eq. 1; `xjax.methods.
srae.make_train_step`: forward, loss with the running MSE_k, backward, Adam) on one fixed batch of
Z (default 64 rows of 4096 dimensions, the paper's fc6, standard-normal ReLU'd) and y-hat (C
columns), for each C of `--cs` (default 1, 15, 30):

  * vmap: ONE jitted step of the C stacked modules (the library's way), state donated;
  * loop: C calls of the jitted step of ONE module (module c on column c), what a per-class
    Python loop costs (one compile, C dispatches; each call blocks on the next's input).

Correctness first: one vmapped step and the loop of single steps start from the same parameters
and must give the same new parameters (relative L2 below 1e-5).

How it is measured: both are compiled and warmed up; then `--rounds` alternating rounds of
`--steps` steps each, every round ending in `jax.block_until_ready`; the median over rounds of
round time / steps. One line per C ends in the ratios: loop/vmap (what vmap saves) and
vmap(C)/vmap(1) (the cost of C modules against one; the acceptance asks at most 3 for C = 30).

Run: `python -m benchmarks.srae_step [--cs 1,15,30] [--s_z 4096] [--hidden 256] [--k 5]
[--batch 64] [--steps 20] [--rounds 5]`; about a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xjax.methods import srae

TOLERANCE = 1e-5


def _relative(a, b) -> float:
  flat = lambda t: jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(t)])
  return float(jnp.linalg.norm(flat(a) - flat(b)) / jnp.linalg.norm(flat(b)))


def _timed(fn, state, steps: int) -> tuple[float, tuple]:
  start = time.perf_counter()
  for _ in range(steps):
    state = fn(state)
  jax.block_until_ready(state)
  return (time.perf_counter() - start) / steps, state


def measure(c: int, z: jax.Array, y: jax.Array, args) -> dict[str, float]:
  optimizer = optax.adam(srae.LEARNING_RATE)
  # Donated state, for both: the library's training scan updates the modules in place; without
  # it each vmapped step allocates and first touches C modules' new buffers (about 750 MB of
  # parameters and Adam moments at C = 30), which is no part of training.
  step = srae.make_train_step(optimizer, donate=True)
  copy = lambda tree: jax.tree.map(jnp.copy, tree)
  params = srae.init_modules(jax.random.key(c), c, z.shape[1], args.k, args.hidden)
  opt_state = srae.init_optimizer(optimizer, params)
  ema = srae.initial_ema(params, z)
  one = lambda tree, i: jax.tree.map(lambda a: jnp.copy(a[i:i + 1]), tree)  # own buffers

  def vmap_step(state):
    return step(*state, z, y)[:3]

  def loop_step(states):
    return tuple(step(*s, z, y[:, i:i + 1])[:3] for i, s in enumerate(states))

  vmapped = (params, opt_state, ema)
  looped = tuple((one(params, i), one(opt_state, i), one(ema, i)) for i in range(c))
  # Correctness: one step each from the same start.
  new_v = vmap_step(copy(vmapped))[0]
  new_l = jax.tree.map(lambda *a: jnp.concatenate(a), *[s[0] for s in loop_step(copy(looped))])
  error = _relative(new_l, new_v)
  if error > TOLERANCE:
    raise AssertionError(f"C={c}: the vmapped step and the loop differ by {error:.2e}")
  vmapped, looped = vmap_step(vmapped), loop_step(looped)  # warm-up (compiled above)
  times = {"vmap": [], "loop": []}
  for _ in range(args.rounds):
    seconds, vmapped = _timed(vmap_step, vmapped, args.steps)
    times["vmap"].append(seconds)
    seconds, looped = _timed(loop_step, looped, args.steps)
    times["loop"].append(seconds)
  return {name: statistics.median(t) for name, t in times.items()} | {"error": error}


def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cs", default="1,15,30")
  parser.add_argument("--s_z", type=int, default=4096)
  parser.add_argument("--hidden", type=int, default=256)
  parser.add_argument("--k", type=int, default=5)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--rounds", type=int, default=5)
  args = parser.parse_args(argv)
  cs = [int(c) for c in args.cs.split(",")]
  rng = np.random.default_rng(0)
  z = jnp.asarray(np.maximum(rng.standard_normal((args.batch, args.s_z)), 0), jnp.float32)
  y_all = jnp.asarray(rng.standard_normal((args.batch, max(cs))), jnp.float32)
  print(f"SRAE train step, Z ({args.batch}, {args.s_z}), hidden {args.hidden}, k {args.k}; "
        f"JAX {jax.__version__} on {jax.devices()}", flush=True)
  results = {}
  for c in cs:
    results[c] = measure(c, z, y_all[:, :c], args)
  base = results[cs[0]]["vmap"] if cs[0] == 1 else None
  for c, r in results.items():
    r["loop/vmap"] = r["loop"] / r["vmap"]
    r["vmap/one"] = r["vmap"] / base if base else float("nan")
    print(f"C={c}: vmap {1e3 * r['vmap']:.2f} ms/step, loop of {c} single steps "
          f"{1e3 * r['loop']:.2f} ms/step (same update: {r['error']:.1e}); "
          f"vmap(C)/vmap(1)={r['vmap/one']:.2f} loop/vmap={r['loop/vmap']:.2f}", flush=True)
  return results


if __name__ == "__main__":
  main()
