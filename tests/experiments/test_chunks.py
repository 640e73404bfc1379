"""The chunk store of streamed evaluations: atomic chunks, validation, resuming, settings."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from xjax.experiments.chunks import PARTIAL, ChunkStore
from xjax.experiments.progress import Progress


def _store(tmp_path, lines, **settings):
  return ChunkStore(tmp_path / "chunks", {"methods": ["a"], **settings}, n=10, chunk_size=4,
                    log=lines.append)


def _fill(store, upto):
  for index in range(upto):
    start, stop = store.bounds(index)
    store.write(index, {"score": np.arange(start, stop, dtype=np.float32)})


def test_chunks_resume_after_the_last_whole_one(tmp_path):
  lines = []
  store = _store(tmp_path, lines)
  assert store.num_chunks == 3 and store.bounds(2) == (8, 10)
  assert store.open() == 0
  _fill(store, 2)
  assert _store(tmp_path, lines).open() == 2 and not lines
  _fill(store, 3)
  np.testing.assert_array_equal(store.concatenate(["score"])["score"], np.arange(10))
  assert [len(c["score"]) for c in store.chunks()] == [4, 4, 2]
  assert json.loads((tmp_path / "chunks" / "settings.json").read_text())["methods"] == ["a"]


def test_half_written_and_damaged_chunks_are_redone_never_read(tmp_path):
  lines = []
  store = _store(tmp_path, lines)
  store.open()
  _fill(store, 3)
  (tmp_path / "chunks" / f"chunk_000003.npz{PARTIAL}").write_bytes(b"PK\3\4 half")
  second = store.path(1)
  second.write_bytes(second.read_bytes()[:-30])  # cut short: its zip directory is gone
  assert store.open() == 1
  assert "a chunk half-written" in lines[0] and "chunk_000001.npz: unreadable" in lines[1]
  assert not store.path(2).exists()  # after a gap nothing is trusted
  # A chunk with the wrong number of rows is not whole either.
  np.savez(store.path(1), score=np.zeros(3))
  assert store.problem(1) == "score has 3 rows, not 4"
  with pytest.raises(ValueError, match="4 rows, but {'score': 3}"):
    store.write(1, {"score": np.zeros(3)})


def test_other_settings_start_over_saying_what_changed(tmp_path):
  lines = []
  store = _store(tmp_path, lines)
  store.open()
  _fill(store, 2)
  assert _store(tmp_path, lines, seed=1).open() == 0
  assert "the 2 chunks on disk were computed with other settings (seed changed)" in lines[0]
  assert not list((tmp_path / "chunks").glob("chunk_*"))


def test_progress_bars_give_speed_and_time_left():
  out = io.StringIO()
  bars = Progress(["saliency", "saliency · pixel_flipping"], 100, done=20, stream=out)
  bars.add("saliency", 40, 2.0)  # 20 examples/s: 40 left, 2 s
  bars.add("saliency · pixel_flipping", 40, 8.0)  # 5 examples/s: 8 s
  bars.show()
  lines = out.getvalue().splitlines()
  assert lines[0].split() == ["saliency", "[##############..........]", "60/100", "20.0", "ex/s",
                              "0:02", "left"]
  assert lines[1].endswith("5.0 ex/s  0:08 left") and lines[2].split() == ["all", "0:10", "left"]
  bars.show()  # not a terminal: at most every 30 s, and at the end
  assert len(out.getvalue().splitlines()) == 3
  Progress(["a"], 10, stream=out, enabled=False).show(final=True)  # not process 0
  assert len(out.getvalue().splitlines()) == 3
