"""Explanations read from a transformer's attention maps: attention rollout and the
gradient-weighted attention of Chefer et al., the two baselines transformer explanations are
compared against.

* `attention_rollout`: Abnar & Zuidema, "Quantifying Attention Flow in Transformers" (ACL 2020),
  Sec. 3: per layer the attention averaged over heads with the residual connection as the
  identity, `A' = 0.5 A + 0.5 I`, rows renormalised, multiplied over the layers in order,
  `A~ = A'_L ... A'_1`; the explained token's row of `A~` is the relevance of each token.
* `generic_attention`: Chefer, Gur & Wolf, "Generic Attention-model Explainability for
  Interpreting Bi-Modal and Encoder-Decoder Transformers" (ICCV 2021), the self-attention rule
  (Eqs. 5-6): `R = I`; for each layer in order `Abar = E_h[(dy/dA ⊙ A)^+]`, `R = R + Abar R`,
  where `dy/dA` is the gradient of the explained output with respect to that layer's attention
  weights; the explained token's row of `R`. The name is the paper's ("generic attention-model
  explainability", GAE in the comparisons of later papers).

Both read the attention maps from the traced program of `apply_fn` (`xjax.explain.lrp.program`),
never from module classes: the outputs of its softmax units (`Program.units`) over the last axis
of a (B, ..., T, T) value, i.e. every self-attention of a ViT, BERT, LLaMA or hand-written
`jnp` transformer, in program order. The axes between the batch axis and the last two (query,
key) are heads and are averaged. The gradients come from taps on those variables in one
backward pass (`xjax.explain.lrp.engine.evaluate`), as Grad-CAM's do.

Tokens are mapped to the input's shape (methods return relevance with the shape of x):

* x (B, T) or (B, T, D) (token features, e.g. word embeddings): token `prefix + i` is position
  `i` of x, its relevance spread evenly over the D features (`relevance.sum(-1)` is the token
  relevance);
* x (B, H, W, C) (a ViT): the tokens after the prefix are the patches of a p x p grid in
  row-major order (p inferred), each patch's relevance spread evenly over its p x p x C pixels.

Leading tokens without an input position (a ViT's class token) are dropped: `prefix_tokens`,
by default the attention's tokens minus the input positions (for images: the fewest that leave a
whole patch grid).

Registered with the metadata `needs="attention"`: apply_fn must contain self-attention.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from xjax.errors import ConfigError
from xjax.explain.lrp.engine import evaluate
from xjax.explain.lrp.program import Program, trace
from xjax.explain.methods import METHODS
from xjax.explain.targets import check_inputs, explanation_method, output_seed

Array = jax.Array
TOKENS = ("first", "last")


def attention_variables(program: Program, layers: str | Sequence[str] | None = None
                        ) -> list[tuple[str, int]]:
  """(name, program variable) of the self-attention maps of `program`, in program order.

  The maps are the outputs of softmax units over a (B, ..., T, T) value. `layers` keeps those
  whose name is one of `layers` or ends with "/" + one of them (e.g. "layer_3/attention").

  Raises:
    ConfigError: no self-attention in the program, or a name in `layers` that matches none
      (one line, listing the names there are).
  """
  found = []
  for unit in program.units:
    var = unit.eqn.outvars[0]
    shape = program.avals[var].shape
    if unit.info.kind == "softmax" and len(shape) >= 3 and shape[-1] == shape[-2]:
      found.append((unit.info.name, var))
  if not found:
    raise ConfigError("Attention explanations need self-attention in apply_fn: a softmax over "
                      "the last axis of a (B, ..., T, T) value; apply_fn has none.")
  if layers is None:
    return found
  wanted = (layers,) if isinstance(layers, str) else tuple(layers)
  matches = lambda name, key: name == key or name.endswith("/" + key)
  missing = [key for key in wanted if not any(matches(name, key) for name, _ in found)]
  if missing or not wanted:
    names = ", ".join(name or "(unnamed)" for name, _ in found)
    raise ConfigError(f"No attention layer is named {', '.join(map(repr, missing)) or '()'}; "
                      f"attention layers: {names}.")
  return [(name, var) for name, var in found if any(matches(name, key) for key in wanted)]


def attention_program(apply_fn: Callable, params: Any, x: Array,
                      layers: str | Sequence[str] | None = None) -> tuple[Program, list[int]]:
  """`apply_fn` traced at (params, x), and the variables of its self-attention maps (those of
  `layers`; see `attention_variables`), which share one token count and have x's batch axis."""
  program = trace(apply_fn, params, x)
  variables = [var for _, var in attention_variables(program, layers)]
  lengths = {program.avals[var].shape[-1] for var in variables}
  batches = {program.avals[var].shape[0] for var in variables}
  if len(lengths) != 1 or batches != {x.shape[0]}:
    shapes = ", ".join(str(program.avals[var].shape) for var in variables)
    raise ConfigError(f"The attention maps must share one token count and have the batch axis "
                      f"of x ({x.shape[0]}) first; got {shapes}.")
  return program, variables


def attention_and_gradients(program: Program, variables: Sequence[int], params: Any, x: Array,
                            target: Array | None = None
                            ) -> tuple[list[Array], list[Array] | None]:
  """The values of the attention maps `variables` (each (B, ..., T, T)) and, for a `target`, the
  gradients of the explained output with respect to them (by taps; None without a target)."""
  leaves = jax.tree.leaves(params)
  record = dict.fromkeys(variables)

  def run(taps):
    out = evaluate(program, leaves, x, taps=dict(zip(variables, taps)), record=record)
    return out, [record[var] for var in variables]

  zeros = [jnp.zeros(program.avals[var].shape, program.avals[var].dtype) for var in variables]
  if target is None:
    return run(zeros)[1], None
  outputs = program.avals[program.output_var]
  check_inputs(x, target, outputs.shape[-1])
  y, pullback, maps = jax.vjp(run, zeros, has_aux=True)
  return maps, pullback(output_seed(outputs, target).astype(y.dtype))[0]


def head_mean(a: Array) -> Array:
  """(B, ..., T, T) -> (B, T, T): the mean over the axes between batch and (query, key)."""
  return a.mean(axis=tuple(range(1, a.ndim - 2))) if a.ndim > 3 else a


def row_of_product(matrices: Sequence[Array], token: int) -> Array:
  """Row `token` of `M_L ... M_1` for (B, T, T) matrices M_1, ..., M_L (in layer order): the
  row vector multiplied from the left, last layer first. (B, T)."""
  row = jax.nn.one_hot(jnp.full(matrices[0].shape[:1], token), matrices[0].shape[-1],
                       dtype=matrices[0].dtype)
  for m in reversed(matrices):
    row = jnp.einsum("bt,bts->bs", row, m, precision=jax.lax.Precision.HIGHEST)
  return row


def token_index(token: int | str, length: int) -> int:
  """The explained token: "first" (0, a class token), "last" (a decoder's) or an index."""
  if isinstance(token, str):
    if token not in TOKENS:
      raise ConfigError(f"token must be one of {', '.join(TOKENS)} or an index; got {token!r}.")
    return 0 if token == "first" else length - 1
  if isinstance(token, bool) or not isinstance(token, int) or not -length <= token < length:
    raise ConfigError(f"token must be one of {', '.join(TOKENS)} or an index in "
                      f"[-{length}, {length}); got {token!r}.")
  return token % length


def patch_side(height: int, width: int, patches: int | None, tokens: int) -> int:
  """The side p of square patches tiling an image into `patches` tokens; for `patches=None`, the
  grid with the most patches that fits in `tokens` (the fewest leading non-input tokens)."""
  sides = [p for p in range(1, min(height, width) + 1) if height % p == 0 and width % p == 0]
  counts = {p: (height // p) * (width // p) for p in sides}
  fitting = [p for p in sides if (counts[p] == patches if patches is not None
                                  else counts[p] <= tokens)]
  if not fitting:
    wanted = f"{patches} patches" if patches is not None else f"at most {tokens} patches"
    raise ConfigError(f"An image of {height}x{width} cannot be cut into {wanted} (the attention "
                      f"has {tokens} tokens); set prefix_tokens to the number of leading tokens "
                      f"that are not patches.")
  return min(fitting)


@dataclasses.dataclass(frozen=True)
class TokenLayout:
  """Where the attention's tokens are in x: the explained token, the number of leading tokens
  without an input position, and for images the side of the square patches (else None)."""
  token: int
  prefix: int
  patch: int | None = None


def token_layout(tokens: int, x: Array, token: int | str = "first",
                 prefix_tokens: int | None = None) -> TokenLayout:
  """The layout of `tokens` attention tokens over x (see the module docstring).

  Raises:
    ConfigError: a bad `token` or `prefix_tokens`, or tokens that do not map onto x.
  """
  index = token_index(token, tokens)
  if prefix_tokens is not None and (isinstance(prefix_tokens, bool) or not isinstance(
      prefix_tokens, int) or not 0 <= prefix_tokens < tokens):
    raise ConfigError(f"prefix_tokens must be an int in [0, {tokens}) (the attention has "
                      f"{tokens} tokens); got {prefix_tokens!r}.")
  if x.ndim in (2, 3):
    positions = x.shape[1]
    prefix = tokens - positions if prefix_tokens is None else prefix_tokens
    if prefix < 0 or tokens - prefix != positions:
      raise ConfigError(f"x of shape {x.shape} has {positions} positions, but the attention has "
                        f"{tokens} tokens with {prefix} leading ones (prefix_tokens); each token "
                        "after them must be one position of x.")
    return TokenLayout(index, prefix)
  if x.ndim == 4:
    height, width = x.shape[1:3]
    p = patch_side(height, width, None if prefix_tokens is None else tokens - prefix_tokens,
                   tokens)
    return TokenLayout(index, tokens - (height // p) * (width // p), p)
  raise ConfigError(f"Attention explanations map tokens to x of shape (B, T), (B, T, D) or "
                    f"(B, H, W, C); got {x.shape}.")


def to_input(relevance: Array, x: Array, layout: TokenLayout) -> Array:
  """Token relevance (B, T) as relevance with the shape of x: the leading tokens dropped, each
  token's relevance spread evenly over its features (B, T, D) or its patch's pixels (images)."""
  kept = relevance[:, layout.prefix:]
  if x.ndim == 2:
    return kept.astype(x.dtype)
  if x.ndim == 3:
    return jnp.broadcast_to(kept[..., None] / x.shape[2], x.shape).astype(x.dtype)
  batch, height, width, channels = x.shape
  p = layout.patch
  rows, cols = height // p, width // p
  grid = kept.reshape(batch, rows, 1, cols, 1, 1) / (p * p * channels)
  return jnp.broadcast_to(grid, (batch, rows, p, cols, p, channels)).reshape(x.shape).astype(
      x.dtype)


def explained_token(option: str | None, bounds: Any, key: Any) -> str:
  """Binds `token` from the spec's option: `attention_rollout:last` reads the last token's row
  (a decoder's decision), the default the first (a [CLS] or class token)."""
  del bounds, key
  if option in (None, "first", "last"):
    return option or "first"
  raise ConfigError(f"Unknown explained token {option!r}: write first (a [CLS] or class token, "
                    "the default) or last (a decoder's last position).")


@METHODS.register("attention_rollout", needs="attention", option="explained token",
                  binds={"token": explained_token},
                  description="attention rollout (Abnar & Zuidema 2020): head-averaged attention "
                  "with the residual identity, multiplied over the layers; blind to the target")
@explanation_method
def attention_rollout(apply_fn: Callable, params: Any, x: Array, target: Array, *,
                      layers: str | Sequence[str] | None = None, token: int | str = "first",
                      prefix_tokens: int | None = None) -> Array:
  """Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020,
  Sec. 3): the explained token's row of `A'_L ... A'_1`, `A'_l = 0.5 A_l + 0.5 I` with rows
  renormalised, `A_l` layer l's attention averaged over heads.

  It ignores the target: every class gets the same map (it explains what the token attends to,
  not a decision); the target is only checked, as for every method. Each row of the product
  sums to 1, so without leading non-input tokens the relevance of x sums to 1.

  Args:
    apply_fn, params, x, target: the common convention (`xjax.explain.targets`); apply_fn must
      contain self-attention (softmax over a (B, ..., T, T) value).
    layers: the attention layers to multiply, by name or name suffix (e.g. "layer_0/attention");
      None: all, in program order.
    token: the explained token, "first" (the class token of ViT / BERT), "last" (a decoder's
      next-token position) or an index.
    prefix_tokens: the leading tokens that are not positions of x (dropped); None: the
      attention's tokens minus x's positions (see the module docstring).

  Returns:
    The relevance, shape of x.

  Raises:
    ConfigError: no self-attention, a layer name that is none of the attention layers (listing
      them), or tokens that do not map onto x.
  """
  del target  # blind to the class, as the paper's method
  program, variables = attention_program(apply_fn, params, x, layers)
  layout = token_layout(program.avals[variables[0]].shape[-1], x, token, prefix_tokens)
  maps, _ = attention_and_gradients(program, variables, params, x)
  matrices = []
  for a in maps:
    a = head_mean(a)
    a = 0.5 * a + 0.5 * jnp.eye(a.shape[-1], dtype=a.dtype)
    matrices.append(a / a.sum(-1, keepdims=True))
  return to_input(row_of_product(matrices, layout.token), x, layout)


@METHODS.register("generic_attention", needs="attention", option="explained token",
                  binds={"token": explained_token},
                  description="gradient-weighted attention relevance (Chefer, Gur & Wolf 2021, "
                  "the self-attention rule)")
@explanation_method
def generic_attention(apply_fn: Callable, params: Any, x: Array, target: Array, *,
                      layers: str | Sequence[str] | None = None, token: int | str = "first",
                      prefix_tokens: int | None = None) -> Array:
  """Chefer, Gur & Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal and
  Encoder-Decoder Transformers" (ICCV 2021), Eqs. 5-6 (the self-attention rule): `R = I`; for
  each layer in order, `Abar = E_h[(grad_A ⊙ A)^+]` and `R = R + Abar R`; the explained
  token's row of R.

  `grad_A` is the gradient of the explained output (`onehot(target)` or the output vector as
  weights, as for the gradient methods) with respect to the layer's attention weights `A`.

  As the reference code for ViT (`R[0, 1:]`), the class token's own entry is dropped with the
  leading non-input tokens. When the explained token is itself a position of x (text models
  explained at the embeddings), its entry is kept as R has it, including the identity's 1.

  Args:
    apply_fn, params, x, target: the common convention (`xjax.explain.targets`); apply_fn must
      contain self-attention (softmax over a (B, ..., T, T) value).
    layers: the attention layers, by name or name suffix (e.g. "layer_0/attention"); None: all,
      in program order.
    token: the explained token, "first" (the class token of ViT / BERT), "last" (a decoder's
      next-token position) or an index.
    prefix_tokens: the leading tokens that are not positions of x (dropped); None: the
      attention's tokens minus x's positions (see the module docstring).

  Returns:
    The relevance (>= 0), shape of x.

  Raises:
    ConfigError: no self-attention, a layer name that is none of the attention layers (listing
      them), or tokens that do not map onto x.
  """
  program, variables = attention_program(apply_fn, params, x, layers)
  layout = token_layout(program.avals[variables[0]].shape[-1], x, token, prefix_tokens)
  maps, grads = attention_and_gradients(program, variables, params, x, target)
  eye = jnp.eye(maps[0].shape[-1], dtype=maps[0].dtype)
  matrices = [eye + head_mean(jax.nn.relu(g * a)) for a, g in zip(maps, grads)]
  return to_input(row_of_product(matrices, layout.token), x, layout)
