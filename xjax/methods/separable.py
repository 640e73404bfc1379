"""Separable explanations: block-wise L1 and diffusion.

Rieger, "Separable explanations of neural network decisions" (2018), with the deep Taylor
decomposition of Montavon et al. 2017 for the heatmaps.

* **Block-diagonal L1 penalty** (Eq. 5-6): every dense layer's units are split into C class blocks
  and the positive weights that connect different blocks are penalised,
  `lambda * sum_l sum_ij relu(W^l_ij) [blk(i) != blk(j)]`. The paper's "integer division with the
  number of classes" taken literally (i // C) gives n / C blocks, not C; [A] here unit i of a layer
  with n units is in block `floor(i * C / n)` (so the output layer's unit j is in block j).
* **Heatmaps of the top-2 classes** (Sec. 2): DTD (z^B at the input with the data's bounds, z+
  without bias elsewhere) of the top-1 and of the top-2 class, the latter with all other outputs
  set to 0 (class indices seed the output relevance with `onehot(c) * f(x)`).
* **Diffusion** (Eq. 7): `d = 1/N sum_n ||R_{n,c1} - R_{n,c2}||_F`, the mean Frobenius distance of
  the channel-summed heatmaps of the top-1 and top-2 classes, computed in one place,
  `xjax.metrics.diffusion.heatmap_distances` (also the `diffusion` metric's). [A] `runs.separable`
  reports it on heatmaps scaled to unit Frobenius norm (`xjax.metrics.diffusion.unit_heatmaps`; d
  in [0, 2], the range of the paper's Table 2) as `diffusion`, and on the raw heatmaps (whose
  scale is the logits') as `diffusion_raw`.

Kernels are Flax's `(n_in, n_out)`; only 2-D leaves named "kernel" (dense layers) are penalised.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xjax.data import batching
from xjax.errors import ConfigError
from xjax.explain import composites, heatmaps
from xjax.explain.lrp import lrp
from xjax.train.losses import LOSS_TERMS, ModelOutputs

Array = jax.Array


def block_of(num_units: int, num_classes: int) -> np.ndarray:
  """The class block of each of `num_units` units: `floor(i * C / n)`, in 0..C-1."""
  if num_units < num_classes:
    raise ConfigError(f"A layer of {num_units} units cannot be split into {num_classes} class "
                      f"blocks; the block-wise penalty needs at least one unit per class.")
  return (np.arange(num_units) * num_classes) // num_units


def off_block_mask(n_in: int, n_out: int, num_classes: int, input_channels: int = 0
                   ) -> np.ndarray:
  """(n_in, n_out): 1 where input unit i and output unit j are in different class blocks.

  `input_channels = k > 0` reads the inputs as a flattened (H, W, k) feature map (Flax's
  channels-last flatten, unit i = position * k + channel) and gives unit i the block of its
  channel, `block_of(k, C)[i % k]`: every class block then sees the whole image through its own
  channels, instead of the band of image rows that the blocks of the flat index cover.
  """
  rows = input_blocks(n_in, num_classes, input_channels)
  return (rows[:, None] != block_of(n_out, num_classes)[None, :]).astype(np.float32)


def input_blocks(n_in: int, num_classes: int, input_channels: int = 0) -> np.ndarray:
  """The class block of each input of a dense layer (see `off_block_mask`)."""
  if not input_channels:
    return block_of(n_in, num_classes)
  if n_in % input_channels:
    raise ConfigError(f"A dense layer with {n_in} inputs cannot read a flattened map of "
                      f"{input_channels} channels ({n_in} is not a multiple).")
  return block_of(input_channels, num_classes)[np.arange(n_in) % input_channels]


def layer_of(path: str) -> str:
  """The layer name of a kernel path: "dense1/kernel" -> "dense1"."""
  return path.split("/")[-2]


def dense_kernels(params: Any, layers: Iterable[str] | None = None) -> dict[str, Array]:
  """The 2-D "kernel" leaves of `params` by path ("dense1/kernel"), optionally only `layers`."""
  found = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = [getattr(key, "key", str(key)) for key in path]
    if names[-1] == "kernel" and jnp.ndim(leaf) == 2:
      found["/".join(map(str, names))] = leaf
  if layers is not None:
    wanted = set(layers)
    found = {k: v for k, v in found.items() if layer_of(k) in wanted}
    missing = wanted - {layer_of(k) for k in found}
    if missing:
      raise ConfigError(f"No dense layer named {sorted(missing)}; dense layers: "
                        f"{', '.join(k.split('/')[-2] for k in dense_kernels(params))}.")
  return found


def block_l1(params: Any, num_classes: int, layers: Iterable[str] | None = None,
             channel_blocks: Mapping[str, int] | None = None) -> Array:
  """Eq. 5-6 without lambda: the sum of the positive off-block weights of the dense layers.

  `channel_blocks` maps a layer name to the channels of the feature map it flattens, whose inputs
  are then blocked by channel (`off_block_mask`); other layers block by the flat index.
  """
  channel_blocks = dict(channel_blocks or {})
  kernels = dense_kernels(params, layers)
  unknown = set(channel_blocks) - {layer_of(path) for path in kernels}
  if unknown:
    raise ConfigError(f"channel_blocks names {sorted(unknown)}, not penalised dense layers.")
  total = jnp.zeros((), jnp.float32)
  for path, kernel in kernels.items():
    mask = off_block_mask(*kernel.shape, num_classes, channel_blocks.get(layer_of(path), 0))
    total = total + jnp.sum(jax.nn.relu(kernel) * mask)
  return total


def block_l1_term(num_classes: int, layers: Iterable[str] | None = None,
                  channel_blocks: Iterable[tuple[str, int]] | Mapping[str, int] | None = None
                  ) -> Callable:
  """The loss term `block_l1` (`{"block_l1": {"weight": lambda, "num_classes": C}}`)."""
  layers = None if layers is None else tuple(layers)
  channel_blocks = dict(channel_blocks or {})

  def term(params: Any, batch, outputs: ModelOutputs) -> Array:
    del batch, outputs
    return block_l1(params, num_classes, layers, channel_blocks)

  return term


LOSS_TERMS.register("block_l1", block_l1_term, penalty=True)  # of the parameters alone


def top2_heatmaps(apply_fn: Callable[[Any, Array], Array], params: Any, x: Array,
                  low: Any = 0.0, high: Any = 1.0) -> tuple[Array, Array, Array]:
  """DTD heatmaps (B, H, W) of the top-1 and top-2 classes, and those classes (B, 2).

  Args:
    apply_fn: `(params, x) -> logits`.
    params: its parameters.
    x: images (B, H, W, C).
    low, high: the input box of the z^B rule, e.g. `xjax.data.pipeline.input_bounds(info, norm)`.
  """
  classes = jnp.argsort(-apply_fn(params, x), axis=-1)[:, :2]
  composite = composites.dtd(low, high)
  maps = [heatmaps.channel_sum(lrp(apply_fn, params, x, classes[:, i], composite))
          for i in range(2)]
  return maps[0], maps[1], classes


def top2_heatmaps_of(apply_fn: Callable[[Any, Array], Array], params: Any, images: np.ndarray,
                     low: Any = 0.0, high: Any = 1.0, batch_size: int = 250
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """`top2_heatmaps` of many normalised images, and their logits (N, classes), as numpy.

  Runs in batches of one compiled shape (`xjax.data.batching.map_batches`), so the function
  compiles once whatever the number of images. The logits come from the forward pass the heatmaps
  already make (XLA computes it once).
  """
  images = np.asarray(images)
  if batch_size < 1:
    raise ConfigError(f"top2_heatmaps_of needs batch_size >= 1; got {batch_size}.")
  if images.ndim != 4 or len(images) == 0:
    raise ConfigError(f"top2_heatmaps_of needs images (N, H, W, C) with N >= 1; got shape "
                      f"{images.shape}.")
  explain = jax.jit(lambda p, x: (*top2_heatmaps(apply_fn, p, x, low, high), apply_fn(p, x)))
  top1, top2, classes, logits = batching.map_batches(lambda x: explain(params, x), images,
                                                     batch_size=batch_size)
  return top1, top2, classes, logits
