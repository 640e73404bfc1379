"""`python -m runs.explain` end to end, in subprocesses, on one tiny shapes model trained here.

The model (the CIFAR10 CNN of Table 1, with its max pooling, on 16x16 shapes, one epoch of 16 steps)
is trained once for the module; it is barely better than chance, but its biases are no longer zero,
which is what the conservation check of DTD needs to be meaningful. It is trained in process, by
the function behind `python -m runs.train` (whose command line tests/train/test_runs_train.py
tests): a subprocess would only import JAX and xjax once more. For the same reason the commands
run as forks of one process that imported xjax once (`tests/train/forked.py`: each is a process
of its own, run as `python -m runs.explain` runs); `--help` runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from runs import train
from runs.configs import shapes
from tests.conftest import REPO
from tests.train.forked import Forks

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
_FORKS: list[Forks] = []  # the fork server of this module's commands (`_fork_server`)


@pytest.fixture(scope="module", autouse=True)
def _fork_server(tmp_path_factory):
  _FORKS.append(Forks(tmp_path_factory.mktemp("forks"), REPO, ENV))
  yield
  _FORKS.pop().close()


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
  return _FORKS[0].run(["-m", module, *args], env=ENV, timeout=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """`python -m runs.train --config=runs/configs/shapes.py:smoke` with 512 images of 16x16, batches
  of 32 (64 to evaluate) and one epoch, in process."""
  workdir = tmp_path_factory.mktemp("trained")
  config = shapes.get_config("smoke")
  config.data.options.update(num_examples=512, image_size=16)
  config.data.batch_size, config.data.eval_batch_size = 32, 64
  config.train.epochs = 1
  train.main(config, workdir)
  return workdir


@pytest.fixture(scope="module")
def explained(workdir):
  result = _run("runs.explain", f"--workdir={workdir}", "--methods=lrp:dtd,saliency", "--n=4")
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result


def test_figures_and_arrays_are_written(explained):
  workdir, result = explained
  for name in ("explain", "explain_lrp_dtd", "explain_saliency"):
    assert (workdir / "figures" / f"{name}.png").stat().st_size > 1000
  d = np.load(workdir / "explanations.npz")
  assert d["images"].shape == (4, 16, 16, 3) and d["images"].dtype == np.uint8
  for key in ("labels", "targets", "predictions", "target_logits"):
    assert d[key].shape == (4,)
  assert list(d["methods"]) == ["lrp:dtd", "saliency"]
  for key in ("lrp_dtd", "saliency"):
    assert d[key].shape == (4, 16, 16) and d[f"{key}_relevance"].shape == (4, 16, 16, 3)
    np.testing.assert_allclose(d[key], d[f"{key}_relevance"].sum(-1), rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(d["targets"], d["predictions"])  # --target=predicted
  assert d["mask"].shape == (4, 16, 16)  # shapes has ground-truth masks
  assert "lrp:dtd" in result.stdout and "ms/image" in result.stdout


def test_dtd_relevance_sums_to_the_target_logit(explained):
  # z+ ignores the bias and z^B's bias terms cancel, so every layer passes on all its relevance;
  # what is lost is only the 1e-6 stabiliser in each denominator (a relative 1e-6 / z_j per neuron)
  # and float32 summation. Observed: |sum R / f_c - 1| <= 5e-6 here, 2e-5 on the 32x32 smoke model.
  # 1e-3 leaves room for neurons with tiny z+ denominators in other trainings.
  workdir, _ = explained
  d = np.load(workdir / "explanations.npz")
  sums = d["lrp_dtd_relevance"].reshape(4, -1).sum(-1)
  np.testing.assert_allclose(sums, d["target_logits"], rtol=1e-3, atol=1e-5)
  # The relevance of saliency is |gradient|: no conservation, but not zero either.
  assert np.all(d["saliency_relevance"] >= 0) and np.any(d["saliency_relevance"] > 0)


def test_target_label_and_default_composite(workdir, tmp_path):
  # A copy of the workdir, so that the other tests read the arrays of `explained` in any order.
  shutil.copytree(workdir / "checkpoints", tmp_path / "checkpoints")
  shutil.copy(workdir / "config.json", tmp_path / "config.json")
  workdir = tmp_path
  stale = workdir / "figures" / "explain_saliency.png"  # an earlier run's method, not asked now
  stale.parent.mkdir()
  stale.write_bytes(b"old")
  result = _run("runs.explain", f"--workdir={workdir}", "--methods=lrp,gradcam", "--n=3",
                "--target=label", "--batch_size=2")
  assert result.returncode == 0, result.stderr[-3000:]
  d = np.load(workdir / "explanations.npz")
  np.testing.assert_array_equal(d["targets"], d["labels"])
  assert list(d["methods"]) == ["lrp:epsilon_plus", "gradcam"]  # lrp = lrp:epsilon_plus
  assert d["gradcam_relevance"].shape == (3, 16, 16, 3)
  assert (workdir / "figures" / "explain_lrp_epsilon_plus.png").exists()
  assert not stale.exists()  # the figures folder shows this run's methods only
  assert json.loads((workdir / "config.json").read_text())["name"] == "shapes_smoke"


def _assert_one_line_error(result, message):
  assert result.returncode == 2, (result.stdout, result.stderr[-3000:])
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert lines[-1].startswith("error: ") and message in lines[-1], result.stderr[-3000:]
  assert "Traceback" not in result.stderr


def test_missing_workdir_is_a_one_line_error(tmp_path):
  _assert_one_line_error(_run("runs.explain", f"--workdir={tmp_path / 'nowhere'}"),
                         "No workdir")


def test_workdir_without_checkpoint_is_a_one_line_error(workdir, tmp_path):
  (tmp_path / "config.json").write_text((workdir / "config.json").read_text())
  _assert_one_line_error(_run("runs.explain", f"--workdir={tmp_path}"), "No checkpoint")


@pytest.mark.parametrize("methods, message", [
    ("lrp:dtd,deconvnet", "Unknown explanation method 'deconvnet'"),
    ("lrp:zplus", "Unknown composite 'zplus'"),
])
def test_unknown_method_is_a_one_line_error(workdir, methods, message):
  _assert_one_line_error(_run("runs.explain", f"--workdir={workdir}", f"--methods={methods}"),
                         message)


def test_help_lists_the_commands_own_flags():
  # absl's --help shows only the program module's flags; the command's are defined in runs/cli.py.
  # A fresh interpreter, as a user starts it (which module is the program is what this asks).
  result = subprocess.run([sys.executable, "-m", "runs.explain", "--help"], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 1  # absl's --help exits with 1
  for flag in ("--workdir", "--methods", "--n:", "--target", "--batch_size", "--multihost"):
    assert flag in result.stdout, flag
  assert "predicted class (the default here" in " ".join(result.stdout.split())
