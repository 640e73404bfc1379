"""Running a registered experiment in process and reading back the results.json it wrote.

The experiment tests share one smoke run per module (`shared_run`: the run trains networks, so
once per module, not once per test) and check resuming by running again in the same workdir
(`run_and_read`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from xjax.experiments.registry import get_experiment
from xjax.experiments.runner import run_experiment


def run_and_read(name: str, config: Any, workdir: Path) -> dict:
  """Runs the experiment registered as `name` on `config` in `workdir`; the results.json it wrote
  (read from disk: what a later reader sees, not the runner's in-memory dict)."""
  run_experiment(get_experiment(name), config, workdir)
  return json.loads((workdir / "results.json").read_text())


def shared_run(name: str, get_config: Callable[[str], Any], variant: str):
  """A module-scoped fixture: (workdir, results) of the experiment registered as `name`, run once
  on `get_config(variant)` in a new temporary workdir named after it. The fixture's name is the
  module attribute it is bound to: `smoke = shared_run("srae", srae_config.get_config, "smoke")`.
  """
  @pytest.fixture(scope="module")
  def run_once(tmp_path_factory):
    workdir = tmp_path_factory.mktemp(name)
    return workdir, run_and_read(name, get_config(variant), workdir)
  return run_once
