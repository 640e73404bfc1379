"""The import structure of xjax: what the light packages pull in, and the direction of imports.

* Training and explaining must not load matplotlib (plotting belongs to the experiments, which
  call `xjax.plot`; a train loop on a headless pod should not load a plotting stack) nor
  TensorFlow (only `python -m runs.prepare` needs it, to build TFDS datasets). Checked in a
  fresh interpreter, since this test session may have loaded both already.
* The packages of xjax import each other one way only (docs/design.md):
  data, nn <- train <- methods, explain, metrics <- experiments <- runs, with `xjax.plot` used by
  the experiments alone. Checked statically, from the module-level imports of every file
  (imports inside functions are deliberate lazy imports and are not counted).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

XJAX = Path(__file__).resolve().parents[1] / "xjax"

LIGHT_MODULES = ("xjax.train", "xjax.train.loop", "xjax.train.step", "xjax.train.checkpoint",
                 "xjax.explain", "xjax.explain.methods", "xjax.explain.lrp")
HEAVY_MODULES = ("matplotlib", "tensorflow")

PACKAGES = ("xjax.ops", "xjax.data", "xjax.nn", "xjax.train", "xjax.methods", "xjax.explain",
            "xjax.metrics", "xjax.experiments", "xjax.plot")

# importer -> packages it must not import (at module level).
FORBIDDEN = {
    # The CPU fast paths sit below everything: nothing of xjax above them.
    "xjax.ops": ("xjax.data", "xjax.nn", "xjax.train", "xjax.methods", "xjax.explain",
                 "xjax.metrics", "xjax.experiments", "xjax.plot"),
    "xjax.data": ("xjax.train", "xjax.methods", "xjax.explain", "xjax.metrics",
                  "xjax.experiments", "xjax.plot"),
    "xjax.nn": ("xjax.train", "xjax.methods", "xjax.explain", "xjax.metrics", "xjax.experiments",
                "xjax.plot"),
    "xjax.train": ("xjax.methods", "xjax.explain", "xjax.metrics", "xjax.experiments",
                   "xjax.plot"),
}
# Packages outside xjax that nothing in xjax may import: they sit above it (or beside it).
OUTSIDE = ("runs", "benchmarks", "tests")
# The only importers of xjax.plot.
PLOT_IMPORTERS = ("xjax.experiments", "xjax.plot")


def test_train_and_explain_load_neither_matplotlib_nor_tensorflow():
  code = "\n".join([
      "import importlib, sys",
      f"for name in {LIGHT_MODULES!r}:",
      "  importlib.import_module(name)",
      f"print(','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))",
  ])
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=600, check=False)
  assert done.returncode == 0, done.stderr
  loaded = [m for m in done.stdout.strip().split(",") if m]
  assert not loaded, (f"importing {', '.join(LIGHT_MODULES)} loads {', '.join(loaded)}; "
                      f"import it lazily (inside the function that needs it) or move the caller")


def _module_name(path: Path) -> str:
  parts = path.relative_to(XJAX.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
  return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
      isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(path: Path) -> list[tuple[str, int]]:
  """(imported module, line) of the imports that run when the file is imported.

  Walks the module body and what runs with it (if / try / with blocks, class bodies), not
  function bodies nor `if TYPE_CHECKING:` blocks. `from a import b` yields `a.b` (b may be a
  submodule); relative imports are resolved against the file's package.
  """
  module = _module_name(path)
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  found = []

  def visit(statements):
    for node in statements:
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        continue
      if isinstance(node, ast.Import):
        found.extend((alias.name, node.lineno) for alias in node.names)
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
          base = ".".join(anchor + ([base] if base else []))
        found.extend((f"{base}.{alias.name}" if base else alias.name, node.lineno)
                     for alias in node.names)
      elif isinstance(node, ast.If) and _is_type_checking(node.test):
        visit(node.orelse)
      else:
        for field in ("body", "orelse", "finalbody", "handlers"):
          visit(getattr(node, field, None) or [])

  visit(ast.parse(path.read_text(), filename=str(path)).body)
  return found


def _package_of(module: str) -> str | None:
  """The package of PACKAGES or OUTSIDE that `module` belongs to, else None."""
  for package in PACKAGES + OUTSIDE:
    if module == package or module.startswith(package + "."):
      return package
  return None


def _package_edges() -> dict[tuple[str, str], list[str]]:
  """(importer package, imported package) -> ["file:line", ...], between different packages.

  The importer of `xjax/__init__.py` and `xjax/errors.py` is "xjax" itself.
  """
  edges = defaultdict(list)
  for path in sorted(XJAX.rglob("*.py")):
    source = _package_of(_module_name(path)) or "xjax"
    for imported, line in _module_level_imports(path):
      target = _package_of(imported)
      where = f"{path.relative_to(XJAX.parent)}:{line}"
      if target is not None and target != source and where not in edges[source, target]:
        edges[source, target].append(where)
  return dict(edges)


def _describe(edges, pairs) -> str:
  return "; ".join(f"{a} -> {b} ({', '.join(edges[a, b])})" for a, b in sorted(pairs))


def test_packages_import_in_one_direction():
  edges = _package_edges()
  bad = set()
  for source, target in edges:
    if target in FORBIDDEN.get(source, ()):
      bad.add((source, target))
    if target in OUTSIDE:
      bad.add((source, target))
    if target == "xjax.plot" and source not in PLOT_IMPORTERS:
      bad.add((source, target))
  assert not bad, "imports against the direction of docs/design.md: " + _describe(edges, bad)


def test_no_import_cycles_between_packages():
  edges = _package_edges()
  graph = defaultdict(set)
  for source, target in edges:
    graph[source].add(target)
  # Depth-first search; a back edge to a package on the current path closes a cycle.
  cycles, state = [], {}

  def visit(node, path):
    state[node] = "open"
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        cycle = path[path.index(nxt):] + [nxt]
        cycles.append(" -> ".join(cycle) + " (" + _describe(
            edges, zip(cycle[:-1], cycle[1:])) + ")")
      elif nxt not in state:
        visit(nxt, path + [nxt])
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])
  assert not cycles, "import cycles between xjax packages: " + " | ".join(cycles)


def test_the_import_walker_sees_module_level_imports_only(tmp_path, monkeypatch):
  """The static checks above count module-level imports, not lazy ones inside functions."""
  package = tmp_path / "xjax" / "train"
  package.mkdir(parents=True)
  (package / "__init__.py").write_text("")
  (package / "mod.py").write_text(
      "import os\n"
      "from xjax.data import pipeline\n"
      "from . import sibling\n"
      "from .. import plot\n"
      "try:\n  import xjax.nn.registry\nexcept ImportError:\n  pass\n"
      "from typing import TYPE_CHECKING\n"
      "if TYPE_CHECKING:\n  import xjax.methods\n"
      "class A:\n  import xjax.explain\n"
      "def f():\n  import xjax.experiments\n")
  monkeypatch.setattr(sys.modules[__name__], "XJAX", tmp_path / "xjax")
  names = [name for name, _ in _module_level_imports(package / "mod.py")]
  assert names == ["os", "xjax.data.pipeline", "xjax.train.sibling", "xjax.plot",
                   "xjax.nn.registry", "typing.TYPE_CHECKING", "xjax.explain"]
