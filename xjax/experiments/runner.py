"""One runner for every paper's protocol: `run_experiment(protocol, config, workdir)`.

It trains the protocol's runs in order, each in `workdir/<run>/` (a run that finished is read back,
one that was killed resumes from its latest checkpoint), draws each run's training curves, asks the
protocol to analyse every run, and writes

  workdir/results.json   {"name": ..., <run>: {...}, ..., "checks": {...}}
  workdir/results.md     the protocol's tables (the paper's numbers beside ours) and the checks
  workdir/figures/       the protocol's figures

then prints one JSON line: the protocol's summary and the workdir.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jax
import ml_collections

from xjax.errors import ConfigError
from xjax.experiments.protocol import Protocol, Run, TrainedRun
from xjax.plot.curves import plot_training_curves
from xjax.train import report
from xjax.train.loop import (
  build_model,
  check_config,
  load_sources,
  skipped_images,
  train_and_evaluate,
)


def copy_config(config: ml_collections.ConfigDict, **updates) -> ml_collections.ConfigDict:
  """A deep, unlocked copy of `config` with top-level `updates` (e.g. `name=...`)."""
  c = ml_collections.ConfigDict(copy.deepcopy(config.to_dict()))
  for key, value in updates.items():
    c[key] = value
  return c


def _resolve(reference: str, workdir: Path, names: list[str]) -> str:
  """A run name of this experiment -> its workdir; anything else is a path, kept as is."""
  return str(workdir / reference) if reference in names else reference


def train_run(config: ml_collections.ConfigDict, workdir: str | Path, hooks=None) -> dict:
  """`train_and_evaluate`, then the training curves in `workdir/figures/training_curves.png`."""
  trained = train_and_evaluate(config, workdir, hooks)
  if trained["history"] and jax.process_index() == 0:  # one writer, as for the run's files
    plot_training_curves(trained["history"], Path(workdir) / "figures" / "training_curves.png",
                         title=f"{trained['name']}: {config.model.name}")
  return trained


def _train(run: Run, workdir: Path, names: list[str], info) -> TrainedRun:
  c = copy_config(run.config)
  if run.init_from is not None:
    c.train.init_from = _resolve(run.init_from, workdir, names)
  if run.pretrained:
    c.train.pretrained = {k: _resolve(v, workdir, names) for k, v in run.pretrained.items()}
  if run.frozen:
    c.train.frozen = tuple(run.frozen)
  print(f"== {run.name}" + (f": {run.description}" if run.description else ""), flush=True)
  trained = train_run(c, workdir / run.name, run.hooks)
  return TrainedRun(run.name, c, workdir / run.name, build_model(c, info), trained)


def public(result: dict) -> dict:
  """A run's analysis without its "_" entries (arrays kept for the figures)."""
  return {k: v for k, v in result.items() if not k.startswith("_")}


def results_markdown(protocol: Protocol, config, analysed: dict, checks: dict) -> str:
  """results.md: the title, the protocol's tables and the checks."""
  out = [f"# {config.name}: {protocol.title}", ""]
  for section in protocol.tables(config, analysed, checks):
    out += [section.rstrip("\n"), ""]
  if checks:
    out += ["## Checks", "",
            report.markdown_table(["check", "value"], [[k, v] for k, v in checks.items()]), ""]
  return "\n".join(out) + "\n"


def _rounded(value):
  if isinstance(value, float):
    return round(value, 4)
  if isinstance(value, (list, tuple)):
    return [_rounded(v) for v in value]
  if isinstance(value, dict):
    return {k: _rounded(v) for k, v in value.items()}
  return value


def run_experiment(protocol: Protocol, config: ml_collections.ConfigDict,
                   workdir: str | Path) -> dict:
  """Trains (or resumes) the protocol's runs, analyses them, writes and prints the results.

  Args:
    protocol: the experiment (`xjax.experiments.protocol.Protocol`).
    config: its config (the runs' configs are derived from it by the protocol).
    workdir: the experiment's directory; run the same call again to resume.

  Returns:
    The content of results.json.
  """
  check_config(config)
  missing = [name for name in protocol.sections if name not in config]
  if missing:
    raise ConfigError(f"The config has no section {', '.join(map(repr, missing))}, which the "
                      f"experiment {protocol.title!r} needs: use its own config file.")
  protocol.check(config)
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  sources = load_sources(config.data)
  info = sources["train"].info
  plan = protocol.runs(config, sources)
  names = [run.name for run in plan]
  analysed = {}
  for run in plan:
    trained = _train(run, workdir, names, info)
    analysed[run.name] = protocol.analyse(config, trained, sources)

  runs = {name: public(result) for name, result in analysed.items()}
  checks = protocol.checks(config, runs)
  results = {**protocol.header(config, runs), **runs, "checks": checks}
  if config.data.get("skip_unreadable"):
    results["skipped_unreadable_images"] = {split: len(skipped_images(source))
                                            for split, source in sources.items()}
  report.write_json(workdir / "results.json", results)
  (workdir / "results.md").write_text(results_markdown(protocol, config, runs, checks))
  protocol.figures(config, analysed, sources, workdir / "figures")
  print(json.dumps({**_rounded(protocol.summary(config, runs, checks)),
                    "workdir": str(workdir)}), flush=True)
  return results
