"""Receptive fields of the units of a convolutional feature map, read off the traced program.

Location instability (Zhang, Wu & Zhu, "Interpretable convolutional neural networks", CVPR 2018)
places a filter's response at the centre of the receptive field of its strongest unit, as does
its use to score explainer networks (Zhang, Yang & Wu, "Unsupervised learning of neural networks
to explain neural networks", AAAI 2019). Here the receptive fields come from the network itself:
`fn(params, x) -> maps` is traced with `jax.make_jaxpr` (calls such as `jit`, `custom_jvp_call`
and `custom_vjp_call` inlined, as for LRP: `xjax.explain.lrp.program`), and each spatial op's
window, stride, padding and dilation is composed along the way (the recursion of Araujo,
Norris & Sim, "Computing receptive fields of convolutional neural networks", Distill 2019).

Along each spatial axis the receptive field of unit i spans [lo + i * step, hi + i * step) in
input pixel units, where pixel (i, j) covers [j, j + 1) x [i, i + 1) and has its centre at
(j + 0.5, i + 0.5) (the convention of `xjax.metrics.locality` and the keypoints of
`xjax.data.shapes`). A window op (convolution, pooling) whose unit i reads the input positions
i * s - pad_lo + t * d, t = 0 .. k - 1, maps (lo, hi, step) to
(lo - pad_lo * step, hi + (-pad_lo + (k - 1) * d) * step, s * step); a `slice` (the crop of an
unpadded convolution computed padded, `xjax.ops.padded_crop`) or a `pad` shifts lo and hi;
elementwise ops pass them through, and the sum of two branches (a residual connection) spans the
union of theirs. Fields that reach into the padding extend past the image: the centre is that of
the whole window, padding included (the usual convention), so a border unit of a "SAME"
convolution is centred on its pixel.

An op that mixes spatial positions other than through a window (a dense layer over the flattened
map, a global pooling, a gather) has no receptive field of this kind:
`UnsupportedOperationError` names it and its source line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xjax.errors import ConfigError, UnsupportedOperationError
from xjax.explain.lrp.program import Eqn, Lit, _Flattener

# Ops that compute each output element from the elements at the same position of their operands.
_ELEMENTWISE = {
    "add", "add_any", "sub", "mul", "div", "rem", "max", "min", "neg", "abs", "sign", "floor",
    "ceil", "round", "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "erf", "erfc",
    "erf_inv", "sqrt", "rsqrt", "cbrt", "pow", "integer_pow", "square", "sin", "cos", "tan",
    "select_n", "clamp", "convert_element_type", "copy", "copy_p", "stop_gradient",
    "reduce_precision", "is_finite", "gt", "lt", "ge", "le", "eq", "ne", "and", "or", "not",
    "xor", "nextafter", "atan2", "optimization_barrier", "sharding_constraint", "real", "imag"}
_REDUCTIONS = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or",
               "argmax", "argmin"}
_WINDOWS = {"reduce_window_sum", "reduce_window_max", "reduce_window_min", "reduce_window"}


@dataclasses.dataclass(frozen=True)
class _Axis:
  """Receptive fields along one axis of a value: unit i spans [lo + i * step, hi + i * step)."""
  dim: int  # 0: rows (y) of the input, 1: columns (x)
  lo: float
  hi: float
  step: float

  def window(self, stride: int, pad_lo: int, size: int, dilation: int) -> _Axis:
    return _Axis(self.dim, self.lo - pad_lo * self.step,
                 self.hi + (-pad_lo + (size - 1) * dilation) * self.step, self.step * stride)

  def shift(self, start: float, stride: int = 1) -> _Axis:
    return _Axis(self.dim, self.lo + start * self.step, self.hi + start * self.step,
                 self.step * stride)


@dataclasses.dataclass(frozen=True)
class ReceptiveField:
  """The receptive fields of the units of a (B, h, w, K) map, in input pixel units.

  Attributes:
    centres_y: (h,) the y coordinate of the centre of the fields of each row of units.
    centres_x: (w,) the x coordinate of the centre of the fields of each column of units.
    size: (height, width) of one field, padding included.
    stride: (y, x) distance between the centres of neighbouring units (the product of strides).
    bounds_y, bounds_x: (h, 2) and (w, 2) the [start, end) of each field along y and x; they
      extend past [0, H) and [0, W) where the field reaches into padding.
  """
  centres_y: np.ndarray
  centres_x: np.ndarray
  size: tuple[float, float]
  stride: tuple[float, float]
  bounds_y: np.ndarray
  bounds_x: np.ndarray


State = dict  # axis of a value -> _Axis; present only for values that depend on the input


def _merge(eqn: Eqn, states: Sequence[State]) -> State:
  """The fields of an output computed from operands with fields `states`: the union of theirs."""
  if any(not s for s in states) and any(s for s in states):
    raise UnsupportedOperationError(
        f"No receptive field through {eqn.describe()}: it combines a value that has lost its "
        "spatial axes (a global pooling) with the feature maps.")
  merged = dict(states[0])
  for state in states[1:]:
    if set(state) != set(merged):
      raise UnsupportedOperationError(
          f"No receptive field through {eqn.describe()}: its operands hold their spatial axes "
          "in different places.")
    for axis, field in state.items():
      other = merged[axis]
      if other.dim != field.dim or not np.isclose(other.step, field.step):
        raise UnsupportedOperationError(
            f"No receptive field through {eqn.describe()}: its operands have different "
            "strides or spatial layouts.")
      merged[axis] = _Axis(field.dim, min(other.lo, field.lo), max(other.hi, field.hi),
                           field.step)
  return merged


def _mixes(eqn: Eqn, what: str) -> UnsupportedOperationError:
  return UnsupportedOperationError(
      f"No receptive field through {eqn.describe()}: it {what}. The function must map images to "
      "feature maps by convolutions, pooling and elementwise ops only.")


def _reshape(eqn: Eqn, state: State, shape_in, shape_out) -> State:
  """A reshape keeps a spatial axis when the same elements lie before and along it."""
  if eqn.params.get("dimensions") is not None:
    raise _mixes(eqn, "reorders the elements before reshaping")
  out = {}
  for axis, field in state.items():
    before = int(np.prod(shape_in[:axis]))
    matches = [b for b in range(len(shape_out))
               if shape_out[b] == shape_in[axis] and int(np.prod(shape_out[:b])) == before]
    if not matches:
      raise _mixes(eqn, "merges a spatial axis with others (e.g. a flatten before a dense layer)")
    out[matches[0]] = field
  return out


def _window_op(eqn: Eqn, state: State, lhs_axes, out_axes, sizes, strides, padding,
               dilation, base_dilation) -> State:
  """A sliding window along `lhs_axes` (convolution or pooling) onto `out_axes`."""
  out = {}
  windowed = dict(zip(lhs_axes, zip(out_axes, sizes, strides, padding, dilation, base_dilation)))
  for axis, field in state.items():
    if axis not in windowed:
      raise _mixes(eqn, "mixes a spatial axis with the channels")
    out_axis, size, stride, (pad_lo, _), dil, base = windowed[axis]
    if base != 1:
      raise UnsupportedOperationError(
          f"No receptive field through {eqn.describe()}: it dilates its input (a transposed "
          "convolution), which has no single stride.")
    out[out_axis] = field.window(int(stride), int(pad_lo), int(size), int(dil))
  return out


def _propagate(eqn: Eqn, states: dict[int, State], avals) -> list[State]:
  """The fields of `eqn`'s outputs, from those of its input-dependent operands."""
  name = eqn.primitive.name
  dep = [i for i, v in enumerate(eqn.invars) if isinstance(v, int) and v in states]
  ins = [states[eqn.invars[i]] for i in dep]
  shape_in = tuple(avals[eqn.invars[dep[0]]].shape)
  shape_out = tuple(avals[eqn.outvars[0]].shape)
  params = eqn.params
  if name in _ELEMENTWISE:
    if any(tuple(avals[eqn.invars[i]].shape) != shape_out for i in dep):
      raise _mixes(eqn, "broadcasts an input-dependent operand")
    return [_merge(eqn, ins)] * len(eqn.outvars)
  state = ins[0]
  if name == "conv_general_dilated":
    if dep != [0]:
      raise _mixes(eqn, "has a kernel that depends on the input")
    dims = params["dimension_numbers"]
    kernel = eqn.invars[1]
    kernel_shape = np.shape(kernel.value) if isinstance(kernel, Lit) else avals[kernel].shape
    rank = len(dims.lhs_spec) - 2
    ones = (1,) * rank
    return [_window_op(eqn, state, dims.lhs_spec[2:], dims.out_spec[2:],
                       [kernel_shape[a] for a in dims.rhs_spec[2:]], params["window_strides"],
                       params["padding"], params.get("rhs_dilation") or ones,
                       params.get("lhs_dilation") or ones)]
  if name in _WINDOWS:
    if len(dep) != 1 or dep[0] >= len(eqn.outvars):
      raise _mixes(eqn, "pools with input-dependent initial values")
    axes = range(len(shape_in))
    ones = (1,) * len(shape_in)
    out = _window_op(eqn, state, axes, axes, params["window_dimensions"],
                     params["window_strides"], params["padding"],
                     params.get("window_dilation") or ones, params.get("base_dilation") or ones)
    return [out] * len(eqn.outvars)
  if name == "dot_general":
    (contract_l, contract_r), (batch_l, batch_r) = params["dimension_numbers"]
    if len(dep) != 1:
      raise _mixes(eqn, "multiplies two input-dependent values")
    own, other = dep[0], 1 - dep[0]
    contract, batch = (contract_l, batch_l) if own == 0 else (contract_r, batch_r)
    other_rank = len(avals[eqn.invars[other]].shape) if isinstance(eqn.invars[other], int) else (
        np.ndim(eqn.invars[other].value))
    other_batch = batch_r if own == 0 else batch_l
    other_contract = contract_r if own == 0 else contract_l
    free = [a for a in range(len(shape_in)) if a not in contract and a not in batch]
    other_free = other_rank - len(other_batch) - len(other_contract)
    out = {}
    for axis, field in state.items():
      if axis in contract:
        raise _mixes(eqn, "sums over a spatial axis (e.g. a dense layer over the flattened map)")
      if axis in batch:
        out[list(batch).index(axis)] = field
      else:
        position = len(batch) + free.index(axis)
        out[position if own == 0 else position + other_free] = field
    return [out]
  if name in ("reshape", "squeeze", "expand_dims"):
    if name == "squeeze":
      dropped = set(params["dimensions"])
      kept = [a for a in range(len(shape_in)) if a not in dropped]
      return [{kept.index(a): f for a, f in state.items() if a not in dropped}]
    return [_reshape(eqn, state, shape_in, shape_out)]
  if name == "transpose":
    permutation = list(params["permutation"])
    return [{permutation.index(a): f for a, f in state.items()}]
  if name == "broadcast_in_dim":
    dims = params["broadcast_dimensions"]
    for a in state:
      if shape_in[a] != shape_out[dims[a]]:
        raise _mixes(eqn, "broadcasts a spatial axis")
    return [{dims[a]: f for a, f in state.items()}]
  if name in _REDUCTIONS:
    axes = set(params["axes"])
    if axes & set(state):
      raise _mixes(eqn, "reduces over a spatial axis (a global pooling)")
    kept = [a for a in range(len(shape_in)) if a not in axes]
    return [{kept.index(a): f for a, f in state.items()}]
  if name in ("cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"):
    if params["axis"] in state:
      raise _mixes(eqn, "accumulates along a spatial axis")
    return [dict(state)]
  if name == "slice":
    strides = params.get("strides") or (1,) * len(shape_in)
    return [{a: f.shift(params["start_indices"][a], strides[a]) for a, f in state.items()}]
  if name == "pad":
    if dep != [0]:
      raise _mixes(eqn, "pads with an input-dependent value")
    config = params["padding_config"]
    if any(config[a][2] != 0 for a in state):
      raise _mixes(eqn, "dilates a spatial axis (interior padding)")
    return [{a: f.shift(-config[a][0]) for a, f in state.items()}]
  if name == "concatenate":
    if params["dimension"] in set().union(*ins):
      raise _mixes(eqn, "concatenates along a spatial axis")
    return [_merge(eqn, ins)]
  raise _mixes(eqn, "is not a convolution, pooling, slice, pad, reshape or elementwise op")


def receptive_fields(fn: Callable[[Any, jax.Array], jax.Array], params: Any,
                     x_shape: Sequence[int], spatial_axes: tuple[int, int] = (1, 2)
                     ) -> ReceptiveField:
  """The receptive fields of the units of `fn(params, x)`, from the traced program.

  Args:
    fn: maps images x (B, H, W, C) to feature maps (B, h, w, K), e.g.
      `lambda p, x: model.apply(p, x)[1]["conv_maps"]`; traced, never run.
    params: its parameters (arrays or shape structs).
    x_shape: the shape of x, e.g. (1, 32, 32, 3); the fields depend on it through "SAME" padding.
    spatial_axes: the axes of x holding its rows (y) and columns (x).

  Returns:
    A `ReceptiveField`: the centres of the fields of the h rows and w columns of units, their
    size, stride and bounds, in input pixel units (pixel (i, j) centred at (j + 0.5, i + 0.5)).

  Raises:
    ConfigError: x_shape does not have the spatial axes, or fn does not return one array.
    UnsupportedOperationError: an op between x and the maps mixes spatial positions other than by
      a window (a dense layer over the flattened map, a global pooling), or has no single stride
      (a transposed convolution); the message names it and its source line.
  """
  x_shape = tuple(int(n) for n in x_shape)
  if len(spatial_axes) != 2 or not all(-len(x_shape) <= a < len(x_shape) for a in spatial_axes):
    raise ConfigError(f"x_shape {x_shape} has no axes {tuple(spatial_axes)} for rows and columns.")
  spatial_axes = tuple(a % len(x_shape) for a in spatial_axes)
  if spatial_axes[0] == spatial_axes[1]:
    raise ConfigError(f"spatial_axes must name two different axes; got {spatial_axes}.")
  x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
  closed = jax.make_jaxpr(fn)(params, x)
  flat = _Flattener()
  invars = [flat.new_var(v.aval) for v in closed.jaxpr.invars]
  outs = flat.inline(closed.jaxpr, closed.consts, invars, "")
  if len(outs) != 1 or not isinstance(outs[0], int):
    raise ConfigError(f"fn must return one array of feature maps (B, h, w, K); it returns "
                      f"{len(outs)} values.")
  live, kept = {outs[0]}, []
  for eqn in reversed(flat.eqns):  # only what the maps need (not, e.g., the classifier head)
    if any(v in live for v in eqn.outvars):
      kept.append(eqn)
      live.update(v for v in eqn.invars if isinstance(v, int))
  states: dict[int, State] = {invars[-1]: {
      axis: _Axis(dim, 0.0, 1.0, 1.0) for dim, axis in enumerate(spatial_axes)}}
  for eqn in reversed(kept):
    if any(isinstance(v, int) and v in states for v in eqn.invars):
      states.update(zip(eqn.outvars, _propagate(eqn, states, flat.avals)))
  out = states.get(outs[0])
  found = {field.dim: (axis, field) for axis, field in (out or {}).items()}
  if set(found) != {0, 1}:
    raise ConfigError("fn's output does not keep both spatial axes of its input x; it must "
                      "return feature maps (B, h, w, K).")
  shape = flat.avals[outs[0]].shape
  bounds = []
  for dim in (0, 1):
    axis, field = found[dim]
    start = field.lo + field.step * np.arange(shape[axis], dtype=np.float64)
    bounds.append(np.stack([start, start + (field.hi - field.lo)], -1))
  (_, fy), (_, fx) = found[0], found[1]
  return ReceptiveField(
      centres_y=bounds[0].mean(-1), centres_x=bounds[1].mean(-1),
      size=(fy.hi - fy.lo, fx.hi - fx.lo), stride=(fy.step, fx.step),
      bounds_y=bounds[0], bounds_x=bounds[1])


def receptive_field_centres(fn: Callable[[Any, jax.Array], jax.Array], params: Any,
                            x_shape: Sequence[int], spatial_axes: tuple[int, int] = (1, 2)
                            ) -> tuple[np.ndarray, np.ndarray]:
  """(centres_y (h,), centres_x (w,)): the receptive-field centres of the rows and columns of
  units of `fn(params, x)`, in input pixel units; see `receptive_fields`."""
  field = receptive_fields(fn, params, x_shape, spatial_axes)
  return field.centres_y, field.centres_x
