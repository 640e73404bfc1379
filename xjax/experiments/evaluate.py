"""Scoring explanation methods by metrics: on any trained run, and the ground-truth benchmark.

Two entry points, both behind `python -m runs.evaluate`:

* `evaluate_workdir(workdir, methods, metrics, n=...)` (`runs.evaluate --workdir=W --methods=...
  --metrics=... --n=N`) scores the explanations of the first `n` images of any trained run
  (`xjax.experiments.scoring`) and writes, into `W/evaluation/` (a run's own results are never
  touched):

    results.json   the methods x metrics table (mean, standard error, count per score column),
                   the time per image of each method and metric, the options
    results.md     the same table, arrows giving each column's better direction
    scores.npz     per example: `<method>/<column>`, `<method>/<metric>/<curve>` (curves),
                   `<metric>/fractions` (their x axis), images, labels, targets
    figures/       curves.png (the mean curves of every method, one panel per curve metric) and
                   heatmaps.png (the first images, one column per method)

* the `evaluate` experiment (`runs.evaluate --config=runs/configs/evaluate.py[:VARIANT]
  --workdir=W`): a network trained on built-in `shapes` (one object per image, its exact mask
  known) and the same network fine-tuned with the block-wise L1 penalty of the separable-
  explanations paper (Rieger et al. 2018, "Structuring neural networks for more explainable
  predictions", Eq. 5-6). On the baseline, every method explains the label of the test images
  and is scored by localisation on the object's mask and by faithfulness: `results.md` has the
  table. Then, as that paper asks of a network trained on one digit per image, both runs see
  test images with a second, smaller object of another class: every method explains that
  *non-dominant* class, and `attribution_localisation` on the second object's mask gives the
  share of the positive relevance that falls on it; the share of the image that object covers
  is the chance level.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import jax
import numpy as np

from xjax.data import pipeline
from xjax.errors import ConfigError
from xjax.experiments import dataset_scoring, scoring
from xjax.experiments.explain import TARGETS, checked_specs, input_bounds
from xjax.experiments.loading import load_run
from xjax.experiments.protocol import Analysis, Protocol, Run, TrainedRun
from xjax.experiments.registry import EXPERIMENTS
from xjax.experiments.runner import copy_config
from xjax.explain import heatmaps
from xjax.explain import methods as method_registry
from xjax.methods import separable  # noqa: F401 (registers the block_l1 loss term)
from xjax.metrics import attribution_localisation
from xjax.nn.registry import logits_fn
from xjax.plot.heatmaps import plot_explanations
from xjax.plot.metrics import plot_metric_curves
from xjax.plot.tokens import plot_token_relevance
from xjax.registry import positive
from xjax.train import config_checks
from xjax.train.loop import load_sources

# The x axis of each curve metric's panel.
CURVE_AXES = {"pixel_flipping": "share of pixels replaced",
              "faithfulness_area": "share of pixels replaced",
              "region_perturbation": "share of patches replaced",
              "insertion_deletion": "share of pixels inserted / deleted",
              "model_parameter_randomisation": "layers randomised"}
# The settings of the `evaluate` experiment (`EvaluateProtocol.check`, before any data loads).
RULES = {
    "num_examples": config_checks.counts,
    "batch_size": config_checks.counts,
    "block_l1": (positive, "the weight of the block-wise L1 fine-tuning"),
    "finetune_epochs": config_checks.counts,
    "figure_examples": config_checks.counts,
}


def mean_curves(scores: Mapping[str, scoring.MethodScores]
                ) -> dict[str, dict[str, dict[str, np.ndarray]]]:
  """spec -> metric -> curve field -> its mean over the examples (NaN skipped)."""
  return {spec: {metric: {field: np.nanmean(v, 0) for field, v in curves.items()}
                 for metric, curves in s.curves.items()} for spec, s in scores.items()}


def first_heatmaps(scores: Mapping[str, scoring.MethodScores], k: int) -> dict[str, np.ndarray]:
  """The heatmaps of the first `k` examples of each method: relevance summed over channels (or
  over a token's embedding)."""
  return {spec: np.asarray(s.relevance[:k]).sum(-1) for spec, s in scores.items()}


def write_figures(directory: Path, images: np.ndarray, maps: Mapping[str, np.ndarray],
                  curves: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]],
                  fractions: Mapping[str, np.ndarray], *,
                  row_labels: Sequence[str] | None = None, num_images: int = 6, prefix: str = "",
                  token_names: Sequence[str] | None = None, masks: np.ndarray | None = None
                  ) -> None:
  """`curves.png` (when a metric has curves: `curves` holds each method's mean curves) and
  `heatmaps.png` (the first images, `maps` their heatmaps per method) in `directory`; with
  `token_names`, `images` are token ids (n, T) and `heatmaps.png` colours their tokens."""
  if fractions:
    panels = {}
    for metric, x_axis in fractions.items():
      fields = next(iter(curves.values()))[metric]
      for field in fields:
        title = metric if len(fields) == 1 else f"{metric}: {field}"
        panels[title] = (x_axis, {spec: c[metric][field] for spec, c in curves.items()},
                         CURVE_AXES.get(metric, "step"))
    plot_metric_curves(panels, directory / f"{prefix}curves.png")
  k = min(num_images, len(images))
  labels = None if row_labels is None else list(row_labels[:k])
  maps = {spec: np.asarray(m[:k]) for spec, m in maps.items()}
  if token_names is not None:  # token ids (n, T): sequences coloured by relevance per token
    plot_token_relevance([[token_names[int(i)] for i in ids] for ids in images[:k]], maps,
                         directory / f"{prefix}heatmaps.png", labels=labels,
                         masks=None if masks is None else masks[:k])
    return
  plot_explanations(images[:k], maps, directory / f"{prefix}heatmaps.png", labels=labels)


def timing(scores: Mapping[str, scoring.MethodScores]) -> dict:
  """Seconds per image of each method and seconds of each metric over all the examples."""
  return {spec: {"compile_seconds": s.compile_seconds, "seconds_per_image": s.seconds_per_image,
                 "metric_seconds": s.metric_seconds} for spec, s in scores.items()}


def default_metrics(has_masks: bool) -> list[str]:
  """The faithfulness and complexity metrics, and the localisation ones where there are masks."""
  localisation = ["pointing_game", "attribution_localisation", "relevance_mass_accuracy",
                  "relevance_rank_accuracy"]
  return ([*localisation] if has_masks else []) + [
      "pixel_flipping", "region_perturbation", "insertion_deletion", "faithfulness_correlation",
      "sparseness", "complexity"]


def _plans(names: Sequence[str], options: Mapping[str, Mapping[str, Any]] | None
           ) -> list[scoring.MetricPlan]:
  options = dict(options or {})
  unused = sorted(set(options) - set(names))
  if unused:
    raise ConfigError(f"options given for metrics that are not scored: {', '.join(unused)} "
                      f"(scored: {', '.join(names)}).")
  return scoring.plan_metrics({name: options.get(name, {}) for name in names})


def number_of_examples(n: int | str, available: int, split: str,
                       log: Callable[[str], None] = print) -> int:
  """`n` ("all", or a count >= 1) as a count of the split's examples."""
  if n == "all":
    return available
  try:
    count = int(n)
  except (TypeError, ValueError):
    count = 0
  if count < 1 or str(n).strip() != str(count):
    raise ConfigError(f"--n takes a number of examples >= 1 or `all`; got {n!r}.")
  if count > available:
    log(f"note: the {split} split has only {available} examples; using all of them.")
  return min(count, available)


def evaluate_workdir(workdir: str | Path, methods: Sequence[str],
                     metrics: Sequence[str] | None = None, *,
                     options: Mapping[str, Mapping[str, Any]] | None = None,
                     n: int | str = 64, split: str = "test", target: str = "label",
                     batch_size: int = 32, seed: int = 0, out: str | Path | None = None,
                     chunk_size: int = dataset_scoring.DEFAULT_CHUNK_SIZE,
                     log: Callable[[str], None] = print, progress: TextIO | None = None) -> dict:
  """Scores `methods` by `metrics` on the first `n` examples of a trained run (module docstring),
  over every device and process, streamed to `out/chunks/` and resumable
  (`xjax.experiments.dataset_scoring`).

  Args:
    workdir: a training run's directory (config.json, checkpoints/).
    methods: method specs (`xjax.explain.methods`), e.g. ["saliency", "lrp:epsilon_plus"].
    metrics: metric names (`xjax.metrics.METRICS`); None: `default_metrics`.
    options: metric name -> its options, e.g. {"pixel_flipping": {"steps": 32}}.
    n: the number of examples, or "all" (the whole split).
    split: "train", "validation" or "test".
    target: "label" (the true class) or "predicted".
    batch_size: examples per compiled call over all devices (rounded up to a multiple of them).
    seed: the seed of SmoothGrad's noise, the random control and the metrics' randomness.
    out: where to write; default `workdir/evaluation`.
    chunk_size: examples per chunk on disk (rounded up to whole batches): the work a killed run
      loses, at most.
    log: where progress goes.
    progress: the stream of the progress bars (default stderr).

  Returns:
    The contents of results.json (process 0; the other processes return the same keys).

  Raises:
    XjaxError: a missing run or checkpoint, an unknown method or metric or option, a metric that
      needs masks on data without them, a method whose explanations hold NaN.
    Interrupted: SIGTERM or SIGINT; the chunks done are kept, and the same command continues.
  """
  specs = checked_specs(methods)
  if metrics is not None:  # names and options checked before the run is loaded
    plans = _plans(metrics, options)
  if target not in TARGETS:
    raise ConfigError(f"Unknown target {target!r}; expected one of {TARGETS}.")
  run = load_run(workdir, split)
  info = run.source.info
  n = number_of_examples(n, len(run.source), split, log)
  first = run.source.read_batch(np.arange(1))
  if metrics is None:
    plans = _plans(default_metrics("mask" in first), options)
  chosen = {s: method_registry.get_method(s, bounds=input_bounds(run), key=jax.random.key(seed))
            for s in specs}
  out = Path(workdir) / "evaluation" if out is None else Path(out)
  done = dataset_scoring.score_dataset(
      run, chosen, plans, n=n, store=out / "chunks", target=target, batch_size=batch_size,
      seed=seed, chunk_size=chunk_size, log=log, progress=progress,
      settings={"workdir": str(Path(workdir).resolve()), "split": split})
  results = {"workdir": str(workdir), "model": run.config.model.name, "data": info.name,
             "split": split, "n": n, "target": target,
             "metrics": {p.name: p.options for p in plans},
             "devices": done.devices, "processes": done.processes,
             "batch_size": done.batch_size,
             "chunks": {"directory": str(done.store.directory), "size": done.store.chunk_size,
                        "count": done.store.num_chunks, "resumed_at_example": done.resumed_at},
             "seconds": done.seconds, "examples_computed": done.computed,
             "timing": done.timing()}
  if jax.process_index() != 0:  # process 0 reads the chunks back and writes the results
    return results
  summary = dataset_scoring.summarise(done.store, specs)
  results = {**results, "accuracy_on_them": summary.accuracy, "table": summary.table}
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
  (out / "results.md").write_text(
      f"# Evaluation of {workdir}\n\n{run.config.model.name} on {info.name} "
      f"({split}, the first {n} examples, explaining the {target}); mean ± standard "
      f"error over the examples; ↑ higher is better, ↓ lower.\n\n"
      f"{scoring.markdown_table(summary.table)}\n")
  np.savez_compressed(out / "scores.npz", **summary.columns,
                      **{f"{m}/fractions": f for m, f in done.fractions.items()})
  k = min(8 if run.tokens else 6, n)
  records = run.source.read_batch(np.arange(k))
  heads = done.store.read(0, [f"{spec}/heatmap" for spec in specs])
  names = info.class_names or tuple(map(str, range(info.num_classes)))
  write_figures(out / "figures", records["image"],
                {spec: heads[f"{spec}/heatmap"] for spec in specs}, summary.mean_curves,
                done.fractions, row_labels=[names[t] for t in summary.columns["targets"][:k]],
                token_names=info.token_names if run.tokens else None,
                masks=records.get("mask"), num_images=k)
  log(f"wrote {out / 'results.md'}, results.json, scores.npz, figures/ and the per-example "
      f"heatmaps, scores and curves in {done.store.directory} ({done.store.num_chunks} chunks, "
      f"{done.seconds:.1f} s)")
  return results


# --------------------------------------------------------------------------------------------------
# The ground-truth benchmark on shapes (one object per image; two-object test images for the
# non-dominant class).


def _examples(config, source) -> dict[str, Any]:
  """The first `evaluate.num_examples` images of `source`, normalised, with their records."""
  n = min(config.evaluate.num_examples, len(source))
  records = source.read_batch(np.arange(n))
  info, normalization = source.info, config.data.normalization
  x = pipeline.normalize(records["image"], *pipeline.normalization_constants(info, normalization))
  return {"records": records, "x": x, "bounds": pipeline.input_bounds(info, normalization)}


def two_object_source(config):
  """The test split of the config's shapes with a second, smaller object of another class."""
  if config.data.name != "shapes":
    raise ConfigError(f"the evaluate experiment needs the built-in shapes data (exact masks of "
                      f"two objects); got data.name = {config.data.name!r}.")
  data = copy_config(config).data
  data.options = {**dict(data.options), "second_object": True}
  return load_sources(data, splits=("test",))["test"]


@EXPERIMENTS.register("evaluate", description="every explanation method scored against ground "
                      "truth on two-object shapes (runs.evaluate)")
class EvaluateProtocol(Protocol):
  """The `evaluate` experiment (module docstring): a baseline and its block-wise L1 fine-tuning;
  the methods x metrics table on the baseline, the non-dominant class's shares on both."""

  title = ("every method scored against ground truth: localisation and faithfulness on the "
           "class's object, and the share on the non-dominant object with and without block-wise "
           "L1")
  sections = ("evaluate",)

  def check(self, config) -> None:
    checked_specs(config.evaluate.methods)
    scoring.plan_metrics(config.evaluate.metrics.to_dict())
    config_checks.check_section(config.evaluate, "evaluate", RULES)

  def runs(self, config, sources) -> list[Run]:
    tuned = copy_config(config, name=f"{config.name}/block_l1")
    tuned.losses["block_l1"] = {"weight": config.evaluate.block_l1,
                                "num_classes": sources["train"].info.num_classes,
                                "layers": config.evaluate.get("block_l1_layers"),
                                "channel_blocks": ()}
    tuned.train.epochs = config.evaluate.finetune_epochs
    return [Run("baseline", config, description="the network, cross-entropy alone"),
            Run("block_l1", tuned, init_from="baseline",
                description=f"fine-tuned with block-wise L1 (weight {config.evaluate.block_l1})")]

  def analyse(self, config, run: TrainedRun, sources) -> Analysis:
    data = _examples(config, sources["test"])
    records, x = data["records"], data["x"]
    apply_fn, variables = logits_fn(run.model), run.variables("best")
    key = jax.random.key(config.seed)
    chosen = {s: method_registry.get_method(s, bounds=data["bounds"], key=key)
              for s in checked_specs(config.evaluate.methods)}
    batch = config.evaluate.batch_size
    out = {"test_accuracy": run.trained["test_accuracy"], "num_examples": len(x)}
    figures, arrays = {}, {}
    if run.name == "baseline":
      print(f"-- {run.name}: every metric, explaining the label", flush=True)
      scores, fractions = scoring.score_methods(
          apply_fn, variables, x, records["label"], chosen,
          scoring.plan_metrics(config.evaluate.metrics.to_dict()),
          ground_truth={"mask": records["mask"]}, batch_size=batch, seed=config.seed)
      out["table"] = scoring.mean_table({spec: s.columns for spec, s in scores.items()})
      out["timing"] = timing(scores)
      out["object_area_share"] = float(np.mean(records["mask"]))
      figures["scores"], figures["fractions"] = scores, fractions
      arrays.update(scoring.score_arrays(scores))
      arrays.update({f"{m}/fractions": f for m, f in fractions.items()})
    print(f"-- {run.name}: two-object images, explaining the second object's class", flush=True)
    data = _examples(config, two_object_source(config))
    records, x = data["records"], data["x"]
    second = records["second_label"]
    shares, _ = scoring.score_methods(
        apply_fn, variables, x, second, chosen, scoring.plan_metrics(["attribution_localisation"]),
        ground_truth={"mask": records["second_mask"]}, batch_size=batch, seed=config.seed)
    logits = np.asarray(jax.jit(apply_fn)(variables, x))
    # Two shares per method: of the positive relevance (the evidence for the class) and of |R|
    # (where the explanation lies, whatever its sign): a conservative method explaining a
    # negative logit (z+ and DTD keep its sign) has almost no positive relevance to place.
    out["second_object"] = {
        spec: s.columns["attribution_localisation"].mean().item() for spec, s in shares.items()}
    abs_shares = {spec: np.asarray(attribution_localisation(
        None, None, x, None, np.abs(heatmaps.channel_sum(s.relevance)),
        mask=records["second_mask"])) for spec, s in shares.items()}
    out["second_object_abs"] = {spec: float(np.mean(v)) for spec, v in abs_shares.items()}
    out["second_object_area_share"] = float(np.mean(records["second_mask"]))
    out["second_class_logit_mean"] = float(np.mean(logits[np.arange(len(x)), second]))
    out["second_class_is_top2"] = float(np.mean(np.argsort(-logits, 1)[:, 1] == second))
    figures["second"] = shares
    arrays.update({f"second/{k}": v for k, v in scoring.score_arrays(shares).items()})
    arrays.update({f"second/{spec}/abs_share": v for spec, v in abs_shares.items()})
    np.savez_compressed(run.workdir / "scores.npz", **arrays, second_labels=second)
    return Analysis(out, figures)

  def checks(self, config, analysed) -> dict:
    table, base = analysed["baseline"]["table"], analysed["baseline"]
    control = "random" if "random" in table else None
    checks = {}
    if control is not None:
      for metric in ("pointing_game", "attribution_localisation", "relevance_mass_accuracy"):
        if metric in table[control]:
          chance = table[control][metric]["mean"]
          checks[f"{metric}_above_random"] = sorted(
              spec for spec in table if spec != control and table[spec][metric]["mean"] > chance)
    for kind in ("second_object", "second_object_abs"):
      checks[f"{kind}_share_rises_with_block_l1"] = sorted(
          spec for spec, share in base[kind].items() if analysed["block_l1"][kind][spec] > share)
    return checks

  def tables(self, config, analysed, checks) -> list[str]:
    base, tuned = analysed["baseline"], analysed["block_l1"]
    main = (f"## Ground truth: every method explaining the label\n\nThe baseline network "
            f"(test accuracy {base['test_accuracy']:.3f}) on the first {base['num_examples']} "
            f"test images; localisation against the mask of the object (it covers "
            f"{base['object_area_share']:.3f} of the image); faithfulness from the model's "
            f"outputs (pixels and patches replaced by 0, black). Mean ± standard "
            f"error; ↑ higher is better, ↓ lower. `random` is uniform noise: the chance level.\n\n"
            f"{scoring.markdown_table(base['table'])}\n")
    rows = ["| method | R+ share, baseline | R+ share, block-wise L1 | abs share, baseline | "
            "abs share, block-wise L1 |", "|---|---|---|---|---|"]
    for spec, share in base["second_object"].items():
      rows.append(f"| {spec} | {share:.3f} | {tuned['second_object'][spec]:.3f} | "
                  f"{base['second_object_abs'][spec]:.3f} | "
                  f"{tuned['second_object_abs'][spec]:.3f} |")
    second = (f"## The non-dominant class: the share of its explanation on its object\n\n"
              f"Test images with a second, smaller object of another class: every method "
              f"explains that object's class, and attribution localisation on its mask gives "
              f"the share of the positive relevance on it (R+ share; Rieger et al. 2018 ask this "
              f"of DTD), and the same of |R| (abs share: where the explanation lies whatever its "
              f"sign; a conservative method explaining a negative logit has little positive "
              f"relevance). The object covers "
              f"{base['second_object_area_share']:.3f} of the image (the share of a uniform "
              f"map). Block-wise L1: weight {config.evaluate.block_l1}, test accuracy "
              f"{tuned['test_accuracy']:.3f}; the second class is the runner-up class on "
              f"{base['second_class_is_top2']:.2f} (baseline) and "
              f"{tuned['second_class_is_top2']:.2f} (block-wise L1) of the images, its mean "
              f"logit {base['second_class_logit_mean']:.2f} and "
              f"{tuned['second_class_logit_mean']:.2f}.\n\n" + "\n".join(rows) + "\n")
    return [main, second]

  def figures(self, config, analyses, sources, directory: Path) -> None:
    base, k = analyses["baseline"].figures, config.evaluate.figure_examples
    records = sources["test"].read_batch(np.arange(k))
    names = sources["test"].info.class_names
    write_figures(directory, records["image"], first_heatmaps(base["scores"], k),
                  mean_curves(base["scores"]), base["fractions"],
                  row_labels=[names[c] for c in records["label"]], num_images=k)
    records = two_object_source(config).read_batch(np.arange(k))
    for name, analysis in analyses.items():
      write_figures(directory, records["image"], first_heatmaps(analysis.figures["second"], k),
                    {}, {},
                    prefix=f"second_{name}_",
                    row_labels=[f"second: {names[c]}" for c in records["second_label"]],
                    num_images=config.evaluate.figure_examples)

  def summary(self, config, analysed, checks) -> dict:
    return {"baseline_test_accuracy": analysed["baseline"]["test_accuracy"],
            "block_l1_test_accuracy": analysed["block_l1"]["test_accuracy"], **checks}
