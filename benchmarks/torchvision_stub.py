"""Importing zennit without torchvision.

zennit (0.5.1) imports `torchvision.models.resnet` when it is imported, only to name the classes
its torchvision ResNet canonizer looks for (`Bottleneck`, `BasicBlock`). There is no torchvision
wheel for the CPU torch of these machines (and pip's zennit dependencies would pull one built for
another torch), so zennit is installed with `--no-deps` and imported through `import_zennit()`:
where torchvision is missing, a stand-in `torchvision.models.resnet` holding two empty classes is
placed in `sys.modules` for the duration of the import and taken out again afterwards, so that
nothing else in the process sees a fake torchvision. No model is an instance of the stand-in
classes, so zennit's torchvision canonizers simply never apply; the benchmark's own canonizers
for the xjax twins (benchmarks/explain.py) do that job.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

_STUB_NAMES = ("torchvision", "torchvision.models", "torchvision.models.resnet")


def _stub_modules() -> dict[str, types.ModuleType]:
  """`torchvision`, `torchvision.models` and `.models.resnet`, holding the names zennit uses."""
  import torch  # zennit needs torch anyway; the stand-ins are torch modules, like the real ones

  root = types.ModuleType("torchvision")
  models = types.ModuleType("torchvision.models")
  resnet = types.ModuleType("torchvision.models.resnet")
  for name in ("BasicBlock", "Bottleneck"):
    setattr(resnet, name, type(name, (torch.nn.Module,), {
        "__doc__": f"Stand-in for torchvision's {name}: no model is ever one (see module doc).",
        "__module__": "torchvision.models.resnet"}))
  root.models, models.resnet = models, resnet
  return {"torchvision": root, "torchvision.models": models, "torchvision.models.resnet": resnet}


def import_zennit() -> types.ModuleType:
  """`import zennit` (with its submodules loaded), using the stand-in torchvision if needed.

  Raises:
    ImportError: if torch or zennit itself is not installed.
  """
  if "zennit" in sys.modules or importlib.util.find_spec("torchvision") is not None:
    return importlib.import_module("zennit")
  stubs = _stub_modules()
  saved = {name: sys.modules.get(name) for name in _STUB_NAMES}
  sys.modules.update(stubs)
  try:
    zennit = importlib.import_module("zennit")
    for sub in ("attribution", "canonizers", "composites", "core", "rules", "types", "layer",
                "torchvision"):
      importlib.import_module(f"zennit.{sub}")
    return zennit
  finally:
    for name, module in saved.items():
      if module is None:
        sys.modules.pop(name, None)
      else:
        sys.modules[name] = module
