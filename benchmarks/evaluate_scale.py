"""`runs.evaluate` at dataset scale: examples per second and peak memory against the number of
examples and the number of devices.

What is measured: `python -m runs.evaluate --workdir=W` (the streamed, chunked, sharded scoring
of `xjax.experiments.dataset_scoring`), run as a user runs it, in a fresh process per setting:

  * against n (`--ns`, default 256, 1024, 4096 examples) on every device;
  * against the number of devices (`--devices`, default 1, 2, 4) at the largest n. Devices are
    real where the machine has them (GPUs, TPU cores: `--devices` may not exceed them); on a
    CPU they are virtual (`--xla_force_host_platform_device_count`).

Per setting: examples per second of the scoring (the results' `seconds`: from the first read to
the last chunk written, compilation included, the imports and the figures not), and the peak
resident memory of the whole process (`ru_maxrss` of the child, from `os.wait4`). The last line
gives the two ratios that matter: peak memory at the largest n over the smallest (flat memory
means about 1), and examples per second on the most devices over one.

What a CPU can and cannot show: the virtual devices of one CPU share its cores (two here), so
splitting a batch over 4 of them cannot be faster than 1; the ratio measures the cost of the
split (the partitioned program and the gathers), not a speed-up. On a GPU or TPU machine the
same command measures the speed-up. The memory ratio is meaningful everywhere.

Then the memory per device of the heavy methods and metrics (Integrated Gradients and SmoothGrad,
whose samples are stacked into the batch, and max-sensitivity, which re-runs the method on
noisy copies): XLA's compiled memory analysis (temporary bytes per device) of one batch of
`--batch` examples split over each number of devices. It should fall in proportion to the
devices: each device stacks only its own examples' samples.

The model: `--workdir` (any trained run); by default a small CNN trained for one epoch on the
built-in shapes (32 x 32 RGB, 4096 test images), into a temporary folder (about 30 s).

Run: `python -m benchmarks.evaluate_scale [--workdir W] [--ns 256,1024,4096]
[--devices 1,2,4] [--methods saliency,gradient_x_input,lrp:epsilon_plus]
[--metrics pixel_flipping,faithfulness_correlation,sparseness,complexity] [--batch 64]
[--chunk 1024]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train_default(root: Path) -> Path:
  """A small CNN on built-in shapes, one epoch (the default model)."""
  workdir = root / "shapes"
  subprocess.run([sys.executable, "-m", "runs.train", "--config=runs/configs/shapes.py:smoke",
                  "--config.data.options.num_examples=4096", "--config.train.epochs=1",
                  f"--workdir={workdir}"], cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
  return workdir


def measure(workdir: Path, out: Path, n: int, devices: int, args) -> dict:
  """One `runs.evaluate` in a fresh process: examples/s, peak RSS (MB), devices it reports."""
  env = {**os.environ,
         "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} "
                      f"--xla_force_host_platform_device_count={devices}".strip()}
  if not args.real_devices:
    env["JAX_PLATFORMS"] = "cpu"
  command = [sys.executable, "-m", "runs.evaluate", f"--workdir={workdir}", f"--out={out}",
             f"--methods={args.methods}", f"--metrics={args.metrics}", f"--n={n}",
             f"--batch_size={args.batch}", f"--chunk_size={args.chunk}"]
  started = time.perf_counter()
  with open(out.with_suffix(".log"), "w") as log:
    child = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(child.pid, 0)
  if status != 0:
    raise RuntimeError(f"runs.evaluate failed (status {status}); see {out.with_suffix('.log')}")
  results = json.loads((out / "results.json").read_text())
  return {"n": n, "devices": results["devices"], "seconds": results["seconds"],
          "examples_per_s": n / results["seconds"], "peak_mb": usage.ru_maxrss / 1024,
          "wall_s": time.perf_counter() - started}


HEAVY = ("integrated_gradients", "smoothgrad", "saliency")


def memory_per_device(workdir: Path, batch: int) -> dict[str, float]:
  """MiB of temporaries per device of one compiled batch of each heavy method and of
  max-sensitivity (of saliency), split over every device of this process."""
  import jax
  import numpy as np

  from xjax.data import sharding
  from xjax.experiments import scoring
  from xjax.experiments.loading import load_run
  from xjax.explain import methods as registry
  run = load_run(workdir)
  records = run.source.read_batch(np.zeros(batch, np.int64))
  x = np.asarray(run.inputs(records["image"]))
  targets = np.zeros(batch, np.int32)
  mesh = sharding.make_mesh()
  placed = jax.device_put(run.variables, sharding.replicated(mesh))
  rows = sharding.batch_sharding(mesh)

  def temp_mib(fn, *arrays) -> float:
    specs = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rows) for a in arrays]
    compiled = jax.jit(fn).lower(placed, *specs).compile()
    return compiled.memory_analysis().temp_size_in_bytes / 2**20

  out = {}
  for spec in HEAVY:
    method = registry.get_method(spec, bounds=(0.0, 1.0), key=jax.random.key(0))
    out[spec] = temp_mib(lambda p, xb, tb, m=method: m(run.apply_fn, p, xb, tb), x, targets)
  saliency = registry.get_method("saliency")
  (plan,) = scoring.plan_metrics(["max_sensitivity"])
  metric = scoring._bound_metric(plan, run.apply_fn, saliency, 2, 0)
  mask = np.ones(scoring.mask_shape(x), bool)
  out["max_sensitivity"] = temp_mib(lambda p, xb, tb, rb, mb: metric(p, xb, tb, rb, mb), x,
                                    targets, x, mask)
  return out


def memory_rows(workdir: Path, device_counts: list[int], args) -> dict[int, dict[str, float]]:
  """`memory_per_device` in a fresh process per device count."""
  rows = {}
  for devices in device_counts:
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    if args.real_devices:
      env.pop("JAX_PLATFORMS")
    done = subprocess.run([sys.executable, "-m", "benchmarks.evaluate_scale", "--memory_child",
                           f"--workdir={workdir}", f"--batch={args.batch}"], cwd=REPO, env=env,
                          capture_output=True, text=True, check=True)
    rows[devices] = json.loads(done.stdout.strip().splitlines()[-1])
  return rows


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", type=Path, help="a trained run (default: trains one)")
  parser.add_argument("--ns", default="256,1024,4096")
  parser.add_argument("--devices", default="1,2,4")
  parser.add_argument("--methods", default="saliency,gradient_x_input,lrp:epsilon_plus")
  parser.add_argument("--metrics",
                      default="pixel_flipping,faithfulness_correlation,sparseness,complexity")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--chunk", type=int, default=1024)
  parser.add_argument("--real_devices", action="store_true",
                      help="use the machine's accelerators (else virtual CPU devices)")
  parser.add_argument("--memory_child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.memory_child:  # one process of `memory_rows`
    print(json.dumps(memory_per_device(args.workdir, args.batch)))
    return {}
  ns = [int(v) for v in args.ns.split(",")]
  device_counts = [int(v) for v in args.devices.split(",")]
  with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp)
    workdir = args.workdir or train_default(root)
    print(f"runs.evaluate on {workdir}: methods {args.methods}; metrics {args.metrics}; batch "
          f"{args.batch}, chunks of {args.chunk}")
    print(f"{'n':>7} {'devices':>7} {'examples/s':>11} {'peak MB':>8} {'scoring s':>9} "
          f"{'process s':>9}")
    rows = []
    settings = [(n, max(device_counts)) for n in ns] + [
        (max(ns), d) for d in device_counts if d != max(device_counts)]
    for i, (n, devices) in enumerate(settings):
      row = measure(workdir, root / f"run{i}", n, devices, args)
      rows.append(row)
      print(f"{row['n']:>7} {row['devices']:>7} {row['examples_per_s']:>11.1f} "
            f"{row['peak_mb']:>8.0f} {row['seconds']:>9.1f} {row['wall_s']:>9.1f}", flush=True)
    memory = memory_rows(workdir, device_counts, args)
  print(f"MiB of temporaries per device, one batch of {args.batch} (compiled memory analysis):")
  print(f"{'devices':>7} " + " ".join(f"{name:>22}" for name in memory[device_counts[0]]))
  for devices, row in memory.items():
    print(f"{devices:>7} " + " ".join(f"{v:>22.1f}" for v in row.values()))
  at = {(r["n"], r["devices"]): r for r in rows}
  most = max(device_counts)
  result = {"rows": rows, "memory_per_device": memory,
            "memory large/small n": at[(max(ns), most)]["peak_mb"] / at[(min(ns), most)]["peak_mb"],
            "speed most/one device": (at[(max(ns), most)]["examples_per_s"]
                                      / at[(max(ns), min(device_counts))]["examples_per_s"])}
  heavy = memory[min(device_counts)]["integrated_gradients"] / memory[most][
      "integrated_gradients"]
  result["ig memory one/most devices"] = heavy
  print(f"peak memory n={max(ns)}/n={min(ns)}={result['memory large/small n']:.2f} "
        f"examples/s {most}/{min(device_counts)} devices={result['speed most/one device']:.2f} "
        f"IG memory per device {min(device_counts)}/{most} devices={heavy:.2f}")
  return result


if __name__ == "__main__":
  main()
