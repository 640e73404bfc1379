"""Separable explanations (Rieger et al. 2018, "Structuring neural networks for more explainable
predictions"; Tables 2 and 3, Figs. 4-6), as a protocol.

Pre-trains the baseline until its validation loss stalls for 3 epochs (`baseline/`), then
fine-tunes a copy of its best parameters with the block-wise L1 penalty (Eq. 5-6) for each lambda
of `separable.lambdas` (`lambda=0.1/`, ...). Then, for each run, on the first
`separable.num_examples` test images: the DTD heatmaps of the top-1 and top-2 classes (z^B at the
input with the bounds of the data's normalisation, z+ elsewhere; the top-2 class explained with the
other outputs set to 0) and the diffusion metric d (Eq. 7), on heatmaps scaled to unit Frobenius
norm ([A], `xjax.metrics.diffusion.unit_heatmaps`; d in [0, 2] like the paper's Table 2) and, as
`diffusion_raw`, on the raw heatmaps.

  results.json   {"baseline": {...}, "lambda=0.1": {...}, ...}: test_accuracy, diffusion,
                 diffusion_raw, the mean top-1 / top-2 logits and their negative shares, the share
                 of empty heatmaps (no positive path from the logit to the input),
                 off_block_positive_share (the share of the dense layers' positive weight that the
                 penalty acts on), epochs, and on two-object `shapes` second_object_share (the
                 share of the top-2 heatmap's positive relevance on the second object, the heatmap
                 times the sign of its logit, over the second_object_share_images images where it
                 has any) and top2_is_second_object; plus "checks"
  results.md     Table 2 (d) and Table 3 (accuracy), the paper's numbers (`config.paper`) beside
                 ours
  figures/       fig4_heatmaps (the first test images) and fig5_heatmaps_ambiguous (those with the
                 smallest top-1 / top-2 logit gap under the baseline): baseline vs the lambda =
                 `figure_lambda` run, top-1 vs top-2 class; fig6_dense_weights (the dense kernels,
                 positive red, negative blue, class blocks outlined)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xjax.data import pipeline
from xjax.errors import ConfigError
from xjax.experiments.protocol import Analysis, Protocol, Run, TrainedRun
from xjax.experiments.registry import EXPERIMENTS
from xjax.experiments.runner import copy_config
from xjax.explain import heatmaps
from xjax.methods import separable
from xjax.metrics.diffusion import heatmap_distances
from xjax.nn.registry import logits_fn
from xjax.plot.heatmaps import plot_explanations
from xjax.plot.separable import plot_dense_weights
from xjax.registry import positive
from xjax.train import config_checks, report

# The settings of `separable` (`SeparableProtocol.check`, before any data loads).
RULES = {
    "lambdas": config_checks.sequence(positive, text="a non-empty list of positive, finite "
                                      "numbers (the block-wise L1 weights)"),
    "num_examples": (config_checks.counts, "N of Eq. 7"),
    "explain_batch_size": config_checks.counts,
    "stop_on_penalised_loss": config_checks.boolean,
    "finetune_learning_rate": (config_checks.optional(positive), "None: the pre-training's"),
    "figure_lambda": positive,
    "figure_examples": config_checks.counts,
}


def run_name(lam: float | None) -> str:
  """"baseline", or "lambda=0.1", "lambda=1", ... (the keys of results.json)."""
  return "baseline" if lam is None else f"lambda={lam:g}"


def runs_of(config) -> dict[str, float | None]:
  """The runs to make, baseline first: run name -> lambda (None for the baseline)."""
  lambdas = sorted({float(v) for v in config.separable.lambdas})  # ascending, as in Table 2
  if not lambdas or any(not np.isfinite(v) or v <= 0 for v in lambdas):
    raise ConfigError(f"separable.lambdas must be one or more positive numbers; got {lambdas}.")
  if config.separable.figure_lambda not in lambdas:
    raise ConfigError(f"separable.figure_lambda = {config.separable.figure_lambda} is not one of "
                      f"separable.lambdas {lambdas}.")
  return {"baseline": None, **{run_name(v): v for v in lambdas}}


def run_config(config, lam: float | None, num_classes: int):
  """One run's training config: cross-entropy, plus lambda * block_l1 (fine-tuned: see `runs`)."""
  c = copy_config(config, name=f"{config.name}/{run_name(lam)}",
                  losses={"cross_entropy": {"weight": 1.0}})
  if lam is not None:
    c.losses["block_l1"] = {"weight": lam, "num_classes": num_classes,
                            "layers": config.separable.layers,
                            "channel_blocks": tuple(config.separable.channel_blocks)}
    if config.separable.stop_on_penalised_loss:
      c.train.validation_penalties = ("block_l1",)
    if config.separable.finetune_learning_rate is not None:
      c.optimizer.learning_rate = config.separable.finetune_learning_rate
  return c


def off_block_positive_share(params, num_classes: int, layers=None, channel_blocks=()) -> float:
  """The off-block share of the positive weight of the dense layers (0 = fully block-diagonal)."""
  kernels = separable.dense_kernels(params, layers).values()
  positive = sum(float(np.sum(np.maximum(np.asarray(k), 0))) for k in kernels)
  penalty = separable.block_l1(params, num_classes, layers, dict(channel_blocks))
  return float(penalty) / max(positive, 1e-12)


def analyse(config, run: TrainedRun, source) -> Analysis:
  """The run's numbers on the first N test images (module docstring), and for the figures its
  variables, heatmaps (`top1`, `top2`), explained `classes` and their `logits`."""
  trained, model = run.trained, run.model
  variables = run.variables("best")
  n = min(config.separable.num_examples, len(source))
  batch = source.read_batch(np.arange(n))
  mean, std = pipeline.normalization_constants(source.info, config.data.normalization)
  low, high = pipeline.input_bounds(source.info, config.data.normalization)
  x = pipeline.normalize(batch["image"], mean, std)
  apply_fn = logits_fn(model)
  top1, top2, classes, logits = separable.top2_heatmaps_of(
      apply_fn, variables, x, low, high, config.separable.explain_batch_size)
  top_logits = np.take_along_axis(logits, classes, 1)  # (N, 2): the logits of c1 and c2
  # z+ ignores biases and negative weights: a logit with no positive path to the input (e.g.
  # when the units of its class block are all off) leaves an empty heatmap.
  empty = np.stack([np.abs(h).sum((1, 2)) <= 1e-6 * np.abs(top_logits[:, i])
                    for i, h in enumerate((top1, top2))], axis=1)
  both = ~empty.any(axis=1)
  # Eq. 7 per image, on unit heatmaps and on the raw ones; d is their mean.
  d, d_raw = (np.asarray(heatmap_distances(top1, top2, unit=unit)) for unit in (True, False))
  num_classes = source.info.num_classes
  out = {
      "test_accuracy": trained["test_accuracy"], "test_loss": trained["test_loss"],
      "diffusion": float(np.mean(d)), "diffusion_raw": float(np.mean(d_raw)),
      "num_examples": n,
      # d (unit heatmaps) over the images where neither heatmap is empty (see below).
      "diffusion_nonempty": float(np.mean(d[both])) if both.any() else None,
      "nonempty_images": int(both.sum()),
      # DTD explains a logit with its sign: a negative one gives a negative heatmap.
      "mean_logits_top1_top2": top_logits.mean(0).tolist(),
      "negative_logit_share_top1_top2": (top_logits < 0).mean(0).tolist(),
      "empty_heatmap_share_top1_top2": empty.mean(0).tolist(),
      "off_block_positive_share": off_block_positive_share(
          variables["params"], num_classes, config.separable.layers,
          config.separable.channel_blocks),
      "epochs_completed": trained["epochs_completed"], "best_epoch": trained["best_epoch"],
      "stopped_early": trained["stopped_early"], "train_seconds": trained["train_seconds"],
  }
  figures = {"variables": variables, "top1": top1, "top2": top2, "classes": classes,
             "logits": top_logits}
  if "second_mask" in batch:
    # DTD splits the logit over the pixels with (mostly) non-negative shares, so a negative logit
    # gives a negative heatmap: the share is taken on the heatmap times the logit's sign, over the
    # images where that has positive relevance.
    evidence = top2 * np.sign(top_logits[:, 1])[:, None, None]
    has_positive = np.max(evidence, axis=(1, 2)) > 0
    shares = np.asarray(heatmaps.relevance_share(evidence, batch["second_mask"]))
    out["second_object_share"] = (float(np.mean(shares[has_positive])) if has_positive.any()
                                  else None)
    out["second_object_share_images"] = int(has_positive.sum())
    out["top2_is_second_object"] = float(np.mean(classes[:, 1] == batch["second_label"]))
  return Analysis(out, figures)


def checks_of(runs: dict, figure_run: str) -> dict:
  """The experiment's checks: d and accuracy of the figure run against the baseline."""
  base, tuned = runs["baseline"], runs[figure_run]
  checks = {f"diffusion_ratio_{figure_run}_over_baseline":
            tuned["diffusion"] / max(base["diffusion"], 1e-12),
            f"diffusion_raw_ratio_{figure_run}_over_baseline":
            tuned["diffusion_raw"] / max(base["diffusion_raw"], 1e-12),
            f"accuracy_gap_points_{figure_run}": 100 * (base["test_accuracy"] -
                                                         tuned["test_accuracy"])}
  shares = [run.get("second_object_share") for run in runs.values()]  # baseline, lambda up
  if all(share is not None for share in shares):
    checks["second_object_share_rises_with_lambda"] = bool(np.all(np.diff(shares) > 0))
    checks[f"second_object_share_{figure_run}_minus_baseline"] = (
        tuned["second_object_share"] - base["second_object_share"])
  return checks


def paper_numbers(config) -> tuple[dict, dict, str]:
  """The paper's d and accuracy per run name, from `config.paper` (empty where it has none)."""
  paper = config.paper
  runs = tuple(paper.get("table_runs") or ())
  d = dict(zip(runs, paper.get("diffusion") or ()))
  accuracy = dict(zip(runs, paper.get("run_test_accuracy") or ()))
  return d, accuracy, paper.get("source") or "none for this dataset"


def tables(config, runs: dict) -> list[str]:
  """results.md: Tables 2 and 3 with the paper's numbers beside ours."""
  paper_d, paper_acc, source = paper_numbers(config)
  shapes = "top2_is_second_object" in runs["baseline"]
  rows2 = [[name, paper_d.get(name), run["diffusion"], run["diffusion_raw"],
            run["diffusion_nonempty"],
            " / ".join(f"{v:.2f}" for v in run["mean_logits_top1_top2"]),
            " / ".join(f"{v:.2f}" for v in run["empty_heatmap_share_top1_top2"]),
            run["off_block_positive_share"],
            *([run["second_object_share"], run["top2_is_second_object"]] if shapes else [])]
           for name, run in runs.items()]
  rows3 = [[name, paper_acc.get(name), run["test_accuracy"], run["epochs_completed"],
            run["best_epoch"]] for name, run in runs.items()]
  n = runs["baseline"]["num_examples"]
  return [
      f"Model {config.model.name}; DTD heatmaps (z^B at the input, z+ elsewhere) of the top-1 "
      f"and top-2 classes of the first {n} test images; paper numbers: {source}.",
      "## Table 2: diffusion d (Eq. 7; higher = more separable heatmaps)\n\n"
      "d on unit-norm heatmaps (the paper's range, [0, 2]); raw d on the heatmaps as they "
      "are (scaled by the logits); 'no empty map': d over the images where both heatmaps have "
      "relevance.\n\n" + report.markdown_table(
          ["run", "paper d", "xjax d", "xjax raw d", "xjax d, no empty map",
           "mean logit top-1 / top-2", "empty heatmaps top-1 / top-2",
           "off-block share of positive weight",
           *(["second-object share (top-2)", "top-2 = second object"] if shapes else [])], rows2),
      "## Table 3: test accuracy\n\n" + report.markdown_table(
          ["run", "paper acc.", "xjax acc.", "epochs", "best epoch"], rows3),
  ]


def class_label(names, c: int) -> str:
  """The name of class `c`, or its number when the data names no classes."""
  return names[c] if names and c < len(names) else str(c)


def channel_input_blocks(config, params: dict, num_classes: int) -> dict[str, np.ndarray]:
  """The input blocks of the layers in `separable.channel_blocks`, by kernel path (Fig. 6)."""
  channels = dict(config.separable.channel_blocks)
  return {path: separable.input_blocks(kernel.shape[0], num_classes,
                                      channels[separable.layer_of(path)])
          for path, kernel in separable.dense_kernels(params).items()
          if separable.layer_of(path) in channels}


def write_figures(config, figures: Path, analyses: dict[str, Analysis], source,
                  figure_run: str) -> None:
  """Fig. 4 / 5 (heatmap pairs) and Fig. 6 (dense weights) of the paper, from the figure data of
  the baseline's and `figure_run`'s analyses."""
  base, tuned = analyses["baseline"].figures, analyses[figure_run].figures
  names = source.info.class_names
  k = min(config.separable.figure_examples, analyses["baseline"].results["num_examples"])
  gap = base["logits"][:, 0] - base["logits"][:, 1]
  ambiguous = np.argsort(gap, kind="stable")[:k]
  for number, stem, rows in ((4, "heatmaps", np.arange(k)), (5, "heatmaps_ambiguous", ambiguous)):
    images = source.read_batch(rows)["image"]
    maps, labels = {}, []
    for tag, run in (("baseline", base), (figure_run, tuned)):
      for i, which in enumerate(("top-1", "top-2")):
        maps[f"{tag}\n{which}"] = run[f"top{i + 1}"][rows]
    for r in rows:
      labels.append("\n".join(", ".join(
          f"{class_label(names, c)} ({logit:+.1f})" for c, logit in zip(run["classes"][r],
                                                                        run["logits"][r]))
          for run in (base, tuned)))
    plot_explanations(images, maps, figures / f"fig{number}_{stem}.png", labels=labels)
  num_classes = source.info.num_classes

  def input_side_first(kernels: dict) -> dict:  # the output layer (C units) last
    return {k: kernels[k] for k in sorted(kernels, key=lambda k: (kernels[k].shape[1] ==
                                                                  num_classes, k))}

  plot_dense_weights({tag: input_side_first(separable.dense_kernels(run["variables"]["params"],
                                                                    config.separable.layers))
                      for tag, run in (("baseline", base), (figure_run, tuned))},
                     figures / "fig6_dense_weights.png", num_classes=num_classes,
                     input_blocks=channel_input_blocks(config, base["variables"]["params"],
                                                       num_classes),
                     title=f"{config.name}: dense kernels (positive red, negative blue)")


@EXPERIMENTS.register("separable")
class SeparableProtocol(Protocol):
  """The baseline and one fine-tuned run per lambda (module docstring)."""

  title = "separable explanations (block-wise L1, DTD)"
  sections = ("separable",)

  def check(self, config) -> None:
    config_checks.check_section(config.separable, "separable", RULES)
    runs_of(config)

  def runs(self, config, sources) -> list[Run]:
    num_classes = sources["train"].info.num_classes
    return [Run(name, run_config(config, lam, num_classes),
                init_from=None if lam is None else "baseline",
                description="pre-training" if lam is None else
                f"fine-tuning the baseline with lambda = {lam:g}")
            for name, lam in runs_of(config).items()]

  def analyse(self, config, run: TrainedRun, sources) -> Analysis:
    return analyse(run.config, run, sources["test"])

  def checks(self, config, analysed) -> dict:
    return checks_of(analysed, run_name(config.separable.figure_lambda))

  def header(self, config, analysed) -> dict:
    return {"name": config.name, "model": config.model.name}

  def tables(self, config, analysed, checks) -> list[str]:
    return tables(config, analysed)

  def figures(self, config, analyses, sources, directory: Path) -> None:
    write_figures(config, directory, analyses, sources["test"],
                  run_name(config.separable.figure_lambda))

  def summary(self, config, analysed, checks) -> dict:
    return {**{name: {k: run[k] for k in ("test_accuracy", "diffusion", "second_object_share")
                      if k in run} for name, run in analysed.items()}, **checks}
