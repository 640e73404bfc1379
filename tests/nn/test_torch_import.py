"""PyTorch weights into xjax models: the safetensors reader, the layouts' error line, and logits
against PyTorch's on committed fixtures (`tests/fixtures/transformers/make_reference.py` wrote
them with torch, transformers and torchvision; these tests need none of them)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.fixtures.torch_weights import seeded_state_dict
from xjax.errors import ConfigError
from xjax.nn import get_model, torch_import
from xjax.nn.resnet import RESNET50
from xjax.nn.safetensors import read_safetensors
from xjax.nn.torch_import import fields_from_torch_config, import_torch_weights

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TRANSFORMERS, TORCHVISION = FIXTURES / "transformers", FIXTURES / "torchvision"
RTOL = 1e-5  # max |ours - torch| / max |torch|


def assert_close_relative(actual, expected, rtol: float = RTOL) -> None:
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape
  err, scale = np.abs(actual - expected).max(), np.abs(expected).max()
  assert scale > 0 and err <= rtol * scale, f"max abs error {err:.3g} vs scale {scale:.3g}"


# ---------------------------------------------------------------------------------------------
# The safetensors reader, on files written byte by byte.

def write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]],
                      pad: int = 3) -> Path:
  """name -> (dtype, shape, raw bytes) in the format's layout; the header padded with spaces."""
  header, data = {"__metadata__": {"format": "pt"}}, b""
  for name, (dtype, shape, raw) in tensors.items():
    header[name] = {"dtype": dtype, "shape": list(shape),
                    "data_offsets": [len(data), len(data) + len(raw)]}
    data += raw
  text = json.dumps(header).encode() + b" " * pad
  path.write_bytes(struct.pack("<Q", len(text)) + text + data)
  return path


def test_read_safetensors_dtypes(tmp_path):
  f32 = np.arange(6, dtype="<f4").reshape(2, 3) - 2.5
  # bfloat16 = the upper 16 bits of a float32: 1.5 = 0x3FC0, -2 = 0xC000, 3.140625 = 0x4049.
  bf16 = struct.pack("<3H", 0x3FC0, 0xC000, 0x4049)
  path = write_safetensors(tmp_path / "t.safetensors", {
      "f32": ("F32", (2, 3), f32.tobytes()),
      "bf16": ("BF16", (3,), bf16),
      "f16": ("F16", (2,), np.array([0.5, -1.25], "<f2").tobytes()),
      "f64": ("F64", (1,), struct.pack("<d", np.pi)),
      "i64": ("I64", (2,), struct.pack("<2q", -3, 2**40)),
      "i32": ("I32", (), struct.pack("<i", 7)),
      "u8": ("U8", (3,), bytes([0, 128, 255])),
      "bool": ("BOOL", (2,), bytes([1, 0])),
      "empty": ("F32", (0, 4), b""),
  })
  t = read_safetensors(path)
  np.testing.assert_array_equal(t["f32"], f32)
  assert t["bf16"].dtype == np.float32 and t["bf16"].tolist() == [1.5, -2.0, 3.140625]
  assert t["f16"].dtype == np.float16 and t["f16"].tolist() == [0.5, -1.25]
  assert t["f64"].tolist() == [np.pi] and t["i64"].tolist() == [-3, 2**40]
  assert t["i32"].shape == () and int(t["i32"]) == 7
  assert t["u8"].tolist() == [0, 128, 255] and t["bool"].tolist() == [True, False]
  assert t["empty"].shape == (0, 4) and "__metadata__" not in t


def raw(header: bytes, data: bytes = b"") -> bytes:
  return struct.pack("<Q", len(header)) + header + data


@pytest.mark.parametrize("content, match", [
    (None, "No safetensors file"),
    (b"\x01\x02", "2 bytes, shorter than the 8-byte header length"),
    (struct.pack("<Q", 100) + b"{}", "truncated or not a safetensors file"),
    (raw(b"{x}"), "corrupt safetensors header"),
    (raw(b"[]"), "corrupt safetensors header"),
    (raw(b'{"w": {"dtype": "F32", "shape": [2]}}'), "corrupt safetensors entry for 'w'"),
    (raw(b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', bytes(7)),
     "truncated or corrupt: tensor 'w' \\(F32, shape \\(2,\\)\\) needs 8 bytes"),
    (raw(b'{"w": {"dtype": "C64", "shape": [], "data_offsets": [0, 8]}}', bytes(8)),
     "unsupported dtype 'C64'; supported: F64, F32"),
])
def test_read_safetensors_errors(tmp_path, content, match):
  path = tmp_path / "bad.safetensors"
  if content is not None:
    path.write_bytes(content)
  with pytest.raises(ConfigError, match=match) as e:
    read_safetensors(path)
  assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# Loading and matching.

@pytest.fixture(scope="module")
def bert_fixture():
  data = dict(np.load(TRANSFORMERS / "bert.npz"))
  fields = fields_from_torch_config("bert", json.loads(str(data["config"])))
  return get_model("bert", **fields), read_safetensors(TRANSFORMERS / "bert.safetensors"), data


def test_a_state_dict_that_does_not_fit_gives_one_line(bert_fixture):
  model, state, _ = bert_fixture
  state = dict(state)
  del state["bert.pooler.dense.bias"]
  state["bert.pooler.extra"] = np.zeros((2, 5), np.float32)
  state["classifier.weight"] = np.zeros((4, 32), np.float32)
  state["bert.embeddings.position_ids"] = np.arange(64)[None]  # a buffer, ignored
  with pytest.raises(ConfigError) as e:
    import_torch_weights(model, state)
  assert str(e.value) == (
      "The PyTorch weights do not fit Bert (as Hugging Face BertForSequenceClassification): "
      "1 missing: bert.pooler.dense.bias; 1 unexpected: bert.pooler.extra (2, 5); "
      "1 mis-shaped: classifier.weight (4, 32) (expected (3, 32)).")


def test_the_layout_follows_the_model_class_and_fields(bert_fixture):
  _, state, _ = bert_fixture
  with pytest.raises(ConfigError, match="No PyTorch layout for MLP; supported: Bert, Llama, ViT"):
    import_torch_weights(get_model("mlp"), state)
  with pytest.raises(ConfigError, match=r"do not fit Llama .* 21 missing: model.embed_tokens"):
    import_torch_weights(get_model("llama", vocab_size=99, hidden=32, depth=2, num_heads=4), state)


class FakeTensor:
  """What `import_torch_weights` uses of a torch tensor (bfloat16 converts through float)."""

  def __init__(self, value, dtype="torch.float32"):
    self.value, self.dtype = np.asarray(value), dtype

  def detach(self):
    return self

  def cpu(self):
    return self

  def float(self):
    return FakeTensor(self.value)

  def numpy(self):
    assert self.dtype != "torch.bfloat16", "numpy() of a bfloat16 tensor fails in torch"
    return self.value


def test_torch_tensors_and_torch_files(bert_fixture, tmp_path, monkeypatch):
  model, state, _ = bert_fixture
  tensors = {k: FakeTensor(v, "torch.bfloat16" if "pooler" in k else "torch.float32")
             for k, v in state.items()}
  variables = import_torch_weights(model, tensors)
  np.testing.assert_array_equal(variables["params"]["pooler"]["kernel"],
                                state["bert.pooler.dense.weight"].T)

  def no_torch(name):
    raise ImportError(name)

  (tmp_path / "w.bin").write_bytes(b"")
  monkeypatch.setattr(torch_import.importlib, "import_module", no_torch)
  with pytest.raises(ConfigError, match="needs PyTorch .*save the weights as .safetensors"):
    import_torch_weights(model, tmp_path / "w.bin")
  with pytest.raises(ConfigError, match="Unknown weight file type"):
    import_torch_weights(model, tmp_path / "w.h5")


def test_fields_from_torch_config():
  assert fields_from_torch_config("vit", {"patch_size": 8, "hidden_dim": 32}) == {
      "num_classes": 1000, "patch_size": 8, "hidden": 32}
  assert fields_from_torch_config("bert", {"id2label": {"0": "a", "1": "b", "2": "c"}}) == {
      "num_classes": 3}
  with pytest.raises(ConfigError, match="does not implement hidden_act='gelu_new'"):
    fields_from_torch_config("bert", {"hidden_act": "gelu_new"})
  with pytest.raises(ConfigError, match="does not implement rope_scaling="):
    fields_from_torch_config("llama", {"rope_scaling": {"rope_type": "llama3"}})


# ---------------------------------------------------------------------------------------------
# Logits against PyTorch.

def test_bert_parity(bert_fixture):
  model, _, data = bert_fixture
  variables = import_torch_weights(model, TRANSFORMERS / "bert.safetensors")
  logits = jax.jit(lambda v, x, t: model.apply(v, x, token_types=t)[0])(
      variables, data["input"], data["token_type_ids"])
  assert_close_relative(logits, data["logits"])


def test_llama_parity():
  data = dict(np.load(TRANSFORMERS / "llama.npz"))
  config = json.loads(str(data["config"]))
  model = get_model("llama", **fields_from_torch_config("llama", config, positions="all"))
  variables = import_torch_weights(model, TRANSFORMERS / "llama.safetensors")
  logits = jax.jit(lambda v, x: model.apply(v, x)[0])(variables, data["input"])
  assert_close_relative(logits, data["logits_all"])
  assert_close_relative(logits[:, -1], data["logits"])


def test_vit_parity():
  data = dict(np.load(TRANSFORMERS / "vit.npz"))
  model = get_model("vit", **fields_from_torch_config("vit", json.loads(str(data["config"]))))
  variables = import_torch_weights(model, TRANSFORMERS / "vit.safetensors")
  assert variables["params"]["position_embedding"].shape == (1, 17, 32)
  logits = jax.jit(lambda v, x: model.apply(v, x)[0])(variables, data["input"])
  assert_close_relative(logits, data["logits"])


@pytest.mark.parametrize("name, fields", [
    # torchvision's vgg16: 7x7 adaptive average pooling, a 25088-4096-4096-10 classifier.
    ("vgg16", dict(name="vgg", config="vgg16", dense=(4096, 4096), pool_size=7)),
    ("resnet18", dict(name="resnet18")),
    ("resnet50", dict(name="resnet18", **RESNET50)),
])
def test_torchvision_parity(name, fields):
  shapes = json.loads((TORCHVISION / f"{name}_shapes.json").read_text())
  data = dict(np.load(TORCHVISION / f"{name}.npz"))
  state = seeded_state_dict(shapes, int(data["seed"]))
  model = get_model(num_classes=10, **fields)
  variables = import_torch_weights(model, state)
  del state
  logits = jax.jit(lambda v, x: model.apply(v, x)[0])(variables, data["input_nhwc"])
  assert_close_relative(logits, data["logits"])
