"""The contract of a paper's experiment: which runs it trains, and how it reads them.

Every paper in xjax has the same shape of protocol: train (or load) networks, train an explanation
module on them or optimise inputs for them, analyse, check, report, draw. A `Protocol` says only
what is particular to its paper:

  sections, check(config)              its config sections, and the checks of its settings that
                                       need no data (run before anything is loaded)
  runs(config, sources)                the training runs, in order (each a `Run`)
  analyse(config, run, sources)        one trained run's `Analysis`: its numbers for
                                       results.json (`results`) and what only its figures need,
                                       arrays, variables, models (`figures`)
  checks(config, analysed)             the acceptance numbers of the experiment
  tables(config, analysed, checks)     results.md sections, the paper's numbers (`config.paper`)
                                       beside ours
  figures(config, analyses, sources, directory)
  summary(config, analysed, checks)    the one-line JSON summary printed at the end

`checks`, `tables`, `header` and `summary` get each run's `results` by run name (`analysed`), as
results.json holds them; `figures` gets each run's whole `Analysis` (`analyses`).

`xjax.experiments.runner.run_experiment(protocol, config, workdir)` owns everything else: the
data sources, the per-run workdirs and their resumption, the frozen and pre-trained modules,
results.json / results.md / figures, and the summary line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections

from xjax.train import checkpoint
from xjax.train.loop import TrainHooks


@dataclasses.dataclass
class Run:
  """One training run of an experiment, in the workdir `<experiment workdir>/<name>/`.

  Attributes:
    name: the run's name (its sub-workdir and its key in results.json), e.g. "baseline".
    config: its full training config (`xjax.train.loop.train_and_evaluate`).
    hooks: `TrainHooks` of a training-time method (None: plain training).
    init_from: start from the best parameters of another run of this experiment (its name) or
      of a workdir (a path), with a fresh optimizer (fine-tuning).
    pretrained: parameter path prefix -> run name or workdir whose best parameters fill that
      subtree (e.g. {"backbone": "performer"}).
    frozen: parameter path prefixes that get no update and no optimizer state.
    description: what the run is, printed before it trains.
  """

  name: str
  config: ml_collections.ConfigDict
  hooks: TrainHooks | None = None
  init_from: str | None = None
  pretrained: Mapping[str, str] = dataclasses.field(default_factory=dict)
  frozen: tuple[str, ...] = ()
  description: str = ""


@dataclasses.dataclass
class TrainedRun:
  """A finished run: its config, workdir, model and what `train_and_evaluate` returned."""

  name: str
  config: ml_collections.ConfigDict
  workdir: Path
  model: Any
  trained: dict

  def variables(self, which: str | None = None) -> dict:
    """The Flax variables of `which` checkpoint ("best" / "latest"); by default those the run
    was tested with (`train.test_params`)."""
    if which is None:
      which = "best" if self.config.train.get("test_params", "best") == "best" else "latest"
    return checkpoint.load_variables(self.workdir, which)


@dataclasses.dataclass
class Analysis:
  """What a protocol makes of one trained run (`Protocol.analyse`).

  Attributes:
    results: the run's numbers, JSON-able: its entry of results.json, and what `checks`,
      `tables`, `header` and `summary` read.
    figures: what only `Protocol.figures` needs (arrays, variables, a model, a path), by a name
      of the protocol's choosing; never written to results.json.
  """

  results: dict[str, Any]
  figures: dict[str, Any] = dataclasses.field(default_factory=dict)


class Protocol:
  """A paper's experiment; subclasses override `runs` and whatever else they report."""

  title = "experiment"
  sections: tuple[str, ...] = ()  # the config sections of the protocol, e.g. ("xnet",)

  def check(self, config: ml_collections.ConfigDict) -> None:
    """Fails on the protocol's own settings before any data is loaded (`ConfigError`)."""
    del config

  def runs(self, config: ml_collections.ConfigDict, sources: dict) -> list[Run]:
    """The training runs, in the order they are trained (later ones may start from earlier)."""
    raise NotImplementedError

  def analyse(self, config: ml_collections.ConfigDict, run: TrainedRun,
              sources: dict) -> Analysis:
    """One trained run's numbers and figure data; by default its test accuracy and loss."""
    del config, sources
    return Analysis({"test_accuracy": run.trained["test_accuracy"],
                     "test_loss": run.trained["test_loss"]})

  def checks(self, config: ml_collections.ConfigDict, analysed: dict[str, dict]) -> dict:
    """The experiment's acceptance numbers (shown in results.md and the summary line)."""
    del config, analysed
    return {}

  def tables(self, config: ml_collections.ConfigDict, analysed: dict[str, dict],
             checks: dict) -> list[str]:
    """Markdown sections of results.md (a title and the checks are added around them)."""
    del config, analysed, checks
    return []

  def figures(self, config: ml_collections.ConfigDict, analyses: dict[str, Analysis],
              sources: dict, directory: Path) -> None:
    """Writes the experiment's figures into `directory`, from each run's `Analysis` (its
    `results` and its `figures`) by run name."""

  def header(self, config: ml_collections.ConfigDict, analysed: dict[str, dict]) -> dict:
    """Top-level entries of results.json before the runs (e.g. the categories of XNet)."""
    del analysed
    return {"name": config.name}

  def summary(self, config: ml_collections.ConfigDict, analysed: dict[str, dict],
              checks: dict) -> dict:
    """The end-of-run JSON line; by default each run's test accuracy and the checks."""
    del config
    return {**{f"{name}_test_accuracy": run.get("test_accuracy")
               for name, run in analysed.items()}, **checks}
