"""SRAE: explanation modules that embed a network's class scores into a few x-features.

Qi & Li, "Embedding deep networks into visual explanations" (arXiv 1709.05360; "Learning
explainable embeddings for deep networks", 2017). The protocol:

  runs       network: the frozen network (the paper: VGG19 fine-tuned on CUB), an ordinary
             resumable training run.
  features   Z, the activations of `srae.layer` (the paper's fc6: the first dense layer, read
             after its ReLU), and y-hat, the pre-softmax score of each chosen class, on every
             train and test image, extracted once.
  modules    for every chosen class one module of each method, all classes of a method trained
             in ONE jit call (`jax.vmap` over the stacked modules, `xjax.methods.srae`), one
             against all: module c sees every train image, its positives and the other classes'
             images as negatives (the paper: 50 positives and 8000 negatives per class). Methods:
             `srae` (Eq. 1), `nn` (the same encoder and v for faithfulness alone) and `sae` (a
             stacked autoencoder of Z, v fitted on its code). Each method's stacked modules are
             an orbax checkpoint in `workdir/modules/<method>/`: a rerun reads them back.
  scores     per class and method: F_reg on train and test (beside the spread of y-hat, which
             sets its scale); locality, the entropy of the part histogram of each x-feature's
             contrastive excitation-backprop map (c-MWP at `srae.heatmap_layer`), averaged over
             the x-features (`xjax.metrics.locality`), on the class's test images; and the
             pointing game of the same maps against the object's box. Two more rows of the
             paper's Table 1: `z`, every dimension of Z as a feature (the `srae.z_features` most
             active on the class's images), and `excitation_backprop`, the c-MWP of y-hat itself.
  figures    fig2_important_xfeatures.png (Fig. 2: each class's most important x-feature, the
             one with the largest mean contribution v_n E_n, on the images where it contributes
             most) and fig1b_xfeatures.png (Fig. 1(b): every x-feature of SRAE beside excitation
             backprop on y-hat, on the same images).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from xjax.data import batching
from xjax.errors import ConfigError
from xjax.experiments.loading import read_split
from xjax.experiments.protocol import Analysis, Protocol, Run, TrainedRun
from xjax.experiments.registry import EXPERIMENTS
from xjax.explain.excitation import excitation_backprop
from xjax.methods import srae
from xjax.methods.srae_heatmaps import features_fn, orient_module, xfeature_heatmaps
from xjax.metrics.localisation import pointing_game
from xjax.metrics.locality import box_masks, locality_entropy, part_histograms
from xjax.nn.layers import check_layer
from xjax.nn.registry import logits_fn
from xjax.plot.heatmaps import plot_explanations
from xjax.registry import Check, non_negative, positive
from xjax.train import config_checks
from xjax.train.loop import build_model

COMPARED = ("srae", "nn", "sae", "z", "excitation_backprop")  # the rows of Table 1
TRAINED = ("srae", "nn", "sae")  # the methods with modules to train
PARTS = ("keypoints", "keypoints_visible", "bbox")
# The numeric settings of `srae` (`SraeProtocol.check`, before any data loads).
RULES = {
    "k": (config_checks.counts, "x-features per module"),
    "hidden": config_checks.counts,
    "steps": config_checks.counts,
    "batch_size": config_checks.counts,
    "num_images": config_checks.counts,
    "z_features": config_checks.counts,
    "figure_images": config_checks.counts,
    "beta": non_negative,
    "q": positive,
    "pointing_tolerance": (non_negative, "pixels"),
    "layer": config_checks.name,
    "heatmap_layer": config_checks.name,
    "classes": Check(lambda v: v is None or config_checks.counts(v)
                     or config_checks.sequence(config_checks.integer(0))(v),
                     "None (every class), a number of classes to draw (an integer >= 1) or a "
                     "non-empty list of class indices (integers >= 0)"),
}


def chosen_classes(spec, num_classes: int, seed: int) -> list[int]:
  """The classes to explain: None -> all; an int n -> n classes drawn at random (seeded, as the
  paper's 30 random classes); a sequence -> those indices."""
  if spec is None:
    return list(range(num_classes))
  if isinstance(spec, int) and not isinstance(spec, bool):
    if not 0 < spec <= num_classes:
      raise ConfigError(f"srae.classes = {spec} classes to draw, but the data has {num_classes}.")
    return sorted(np.random.default_rng(seed).choice(num_classes, spec, replace=False).tolist())
  classes = [int(c) for c in spec]
  bad = [c for c in classes if not 0 <= c < num_classes]
  if bad or not classes:
    raise ConfigError(f"srae.classes {tuple(spec)} has class indices outside [0, {num_classes}) "
                      f"(the data's classes): {bad or 'none given'}.")
  return classes


def _module_template(method: str, num_modules: int, s_z: int, options) -> dict:
  """The abstract stacked parameters of a method's modules (what its checkpoint restores to)."""
  return jax.eval_shape(lambda: srae.init_modules(
      jax.random.key(0), num_modules, s_z, options.k, options.hidden,
      reconstruction=method != "nn"))


def train_or_load(method: str, directory: Path, z: np.ndarray, y: np.ndarray, options,
                  seed: int) -> dict:
  """The stacked modules of `method` for the columns of y: read from `directory` if a previous
  run saved them, else trained (one jit call for all columns) and saved (orbax, atomic)."""
  template = _module_template(method, y.shape[1], z.shape[1], options)
  checkpointer = ocp.StandardCheckpointer()
  if directory.exists():
    return checkpointer.restore(directory.resolve(), template)
  key = jax.random.key(seed)
  common = dict(key=key, steps=options.steps, batch_size=options.batch_size, k=options.k,
                hidden=options.hidden)
  if method == "sae":
    params = srae.train_sae(z, y, **common)
  else:
    params = srae.train_modules(z, y, method=method, beta=options.beta, q=options.q,
                                mse=options.mse, **common)
  checkpointer.save(directory.resolve(), params)
  checkpointer.wait_until_finished()
  return params


def _entropies(histograms: np.ndarray) -> np.ndarray:
  """(F,) the locality entropy of each feature from its (F, M, P) histograms."""
  return np.asarray([float(locality_entropy(h)) for h in histograms])


@EXPERIMENTS.register("srae", description="SRAE x-features of a frozen network's class scores: "
                      "F_reg, locality and Table 1 (runs.srae)")
class SraeProtocol(Protocol):
  """The `srae` experiment (module docstring)."""

  title = "SRAE: a few faithful x-features per class (Qi & Li, Table 1)"
  sections = ("srae",)

  def check(self, config) -> None:
    options = config.srae
    unknown = [m for m in options.methods if m not in COMPARED]
    if unknown or "srae" not in options.methods:
      raise ConfigError(f"srae.methods must include 'srae' and name some of {', '.join(COMPARED)}; "
                        f"got {tuple(options.methods)}.")
    if options.mse not in srae.MSE_MODES:
      raise ConfigError(f"srae.mse must be one of {', '.join(srae.MSE_MODES)}; got "
                        f"{options.mse!r}.")
    config_checks.check_section(options, "srae", RULES)

  def runs(self, config, sources) -> list[Run]:
    # Everything that would fail after the network's training fails here, before it.
    info = sources["train"].info
    chosen_classes(config.srae.classes, info.num_classes, config.seed)
    check_layer(build_model(config, info), np.zeros((1, *info.image_shape), np.float32),
                config.srae.layer)
    record = sources["test"].read_batch(np.arange(1))
    missing = [k for k in PARTS if k not in record]
    if missing:
      raise ConfigError(f"srae's locality needs part annotations; {config.data.name} gives no "
                        f"{', '.join(missing)} (CUB: parts/parts.txt and parts/part_locs.txt).")
    return [Run("network", config, description=f"{config.model.name} on {config.data.name}")]

  # ------------------------------------------------------------------------------------------
  # The analysis.

  def analyse(self, config, run: TrainedRun, sources) -> Analysis:
    options = config.srae
    info = sources["train"].info
    classes = chosen_classes(options.classes, info.num_classes, config.seed)
    variables = run.variables()
    z_fn = features_fn(run.model, options.layer)
    logits = logits_fn(run.model)
    both = jax.jit(lambda v, x: (z_fn(v, x), logits(v, x)))
    data = {split: read_split(sources[split], config.data.normalization)
            for split in ("train", "test")}
    for records in data.values():
      records["z"], records["logits"] = batching.map_batches(
          lambda x: both(variables, x), records["x"], batch_size=config.data.eval_batch_size)
      records["y"] = records["logits"][:, classes]
    z, y = data["train"]["z"], data["train"]["y"]
    print(f"-- Z = {options.layer} ({z.shape[1]} dimensions) and y-hat of {len(classes)} classes "
          f"on {len(z)} train and {len(data['test']['z'])} test images", flush=True)

    modules = {}
    for method in [m for m in TRAINED if m in options.methods]:
      print(f"-- {method}: {len(classes)} modules in one jit call", flush=True)
      modules[method] = train_or_load(method, run.workdir.parent / "modules" / method, z, y,
                                      options, config.seed)
    out = {"test_accuracy": run.trained["test_accuracy"], "classes": classes,
           "class_names": [info.class_names[c] for c in classes], "z_size": int(z.shape[1]),
           "y_hat_std": {split: np.std(data[split]["y"], axis=0).tolist() for split in data},
           "f_reg": {method: {split: np.asarray(srae.f_reg(params, data[split]["z"],
                                                           data[split]["y"])).tolist()
                              for split in data}
                     for method, params in modules.items()}}
    localities, by_class = self._localities(config, run, variables, z_fn, modules, classes,
                                            data["test"])
    out.update(localities)
    return Analysis(out, figures={"by_class": by_class})

  def _localities(self, config, run, variables, z_fn, modules, classes, test
                  ) -> tuple[dict, dict]:
    """Locality and pointing game of every method on each class's test images, and the figure
    data by class (SRAE's maps and contributions; none without an SRAE module)."""
    options = config.srae
    maps_of = _heatmap_functions(run.model, z_fn, options.heatmap_layer)
    locality = {m: [] for m in options.methods if m != "sae" or "sae" in modules}
    pointing = {m: [] for m in locality}
    entropies = {m: [] for m in locality}
    figure = {}
    for i, c in enumerate(classes):
      rows = np.flatnonzero(test["label"] == c)[:options.num_images]
      if len(rows) == 0:
        raise ConfigError(f"class {c} has no test images to measure locality on.")
      print(f"-- c-MWP maps and locality: class {c} ({i + 1} of {len(classes)}), {len(rows)} "
            f"test images", flush=True)
      x = test["x"][rows]
      parts = {k: test[k][rows] for k in PARTS}
      box = np.asarray(box_masks(test["bbox"][rows], *x.shape[1:3]))
      # Every class's images padded (cycled) to num_images, every Z feature list to z_features:
      # the map makers compile once, not once per class; the padding is cut off after.
      padded = x[np.resize(np.arange(len(rows)), options.num_images)]
      maps = {}
      for method, params in modules.items():
        module = jax.tree.map(lambda a, i=i: a[i], params)
        maps[method] = np.asarray(maps_of["xfeatures"](variables, module, padded))[:, :len(x)]
      if "z" in locality:
        dims = np.argsort(-test["z"][rows].mean(0))[:options.z_features]
        dims = dims[test["z"][rows][:, dims].mean(0) > 0]  # a dim that never fires has no map
        maps["z"] = np.asarray(maps_of["z"](variables, padded, jnp.asarray(
            np.resize(dims, options.z_features)))) if len(dims) else np.zeros((1, *padded.shape))
        maps["z"] = maps["z"][:max(len(dims), 1), :len(x)]  # no dim firing: no mass, NaN
      if "excitation_backprop" in locality:
        maps["excitation_backprop"] = np.asarray(
            maps_of["class"](variables, padded, c))[None, :len(x)]
      for method, m in maps.items():
        histograms = np.stack([np.asarray(part_histograms(None, None, x, None, h, **parts))
                               for h in m])
        h_n = _entropies(histograms)
        entropies[method].append(h_n.tolist())
        locality[method].append(float(np.nanmean(h_n)))
        pointing[method].append(float(np.mean([np.mean(np.asarray(pointing_game(
            None, None, x, None, h, mask=box, tolerance=options.pointing_tolerance)))
            for h in m])))
      if "srae" in modules:
        module = orient_module(jax.tree.map(lambda a, i=i: a[i], modules["srae"]))
        contributions = np.asarray(srae.encode_one(module, test["z"][rows])) * np.asarray(
            module["v"])
        figure[c] = {"images": test["image"][rows], "maps": maps["srae"],
                     "contributions": contributions,
                     "class_map": maps.get("excitation_backprop", [None])[0]}
    return {"locality": locality, "pointing_game": pointing, "feature_entropies": entropies,
            "num_parts": int(test["keypoints"].shape[1])}, figure

  # ------------------------------------------------------------------------------------------
  # Reporting.

  def checks(self, config, analysed) -> dict:
    result = analysed["network"]
    mean = {m: float(np.nanmean(v)) for m, v in result["locality"].items()}
    checks = {}
    for other in ("nn", "excitation_backprop"):
      if other in mean:
        checks[f"srae_locality_below_{other}"] = mean["srae"] < mean[other]
    if "nn" in result["f_reg"]:
      ratio = np.mean(result["f_reg"]["srae"]["test"]) / np.mean(result["f_reg"]["nn"]["test"])
      checks["srae_test_f_reg_over_nn"] = float(ratio)
      checks["srae_test_f_reg_within_1.5x_nn"] = bool(ratio <= 1.5)
    return checks

  def tables(self, config, analysed, checks) -> list[str]:
    result = analysed["network"]
    methods = [m for m in COMPARED if m in result["locality"]]
    paper = config.srae.paper.to_dict()
    std = {split: np.mean(v) for split, v in result["y_hat_std"].items()}

    def cell(method, row):
      if row in ("train", "test"):
        values = result["f_reg"].get(method, {}).get(row)
      else:
        values = result[row].get(method)
      return "—" if values is None else f"{np.nanmean(values):.4f}"

    lines = ["| | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for label, row, key in (("F_reg train", "train", "f_reg_train"),
                            ("F_reg test", "test", "f_reg_test"),
                            ("Locality ↓", "locality", "locality"),
                            ("Pointing game ↑", "pointing_game", None)):
      ours = [cell(m, row) for m in methods]
      lines.append(f"| {label} | " + " | ".join(ours) + " |")
      if key is not None:
        theirs = [("—" if paper.get(key, {}).get(m) is None else f"{paper[key][m]:.4f}")
                  for m in methods]
        lines.append(f"| {label}, paper | " + " | ".join(theirs) + " |")
    main = (f"## Table 1: F_reg, locality and the pointing game\n\nThe network ({config.model.name}"
            f", test accuracy {result['test_accuracy']:.3f}); Z = `{config.srae.layer}` "
            f"({result['z_size']} dimensions); {len(result['classes'])} classes, one module per "
            f"class and method ({config.srae.k} x-features, MSE_k by "
            f"{'running average' if config.srae.mse == 'ema' else 'batch estimate'}); means over "
            f"the classes. F_reg is in the units of y-hat, whose standard deviation is "
            f"{std['train']:.3f} (train) and {std['test']:.3f} (test) here (the paper's: not "
            f"given). Locality (nats, lower is more local; log P = "
            f"{np.log(result['num_parts']):.2f} for evenly spread maps) and the pointing game "
            f"(box, tolerance "
            f"{config.srae.pointing_tolerance} px) on up to {config.srae.num_images} test images "
            f"per class.\n\n" + "\n".join(lines) + "\n")
    rows = ["| class | " + " | ".join(f"{m} locality" for m in methods) +
            " | SRAE F_reg test | NN F_reg test | y-hat std test |",
            "|---|" + "---|" * (len(methods) + 3)]
    for i, name in enumerate(result["class_names"]):
      f_reg = [f"{result['f_reg'][m]['test'][i]:.4f}" if m in result["f_reg"] else "—"
               for m in ("srae", "nn")]
      rows.append(f"| {name} | " + " | ".join(f"{result['locality'][m][i]:.3f}" for m in methods)
                  + f" | {' | '.join(f_reg)} | {result['y_hat_std']['test'][i]:.3f} |")
    per_class = "## Per class\n\n" + "\n".join(rows) + "\n"
    return [main, per_class]

  def figures(self, config, analyses, sources, directory: Path) -> None:
    figure, result = analyses["network"].figures["by_class"], analyses["network"].results
    if not figure:
      return
    names = dict(zip(result["classes"], result["class_names"]))
    shown = config.srae.figure_images
    images, maps, labels = [], [], []
    for c, f in figure.items():  # Fig. 2: each class's most important x-feature
      n = int(np.argmax(f["contributions"].mean(0)))
      top = np.argsort(-f["contributions"][:, n])[:shown]
      images.append(f["images"][top])
      maps.append(f["maps"][n][top].sum(-1))
      labels += [f"{names[c]}: x{n + 1}, vE={f['contributions'][j, n]:.2f}" for j in top]
    plot_explanations(np.concatenate(images), {"most important x-feature": np.concatenate(maps)},
                      directory / "fig2_important_xfeatures.png", labels=labels)
    c, f = next(iter(figure.items()))  # Fig. 1(b): one class, every x-feature beside c-MWP
    heatmaps = {} if f["class_map"] is None else {"c-MWP of y-hat": f["class_map"][:shown]}
    for n in range(f["maps"].shape[0]):
      heatmaps[f"x{n + 1} (mean vE {f['contributions'][:, n].mean():.2f})"] = f["maps"][n][:shown]
    plot_explanations(f["images"][:shown], {k: v.sum(-1) if v.ndim == 4 else v
                                            for k, v in heatmaps.items()},
                      directory / "fig1b_xfeatures.png",
                      labels=[names[c]] * min(shown, len(f["images"])))

  def summary(self, config, analysed, checks) -> dict:
    result = analysed["network"]
    return {"network_test_accuracy": result["test_accuracy"],
            **{f"{m}_locality": float(np.nanmean(v)) for m, v in result["locality"].items()},
            **{f"{m}_f_reg_test": float(np.mean(v["test"])) for m, v in result["f_reg"].items()},
            **checks}


def _heatmap_functions(model, z_fn, layer) -> dict:
  """The three jitted c-MWP map makers: a module's x-features, chosen dimensions of Z, a class."""
  contrastive = dict(contrastive=True, layer=layer)

  @jax.jit
  def xfeatures(variables, module, x):
    return xfeature_heatmaps(z_fn, variables, module, x, **contrastive)

  @jax.jit
  def z_dims(variables, x, dims):
    def one(d):
      return excitation_backprop(z_fn, variables, x, jnp.full((x.shape[0],), d), **contrastive)
    return jax.vmap(one)(dims)

  @jax.jit
  def one_class(variables, x, c):
    return excitation_backprop(logits_fn(model), variables, x, jnp.full((x.shape[0],), c),
                               **contrastive)

  return {"xfeatures": xfeatures, "z": z_dims, "class": one_class}
