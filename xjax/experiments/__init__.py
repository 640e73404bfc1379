"""Experiments: one protocol per paper, and the one runner that trains, resumes, reports, draws.

  run_experiment(get_experiment("separable"), config, workdir)

`protocol.py` is the contract (`Protocol`, `Run`, `TrainedRun`), `runner.py` the runner,
`loading.py` reads a trained run back (`load_run`), `explain.py` explains one with several methods.
"""

from xjax.experiments.loading import LoadedRun, load_run
from xjax.experiments.protocol import Protocol, Run, TrainedRun
from xjax.experiments.registry import EXPERIMENTS, get_experiment
from xjax.experiments.runner import run_experiment, train_run

__all__ = ["EXPERIMENTS", "LoadedRun", "Protocol", "Run", "TrainedRun", "get_experiment",
           "load_run", "run_experiment", "train_run"]
