"""PyTorch weights into xjax models, without importing torch: Hugging Face's BERT and LLaMA,
torchvision's ViT, VGG and ResNet.

`import_torch_weights(model, weights)` reads a state dict (a dict of numpy arrays or torch
tensors, or a .safetensors file) and returns the Flax variables of `model`. The layout is chosen
by the model's class and fields:

  xjax model                       PyTorch model
  Bert                             transformers BertForSequenceClassification (or BertModel)
  Llama(num_classes=None)          transformers LlamaForCausalLM
  Llama(num_classes=C)             transformers LlamaForSequenceClassification
  ViT                              torchvision VisionTransformer
  VGG(pool_size=7, dense=(4096, 4096))             torchvision vgg11 .. vgg19 (and *_bn)
  ResNet18 (stem "imagenet"; `RESNET50` fields)    torchvision resnet18, resnet50

Conversions: a Linear weight (out, in) becomes the kernel (in, out); a Conv weight OIHW becomes
HWIO; torchvision's fused attention input projection (3D, D) splits into query, key and value;
batch norm running statistics go to "batch_stats"; the first dense layer after a flatten has its
inputs reordered from PyTorch's NCHW flatten to Flax's NHWC one.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from xjax.errors import ConfigError
from xjax.nn.bert import Bert
from xjax.nn.llama import Llama
from xjax.nn.resnet import ResNet18
from xjax.nn.safetensors import read_safetensors
from xjax.nn.vgg import VGG, resolve_config
from xjax.nn.vit import ViT

Shape = tuple[int | None, ...]  # None: any size (read from the weights)

# Buffers that PyTorch models keep in their state dicts but that are no weights.
_IGNORED_SUFFIXES = ("num_batches_tracked", "embeddings.position_ids",
                     "embeddings.token_type_ids", "rotary_emb.inv_freq")
_LISTED = 12  # keys listed per kind in a mismatch message


@dataclasses.dataclass(frozen=True)
class Entry:
  """One PyTorch tensor: its key, its expected shape, the Flax leaves it becomes (paths that
  start with the collection) and how (one array per target)."""

  key: str
  shape: Shape
  targets: tuple[tuple[str, ...], ...]
  convert: Callable[[np.ndarray], tuple[np.ndarray, ...]] = lambda w: (w,)


def _same(key: str, shape: Shape, *path: str) -> list[Entry]:
  return [Entry(key, shape, (("params", *path),))]


def _linear(key: str, path: tuple[str, ...], out: int | None, inp: int | None,
            bias: bool = True, kernel: Callable[[np.ndarray], np.ndarray] | None = None
            ) -> list[Entry]:
  """nn.Linear: weight (out, in) -> kernel (in, out) (or `kernel(weight)`), bias -> bias."""
  convert = (lambda w: (kernel(w),)) if kernel else (lambda w: (w.T,))
  entries = [Entry(f"{key}.weight", (out, inp), (("params", *path, "kernel"),), convert)]
  return entries + (_same(f"{key}.bias", (out,), *path, "bias") if bias else [])


def _conv(key: str, path: tuple[str, ...], out: int, inp: int | None, kernel: int,
          bias: bool = True) -> list[Entry]:
  """nn.Conv2d: weight OIHW -> kernel HWIO, bias -> bias."""
  entries = [Entry(f"{key}.weight", (out, inp, kernel, kernel), (("params", *path, "kernel"),),
                   lambda w: (w.transpose(2, 3, 1, 0),))]
  return entries + (_same(f"{key}.bias", (out,), *path, "bias") if bias else [])


def _layer_norm(key: str, path: tuple[str, ...], width: int) -> list[Entry]:
  return _same(f"{key}.weight", (width,), *path, "scale") + _same(f"{key}.bias", (width,), *path,
                                                                  "bias")


def _batch_norm(key: str, path: tuple[str, ...], width: int) -> list[Entry]:
  """nn.BatchNorm2d: weight/bias -> params scale/bias, running mean/var -> batch_stats."""
  return (_layer_norm(key, path, width)
          + [Entry(f"{key}.running_mean", (width,), (("batch_stats", *path, "mean"),)),
             Entry(f"{key}.running_var", (width,), (("batch_stats", *path, "var"),))])


def _prefix(weights: Mapping[str, np.ndarray], prefix: str, probe: str) -> str:
  """A task model's prefix of its base model ("bert.", "model."), or "" for the state dict of a
  bare base model (which has the key `probe` and no key with the prefix)."""
  bare = probe in weights and not any(k.startswith(prefix) for k in weights)
  return "" if bare else prefix


# ---------------------------------------------------------------------------------------------
# Layouts, one per model family: the expected PyTorch tensors and where they go.

def bert_entries(model: Bert, weights: Mapping[str, np.ndarray]) -> list[Entry]:
  """Hugging Face `BertForSequenceClassification` (or `BertModel`, without "bert.")."""
  p, d = _prefix(weights, "bert.", "embeddings.word_embeddings.weight"), model.hidden
  entries = (_same(f"{p}embeddings.word_embeddings.weight", (model.vocab_size, d),
                   "word_embeddings", "embedding")
             + _same(f"{p}embeddings.position_embeddings.weight", (model.max_positions, d),
                     "position_embeddings", "embedding")
             + _same(f"{p}embeddings.token_type_embeddings.weight", (model.type_vocab_size, d),
                     "token_type_embeddings", "embedding")
             + _layer_norm(f"{p}embeddings.LayerNorm", ("embedding_norm",), d))
  for i in range(model.depth):
    key, path = f"{p}encoder.layer.{i}.", (f"layer_{i}",)
    for name in ("query", "key", "value"):
      entries += _linear(f"{key}attention.self.{name}", (*path, "attention", name), d, d)
    entries += _linear(f"{key}attention.output.dense", (*path, "attention", "out"), d, d)
    entries += _layer_norm(f"{key}attention.output.LayerNorm", (*path, "attention_norm"), d)
    entries += _linear(f"{key}intermediate.dense", (*path, "intermediate"), model.mlp, d)
    entries += _linear(f"{key}output.dense", (*path, "output"), d, model.mlp)
    entries += _layer_norm(f"{key}output.LayerNorm", (*path, "output_norm"), d)
  entries += _linear(f"{p}pooler.dense", ("pooler",), d, d)
  if model.num_classes is not None:
    entries += _linear("classifier", ("classifier",), model.num_classes, d)
  return entries


def llama_entries(model: Llama, weights: Mapping[str, np.ndarray]) -> list[Entry]:
  """Hugging Face `LlamaForCausalLM` (`num_classes=None`) or `LlamaForSequenceClassification`
  (`num_classes=C`)."""
  p, d = _prefix(weights, "model.", "embed_tokens.weight"), model.hidden
  heads = model.num_heads
  kv_heads = model.num_kv_heads or heads
  head_dim = model.head_dim or d // heads
  bias = model.use_bias
  entries = _same(f"{p}embed_tokens.weight", (model.vocab_size, d), "embed_tokens", "embedding")
  for i in range(model.depth):
    key, path = f"{p}layers.{i}.", (f"layer_{i}",)
    attention = (*path, "attention")
    entries += _linear(f"{key}self_attn.q_proj", (*attention, "query"), heads * head_dim, d, bias)
    entries += _linear(f"{key}self_attn.k_proj", (*attention, "key"), kv_heads * head_dim, d, bias)
    entries += _linear(f"{key}self_attn.v_proj", (*attention, "value"), kv_heads * head_dim, d,
                       bias)
    entries += _linear(f"{key}self_attn.o_proj", (*attention, "out"), d, heads * head_dim, bias)
    for name, shape in (("gate_proj", (model.mlp, d)), ("up_proj", (model.mlp, d)),
                        ("down_proj", (d, model.mlp))):
      entries += _linear(f"{key}mlp.{name}", (*path, "mlp", name), *shape, bias=False)
    entries += _same(f"{key}input_layernorm.weight", (d,), *path, "input_norm", "scale")
    entries += _same(f"{key}post_attention_layernorm.weight", (d,), *path, "post_attention_norm",
                     "scale")
  entries += _same(f"{p}norm.weight", (d,), "norm", "scale")
  if model.num_classes is not None:
    entries += _linear("score", ("score",), model.num_classes, d, bias=False)
  elif not model.tie_embeddings:
    entries += _linear("lm_head", ("lm_head",), model.vocab_size, d, bias=False)
  return entries


def vit_entries(model: ViT, weights: Mapping[str, np.ndarray]) -> list[Entry]:
  """torchvision `VisionTransformer` (without `representation_size`)."""
  d = model.hidden
  split = lambda w: tuple(np.split(w, 3, axis=0))  # in_proj rows: query, key, value
  entries = (_conv("conv_proj", ("patch_embedding",), d, None, model.patch_size)
             + _same("class_token", (1, 1, d), "class_token")
             + _same("encoder.pos_embedding", (1, None, d), "position_embedding"))
  for i in range(model.depth):
    key, path = f"encoder.layers.encoder_layer_{i}.", (f"layer_{i}",)
    attention = ("params", *path, "attention")
    entries += _layer_norm(f"{key}ln_1", (*path, "norm1"), d)
    entries.append(Entry(f"{key}self_attention.in_proj_weight", (3 * d, d),
                         tuple((*attention, name, "kernel") for name in ("query", "key", "value")),
                         lambda w: tuple(part.T for part in split(w))))
    entries.append(Entry(f"{key}self_attention.in_proj_bias", (3 * d,),
                         tuple((*attention, name, "bias") for name in ("query", "key", "value")),
                         split))
    entries += _linear(f"{key}self_attention.out_proj", (*path, "attention", "out"), d, d)
    entries += _layer_norm(f"{key}ln_2", (*path, "norm2"), d)
    entries += _linear(f"{key}mlp.0", (*path, "mlp_in"), model.mlp, d)
    entries += _linear(f"{key}mlp.3", (*path, "mlp_out"), d, model.mlp)
  entries += _layer_norm("encoder.ln", ("norm",), d)
  if model.num_classes is not None:
    entries += _linear("heads.head", ("head",), model.num_classes, d)
  return entries


def vgg_entries(model: VGG, weights: Mapping[str, np.ndarray]) -> list[Entry]:
  """torchvision `VGG` ("features.N" convolutions, "classifier.0/3/6" Linear layers)."""
  entries, index, convs, channels = [], 0, 0, None
  for v in resolve_config(model.config):
    if v == "M":
      index += 1
      continue
    convs += 1
    entries += _conv(f"features.{index}", (f"conv{convs}",), v, channels, 3)
    if model.batch_norm:
      entries += _batch_norm(f"features.{index + 1}", (f"bn{convs}",), v)
    index += 3 if model.batch_norm else 2  # conv, (bn,) relu
    channels = v

  def nhwc_kernel(w: np.ndarray, c: int = channels) -> np.ndarray:
    # PyTorch flattens (C, H, W), Flax (H, W, C): kernel[(h, w, c), o] = weight[o, (c, h, w)],
    # in one transposing copy (400 MB for VGG-16's first layer).
    return w.reshape(w.shape[0], c, -1).transpose(2, 1, 0).reshape(-1, w.shape[0])

  width = None if model.pool_size is None else channels * model.pool_size**2
  kernel = nhwc_kernel
  for j, units in enumerate(model.dense):
    entries += _linear(f"classifier.{3 * j}", (f"dense{j + 1}",), units, width, kernel=kernel)
    width, kernel = units, None
  if model.num_classes is not None:
    entries += _linear(f"classifier.{3 * len(model.dense)}", ("classifier",), model.num_classes,
                       width, kernel=kernel)
  return entries


def resnet_entries(model: ResNet18, weights: Mapping[str, np.ndarray]) -> list[Entry]:
  """torchvision `ResNet` (resnet18: BasicBlocks; resnet50: `bottleneck=True`)."""
  width = model.width
  entries = (_conv("conv1", ("stem_conv",), width, None, 7 if model.stem == "imagenet" else 3,
                   bias=False)
             + _batch_norm("bn1", ("stem_bn",), width))
  channels = width
  for stage, num_blocks in enumerate(model.stage_sizes):
    features = width * 2**stage
    for block in range(num_blocks):
      stride = 2 if stage > 0 and block == 0 else 1
      key, path = f"layer{stage + 1}.{block}.", (f"layer{stage + 1}_{block}",)
      if model.bottleneck:
        out = 4 * features
        convs = ((features, channels, 1), (features, features, 3), (out, features, 1))
      else:
        out = features
        convs = ((features, channels, 3), (features, features, 3))
      for n, (o, i, k) in enumerate(convs, 1):
        entries += _conv(f"{key}conv{n}", (*path, f"conv{n}"), o, i, k, bias=False)
        entries += _batch_norm(f"{key}bn{n}", (*path, f"bn{n}"), o)
      if stride != 1 or channels != out:
        entries += _conv(f"{key}downsample.0", (*path, "proj_conv"), out, channels, 1, bias=False)
        entries += _batch_norm(f"{key}downsample.1", (*path, "proj_bn"), out)
      channels = out
  if model.num_classes is not None:
    entries += _linear("fc", ("classifier",), model.num_classes, channels)
  return entries


# The layout of each model class (the first that `model` is an instance of) and its source.
LAYOUTS: dict[type, tuple[Callable[[Any, Mapping[str, np.ndarray]], list[Entry]], str]] = {
    Bert: (bert_entries, "Hugging Face BertForSequenceClassification"),
    Llama: (llama_entries, "Hugging Face LlamaForCausalLM / LlamaForSequenceClassification"),
    ViT: (vit_entries, "torchvision VisionTransformer"),
    VGG: (vgg_entries, "torchvision VGG"),
    ResNet18: (resnet_entries, "torchvision ResNet"),
}


# ---------------------------------------------------------------------------------------------
# Model fields from a PyTorch model's configuration.

# family -> (config key -> field), for the keys a config sets; missing keys keep the field
# defaults, which are the Hugging Face config defaults (torchvision's ViT: 1000 classes).
_CONFIG_KEYS = {
    "bert": {"vocab_size": "vocab_size", "hidden_size": "hidden", "num_hidden_layers": "depth",
             "num_attention_heads": "num_heads", "intermediate_size": "mlp",
             "max_position_embeddings": "max_positions", "type_vocab_size": "type_vocab_size",
             "num_labels": "num_classes", "layer_norm_eps": "layer_norm_epsilon",
             "hidden_dropout_prob": "dropout_rate"},
    "llama": {"vocab_size": "vocab_size", "hidden_size": "hidden", "num_hidden_layers": "depth",
              "num_attention_heads": "num_heads", "num_key_value_heads": "num_kv_heads",
              "intermediate_size": "mlp", "head_dim": "head_dim", "rope_theta": "rope_theta",
              "rms_norm_eps": "rms_norm_epsilon", "tie_word_embeddings": "tie_embeddings",
              "attention_bias": "use_bias"},
    "vit": {"patch_size": "patch_size", "num_layers": "depth", "num_heads": "num_heads",
            "hidden_dim": "hidden", "mlp_dim": "mlp", "num_classes": "num_classes",
            "dropout": "dropout_rate"},
}
# Settings the xjax models do not implement: config key -> the values they support.
_UNSUPPORTED = {
    "bert": {"hidden_act": ("gelu",), "position_embedding_type": ("absolute",)},
    "llama": {"hidden_act": ("silu",), "rope_scaling": (None,), "mlp_bias": (False,)},
    "vit": {"representation_size": (None,), "attention_dropout": (0, 0.0)},
}


def fields_from_torch_config(family: str, config: Mapping[str, Any], **overrides: Any
                             ) -> dict[str, Any]:
  """`get_model(family, **fields)` fields for a PyTorch model's configuration.

  Args:
    family: "bert" or "llama" (a Hugging Face config, e.g. its config.json as a dict), or "vit"
      (the arguments of torchvision's `VisionTransformer`).
    config: the configuration; keys it does not set keep the defaults.
    **overrides: fields set directly, e.g. `num_classes=None` for `LlamaForCausalLM` (a
      Hugging Face config always has `num_labels`, so LLaMA's head is not read from it).

  Raises:
    ConfigError: for an unknown family or a setting the xjax model does not implement.
  """
  if family not in _CONFIG_KEYS:
    raise ConfigError(f"Unknown model family {family!r}; expected one of "
                      f"{', '.join(_CONFIG_KEYS)}.")
  for key, supported in _UNSUPPORTED[family].items():
    if config.get(key, supported[0]) not in supported:
      raise ConfigError(f"The {family} model does not implement {key}={config[key]!r} "
                        f"(supported: {', '.join(map(repr, supported))}).")
  fields = {"num_classes": 1000} if family == "vit" else {}
  if family == "bert" and "id2label" in config:  # a saved config.json has no num_labels
    fields["num_classes"] = len(config["id2label"])
  fields.update({field: config[key] for key, field in _CONFIG_KEYS[family].items()
                 if key in config})
  return {**fields, **overrides}


# ---------------------------------------------------------------------------------------------
# Reading and matching.

def _to_numpy(value: Any) -> np.ndarray:
  if isinstance(value, np.ndarray):
    return value
  if hasattr(value, "detach"):  # a torch tensor (torch is never imported here)
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":  # numpy has no bfloat16
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def load_state_dict(weights: Mapping[str, Any] | str | os.PathLike) -> dict[str, np.ndarray]:
  """A state dict as numpy arrays, from a dict (numpy arrays or torch tensors) or a file:
  .safetensors (read without torch), or .bin / .pt / .pth (`torch.load`, needs torch)."""
  if isinstance(weights, Mapping):
    return {str(k): _to_numpy(v) for k, v in weights.items()}
  if not isinstance(weights, (str, os.PathLike)):
    raise ConfigError(f"Expected a state dict or a path to PyTorch weights, got "
                      f"{type(weights).__name__}.")
  path = Path(weights)
  if path.suffix == ".safetensors":
    return read_safetensors(path)
  if path.suffix not in (".bin", ".pt", ".pth"):
    raise ConfigError(f"Unknown weight file type {str(path)!r}: expected .safetensors, .bin, .pt "
                      "or .pth.")
  if not path.is_file():
    raise ConfigError(f"No weight file at {str(path)!r}.")
  try:
    torch = importlib.import_module("torch")
  except ImportError as e:
    raise ConfigError(f"Reading {str(path)!r} needs PyTorch (torch.load), which is not installed; "
                      "install torch or save the weights as .safetensors.") from e
  state = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(state, Mapping):
    raise ConfigError(f"{str(path)!r} holds a {type(state).__name__}, not a state dict.")
  return {str(k): _to_numpy(v) for k, v in state.items()}


def _fits(shape: tuple[int, ...], expected: Shape) -> bool:
  return len(shape) == len(expected) and all(e is None or s == e
                                             for s, e in zip(shape, expected))


def _listing(items: list[str]) -> str:
  more = f", ... ({len(items) - _LISTED} more)" if len(items) > _LISTED else ""
  return ", ".join(items[:_LISTED]) + more


def _layout(model: nn.Module) -> tuple[Callable[[Any, Mapping[str, np.ndarray]], list[Entry]],
                                       str]:
  for cls, layout in LAYOUTS.items():
    if isinstance(model, cls):
      return layout
  raise ConfigError(f"No PyTorch layout for {type(model).__name__}; supported: "
                    f"{', '.join(cls.__name__ for cls in LAYOUTS)}.")


def import_torch_weights(model: nn.Module, weights: Mapping[str, Any] | str | os.PathLike
                         ) -> dict:
  """The Flax variables of `model` from PyTorch weights (see the module docstring for the
  layouts).

  Args:
    model: an xjax `Bert`, `Llama`, `ViT`, `VGG` or `ResNet18` whose fields match the PyTorch
      model's configuration.
    weights: a state dict (str -> numpy array or torch tensor), or the path of a .safetensors
      (no torch needed), .bin, .pt or .pth file.

  Returns:
    {"params": ...} (float32 arrays), plus {"batch_stats": ...} for batch-norm models.

  Raises:
    ConfigError: one line listing the missing, unexpected and mis-shaped keys (with shapes)
      when the weights do not fit the model.
  """
  layout, source = _layout(model)
  state = load_state_dict(weights)
  entries = layout(model, state)
  expected = {entry.key: entry for entry in entries}
  ignored = _IGNORED_SUFFIXES + (("lm_head.weight",) if isinstance(model, Llama)
                                 and model.tie_embeddings else ())
  missing = [key for key in expected if key not in state]
  unexpected = [f"{key} {tuple(state[key].shape)}" for key in state
                if key not in expected and not key.endswith(ignored)]
  misshaped = [f"{key} {tuple(state[key].shape)} (expected "
               f"{tuple('?' if n is None else n for n in entry.shape)})"
               for key, entry in expected.items()
               if key in state and not _fits(tuple(state[key].shape), entry.shape)]
  if missing or unexpected or misshaped:
    parts = [f"{len(missing)} missing: {_listing(missing)}" if missing else "",
             f"{len(unexpected)} unexpected: {_listing(unexpected)}" if unexpected else "",
             f"{len(misshaped)} mis-shaped: {_listing(misshaped)}" if misshaped else ""]
    raise ConfigError(f"The PyTorch weights do not fit {type(model).__name__} "
                      f"(as {source}): "
                      f"{'; '.join(p for p in parts if p)}.")
  variables: dict = {}
  for entry in entries:
    for path, value in zip(entry.targets, entry.convert(np.asarray(state[entry.key]))):
      node = variables
      for name in path[:-1]:
        node = node.setdefault(name, {})
      node[path[-1]] = jnp.asarray(value, jnp.float32)
  return variables
