"""Scoring explanation methods on a whole split: over every device and process, streamed to disk
in chunks, resumable (`runs.evaluate --workdir=W --n=all`).

`score_dataset(run, methods, metrics, n=..., store=...)` walks the first `n` examples of a
trained run's split in chunks of consecutive examples. For each chunk it reads the examples
(each process only its rows of every batch, `xjax.data.batching.BatchPlan`), computes the
model's outputs, explains them with every method and scores every explanation with every metric
(`xjax.experiments.scoring.Scorer`: each function compiled once, each batch split over the
devices of the training code's mesh), and process 0 writes the chunk to a
`xjax.experiments.chunks.ChunkStore`: per example the label, target and prediction, each
method's heatmap (relevance summed over channels, or over a token's embedding), score columns
and curves. Nothing else is kept, so memory does not grow with `n`.

Killed at any moment and run again with the same settings, it continues at the first chunk not
on disk and ends with the same numbers: each example's scores depend only on its own batch,
and the batches are the same in every run (the key of the randomised metrics is the same in
every batch). The same holds for 1 device, several devices and several processes, to float
tolerance. SIGTERM or SIGINT stops it after the chunk being computed (`xjax.errors.Interrupted`).

The summary (the methods x metrics table, mean curves, timing) is read back from the disk by
`summarise`, one chunk at a time.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import jax
import numpy as np

from xjax.data import batching, sharding
from xjax.errors import Interrupted
from xjax.experiments import scoring
from xjax.experiments.chunks import ChunkStore
from xjax.experiments.loading import LoadedRun
from xjax.experiments.progress import Progress
from xjax.train.loop import StopSignals

DEFAULT_CHUNK_SIZE = 1024  # examples per chunk on disk (rounded up to whole batches)


@dataclasses.dataclass
class DatasetScores:
  """What `score_dataset` did, and where the per-example results are."""

  store: ChunkStore
  methods: list[str]
  fractions: dict[str, np.ndarray]  # each curve metric's x axis
  devices: int
  processes: int
  batch_size: int  # examples per compiled call, over all devices
  resumed_at: int | None  # the first example computed by this run, when chunks were on disk
  computed: int  # examples computed by this run
  seconds: float  # wall time of this run
  compile_seconds: dict[str, float]
  method_seconds: dict[str, float]
  metric_seconds: dict[str, dict[str, float]]

  def timing(self) -> dict:
    """Per method: compile seconds, seconds per example, and each metric's seconds, this run."""
    per = max(self.computed, 1)
    return {spec: {"compile_seconds": self.compile_seconds[spec],
                   "seconds_per_image": self.method_seconds[spec] / per if self.computed else None,
                   "metric_seconds": self.metric_seconds[spec]} for spec in self.methods}


def chunk_arrays(scores: Mapping[str, scoring.ChunkScores], **per_example: np.ndarray
                 ) -> dict[str, np.ndarray]:
  """One chunk as flat arrays: `per_example` (labels, targets, ...), `<method>/heatmap`,
  `<method>/<column>` and `<method>/<metric>/<curve>`."""
  arrays = dict(per_example)
  for spec, s in scores.items():
    arrays[f"{spec}/heatmap"] = np.asarray(s.relevance, np.float32).sum(-1)
    arrays.update({f"{spec}/{column}": v for column, v in s.columns.items()})
    arrays.update({f"{spec}/{metric}/{field}": v
                   for metric, curves in s.curves.items() for field, v in curves.items()})
  return arrays


def _first_chunk(store: ChunkStore, log: Callable[[str], None]) -> int:
  """Process 0 checks the store; every process starts at the chunk it says."""
  first = store.open() if jax.process_index() == 0 else 0
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    first = int(multihost_utils.broadcast_one_to_all(np.int32(first)))
  if 0 < first < store.num_chunks:
    start, _ = store.bounds(first)
    log(f"resuming at example {start} of {store.n}: chunks 0-{first - 1} are on disk "
        f"({store.directory})")
  elif first == store.num_chunks:
    log(f"all {store.n} examples are already scored in {store.directory}")
  return first


def score_dataset(run: LoadedRun, methods: Mapping[str, Callable],
                  metrics: Sequence[scoring.MetricPlan], *, n: int, store: str | Path,
                  settings: Mapping[str, Any], target: str = "label", batch_size: int = 32,
                  seed: int = 0, chunk_size: int = DEFAULT_CHUNK_SIZE,
                  log: Callable[[str], None] = print, progress: TextIO | None = None
                  ) -> DatasetScores:
  """Scores the first `n` examples of `run.source` into the chunk store `store` (module
  docstring).

  Args:
    run: the trained run (`xjax.experiments.loading.load_run`).
    methods: spec -> method; metrics: `scoring.plan_metrics(...)`.
    n: the number of examples (at most the split's).
    store: the directory of the chunks.
    settings: what else the results depend on (workdir, split, options): chunks written with
      other settings are not reused.
    target: "label" or "predicted".
    batch_size: examples per compiled call over all devices (rounded up to a multiple of them).
    seed: the metrics' key.
    chunk_size: examples per chunk (rounded up to whole batches).
    log: where the lines go (process 0's matter; every process logs).
    progress: the stream of the progress bars (default stderr; process 0 only).

  Raises:
    ConfigError: a metric that needs masks on data without them, a method whose relevance holds
      NaN or infinity.
    Interrupted: SIGTERM or SIGINT arrived; the chunks done are on disk.
  """
  started = time.perf_counter()
  source, apply_fn, variables = run.source, run.apply_fn, run.variables
  first_records = source.read_batch(np.arange(1))
  scoring.check_masks(metrics, "mask" in first_records)
  x0 = run.inputs(first_records["image"])
  num_classes = int(jax.eval_shape(apply_fn, variables, x0).shape[-1])
  mesh = sharding.make_mesh()
  size = batching.device_batch_size(batch_size, n, mesh)
  chunk_size = -(-max(chunk_size, size) // size) * size
  store = ChunkStore(store, {**settings, "n": n, "target": target, "batch_size": size,
                             "seed": seed, "chunk_size": chunk_size,
                             "methods": list(methods),
                             "metrics": {p.name: p.options for p in metrics}},
                     n, chunk_size, log)
  log(f"scoring {n} examples in {store.num_chunks} chunks of {chunk_size} on {mesh.size} "
      f"devices ({jax.process_count()} processes), {size} examples per call")
  first = _first_chunk(store, log)
  scorer = scoring.Scorer(apply_fn, variables, methods, metrics, num_classes=num_classes,
                          seed=seed)
  bars = Progress(list(_seconds(scorer)), n, done=store.bounds(first)[0],
                  stream=progress, enabled=jax.process_index() == 0)
  outputs = None  # the compiled logits (and labels passed through), made at the first chunk
  computed = 0
  with StopSignals() as signals:
    for index in range(first, store.num_chunks):
      start, stop = store.bounds(index)
      batches = batching.BatchPlan(start, stop, size, mesh)
      records = source.read_batch(batches.local_indices())
      x = run.inputs(records["image"])
      labels = np.asarray(records["label"], np.int32)
      if outputs is None:
        outputs, _ = batches.compile(lambda v, xb, lb: (apply_fn(v, xb), lb), variables, x, labels)
      logits, all_labels = batches.map(outputs, x, labels)
      predictions = logits.argmax(-1).astype(np.int32)
      targets = scoring.check_targets(all_labels if target == "label" else predictions,
                                      num_classes)
      mask = np.asarray(records.get("mask", np.ones(scoring.mask_shape(x), bool)), bool)
      before = _seconds(scorer)
      scores = scorer.score(batches, x, targets, mask)
      after = _seconds(scorer)
      if jax.process_index() == 0:
        store.write(index, chunk_arrays(
            scores, labels=all_labels, targets=targets, predictions=predictions,
            target_logits=logits[np.arange(len(targets)), targets]))
      computed += stop - start
      for task in after:
        bars.add(task, stop - start, after[task] - before[task])
      bars.show(final=index == store.num_chunks - 1)
      signum = signals.agreed()
      if signum:
        raise Interrupted(
            f"{signal.Signals(signum).name}: stopped after example {stop} of {n} (chunk "
            f"{index}); the chunks done are in {store.directory}: run the same command again "
            f"to continue.", 128 + signum)
  return DatasetScores(store, list(methods), dict(scorer.fractions), mesh.size,
                       jax.process_count(), size,
                       store.bounds(first)[0] if first > 0 else None, computed,
                       time.perf_counter() - started, dict(scorer.compile_seconds),
                       dict(scorer.method_seconds), scorer.metric_seconds)


def _seconds(scorer: scoring.Scorer) -> dict[str, float]:
  """Each progress task's seconds so far: a method's explaining, a method's metric."""
  out = {}
  for spec, seconds in scorer.method_seconds.items():
    out[spec] = seconds
    out.update({f"{spec} · {metric}": s for metric, s in scorer.metric_seconds[spec].items()})
  return out


@dataclasses.dataclass
class Summary:
  """Read back from the chunks: the table, mean curves, per-example columns, accuracy."""

  table: dict  # spec -> column -> {"mean", "sem", "n"}
  columns: dict[str, np.ndarray]  # `<method>/<column>`, labels, targets, predictions (n,)
  mean_curves: dict[str, dict[str, dict[str, np.ndarray]]]  # spec -> metric -> field -> curve
  accuracy: float


def summarise(store: ChunkStore, methods: Sequence[str]) -> Summary:
  """The table (mean ± standard error of every score column), each method's mean curves
  (NaN skipped) and the per-example scores, read back one chunk at a time."""
  keys = store.keys()
  per_example = {"labels", "targets", "predictions", "target_logits"}
  heatmaps = {f"{spec}/heatmap" for spec in methods}
  curve_keys = [k for k in keys if k.count("/") == 2 and k not in heatmaps]
  column_keys = [k for k in keys if k in per_example or (k.count("/") == 1 and k not in heatmaps)]
  columns = store.concatenate(column_keys)
  sums: dict[str, np.ndarray] = {}
  counts: dict[str, np.ndarray] = {}
  for chunk in store.chunks(curve_keys):
    for key, values in chunk.items():
      finite = np.isfinite(values)
      sums[key] = sums.get(key, 0) + np.where(finite, values, 0).sum(0, dtype=np.float64)
      counts[key] = counts.get(key, 0) + finite.sum(0)
  mean_curves: dict[str, dict[str, dict[str, np.ndarray]]] = {}
  for key in curve_keys:
    spec, metric, field = key.rsplit("/", 2)
    with np.errstate(invalid="ignore", divide="ignore"):
      mean = (sums[key] / counts[key]).astype(np.float32)
    mean_curves.setdefault(spec, {}).setdefault(metric, {})[field] = mean
  table = scoring.mean_table({spec: {k.split("/", 1)[1]: v for k, v in columns.items()
                                     if k.startswith(f"{spec}/")} for spec in methods})
  accuracy = float(np.mean(columns["predictions"] == columns["labels"]))
  return Summary(table, columns, mean_curves, accuracy)
