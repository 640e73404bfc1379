"""Every benchmark of the project in one command, ending in one summary table.

Runs, in this process and in this order, the `main` of each benchmark module with settings for
the platform: `train_step` (xjax's train step against PyTorch), `explain` (saliency, LRP and
Integrated Gradients against captum and zennit), `xnet_step` (XNet's vmapped drop loss against
the naive k + 1 passes), `maximize` (activation maximization, vmapped over classes, against a
call per class and PyTorch), `metrics` (xjax's metrics against Quantus 0.6.0) `srae_step`
(C SRAE modules trained by vmap against a loop of C single-module steps) and `explainer_step`
(the explainer network's step with and without the filter loss; the filter loss vmapped over
filters against a loop) and `transformer` (AttnLRP on a BERT against `jax.grad` and, where
`XJAX_LXT_PYTHON` names a Python with LXT, against LXT on the same weights) and
`evaluate_scale` (`runs.evaluate` streamed over a split: examples/s and peak memory against n
and devices). Each prints
its own report as when run alone (correctness checks first, then the timing); a benchmark that
cannot be imported (a missing optional dependency: torch, captum, zennit, quantus) or that fails
(a check, an error) gets its reason in its row of the table and the others still run.

The table (markdown; `--out FILE` writes it to a file too): benchmark | what | ratio | key
numbers | s (the benchmark's wall time, setup, checks and compilation included). Each ratio is
the one its benchmark prints, and the "what" column says what it divides: a ratio of images/s
(xjax/torch) > 1 favours the numerator, a ratio of times (naive/vmap, quantus/xjax) > 1 the
denominator; either way, > 1 means xjax's way is faster. The header line gives the date, the
machine (CPU model and cores), JAX's devices and backend, and torch's version and device.

Platform: batch sizes per `jax.default_backend()` (larger on "gpu"); PyTorch peers run on CUDA
where `torch.cuda.is_available()` (`--torch_device` of train_step, explain and maximize;
Quantus's model stays on the CPU: the metrics benchmark runs it with `device="cpu"`).

`--quick`: every benchmark with a small batch, one timed round and few steps (the checks still
run): about 5-10 minutes on 2 shared CPU cores. The numbers of a quick run are a smoke test, not
a measurement: use the full run (the modules' defaults on CPU; about 30-40 minutes on 2 cores)
or the modules themselves for numbers to quote.

Run: `python -m benchmarks.all [--quick] [--only train_step,explain,...] [--out FILE]`.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import os
import platform
import time
import traceback
from collections.abc import Callable
from typing import Any

BENCHMARKS = ("train_step", "explain", "xnet_step", "maximize", "metrics", "srae_step",
              "explainer_step", "transformer", "evaluate_scale")
# Benchmarks run once per model, so that one model's failing check leaves the other's rows.
PER_MODEL = {"explain": ("cnn_cifar10", "resnet18")}


def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo where there is one) and the cores this process has."""
  name = ""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          name = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  name = name or platform.processor() or platform.machine()
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return f"{name}, {cores} cores"


def torch_device() -> str:
  """"cuda" where PyTorch sees a GPU, else "cpu" (or "none" without torch)."""
  try:
    import torch
  except ImportError:
    return "none"
  return "cuda" if torch.cuda.is_available() else "cpu"


def header() -> str:
  """One line: date, machine, JAX's devices and backend, torch's version and device."""
  import jax

  try:
    import torch
    device = torch_device()
    name = f" ({torch.cuda.get_device_name(0)})" if device == "cuda" else ""
    torch_text = f"torch {torch.__version__} on {device}{name}"
  except ImportError:
    torch_text = "torch not installed"
  return (f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; machine: {cpu_model()}, "
          f"{platform.system()} {platform.machine()}; JAX {jax.__version__} "
          f"{jax.default_backend()} devices {jax.devices()}; {torch_text}")


def settings(quick: bool, gpu: bool, device: str) -> dict[str, list[str]]:
  """The command line of each benchmark's `main`: quick or full, batch sizes per platform.

  Quick explain: batch 16 on CPU, not less: its checks' tolerances were measured at batch 64,
  and at batch 8 ResNet-18's saliency (PyTorch's float32 CPU convolutions) was 2.09e-3 from
  xjax's against a bound of 2e-3 (batch 16: 9e-4).
  """
  dev = ["--torch_device", device] if device == "cuda" else []
  if quick:
    return {
        "train_step": ["--quick", "--batch", "128" if gpu else "32", *dev],
        "explain": ["--batch", "64" if gpu else "16", "--rounds", "1", "--ig_steps", "8",
                    "--ig_chunk", "8", "--round_s", "0.2", *dev],
        "xnet_step": ["--ks", "3", "--batch", "128" if gpu else "32", "--steps", "1",
                      "--naive_steps", "1", "--rounds", "1"],
        "maximize": ["--steps", "100", "--rounds", "1", "--check_steps", "20", *dev],
        "metrics": ["--quick"],
        "srae_step": ["--steps", "5", "--rounds", "2"],
        "explainer_step": ["--steps", "2", "--rounds", "1", "--batch", "64" if gpu else "16"],
        "transformer": ["--size", "small", "--rounds", "1"],
        "evaluate_scale": ["--ns", "128,512", "--devices", "1,2", "--batch", "32",
                           "--chunk", "128"],
    }
  return {
      "train_step": ["--batch", "512" if gpu else "128", *dev],
      "explain": ["--batch", "256" if gpu else "64", *dev],
      "xnet_step": ["--batch", "512" if gpu else "128"],
      "maximize": [*dev],
      "metrics": ["--batch", "64" if gpu else "32"],
      "srae_step": [],
      "explainer_step": ["--batch", "128" if gpu else "32"],
      "transformer": ["--batch", "32" if gpu else "8"],
      "evaluate_scale": (["--real_devices", "--devices", "1", "--batch", "256"] if gpu
                         else []),
  }


# Each benchmark's result (its `main`'s return value) -> rows (what, ratio, key numbers).
Row = tuple[str, float, str]


def rows_train_step(result: dict, argv: list[str]) -> list[Row]:
  return [(f"{model} train step: xjax/torch images/s", r["ratio"],
           f"xjax {r['xjax']:.1f} img/s, torch {r['torch']:.1f} img/s")
          for model, r in result.items()]


def rows_explain(result: dict, argv: list[str]) -> list[Row]:
  rows = []
  for model, r in result.items():
    rows.append((f"{model} saliency: xjax/captum images/s", r["xjax/captum saliency"], ""))
    rows.append((f"{model} integrated gradients: xjax/captum images/s", r["xjax/captum ig"], ""))
    for composite in ("dtd", "epsilon_plus_flat"):
      rows.append((f"{model} LRP {composite}: xjax/zennit images/s",
                   r[f"xjax/zennit {composite}"],
                   f"xjax LRP time / saliency time {r[f'lrp_{composite}/gradient']:.2f}"))
  return rows


def rows_xnet_step(result: dict, argv: list[str]) -> list[Row]:
  return [(f"k={k} drop loss: naive/vmap time per step", r["naive/vmap"],
           f"xnet/baseline time {r['xnet/baseline']:.2f}") for k, r in result.items()]


def rows_maximize(result: dict, argv: list[str]) -> list[Row]:
  return [("10-class activation maximization: torch/vmapped time", result["torch/vmapped"],
           f"vmapped call {result['vmapped_s']:.2f} s (compile included), torch "
           f"{result['torch_s']:.2f} s"),
          ("10 classes: 10 calls/1 vmapped call time", result["ten_calls/vmapped"],
           f"vmapped/one class {result['vmapped/one_class']:.2f}")]


def rows_metrics(result: dict, argv: list[str]) -> list[Row]:
  return [(f"{metric}: quantus/xjax time per call", r["ratio"],
           f"xjax {1e3 * r['xjax_s']:.2f} ms, quantus {1e3 * r['quantus_s']:.2f} ms; of minima "
           f"{r['of_minima']:.1f}") for metric, r in result.items()]


def rows_srae_step(result: dict, argv: list[str]) -> list[Row]:
  rows = []
  for c, r in result.items():
    rows.append((f"C={c} SRAE modules: loop/vmap time per step", r["loop/vmap"],
                 f"vmap(C)/vmap(1) time {r['vmap/one']:.2f}; vmap {1e3 * r['vmap']:.1f} ms"))
  return rows


def rows_explainer_step(result: dict, argv: list[str]) -> list[Row]:
  return [("explainer step: without/with the filter loss time", 1 / result["with/without"],
           f"with {1e3 * result['step_with_s']:.1f} ms, without "
           f"{1e3 * result['step_without_s']:.1f} ms"),
          ("filter loss: loop/vmap over filters time", result["loop/vmap"],
           f"vmap {1e3 * result['filter_vmap_s']:.2f} ms")]


def rows_transformer(result: dict, argv: list[str]) -> list[Row]:
  rows = [("BERT AttnLRP: jax.grad/AttnLRP time", 1 / result["lrp/grad time"],
           f"AttnLRP {1e3 * result['attn_lrp_s']:.0f} ms; memory AttnLRP/grad "
           f"{result['lrp/grad memory']:.2f}")]
  if "xjax/lxt speed" in result:
    rows.append(("BERT AttnLRP: LXT/xjax time", result["xjax/lxt speed"],
                 f"LXT {1e3 * result['lxt_s']:.0f} ms; relevance gap {result['check_gap']:.1e}"))
  return rows


def rows_evaluate_scale(result: dict, argv: list[str]) -> list[Row]:
  largest = max(result["rows"], key=lambda r: (r["n"], r["devices"]))
  return [("runs.evaluate: peak memory, largest n / smallest n", result["memory large/small n"],
           f"{largest['examples_per_s']:.0f} examples/s at n={largest['n']} on "
           f"{largest['devices']} devices"),
          ("runs.evaluate: examples/s, most devices / one", result["speed most/one device"],
           "virtual devices share the CPU's cores" if "--real_devices" not in argv else "")]


ROWS: dict[str, Callable[[Any, list[str]], list[Row]]] = {
    "train_step": rows_train_step, "explain": rows_explain, "xnet_step": rows_xnet_step,
    "maximize": rows_maximize, "metrics": rows_metrics, "srae_step": rows_srae_step,
    "explainer_step": rows_explainer_step, "transformer": rows_transformer,
    "evaluate_scale": rows_evaluate_scale,
}


def run_one(name: str, argv: list[str]) -> tuple[list[Row] | None, str, float]:
  """Imports and runs one benchmark; returns (rows or None, what went wrong or "", seconds)."""
  t0 = time.perf_counter()
  print(f"\n{'=' * 100}\n== benchmarks.{name} {' '.join(argv)}\n{'=' * 100}", flush=True)
  try:
    module = importlib.import_module(f"benchmarks.{name}")
  except Exception as e:  # e.g. a missing optional dependency, or another Quantus version
    print(f"benchmarks.{name} does not import: {type(e).__name__}: {e}", flush=True)
    return None, f"not run: {type(e).__name__}: {e}", time.perf_counter() - t0
  try:
    result = module.main(argv)
    return ROWS[name](result, argv), "", time.perf_counter() - t0
  except (Exception, SystemExit) as e:  # a failed check, an error: reported in the table
    traceback.print_exc()
    message = str(e) if not isinstance(e, SystemExit) else f"exit {e.code}"
    return None, f"failed: {type(e).__name__}: {message}", time.perf_counter() - t0
  finally:
    import jax
    jax.clear_caches()  # compiled programs of one benchmark are no use to the next
    gc.collect()


def _cell(text: str, limit: int = 300) -> str:
  text = " ".join(str(text).split()).replace("|", "\\|")
  return text if len(text) <= limit else text[:limit - 3] + "..."


def table(results: dict[str, tuple[list[Row] | None, str, float]], argvs: dict[str, list[str]]
          ) -> str:
  """The summary: one row per ratio; a failed or skipped benchmark one row with the reason."""
  lines = ["| benchmark | what | ratio | key numbers | s |", "|---|---|---|---|---|"]
  for name, (rows, error, seconds) in results.items():
    label = f"{name.split()[0]} `{' '.join(argvs[name])}`" if argvs[name] else name
    if rows is None:
      lines.append(f"| {label} | {_cell(error)} | - | - | {seconds:.0f} |")
      continue
    for i, (what, ratio, key) in enumerate(rows):
      lines.append(f"| {label if i == 0 else ''} | {what} | {ratio:.2f} | {_cell(key) or '-'} | "
                   f"{f'{seconds:.0f}' if i == 0 else ''} |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="small batches, one round, few steps (a smoke run: minutes)")
  parser.add_argument("--only", default=",".join(BENCHMARKS),
                      help=f"comma list of the benchmarks to run, of {', '.join(BENCHMARKS)}")
  parser.add_argument("--out", default=None, help="also write the header and table to FILE")
  args = parser.parse_args(argv)
  names = [n.strip() for n in args.only.split(",") if n.strip()]
  unknown = [n for n in names if n not in BENCHMARKS]
  if unknown:
    parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")

  import jax

  start = time.perf_counter()
  top = header()
  print(top, flush=True)
  device = torch_device()
  argvs = settings(args.quick, jax.default_backend() == "gpu", device)
  runs = {}
  for name in names:
    for model in PER_MODEL.get(name, (None,)):
      argv = argvs[name] + (["--models", model] if model else [])
      runs[f"{name} {model}" if model else name] = (name, argv)
  results = {label: run_one(name, argv) for label, (name, argv) in runs.items()}
  argvs = {label: argv for label, (_, argv) in runs.items()}
  total = time.perf_counter() - start
  kind = "quick run (a smoke test: small batches, one round)" if args.quick else "full run"
  text = f"{top}\n\n{kind}; total wall time {total:.0f} s\n\n{table(results, argvs)}\n"
  print(f"\n{text}", flush=True)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
  return text


if __name__ == "__main__":
  main()
