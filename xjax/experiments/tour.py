"""The tour: train a small network on the built-in shapes and explain it with several methods.

What a newcomer wants to see first, and a protocol in the fewest lines: one training run, then
`explain_workdir` with every method of `tour.methods` on the first `tour.num_examples` test images.
The shapes data knows the object's pixels, so every method is measured against that ground truth:

  results.md / results.json   per method: the share of positive relevance on the object (against
                              the object's share of the image, what a uniform map would get), the
                              pointing game, sum(R) / f_c (1 where relevance is conserved: LRP),
                              compile time and time per image
  figures/methods.png         the images, then one heatmap per method, side by side
  model/                      the trained run (checkpoints, curves; `python -m runs.explain
                              --workdir=W/model` explains it again with other methods)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from xjax.errors import ConfigError
from xjax.experiments.explain import explain_workdir
from xjax.experiments.protocol import Analysis, Protocol, Run
from xjax.experiments.registry import EXPERIMENTS
from xjax.experiments.runner import copy_config
from xjax.explain.methods import METHODS, canonical_spec
from xjax.train import config_checks, report


@EXPERIMENTS.register("tour")
class TourProtocol(Protocol):
  """One model, many explanations, scored on the shapes' ground truth (module docstring)."""

  title = "a small network on shapes, explained"
  sections = ("tour",)

  def check(self, config) -> None:
    if not config.tour.methods:
      raise ConfigError(f"tour.methods is empty; known methods: {', '.join(METHODS)}.")
    for spec in config.tour.methods:
      canonical_spec(spec)  # an unknown name fails now, not after training
    config_checks.check_section(config.tour, "tour", {"num_examples": config_checks.counts,
                                                      "batch_size": config_checks.counts})

  def runs(self, config, sources) -> list[Run]:
    return [Run("model", copy_config(config, name=f"{config.name}/model"),
                description=f"{config.model.name} on {config.data.name}")]

  def analyse(self, config, run, sources) -> Analysis:
    methods = explain_workdir(run.workdir, list(config.tour.methods), n=config.tour.num_examples,
                              batch_size=config.tour.batch_size)
    arrays = np.load(run.workdir / "explanations.npz")
    return Analysis({"test_accuracy": run.trained["test_accuracy"],
                     "object_share_of_pixels": (float(np.mean(arrays["mask"])) if "mask" in arrays
                                                else None),
                     "methods": methods},
                    figures={"explain_figure": run.workdir / "figures" / "explain.png"})

  def checks(self, config, analysed) -> dict:
    run = analysed["model"]
    shares = {m: v["mask_share"] for m, v in run["methods"].items() if v["mask_share"] is not None}
    conserving = {m: v["conservation"] for m, v in run["methods"].items()
                  if v["conservation"] is not None}
    checks = {}
    if shares and run["object_share_of_pixels"] is not None:
      checks["methods_above_uniform_on_object"] = (
          f"{sum(s > run['object_share_of_pixels'] for s in shares.values())} / {len(shares)}")
    for method, ratio in conserving.items():  # mean of sum(R) / f_c over the images
      checks[f"conservation_error_{method}"] = abs(ratio - 1)
    return checks

  def tables(self, config, analysed, checks) -> list[str]:
    run = analysed["model"]
    uniform = run["object_share_of_pixels"]
    rows = [[m, v["mask_share"], v["pointing_game"], v["conservation"],
             1e3 * v["seconds_per_image"], v["compile_seconds"]]
            for m, v in run["methods"].items()]
    return [f"Model {config.model.name} on {config.data.name}: test accuracy "
            f"{run['test_accuracy']:.4f}; the first {config.tour.num_examples} test images, each "
            f"explained for its predicted class.",
            "## Each method against the ground truth\n\n"
            + (f"A uniform heatmap puts {uniform:.3f} of its relevance on the object.\n\n"
               if uniform is not None else "")
            + report.markdown_table(["method", "relevance on the object", "pointing game",
                                     "sum R / f_c", "ms / image", "compile s"], rows)]

  def figures(self, config, analyses, sources, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(analyses["model"].figures["explain_figure"], directory / "methods.png")
    print(f"The test images and each method's heatmaps: {directory / 'methods.png'}; the "
          f"table: {directory.parent / 'results.md'}.", flush=True)

  def summary(self, config, analysed, checks) -> dict:
    run = analysed["model"]
    return {"test_accuracy": run["test_accuracy"],
            **{f"{m}_on_object": v["mask_share"] for m, v in run["methods"].items()}, **checks}
