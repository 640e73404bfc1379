"""Explanation throughput of xjax against captum and zennit, on the same weights, in one process.

What is measured: images per second of one explanation of a fixed random batch (default 64
images of 32x32x3, standard-normal pixels, random target classes, seed 0) by four methods:

  * saliency: |d f_c / d x| (xjax `gradients.saliency`; captum `Saliency(abs=True)`);
  * lrp_dtd: LRP with the deep Taylor composite `composites.dtd(low, high)`: z^B (ZBox) on the
    layer fed by the input, z+ without bias on every other convolution and dense layer (zennit:
    `SpecialFirstLayerMapComposite` with `ZBox(low, high)` first and `ZPlus(zero_params='bias')`
    on `Convolution` and `torch.nn.Linear`, plus zennit's `layer_map_base()`: `Pass` on
    activations, `Norm` on sums and average pooling). low / high: the batch's min / max pixel;
  * lrp_epsilon_plus_flat: `composites.epsilon_plus_flat()` (zennit `EpsilonPlusFlat()`: flat
    first layer, z+ on convolutions, epsilon 1e-6 on dense layers);
  * integrated_gradients: zero baseline, `--ig_steps` points (default 32) of the Gauss-Legendre
    quadrature on [0, 1], captum's default and the same nodes and weights in xjax
    (`method="gausslegendre"`), evaluated `--ig_chunk` path points (x the batch) at a time in
    both frameworks (xjax `chunk_size`, captum `internal_batch_size = ig_chunk * batch`).

on two models with random weights (`init_variables`, seed 0, then every bias and batch-norm
statistic perturbed - `nonzero_biases` - so that bias handling is part of the comparison; Flax
initialises biases to zero):

  * cnn_cifar10: the Table-1 CIFAR10 CNN (C32-C32-MaxP-C64-C64-MaxP-D512-D10);
  * resnet18: ResNet-18 with the CIFAR stem and 10 classes.

The target is explained with relevance `onehot(target) * logits` at the output (LRP; zennit's
`attr_output`) or the seed `onehot(target)` (gradients; captum's `target`). xjax: every method is
`jax.jit`-compiled once per model (compilation and a warm-up call are not timed), each timed call
ends with `jax.block_until_ready`. PyTorch: the twin of `benchmarks/torch_models.py` filled with
the same weights (`flax_to_torch`), in eval mode, inputs NCHW,
`torch.set_num_threads(os.cpu_count())`; zennit's `Gradient` attributor with its composite
registered once, outside the timed loop (on a deep copy of the twin per composite, because
zennit's batch-norm canonizer rewrites weights in place).

What zennit is compared with: xjax's LRP engine finds in the traced program what zennit needs
canonizers for. It folds inference-mode batch norm into the convolution before it, and relevance
splits in proportion at additions and average pooling (`x * gradient`). The CNN twin needs no
canonizer (its functional ReLU and max pooling pass relevance as a gradient, which is what
zennit's `Pass` and xjax's `x * gradient` do there). On the ResNet-18 twin (not torchvision's, so
zennit's `ResNetCanonizer` does not apply), `twin_canonizers` does what that canonizer does for
torchvision's ResNet: zennit's `SequentialMergeBatchNorm` (each batch norm follows its
convolution in the twin's module order), the residual addition done by a zennit `Sum` module and
the global average pooling by an `AdaptiveAvgPool2d` module, both with the `Norm` rule. Two
zennit details are switched off to compare like with like; together they move zennit's ResNet-18
heatmaps by 6e-5 (dtd) and 1e-4 (epsilon_plus_flat) relative L2 (measured in float64, where
xjax and zennit then agree to 3e-8): the emptied batch norm still divides by sqrt(1 + eps)
(`ExactMergeBatchNorm` sets eps to 0 while merged), and `Norm` adds a stabiliser 1e-6 to the sum
it divides by (`NORM_STABILIZER`).

How it is measured: `--rounds` alternating rounds; in each round every method runs `n` calls
in xjax and then `n` calls in PyTorch, so the noise of a shared machine hits both alike (`n` per
method is chosen from the warm-up so that the slower framework takes about `--round_s` seconds).
Reported per method: the median over rounds of batch * n / time, for each framework, and
xjax/torch (> 1: xjax is faster); for xjax, LRP time / saliency time (the cost of LRP over one
plain gradient pass; the acceptance for cnn_cifar10 is at most 1.3). The last line printed holds
the ratios of all models.

Correctness first (`check_explain`): before timing, each method runs once in both frameworks on
the timed batch and the heatmaps are compared as relative L2, ||a - b|| / ||b|| over the whole
batch (torch's NCHW transposed to NHWC); asserted below `TOLERANCE`. The LRP heatmaps are also
checked for conservation: with z+ on every hidden layer, dtd relevance sums to the explained logit.

Run: `python -m benchmarks.explain [--models cnn_cifar10,resnet18] [--batch 64] [--rounds 3]
[--ig_steps 32] [--ig_chunk 8] [--round_s 1.0] [--torch_device cpu|cuda]`. On 2 shared CPU
cores `--rounds 2` took 7 minutes, most of it ResNet-18's Integrated Gradients (about a minute
per call in xjax). Numbers from a machine shared with other processes are noisy: compare the
ratios rather than the absolute rates, and look at the spread of the rounds (printed as min..max).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.torch_models import BasicBlockTorch, ResNet18Torch, flax_to_torch, make_torch_model
from benchmarks.torchvision_stub import import_zennit
from xjax.explain import gradients
from xjax.nn.registry import count_params, get_model, init_variables, logits_fn

zennit = import_zennit()
import captum  # noqa: E402  (after zennit: the stand-in torchvision is gone again by then)
import captum.attr  # noqa: E402 (after import_zennit, as above)
from zennit import canonizers as zcanon  # noqa: E402 (after import_zennit, as above)
from zennit import composites as zcomp  # noqa: E402 (after import_zennit, as above)
from zennit import rules as zrules  # noqa: E402 (after import_zennit, as above)
from zennit import types as ztypes  # noqa: E402 (after import_zennit, as above)
from zennit.attribution import Gradient as ZennitGradient  # noqa: E402 (after import_zennit, as above)
from zennit.layer import Sum as ZennitSum  # noqa: E402 (after import_zennit, as above)

MODEL_KWARGS: dict[str, dict[str, Any]] = {
    "cnn_cifar10": {"num_classes": 10},
    "resnet18": {"num_classes": 10, "stem": "cifar"},
}
METHODS = ("saliency", "lrp_dtd", "lrp_epsilon_plus_flat", "integrated_gradients")
LRP_COMPOSITES = ("dtd", "epsilon_plus_flat")
PEER = {"saliency": "captum", "integrated_gradients": "captum", "lrp_dtd": "zennit",
        "lrp_epsilon_plus_flat": "zennit"}
# Bound on the relative L2 difference of the heatmaps, xjax vs the PyTorch peer. In float64 the two
# agree to ~3e-8 (LRP, both models); in float32 they round differently, and where rounding flips
# a ReLU or max-pooling decision the heatmaps part by more. Measured at batch 64:
#  * LRP, the acceptance 1e-4: dtd 5e-7 on the CNN; epsilon_plus_flat 6e-5 on the CNN
#    (the epsilon rule's 1e-6 stabiliser amplifies the rounding of near-zero dense
#    pre-activations); ResNet-18 ~6e-5 for both composites, from one block output whose
#    pre-activation u + v is 9e-7 in float64 and <= 0 in XLA's fused float32 (u ~ 1.5): the ReLU
#    flips, and LRP's proportional split gives each summand u * gradient, large and opposite,
#    with or without that unit (zennit's float32, like xjax's unfused eager run, keeps it).
#  * Integrated Gradients evaluates gradients near the zero baseline, where rounding decides many
#    ReLU and pooling ties: the CNN's float32 gradient at the first Gauss-Legendre nodes is ~2e-2
#    from float64 in either framework, IG ~5e-4 on both models.
#  * Saliency: PyTorch's float32 CPU convolutions give less exact gradients on ResNet-18 (against
#    a float64 run of the twin, torch's float32 saliency is off by ~1e-4, xjax's by ~1e-6).
TOLERANCE: dict[str, dict[str, float]] = {
    "cnn_cifar10": {"saliency": 1e-4, "integrated_gradients": 2e-3, "lrp_dtd": 1e-4,
                    "lrp_epsilon_plus_flat": 1e-4},
    "resnet18": {"saliency": 2e-3, "integrated_gradients": 2e-3, "lrp_dtd": 1e-4,
                 "lrp_epsilon_plus_flat": 1e-4},
}


# --------------------------------------------------------------------------------------------------
# Inputs and weights.


def make_batch(batch_size: int, image_size: int = 32, num_classes: int = 10,
               seed: int = 0) -> dict[str, np.ndarray]:
  """The fixed random batch: NHWC float32 standard-normal images and int32 target classes."""
  rng = np.random.default_rng(seed)
  return {"image": rng.standard_normal((batch_size, image_size, image_size, 3), np.float32),
          "label": rng.integers(0, num_classes, batch_size).astype(np.int32)}


def nonzero_biases(variables: dict, seed: int = 0, scale: float = 0.1) -> dict:
  """`variables` (numpy) with every bias and batch-norm statistic perturbed, deterministically.

  Flax initialises biases to zero and batch norm to the identity, under which the bias handling
  of an LRP rule (z+ without bias, epsilon with it, batch norm merged into its convolution) would
  go untested. Biases and batch-norm shifts and running means get N(0, scale^2) added, batch-norm
  scales are multiplied by U(0.5, 1.5) and running variances set to U(0.5, 2).
  """
  rng = np.random.default_rng(seed)

  def perturb(path, leaf):
    leaf = np.asarray(leaf, np.float32)
    name = path[-1].key
    if name in ("bias", "mean"):
      return (leaf + rng.normal(0.0, scale, leaf.shape)).astype(np.float32)
    if name == "scale":
      return (leaf * rng.uniform(0.5, 1.5, leaf.shape)).astype(np.float32)
    if name == "var":
      return rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
    return leaf

  return jax.tree_util.tree_map_with_path(perturb, jax.device_get(dict(variables)))


def model_and_variables(name: str, image_size: int = 32, seed: int = 0):
  """The xjax model `name`, and its variables (`init_variables` + `nonzero_biases`) as numpy."""
  model = get_model(name, **MODEL_KWARGS[name])
  variables = init_variables(model, jax.random.key(seed), (image_size, image_size, 3))
  return model, nonzero_biases(variables, seed)


def torch_twin(name: str, variables: dict, image_size: int = 32) -> nn.Module:
  """The PyTorch twin of `name` holding `variables`, in eval mode."""
  kwargs = dict(MODEL_KWARGS[name])
  if name == "cnn_cifar10":
    kwargs["image_size"] = image_size
  return flax_to_torch(name, variables, make_torch_model(name, **kwargs)).eval()


def box_bounds(x: np.ndarray) -> tuple[float, float]:
  """The z^B box of the dtd composite: the lowest and highest pixel of the batch."""
  return float(np.min(x)), float(np.max(x))


def to_nchw(x_nhwc: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(x_nhwc)).permute(0, 3, 1, 2).contiguous()


def to_nhwc(t: torch.Tensor) -> np.ndarray:
  return t.detach().permute(0, 2, 3, 1).cpu().numpy()


def relative_l2(a: np.ndarray, b: np.ndarray) -> float:
  """||a - b|| / ||b|| over all elements, in float64."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --------------------------------------------------------------------------------------------------
# zennit: composites and the canonizers of the twins.


def _basic_block_forward(self: BasicBlockTorch, x: torch.Tensor) -> torch.Tensor:
  """BasicBlockTorch's forward with the residual addition done by a zennit `Sum` module."""
  y = F.relu(self.bn1(self.conv1(x)))
  y = self.bn2(self.conv2(y))
  if self.has_proj:
    x = self.proj_bn(self.proj_conv(x))
  return F.relu(self.canonizer_sum(torch.stack([x, y], dim=-1)))


def _resnet_forward(self: ResNet18Torch, x: torch.Tensor) -> torch.Tensor:
  """ResNet18Torch's forward with the global average pooling done by an AvgPool module."""
  x = F.relu(self.stem_bn(self.stem_conv(x)))
  if self.stem == "imagenet":
    x = F.max_pool2d(x, 3, 2, 1)
  for name in self.block_names:
    x = getattr(self, name)(x)
  return self.classifier(self.canonizer_pool(x).flatten(1))


def _twin_attributes(name: str, module: nn.Module) -> dict[str, Any] | None:
  """zennit AttributeCanonizer map: hookable modules for the twins' functional sum and mean."""
  if isinstance(module, BasicBlockTorch):
    return {"forward": _basic_block_forward.__get__(module), "canonizer_sum": ZennitSum()}
  if isinstance(module, ResNet18Torch):
    return {"forward": _resnet_forward.__get__(module), "canonizer_pool": nn.AdaptiveAvgPool2d(1)}
  return None


class ExactMergeBatchNorm(zcanon.SequentialMergeBatchNorm):
  """zennit's SequentialMergeBatchNorm, with the emptied batch norm an exact identity.

  zennit folds `scale / sqrt(var + eps)` into the convolution and leaves the batch norm with
  mean 0, var 1, scale 1, shift 0 - which still divides by sqrt(1 + eps): every merged batch norm
  shrinks the forward pass by 5e-6, 17 of them in ResNet-18's main path by ~1e-4, and zennit's
  relevance with it (xjax's engine folds batch norm exactly). `eps` is set to 0 while merged.
  """

  def register(self, linears, batch_norm):
    super().register(linears, batch_norm)
    self.batch_norm_eps, batch_norm.eps = batch_norm.eps, 0.0

  def remove(self):
    super().remove()
    self.batch_norm.eps = self.batch_norm_eps


def twin_canonizers(name: str) -> list:
  """zennit canonizers that make twin `name` the program xjax's LRP engine sees (module doc)."""
  if name == "resnet18":
    # Merge first, as zennit's ResNetCanonizer does: it pairs each convolution with the batch norm
    # that follows it among the leaves, before the extra Sum / pooling modules are attached.
    return [ExactMergeBatchNorm(), zcanon.AttributeCanonizer(_twin_attributes)]
  return []


# The stabiliser of zennit's `Norm` rule on the residual sums and the average pooling of the
# twins. zennit's default 1e-6 is added to the sum before dividing by it; xjax splits relevance at
# additions and pooling as `x * gradient`, without a stabiliser. 1e-30 changes no float32 sum
# larger than 1e-23 and only keeps an all-zero pooling window from giving 0 / 0.
NORM_STABILIZER = 1e-30


def _torch_bound(value: Any) -> Any:
  """A z^B bound for zennit: a float, or per-channel values as a (1, C, 1, 1) tensor (NCHW)."""
  if value is None or np.ndim(value) == 0:
    return value
  return torch.tensor(np.asarray(value, np.float32)).reshape(1, -1, 1, 1)


def zennit_composite(composite: str, model_name: str, low: Any = None, high: Any = None):
  """The zennit composite equal to xjax's `composites.<composite>`, with the twin's canonizers.

  `dtd` (z^B first, z+ without bias elsewhere) is not one of zennit's named composites and is
  built here; `epsilon_plus_flat`, `epsilon_gamma_box` and `epsilon_alpha2_beta1` are zennit's
  `EpsilonPlusFlat`, `EpsilonGammaBox` and `EpsilonAlpha2Beta1` with their defaults. All of them
  get `Norm(NORM_STABILIZER)` on sums and average pooling (only the ResNet twin has them).
  `low` / `high`: scalars, or per-channel sequences as xjax's `composites.dtd` takes them.
  """
  low, high = _torch_bound(low), _torch_bound(high)
  canonizers = twin_canonizers(model_name)
  # Before zennit's own entries, so these rules take precedence (the first match wins).
  norm = [(ZennitSum, zrules.Norm(NORM_STABILIZER)), (ztypes.AvgPool, zrules.Norm(NORM_STABILIZER))]
  if composite == "dtd":
    layer_map = norm + zcomp.layer_map_base() + [
        (ztypes.Convolution, zrules.ZPlus(zero_params="bias")),
        (torch.nn.Linear, zrules.ZPlus(zero_params="bias")),
    ]
    first_map = [(ztypes.Linear, zrules.ZBox(low=low, high=high))]
    return zcomp.SpecialFirstLayerMapComposite(layer_map=layer_map, first_map=first_map,
                                               canonizers=canonizers)
  if composite == "epsilon_plus_flat":
    return zcomp.EpsilonPlusFlat(layer_map=norm, canonizers=canonizers)
  if composite == "epsilon_gamma_box":
    return zcomp.EpsilonGammaBox(low=low, high=high, layer_map=norm, canonizers=canonizers)
  if composite == "epsilon_alpha2_beta1":
    return zcomp.EpsilonAlpha2Beta1(layer_map=norm, canonizers=canonizers)
  raise ValueError(f"No zennit counterpart for composite {composite!r}.")


class ZennitLRP:
  """zennit's `Gradient` attributor with `composite` registered on a private copy of `twin`.

  Call with NCHW images and (B,) int64 targets; returns the input relevance (NCHW). The relevance
  at the output is `onehot(target) * logits` (zennit's `attr_output`, the seed of its modified
  backward pass). `close()` removes the hooks and canonizers.
  """

  def __init__(self, twin: nn.Module, composite):
    self.model = copy.deepcopy(twin).eval()
    self.composite = composite
    self.composite.register(self.model)
    self.attributor = ZennitGradient(self.model, self.composite)

  def __call__(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    def relevance_at_output(logits: torch.Tensor) -> torch.Tensor:
      return F.one_hot(target, logits.shape[-1]).to(logits) * logits.detach()

    _, relevance = self.attributor(x, relevance_at_output)
    return relevance

  def close(self) -> None:
    self.composite.remove()


# --------------------------------------------------------------------------------------------------
# The two sides: compiled xjax functions and their PyTorch peers.


def captum_saliency(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
  """captum's saliency |d f_c / d x| of NCHW `x`."""
  # A view that requires grad (no copy), or captum warns that it switched it on itself.
  return captum.attr.Saliency(model).attribute(x.detach().requires_grad_(), target=target,
                                               abs=True)


def captum_integrated_gradients(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *,
                                steps: int, chunk: int | None = None) -> torch.Tensor:
  """captum's Integrated Gradients from a zero baseline, `steps` Gauss-Legendre points.

  `chunk` path points (each the whole batch) are evaluated at once, as xjax's `chunk_size`.
  """
  return captum.attr.IntegratedGradients(model).attribute(
      x, baselines=0.0, target=target, n_steps=steps, method="gausslegendre",
      internal_batch_size=min(chunk or steps, steps) * x.shape[0])


def xjax_composite(composite: str, low: Any = None, high: Any = None):
  """xjax's composite of that name (`dtd` and `epsilon_gamma_box` take the z^B box)."""
  from xjax.explain import composites
  if composite in ("dtd", "epsilon_gamma_box"):
    return getattr(composites, composite)(low, high)
  return getattr(composites, composite)()


def xjax_lrp_fn(apply_fn: Callable, composite) -> Callable:
  """`jax.jit` of `(params, x, target) -> lrp(apply_fn, params, x, target, composite)`."""
  from xjax.explain.lrp import lrp
  return jax.jit(lambda params, x, target: lrp(apply_fn, params, x, target, composite=composite))


class Setup:
  """One model in both frameworks: weights, batch, and the explanation methods of each side.

  `xjax[method](params, x, target)` is jitted; `torch[method](x_nchw, target)` returns NCHW.
  """

  def __init__(self, name: str, batch: dict[str, np.ndarray], ig_steps: int = 32,
               ig_chunk: int | None = 8, methods: tuple[str, ...] = METHODS, seed: int = 0,
               device: str = "cpu"):
    self.name, self.methods = name, methods
    image_size = batch["image"].shape[1]
    self.model, self.variables = model_and_variables(name, image_size, seed)
    self.num_params = count_params(self.variables["params"])
    self.low, self.high = box_bounds(batch["image"])
    ig_chunk = min(ig_chunk or ig_steps, ig_steps)

    # xjax: params, images and targets on the device once; every method compiled once.
    apply_fn = logits_fn(self.model)
    self.params = jax.device_put(self.variables)
    self.x, self.target = jnp.asarray(batch["image"]), jnp.asarray(batch["label"])
    self.xjax: dict[str, Callable] = {
        "saliency": jax.jit(lambda p, x, t: gradients.saliency(apply_fn, p, x, t)),
        "integrated_gradients": jax.jit(lambda p, x, t: gradients.integrated_gradients(
            apply_fn, p, x, t, steps=ig_steps, chunk_size=ig_chunk, method="gausslegendre")),
    }
    for composite in LRP_COMPOSITES:
      if f"lrp_{composite}" in methods:
        self.xjax[f"lrp_{composite}"] = xjax_lrp_fn(
            apply_fn, xjax_composite(composite, self.low, self.high))

    # PyTorch: the twin with the same weights; captum on it, zennit on copies.
    self.device = torch.device(device)
    self.twin = torch_twin(name, self.variables, image_size).to(self.device)
    self.x_torch = to_nchw(batch["image"]).to(self.device)
    self.target_torch = torch.from_numpy(batch["label"].astype(np.int64)).to(self.device)
    self.zennit = {c: ZennitLRP(self.twin, zennit_composite(c, name, self.low, self.high))
                   for c in LRP_COMPOSITES if f"lrp_{c}" in methods}
    self.torch: dict[str, Callable] = {
        "saliency": lambda x, t: captum_saliency(self.twin, x, t),
        "integrated_gradients": lambda x, t: captum_integrated_gradients(
            self.twin, x, t, steps=ig_steps, chunk=ig_chunk),
        **{f"lrp_{c}": attributor for c, attributor in self.zennit.items()},
    }

  def run_xjax(self, method: str) -> jax.Array:
    return jax.block_until_ready(self.xjax[method](self.params, self.x, self.target))

  def run_torch(self, method: str) -> torch.Tensor:
    out = self.torch[method](self.x_torch, self.target_torch)
    if self.device.type == "cuda":  # CUDA is asynchronous: the call ends when the result is there
      torch.cuda.synchronize(self.device)
    return out

  def logits(self) -> np.ndarray:
    return np.asarray(jax.jit(logits_fn(self.model))(self.params, self.x))

  def close(self) -> None:
    for attributor in self.zennit.values():
      attributor.close()


def check_explain(name: str, batch: dict[str, np.ndarray], setup: Setup | None = None,
                  **setup_kwargs: Any) -> dict[str, Any]:
  """Every method once in both frameworks on the same weights and batch; how far apart they are.

  Args:
    name: a key of MODEL_KWARGS.
    batch: `make_batch(...)`: NHWC images and target classes.
    setup: a `Setup` of `name` on `batch` to reuse (its xjax functions get compiled here);
      otherwise one is built from `setup_kwargs` (ig_steps, ig_chunk, methods, seed) and closed.

  Returns:
    `rel_l2`: method -> ||xjax - torch|| / ||torch|| over the batch (torch NCHW -> NHWC);
    `conservation`: for lrp_dtd, max_b |sum R_b - R_out_b| / max_b |R_out_b| for xjax, where
      R_out = the explained logit (the relevance put in at the output);
    `xjax`, `torch`: method -> heatmap (NHWC numpy); `seconds`: method -> xjax's first call
      (compile + run) in seconds.
  """
  own = setup is None
  setup = setup or Setup(name, batch, **setup_kwargs)
  try:
    logits = setup.logits()
    explained = logits[np.arange(len(batch["label"])), batch["label"]]
    out: dict[str, Any] = {"rel_l2": {}, "conservation": {}, "xjax": {}, "torch": {},
                           "seconds": {}}
    for method in setup.methods:
      t0 = time.perf_counter()
      ours = np.asarray(setup.run_xjax(method))
      out["seconds"][method] = time.perf_counter() - t0
      theirs = to_nhwc(setup.run_torch(method))
      out["xjax"][method], out["torch"][method] = ours, theirs
      out["rel_l2"][method] = relative_l2(ours, theirs)
      if method == "lrp_dtd":  # z+ / z^B without bias conserve; epsilon and flat do not
        sums = ours.reshape(len(ours), -1).sum(axis=1)
        out["conservation"][method] = float(np.max(np.abs(sums - explained))
                                            / np.max(np.abs(explained)))
    return out
  finally:
    if own:
      setup.close()


# --------------------------------------------------------------------------------------------------
# Timing.


def print_header() -> None:
  print(f"device: {jax.devices()} ({platform.processor() or platform.machine()}), "
        f"os.cpu_count()={os.cpu_count()}, affinity={len(os.sched_getaffinity(0))} cores")
  print(f"versions: jax {jax.__version__}, flax {flax.__version__}, torch {torch.__version__}, "
        f"captum {captum.__version__}, zennit {getattr(zennit, '__version__', '0.5.1')}, "
        f"numpy {np.__version__}, python {platform.python_version()}")
  print(f"threads: jax = XLA CPU default intra-op pool over all {os.cpu_count()} cores "
        f"(XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}); torch intra-op "
        f"{torch.get_num_threads()}, inter-op {torch.get_num_interop_threads()}")


def _timed(fn: Callable[[], Any], calls: int) -> float:
  t0 = time.perf_counter()
  for _ in range(calls):
    fn()
  return time.perf_counter() - t0


def benchmark_model(name: str, batch: dict[str, np.ndarray], rounds: int, ig_steps: int,
                    ig_chunk: int | None, round_s: float, device: str = "cpu"
                    ) -> dict[str, float]:
  """Check, then alternating timed rounds; prints the table and returns the model's ratios."""
  size = batch["image"].shape[0]
  t0 = time.perf_counter()
  setup = Setup(name, batch, ig_steps=ig_steps, ig_chunk=ig_chunk, device=device)
  try:
    check = check_explain(name, batch, setup)
    print(f"{name}: {setup.num_params:,} params; correctness check (same weights and batch; "
          f"relative L2 of the heatmaps, xjax vs peer; dtd box [{setup.low:.2f}, "
          f"{setup.high:.2f}]):")
    for method in METHODS:
      conserved = check["conservation"].get(method)
      extra = "" if conserved is None else f"  conservation (xjax) {conserved:.1e}"
      print(f"  {method:<24} vs {PEER[method]:<7} {check['rel_l2'][method]:.1e}   xjax compile + "
            f"first call {check['seconds'][method]:.1f} s{extra}")
    failed = {m: d for m, d in check["rel_l2"].items() if not d < TOLERANCE[name][m]}
    assert not failed, f"{name}: heatmaps differ from the peer beyond {TOLERANCE[name]}: {failed}"

    # Warm-up (untimed) and the calls per round: ~round_s seconds in the slower framework.
    calls = {}
    for method in METHODS:
      # The lambdas run inside _timed, in this iteration: late binding of `method` is harmless.
      slowest = max(_timed(lambda: setup.run_xjax(method), 1),  # noqa: B023 (called at once)
                    _timed(lambda: setup.run_torch(method), 1))  # noqa: B023 (called at once)
      calls[method] = max(1, math.ceil(round_s / slowest))
    print(f"{name}: setup, check, compile and warm-up took {time.perf_counter() - t0:.1f} s; "
          f"timing {rounds} rounds of batch {size}, calls per round: "
          + ", ".join(f"{m}={n}" for m, n in calls.items()))

    rates = {(m, side): [] for m in METHODS for side in ("xjax", "torch")}
    for _ in range(rounds):
      for method in METHODS:
        n = calls[method]
        # As above: each lambda is called inside _timed, before `method` changes.
        rates[method, "xjax"].append(size * n / _timed(lambda: setup.run_xjax(method), n))  # noqa: B023 (called at once)
        rates[method, "torch"].append(size * n / _timed(lambda: setup.run_torch(method), n))  # noqa: B023 (called at once)
  finally:
    setup.close()

  median = {key: statistics.median(r) for key, r in rates.items()}
  spread = lambda r: f"{min(r):.1f}..{max(r):.1f}"
  print(f"{name}  images/s (median of {rounds} rounds; min..max)")
  print(f"  {'method':<24} {'xjax':>9} {'torch':>9}  {'xjax/torch':>10}  rounds xjax | torch")
  for method in METHODS:
    x, t = median[method, "xjax"], median[method, "torch"]
    label = f"{method} ({ig_steps})" if method == "integrated_gradients" else method
    print(f"  {label:<24} {x:9.1f} {t:9.1f}  {x / t:10.2f}  {spread(rates[method, 'xjax'])} | "
          f"{spread(rates[method, 'torch'])}  [{PEER[method]}]")
  ratios = {}
  for composite in LRP_COMPOSITES:
    # Time per image of LRP over time per image of one plain gradient pass (saliency).
    ratios[f"lrp_{composite}/gradient"] = median["saliency", "xjax"] / median[f"lrp_{composite}",
                                                                              "xjax"]
  for composite in LRP_COMPOSITES:
    ratios[f"xjax/zennit {composite}"] = (median[f"lrp_{composite}", "xjax"]
                                          / median[f"lrp_{composite}", "torch"])
  ratios["xjax/captum saliency"] = median["saliency", "xjax"] / median["saliency", "torch"]
  ratios["xjax/captum ig"] = (median["integrated_gradients", "xjax"]
                              / median["integrated_gradients", "torch"])
  print("  xjax LRP time / saliency time: " + ", ".join(
      f"{c} {ratios[f'lrp_{c}/gradient']:.2f}" for c in LRP_COMPOSITES)
        + ("  (acceptance: <= 1.3)" if name == "cnn_cifar10" else ""))
  print("  heatmap rel L2 xjax vs peer: " + ", ".join(
      f"{m} {check['rel_l2'][m]:.1e}" for m in METHODS))
  return ratios


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
  """Runs the benchmark; returns each model's ratios (those of the last line printed)."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default="cnn_cifar10,resnet18",
                      help=f"comma list of {', '.join(MODEL_KWARGS)}")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per framework")
  parser.add_argument("--ig_steps", type=int, default=32, help="Integrated Gradients path points")
  parser.add_argument("--ig_chunk", type=int, default=8,
                      help="IG path points (each a whole batch) evaluated at once")
  parser.add_argument("--round_s", type=float, default=1.0,
                      help="seconds per method, round and framework (the slower one), about")
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--torch_device", default="cpu",
                      help="the PyTorch side's device (captum, zennit), e.g. cuda (default cpu)")
  args = parser.parse_args(argv)
  models = [m.strip() for m in args.models.split(",") if m.strip()]
  unknown = [m for m in models if m not in MODEL_KWARGS]
  if unknown:
    parser.error(f"unknown model(s) {unknown}; choose from {list(MODEL_KWARGS)}")

  torch.set_num_threads(os.cpu_count())
  print_header()
  batch = make_batch(args.batch, args.image_size)
  print(f"batch {args.batch} x {args.image_size}x{args.image_size}x3, rounds {args.rounds}, "
        f"IG {args.ig_steps} Gauss-Legendre points in chunks of {args.ig_chunk}")
  ratios = {}
  for name in models:
    ratios[name] = benchmark_model(name, batch, args.rounds, args.ig_steps, args.ig_chunk,
                                   args.round_s, args.torch_device)
  print(" | ".join(f"{name}: " + " ".join(f"{k}={v:.2f}" for k, v in r.items())
                   for name, r in ratios.items()))
  return ratios


if __name__ == "__main__":
  main()
