"""One runner for every paper's protocol: `run_experiment(protocol, config, workdir)`.

It trains the protocol's runs in order, each in `workdir/<run>/` (a run that finished is read back,
one that was killed resumes from its latest checkpoint), draws each run's training curves, asks the
protocol to analyse every run, and writes

  workdir/config.json    the experiment's config
  workdir/results.json   {"name": ..., <run>: {...}, ..., "checks": {...}, "config_changes": [...]}
  workdir/results.md     the protocol's tables (the paper's numbers beside ours) and the checks
  workdir/figures/       the protocol's figures

then prints one JSON line: the protocol's summary and the workdir. The workdir is locked while it
runs (each run's own workdir by its training), and a rerun with another config is refused before
any data is loaded unless `resume_with_changes` (`xjax.train.workdir`), which records the change
in config_changes.jsonl with the step each run had reached.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path

import jax
import ml_collections

from xjax.errors import ConfigError
from xjax.experiments.protocol import Analysis, Protocol, Run, TrainedRun
from xjax.plot.curves import plot_training_curves
from xjax.train import report
from xjax.train import workdir as rundir
from xjax.train.config_checks import check_config
from xjax.train.loop import (
  build_model,
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


def train_run(config: ml_collections.ConfigDict, workdir: str | Path, hooks=None, *,
              resume_with_changes: bool = False) -> dict:
  """`train_and_evaluate` (`resume_with_changes`: see there), then the training curves in
  `workdir/figures/training_curves.png`."""
  trained = train_and_evaluate(config, workdir, hooks, resume_with_changes=resume_with_changes)
  if trained["history"] and jax.process_index() == 0:  # one writer, as for the run's files
    plot_training_curves(trained["history"], Path(workdir) / "figures" / "training_curves.png",
                         title=f"{trained['name']}: {config.model.name}")
  return trained


def _train(run: Run, workdir: Path, names: list[str], info, resume_with_changes: bool
           ) -> TrainedRun:
  c = copy_config(run.config)
  if run.init_from is not None:
    c.train.init_from = _resolve(run.init_from, workdir, names)
  if run.pretrained:
    c.train.pretrained = {k: _resolve(v, workdir, names) for k, v in run.pretrained.items()}
  if run.frozen:
    c.train.frozen = tuple(run.frozen)
  print(f"== {run.name}" + (f": {run.description}" if run.description else ""), flush=True)
  trained = train_run(c, workdir / run.name, run.hooks, resume_with_changes=resume_with_changes)
  return TrainedRun(run.name, c, workdir / run.name, build_model(c, info), trained)


def as_analysis(analysed: Analysis | Mapping, protocol: Protocol, name: str) -> Analysis:
  """What `protocol.analyse` returned for run `name`, as an `Analysis`.

  A plain mapping is taken as the run's results alone (a protocol with no figure data may
  return one). One with "_"-prefixed keys, the figure data of the layout before `Analysis`,
  is refused rather than written to results.json.
  """
  if isinstance(analysed, Analysis):
    return analysed
  if isinstance(analysed, Mapping):
    hidden = sorted(k for k in analysed if str(k).startswith("_"))
    if hidden:
      raise TypeError(f"{type(protocol).__name__}.analyse returned figure data in the keys "
                      f"{hidden} of run {name!r}'s results: return "
                      f"Analysis(results, figures) instead.")
    return Analysis(dict(analysed))
  raise TypeError(f"{type(protocol).__name__}.analyse returned a {type(analysed).__name__} for "
                  f"run {name!r}; expected an Analysis (or a dict of results).")


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


def _started(workdir: Path) -> bool:
  """Whether the experiment in `workdir` has done work with its saved config: results, or a
  checkpoint of one of its runs."""
  return (workdir / "results.json").exists() or any(
      rundir.has_checkpoint(p) for p in workdir.iterdir() if p.is_dir())


def run_experiment(protocol: Protocol, config: ml_collections.ConfigDict,
                   workdir: str | Path, *, resume_with_changes: bool = False) -> dict:
  """Trains (or resumes) the protocol's runs, analyses them, writes and prints the results.

  Args:
    protocol: the experiment (`xjax.experiments.protocol.Protocol`).
    config: its config (the runs' configs are derived from it by the protocol).
    workdir: the experiment's directory; run the same call again to resume.
    resume_with_changes: continue an experiment whose saved config differs from `config` (and
      its runs, whose configs then differ too), recording the change; without it that is refused
      (`ConfigChanged`) before any data is loaded.

  Returns:
    The content of results.json.

  Raises:
    WorkdirError: the workdir is not writable, in use, or holds an experiment of another config.
  """
  check_config(config)
  missing = [name for name in protocol.sections if name not in config]
  if missing:
    raise ConfigError(f"The config has no section {', '.join(map(repr, missing))}, which the "
                      f"experiment {protocol.title!r} needs: use its own config file.")
  protocol.check(config)
  workdir = Path(workdir)
  rundir.check_writable(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  with rundir.locked(workdir):
    changes = rundir.changed_config(workdir, config, started=_started(workdir),
                                    resume_with_changes=resume_with_changes)
    return _run_experiment(protocol, config, workdir, changes, resume_with_changes)


def _run_experiment(protocol: Protocol, config: ml_collections.ConfigDict, workdir: Path,
                    changes: dict, resume_with_changes: bool) -> dict:
  """`run_experiment` in a checked, locked workdir; `changes`: its config's, to record."""
  sources = load_sources(config.data)
  info = sources["train"].info
  plan = protocol.runs(config, sources)
  names = [run.name for run in plan]
  # Saved once the plan stands (a config the protocol refuses leaves nothing behind); a change
  # is recorded with the step each run had reached, where it took effect.
  steps = {run.name: rundir.latest_step(workdir / run.name) or 0 for run in plan}
  rundir.record_config(workdir, config, changes, steps=steps)
  if changes:
    print(f"Resuming with a changed config: {rundir.describe_changes(changes)} (recorded in "
          f"{workdir / rundir.CHANGES_FILE}).", flush=True)
  analyses = {}
  for run in plan:
    trained = _train(run, workdir, names, info, resume_with_changes)
    analyses[run.name] = as_analysis(protocol.analyse(config, trained, sources), protocol,
                                     run.name)

  runs = {name: analysis.results for name, analysis in analyses.items()}
  checks = protocol.checks(config, runs)
  results = {**protocol.header(config, runs), **runs, "checks": checks,
             "config_changes": rundir.read_changes(workdir)}
  if config.data.get("skip_unreadable"):
    results["skipped_unreadable_images"] = {split: len(skipped_images(source))
                                            for split, source in sources.items()}
  report.write_json(workdir / "results.json", results)
  (workdir / "results.md").write_text(results_markdown(protocol, config, runs, checks))
  protocol.figures(config, analyses, sources, workdir / "figures")
  print(json.dumps({**_rounded(protocol.summary(config, runs, checks)),
                    "workdir": str(workdir)}), flush=True)
  return results
