"""The one command line of `python -m runs.<name>`: flags, and errors as one line, no traceback.

  run(main)                  `main(config, workdir)` from --config=FILE[:VARIANT] and --workdir
  experiment(name)           the registered experiment `name` through `run_experiment`
  explain()                  `python -m runs.explain --workdir=W --methods=... --n=N`
  evaluate()                 `python -m runs.evaluate`: the `evaluate` experiment with --config,
                             or any trained workdir scored with --methods and --metrics

Every entrypoint imports the plug-ins (`xjax.plugins`), so any registered model, loss term or
method works from any of them; a user error (`XjaxError`, a bad flag or config key) prints
`error: ...` and exits with status 2 (143 after SIGTERM saved a checkpoint, 130 after SIGINT:
the `exit_status` of `xjax.errors.Interrupted`). A Ctrl-C anywhere else is one line too, with
status 130. The workdir (or the output folder of explain / evaluate) is checked for writing
before any work.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path


def _sigint_while_starting(signum, frame):
  """Ctrl-C while the modules below load (5 s: JAX, every plug-in): one line, no traceback."""
  del signum, frame
  print("error: SIGINT: stopped while starting; nothing was done.", file=sys.stderr, flush=True)
  os._exit(130)


# Installed before the slow imports, and only when a `python -m runs.<name>` command is the
# program (not where SIGINT is ignored, nor in a process that merely imports this module).
if (getattr(getattr(sys.modules.get("__main__"), "__spec__", None), "name", "").startswith("runs.")
    and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
  signal.signal(signal.SIGINT, _sigint_while_starting)

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import xjax.plugins  # noqa: E402, F401 (registers every model, loss term, method and experiment)
from xjax.errors import Interrupted, XjaxError  # noqa: E402
from xjax.train import workdir as rundir  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file, `runs/configs/NAME.py[:VARIANT[,MODIFIER]]`; override keys "
    "with --config.KEY=VALUE.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "The run's directory: checkpoints, metrics, results.")
_RESUME_WITH_CHANGES = flags.DEFINE_bool(
    "resume_with_changes", False, "Continue the run (or experiment) in --workdir although its "
    "saved config.json differs from --config: config.json becomes the new config, and the "
    "change, with the step it took effect at, is recorded in config_changes.jsonl and "
    "results.json. Without it such a rerun is refused, listing the keys that differ.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() first (one process per host, or per "
    "GPU as SLURM starts them; each reads its share of every global batch). The "
    "coordinator, process count and id are found from the cluster's environment (SLURM, Cloud "
    "TPU, Open MPI, Kubernetes) unless given below; the coordinator address also from "
    "$JAX_COORDINATOR_ADDRESS.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "With --multihost: HOST:PORT of process 0's coordinator "
    "(default: $JAX_COORDINATOR_ADDRESS, else from the cluster's environment).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "With --multihost: how many processes (default: from the cluster's "
    "environment).", lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "With --multihost: this process's id, 0 to num_processes - 1 (default: "
    "from the cluster's environment).", lower_bound=0)


def _fail(message: str, status: int = 2):
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def _guarded(body: Callable[[], object]) -> None:
  """Runs `body`; an `XjaxError` becomes one `error: ...` line and exit status 2, or the
  signal's status (143, 130) for `Interrupted` (SIGTERM or SIGINT saved a checkpoint)."""
  try:
    body()
  except XjaxError as e:
    _fail(str(e), e.exit_status if isinstance(e, Interrupted) else 2)


_MULTIHOST_FLAGS = (_MULTIHOST, _COORDINATOR, _NUM_PROCESSES, _PROCESS_ID)


def _app_run(main: Callable[[list[str]], object], shown: tuple = ()) -> None:
  """`app.run` with our flag parsing; a Ctrl-C outside the training loop (which saves and
  raises `Interrupted` itself) is one line, exit status 130, never a traceback.

  `shown`: the command's flags, listed by its `--help`. absl's `--help` lists the flags of the
  program's own module (`sys.argv[0]`); these are defined here, so they are declared its own.
  """
  for holder in (*shown, *_MULTIHOST_FLAGS):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[holder.name])
  if signal.getsignal(signal.SIGINT) is _sigint_while_starting:
    signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    app.run(main, flags_parser=_parse_flags)
  except KeyboardInterrupt:
    _fail("SIGINT: stopped; what was saved before is kept (run the same command again to "
          "continue).", 130)


def _check_writable(*paths: str | Path, what: str = "output folder") -> None:
  """One `error: ...` line, before any work, when a folder the command writes is not writable."""
  def body():
    for path in paths:
      rundir.check_writable(path, what)

  _guarded(body)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with config errors (unknown keys, bad values) as one line."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    # ml_collections wraps the config file's own exception (with its traceback) in the message:
    # its last line is the part a user needs, e.g. `Did you mean "epochs" instead of "epochz"?`.
    lines = [line for line in str(e).replace("\\n", "\n").splitlines() if line.strip()]
    _fail(f"bad --config or flag: {lines[-1].strip(chr(39)) if lines else e!r}")


def _start(argv: list[str], required: tuple[str, ...]) -> None:
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  missing = [f"--{name}" for name in required if flags.FLAGS[name].value is None]
  if missing:
    raise app.UsageError(f"{' and '.join(missing)} required.")
  _start_multihost()


def _start_multihost() -> None:
  """`jax.distributed.initialize` for --multihost, with gloo collectives between CPU processes.

  Must run before anything touches a JAX backend (`jax.devices()`, any array).
  """
  explicit = {"coordinator_address": _COORDINATOR.value, "num_processes": _NUM_PROCESSES.value,
              "process_id": _PROCESS_ID.value}
  if not _MULTIHOST.value:
    given = [f"--{name}" for name, value in explicit.items() if value is not None]
    if given:
      _fail(f"{' and '.join(given)} need{'s' if len(given) == 1 else ''} --multihost.")
    return
  import jax
  if not jax.config.jax_cpu_collectives_implementation:
    # The collectives between the CPU devices of different processes (the default of recent JAX;
    # older ones have none, and a CPU run fails at its first all-reduce). Only CPU devices use
    # it; $JAX_CPU_COLLECTIVES_IMPLEMENTATION=mpi chooses MPI instead.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(**{k: v for k, v in explicit.items() if v is not None})
  except (ValueError, TypeError, RuntimeError) as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    _fail(f"--multihost: jax.distributed.initialize failed: {lines[0] if lines else e!r} (give "
          f"--coordinator_address, --num_processes and --process_id outside SLURM / Cloud TPU).")


def _config_main(main: Callable[..., object]) -> Callable[[list[str]], None]:
  """The absl main of `main(config, workdir)` from --config and --workdir."""

  def absl_main(argv):
    _start(argv, ("config", "workdir"))
    try:
      config = _CONFIG.value
      # Any lookup forces the lazily loaded config file: one that failed to load raises here (an
      # OSError we can report in one line), not at parse time. The result itself is unused.
      _ = "name" in config
    except OSError as e:
      _fail(f"cannot load --config: {str(e).strip().splitlines()[-1].strip()}")
    _check_writable(_WORKDIR.value, what="workdir")
    _guarded(lambda: main(config, _WORKDIR.value,
                          resume_with_changes=_RESUME_WITH_CHANGES.value))

  return absl_main


def run(main: Callable[..., object]) -> None:
  """`app.run` with `main(config, workdir, resume_with_changes=...)` from --config, --workdir and
  --resume_with_changes."""
  _app_run(_config_main(main), shown=(_CONFIG, _WORKDIR, _RESUME_WITH_CHANGES))


def _experiment_main(name: str) -> Callable[..., object]:
  def main(config, workdir, resume_with_changes=False):
    from xjax.experiments import get_experiment, run_experiment
    return run_experiment(get_experiment(name), config, workdir,
                          resume_with_changes=resume_with_changes)

  return main


def experiment(name: str) -> None:
  """The command of the registered experiment `name` (`xjax.experiments`)."""
  run(_experiment_main(name))


def explain() -> None:
  """`python -m runs.explain`: `xjax.experiments.explain.explain_workdir` from flags."""
  from xjax.experiments.explain import TARGETS, explain_workdir
  from xjax.explain.methods import METHODS

  methods = flags.DEFINE_list(
      "methods", ["lrp:dtd", "saliency"], f"Comma-separated method specs, NAME or NAME:OPTION; "
      f"names: {', '.join(METHODS)}; lrp:COMPOSITE (e.g. lrp:dtd, lrp:epsilon_plus_flat).")
  n = flags.DEFINE_integer("n", 16, "Explain the first n images of the split.")
  split = flags.DEFINE_string("split", "test", "The split: train, validation or test.")
  target = flags.DEFINE_enum("target", "predicted", TARGETS,
                             "Explain the predicted class (the default here: what the model "
                             "says) or the true label (runs.evaluate's default).")
  batch_size = flags.DEFINE_integer("batch_size", 16, "Images per compiled call.")
  seed = flags.DEFINE_integer("seed", 0, "The seed of SmoothGrad's noise.")

  def absl_main(argv):
    _start(argv, ("workdir",))
    # It writes WORKDIR/explanations.npz and WORKDIR/figures/: known now, not after computing.
    _check_writable(_WORKDIR.value, Path(_WORKDIR.value) / "figures", what="workdir")
    _guarded(lambda: explain_workdir(_WORKDIR.value, methods.value, n=n.value, split=split.value,
                                     target=target.value, batch_size=batch_size.value,
                                     seed=seed.value))

  _app_run(absl_main, shown=(_WORKDIR, methods, n, split, target, batch_size, seed))


def metric_options(items: list[str]) -> dict[str, dict]:
  """`["pixel_flipping.steps=32", ...]` -> `{"pixel_flipping": {"steps": 32}}` (Python literals;
  anything else is kept as a string, e.g. `baseline=mean`)."""
  import ast

  from xjax.errors import ConfigError
  options: dict[str, dict] = {}
  for item in items:
    name, dot, rest = item.partition(".")
    option, equals, text = rest.partition("=")
    if not (dot and equals and name and option):
      raise ConfigError(f"--options takes METRIC.OPTION=VALUE items; got {item!r}.")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    options.setdefault(name, {})[option] = value
  return options


def evaluate() -> None:
  """`python -m runs.evaluate`: with --config the `evaluate` experiment, else
  `xjax.experiments.evaluate.evaluate_workdir` on --workdir from flags."""
  from xjax.experiments.explain import TARGETS
  from xjax.metrics import METRICS

  methods = flags.DEFINE_list(
      "methods", ["saliency", "gradient_x_input", "integrated_gradients", "lrp:epsilon_plus",
                  "gradcam", "random"],
      "Comma-separated method specs (see python -m runs.explain --help); `random` is the "
      "chance level.")
  metrics = flags.DEFINE_list(
      "metrics", None, f"Comma-separated metrics: {', '.join(METRICS)}. Default: the "
      f"faithfulness and complexity metrics, and the localisation ones where the data has masks.")
  options = flags.DEFINE_list(
      "options", [], "Metric options, METRIC.OPTION=VALUE, e.g. pixel_flipping.steps=32.")
  n = flags.DEFINE_string("n", "64", "Score the first n examples of the split, or `all`.")
  split = flags.DEFINE_string("split", "test", "The split: train, validation or test.")
  target = flags.DEFINE_enum("target", "label", TARGETS,
                             "Explain the true label (the default here: scores ask whether the "
                             "evidence for the class is found) or the predicted class "
                             "(runs.explain's default).")
  batch_size = flags.DEFINE_integer(
      "batch_size", 32, "Examples per compiled call over all devices (rounded up to a multiple "
      "of them).")
  seed = flags.DEFINE_integer("seed", 0, "The seed of the methods' and metrics' randomness.")
  out = flags.DEFINE_string("out", None, "Where to write; default WORKDIR/evaluation.")
  chunk_size = flags.DEFINE_integer(
      "chunk_size", 1024, "Examples per chunk of results on disk (OUT/chunks/): a killed run, "
      "run again, continues after the last whole chunk.", lower_bound=1)

  def absl_main(argv):
    if _CONFIG.value is not None:  # --config: the experiment, in --workdir
      return _config_main(_experiment_main("evaluate"))(argv)
    _start(argv, ("workdir",))
    _check_writable(out.value or Path(_WORKDIR.value) / "evaluation")

    def body():
      from xjax.experiments.evaluate import evaluate_workdir
      evaluate_workdir(_WORKDIR.value, methods.value, metrics.value,
                       options=metric_options(options.value), n=n.value, split=split.value,
                       target=target.value, batch_size=batch_size.value, seed=seed.value,
                       out=out.value, chunk_size=chunk_size.value)

    _guarded(body)

  _app_run(absl_main, shown=(_CONFIG, _WORKDIR, _RESUME_WITH_CHANGES, methods, metrics, options,
                             n, split, target, batch_size, seed, out, chunk_size))
