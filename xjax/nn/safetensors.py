"""A reader of the safetensors format (Hugging Face's weight files) in plain numpy, no torch.

The format: an 8-byte little-endian unsigned header length N; N bytes of a JSON header mapping
each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets into the data
that follows the header; an optional "__metadata__" entry holds strings); then the raw
little-endian, C-ordered tensor data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from xjax.errors import ConfigError

# safetensors dtype -> numpy dtype (little-endian). BF16 has no numpy dtype: it is read as
# uint16 and widened to float32 (bfloat16 is the upper half of a float32).
_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
  """float32 values of bfloat16 numbers given as their uint16 bit patterns (exact)."""
  return (bits.astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The tensors of a .safetensors file by name, as numpy arrays (BF16 widened to float32).

  Raises:
    ConfigError: one line, for a missing, truncated or corrupt file or an unsupported dtype.
  """
  path = Path(path)
  if not path.is_file():
    raise ConfigError(f"No safetensors file at {str(path)!r}.")
  data = np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else np.zeros(0, np.uint8)
  if data.size < 8:
    raise ConfigError(f"{str(path)!r} is not a safetensors file: {data.size} bytes, shorter than "
                      "the 8-byte header length.")
  header_len = int(np.frombuffer(data[:8].tobytes(), "<u8")[0])
  if 8 + header_len > data.size:
    raise ConfigError(f"{str(path)!r} is truncated or not a safetensors file: its header claims "
                      f"{header_len} bytes, the file has {data.size - 8} after the length.")
  try:
    header = json.loads(data[8:8 + header_len].tobytes().decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ConfigError(f"{str(path)!r} has a corrupt safetensors header ({e}).") from e
  if not isinstance(header, dict):
    raise ConfigError(f"{str(path)!r} has a corrupt safetensors header (not a JSON object).")
  body = data[8 + header_len:]
  tensors = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    try:
      dtype_name, shape = info["dtype"], tuple(int(n) for n in info["shape"])
      begin, end = (int(n) for n in info["data_offsets"])
    except (TypeError, KeyError, ValueError) as e:
      raise ConfigError(f"{str(path)!r} has a corrupt safetensors entry for {name!r}: "
                        f"{info!r}.") from e
    if dtype_name not in _DTYPES:
      raise ConfigError(f"Tensor {name!r} of {str(path)!r} has the unsupported dtype "
                        f"{dtype_name!r}; supported: {', '.join(_DTYPES)}.")
    dtype = _DTYPES[dtype_name]
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if not 0 <= begin <= end <= body.size or end - begin != size:
      raise ConfigError(f"{str(path)!r} is truncated or corrupt: tensor {name!r} ({dtype_name}, "
                        f"shape {shape}) needs {size} bytes at [{begin}, {end}) of a "
                        f"{body.size}-byte data section.")
    # A copy, so that the arrays outlive the memory map and are writeable.
    array = np.frombuffer(body[begin:end].tobytes(), dtype).reshape(shape)
    tensors[name] = bfloat16_to_float32(array) if dtype_name == "BF16" else array
  return tensors
