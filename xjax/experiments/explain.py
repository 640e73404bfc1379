"""Explaining a trained run with several methods side by side (`python -m runs.explain`).

`explain_workdir(workdir, ["lrp:dtd", "saliency"], n=16)` rebuilds the model and the dataset of the
run's config.json exactly as training did, loads its `best` parameters, and explains the first `n`
images of a split (normalised as in training) for the predicted class (or the label) with every
method. It writes into the workdir:

  figures/explain.png            one row per image: the input, then one heatmap per method
  figures/explain_<method>.png   the same for each method alone (`:` in the name becomes `_`)
  explanations.npz               images (uint8), labels, targets, predictions, target_logits,
                                 methods (the specs), and per method `<key>` (the channel-summed
                                 heatmaps, n x H x W) and `<key>_relevance` (n x H x W x C), where
                                 <key> is the spec with `:` replaced by `_`; `mask` where the data
                                 has ground-truth masks

and reports per method the time per image, for LRP the mean of sum(relevance) / target logit (1
where relevance is conserved), and where the data has masks the share of positive relevance on
the object (attribution localisation) and the pointing game: the metrics of
`xjax.metrics.localisation`, so that `runs.explain` and `runs.evaluate` give one answer.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

from xjax.data import batching, pipeline
from xjax.errors import ConfigError
from xjax.experiments.loading import LoadedRun, load_run
from xjax.explain import heatmaps
from xjax.explain import methods as registry
from xjax.metrics.localisation import attribution_localisation, pointing_game
from xjax.plot.heatmaps import plot_explanations

TARGETS = ("predicted", "label")


def method_key(spec: str) -> str:
  """A spec as a file name and npz key: `lrp:dtd` -> `lrp_dtd`."""
  return spec.replace(":", "_")


def run_method(method: Callable, apply_fn: Callable, variables, x: np.ndarray,
               targets: np.ndarray, batch_size: int) -> tuple[np.ndarray, float, float]:
  """Relevance of all of `x` in batches split over every device under one `jax.jit`;
  (relevance, compile s, s per image)."""
  x, targets = np.asarray(x), np.asarray(targets)
  plan = batching.plan_batches(len(x), batch_size)
  explain, compile_seconds = plan.compile(lambda p, xb, tb: method(apply_fn, p, xb, tb),
                                          variables, x[:1], targets[:1])
  started = time.perf_counter()
  relevance = plan.map(explain, plan.local(x), plan.local(targets))
  seconds_per_image = (time.perf_counter() - started) / len(x)
  return relevance, compile_seconds, seconds_per_image


def checked_specs(specs: Sequence[str]) -> list[str]:
  """The method specs in canonical form, without repeats; a ConfigError for an unknown one."""
  specs = list(dict.fromkeys(registry.canonical_spec(s) for s in specs))  # fails fast on names
  if not specs:
    raise ConfigError(f"No methods given; known methods: {', '.join(registry.METHODS)}.")
  return specs


@dataclasses.dataclass
class Examples:
  """The first `n` images of a run's split, as training saw them, and the model's outputs."""

  run: LoadedRun
  records: dict  # the source's fields of the n examples (image, label, mask, ...)
  x: np.ndarray  # (n, H, W, C) normalised as in training; a token model's embeddings (n, T, D)
  logits: np.ndarray  # (n, num_classes)
  targets: np.ndarray  # (n,) the explained classes
  bounds: tuple  # the input box of the normalised data (for z^B rules)

  @property
  def n(self) -> int:
    return len(self.x)

  @property
  def images(self) -> np.ndarray:
    return self.records["image"]

  @property
  def labels(self) -> np.ndarray:
    return np.asarray(self.records["label"], np.int32)

  @property
  def predictions(self) -> np.ndarray:
    return self.logits.argmax(-1).astype(np.int32)

  @property
  def target_logits(self) -> np.ndarray:
    return self.logits[np.arange(self.n), self.targets]


def load_examples(workdir: str | Path, split: str = "test", n: int = 16,
                  target: str = "predicted", batch_size: int = 16,
                  log: Callable[[str], None] = print) -> Examples:
  """The run of `workdir` (its `best` parameters) and the first `n` images of `split`.

  Raises:
    XjaxError: a missing workdir / config / checkpoint, an unknown split or target, n or
      batch_size < 1.
  """
  if target not in TARGETS:
    raise ConfigError(f"Unknown target {target!r}; expected one of {TARGETS}.")
  if n < 1 or batch_size < 1:
    raise ConfigError(f"--n and --batch_size must be >= 1; got {n} and {batch_size}.")
  run = load_run(Path(workdir), split)
  config, source, apply_fn, variables = run.config, run.source, run.apply_fn, run.variables
  info = source.info
  if n > len(source):
    log(f"note: the {split} split has only {len(source)} images; using all of them.")
    n = len(source)
  records = source.read_batch(np.arange(n))
  x = run.inputs(records["image"])
  logits_of = jax.jit(apply_fn)
  logits = batching.map_batches(lambda xb: logits_of(variables, xb), x,
                                batch_size=min(batch_size, n))
  labels = np.asarray(records["label"], np.int32)
  targets = logits.argmax(-1).astype(np.int32) if target == "predicted" else labels
  log(f"{workdir}: {config.model.name} on {info.name} ({split}), {n} images, target = {target}, "
      f"accuracy on them {np.mean(logits.argmax(-1) == labels):.3f}")
  return Examples(run, records, x, logits, targets, input_bounds(run))


def input_bounds(run: LoadedRun) -> tuple:
  """The box of the run's inputs as normalised in training (for z^B rules); (0, 1) for word
  embeddings."""
  if run.tokens:
    return (0.0, 1.0)
  return pipeline.input_bounds(run.source.info, run.config.data.normalization)


def localisation_scores(heatmaps_: np.ndarray, masks: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
  """(N,) each: attribution localisation (Kohlbrenner et al. 2020, the share of the positive
  relevance on the object) and the pointing game (Zhang et al. 2016, a hit where a most relevant
  pixel lies on the object; with ties, any of them) of each heatmap (N, H, W) against its 0/1
  mask (N, H, W).

  These are `xjax.metrics.attribution_localisation` and `xjax.metrics.pointing_game` with their
  defaults (tolerance 0: the masks are exact), the scores `runs.evaluate` reports, so the two
  commands agree on the same heatmaps.

  Raises:
    ConfigError: heatmaps holding NaN or infinity, masks of another shape, not 0/1 or empty.
  """
  heatmaps_ = np.asarray(heatmaps_)
  x = heatmaps_[..., None]  # the metrics read only the images' shape, here one channel
  return (np.asarray(attribution_localisation(None, None, x, None, heatmaps_, mask=masks)),
          np.asarray(pointing_game(None, None, x, None, heatmaps_, mask=masks)))


def explain_workdir(workdir: str | Path, specs: Sequence[str], *, n: int = 16, split: str = "test",
                    target: str = "predicted", batch_size: int = 16, seed: int = 0,
                    log: Callable[[str], None] = print) -> dict:
  """Explains the first `n` images of `split`; writes the figures and `explanations.npz`.

  Args:
    workdir: the workdir of a training run (config.json, checkpoints/).
    specs: method specs, e.g. ["lrp:dtd", "saliency"] (see `xjax.explain.methods`).
    n: the number of images (at most the size of the split).
    split: "train", "validation" or "test".
    target: "predicted" (explain the model's decision) or "label" (the true class).
    batch_size: images per compiled call.
    seed: the seed of SmoothGrad's noise.
    log: where the summary lines go.

  Returns:
    Per method spec: {"compile_seconds", "seconds_per_image", "conservation" (LRP, else None),
    "mask_share" and "pointing_game" (None without masks)}.

  Raises:
    XjaxError: a missing workdir / config / checkpoint, an unknown method, split or target.
  """
  specs = checked_specs(specs)
  examples = load_examples(workdir, split, n, target, batch_size, log)
  run, n = examples.run, examples.n
  apply_fn, variables, info = run.apply_fn, run.variables, run.source.info
  batch_size = min(batch_size, n)
  chosen = {s: registry.get_method(s, bounds=examples.bounds, key=jax.random.key(seed))
            for s in specs}
  images, labels, x = examples.images, examples.labels, examples.x
  targets, predictions = examples.targets, examples.predictions
  target_logits, mask = examples.target_logits, examples.records.get("mask")
  workdir = Path(workdir)

  # ---------------------------------------------------------------- explain
  arrays = {"images": images, "labels": labels, "targets": targets, "predictions": predictions,
            "target_logits": target_logits, "methods": np.asarray(specs)}
  if mask is not None:
    arrays["mask"] = mask
  maps, summary = {}, {}
  log(f"{'method':<30} {'compile s':>9} {'ms/image':>9} {'sum R / f_c [min, max]':>24} "
      f"{'R+ on object':>13} {'pointing':>9}")
  for spec, method in chosen.items():
    relevance, compile_seconds, per_image = run_method(method, apply_fn, variables, x, targets,
                                                       batch_size)
    heatmap = np.asarray(heatmaps.channel_sum(relevance))
    ratios = relevance.reshape(n, -1).sum(-1) / target_logits
    conservation = float(np.mean(ratios)) if registry.is_conservative(spec) else None
    share = pointing = None
    if mask is not None:
      try:
        shares, hits = localisation_scores(heatmap, mask)
      except ConfigError as e:
        raise ConfigError(f"method {spec}: {e}") from None
      share, pointing = float(np.mean(shares)), float(np.mean(hits))
    maps[spec] = heatmap
    arrays[method_key(spec)] = heatmap
    arrays[f"{method_key(spec)}_relevance"] = relevance
    summary[spec] = {"compile_seconds": compile_seconds, "seconds_per_image": per_image,
                     "conservation": conservation, "mask_share": share,
                     "pointing_game": pointing}
    ratio_text = ("-" if conservation is None else
                  f"{conservation:.4f} [{ratios.min():.4f}, {ratios.max():.4f}]")
    log(f"{spec:<30} {compile_seconds:>9.2f} {1e3 * per_image:>9.2f} {ratio_text:>24} "
        f"{'-' if share is None else f'{share:.3f}':>13} "
        f"{'-' if pointing is None else f'{pointing:.3f}':>9}")
  if mask is not None:
    log(f"(R+ on object: the share of positive relevance inside the object's mask; the object "
        f"covers {np.mean(mask):.3f} of the pixels. pointing: the share of images with a most "
        f"relevant pixel (any of them, if tied) on the object)")

  # ---------------------------------------------------------------- write
  if jax.process_index() != 0:  # every process has every heatmap; process 0 writes them
    return summary
  names = info.class_names or tuple(str(c) for c in range(info.num_classes))
  rows = [f"{names[label]} -> {names[prediction]}"
          for label, prediction in zip(labels, predictions)]
  figures = workdir / "figures"
  wrong = np.asarray(labels) != np.asarray(predictions)
  drawn = dict(labels=rows, masks=mask, mistakes=wrong)  # the mask: what the scores ask about
  plot_explanations(images, maps, figures / "explain.png", **drawn)
  written = {figures / f"explain_{method_key(spec)}.png" for spec in maps}
  for stale in set(figures.glob("explain_*.png")) - written:  # an earlier run's other methods
    stale.unlink()
  for spec, heatmap in maps.items():
    plot_explanations(images, {spec: heatmap}, figures / f"explain_{method_key(spec)}.png",
                      **drawn)
  np.savez_compressed(workdir / "explanations.npz", **arrays)
  log(f"wrote {figures / 'explain.png'}, {len(maps)} per-method figures and "
      f"{workdir / 'explanations.npz'}")
  return summary
