"""`runs.evaluate --workdir` at scale: streamed to disk in chunks, the same numbers on 1 device,
4 devices and 2 processes, and resumed after SIGKILL (a half-written chunk redone) or SIGTERM.

A tiny shapes network is scored on 40 test images in chunks of 16 (three chunks, the last
short) in batches of 8. Its scores must equal those of `score_methods` on the same images in
memory, and the subprocess runs (4 virtual devices; 2 processes with gloo; one SIGKILLed after
its second chunk) must give the same per-example scores.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from runs.configs import shapes
from tests.conftest import REPO
from xjax.errors import Interrupted
from xjax.experiments import chunks, scoring
from xjax.experiments.evaluate import evaluate_workdir
from xjax.experiments.explain import load_examples
from xjax.explain import methods as method_registry
from xjax.train.loop import train_and_evaluate

N, BATCH, CHUNK = 40, 8, 16
METHODS = ["gradient_x_input", "random"]
METRICS = {"pixel_flipping": {"steps": 4}, "attribution_localisation": {},
           "faithfulness_correlation": {}}
FLAGS = [f"--methods={','.join(METHODS)}", f"--metrics={','.join(METRICS)}",
         "--options=pixel_flipping.steps=4", f"--n={N}", f"--batch_size={BATCH}",
         f"--chunk_size={CHUNK}"]
TIMEOUT = 300  # seconds for any subprocess (about 20 s each on 2 cores)

# runs.evaluate, SIGKILLed as soon as its second chunk is on disk.
KILL_AFTER_SECOND_CHUNK = """
import os, signal, sys
from xjax.experiments import chunks
write = chunks.ChunkStore.write
def write_then_die(self, index, arrays):
  write(self, index, arrays)
  if index == 1:
    os.kill(os.getpid(), signal.SIGKILL)
chunks.ChunkStore.write = write_then_die
from runs import cli
sys.argv = ["runs.evaluate"] + sys.argv[1:]
cli.evaluate()
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("tiny_shapes")
  config = shapes.get_config("smoke")
  config.data.options.update(num_examples=256, image_size=16)
  config.model.name = "cnn_fashion"
  config.data.batch_size, config.train.epochs = 32, 1
  train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope="module")
def streamed(trained, tmp_path_factory):
  """The 1-device, in-process run: (results, scores.npz arrays)."""
  out = tmp_path_factory.mktemp("one_device")
  results = evaluate_workdir(trained, METHODS, list(METRICS), options=METRICS, n=N,
                             batch_size=BATCH, chunk_size=CHUNK, out=out, log=lambda _: None)
  return results, dict(np.load(out / "scores.npz")), out


def _scores(out) -> dict[str, np.ndarray]:
  return dict(np.load(out / "scores.npz"))


def _assert_same_scores(a: dict, b: dict) -> None:
  assert sorted(a) == sorted(b)
  for key in a:
    np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_chunks_on_disk_give_the_scores_of_one_pass_in_memory(trained, streamed):
  results, arrays, out = streamed
  assert results["devices"] == 1 and results["processes"] == 1
  assert results["chunks"]["count"] == 3 and results["chunks"]["resumed_at_example"] is None
  examples = load_examples(trained, n=N, target="label", log=lambda _: None)
  chosen = {s: method_registry.get_method(s, bounds=(0.0, 1.0), key=jax.random.key(0))
            for s in METHODS}
  in_memory, fractions = scoring.score_methods(
      examples.run.apply_fn, examples.run.variables, examples.x, examples.labels, chosen,
      scoring.plan_metrics(METRICS), ground_truth={"mask": examples.records["mask"]},
      batch_size=BATCH, log=lambda _: None)
  for spec, s in in_memory.items():
    for column, values in s.columns.items():
      np.testing.assert_allclose(arrays[f"{spec}/{column}"], values, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(results["table"][spec]["pixel_flipping"]["mean"],
                               s.columns["pixel_flipping"].mean(), rtol=1e-6)
  np.testing.assert_array_equal(arrays["labels"], examples.labels)
  # The heatmaps and curves on disk, chunk after chunk.
  store = chunks.ChunkStore(out / "chunks", {}, N, CHUNK)
  heat = np.concatenate([c["gradient_x_input/heatmap"] for c in store.chunks()])
  np.testing.assert_allclose(heat, in_memory["gradient_x_input"].relevance.sum(-1), rtol=1e-5,
                             atol=1e-6)
  curves = np.concatenate([c["random/pixel_flipping/curves"] for c in store.chunks()])
  np.testing.assert_allclose(curves, in_memory["random"].curves["pixel_flipping"]["curves"],
                             rtol=1e-6)
  np.testing.assert_allclose(arrays["pixel_flipping/fractions"], fractions["pixel_flipping"])


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(trained, out, *extra, devices: int = 1, code: str | None = None):
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  head = [sys.executable, "-c", code] if code else [sys.executable, "-m", "runs.evaluate"]
  log = open(f"{out}.{len(extra)}.{devices}.log", "w")
  return subprocess.Popen([*head, f"--workdir={trained}", f"--out={out}", *FLAGS, *extra],
                          cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True), log


def _finish(started) -> tuple[list[int], list[str]]:
  codes, outputs = [], []
  for process, log in started:
    try:
      codes.append(process.wait(timeout=TIMEOUT))
    finally:
      if process.poll() is None:
        process.kill()
    log.close()
    outputs.append(open(log.name).read())
  return codes, outputs


# One test: the subprocesses start together and share the two cores.
def test_four_devices_two_processes_and_a_sigkilled_run_give_the_same_scores(
    trained, streamed, tmp_path):
  _, reference, _ = streamed
  four, two, killed = tmp_path / "four", tmp_path / "two", tmp_path / "killed"
  port = _free_port()
  started = [_start(trained, four, devices=4),
             *(_start(trained, two, "--multihost", f"--coordinator_address=localhost:{port}",
                      "--num_processes=2", f"--process_id={i}") for i in range(2)),
             _start(trained, killed, code=KILL_AFTER_SECOND_CHUNK)]
  codes, outputs = _finish(started)
  assert codes == [0, 0, 0, -signal.SIGKILL], outputs
  assert "on 4 devices (1 processes)" in outputs[0]
  assert json.loads((four / "results.json").read_text())["devices"] == 4
  _assert_same_scores(reference, _scores(four))
  assert all("on 2 devices (2 processes)" in o for o in outputs[1:3])
  assert json.loads((two / "results.json").read_text())["processes"] == 2
  _assert_same_scores(reference, _scores(two))
  # Killed after its second chunk: the first two are on disk, and nothing else.
  assert sorted(p.name for p in (killed / "chunks").glob("chunk_*")) == [
      "chunk_000000.npz", "chunk_000001.npz"]
  assert not (killed / "results.json").exists()
  # A chunk half-written when a process died (as a copy or a lost node leaves it) is detected
  # and computed again, never read; so is a leftover temporary file.
  second = killed / "chunks" / "chunk_000001.npz"
  second.write_bytes(second.read_bytes()[:len(second.read_bytes()) // 2])
  (killed / "chunks" / f"chunk_000002.npz{chunks.PARTIAL}").write_bytes(b"\0" * 100)
  lines = []
  results = evaluate_workdir(trained, METHODS, list(METRICS), options=METRICS, n=N,
                             batch_size=BATCH, chunk_size=CHUNK, out=killed, log=lines.append)
  text = "\n".join(lines)
  assert "chunk_000002.npz.partial: a chunk half-written" in text
  assert "chunk_000001.npz: unreadable" in text
  assert "resuming at example 16 of 40" in text
  assert results["chunks"]["resumed_at_example"] == 16 and results["examples_computed"] == 24
  np.testing.assert_equal(_scores(killed), reference)  # identical, not merely close
  # Run again: nothing left to compute.
  lines.clear()
  again = evaluate_workdir(trained, METHODS, list(METRICS), options=METRICS, n=N,
                           batch_size=BATCH, chunk_size=CHUNK, out=killed, log=lines.append)
  assert again["examples_computed"] == 0 and "all 40 examples are already scored" in lines[1]


def test_sigterm_stops_after_the_chunk_and_other_settings_start_over(trained, tmp_path,
                                                                     monkeypatch):
  write = chunks.ChunkStore.write

  def write_then_term(self, index, arrays):
    write(self, index, arrays)
    if index == 0:
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(chunks.ChunkStore, "write", write_then_term)
  with pytest.raises(Interrupted, match="SIGTERM: stopped after example 16 of 40") as stopped:
    evaluate_workdir(trained, ["random"], ["pixel_flipping"], n=N, batch_size=BATCH,
                     chunk_size=CHUNK, out=tmp_path, log=lambda _: None)
  assert stopped.value.exit_status == 143
  monkeypatch.setattr(chunks.ChunkStore, "write", write)
  lines = []
  evaluate_workdir(trained, ["random"], ["pixel_flipping"], n=N, batch_size=BATCH,
                   chunk_size=CHUNK, out=tmp_path, seed=1, log=lines.append)
  assert any("the 1 chunks on disk were computed with other settings (seed changed)" in line
             for line in lines), lines
