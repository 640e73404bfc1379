"""AttnLRP on a BERT: xjax against `jax.grad` of the same logit, and against LXT, same weights.

The model is a BERT-base-sized sequence classifier with random weights (hidden 768, 12 layers,
12 heads, MLP 3072, vocabulary 30522; `--size small` for a 4-layer, 256-wide one), explained at
its word embeddings for each example's top class, a batch of `--batch` sequences of `--length`
tokens (8 x 128 by default, as the comparison in the transformer issue asks).

* xjax: `lrp(..., composite=attn_lrp())` under `jax.jit`, against `x * jax.grad` of the same
  logits under `jax.jit` (the cost floor: AttnLRP in gradient form is one forward and one
  backward pass with rescaled gradients). Time per call (median of `--rounds`, after a warm-up
  call that compiles) and the compiled program's memory (XLA's memory analysis: arguments,
  outputs and temporaries, less aliased buffers), as ratios.
* LXT 2.1's efficient AttnLRP (the PyTorch reference) on the same weights and tokens, when
  `--lxt_python` (or `XJAX_LXT_PYTHON`) names a Python where LXT imports: `lxt_peer.py` runs
  there, builds and saves the weights, and times LXT; xjax then loads the same
  `model.safetensors` (`xjax.nn.torch_import`) and first checks that both relevances agree.
  Without it, the LXT rows say why they were skipped.

On a shared CPU both sides use the same cores (JAX's and torch's intra-op threads); the ratios
are what the numbers mean, not the seconds. On a GPU, `--batch 32` is the setting of
`benchmarks.all` (LXT then needs a CUDA torch in its environment; the peer runs on the CPU).

Run: `python -m benchmarks.transformer [--size base|small] [--batch 8] [--length 128]
[--rounds 3] [--lxt_python /path/to/lxt-venv/bin/python]`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from xjax.explain import composites
from xjax.explain.lrp import lrp
from xjax.nn import get_model
from xjax.nn.torch_import import fields_from_torch_config, import_torch_weights

SIZES = {
    "base": {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
             "num_attention_heads": 12, "intermediate_size": 3072},
    "small": {"vocab_size": 30522, "hidden_size": 256, "num_hidden_layers": 4,
              "num_attention_heads": 4, "intermediate_size": 1024},
}
PEER = pathlib.Path(__file__).with_name("lxt_peer.py")


def bert_config(size: str) -> dict:
  """Hugging Face `BertConfig` arguments: `SIZES[size]`, no dropout, two classes."""
  return {**SIZES[size], "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
          "num_labels": 2, "max_position_embeddings": 512}


def run_lxt(python: str, out: pathlib.Path, config: dict, batch: int, length: int,
            rounds: int) -> dict:
  """Runs `lxt_peer.py` in `python`; returns its `lxt.json`."""
  command = [python, str(PEER), "--out", str(out), "--config", json.dumps(config),
             "--batch", str(batch), "--length", str(length), "--rounds", str(rounds)]
  subprocess.run(command, check=True)
  return json.loads((out / "lxt.json").read_text())


def timed(fn: Callable[[], jax.Array], rounds: int) -> float:
  """Median seconds per call of `fn` (already compiled), waiting for its result."""
  seconds = []
  for _ in range(rounds):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    seconds.append(time.perf_counter() - start)
  return statistics.median(seconds)


def compiled_bytes(fn: Callable, *args) -> int:
  """The compiled program's memory: arguments + outputs + temporaries - aliased buffers."""
  analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
  return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
             + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.corrcoef(a.reshape(-1), b.reshape(-1))[0, 1])


def main(argv: list[str] | None = None) -> dict[str, float]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", choices=tuple(SIZES), default="base")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--length", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--lxt_python", default=os.environ.get("XJAX_LXT_PYTHON", ""),
                      help="a Python where LXT 2.1 imports (see lxt_peer.py); empty: no LXT")
  args = parser.parse_args(argv)
  config = bert_config(args.size)
  print(f"BERT {args.size} ({config['num_hidden_layers']} layers, hidden "
        f"{config['hidden_size']}), batch {args.batch} x {args.length} tokens; "
        f"JAX {jax.default_backend()} {jax.devices()}", flush=True)

  model = get_model("bert", **fields_from_torch_config("bert", config))
  lxt, scratch = None, tempfile.TemporaryDirectory()
  if args.lxt_python:
    out = pathlib.Path(scratch.name)
    lxt = run_lxt(args.lxt_python, out, config, args.batch, args.length, args.rounds)
    variables = import_torch_weights(model, out / "model.safetensors")
    ids = jnp.asarray(np.load(out / "inputs.npz")["ids"])
  else:
    print("LXT: not run (no --lxt_python / XJAX_LXT_PYTHON)", flush=True)
    ids = jax.random.randint(jax.random.key(0), (args.batch, args.length), 0,
                             config["vocab_size"])
    variables = model.init(jax.random.key(1), ids)

  def apply_fn(v, e):
    return model.apply(v, e)[0]

  embeddings = model.apply(variables, ids, method=model.embed)
  target = jnp.argmax(apply_fn(variables, embeddings), -1)
  composite = composites.attn_lrp()

  def attn_lrp(v, e, t):
    return lrp(apply_fn, v, e, t, composite).sum(-1)

  def gradient_x_input(v, e, t):
    grad = jax.grad(lambda e: apply_fn(v, e)[jnp.arange(e.shape[0]), t].sum())(e)
    return (e * grad).sum(-1)

  results = {}
  jitted = {name: jax.jit(fn) for name, fn in
            (("attn_lrp", attn_lrp), ("gradient", gradient_x_input))}
  relevance = {}
  for name, fn in jitted.items():
    start = time.perf_counter()
    relevance[name] = np.asarray(jax.block_until_ready(fn(variables, embeddings, target)))
    print(f"{name}: first call (compile) {time.perf_counter() - start:.1f} s", flush=True)
  for name, fn in jitted.items():
    results[f"{name}_s"] = timed(lambda fn=fn: fn(variables, embeddings, target), args.rounds)
    results[f"{name}_bytes"] = compiled_bytes(
        {"attn_lrp": attn_lrp, "gradient": gradient_x_input}[name], variables, embeddings,
        target)
  results["lrp/grad time"] = results["attn_lrp_s"] / results["gradient_s"]
  results["lrp/grad memory"] = results["attn_lrp_bytes"] / results["gradient_bytes"]
  print(f"xjax AttnLRP {1e3 * results['attn_lrp_s']:.0f} ms, "
        f"{results['attn_lrp_bytes'] / 2**20:.0f} MiB; jax.grad x input "
        f"{1e3 * results['gradient_s']:.0f} ms, {results['gradient_bytes'] / 2**20:.0f} MiB; "
        f"ratios time {results['lrp/grad time']:.2f}, memory {results['lrp/grad memory']:.2f}",
        flush=True)
  if lxt is not None:
    reference = np.asarray(lxt["relevance"])
    gap = float(np.abs(relevance["attn_lrp"] - reference).max() / np.abs(reference).max())
    r = pearson(relevance["attn_lrp"], reference)
    print(f"check against LXT: max |dR| / max |R| = {gap:.2e}, Pearson {r:.6f} "
          f"(targets equal: {lxt['target'] == np.asarray(target).tolist()})", flush=True)
    if gap > 1e-3 or lxt["target"] != np.asarray(target).tolist():
      raise SystemExit(f"xjax's AttnLRP differs from LXT's on the same weights (gap {gap:.2e})")
    results.update({"lxt_s": lxt["seconds"], "xjax/lxt speed": lxt["seconds"]
                    / results["attn_lrp_s"], "check_gap": gap})
    print(f"LXT (torch {lxt['torch']}, {lxt['threads']} threads) {1e3 * lxt['seconds']:.0f} ms "
          f"per call: xjax runs at {results['xjax/lxt speed']:.2f}x LXT's speed", flush=True)
  scratch.cleanup()
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
