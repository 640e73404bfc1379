"""Importing Quantus 0.6.0 without the heavy or broken imports it makes when it finds them.

Quantus imports TensorFlow (to wrap Keras models, ~4 s) and zennit (which fails without
torchvision, see `benchmarks/torchvision_stub.py`) only if it finds them, and looks for TensorFlow
again when it wraps a model. xjax compares only PyTorch models with it, so `hidden` makes those
modules look uninstalled while Quantus is imported or called. Used by `benchmarks.metrics` and by
the parity tests (tests/metrics/test_quantus_*.py); it imports neither torch nor Quantus itself.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterable

QUANTUS_VERSION = "0.6.0"
HIDDEN_FROM_QUANTUS = ("tensorflow", "keras", "zennit", "tf_explain")


@contextlib.contextmanager
def hidden(names: Iterable[str] = HIDDEN_FROM_QUANTUS):
  """Makes the modules `names` look uninstalled (`find_spec` -> None) inside the block.

  Modules already imported are left alone, and the entries are removed again afterwards, so the
  rest of the process imports them normally.
  """
  hide = [name for name in names if name not in sys.modules]
  sys.modules.update(dict.fromkeys(hide))
  try:
    yield
  finally:
    for name in hide:
      sys.modules.pop(name, None)


def import_quantus():
  """`import quantus` with the modules of `HIDDEN_FROM_QUANTUS` hidden.

  Raises:
    ImportError: if Quantus is not installed or does not import, or is not version 0.6.0 (the
      parity is pinned to it).
  """
  with hidden():
    quantus = importlib.import_module("quantus")
  if quantus.__version__ != QUANTUS_VERSION:
    raise ImportError(f"the parity is pinned to quantus {QUANTUS_VERSION}; found "
                      f"{quantus.__version__}")
  return quantus
