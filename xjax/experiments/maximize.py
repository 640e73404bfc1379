"""Interpretation and explanation of the DSP 2018 tutorial CNN: prototypes and heatmaps.

Montavon, Samek, Mueller, "Methods for interpreting and understanding deep neural networks"
(DSP 2018): Sec. 3 finds class prototypes by activation maximization under three priors, Sec. 4
explains single decisions (sensitivity analysis, simple Taylor decomposition, LRP alpha-beta).
The paper has no numeric tables, only MNIST figures; this protocol reproduces the figures and adds
the numbers that test what they show:

  runs          classifier: the heatmapping.org tutorial CNN (sum pooling, inputs in [-1, 1],
                MNIST padded to 32x32); expert: a Gaussian RBM, log p(x) = -F(x) + const
                (Eq. 3.2's density); generator: an adversarial autoencoder's decoder, codes
                z ~ N(0, I) (Eq. 3.3). Each is an ordinary resumable training run.
  prototypes    every class by each prior in one vmapped optimization (`xjax.explain.maximize`);
                per prototype: the classifier's probability of its class, the expert's
                log-density (up to the RBM's constant), and the distance to the nearest training
                image of that class (how natural it is).
  explanations  each method of `explain.methods` on the same test digits (Figs. 4.2 / 4.3 of the
                report), and pixel flipping (`xjax.metrics.pixel_flipping`) over
                `explain.num_flipping` test digits: the explained logit as the most relevant
                pixels are flipped first; a smaller area means the heatmap found the evidence.
  figures       prototypes.png (Fig. 3.1's comparison), explanations.png, pixel_flipping.png.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from xjax.data import pipeline
from xjax.errors import ConfigError
from xjax.experiments.explain import method_key, run_method
from xjax.experiments.loading import read_split
from xjax.experiments.protocol import Analysis, Protocol, Run, TrainedRun
from xjax.experiments.registry import EXPERIMENTS
from xjax.experiments.runner import copy_config
from xjax.explain.maximize import PRIORS, maximize
from xjax.explain.methods import canonical_spec, get_method
from xjax.metrics.pixel_flipping import BASELINES, pixel_flipping
from xjax.nn.registry import logits_fn
from xjax.plot.heatmaps import plot_explanations
from xjax.plot.maximize import plot_prototypes
from xjax.plot.metrics import plot_flipping_curves
from xjax.registry import Check, in_range, non_negative
from xjax.train import config_checks, report

RUNS = ("classifier", "expert", "generator")
RANDOM = "random"  # the pixel-flipping reference: a random order of the pixels

# The settings of `maximize` and `explain` (`MaximizeProtocol.check`, before any data loads).
MAXIMIZE_RULES = {
    "steps": config_checks.counts,
    "num_starts": config_checks.counts,
    # optax.adam(learning_rate) moves every pixel (or code) by about the learning rate per step
    # whatever the gradient's scale (m / sqrt(v) is about +-1), and the pixels span [-1, 1] (the
    # box constraints) and the codes are N(0, I): a step above 1 crosses that range, and at 1e12
    # the first step throws every pixel to a corner of the box. <= 0 would not ascend.
    "learning_rate": (in_range(0, 1, include_low=False),
                      "Adam moves each pixel or code by about the learning rate per step and "
                      "both span about [-1, 1]: a larger step crosses that at once; <= 0 would "
                      "descend"),
    "init_scale": non_negative,
    "box_constraints": config_checks.boolean,
    "tv_weight": non_negative,
    "jitter": (config_checks.integer(0), "pixels"),
    "classes": config_checks.optional(config_checks.sequence(config_checks.integer(0))),
}
LAMBDAS = Check(lambda v: isinstance(v, (list, tuple)), "a list of lambdas")
EXPLAIN_RULES = {
    "num_figure_examples": config_checks.counts,
    "num_flipping": config_checks.counts,
    "flipping_steps": config_checks.counts,
    "flipping_fraction": in_range(0, 1, include_low=False),
    "flipping_baseline": Check(lambda v: v in BASELINES or config_checks.finite(v),
                               f"a finite number or one of {', '.join(BASELINES)}"),
    "batch_size": config_checks.counts,
    "methods": config_checks.sequence(config_checks.name),
}


def nearest_distances(prototypes: np.ndarray, classes: np.ndarray, images: np.ndarray,
                      labels: np.ndarray) -> np.ndarray:
  """For each prototype, the Euclidean distance to the nearest image of its own class."""
  flat = images.reshape(len(images), -1).astype(np.float64)
  distances = []
  for prototype, c in zip(prototypes.reshape(len(prototypes), -1), classes):
    same = flat[labels == c]
    squared = np.sum(np.square(same), 1) - 2 * same @ prototype + np.sum(np.square(prototype))
    distances.append(float(np.sqrt(max(squared.min(), 0.0))))
  return np.asarray(distances)


def module_config(config: ml_collections.ConfigDict, part: str) -> ml_collections.ConfigDict:
  """The training config of the expert or the generator: the experiment's data, its own model,
  loss terms, optimizer settings and epochs (`maximize.<part>`)."""
  spec = config.maximize[part]
  c = copy_config(config, name=f"{config.name}/{part}")
  c.model = ml_collections.ConfigDict(spec.model.to_dict())
  c.losses = ml_collections.ConfigDict(spec.losses.to_dict())
  c.optimizer.update(spec.optimizer.to_dict())
  c.train.epochs = spec.epochs
  return c


@EXPERIMENTS.register("maximize")
class MaximizeProtocol(Protocol):
  """Prototypes by three priors and explanations by five methods (module docstring)."""

  title = "activation maximization and explanations (Montavon, Samek, Mueller, DSP 2018)"
  sections = ("maximize", "explain")

  def __init__(self):
    self._trained: dict[str, TrainedRun] = {}
    self._analysis: dict = {}

  def check(self, config) -> None:
    config_checks.check_section(config.maximize, "maximize", MAXIMIZE_RULES)
    config_checks.check_section(config.explain, "explain", EXPLAIN_RULES)
    for part in ("expert", "generator"):  # the two runs' own settings (`module_config`)
      spec, prefix = config.maximize[part], f"maximize.{part}"
      config_checks.check_model(spec.model, f"{prefix}.model")
      config_checks.check_losses(spec.losses, f"{prefix}.losses")
      config_checks.check_optimizer({**config.optimizer.to_dict(), **spec.optimizer.to_dict()},
                                    f"{prefix}.optimizer")  # on the experiment's, as it trains
      config_checks.check_value(f"{prefix}.epochs", spec.epochs, config_checks.counts)
    for prior, weight in config.maximize.weights.items():
      config_checks.check_value(f"maximize.weights.{prior}", weight,
                                (non_negative, "the prior's lambda"))
    unknown = [p for p in config.maximize.priors if p not in PRIORS]
    if unknown or not config.maximize.priors:
      raise ConfigError(f"maximize.priors must name some of {', '.join(PRIORS)}; got "
                        f"{tuple(config.maximize.priors)}.")
    missing = [p for p in config.maximize.priors if p not in config.maximize.weights]
    if missing:
      raise ConfigError(f"maximize.weights has no lambda for prior(s) {', '.join(missing)}.")
    unknown = [p for p in config.maximize.sweep if p not in PRIORS]
    if unknown:
      raise ConfigError(f"maximize.sweep names unknown prior(s) {', '.join(unknown)}; expected "
                        f"some of {', '.join(PRIORS)}.")
    for prior, weights in config.maximize.sweep.items():
      config_checks.check_value(f"maximize.sweep.{prior}", weights, LAMBDAS)
    negative = [f"{p}={w}" for p, ws in config.maximize.sweep.items() for w in ws
                if not non_negative(w)]
    if negative:
      raise ConfigError(f"maximize.sweep lambdas must be >= 0; got {', '.join(negative)}.")
    for spec in config.explain.methods:
      canonical_spec(spec)  # an unknown method fails now, not after three trainings

  def runs(self, config, sources) -> list[Run]:
    return [Run("classifier", copy_config(config, name=f"{config.name}/classifier"),
                description=f"{config.model.name} on {config.data.name}"),
            Run("expert", module_config(config, "expert"),
                description=f"the density expert, {config.maximize.expert.model.name}"),
            Run("generator", module_config(config, "generator"),
                description=f"the generator, {config.maximize.generator.model.name}")]

  def analyse(self, config, run: TrainedRun, sources) -> Analysis:
    # The prototypes need all three runs: they are computed once the last one has trained,
    # reported at the top level of results.json (`header`), and their figure data is that last
    # run's `Analysis.figures`.
    self._trained[run.name] = run
    result = {"test_loss": run.trained["test_loss"], "epochs": run.trained["epochs_completed"]}
    if run.name == "classifier":
      result["test_accuracy"] = run.trained["test_accuracy"]
    return Analysis(result, self._analyse(config, sources) if run.name == RUNS[-1] else {})

  # ------------------------------------------------------------------------------------------
  # The analysis.

  def _analyse(self, config, sources) -> dict:
    """The prototypes and explanations: their numbers into `self._analysis` (results.json's top
    level), their arrays returned (the figures')."""
    classifier = self._trained["classifier"]
    variables = classifier.variables()
    apply_fn = logits_fn(classifier.model)
    info = sources["train"].info
    low, high = pipeline.input_bounds(info, config.data.normalization)
    train = read_split(sources["train"], config.data.normalization)
    train_x, train_labels = train["x"], train["label"]
    prototypes, found = self._prototypes(config, apply_fn, variables, info, train_x, train_labels,
                                         (float(np.min(low)), float(np.max(high))))
    explanations = self._explanations(config, apply_fn, variables, sources["test"], (low, high))
    self._analysis = {"prototypes": prototypes, "explanations": explanations["numbers"]}
    return {"prototypes": found, "class_names": info.class_names
            or tuple(str(c) for c in range(info.num_classes)), **explanations["arrays"]}

  def _prototypes(self, config, apply_fn, variables, info, train_x, train_labels, box):
    cfg = config.maximize
    expert_run, generator_run = self._trained["expert"], self._trained["generator"]
    expert_variables, generator_variables = expert_run.variables(), generator_run.variables()
    expert = jax.jit(lambda x: expert_run.model.apply(expert_variables, x, method="log_prob"))
    generator = lambda z: generator_run.model.apply(generator_variables, z, method="decode")
    classes = np.arange(info.num_classes) if cfg.classes is None else np.asarray(cfg.classes)

    def prototypes(prior: str, weight: float) -> tuple[dict, np.ndarray]:
      result = maximize(
          apply_fn, variables, classes, input_shape=info.image_shape,
          key=jax.random.key(config.seed), prior=prior, weight=weight, expert=expert,
          generator=generator, code_shape=(generator_run.model.code_size,), steps=cfg.steps,
          optimizer=optax.adam(cfg.learning_rate), num_starts=cfg.num_starts,
          init_scale=cfg.init_scale, bounds=box if cfg.box_constraints else None,
          tv_weight=cfg.tv_weight, jitter=cfg.jitter)
      x = result.x
      probabilities = np.asarray(jax.nn.softmax(apply_fn(variables, x)))[np.arange(len(x)),
                                                                          classes]
      log_density = np.asarray(expert(jnp.asarray(x)))
      distance = nearest_distances(x, classes, train_x, train_labels)
      return {"weight": weight, "probability": probabilities.tolist(),
              "log_density": log_density.tolist(), "nearest_distance": distance.tolist(),
              "objective": result.objective.tolist(),
              "min_probability": float(probabilities.min()),
              "mean_probability": float(probabilities.mean()),
              "mean_log_density": float(log_density.mean()),
              "mean_nearest_distance": float(distance.mean())}, x

    numbers, found = {}, {}
    for prior in cfg.priors:
      numbers[prior], found[prior] = prototypes(prior, float(cfg.weights[prior]))
    # lambda is the paper's free parameter (Eqs. 3.1-3.3 give none): the trade-off between the
    # class probability and how natural the prototype is, measured at each swept value.
    summary = ("weight", "min_probability", "mean_probability", "mean_log_density",
               "mean_nearest_distance")
    numbers["sweep"] = {
        prior: [{k: prototypes(prior, float(w))[0][k] for k in summary} for w in weights]
        for prior, weights in cfg.sweep.items() if prior in cfg.priors}
    numbers["classes"] = classes.tolist()
    return numbers, found

  def _explanations(self, config, apply_fn, variables, source, bounds) -> dict:
    cfg = config.explain
    n = min(max(cfg.num_flipping, cfg.num_figure_examples), len(source))
    records = read_split(source, config.data.normalization, n)
    x, labels = records["x"], records["label"]
    targets = labels.astype(np.int32)
    flip = jax.jit(functools.partial(
        pixel_flipping, apply_fn, steps=cfg.flipping_steps, fraction=cfg.flipping_fraction,
        baseline=cfg.flipping_baseline, key=jax.random.key(config.seed),
        max_batch=cfg.batch_size * 4))
    numbers, heatmaps, curves, areas, relevances = {}, {}, {}, {}, {}
    for spec in cfg.methods:
      method = get_method(spec, bounds=bounds)
      relevance, compile_seconds, seconds = run_method(method, apply_fn, variables, x, targets,
                                                       cfg.batch_size)
      relevances[spec] = (relevance, compile_seconds, seconds)
    random = np.random.default_rng(config.seed).random(x.shape).astype(np.float32)
    relevances[RANDOM] = (random, 0.0, 0.0)
    for spec, (relevance, compile_seconds, seconds) in relevances.items():
      flipped = flip(variables, x[:cfg.num_flipping], targets[:cfg.num_flipping],
                     relevance[:cfg.num_flipping])
      fractions = np.asarray(flipped.fractions)
      curves[spec] = np.asarray(flipped.curves).mean(0)
      areas[spec] = float(np.mean(flipped.area))
      numbers[spec] = {"flipping_area": areas[spec],
                       "flipping_area_std": float(np.std(flipped.area)),
                       "compile_seconds": compile_seconds, "seconds_per_image": seconds}
      if spec != RANDOM:
        heatmaps[spec] = relevance[:cfg.num_figure_examples].sum(-1)
    logits = np.asarray(apply_fn(variables, x[:cfg.num_flipping]))
    return {"numbers": {"methods": numbers, "num_flipping": int(min(n, cfg.num_flipping)),
                        "flipping_steps": cfg.flipping_steps,
                        "flipping_baseline": cfg.flipping_baseline,
                        "mean_explained_logit": float(np.mean(logits[np.arange(len(logits)),
                                                                     targets[:len(logits)]]))},
            "arrays": {"images": x[:cfg.num_figure_examples],
                       "labels": labels[:cfg.num_figure_examples], "heatmaps": heatmaps,
                       "fractions": fractions, "curves": curves, "areas": areas}}

  # ------------------------------------------------------------------------------------------
  # Reports.

  def header(self, config, analysed) -> dict:
    return {"name": config.name, **self._analysis}

  def checks(self, config, analysed) -> dict:
    prototypes = self._analysis["prototypes"]
    methods = self._analysis["explanations"]["methods"]
    priors = list(config.maximize.priors)
    checks = {f"min_probability_{p}": prototypes[p]["min_probability"] for p in priors}
    checks["all_prototypes_at_least_0.9"] = all(
        prototypes[p]["min_probability"] >= 0.9 for p in priors)
    for p in priors:
      checks[f"mean_nearest_distance_{p}"] = prototypes[p]["mean_nearest_distance"]
    for p in ("expert", "code"):
      if p in priors and "l2" in priors:
        checks[f"{p}_more_natural_than_l2"] = (prototypes[p]["mean_nearest_distance"]
                                               < prototypes["l2"]["mean_nearest_distance"])
    for spec, v in methods.items():
      checks[f"flipping_area_{method_key(spec)}"] = v["flipping_area"]
    alpha_beta = [s for s in methods if s in ("lrp:alpha1_beta0", "lrp:alpha2_beta1")]
    if alpha_beta and "sensitivity" in methods:
      checks["lrp_alpha_beta_below_sensitivity"] = (
          min(methods[s]["flipping_area"] for s in alpha_beta)
          < methods["sensitivity"]["flipping_area"])
    return checks

  def tables(self, config, analysed, checks) -> list[str]:
    prototypes = self._analysis["prototypes"]
    explained = self._analysis["explanations"]
    classifier = analysed["classifier"]
    rows = [[p, prototypes[p]["min_probability"], prototypes[p]["mean_probability"],
             prototypes[p]["mean_log_density"], prototypes[p]["mean_nearest_distance"]]
            for p in config.maximize.priors]
    per_class = [[c, *[f"{prototypes[p]['probability'][i]:.3f} / "
                       f"{prototypes[p]['nearest_distance'][i]:.2f}"
                       for p in config.maximize.priors]]
                 for i, c in enumerate(prototypes["classes"])]
    methods = [[spec, v["flipping_area"], v["flipping_area_std"], 1e3 * v["seconds_per_image"]]
               for spec, v in explained["methods"].items()]
    sweep = [[prior, row["weight"], row["min_probability"], row["mean_probability"],
              row["mean_log_density"], row["mean_nearest_distance"]]
             for prior, swept in prototypes["sweep"].items() for row in swept]
    return [
        f"Classifier {config.model.name} on {config.data.name}: test accuracy "
        f"{classifier['test_accuracy']:.4f}. The paper (DSP 2018) has figures only; the numbers "
        f"below test what its Fig. 3.1 and Sec. 4 show.",
        "## Prototypes (Sec. 3, Eqs. 3.1-3.3)\n\n"
        f"{config.maximize.steps} Adam steps ({config.maximize.learning_rate}), lambdas "
        f"{dict(config.maximize.weights)}. Log-density: the expert's -F(x), up to its constant. "
        "Distance: to the nearest training image of the class (lower is more natural).\n\n"
        + report.markdown_table(["prior", "min p(class)", "mean p(class)", "mean log-density",
                                 "mean distance to nearest"], rows)
        + "\n\nPer class, p(class) / distance to the nearest training image:\n\n"
        + report.markdown_table(["class", *config.maximize.priors], per_class)
        + ("\n\nThe same at other lambdas (the papers give none):\n\n"
           + report.markdown_table(["prior", "lambda", "min p(class)", "mean p(class)",
                                    "mean log-density", "mean distance to nearest"], sweep)
           if sweep else ""),
        "## Pixel flipping (Sec. 4; Samek et al. 2017)\n\n"
        f"{explained['num_flipping']} test images, each explained for its label; "
        f"{explained['flipping_steps']} steps of flipping the most relevant pixels first to "
        f"{explained['flipping_baseline']!r}; area under the mean logit curve (lower: the "
        f"heatmap found the evidence faster). Mean explained logit before flipping: "
        f"{explained['mean_explained_logit']:.3f}. `{RANDOM}`: pixels in random order.\n\n"
        + report.markdown_table(["method", "area", "std over images", "ms / image"], methods)]

  def figures(self, config, analyses, sources, directory: Path) -> None:
    arrays = analyses[RUNS[-1]].figures
    class_names = [arrays["class_names"][c] for c in self._analysis["prototypes"]["classes"]]
    captions = {p: [f"p={q:.2f}" for q in self._analysis["prototypes"][p]["probability"]]
                for p in config.maximize.priors}
    plot_prototypes(arrays["prototypes"], directory / "prototypes.png", class_names=class_names,
                    captions=captions)
    plot_explanations(arrays["images"], arrays["heatmaps"], directory / "explanations.png",
                      labels=[f"label {int(c)}" for c in arrays["labels"]])
    plot_flipping_curves(arrays["fractions"], arrays["curves"], directory / "pixel_flipping.png",
                         areas=arrays["areas"], ylabel="logit of the explained class",
                         title=f"{config.data.name}: pixel flipping, most relevant first")

  def summary(self, config, analysed, checks) -> dict:
    return {"classifier_test_accuracy": analysed["classifier"]["test_accuracy"], **checks}
