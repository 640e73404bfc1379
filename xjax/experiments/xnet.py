"""XNet against its baseline (David & Liu 2019, Table 1, Figs. 1-8), as a protocol.

Trains the baseline (alpha = 0) and XNet (the drop loss, Eq. 2) with the same seed, plus the
Sec. 4 ablations of `xnet.ablations`. Then, on the test split, with the parameters each run is
tested with (`train.test_params`):

  results.json   per run: test_accuracy, drop_losses (per neuron), drop_loss_history (per neuron
                 per epoch, epoch 0 = before training, on the validation split),
                 category_activation (Fig. 2), the drop-loss matrix and the matching
  results.md     Table 1 (the paper's test accuracies beside ours) and the drop losses
  figures/       fig1_drop_losses, fig2_category_activation, fig3_saliency, fig4_gradcam,
                 fig5_top_images_xnet, fig6_top_images_baseline, and fig7_sum_objective /
                 fig8_matching when those ablations are run
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from xjax.data import pipeline
from xjax.errors import ConfigError
from xjax.experiments.protocol import Analysis, Protocol, Run, TrainedRun
from xjax.experiments.registry import EXPERIMENTS
from xjax.experiments.runner import copy_config
from xjax.explain import heatmaps
from xjax.explain.methods import get_method
from xjax.methods import xnet_monitor as monitor
from xjax.methods.xnet import OBJECTIVES
from xjax.nn.registry import logits_fn
from xjax.plot import xnet as plots
from xjax.registry import one_of, positive
from xjax.train import config_checks, report
from xjax.train.loop import build_model

# run name -> (drop-loss objective, matching) of the Sec. 4 ablations
ABLATIONS = {"sum": ("sum", "none"), "initial_match": ("sum", "initial"),
             "em_match": ("sum", "em")}
# The settings of `xnet` (`XNetProtocol.check`, before any data loads).
RULES = {
    "categories": config_checks.sequence(config_checks.name),
    "alpha": (positive, "the drop loss's weight in the XNet run; the baseline has 0"),
    "objective": one_of(*OBJECTIVES),
    "matching": one_of(*monitor.MATCHINGS),
    "match_examples": (config_checks.optional(config_checks.counts),
                       "train images for the matching; None: all"),
    "figure_examples": config_checks.counts,
    "top_images": config_checks.counts,
}


def category_columns(config, info) -> list[int]:
  """The attribute columns of `config.xnet.categories`, checked against the data."""
  names = list(config.xnet.categories)
  unknown = [n for n in names if n not in info.attribute_names]
  if unknown:
    raise ConfigError(f"xnet.categories {unknown} are not attributes of {info.name!r}; its "
                      f"attributes: {', '.join(info.attribute_names) or 'none'}.")
  if len(names) != config.model.num_neurons:
    raise ConfigError(f"{len(names)} xnet.categories for model.num_neurons = "
                      f"{config.model.num_neurons}: XNet needs one category per neuron.")
  return [info.attribute_names.index(n) for n in names]


def runs_of(config) -> dict[str, tuple[str | None, str]]:
  """The runs to make: baseline, xnet and the ablations, as (objective, matching)."""
  unknown = sorted(set(config.xnet.ablations) - set(ABLATIONS))
  if unknown:
    raise ConfigError(f"Unknown xnet.ablations {unknown}; known: {', '.join(ABLATIONS)}.")
  return {"baseline": (None, "none"), "xnet": (config.xnet.objective, config.xnet.matching),
          **{name: ABLATIONS[name] for name in config.xnet.ablations}}


def run_config(config, name: str, objective: str | None, columns: list[int]):
  """The training config of one run: cross-entropy, plus alpha * drop loss unless baseline."""
  losses = {"cross_entropy": {"weight": 1.0}}
  if objective is not None:
    losses["xnet_drop"] = {"weight": config.xnet.alpha, "categories": columns,
                           "objective": objective}
  return copy_config(config, name=f"{config.name}/{name}", losses=losses)


def category_examples(outputs, n: int) -> np.ndarray:
  """(K, n) source indices: the first n test images of each category (fewer: repeated)."""
  rows = []
  for c in range(outputs.membership.shape[1]):
    members = outputs.index[outputs.membership[:, c]]
    if len(members) == 0:
      raise ConfigError(f"No test image is in category {c}: the figures need some.")
    rows.append(np.resize(members[:n], n))
  return np.stack(rows)


def explain_examples(config, model, analyses: dict[str, Analysis], source, indices: np.ndarray,
                     method: str):
  """(K, n, H, W) channel-summed heatmaps of `method` for the predicted class, per run."""
  batch = source.read_batch(indices.reshape(-1))
  mean, std = pipeline.normalization_constants(source.info, config.data.normalization)
  x = pipeline.normalize(batch["image"], mean, std)
  apply_fn = logits_fn(model)
  explain = jax.jit(lambda variables, x, target: get_method(method)(apply_fn, variables, x, target))
  out = {}
  for name in ("baseline", "xnet"):
    variables = analyses[name].figures["variables"]
    target = np.argmax(apply_fn(variables, x), axis=-1)
    relevance = explain(variables, x, target)
    out[name] = np.asarray(heatmaps.channel_sum(relevance)).reshape(*indices.shape, *x.shape[1:3])
  return batch["image"].reshape(*indices.shape, *batch["image"].shape[1:]), out


def _history(run: dict) -> np.ndarray:
  return np.asarray(run["drop_loss_history"])


@EXPERIMENTS.register("xnet")
class XNetProtocol(Protocol):
  """Baseline, XNet and the ablations (module docstring)."""

  title = "XNet vs baseline"
  sections = ("xnet",)

  def check(self, config) -> None:
    config_checks.check_section(config.xnet, "xnet", RULES)
    runs_of(config)

  def runs(self, config, sources) -> list[Run]:
    info = sources["train"].info
    columns = category_columns(config, info)
    plan = []
    for name, (objective, matching) in runs_of(config).items():
      c = run_config(config, name, objective, columns)
      hooks = monitor.XNetHooks(build_model(c, info), sources, columns, matching=matching,
                                batch_size=c.data.eval_batch_size,
                                normalization=c.data.normalization,
                                match_examples=config.xnet.match_examples)
      plan.append(Run(name, c, hooks, description=f"objective "
                      f"{objective or '(none: alpha = 0)'}, matching {matching}"))
    return plan

  def analyse(self, config, run: TrainedRun, sources) -> Analysis:
    """The run's numbers on the test split (module docstring) and what its figures need."""
    columns = category_columns(config, sources["test"].info)
    variables = run.variables()
    outputs = monitor.run_split(monitor.make_forward(run.model), variables, sources["test"],
                                columns, batch_size=config.data.eval_batch_size,
                                normalization=config.data.normalization)
    xnet = run.trained["xnet"]
    per_image = monitor.per_image_drop_losses(variables["params"]["head"]["output"], outputs)
    matrix = monitor.category_means(per_image, outputs.membership)  # one pass of the k heads
    top = monitor.top_images(per_image, config.xnet.top_images)
    return Analysis({
        "test_accuracy": run.trained["test_accuracy"], "test_loss": run.trained["test_loss"],
        "drop_losses": monitor.neuron_drop_losses(matrix, xnet["neuron_of_category"]).tolist(),
        "drop_loss_history": xnet["drop_loss_history"],
        "category_activation": monitor.category_activation(outputs.hidden,
                                                           outputs.membership).tolist(),
        "drop_loss_matrix": matrix.tolist(), "neuron_of_category": xnet["neuron_of_category"],
        "matchings": [m["neuron_of_category"] for m in xnet["matchings"]],
        "category_counts": outputs.membership.sum(axis=0).astype(int).tolist(),
        "epochs_completed": run.trained["epochs_completed"],
        "train_seconds": run.trained["train_seconds"],
    }, figures={
        "variables": variables, "outputs": outputs, "model": run.model,
        "top": {"index": outputs.index[top], "scores": np.take_along_axis(per_image.T, top, 1)},
    })

  def checks(self, config, analysed) -> dict:
    base, xnet = analysed["baseline"], analysed["xnet"]
    history = _history(xnet)
    return {
        "min_drop_loss_ratio_xnet_over_baseline": min(xnet["drop_losses"]) / max(
            min(base["drop_losses"]), 1e-12),
        # Every neuron's drop loss at the end above its value before training (epoch 0) and
        # above its value after the first epoch (when the network first classifies).
        "xnet_drop_losses_rose_from_init": bool(np.all(history[-1] > history[0])),
        "xnet_drop_losses_rose_from_epoch_1": bool(np.all(history[-1] > history[1])),
        "accuracy_gap_points": 100 * (base["test_accuracy"] - xnet["test_accuracy"]),
    }

  def header(self, config, analysed) -> dict:
    return {"name": config.name, "categories": list(config.xnet.categories),
            "alpha": config.xnet.alpha}

  def tables(self, config, analysed, checks) -> list[str]:
    paper = config.paper
    names = list(config.xnet.categories)
    rows = [[name, paper.get(f"{name}_test_accuracy"), run["test_accuracy"],
             min(run["drop_losses"]), ", ".join(f"{v:.3f}" for v in run["drop_losses"])]
            for name, run in analysed.items()]
    epochs = range(len(next(iter(analysed.values()))["drop_loss_history"]))
    return [
        f"Categories (neuron j <-> category j unless matched): {', '.join(names)}; "
        f"alpha = {config.xnet.alpha}, objective = {config.xnet.objective}.",
        "## Table 1: test accuracy, and drop losses on the test split\n\n" + report.markdown_table(
            ["run", "paper test acc. (CelebA)", "xjax test acc.", "min drop loss",
             "drop loss per neuron"], rows),
        "## Drop loss per neuron and epoch (validation split; epoch 0 = before training)\n\n"
        + report.markdown_table(["epoch", *analysed], [
            [e, *(" / ".join(f"{v:.3f}" for v in run["drop_loss_history"][e])
                  for run in analysed.values())] for e in epochs]),
    ]

  def figures(self, config, analyses, sources, directory: Path) -> None:
    """Fig. 1-6 of the paper for the baseline and XNet, Fig. 7 / 8 for the ablations run."""
    names, source = list(config.xnet.categories), sources["test"]
    analysed = {name: analysis.results for name, analysis in analyses.items()}
    neurons = [f"neuron {j} ({names[c]})" for j, c in enumerate(
        np.argsort(analysed["xnet"]["neuron_of_category"]))]
    pair = ("baseline", "xnet")
    plots.plot_drop_loss_curves({name: _history(analysed[name]) for name in pair},
                                directory / "fig1_drop_losses.png", neuron_labels=neurons,
                                title=f"{config.name}: per-neuron drop loss (validation)")
    plots.plot_category_activation(
        {name: np.asarray(analysed[name]["category_activation"]) for name in pair},
        directory / "fig2_category_activation.png", category_names=names,
        title="category activation, normalised per neuron")
    examples = category_examples(analyses["xnet"].figures["outputs"],
                                 config.xnet.figure_examples)
    model = analyses["xnet"].figures["model"]
    for number, method, overlay in ((3, "saliency", False), (4, "gradcam", True)):
      images, maps = explain_examples(config, model, analyses, source, examples, method)
      plots.plot_category_heatmaps(images, maps, directory / f"fig{number}_{method}.png",
                                   row_labels=names, overlay=overlay,
                                   title=f"{method} of the predicted class, by category")
    for number, name in ((5, "xnet"), (6, "baseline")):
      top = analyses[name].figures["top"]
      images = source.read_batch(top["index"].reshape(-1))["image"]
      plots.plot_top_images(images.reshape(*top["index"].shape, *images.shape[1:]),
                            directory / f"fig{number}_top_images_{name}.png",
                            group_labels=[f"neuron {j}" for j in range(top["index"].shape[0])],
                            scores=top["scores"], title=f"{name}: top images by drop loss")
    if "sum" in analysed:
      plots.plot_drop_loss_curves({"sum objective (Eq. 1)": _history(analysed["sum"])},
                                  directory / "fig7_sum_objective.png",
                                  title="Eq. 1: sum objective")
    matched = {name: _history(analysed[name]) for name in ("initial_match", "em_match")
               if name in analysed}
    if matched:
      plots.plot_drop_loss_curves(matched, directory / "fig8_matching.png",
                                  title="matching (Alg. 1-2)")

  def summary(self, config, analysed, checks) -> dict:
    base, xnet = analysed["baseline"], analysed["xnet"]
    return {"baseline_test_accuracy": base["test_accuracy"],
            "xnet_test_accuracy": xnet["test_accuracy"],
            "baseline_drop_losses": base["drop_losses"], "xnet_drop_losses": xnet["drop_losses"],
            **checks}
