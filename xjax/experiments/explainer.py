"""Explainer networks: a frozen performer's features disentangled into part filters.

Zhang, Yang & Wu, "Unsupervised learning of neural networks to explain neural networks" (AAAI
2019), with the filter loss of Zhang, Wu & Zhu, "Interpretable convolutional neural networks"
(CVPR 2018). The protocol:

  runs       performer: the network to explain (a VGG-style net with two dense layers above its
             conv stack), an ordinary resumable run; explainer: the `explainer` model
             (`xjax.methods.explainer`) on the performer's best parameters, frozen, trained with
             Eq. 1 (reconstruction, -eta log p, the filter loss), resumable like any run.
  analysis   on the test images: the accuracy of the performer's head on the explainer's
             reconstruction (the explainer run's test accuracy) beside the performer's own; p; the
             relative reconstruction error of each reconstructed layer; location instability
             (`xjax.metrics.location_instability`) of the performer's filters (the explained
             layer's channels) and of the explainer's interpretable filters (conv-interp-2), the
             peaks mapped to the image through receptive-field centres traced from the networks
             themselves (`xjax.explain.receptive_field`).
  figures    fig3_filters.png: the interpretable and the performer's most stable filters, each on
             its top images with the peak marked, and fig3_maps.png the same filters' maps on
             the same test images (Fig. 3 of the paper); fig4_gradcam.png: Grad-CAM
             of the label on the performer's explained layer beside Grad-CAM on the explainer's
             interpretable filters, the same images (Fig. 4).
"""

from __future__ import annotations

import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from xjax.data import batching
from xjax.errors import ConfigError, DataNotFoundError
from xjax.experiments.loading import read_split
from xjax.experiments.protocol import Analysis, Protocol, Run, TrainedRun
from xjax.experiments.registry import EXPERIMENTS
from xjax.experiments.runner import copy_config
from xjax.explain.cam import gradcam
from xjax.explain.receptive_field import receptive_field_centres
from xjax.methods.explainer import FORMS, MASKS
from xjax.metrics.location_instability import location_instability, peak_positions
from xjax.nn.layers import layer_shapes
from xjax.nn.registry import logits_fn
from xjax.plot.explainer import plot_filter_peaks
from xjax.plot.heatmaps import plot_explanations
from xjax.registry import non_negative, positive
from xjax.train import config_checks
from xjax.train.loop import build_model

PARTS = ("keypoints", "keypoints_visible")
# The settings of `explainer` (`ExplainerProtocol.check`, before any data loads).
RULES = {
    "layer": config_checks.name,
    "reconstruct": (config_checks.sequence(config_checks.name, length=2),
                    "the two dense layers above `layer`"),
    "head": config_checks.name,
    "num_filters": (config_checks.optional(config_checks.counts),
                    "None: as many as the explained layer has channels"),
    "reconstruction_weights": config_checks.sequence(non_negative, length=2),
    "eta": non_negative,
    "filter_weight": non_negative,
    "epochs": config_checks.counts,
    "learning_rate": positive,
    "parts": (config_checks.optional(config_checks.sequence(config_checks.integer(0))),
              "None: every part"),
    "top_n": config_checks.integer(2),
    "num_images": config_checks.counts,
    "figure_filters": config_checks.counts,
    "figure_images": config_checks.counts,
}


def explainer_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The explainer run's training config: the `explainer` model around the config's performer,
  the loss terms of Eq. 1 and the explainer's own epochs and learning rate."""
  options = config.explainer
  c = copy_config(config, name=f"{config.name}/explainer")
  performer = {k: v for k, v in config.model.to_dict().items() if k != "name"}
  c.model = ml_collections.ConfigDict(dict(
      name="explainer", performer=config.model.name, performer_options=performer,
      layer=options.layer, reconstruct=tuple(options.reconstruct), head=options.head,
      num_filters=options.num_filters, mask=options.mask))
  c.losses = ml_collections.ConfigDict({
      "explainer_reconstruction": {"weight": 1.0,
                                   "weights": tuple(options.reconstruction_weights)},
      "explainer_p": {"weight": options.eta},
      "filter_loss": {"weight": options.filter_weight, "form": options.form}})
  c.train.epochs = options.epochs
  c.optimizer.learning_rate = options.learning_rate
  return c


def check_performer(model, image_shape, layer: str, reconstruct, head: str) -> None:
  """One-line ConfigError unless the performer has the conv layer `layer` and, above it, the two
  dense layers `reconstruct` and the classifier `head` (found by tracing, nothing runs)."""
  shapes = layer_shapes(model, np.zeros((1, *image_shape), np.float32))
  names = list(shapes)
  if layer not in shapes:
    raise ConfigError(f"The performer has no layer {layer!r} to explain; its layers: "
                      f"{', '.join(names)}.")
  if len(shapes[layer]) != 4:
    raise ConfigError(f"The explained layer {layer!r} must be conv maps (B, h, w, C); its "
                      f"output has shape {shapes[layer]}.")
  x = np.zeros((1, *image_shape), np.float32)
  kernels = jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"]
  dense = [n for n in names if len(shapes[n]) == 2 and n != head
           and getattr(kernels.get(n, {}).get("kernel"), "ndim", 0) == 2]
  missing = [n for n in (*reconstruct, head) if n not in shapes]
  if len(tuple(reconstruct)) != 2 or missing or any(n not in dense for n in reconstruct):
    raise ConfigError(f"The explainer reconstructs two dense layers of the performer above "
                      f"{layer!r} and uses its classifier {head!r}; asked for "
                      f"{tuple(reconstruct)}, the performer's dense layers are "
                      f"{', '.join(dense) or 'none'}"
                      + (f" (no {', '.join(map(repr, missing))})" if missing else "") + ".")


def _geometry_of(model, layer_name: str):
  """`(variables, x) -> maps`: one intermediate of the explainer model (eval mode) without its
  mask layers, whose data-dependent masks (a centroid, an argmax: a global op) multiply the maps
  elementwise and do not move a unit's receptive field."""
  unmasked = model.clone(mask="none")
  return lambda variables, x: unmasked.apply(variables, x, train=False)[1][layer_name]


def gradcam_at_module(model, variables, x, target, module_name: str) -> jax.Array:
  """Grad-CAM (Selvaraju et al., 2017) of the target logits at the output of the submodule
  `module_name`, resized to x (B, H, W).

  The maps are the module's output after a ReLU (A = relu(out)); the gradient is that of the
  target logits with respect to the module's output, found by adding a zero to that output
  inside the model (`flax.linen.intercept_methods`). xjax's Grad-CAM (`xjax.explain.cam`) traces
  the model as a program of layers, which the explainer's data-dependent masks are not."""
  def logits_and_maps(delta):
    captured = {}

    def add(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == "__call__" and context.module.name == module_name:
        captured["out"] = out
        return out + delta
      return out
    with nn.intercept_methods(add):
      logits = model.apply(variables, x, train=False)[0]
    return jnp.sum(jnp.take_along_axis(logits, target[:, None], 1)), captured["out"]

  def shape_of(delta):
    return logits_and_maps(delta)[1]
  shape = jax.eval_shape(shape_of, jnp.zeros(())).shape
  grads, out = jax.grad(logits_and_maps, has_aux=True)(jnp.zeros(shape, jnp.float32))
  cam = jax.nn.relu(jnp.einsum("bk,bhwk->bhw", grads.mean(axis=(1, 2)), jax.nn.relu(out)))
  return jax.image.resize(cam, (x.shape[0], *x.shape[1:3]), "bilinear")


@EXPERIMENTS.register("explainer", description="an explainer network on a frozen performer: "
                      "location instability, p and the head on the reconstruction (runs.explainer)")
class ExplainerProtocol(Protocol):
  """The `explainer` experiment (module docstring)."""

  title = "explainer networks: part filters on a frozen performer (Zhang, Yang & Wu, 2019)"
  sections = ("explainer",)

  def __init__(self):
    self._performer: dict = {}

  def check(self, config) -> None:
    options = config.explainer
    if options.mask not in MASKS:
      raise ConfigError(f"explainer.mask must be one of {', '.join(MASKS)}; got "
                        f"{options.mask!r}.")
    if options.form not in FORMS:
      raise ConfigError(f"explainer.form must be one of {', '.join(FORMS)}; got "
                        f"{options.form!r}.")
    config_checks.check_section(options, "explainer", RULES)
    if options.top_n < 2 or options.num_images < options.top_n:
      raise ConfigError(f"explainer.top_n must be >= 2 and <= num_images; got top_n "
                        f"{options.top_n}, num_images {options.num_images}.")
    workdir = options.get("performer_workdir")
    if workdir is not None and not (Path(workdir) / "checkpoints").is_dir():
      raise DataNotFoundError(f"explainer.performer_workdir {workdir} has no trained performer "
                              f"(no checkpoints/ folder); train it with runs.train, or leave "
                              f"performer_workdir unset to train one here.")

  def runs(self, config, sources) -> list[Run]:
    info = sources["train"].info
    options = config.explainer
    check_performer(build_model(config, info), info.image_shape, options.layer,
                    options.reconstruct, options.head)
    record = sources["test"].read_batch(np.arange(1))
    missing = [k for k in PARTS if k not in record]
    if missing:
      raise ConfigError(f"location instability needs part annotations; {config.data.name} "
                        f"gives no {', '.join(missing)} (CUB: parts/parts.txt and "
                        f"parts/part_locs.txt).")
    performer = options.get("performer_workdir") or "performer"
    runs = [] if options.get("performer_workdir") else [
        Run("performer", config, description=f"{config.model.name} on {config.data.name}")]
    return runs + [Run("explainer", explainer_config(config), pretrained={"performer": performer},
                       frozen=("performer",),
                       description="the explainer on the frozen performer (Eq. 1)")]

  # ------------------------------------------------------------------------------------------
  # The analysis.

  def analyse(self, config, run: TrainedRun, sources) -> Analysis:
    if run.name == "performer":
      return Analysis({"test_accuracy": run.trained["test_accuracy"]})
    options = config.explainer
    if options.get("performer_workdir"):  # trained elsewhere: its own results.json
      own = Path(options.performer_workdir) / "results.json"
      self._performer = ({"test_accuracy": json.loads(own.read_text())["test_accuracy"]}
                         if own.exists() else {})
    variables = run.variables()
    test = read_split(sources["test"], config.data.normalization)
    rows = np.arange(min(options.num_images, len(test["label"])))
    x = test["x"][rows]
    wanted = ("conv_maps", "interp_2", "p", *(f"{kind}_{n}" for n in options.reconstruct
                                             for kind in ("target", "reconstruction")))

    @jax.jit
    def outputs(x):
      inter = run.model.apply(variables, x, train=False)[1]
      return {k: jnp.broadcast_to(inter[k], (x.shape[0],)) if k == "p" else inter[k]
              for k in wanted}
    out = batching.map_batches(outputs, x, batch_size=config.data.eval_batch_size)
    relative = {n: float(np.mean(np.sum(np.square(out[f"reconstruction_{n}"] -
                                                  out[f"target_{n}"]), -1)) /
                         np.mean(np.sum(np.square(out[f"target_{n}"]), -1)))
                for n in options.reconstruct}
    parts = list(options.parts) if options.get("parts") is not None else None
    keypoints = test["keypoints"][rows]
    visible = test["keypoints_visible"][rows]
    if parts is not None:
      keypoints, visible = keypoints[:, parts], visible[:, parts]
    image_size = x.shape[1:3]
    result = {"test_accuracy": run.trained["test_accuracy"], "p": float(out["p"][0]),
              "relative_reconstruction_error": relative, "num_images": int(len(x))}
    figure = {}
    for who, name in (("performer", "conv_maps"), ("explainer", "interp_2")):
      centres = receptive_field_centres(_geometry_of(run.model, name), variables, x[:1].shape)
      peaks, values = peak_positions(out[name], *centres)
      stability = location_instability(peaks, values, keypoints, visible, image_size,
                                       top_n=options.top_n)
      result[f"location_instability_{who}"] = float(stability["mean"])
      result[f"location_instability_{who}_per_part"] = np.asarray(stability["per_part"]).tolist()
      figure[who] = {"peaks": np.asarray(peaks), "values": np.asarray(values),
                     "per_filter": np.asarray(stability["per_filter"])}
    # Fig. 4: Grad-CAM of the label on the performer's explained layer and on the explainer's
    # interpretable filters (conv-interp-2), the same images.
    shown = np.arange(min(options.figure_images, len(x)))
    labels = jnp.asarray(test["label"][rows][shown])
    performer = build_model(config, sources["train"].info)
    own = {"params": variables["params"]["performer"]}
    figure["gradcam"] = {
        "performer": np.asarray(gradcam(logits_fn(performer), own, x[shown], labels)).sum(-1),
        "explainer": np.asarray(gradcam_at_module(run.model, variables, x[shown], labels,
                                                  "conv_interp_2"))}
    # Fig. 3's maps: each network's channels on the same images, resized to the images.
    figure["maps"] = {who: np.asarray(jax.image.resize(
        out[name][shown], (len(shown), *x.shape[1:3], out[name].shape[-1]), "bilinear"))
        for who, name in (("performer", "conv_maps"), ("explainer", "interp_2"))}
    return Analysis(result, {"images": test["image"][rows], "labels": test["label"][rows],
                             **figure})

  # ------------------------------------------------------------------------------------------
  # Reporting.

  def checks(self, config, analysed) -> dict:
    result = analysed["explainer"]
    performer = analysed.get("performer") or self._performer or None
    ours, theirs = (result["location_instability_explainer"],
                    result["location_instability_performer"])
    checks = {"instability_reduction": float(1 - ours / theirs),
              "instability_at_least_25pct_lower": bool(ours <= 0.75 * theirs),
              "p_at_least_0.8": bool(result["p"] >= 0.8)}
    if performer is not None:
      drop = performer["test_accuracy"] - result["test_accuracy"]
      checks["head_accuracy_drop"] = float(drop)
      checks["head_within_3_points"] = bool(drop <= 0.03)
    return checks

  def tables(self, config, analysed, checks) -> list[str]:
    result = analysed["explainer"]
    performer = analysed.get("performer") or self._performer
    paper = config.explainer.paper.to_dict()
    own = performer.get("test_accuracy")
    rows = ["| | ours | paper (VGG-16, CUB) |", "|---|---|---|",
            f"| performer test accuracy | {own:.3f} | - |" if own is not None else "",
            f"| performer's head on the reconstruction | {result['test_accuracy']:.3f} | - |",
            f"| p (Table 4) | {result['p']:.3f} | {paper['p']:.4f} |",
            f"| location instability, performer (Table 3) | "
            f"{result['location_instability_performer']:.4f} | "
            f"{paper['location_instability_performer']:.4f} |",
            f"| location instability, explainer (Table 3) | "
            f"{result['location_instability_explainer']:.4f} | "
            f"{paper['location_instability_explainer']:.4f} |"]
    rows += [f"| relative reconstruction error, {n} | {e:.4f} | - |"
             for n, e in result["relative_reconstruction_error"].items()]
    parts = ["| part | performer | explainer |", "|---|---|---|"]
    for i, (a, b) in enumerate(zip(result["location_instability_performer_per_part"],
                                   result["location_instability_explainer_per_part"])):
      parts.append(f"| {i} | {a:.4f} | {b:.4f} |")
    main = (f"## Tables 2-4: location instability, p and the performer's head\n\nOn the first "
            f"{result['num_images']} test images; location instability over each filter's top "
            f"{config.explainer.top_n} images (lower is more stable); mask "
            f"`{config.explainer.mask}`, filter loss `{config.explainer.form}`.\n\n"
            + "\n".join(r for r in rows if r) + "\n")
    return [main, "## Location instability per part\n\n" + "\n".join(parts) + "\n"]

  def figures(self, config, analyses, sources, directory: Path) -> None:
    figure = analyses["explainer"].figures
    chosen = {}
    for who in ("explainer", "performer"):
      per_filter = figure[who]["per_filter"]
      order = [int(f) for f in np.argsort(per_filter) if np.isfinite(per_filter[f])]
      chosen[who] = order[:config.explainer.figure_filters]
    plot_filter_peaks(figure["images"], {who: figure[who] for who in chosen}, chosen,
                      directory / "fig3_filters.png", top=config.explainer.figure_images)
    maps = figure["maps"]
    shown = len(maps["performer"])
    plot_explanations(figure["images"][:shown],
                      {f"{who} filter {f}": maps[who][..., f] for who in chosen
                       for f in chosen[who]},
                      directory / "fig3_maps.png")
    cams = figure["gradcam"]
    names = sources["test"].info.class_names
    shown = len(cams["performer"])
    plot_explanations(figure["images"][:shown],
                      {"Grad-CAM, performer": cams["performer"],
                       "Grad-CAM, interpretable filters": cams["explainer"]},
                      directory / "fig4_gradcam.png",
                      labels=[names[c] for c in figure["labels"][:shown]])

  def summary(self, config, analysed, checks) -> dict:
    result = analysed["explainer"]
    performer = analysed.get("performer") or self._performer
    return {"performer_test_accuracy": performer.get("test_accuracy"),
            "head_on_reconstruction_accuracy": result["test_accuracy"], "p": result["p"],
            "location_instability_performer": result["location_instability_performer"],
            "location_instability_explainer": result["location_instability_explainer"],
            **checks}
