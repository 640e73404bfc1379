"""What a run leaves in its workdir besides checkpoints: metrics.jsonl, results.json, results.md."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def _plain(value: Any) -> Any:
  """numpy / jax scalars and arrays -> JSON-serialisable Python values (NaN -> None)."""
  if isinstance(value, Mapping):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if hasattr(value, "tolist"):
    return _plain(np.asarray(value).tolist())
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


class MetricWriter:
  """Appends one JSON object per logged step to `metrics.jsonl`.

  A resumed run first drops the rows written after the checkpoint it resumes from, so the file
  reads as one uninterrupted run.
  """

  def __init__(self, path: str | Path, resume_step: int | None = None):
    self.path = Path(path)
    if self.path.exists():
      rows = [line for line in self.path.read_text().splitlines() if line.strip()]
      keep = [r for r in rows
              if resume_step is not None and json.loads(r).get("step", 0) <= resume_step]
      self.path.write_text("".join(r + "\n" for r in keep))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    with self.path.open("a") as f:
      f.write(json.dumps(_plain({"step": step, **metrics})) + "\n")


def write_json(path: str | Path, data: Mapping[str, Any]) -> None:
  Path(path).write_text(json.dumps(_plain(data), indent=2) + "\n")


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
  def cell(v):
    return f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)


def training_results_markdown(results: Mapping[str, Any],
                              paper: Mapping[str, Any] | None = None) -> str:
  """results.md of a training run: the final numbers, the paper's beside them where known."""
  rows = []
  for key in ("test_accuracy", "test_loss", "best_validation_loss", "best_validation_accuracy"):
    if key in results:
      rows.append([key, results[key], (paper or {}).get(key)])
  out = [f"# {results.get('name', 'run')}", "",
         markdown_table(["metric", "xjax", "paper"], rows), ""]
  out.append(f"Epochs: {results.get('epochs_completed')} "
             f"(stopped early: {results.get('stopped_early')}), "
             f"steps: {results.get('steps')}, train time: {results.get('train_seconds', 0):.1f} s, "
             f"devices: {results.get('num_devices')}.")
  changes = results.get("config_changes") or []
  if changes:  # a run resumed with another config (`--resume_with_changes`)
    from xjax.train.workdir import describe_changes
    out += ["", "## Config changes", "", markdown_table(
        ["from step", "changes"],
        [[c.get("step"), describe_changes(c.get("changes", {}), limit=100)] for c in changes])]
  history = results.get("history", [])
  if history:
    out += ["", "## Per epoch", "", markdown_table(
        ["epoch", "train loss", "train acc", "val loss", "val acc"],
        [[h["epoch"], h.get("train_loss"), h.get("train_accuracy"), h.get("validation_loss"),
          h.get("validation_accuracy")] for h in history])]
  return "\n".join(out) + "\n"
