"""The training loop: one readable function from a config to a finished workdir.

`train_and_evaluate(config, workdir)` trains `config.model` on `config.data` with the loss terms of
`config.losses` and the optimizer of `config.optimizer`, data-parallel over all devices, evaluates
on the validation split after every epoch (early stopping on its loss, as in Rieger 2018 sec. 5.1),
and finally on the test split with the best parameters. The workdir:

  config.json     the config, so that later tools can rebuild the model
  checkpoints/    latest/ (resume) and best/ (lowest validation loss), orbax
  metrics.jsonl   one JSON object per logged step and per epoch
  results.json    the final numbers (test_accuracy, ...), results.md the same as a table

A generative model (`GENERATIVE = True`: `gaussian_rbm`, `adversarial_autoencoder`) trains the same
way; its validation and test loss are the mean of its `example_loss` (the reconstruction error),
and its accuracies are null.

(The figures are drawn above this layer, by `xjax.experiments`: training never imports plotting.)
A run can start from another run's best parameters (`train.init_from`), load pre-trained modules
(`train.pretrained`) and freeze parameters by path (`train.frozen`, `xjax.train.frozen`).

Started again in the same workdir, a run resumes from its latest checkpoint (parameters, optimizer
state, step, RNG, data position, loop state) and ends with the same parameters as a run that was
never interrupted. SIGTERM or SIGINT (Ctrl-C) saves a checkpoint and stops (`Interrupted`, an
`xjax.errors` error like the others, importable from here too). The loop's state (`LoopState`:
history, early stopping, the hooks' state) is saved with every checkpoint.

One process writes a workdir at a time (`xjax.train.workdir.locked`), and a workdir whose run was
started with another config is refused before any data is loaded unless `resume_with_changes`
(then config.json becomes the new config, and the change and the step it took effect at are kept
in config_changes.jsonl and results.json's `config_changes`).
"""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from xjax.data import pipeline, registry, sharding, tasks
from xjax.errors import ConfigError, Interrupted, XjaxError
from xjax.nn import registry as models
from xjax.train import checkpoint, report
from xjax.train import workdir as rundir
from xjax.train.config_checks import check_validation_penalties
from xjax.train.frozen import freeze, frozen_mask, load_pretrained
from xjax.train.losses import build_loss_terms
from xjax.train.optim import make_optimizer
from xjax.train.state import TrainState, create_train_state
from xjax.train.step import compile_eval_step, compile_train_step, make_eval_step, make_train_step


class StopSignals:
  """Turns SIGTERM and SIGINT into a flag the loop checks after each step (then saves and stops).

  A second SIGINT (Ctrl-C pressed again while the step finishes or the checkpoint is written)
  stops at once, as `KeyboardInterrupt`: the checkpoints already on disk are kept.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum = 0  # the first signal that arrived (0: none)
    self._previous = {}

  def __enter__(self):
    for signum in self.SIGNALS:
      try:
        self._previous[signum] = signal.signal(signum, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        break
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = self.signum or signum

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      if previous is not None:
        signal.signal(signum, previous)

  def agreed(self) -> int:
    """The signal any process has been sent (0: none), the same answer in every process.

    With several processes this is a collective: every process calls it at the same point of
    the same step, so all of them save and stop at the same step (a scheduler's signals reach
    the hosts at different moments, and a process that saved alone would wait forever for the
    others in orbax's barriers while they wait for it in the next train step).
    """
    if jax.process_count() == 1:
      return self.signum
    from jax.experimental import multihost_utils
    return int(np.max(multihost_utils.process_allgather(np.asarray(self.signum, np.int32))))


@dataclasses.dataclass
class LoopState:
  """What the loop remembers across steps, saved as JSON in every checkpoint (resumption).

  Attributes:
    history: one entry per finished epoch (its train and validation numbers, and what
      `TrainHooks.on_epoch_end` added); results.json's `history`.
    best_validation_loss: the lowest validation loss so far (None before the first epoch ends).
    best_epoch: the epoch (1-based) that reached it.
    bad_epochs: epochs since it last improved (early stopping's count).
    stopped_early: early stopping ended the run.
    train_seconds: the training time so far, over every resumption.
    epoch_logs: this epoch's logged train metrics (each with its `steps`), kept across a resume
      so that the epoch's train means count every step.
    hooks: the hooks' own state, by a key of each hook's choosing (XNet: "xnet"): JSON-able
      values or dataclasses of them. A checkpoint saves a dataclass as the JSON object of its
      fields and restores that object, which the hook turns back into its type.
  """

  history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  best_validation_loss: float | None = None
  best_epoch: int | None = None
  bad_epochs: int = 0
  stopped_early: bool = False
  train_seconds: float = 0.0
  epoch_logs: list[dict[str, float]] = dataclasses.field(default_factory=list)
  hooks: dict[str, Any] = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict[str, Any]:
    """The JSON object saved in a checkpoint (a deep copy: later steps do not change it)."""
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, data: dict[str, Any]) -> LoopState:
    """The state a checkpoint saved, in this layout or the one before `hooks`.

    Checkpoints written before `LoopState` hold a flat dict whose hook state sits beside the
    loop's keys (XNet's under "xnet"), and the oldest have no "epoch_logs": those hook keys are
    moved under `hooks`, and a missing field takes its default, so such a run still resumes.
    """
    names = {field.name for field in dataclasses.fields(cls)}
    own = {k: v for k, v in data.items() if k in names}
    hooks = dict(own.pop("hooks", None) or {})
    hooks.update({k: v for k, v in data.items() if k not in names})  # the old layout's
    return cls(**own, hooks=hooks)


class TrainHooks:
  """Extension points of `train_and_evaluate` for training-time methods (no-ops by default).

  A method that needs more than loss terms (XNet's matching and per-epoch drop losses) subclasses
  this. Hooks keep what they must remember in `loop.hooks` (`LoopState`: under a key of their
  own, saved in every checkpoint), so a resumed run continues with the same state.
  """

  def on_epoch_start(self, state: TrainState, epoch: int, loop: LoopState) -> None:
    """Before the first step of `epoch` (0-based), also when a run resumes at an epoch boundary."""

  def transform_batch(self, batch: dict[str, np.ndarray], loop: LoopState
                      ) -> dict[str, np.ndarray]:
    """A training batch, on the host, before it is sharded (e.g. to add a field)."""
    return batch

  def on_epoch_end(self, state: TrainState, epoch: int, loop: LoopState) -> dict[str, Any]:
    """After epoch `epoch` (1-based) is validated; the result joins its entry of the history."""
    return {}

  def results(self, loop: LoopState) -> dict[str, Any]:
    """What the hooks add to the run's results.json (read from the restored `loop`)."""
    return {}


def load_sources(data: ml_collections.ConfigDict, splits=("train", "validation", "test")):
  """The sources of `config.data` by split, with the derived task of `data.task` if it has one."""
  options = dict(data.get("options", {}))
  if data.get("skip_unreadable"):  # only the local folders take it
    options["skip_unreadable"] = True
  task = dict(data.get("task") or {})
  return {split: tasks.apply_task(registry.get_source(
      data.name, split, data_dir=data.get("data_dir"),
      validation_fraction=data.get("validation_fraction", 0.1), **options), **task)
          for split in splits}


def skipped_images(source) -> list:
  """The (file, reason) of the images `source` skipped as unreadable (`data.skip_unreadable`)."""
  return list(getattr(source, "skipped", None) or getattr(getattr(source, "source", None),
                                                          "skipped", None) or [])


def build_model(config: ml_collections.ConfigDict, info) -> Any:
  """`config.model` with `num_classes` taken from the data when the config does not set it.

  A model with an `image_shape` field (the decoder of `AdversarialAutoencoder`) gets the data's
  image shape the same way.
  """
  kwargs = {k: v for k, v in config.model.items() if k != "name"}
  kwargs.setdefault("num_classes", info.num_classes)
  if "image_shape" in models.model_fields(models.MODELS[config.model.name]):
    kwargs.setdefault("image_shape", tuple(info.image_shape))
  return models.get_model(config.model.name, **kwargs)


def evaluate(eval_step: Callable, variables: dict, source, config, mesh
             ) -> dict[str, float | None]:
  """Mean loss and accuracy over every example of `source`.

  The accuracy is None for a generative model (its eval step counts no `correct`).
  """
  totals: dict[str, float] = {}
  for batch in pipeline.eval_batches(
      source, batch_size=config.data.eval_batch_size, normalization=config.data.normalization,
      fields=("image", "label"), process_index=jax.process_index(),
      process_count=jax.process_count()):
    sums = jax.device_get(eval_step(variables, sharding.shard_batch(batch, mesh)))
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  return {"loss": totals["loss_sum"] / totals["count"],
          "accuracy": totals["correct"] / totals["count"] if "correct" in totals else None}


def _finite_or_none(value: float | None) -> float | None:
  """None for an undefined metric (a generative model's accuracy is NaN in training)."""
  return value if value is not None and np.isfinite(value) else None


def _format(value: float | None, digits: int = 4) -> str:
  """A metric for the progress lines: "n/a" where it is undefined (None or NaN)."""
  return "n/a" if _finite_or_none(value) is None else f"{value:.{digits}f}"


def validation_penalty(terms: dict, names, params) -> float:
  """The weighted parameter penalties `names` (loss terms of `params` only, e.g. `block_l1`).

  Added to the validation loss that early stopping and the best checkpoint follow, as Keras's
  `val_loss` includes the regularisation losses (the stopping rule of Rieger 2018 Sec. 5.1).

  Args:
    terms: the config's loss terms, `build_loss_terms(config.losses)`.
    names: `train.validation_penalties`.
    params: the parameters to evaluate them at.

  Raises:
    ConfigError: a name is not a loss term, or its term needs a batch (it is not a penalty).
  """
  check_validation_penalties(tuple(names), terms, "train.validation_penalties")
  total = 0.0
  for name in names:
    weight, term = terms[name]
    total += weight * float(term(params, None, None))
  return total


def initial_params(state: TrainState, init_from: str | Path) -> TrainState:
  """`state` with the parameters and model state of another run's best checkpoint (fine-tuning).

  The optimizer state, step and RNG stay those of the new run: a fresh optimizer (zero moments for
  Adam and SGD with momentum), as when a Keras model is compiled again for fine-tuning.

  Raises:
    XjaxError: `init_from` has no best checkpoint (the run it names was not trained).
    CheckpointMismatchError: its parameters do not fit this config's model.
  """
  best = Path(init_from).absolute() / "checkpoints" / "best"
  if not any(p.name.isdigit() for p in best.glob("*")):
    raise XjaxError(f"train.init_from: no best checkpoint under {best}; train that run first.")
  saved = checkpoint.load_params(init_from, "best")
  wanted = {"params": state.params, "model_state": state.model_state}
  have = {"params": saved["params"], "model_state": saved.get("model_state", {})}
  checkpoint.check_fits(wanted, have, best)
  return state.replace(params=jax.tree.map(lambda w, v: np.asarray(v, w.dtype), state.params,
                                           have["params"]),
                       model_state=jax.tree.map(lambda w, v: np.asarray(v, w.dtype),
                                                state.model_state, have["model_state"]))


def frozen_masks(model, image_shape: tuple[int, ...], prefixes) -> dict | None:
  """`{"params": mask, "model_state": mask}` of `train.frozen` (None when nothing is frozen)."""
  if not prefixes:
    return None
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jax.numpy.zeros(
      (1, *image_shape)), train=False))
  return {"params": frozen_mask(shapes["params"], prefixes),
          "model_state": {k: frozen_mask(v, prefixes, check=False)
                          for k, v in shapes.items() if k != "params"}}


def _mean_metrics(rows: list[dict]) -> dict[str, float]:
  """The mean of each metric over the steps since the last flush (one device transfer)."""
  rows = jax.device_get(rows)
  return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path,
                       hooks: TrainHooks | None = None, *, resume_with_changes: bool = False
                       ) -> dict:
  """Trains, validates every epoch, tests the best parameters; returns results.json's content.

  `config.train.test_params` chooses the parameters tested: "best" (lowest validation loss,
  the default) or "last" (those at the end of training). `hooks` extend the loop (`TrainHooks`).
  Before any data is loaded the workdir is checked (writable), locked (one writer), and, if its
  run has a checkpoint, its config.json compared with `config`: a difference is refused
  (`ConfigChanged`) unless `resume_with_changes`, which records it (`xjax.train.workdir`).

  Raises:
    WorkdirError: the workdir is not writable, in use (`WorkdirInUse`), or holds a run of another
      config (`ConfigChanged`).
    Interrupted: SIGTERM or SIGINT arrived; a checkpoint of the step named was saved.
  """
  test_params = config.train.get("test_params", "best")
  if test_params not in ("best", "last"):
    raise ConfigError(f"train.test_params must be 'best' or 'last', got {test_params!r}.")
  workdir = Path(workdir)
  rundir.check_writable(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  with rundir.locked(workdir):
    changes = rundir.changed_config(workdir, config, started=rundir.has_checkpoint(workdir),
                                    resume_with_changes=resume_with_changes)
    return _train_and_evaluate(config, workdir, hooks or TrainHooks(), test_params, changes)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: Path, hooks: TrainHooks,
                        test_params: str, changes: dict) -> dict:
  """`train_and_evaluate` in a checked, locked workdir; `changes`: its config's, to record."""
  is_main = jax.process_index() == 0
  tc = config.train

  # ---------------------------------------------------------------- mesh
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.data.batch_size, mesh)
  sharding.check_batch_size(config.data.eval_batch_size, mesh, "eval batch size")

  # ---------------------------------------------------------------- input
  sources = load_sources(config.data)
  info = sources["train"].info
  augmentation = pipeline.Augmentation(**config.data.get("augmentation", {}))
  train_data = pipeline.train_pipeline(
      sources["train"], batch_size=config.data.batch_size, seed=config.seed,
      normalization=config.data.normalization, augmentation=augmentation,
      num_epochs=tc.epochs, fields=tuple(config.data.get("fields", ("image", "label"))),
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_threads=config.data.get("num_threads", 2))
  steps_per_epoch = train_data.steps_per_epoch
  total_steps = tc.epochs * steps_per_epoch

  # ---------------------------------------------------------------- model
  model = build_model(config, info)
  tx = make_optimizer(**config.optimizer, steps_per_epoch=steps_per_epoch, total_epochs=tc.epochs)
  frozen = frozen_masks(model, info.image_shape, tc.get("frozen", ()))
  if frozen is not None:  # a pre-trained network under new modules: no update, no optimizer state
    tx = freeze(tx, frozen["params"])
  state = create_train_state(model, tx, jax.random.PRNGKey(config.seed), info.image_shape)
  state = jax.device_put(state, sharding.replicated(mesh))

  # ---------------------------------------------------------------- update step
  terms = build_loss_terms(config.losses)
  penalties = tuple(tc.get("validation_penalties", ()))
  validation_penalty(terms, penalties, state.params)  # fails now on an unknown name
  train_step = compile_train_step(make_train_step(model, tx, terms, frozen), mesh)
  eval_step = compile_eval_step(make_eval_step(model), mesh)

  # ---------------------------------------------------------------- checkpoint
  ckpt = checkpoint.RunCheckpoints(workdir)
  data_state, loop = None, LoopState()
  if ckpt.latest_step() is not None:
    state, data_state, saved_loop = ckpt.restore(state)
    loop = LoopState.from_json(saved_loop)
    print(f"Resuming from step {int(state.step)} in {ckpt.latest_dir}.", flush=True)
  else:
    if tc.get("init_from"):  # fine-tuning: start from another run's best parameters
      state = jax.device_put(initial_params(state, tc.init_from), sharding.replicated(mesh))
      print(f"Starting from the best parameters of {tc.init_from}.", flush=True)
    if tc.get("pretrained"):  # modules of the model from other runs' best parameters
      params, model_state, notes = load_pretrained(state.params, state.model_state,
                                                   dict(tc.pretrained))
      state = jax.device_put(state.replace(params=params, model_state=model_state),
                             sharding.replicated(mesh))
      print(f"Loaded pre-trained parameters: {'; '.join(notes)}.", flush=True)
    if is_main:
      rundir.record_config(workdir, config)
  start_step = int(jax.device_get(state.step))
  if changes:
    # (With several processes, the others compared config.json before orbax's barrier in
    # `RunCheckpoints` above, so none of them reads the new one.)
    if is_main:
      rundir.record_config(workdir, config, changes, step=start_step)
    print(f"Resuming with a changed config from step {start_step}: "
          f"{rundir.describe_changes(changes)} (recorded in "
          f"{workdir / rundir.CHANGES_FILE}).", flush=True)
  writer = (report.MetricWriter(workdir / "metrics.jsonl", resume_step=start_step) if is_main
            else None)
  iterator = train_data.iterator(data_state)

  def save():
    ckpt.save(state, iterator.get_state(), loop.to_json())

  # ---------------------------------------------------------------- loop
  step_metrics: list[dict] = []

  def flush_metrics(step: int) -> None:
    """The mean train metrics since the last flush into the loop state and metrics.jsonl."""
    nonlocal step_metrics
    logged = _mean_metrics(step_metrics)
    loop.epoch_logs.append({**logged, "steps": len(step_metrics)})
    step_metrics = []
    if not np.isfinite(logged["loss"]):
      ckpt.wait()
      raise XjaxError(f"The training loss became {logged['loss']} at step {step}; the last "
                      f"good checkpoint is step {ckpt.latest_step()} in {ckpt.latest_dir}. "
                      f"Lower the learning rate or check the data for NaNs.")
    bar.set_postfix(loss=f"{logged['loss']:.4f}", acc=_format(logged["accuracy"], 3))
    if writer:
      writer.write(step, {"epoch": step / steps_per_epoch,
                          **{f"train/{k}": v for k, v in logged.items()}})

  started = time.time() - loop.train_seconds
  bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
             disable=None if is_main else True, dynamic_ncols=True)
  with StopSignals() as signals:
    step = start_step
    while step < total_steps and not loop.stopped_early:
      if step % steps_per_epoch == 0:
        hooks.on_epoch_start(state, step // steps_per_epoch, loop)
      batch = hooks.transform_batch(next(iterator), loop)
      state, metrics = train_step(state, sharding.shard_batch(batch, mesh))
      step += 1
      step_metrics.append(metrics)
      bar.update(1)
      end_of_epoch = step % steps_per_epoch == 0
      saving = end_of_epoch or step % tc.checkpoint_every_steps == 0
      # Metrics are flushed into the loop state before every save, so a resumed run loses none.
      if step % tc.log_every_steps == 0 or saving:
        flush_metrics(step)
      if end_of_epoch:
        epoch = step // steps_per_epoch
        val = evaluate(eval_step, state.variables, sources["validation"], config, mesh)
        if penalties:
          val["cross_entropy"] = val["loss"]
          val["loss"] += validation_penalty(terms, penalties, state.params)
        logs, loop.epoch_logs = loop.epoch_logs, []
        train_means = {k: float(np.average([m[k] for m in logs],
                                           weights=[m["steps"] for m in logs]))
                       for k in ("loss", "accuracy")}
        loop.history.append({"epoch": epoch, "step": step, "train_loss": train_means["loss"],
                                "train_accuracy": _finite_or_none(train_means["accuracy"]),
                                "validation_loss": val["loss"],
                                "validation_accuracy": val["accuracy"],
                                **({"validation_cross_entropy": val["cross_entropy"]}
                                   if penalties else {}),
                                **hooks.on_epoch_end(state, epoch, loop)})
        best = loop.best_validation_loss
        if best is None or val["loss"] < best:
          loop.best_validation_loss, loop.best_epoch, loop.bad_epochs = val["loss"], epoch, 0
          ckpt.save_best(state, {"epoch": epoch, **val})
        else:
          loop.bad_epochs += 1
          patience = tc.get("early_stopping_patience")
          if patience and loop.bad_epochs >= patience:
            loop.stopped_early = True
        if writer:
          writer.write(step, {"epoch": epoch, **{f"validation/{k}": v for k, v in val.items()}})
        tqdm.write(f"epoch {epoch}: train loss {train_means['loss']:.4f} acc "
                   f"{_format(train_means['accuracy'])} | validation loss {val['loss']:.4f} acc "
                   f"{_format(val['accuracy'])}")
      # SIGTERM / SIGINT can land at any moment of the step (in the evaluation too), after
      # `saving` was decided: the flag is read once, here, and a set flag saves this step whatever
      # was decided (`agreed`: with several processes, all of them read it here and get the same
      # answer).
      stop = signals.agreed()
      if saving or stop:
        if step_metrics:
          flush_metrics(step)
        loop.train_seconds = time.time() - started
        save()
      stop = stop or (saving and signals.agreed())  # (during the save: this step is saved)
      if stop:
        ckpt.wait()
        bar.close()
        raise Interrupted(f"{signal.Signals(stop).name}: saved step {step} in "
                          f"{ckpt.latest_dir}; run the same command again to resume.",
                          exit_status=128 + stop)
  bar.close()
  if int(jax.device_get(state.step)) != (ckpt.latest_step() or -1):
    save()
  ckpt.wait()

  # ---------------------------------------------------------------- final evaluation
  tested = (ckpt.restore_best(state) or state) if test_params == "best" else state
  test = evaluate(eval_step, tested.variables, sources["test"], config, mesh)
  ckpt.close()
  history = loop.history
  results = {
      "name": config.get("name", config.data.name), "test_accuracy": test["accuracy"],
      "test_loss": test["loss"], "best_validation_loss": loop.best_validation_loss,
      "best_validation_accuracy": next((h["validation_accuracy"] for h in history
                                        if h["epoch"] == loop.best_epoch), None),
      "best_epoch": loop.best_epoch, "epochs_completed": len(history),
      "stopped_early": loop.stopped_early, "steps": int(jax.device_get(state.step)),
      "test_params": test_params,
      "train_seconds": loop.train_seconds, "num_devices": mesh.size,
      "num_params": models.count_params(state.params), "history": history,
      "skipped_unreadable_images": {split: len(skipped_images(source))
                                    for split, source in sources.items()},
      **hooks.results(loop),
      "config_changes": rundir.read_changes(workdir),
  }
  if is_main:
    report.write_json(workdir / "results.json", results)
    (workdir / "results.md").write_text(
        report.training_results_markdown(results, config.get("paper", None)))
  print(json.dumps({"test_accuracy": (None if test["accuracy"] is None
                                      else round(test["accuracy"], 4)),
                    "test_loss": round(test["loss"], 4), "workdir": str(workdir)}), flush=True)
  return results
