"""Explains a trained model: `python -m runs.explain --workdir=W --methods=lrp:dtd,saliency --n=16`.

Rebuilds the model and the dataset of `W/config.json` exactly as `runs.train` did, loads the `best`
parameters, and explains the first `--n` images of `--split` (normalised as in training) for the
predicted class (or the label, `--target=label`) with every method of `--methods` (names: see
`xjax.explain.methods`). Writes into the workdir:

  figures/explain.png            one row per image: the input, then one heatmap per method
  figures/explain_<method>.png   the same for each method alone (`:` in the name becomes `_`)
  explanations.npz               images (uint8), labels, targets, predictions, target_logits,
                                 methods (the specs), and per method `<key>` (the channel-summed
                                 heatmaps, n x H x W) and `<key>_relevance` (n x H x W x C), where
                                 <key> is the spec with `:` replaced by `_`; `mask` where the data
                                 has ground-truth masks

and prints per method the time per image, for LRP the mean of sum(relevance) / target logit (1 where
relevance is conserved), and where the data has masks the share of positive relevance on the object.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from xjax.errors import ConfigError, XjaxError

TARGETS = ("predicted", "label")


def method_key(spec: str) -> str:
  """A spec as a file name and npz key: `lrp:dtd` -> `lrp_dtd`."""
  return spec.replace(":", "_")


def load_run(workdir: str | Path, split: str = "test", which: str = "best"):
  """The config, the source of `split`, `apply_fn` and the variables of a trained workdir."""
  from xjax.nn.registry import logits_fn
  from xjax.train import checkpoint
  from xjax.train.loop import build_model, load_sources

  workdir = Path(workdir)
  if not workdir.is_dir():
    raise XjaxError(f"No workdir {workdir}: train a model there first (python -m runs.train "
                    f"--config=... --workdir={workdir}).")
  config_path = workdir / "config.json"
  if not config_path.is_file():
    raise XjaxError(f"{workdir} has no config.json: it is not the workdir of a runs.train run.")
  if not (workdir / "checkpoints").is_dir():
    raise XjaxError(f"No checkpoint under {workdir / 'checkpoints'}: train a model in this "
                    f"workdir first.")
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  source = load_sources(config.data, splits=(split,))[split]
  model = build_model(config, source.info)
  state = checkpoint.load_params(workdir, which)
  variables = {"params": state["params"], **state.get("model_state", {})}
  expected = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                            jax.ShapeDtypeStruct((1, *source.info.image_shape), jnp.float32))
  checkpoint.check_fits({"params": expected["params"]}, {"params": variables["params"]},
                        workdir / "checkpoints")
  return config, source, logits_fn(model), variables


def _batches(n: int, batch_size: int):
  """(start, stop) of each batch of the first n examples."""
  return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def _padded(a: np.ndarray, size: int) -> np.ndarray:
  """`a` with its last row repeated up to `size` rows (every batch has one shape: one compile)."""
  return a if len(a) == size else np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)])


def run_method(method: Callable, apply_fn: Callable, variables, x: np.ndarray,
               targets: np.ndarray, batch_size: int) -> tuple[np.ndarray, float, float]:
  """Relevance of all of `x` in batches under one `jax.jit`; (relevance, compile s, s per image)."""
  fn = jax.jit(lambda p, xb, tb: method(apply_fn, p, xb, tb))
  started = time.perf_counter()
  compiled = fn.lower(variables, x[:batch_size], targets[:batch_size]).compile()
  compile_seconds = time.perf_counter() - started
  parts = []
  started = time.perf_counter()
  for start, stop in _batches(len(x), batch_size):
    out = compiled(variables, _padded(x[start:stop], batch_size),
                   _padded(targets[start:stop], batch_size))
    parts.append(np.asarray(jax.block_until_ready(out))[:stop - start])
  seconds_per_image = (time.perf_counter() - started) / len(x)
  return np.concatenate(parts), compile_seconds, seconds_per_image


def explain_workdir(workdir: str | Path, specs: Sequence[str], *, n: int = 16, split: str = "test",
                    target: str = "predicted", batch_size: int = 16, seed: int = 0,
                    log: Callable[[str], None] = print) -> dict:
  """Explains the first `n` images of `split`; writes the figures and `explanations.npz`.

  Args:
    workdir: a workdir written by `runs.train` (config.json, checkpoints/).
    specs: method specs, e.g. ["lrp:dtd", "saliency"] (see `xjax.explain.methods`).
    n: the number of images (at most the size of the split).
    split: "train", "validation" or "test".
    target: "predicted" (explain the model's decision) or "label" (the true class).
    batch_size: images per compiled call.
    seed: the seed of SmoothGrad's noise.
    log: where the summary lines go.

  Returns:
    Per method spec: {"compile_seconds", "seconds_per_image", "conservation" (LRP, else None),
    "mask_share" (None without masks)}.

  Raises:
    XjaxError: a missing workdir / config / checkpoint, an unknown method, split or target.
  """
  from xjax.data import pipeline
  from xjax.explain import heatmaps, methods as registry
  from xjax.plot.heatmaps import plot_explanations

  specs = list(dict.fromkeys(registry.canonical_spec(s) for s in specs))  # fails fast on names
  if not specs:
    raise ConfigError(f"No methods given; known methods: {', '.join(registry.METHODS)}.")
  if target not in TARGETS:
    raise ConfigError(f"Unknown target {target!r}; expected one of {TARGETS}.")
  if n < 1 or batch_size < 1:
    raise ConfigError(f"--n and --batch_size must be >= 1; got {n} and {batch_size}.")
  workdir = Path(workdir)
  config, source, apply_fn, variables = load_run(workdir, split)
  info, normalization = source.info, config.data.normalization
  bounds = pipeline.input_bounds(info, normalization)
  chosen = {s: registry.get_method(s, bounds=bounds, key=jax.random.key(seed)) for s in specs}

  # ---------------------------------------------------------------- data and predictions
  if n > len(source):
    log(f"note: the {split} split has only {len(source)} images; explaining all of them.")
    n = len(source)
  batch_size = min(batch_size, n)
  records = source.read_batch(np.arange(n))
  images, labels = records["image"], np.asarray(records["label"], np.int32)
  x = pipeline.normalize(images, *pipeline.normalization_constants(info, normalization))
  logits_of = jax.jit(apply_fn)
  logits = np.concatenate([
      np.asarray(logits_of(variables, _padded(x[a:b], batch_size)))[:b - a]
      for a, b in _batches(n, batch_size)])
  predictions = logits.argmax(-1).astype(np.int32)
  targets = predictions if target == "predicted" else labels
  target_logits = logits[np.arange(n), targets]
  mask = records.get("mask")
  log(f"{workdir}: {config.model.name} on {info.name} ({split}), {n} images, target = {target}, "
      f"accuracy on them {np.mean(predictions == labels):.3f}")

  # ---------------------------------------------------------------- explain
  arrays = {"images": images, "labels": labels, "targets": targets, "predictions": predictions,
            "target_logits": target_logits, "methods": np.asarray(specs)}
  if mask is not None:
    arrays["mask"] = mask
  maps, summary = {}, {}
  log(f"{'method':<30} {'compile s':>9} {'ms/image':>9} {'sum R / f_c [min, max]':>24} "
      f"{'R+ on object':>13}")
  for spec, method in chosen.items():
    relevance, compile_seconds, per_image = run_method(method, apply_fn, variables, x, targets,
                                                       batch_size)
    heatmap = np.asarray(heatmaps.channel_sum(relevance))
    ratios = relevance.reshape(n, -1).sum(-1) / target_logits
    conservation = float(np.mean(ratios)) if registry.is_conservative(spec) else None
    share = (float(np.mean(heatmaps.relevance_share(heatmap, mask)))
             if mask is not None else None)
    maps[spec] = heatmap
    arrays[method_key(spec)] = heatmap
    arrays[f"{method_key(spec)}_relevance"] = relevance
    summary[spec] = {"compile_seconds": compile_seconds, "seconds_per_image": per_image,
                     "conservation": conservation, "mask_share": share}
    ratio_text = ("-" if conservation is None else
                  f"{conservation:.4f} [{ratios.min():.4f}, {ratios.max():.4f}]")
    log(f"{spec:<30} {compile_seconds:>9.2f} {1e3 * per_image:>9.2f} {ratio_text:>24} "
        f"{'-' if share is None else f'{share:.3f}':>13}")
  if mask is not None:
    log(f"(R+ on object: the share of positive relevance inside the object's mask; the object "
        f"covers {np.mean(mask):.3f} of the pixels)")

  # ---------------------------------------------------------------- write
  names = info.class_names or tuple(str(c) for c in range(info.num_classes))
  rows = [f"{names[l]} -> {names[p]}" for l, p in zip(labels, predictions)]
  figures = workdir / "figures"
  plot_explanations(images, maps, figures / "explain.png", labels=rows)
  for spec, heatmap in maps.items():
    plot_explanations(images, {spec: heatmap}, figures / f"explain_{method_key(spec)}.png",
                      labels=rows)
  np.savez_compressed(workdir / "explanations.npz", **arrays)
  log(f"wrote {figures / 'explain.png'}, {len(maps)} per-method figures and "
      f"{workdir / 'explanations.npz'}")
  return summary


def main(argv: Sequence[str] | None = None) -> None:
  """The command line: absl flags, and an `XjaxError` as one `error: ...` line with exit 2."""
  from absl import app, flags, logging

  from xjax.explain.methods import METHODS

  workdir = flags.DEFINE_string("workdir", None, "A workdir written by runs.train.")
  methods = flags.DEFINE_list(
      "methods", ["lrp:dtd", "saliency"], f"Comma-separated method specs, NAME or NAME:OPTION; "
      f"names: {', '.join(METHODS)}; lrp:COMPOSITE (e.g. lrp:dtd, lrp:epsilon_plus_flat).")
  n = flags.DEFINE_integer("n", 16, "Explain the first n images of the split.")
  split = flags.DEFINE_string("split", "test", "The split: train, validation or test.")
  target = flags.DEFINE_enum("target", "predicted", TARGETS,
                             "Explain the predicted class or the true label.")
  batch_size = flags.DEFINE_integer("batch_size", 16, "Images per compiled call.")
  seed = flags.DEFINE_integer("seed", 0, "The seed of SmoothGrad's noise.")

  def absl_main(args):
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    if len(args) > 1:
      raise app.UsageError(f"Unexpected arguments: {' '.join(args[1:])}")
    if workdir.value is None:
      raise app.UsageError("--workdir is required.")
    try:
      explain_workdir(workdir.value, methods.value, n=n.value, split=split.value,
                      target=target.value, batch_size=batch_size.value, seed=seed.value)
    except XjaxError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(2)

  def parse(args):
    try:
      return flags.FLAGS(args)
    except flags.Error as e:
      print(f"error: bad flag: {e}", file=sys.stderr, flush=True)
      sys.exit(2)

  app.run(absl_main, argv=list(argv) if argv is not None else None, flags_parser=parse)


if __name__ == "__main__":
  main()
