"""Reading a convolution's or pooling's parameters: which of them change nothing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def is_unit(values: Sequence[int] | None) -> bool:
  """Strides / dilations that change nothing: absent or all 1."""
  return values is None or all(int(v) == 1 for v in values)


def is_unpadded(padding: Any) -> bool:
  """"VALID", or (low, high) pairs that are all (0, 0)."""
  if isinstance(padding, str):
    return padding.upper() == "VALID"
  try:
    return all(tuple(int(p) for p in pair) == (0, 0) for pair in padding)
  except TypeError:  # not a sequence of (low, high) pairs
    return False
