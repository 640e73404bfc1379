"""Orbax checkpoints of a run: the train state, the data iterator's position and the loop's state.

`workdir/checkpoints/latest/<step>/` holds what a restarted run resumes from (the newest two are
kept); `workdir/checkpoints/best/<step>/` the train state with the lowest validation loss so far,
which the final test evaluation and later analyses (`load_variables`) use. Saves are atomic (orbax
writes to a temporary folder and renames it), so a run killed mid-save leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from xjax.errors import CheckpointMismatchError, XjaxError
from xjax.train.state import TrainState


def _shape_tree(tree) -> dict[str, tuple]:
  """`{"params/conv1/kernel": shape, ...}` of a pytree of arrays or orbax metadata."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path, simple=True, separator="/"): tuple(leaf.shape)
          for path, leaf in flat if hasattr(leaf, "shape")}


def check_fits(expected: Any, saved_metadata: Any, where: Path) -> None:
  """Raises `CheckpointMismatchError` listing the arrays whose names or shapes differ."""
  want, have = _shape_tree(expected), _shape_tree(saved_metadata)
  missing = sorted(set(want) - set(have))
  unexpected = sorted(set(have) - set(want))
  wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
  if not (missing or unexpected or wrong):
    return
  lines = [f"The checkpoint in {where} does not fit the model of this config."]
  lines += [f"  {k}: checkpoint {have[k]}, model {want[k]}" for k in wrong[:10]]
  lines += [f"  only in the model: {k}" for k in missing[:5]]
  lines += [f"  only in the checkpoint: {k}" for k in unexpected[:5]]
  lines.append("Use a new --workdir, or the config this workdir was trained with "
               "(saved in its config.json).")
  raise CheckpointMismatchError("\n".join(lines))


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _reason(error: BaseException) -> str:
  """The first line of an exception's message, shortened (orbax's run to pages)."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  text = lines[0] if lines else ""
  return f"{type(error).__name__}: {text[:120]}{'...' if len(text) > 120 else ''}"


def _quiet_abandoned_reads() -> None:
  """Drops the "Event loop is closed" reports of orbax's abandoned reads (from here on).

  When a read of a damaged checkpoint fails, TensorStore still completes the other reads of that
  restore, on its own threads, whose callbacks find orbax's event loop closed, and the failed
  reads that nobody awaits any more are collected later; each is reported through
  `sys.unraisablehook` as a traceback (18 of them for one deleted manifest). They say nothing the
  one-line warning does not, so those two kinds are filtered out; all else is printed.
  """
  previous = sys.unraisablehook
  if getattr(previous, "quiet_abandoned_reads", False):
    return

  def hook(unraisable):
    value = unraisable.exc_value
    if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
      return
    frames = traceback.walk_tb(unraisable.exc_traceback)
    if any("orbax" in frame.f_code.co_filename for frame, _ in frames):
      return  # a read of the damaged checkpoint that nobody waits for any more
    previous(unraisable)

  hook.quiet_abandoned_reads = True
  sys.unraisablehook = hook


def _never_retrieved(record: logging.LogRecord) -> bool:
  """A logging filter: False for asyncio's "Task exception was never retrieved" reports."""
  return not str(record.msg).startswith("Task exception was never retrieved")


def _quiet_failed_reads() -> None:
  """After a failed restore: its unfinished read tasks, collected later, are not reported
  (asyncio logs each with a traceback; the one-line warning has said what failed)."""
  logger = logging.getLogger("asyncio")
  if _never_retrieved not in logger.filters:
    logger.addFilter(_never_retrieved)


def restore_newest(manager: ocp.CheckpointManager, directory: Path,
                   restore: Callable[[int], Any], log: Callable[[str], None] = print
                   ) -> tuple[int | None, Any]:
  """`(step, restore(step))` of the newest readable checkpoint of `manager`; `(None, None)` if
  there is none.

  A checkpoint that cannot be read (a data file truncated by a full disk, a missing manifest, a
  corrupt JSON item) is moved aside to `<step>.corrupt` (never deleted), said in one line, and the
  previous one is tried.

  Raises:
    CheckpointMismatchError: a checkpoint that is readable but does not fit the model.
    XjaxError: checkpoints exist but none is readable (the message lists what was tried).
  """
  _quiet_abandoned_reads()  # (they may come while the failing restore is still running)
  tried = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return step, restore(step)
    except CheckpointMismatchError:
      raise
    except Exception as e:  # orbax, tensorstore and json raise many kinds for a damaged file
      _quiet_failed_reads()
      aside = directory / f"{step}.corrupt"
      suffix = 1
      while aside.exists():
        aside, suffix = directory / f"{step}.corrupt{suffix}", suffix + 1
      (directory / str(step)).rename(aside)
      manager.reload()
      tried.append(f"step {step} ({_reason(e)})")
      log(f"warning: the checkpoint of step {step} in {directory} is unreadable "
          f"({_reason(e)}); moved it to {aside.name}, trying the one before it.")
  if tried:
    raise XjaxError(f"No readable checkpoint in {directory}: tried {'; '.join(tried)}. Each was "
                    f"moved aside as <step>.corrupt; start again in a new workdir.")
  return None, None


class RunCheckpoints:
  """The `latest` and `best` checkpoint managers of one workdir."""

  def __init__(self, workdir: str | Path, max_to_keep: int = 2):
    root = Path(workdir).absolute() / "checkpoints"
    self.latest_dir, self.best_dir = root / "latest", root / "best"
    # With several processes, orbax synchronises each save with barriers named by its step: the
    # two managers save the same step at the end of an epoch, and without their own prefixes
    # their barriers collide ("Barrier _async_commit_complete.16 is already ongoing").
    processes = lambda name: ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)
    self.latest = ocp.CheckpointManager(
        self.latest_dir, options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, multiprocessing_options=processes("latest")),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": ocp.JsonCheckpointHandler(), "loop": ocp.JsonCheckpointHandler()})
    self.best = ocp.CheckpointManager(
        self.best_dir, options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, multiprocessing_options=processes("best")),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "metrics": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def save(self, state: TrainState, data_state: dict, loop_state: dict) -> None:
    """Saves the state and the positions of the data iterator and the loop at `state.step`."""
    step = int(jax.device_get(state.step))
    self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
        loop=ocp.args.JsonSave(loop_state)), force=True)

  def save_best(self, state: TrainState, metrics: dict) -> None:
    step = int(jax.device_get(state.step))
    if step in self.best.all_steps():  # a run resumed from before it: the same step, again
      self.best.delete(step)
    self.best.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), metrics=ocp.args.JsonSave(metrics)), force=True)

  def restore(self, like: TrainState) -> tuple[TrainState, dict, dict]:
    """The newest readable `latest` checkpoint, restored with the shardings of `like`
    (unreadable ones are moved aside: `restore_newest`)."""

    def read(step: int):
      check_fits(like, self.latest.item_metadata(step)["state"], self.latest_dir / str(step))
      restored = self.latest.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(_abstract(like)), data=ocp.args.JsonRestore(),
          loop=ocp.args.JsonRestore()))
      if not isinstance(restored["loop"], dict) or not isinstance(restored["data"], dict):
        raise ValueError("the loop or data state is not a JSON object")
      return restored["state"], restored["data"], restored["loop"]

    step, restored = restore_newest(self.latest, self.latest_dir, read)
    if step is None:
      raise XjaxError(f"No checkpoint in {self.latest_dir} to resume from.")
    return restored

  def restore_best(self, like: TrainState) -> TrainState | None:
    """The newest readable `best` checkpoint, or None when there is none."""

    def read(step: int):
      check_fits(like, self.best.item_metadata(step)["state"], self.best_dir / str(step))
      return self.best.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(_abstract(like))))["state"]

    return restore_newest(self.best, self.best_dir, read)[1]

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def load_params(workdir: str | Path, which: str = "best") -> dict[str, Any]:
  """The saved train state of a workdir (`best`, else `latest`) as numpy arrays.

  Restored onto this process's first device whatever topology saved it, so a model trained on
  several GPUs can be analysed on a laptop.
  """
  root = Path(workdir).absolute() / "checkpoints"
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  for name in ((which, "latest") if which == "best" else (which,)):
    manager = ocp.CheckpointManager(root / name, item_handlers={
        "state": ocp.StandardCheckpointHandler(), **{k: ocp.JsonCheckpointHandler()
                                                     for k in ("data", "loop", "metrics")}})

    def read(step: int, manager=manager):
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                            manager.item_metadata(step)["state"].tree)
      return manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target)))["state"]

    try:
      step, restored = restore_newest(manager, root / name, read)
    finally:
      manager.close()
    if step is not None:
      return jax.device_get(restored)
  raise XjaxError(f"No checkpoint under {root}: train a model in this workdir first.")


def load_variables(workdir: str | Path, which: str = "best") -> dict[str, Any]:
  """The Flax variables of a workdir's `which` checkpoint: `{"params": ..., **model_state}`."""
  state = load_params(workdir, which)
  return {"params": state["params"], **state.get("model_state", {})}
