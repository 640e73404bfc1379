"""Attention rollout and Chefer et al.'s gradient-weighted attention against direct computations:
numpy from the maps a hand-written transformer returns (or an xjax model sows), and jax.grad with
respect to the maps, taken by perturbing them in the hand-written model."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xjax.errors import ConfigError
from xjax.explain import attention_maps as am
from xjax.explain.methods import METHODS, get_method
from xjax.nn import get_model

HEADS, T, D, C = 2, 4, 6, 3
RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(2, T, D)), jnp.float32)
TARGET = jnp.array([0, 2])


def normal(*shape):
  return jnp.asarray(RNG.normal(size=shape) / np.sqrt(shape[-2] if len(shape) > 1 else 1),
                     jnp.float32)


PARAMS = {"q0": normal(HEADS, D, D), "k0": normal(HEADS, D, D), "v0": normal(HEADS, D, D),
          "q1": normal(D, D), "k1": normal(D, D), "v1": normal(D, D), "head": normal(D, C)}
WITH_CLS = {**PARAMS, "cls": normal(1, D)}  # a learned leading token: T + 1 attention tokens


def transformer(p, x, deltas=None, maps=None):
  """x (B, T, D) -> logits (B, C) in plain jnp: a 2-head attention layer ("layer_0", maps
  (B, 2, T, T)), a 1-head one without a head axis ("layer_1", maps (B, T, T)), residual
  connections, a ReLU and a linear head on token 0. `deltas` are added to the attention maps (so
  jax.grad with respect to them is the gradient with respect to the maps); `maps` collects them."""
  if "cls" in p:
    x = jnp.concatenate([jnp.broadcast_to(p["cls"][None], (x.shape[0], 1, D)), x], axis=1)
  with jax.named_scope("layer_0"):
    q, k, v = (jnp.einsum("btd,hde->bhte", x, p[name]) for name in ("q0", "k0", "v0"))
    a = jax.nn.softmax(jnp.einsum("bhte,bhse->bhts", q, k), axis=-1)
  a = a if deltas is None else a + deltas[0]
  if maps is not None:
    maps.append(a)
  x = x + jnp.einsum("bhts,bhse->bte", a, v)
  with jax.named_scope("layer_1"):
    a = jax.nn.softmax(jnp.einsum("btd,bsd->bts", x @ p["q1"], x @ p["k1"]), axis=-1)
  a = a if deltas is None else a + deltas[1]
  if maps is not None:
    maps.append(a)
  x = jax.nn.relu(x + jnp.einsum("bts,bsd->btd", a, x @ p["v1"]))
  return x[:, 0] @ p["head"]


def maps_of(params, x):
  maps = []
  transformer(params, x, maps=maps)
  return [np.asarray(a, np.float64) for a in maps]


def map_gradients(params, x, seed):
  """d(seed . logits)/d(attention maps), by jax.grad through the perturbations."""
  zeros = [jnp.zeros_like(a, jnp.float32) for a in maps_of(params, x)]
  grads = jax.grad(lambda d: jnp.sum(seed * transformer(params, x, deltas=d)))(zeros)
  return [np.asarray(g, np.float64) for g in grads]


def heads_mean(a):
  return a.mean(axis=tuple(range(1, a.ndim - 2)))


def rollout_reference(maps, token):
  """Abnar & Zuidema 2020: prod over layers (later on the left) of rownorm(0.5 A + 0.5 I)."""
  product = np.eye(maps[0].shape[-1])
  for a in maps:
    a = 0.5 * heads_mean(a) + 0.5 * np.eye(a.shape[-1])
    product = (a / a.sum(-1, keepdims=True)) @ product
  return product[:, token]


def chefer_reference(maps, grads, token):
  """Chefer et al. 2021, Eqs. 5-6: R = I; R += mean_h((grad * A)^+) R, layer by layer."""
  r = np.eye(maps[0].shape[-1])
  for a, g in zip(maps, grads):
    r = r + heads_mean(np.maximum(g * a, 0)) @ r
  return r[:, token]


@functools.cache
def compiled(name, **options):
  """The method under jit on `transformer`, one compile per name and options."""
  method = get_method(name)
  return jax.jit(lambda p, x, t: method(transformer, p, x, t, **options))


def close(a, b, **tolerance):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                             **{"rtol": 1e-5, "atol": 1e-6, **tolerance})


# --- what they compute ----------------------------------------------------------------------------


def test_registered_at_their_definitions_for_models_with_attention():
  assert METHODS["attention_rollout"] is am.attention_rollout
  assert METHODS["generic_attention"] is am.generic_attention
  assert all(METHODS.metadata(name)["needs"] == "attention"
             for name in ("attention_rollout", "generic_attention"))


@pytest.mark.parametrize("token", ["first", "last", 2])
def test_rollout_is_the_product_of_the_head_averaged_maps_and_blind_to_the_target(token):
  relevance = compiled("attention_rollout", token=token)(PARAMS, X, TARGET)
  index = {"first": 0, "last": T - 1}.get(token, token)
  row = rollout_reference(maps_of(PARAMS, X), index)
  assert relevance.shape == X.shape
  close(relevance.sum(-1), row)
  close(relevance, np.broadcast_to(row[..., None] / D, X.shape))  # spread evenly over D
  close(relevance.sum((1, 2)), np.ones(2))  # a row of a product of row-stochastic matrices
  close(compiled("attention_rollout", token=token)(PARAMS, X, 2 - TARGET), relevance)


def test_generic_attention_equals_the_rule_on_the_gradients_of_the_maps():
  relevance = compiled("generic_attention")(PARAMS, X, TARGET)
  seed = jax.nn.one_hot(TARGET, C)
  row = chefer_reference(maps_of(PARAMS, X), map_gradients(PARAMS, X, seed), 0)
  close(relevance.sum(-1), row)
  close(relevance, np.broadcast_to(row[..., None] / D, X.shape))
  assert np.all(np.asarray(relevance) >= 0)


def test_generic_attention_all_targets_in_one_vmapped_call_and_output_vectors():
  targets = jnp.array([[0, 1], [2, 2]])
  method = get_method("generic_attention")
  every = jax.jit(jax.vmap(lambda t: method(transformer, PARAMS, X, t)))(targets)
  maps = maps_of(PARAMS, X)
  for t, relevance in zip(targets, every):
    close(relevance.sum(-1), chefer_reference(maps, map_gradients(PARAMS, X,
                                                                  jax.nn.one_hot(t, C)), 0))
  assert not np.allclose(every[0], every[1])  # unlike the rollout, it sees the class
  weights = jnp.asarray(RNG.normal(size=(2, C)), jnp.float32)  # weights of the outputs
  close(get_method("generic_attention")(transformer, PARAMS, X, weights).sum(-1),
        chefer_reference(maps, map_gradients(PARAMS, X, weights), 0))


def test_chosen_layers_only():
  maps = maps_of(PARAMS, X)
  one = get_method("attention_rollout")(transformer, PARAMS, X, TARGET, layers="layer_1")
  close(one.sum(-1), rollout_reference(maps[1:], 0))
  both = get_method("attention_rollout")(transformer, PARAMS, X, TARGET,
                                         layers=("layer_1", "layer_0"))  # program order
  close(both.sum(-1), rollout_reference(maps, 0))


def test_leading_tokens_are_dropped():
  # T + 1 attention tokens for T positions: the learned token is dropped, by default (the
  # rollout) or as given (generic_attention).
  maps = maps_of(WITH_CLS, X)
  assert maps[0].shape[-1] == T + 1
  rollout = compiled("attention_rollout")(WITH_CLS, X, TARGET)
  close(rollout.sum(-1), rollout_reference(maps, 0)[:, 1:])
  chefer = compiled("generic_attention", prefix_tokens=1)(WITH_CLS, X, TARGET)
  grads = map_gradients(WITH_CLS, X, jax.nn.one_hot(TARGET, C))
  close(chefer.sum(-1), chefer_reference(maps, grads, 0)[:, 1:])  # R[0, 1:], as for ViT


# --- xjax models: the maps they sow ---------------------------------------------------------------


def random_variables(model, x):
  """Random variables of the model's shapes, without `model.init` (its initialisers take longer
  to compile than the model; and a ViT's class token and head start at zero)."""
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  return jax.tree.map(lambda leaf: jnp.asarray(0.3 * RNG.normal(size=leaf.shape), leaf.dtype),
                      shapes)


@functools.cache
def vit():
  model = get_model("vit", patch_size=4, hidden=8, depth=2, num_heads=2, mlp=8, num_classes=C)
  images = jnp.asarray(RNG.uniform(size=(2, 8, 12, 3)), jnp.float32)  # a 2 x 3 patch grid
  return model, random_variables(model, images), images


def sown(model, variables, x):
  _, state = model.apply(variables, x, mutable=["intermediates"])
  layers = state["intermediates"]
  return [np.asarray(layers[f"layer_{i}"]["attention"]["attention"][0], np.float64)
          for i in range(len(layers))]


def test_vit_rollout_spreads_each_patch_over_its_pixels():
  model, variables, images = vit()
  apply_fn = lambda v, x: model.apply(v, x)[0]
  relevance = np.asarray(jax.jit(lambda v, x, t: get_method("attention_rollout")(
      apply_fn, v, x, t))(variables, images, TARGET))
  assert relevance.shape == images.shape
  row = rollout_reference(sown(model, variables, images), 0)  # (B, 1 + 6)
  patches = relevance.reshape(2, 2, 4, 3, 4, 3)  # (B, rows, p, cols, p, C)
  close(patches, np.broadcast_to(row[:, 1:].reshape(2, 2, 1, 3, 1, 1) / (4 * 4 * 3),
                                 patches.shape))
  close(relevance.sum((1, 2, 3)), 1 - row[:, 0])  # the class token's share is dropped


def test_bert_rollout_of_the_last_token_over_chosen_layers():
  model = get_model("bert", vocab_size=11, hidden=8, depth=2, num_heads=2, mlp=8,
                    max_positions=8, num_classes=C)
  ids = jnp.asarray(RNG.integers(0, 11, (2, 5)), jnp.int32)
  variables = random_variables(model, ids)
  embeddings = model.apply(variables, ids, method=model.embed)
  relevance = get_method("attention_rollout")(lambda v, e: model.apply(v, e)[0], variables,
                                              embeddings, TARGET, token="last",
                                              layers="layer_1/attention")
  assert relevance.shape == embeddings.shape
  close(relevance.sum(-1), rollout_reference(sown(model, variables, embeddings)[1:], 4))


# --- errors ---------------------------------------------------------------------------------------


def test_a_missing_layer_name_is_one_line_listing_the_attention_layers():
  with pytest.raises(ConfigError, match=r"No attention layer is named 'layer_9'; attention "
                     r"layers: layer_0, layer_1\.$") as e:
    get_method("generic_attention")(transformer, PARAMS, X, TARGET, layers=["layer_0", "layer_9"])
  assert "\n" not in str(e.value)


def test_a_model_without_attention_is_refused():
  dense = lambda p, x: x.reshape(len(x), -1) @ p
  with pytest.raises(ConfigError, match="need self-attention in apply_fn"):
    get_method("attention_rollout")(dense, jnp.ones((T * D, C)), X, TARGET)


@pytest.mark.parametrize("options, message", [
    ({"prefix_tokens": 2}, r"has 4 positions, but the attention has 5 tokens with 2 leading"),
    ({"prefix_tokens": 5}, r"prefix_tokens must be an int in \[0, 5\)"),
    ({"token": "middle"}, "token must be one of first, last or an index"),
    ({"token": 5}, r"an index in \[-5, 5\)"),
])
def test_tokens_that_do_not_map_onto_x_are_config_errors(options, message):
  with pytest.raises(ConfigError, match=message):
    get_method("attention_rollout")(transformer, WITH_CLS, X, TARGET, **options)


def test_an_image_that_is_no_patch_grid_of_the_tokens_is_refused():
  model, variables, images = vit()
  with pytest.raises(ConfigError, match=r"8x12 cannot be cut into 5 patches"):
    get_method("attention_rollout")(lambda v, x: model.apply(v, x)[0], variables, images,
                                    TARGET, prefix_tokens=2)
