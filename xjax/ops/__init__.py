"""CPU fast paths: `jax.lax` ops that XLA:CPU runs slowly, computed another way (same values).

A layer of its own, below `xjax.nn` (the models build their convolutions and max pooling from
it) and `xjax.explain` (the LRP engine computes its rules' passes with it, and the receptive
fields read the programs it leaves); it imports jax and flax only, nothing else of xjax.

* `convolution`: `conv_general_dilated`, a drop-in for `lax.conv_general_dilated` (and
  `nn.Conv(conv_general_dilated=...)`) that picks one of the paths below at trace time;
  `linear_conv_general_dilated`, the same sums transposable by `jax.linear_transpose`, for the
  LRP engine; `conv_params`, its arguments from a traced equation.
* `pointwise_conv`: a 1x1 convolution whose gradients are matrix products.
* `patch_conv`: a convolution over few values per output pixel (an image's first layer),
  differentiated through its patches.
* `padded_crop`: an unpadded stride-1 convolution computed "SAME"-padded and cropped.
* `pooling`: `max_pool` over tiling windows with its gradient by an equality mask, and that mask
  (`max_pool_winners_backward`), which is also the LRP engine's max-pooling rule.
* `switch`: `fast_paths_enabled`, `plain_lax`.

The switch: every fast path asks `fast_paths_enabled()` when it is traced. On GPU and TPU the
answer is no (lax's ops are the fast ones there); on CPU it is yes unless the environment
variable `XJAX_PLAIN_LAX=1` is set, which runs everything (models, gradients, LRP, receptive
fields) on plain `lax` ops (`lax.conv_general_dilated`, `lax.reduce_window`) and their ordinary
gradients. From Python, `with xjax.ops.plain_lax(): ...` sets it for a block. It is read at
trace time, so it applies to functions traced after it is set: a function jax has already traced
(`jax.jit`, `jax.make_jaxpr` cache traces by function) keeps the program it was traced with.

Why each path pays off and the bounds chosen (e.g. `MAX_PATCH_VALUES`) are in the modules; the
measurements behind them are in docs/benchmarks_cpu_fast_paths.md.
"""

from xjax.ops.convolution import conv_general_dilated, conv_params, linear_conv_general_dilated
from xjax.ops.padded_crop import crop_padding
from xjax.ops.patch_conv import MAX_PATCH_VALUES, has_few_patch_values
from xjax.ops.pointwise_conv import is_pointwise
from xjax.ops.pooling import max_pool, max_pool_winners_backward
from xjax.ops.switch import PLAIN_LAX_ENV, fast_paths_enabled, plain_lax, plain_lax_requested

__all__ = [
    "MAX_PATCH_VALUES", "PLAIN_LAX_ENV", "conv_general_dilated", "conv_params", "crop_padding",
    "fast_paths_enabled", "has_few_patch_values", "is_pointwise", "linear_conv_general_dilated",
    "max_pool", "max_pool_winners_backward", "plain_lax", "plain_lax_requested",
]
