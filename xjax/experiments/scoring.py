"""Every method scored by every metric on the same examples: the table of `runs.evaluate`.

`score_methods(apply_fn, variables, x, targets, methods, metrics, ground_truth=...)` explains the
examples with each method (one compiled call per method, in batches), then scores each
explanation with each metric of `xjax.metrics`. A metric is compiled once and reused for every
method whose relevance it scores (the relevance is an argument, not a constant), so the cost of
compilation grows with the number of metrics, not with methods x metrics; only the metrics that
re-run the method (sensitivity, randomisation) compile once per method.

What a metric needs beyond `(apply_fn, params, x, target, relevance)` is read from its
signature and filled in here:

  mask          the ground truth of the localisation metrics: `ground_truth["mask"]`, one (H, W)
                mask per example; a metric that needs it on data without masks is a ConfigError
  key           a PRNG key (noise, random subsets, random weights): `seed`, the same in every batch
  explain       the method itself, `explain(params, x, target)`, for the metrics that re-run it
  num_classes   the model's number of outputs (`random_logit`)

Each metric's result becomes per-example score columns (`score_columns`), as the metric
declared when it registered (`score` and `curves`, see `xjax.metrics.registry`): the metric's
name for its score (an array metric's value; the `area` of the curve metrics; the
`insertion_area` of insertion / deletion; the similarity after the last randomisation step) and
`<metric>.<field>` for its other per-example (B,) fields, those its result's `EXAMPLE_AXES`
names (e.g. `region_perturbation.aopc`, `insertion_deletion.deletion_area`). Its curves
(`curves`, `insertion`, `deletion`, the randomisation's similarity per step) are kept per example
for the figures.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xjax.data import batching, sharding
from xjax.errors import ConfigError
from xjax.metrics import METRICS, get_metric
from xjax.metrics.relevance import checked_relevance, token_relevance

# What `score_methods` fills in, with the stand-ins that pass the registry's checks of a plan.
FILLED = {"mask": None, "key": None, "explain": lambda params, x, target: x, "num_classes": 2}


@dataclasses.dataclass
class MetricPlan:
  """A metric with its options, and what this module fills in (see the module docstring)."""

  name: str
  options: dict[str, Any]
  needs: tuple[str, ...]  # of "mask", "key", "explain", "num_classes"

  @property
  def reruns_method(self) -> bool:
    return "explain" in self.needs


def plan_metrics(metrics: Sequence[str] | Mapping[str, Mapping[str, Any]]) -> list[MetricPlan]:
  """Metric names (or name -> options) as checked plans, in the order of the registry
  (faithfulness, axiomatic, randomisation, robustness, localisation, complexity), whatever the
  order given (a config's dict may sort its keys).

  Raises:
    ConfigError: no metric, an unknown name, or an option the metric does not take (checked by
      `get_metric` before any model runs).
  """
  items = (list(metrics.items()) if isinstance(metrics, Mapping)
           else [(name, {}) for name in metrics])
  if not items:
    raise ConfigError(f"No metrics given; known metrics: {', '.join(METRICS)}.")
  order = {name: i for i, name in enumerate(METRICS)}
  items.sort(key=lambda item: order.get(item[0], len(order)))  # unknown names fail below
  plans = []
  for name, options in items:
    options = dict(options or {})
    metric = METRICS[name]  # an unknown name fails here, listing the known ones
    parameters = inspect.signature(metric).parameters
    needs = tuple(need for need in FILLED if need in parameters and need not in options)
    # The registry's checks of the options, with stand-ins for what is filled in later.
    get_metric(name, **options, **{need: FILLED[need] for need in needs})
    plans.append(MetricPlan(name, options, needs))
  return plans


def score_columns(name: str, result: Any) -> tuple[dict[str, Any], dict[str, Any]]:
  """(columns, curves) of one metric's result: per-example scores and per-example curves.

  Which field is the score and which are curves is what the metric registered (`score`,
  `curves`); a result without fields is its own score. A field whose examples are not on its
  first axis (the result's `EXAMPLE_AXES`, e.g. the randomisation's (steps, B) similarity) is
  moved there. A score that is a curve is scored by its last point (the similarity once every
  layer is randomised). The curves come with "fractions", their x axis (the result's
  `fractions`, the perturbed fraction; without one, the step 1, 2, ...), broadcast to one row
  per example so that it passes through `map_batches`.

  Raises:
    ValueError: the metric registered a score or curve field its result does not have.
  """
  about = METRICS.metadata(name)
  main, curve_fields = about.get("score"), tuple(about.get("curves", ()))
  if not hasattr(result, "_fields"):
    return {name: result}, {}
  fields = result._asdict()
  if any(field not in fields for field in (main, *curve_fields)):
    raise ValueError(f"metric {name!r} registered score={main!r} and curves={curve_fields}, but "
                     f"its result {type(result).__name__} has the fields {', '.join(fields)}.")
  axes = getattr(result, "EXAMPLE_AXES", {})
  per_example = {field: jnp.moveaxis(value, axes[field], 0) if axes.get(field, 0) else value
                 for field, value in fields.items() if field in axes or field in curve_fields}
  score = per_example.get(main, fields[main])
  columns = {name: score[:, -1] if main in curve_fields else score}
  curves = {field: per_example[field] for field in curve_fields}
  for field, value in per_example.items():
    if field != main and field not in curve_fields and np.ndim(value) == 1:
      columns[f"{name}.{field}"] = value
  if curves:
    first = next(iter(curves.values()))
    batch, steps = first.shape[:2]
    x_axis = (fields["fractions"] if "fractions" in fields
              else jnp.arange(1, steps + 1, dtype=first.dtype))
    curves["fractions"] = jnp.broadcast_to(x_axis, (batch, *np.shape(x_axis)))
  return columns, curves


@dataclasses.dataclass
class MethodScores:
  """One method's explanations and scores on the examples (arrays over the N examples)."""

  relevance: np.ndarray  # (N, H, W, C)
  columns: dict[str, np.ndarray]  # score column -> (N,)
  curves: dict[str, dict[str, np.ndarray]]  # metric -> curve field -> (N, steps + 1)
  compile_seconds: float
  seconds_per_image: float
  metric_seconds: dict[str, float]


def _bound_metric(plan: MetricPlan, apply_fn: Callable, method: Callable | None,
                  num_classes: int, seed: int) -> Callable:
  """`fn(params, x, target, relevance, mask) -> (columns, curves)` with the plan's extras bound."""
  extras = {}
  if "key" in plan.needs:
    extras["key"] = jax.random.key(seed)
  if "num_classes" in plan.needs:
    extras["num_classes"] = num_classes
  if "explain" in plan.needs:
    extras["explain"] = lambda params, x, target: method(apply_fn, params, x, target)
  metric = functools.partial(METRICS[plan.name], apply_fn, **plan.options, **extras)

  def scored(params, x, target, relevance, mask):
    kwargs = {"mask": mask} if "mask" in plan.needs else {}
    return score_columns(plan.name, metric(params, x, target, relevance, **kwargs))

  return jax.jit(scored)


@dataclasses.dataclass
class ChunkScores:
  """One method's explanations and scores on a run of consecutive examples."""

  relevance: np.ndarray  # (n, H, W, C) or (n, T, D)
  columns: dict[str, np.ndarray]  # score column -> (n,)
  curves: dict[str, dict[str, np.ndarray]]  # metric -> curve field -> (n, steps + 1)


class Scorer:
  """Every method and metric compiled once, then run on any number of runs ("chunks") of
  examples split into batches of one size over the devices (`xjax.data.batching.BatchPlan`).

  `score(plan, x, targets, mask)` explains the examples of `plan` with each method and scores
  each explanation with each metric: `{spec: ChunkScores}`. `x` and `mask` are this process's
  rows (`plan.local_indices()`), `targets` all of the plan's. The scorer keeps the seconds each
  method and metric took (`compile_seconds`, `method_seconds`, `metric_seconds`) over all
  chunks, and each curve metric's x axis (`fractions`).

  Raises (from `score`):
    ConfigError: a method whose relevance holds NaN or infinity (naming the method).
  """

  def __init__(self, apply_fn: Callable, variables: Any, methods: Mapping[str, Callable],
               metrics: Sequence[MetricPlan], *, num_classes: int, seed: int = 0):
    self.apply_fn, self.variables, self.methods = apply_fn, variables, dict(methods)
    self.metrics, self.num_classes, self.seed = list(metrics), num_classes, seed
    self._explain: dict[str, Callable] = {}
    self._metric: dict[tuple[str, str], Callable] = {}
    self._placed = None  # the variables on every device of the mesh (placed at the first chunk)
    self.compile_seconds = {spec: 0.0 for spec in self.methods}
    self.method_seconds = {spec: 0.0 for spec in self.methods}
    self.metric_seconds = {spec: {p.name: 0.0 for p in self.metrics} for spec in self.methods}
    self.fractions: dict[str, np.ndarray] = {}

  def _metric_fn(self, spec: str, plan: MetricPlan) -> Callable:
    # A metric that does not re-run the method is compiled once, for every method.
    key = (spec if plan.reruns_method else "", plan.name)
    if key not in self._metric:
      self._metric[key] = _bound_metric(plan, self.apply_fn, self.methods[spec],
                                        self.num_classes, self.seed)
    return self._metric[key]

  def explain(self, spec: str, batches: batching.BatchPlan, x: np.ndarray,
              targets: np.ndarray) -> np.ndarray:
    """One method's relevance of the plan's examples (whole, in every process)."""
    if self._placed is None:  # one copy of the variables on the devices, for every function
      self._placed = jax.device_put(self.variables, sharding.replicated(batches.mesh))
    if spec not in self._explain:
      method = self.methods[spec]
      self._explain[spec], seconds = batches.compile(
          lambda p, xb, tb: method(self.apply_fn, p, xb, tb), self._placed, x[:1],
          targets[:1])
      self.compile_seconds[spec] += seconds
    started = time.perf_counter()
    relevance = batches.map(self._explain[spec], x, batches.local(targets))
    self.method_seconds[spec] += time.perf_counter() - started
    try:  # all of it, in every process, so that all of them stop on a NaN
      shaped = np.broadcast_to(x[:1], (len(relevance), *x.shape[1:]))
      (token_relevance if x.ndim == 3 else checked_relevance)(shaped, relevance)
    except ConfigError as e:
      raise ConfigError(f"method {spec}: {e}") from None
    return relevance

  def score(self, batches: batching.BatchPlan, x: np.ndarray, targets: np.ndarray,
            mask: np.ndarray) -> dict[str, ChunkScores]:
    """Every method's relevance and scores on the plan's examples (class docstring)."""
    local_targets = batches.local(targets)
    out = {}
    for spec in self.methods:
      relevance = self.explain(spec, batches, x, targets)
      local_relevance = batches.local(relevance)
      columns, curves = {}, {}
      for plan in self.metrics:
        fn = self._metric_fn(spec, plan)
        started = time.perf_counter()
        out_columns, out_curves = batches.map(
            lambda xb, tb, rb, mb, fn=fn: fn(self._placed, xb, tb, rb, mb), x, local_targets,
            local_relevance, mask)
        self.metric_seconds[spec][plan.name] += time.perf_counter() - started
        columns.update(out_columns)
        if out_curves:
          # Every row of "fractions" is the same x axis, broadcast to pass through the batches.
          self.fractions[plan.name] = out_curves.pop("fractions")[0]
          curves[plan.name] = out_curves
      out[spec] = ChunkScores(relevance, columns, curves)
    return out


def check_targets(targets: np.ndarray, num_classes: int) -> np.ndarray:
  """`targets` as int32, or a ConfigError when one is not a class of the model."""
  targets = np.asarray(targets, np.int32)
  if targets.min() < 0 or targets.max() >= num_classes:
    raise ConfigError(f"targets must be classes in [0, {num_classes}); got values in "
                      f"[{targets.min()}, {targets.max()}].")
  return targets


def check_masks(metrics: Sequence[MetricPlan], has_masks: bool) -> None:
  """A ConfigError when a metric needs ground-truth masks and the data have none."""
  missing = [plan.name for plan in metrics if "mask" in plan.needs]
  if missing and not has_masks:
    raise ConfigError(f"the metrics {', '.join(missing)} need ground-truth masks (mask=), and "
                      f"these data have none; choose others or data with masks (e.g. shapes).")


def score_methods(apply_fn: Callable, variables: Any, x: np.ndarray, targets: np.ndarray,
                  methods: Mapping[str, Callable], metrics: Sequence[MetricPlan], *,
                  ground_truth: Mapping[str, np.ndarray] | None = None, batch_size: int = 32,
                  seed: int = 0, log: Callable[[str], None] = print
                  ) -> tuple[dict[str, MethodScores], dict[str, np.ndarray]]:
  """Explains `x` with every method and scores every explanation with every metric, in
  batches split over every device (`Scorer` on one chunk holding every example).

  Args:
    apply_fn, variables: the model, `apply_fn(variables, x) -> (N, C)` logits.
    x: (N, H, W, C) the inputs as the model takes them, or token embeddings (N, T, D).
    targets: (N,) the explained classes.
    methods: spec -> method (`xjax.explain.methods.get_method`).
    metrics: `plan_metrics(...)`.
    ground_truth: {"mask": (N, H, W)} (or (N, T) for tokens) where the data has masks.
    batch_size: examples per compiled call (methods and metrics), rounded up to a multiple of
      the devices.
    seed: the key of the metrics that draw noise, subsets or weights.
    log: where one line per method goes.

  Returns:
    ({spec: MethodScores}, {metric: fractions}) the scores, and each curve metric's x axis.

  Raises:
    ConfigError: a metric that needs masks without them, targets outside the model's outputs,
      a method whose relevance holds NaN or infinity (naming the method).
  """
  ground_truth = dict(ground_truth or {})
  check_masks(metrics, "mask" in ground_truth)
  x = np.asarray(x)
  num_classes = int(jax.eval_shape(apply_fn, variables, x[:1]).shape[-1])
  targets = check_targets(targets, num_classes)
  mask = np.asarray(ground_truth.get("mask", np.ones(mask_shape(x), bool)), bool)
  batches = batching.plan_batches(len(x), batch_size)
  scorer = Scorer(apply_fn, variables, methods, metrics, num_classes=num_classes, seed=seed)
  chunk = scorer.score(batches, batches.local(x), targets, batches.local(mask))
  scores = {}
  for spec, s in chunk.items():
    scores[spec] = MethodScores(s.relevance, s.columns, s.curves, scorer.compile_seconds[spec],
                                scorer.method_seconds[spec] / len(x),
                                scorer.metric_seconds[spec])
    log(f"{spec:<32} {1e3 * scores[spec].seconds_per_image:8.2f} ms/image  " + "  ".join(
        f"{name}={np.nanmean(value):.4g}" for name, value in s.columns.items() if "." not in name))
  return scores, scorer.fractions


def mask_shape(x: np.ndarray) -> tuple[int, ...]:
  """The shape of the masks of inputs `x`: (N, H, W) for images (N, H, W, C), (N, T) for token
  sequences (N, T, D)."""
  return x.shape[:2] if x.ndim == 3 else x.shape[:3]


def mean_table(columns: Mapping[str, Mapping[str, np.ndarray]]
               ) -> dict[str, dict[str, dict[str, float]]]:
  """{spec: {column: {"mean", "sem", "n"}}} from {spec: {column: (N,) per-example scores}}:
  each column's mean over the examples (NaN skipped) and its standard error."""
  table = {}
  for spec, method_columns in columns.items():
    row = {}
    for column, values in method_columns.items():
      values = np.asarray(values, np.float64)
      finite = values[np.isfinite(values)]
      row[column] = {
          "mean": float(finite.mean()) if finite.size else None,
          "sem": float(finite.std(ddof=1) / np.sqrt(finite.size)) if finite.size > 1 else None,
          "n": int(finite.size)}
    table[spec] = row
  return table


def direction(column: str) -> str:
  """"↑" (higher is better), "↓" or "" for a score column, from the metric's registration."""
  name, _, field = column.partition(".")
  about = METRICS.metadata(name)
  better = about.get("field_higher_is_better", {}).get(field, about.get("higher_is_better"))
  return "" if better is None else ("↑" if better else "↓")


def markdown_table(table: Mapping[str, Mapping[str, Mapping[str, float]]],
                   columns: Sequence[str] | None = None) -> str:
  """The methods x score columns table in markdown: mean ± standard error, arrows of direction."""
  specs = list(table)
  if columns is None:
    columns = list(dict.fromkeys(c for spec in specs for c in table[spec]))
  lines = ["| method | " + " | ".join(f"{c} {direction(c)}".rstrip() for c in columns) + " |",
           "|---|" + "---|" * len(columns)]
  for spec in specs:
    cells = []
    for column in columns:
      entry = table[spec].get(column)
      if entry is None or entry["mean"] is None:
        cells.append("-")
      elif entry["sem"] is None:
        cells.append(f"{entry['mean']:.3g}")
      else:
        cells.append(f"{entry['mean']:.3g} ± {entry['sem']:.2g}")
    lines.append(f"| {spec} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def score_arrays(scores: Mapping[str, MethodScores]) -> dict[str, np.ndarray]:
  """Per-example arrays for an `.npz`: `<method>/<column>` and `<method>/<metric>/<curve>`."""
  arrays = {}
  for spec, method_scores in scores.items():
    for column, values in method_scores.columns.items():
      arrays[f"{spec}/{column}"] = np.asarray(values)
    for metric, curves in method_scores.curves.items():
      for field, values in curves.items():
        arrays[f"{spec}/{metric}/{field}"] = np.asarray(values)
  return arrays


