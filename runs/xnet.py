"""XNet against its baseline, `python -m runs.xnet --config=runs/configs/xnet.py[:VARIANT]
--workdir=W`.

Trains the baseline (alpha = 0) and XNet (the drop loss, Eq. 2) with the same seed, each in its own
workdir `W/<run>/` (resumable: run the same command again), plus the Sec. 4 ablations listed in
`xnet.ablations`. Then, on the test split, with the parameters each run is tested with:

  W/results.json   per run: test_accuracy, drop_losses (per neuron), drop_loss_history (per neuron
                   per epoch, epoch 0 = before training, on the validation split),
                   category_activation (Fig. 2), the drop-loss matrix and the matching
  W/results.md     Table 1 (the paper's test accuracies beside ours) and the drop losses
  W/figures/       fig1_drop_losses, fig2_category_activation, fig3_saliency, fig4_cam,
                   fig5_top_images_xnet, fig6_top_images_baseline, and fig7_sum_objective /
                   fig8_matching when those ablations are run
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jax
import ml_collections
import numpy as np

from runs import cli
from xjax.data import pipeline
from xjax.errors import ConfigError
from xjax.explain import heatmaps
from xjax.explain.methods import get_method
from xjax.methods import xnet_monitor as monitor
from xjax.nn.registry import logits_fn
from xjax.plot import xnet as plots
from xjax.train import checkpoint, report
from xjax.train.loop import build_model, check_config, load_sources, train_and_evaluate

# run name -> (drop-loss objective or None for the baseline, matching)
ABLATIONS = {"sum": ("sum", "none"), "initial_match": ("sum", "initial"),
             "em_match": ("sum", "em")}


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
  c = ml_collections.ConfigDict(copy.deepcopy(config.to_dict()))
  c.name = f"{config.name}/{name}"
  c.losses = {"cross_entropy": {"weight": 1.0}}
  if objective is not None:
    c.losses["xnet_drop"] = {"weight": config.xnet.alpha, "categories": columns,
                             "objective": objective}
  return c


def analyse(config, workdir: Path, model, source, columns: list[int], trained: dict) -> dict:
  """The run's numbers on the test split (module docstring) and what its figures need."""
  which = "best" if config.train.test_params == "best" else "latest"
  state = checkpoint.load_params(workdir, which)
  variables = {"params": state["params"], **state.get("model_state", {})}
  outputs = monitor.run_split(monitor.make_forward(model), variables, source, columns,
                              batch_size=config.data.eval_batch_size,
                              normalization=config.data.normalization)
  output_params = variables["params"]["head"]["output"]
  neuron_of_category = trained["xnet"]["neuron_of_category"]
  per_image = monitor.per_image_drop_losses(output_params, outputs)
  matrix = monitor.category_means(per_image, outputs.membership)  # one pass of the k heads
  top = monitor.top_images(per_image, config.xnet.top_images)
  return {
      "test_accuracy": trained["test_accuracy"], "test_loss": trained["test_loss"],
      "drop_losses": monitor.neuron_drop_losses(matrix, neuron_of_category).tolist(),
      "drop_loss_history": trained["xnet"]["drop_loss_history"],
      "category_activation": monitor.category_activation(outputs.hidden,
                                                         outputs.membership).tolist(),
      "drop_loss_matrix": matrix.tolist(), "neuron_of_category": neuron_of_category,
      "matchings": [m["neuron_of_category"] for m in trained["xnet"]["matchings"]],
      "category_counts": outputs.membership.sum(axis=0).astype(int).tolist(),
      "epochs_completed": trained["epochs_completed"], "train_seconds": trained["train_seconds"],
      "_variables": variables, "_outputs": outputs,
      "_top": {"index": outputs.index[top], "scores": np.take_along_axis(per_image.T, top, 1)},
  }


def category_examples(outputs, n: int) -> np.ndarray:
  """(K, n) source indices: the first n test images of each category (fewer: repeated)."""
  rows = []
  for c in range(outputs.membership.shape[1]):
    members = outputs.index[outputs.membership[:, c]]
    if len(members) == 0:
      raise ConfigError(f"No test image is in category {c}: the figures need some.")
    rows.append(np.resize(members[:n], n))
  return np.stack(rows)


def explain_examples(config, model, runs: dict, source, indices: np.ndarray, method: str):
  """(K, n, H, W) channel-summed heatmaps of `method` for the predicted class, per run."""
  batch = source.read_batch(indices.reshape(-1))
  mean, std = pipeline.normalization_constants(source.info, config.data.normalization)
  x = pipeline.normalize(batch["image"], mean, std)
  apply_fn = logits_fn(model)
  explain = jax.jit(lambda variables, x, target: get_method(method)(apply_fn, variables, x, target))
  out = {}
  for name in ("baseline", "xnet"):
    variables = runs[name]["_variables"]
    target = np.argmax(apply_fn(variables, x), axis=-1)
    relevance = explain(variables, x, target)
    out[name] = np.asarray(heatmaps.channel_sum(relevance)).reshape(*indices.shape, *x.shape[1:3])
  return batch["image"].reshape(*indices.shape, *batch["image"].shape[1:]), out


def write_figures(config, workdir: Path, model, runs: dict, source, names: list[str]) -> None:
  """Fig. 1-6 of the paper for the baseline and XNet, Fig. 7 / 8 for the ablations run."""
  figures = workdir / "figures"
  history_of = lambda run: np.asarray(run["drop_loss_history"])  # noqa: E731
  neurons = [f"neuron {j} ({names[c]})" for j, c in enumerate(
      np.argsort(runs["xnet"]["neuron_of_category"]))]
  history = {name: history_of(runs[name]) for name in ("baseline", "xnet")}
  plots.plot_drop_loss_curves(history, figures / "fig1_drop_losses.png", neuron_labels=neurons,
                              title=f"{config.name}: per-neuron drop loss (validation)")
  plots.plot_category_activation(
      {name: np.asarray(runs[name]["category_activation"]) for name in ("baseline", "xnet")},
      figures / "fig2_category_activation.png", category_names=names,
      title="category activation, normalised per neuron")
  examples = category_examples(runs["xnet"]["_outputs"], config.xnet.figure_examples)
  for number, method, overlay in ((3, "saliency", False), (4, "gradcam", True)):
    images, maps = explain_examples(config, model, runs, source, examples, method)
    plots.plot_category_heatmaps(images, maps, figures / f"fig{number}_{method}.png",
                                 row_labels=names, overlay=overlay,
                                 title=f"{method} of the predicted class, by category")
  for number, name in ((5, "xnet"), (6, "baseline")):
    top = runs[name]["_top"]
    images = source.read_batch(top["index"].reshape(-1))["image"]
    plots.plot_top_images(images.reshape(*top["index"].shape, *images.shape[1:]),
                          figures / f"fig{number}_top_images_{name}.png",
                          group_labels=[f"neuron {j}" for j in range(top["index"].shape[0])],
                          scores=top["scores"], title=f"{name}: top images by drop loss")
  if "sum" in runs:
    plots.plot_drop_loss_curves({"sum objective (Eq. 1)": history_of(runs["sum"])},
                                figures / "fig7_sum_objective.png", title="Eq. 1: sum objective")
  matched = {name: history_of(runs[name]) for name in ("initial_match", "em_match") if name in runs}
  if matched:
    plots.plot_drop_loss_curves(matched, figures / "fig8_matching.png", title="matching (Alg. 1-2)")


def results_markdown(config, runs: dict, checks: dict, names: list[str]) -> str:
  paper = config.paper
  rows = []
  for name, run in runs.items():
    rows.append([name, paper.get(f"{name}_test_accuracy"), run["test_accuracy"],
                 min(run["drop_losses"]), ", ".join(f"{v:.3f}" for v in run["drop_losses"])])
  out = [f"# {config.name}: XNet vs baseline", "",
         f"Categories (neuron j <-> category j unless matched): {', '.join(names)}; "
         f"alpha = {config.xnet.alpha}, objective = {config.xnet.objective}.", "",
         "## Table 1: test accuracy, and drop losses on the test split", "",
         report.markdown_table(["run", "paper test acc. (CelebA)", "xjax test acc.",
                                "min drop loss", "drop loss per neuron"], rows), ""]
  epochs = range(len(next(iter(runs.values()))["drop_loss_history"]))
  out += ["## Drop loss per neuron and epoch (validation split; epoch 0 = before training)", "",
          report.markdown_table(["epoch", *runs], [
              [e, *(" / ".join(f"{v:.3f}" for v in run["drop_loss_history"][e])
                    for run in runs.values())] for e in epochs]), ""]
  out += ["## Checks", "", report.markdown_table(["check", "value"], [[k, v] for k, v in
                                                                     checks.items()]), ""]
  return "\n".join(out) + "\n"


def main(config, workdir) -> dict:
  check_config(config)
  workdir = Path(workdir)
  sources = load_sources(config.data)
  info = sources["train"].info
  columns = category_columns(config, info)
  names = list(config.xnet.categories)
  runs = {}
  model = None
  for name, (objective, matching) in runs_of(config).items():
    c = run_config(config, name, objective, columns)
    model = build_model(c, info)
    hooks = monitor.XNetHooks(model, sources, columns, matching=matching,
                              batch_size=c.data.eval_batch_size,
                              normalization=c.data.normalization,
                              match_examples=config.xnet.match_examples)
    print(f"== {name}: objective {objective or '(none: alpha = 0)'}, matching {matching}",
          flush=True)
    trained = train_and_evaluate(c, workdir / name, hooks)
    runs[name] = analyse(c, workdir / name, model, sources["test"], columns, trained)

  base, xnet = runs["baseline"], runs["xnet"]
  history = np.asarray(xnet["drop_loss_history"])
  checks = {
      "min_drop_loss_ratio_xnet_over_baseline": min(xnet["drop_losses"]) / max(
          min(base["drop_losses"]), 1e-12),
      # Every neuron's drop loss at the end above its value before training (epoch 0) and above
      # its value after the first epoch (when the network first classifies).
      "xnet_drop_losses_rose_from_init": bool(np.all(history[-1] > history[0])),
      "xnet_drop_losses_rose_from_epoch_1": bool(np.all(history[-1] > history[1])),
      "accuracy_gap_points": 100 * (base["test_accuracy"] - xnet["test_accuracy"]),
  }
  public = {name: {k: v for k, v in run.items() if not k.startswith("_")}
            for name, run in runs.items()}
  results = {"name": config.name, "categories": names, "alpha": config.xnet.alpha, **public,
             "checks": checks}
  report.write_json(workdir / "results.json", results)
  (workdir / "results.md").write_text(results_markdown(config, public, checks, names))
  write_figures(config, workdir, model, runs, sources["test"], names)
  print(json.dumps({"baseline_test_accuracy": round(base["test_accuracy"], 4),
                    "xnet_test_accuracy": round(xnet["test_accuracy"], 4),
                    "baseline_drop_losses": [round(v, 4) for v in base["drop_losses"]],
                    "xnet_drop_losses": [round(v, 4) for v in xnet["drop_losses"]],
                    **{k: round(v, 4) if isinstance(v, float) else v for k, v in checks.items()},
                    "workdir": str(workdir)}), flush=True)
  return results


if __name__ == "__main__":
  cli.run(main)
