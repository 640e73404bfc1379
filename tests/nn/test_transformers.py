"""The transformers (ViT, BERT, LLaMA) and their shared attention: shapes, the two input paths,
masks, grouped-query attention, rotary positions, RMSNorm, remat, and one train step."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xjax.errors import ConfigError
from xjax.nn import count_params, get_model, init_variables
from xjax.nn.attention import MultiHeadAttention
from xjax.nn.norms import RMSNorm
from xjax.train.losses import build_loss_terms
from xjax.train.state import TrainState
from xjax.train.step import make_train_step

B, T, VOCAB = 2, 9, 50
IMAGE = (16, 16, 3)
TEXT = dict(vocab_size=VOCAB, hidden=16, depth=2, num_heads=4, mlp=24)
FIELDS = {
    "vit": dict(patch_size=4, hidden=16, depth=2, num_heads=4, mlp=24, num_classes=3),
    "bert": dict(TEXT, max_positions=16, num_classes=3),
    "llama": dict(TEXT, num_kv_heads=2),
}


def inputs(name: str, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  if name == "vit":
    return rng.normal(size=(B, *IMAGE)).astype(np.float32)
  return rng.integers(0, VOCAB, (B, T)).astype(np.int32)


@functools.cache
def setup(name: str, **fields):
  """Model, random variables (numpy-filled: no init compile) and a jitted apply that also
  returns the sown attention maps: `((logits, intermediates), {"intermediates": ...})`."""
  model = get_model(name, **{**FIELDS[name], **fields})
  x = jnp.zeros((1, *(IMAGE if name == "vit" else (T,))), jnp.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  rng = np.random.default_rng(1)
  variables = jax.tree_util.tree_map(
      lambda leaf: jnp.asarray(rng.normal(0.0, 0.5, leaf.shape), jnp.float32), shapes)
  kwargs = lambda mask: {} if name == "vit" else {"mask": mask}
  apply = jax.jit(lambda v, x, mask=None: model.apply(v, x, mutable=["intermediates"],
                                                      **kwargs(mask)))
  return model, variables, apply


# ---------------------------------------------------------------------------------------------
# Shapes, parameter names, attention maps.

@pytest.mark.parametrize("name, logits_shape, tokens", [
    ("vit", (B, 3), 1 + (16 // 4) ** 2), ("bert", (B, 3), T), ("llama", (B, VOCAB), T)])
def test_shapes_and_attention_maps(name, logits_shape, tokens):
  model, variables, apply = setup(name)
  (logits, inter), state = apply(variables, inputs(name))
  assert logits.shape == logits_shape and np.all(np.isfinite(logits))
  assert set(inter) == set(type(model).INTERMEDIATES) == {"tokens", "features"}
  assert inter["tokens"].shape == (B, tokens, 16) and inter["features"].shape == (B, 16)
  maps = state["intermediates"]
  assert sorted(maps) == ["layer_0", "layer_1"]
  probs = np.asarray(maps["layer_1"]["attention"]["attention"][0])
  assert probs.shape == (B, 4, tokens, tokens)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  if name == "llama":  # causal: nothing above the diagonal
    assert np.all(np.triu(probs, k=1) == 0)
  assert {"layer_0", "layer_1"} <= set(variables["params"])


def test_param_trees():
  _, bert, _ = setup("bert")
  assert set(bert["params"]) == {"word_embeddings", "position_embeddings",
                                 "token_type_embeddings", "embedding_norm", "layer_0", "layer_1",
                                 "pooler", "classifier"}
  assert set(bert["params"]["layer_0"]) == {"attention", "attention_norm", "intermediate",
                                            "output", "output_norm"}
  _, llama, _ = setup("llama")
  layer = llama["params"]["layer_0"]
  assert set(llama["params"]) == {"embed_tokens", "layer_0", "layer_1", "norm", "lm_head"}
  assert set(layer) == {"input_norm", "attention", "post_attention_norm", "mlp"}
  # Grouped-query attention: 4 query heads of width 4, 2 key/value heads; no biases.
  assert {k: v["kernel"].shape for k, v in layer["attention"].items()} == {
      "query": (16, 16), "key": (16, 8), "value": (16, 8), "out": (16, 16)}
  assert set(layer["mlp"]) == {"gate_proj", "up_proj", "down_proj"}
  _, vit, _ = setup("vit")
  assert set(vit["params"]) == {"patch_embedding", "class_token", "position_embedding",
                                "layer_0", "layer_1", "norm", "head"}
  assert vit["params"]["position_embedding"].shape == (1, 17, 16)


def test_init_variables_takes_the_sequence_length():
  for name in ("bert", "llama"):
    model = get_model(name, **FIELDS[name])
    # Traced, not compiled: `init_variables` jits `model.init` on float zeros (1, T).
    variables = jax.eval_shape(lambda m=model: init_variables(m, jax.random.key(0), (T,)))
    assert set(variables) == {"params"}  # no sown attention maps at init
    # BERT: tables 50*16 + 16*16 + 2*16, norm 32, per layer 4 * (16*16 + 16) + 2 * 32
    # + (16*24 + 24) + (24*16 + 16) = 1960, pooler 272, classifier 51. LLaMA: table 800, per
    # layer 16*16 * 2 + 16*8 * 2 + 3 * 16*24 + 2 * 16 = 1952, norm 16, lm_head 800.
    assert count_params(variables["params"]) == {"bert": 5_363, "llama": 5_520}[name]


# ---------------------------------------------------------------------------------------------
# Inputs: ids or word embeddings, masks.

@pytest.mark.parametrize("name", ["bert", "llama"])
def test_ids_and_embeddings_give_the_same_logits(name):
  model, variables, apply = setup(name)
  ids = inputs(name)
  embeddings = model.apply(variables, ids, method=model.embed)
  assert embeddings.shape == (B, T, 16)
  np.testing.assert_array_equal(
      embeddings, np.asarray(variables["params"][
          "word_embeddings" if name == "bert" else "embed_tokens"]["embedding"])[ids])
  np.testing.assert_allclose(apply(variables, embeddings)[0][0], apply(variables, ids)[0][0],
                             rtol=1e-6, atol=1e-6)


def test_causal_mask():
  _, variables, apply = setup("llama", positions="all")
  ids = inputs("llama")
  changed = ids.copy()
  changed[:, 5] = (changed[:, 5] + 1) % VOCAB
  before, after = (np.asarray(apply(variables, x)[0][0]) for x in (ids, changed))
  assert before.shape == (B, T, VOCAB)
  np.testing.assert_array_equal(before[:, :5], after[:, :5])
  assert np.all(np.abs(before[:, 5:] - after[:, 5:]).max(-1) > 1e-3)


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_padding_mask_equals_the_shorter_sequence(name):
  # Padded keys get no attention, so a right-padded sequence gives the logits of its valid part
  # (LLaMA reads its last valid position).
  _, variables, apply = setup(name)
  ids = inputs(name)
  mask = np.ones((B, T), bool)
  mask[:, 6:] = False
  padded = apply(variables, ids, mask)[0][0]
  np.testing.assert_allclose(padded, apply(variables, ids[:, :6])[0][0], rtol=1e-5, atol=1e-5)
  assert not np.allclose(padded, apply(variables, ids)[0][0], atol=1e-3)


# ---------------------------------------------------------------------------------------------
# The attention module against independent formulas.

def numpy_attention(x, p, heads, kv_heads, rotary, causal):
  """Multi-head attention in numpy: rotary positions as complex rotations (RoFormer, Eq. 34:
  dimension pairs (i, i + d/2) as complex numbers times exp(1j t theta^(-2i/d))), each query head
  h using key/value head h // (heads / kv_heads)."""
  b, t, _ = x.shape
  hd = p["query"]["kernel"].shape[1] // heads
  proj = lambda name, n: (x @ p[name]["kernel"]).reshape(b, t, n, hd)
  q, k, v = proj("query", heads), proj("key", kv_heads), proj("value", kv_heads)
  if rotary:
    angle = np.arange(t)[:, None] * 10000.0 ** (-np.arange(0, hd, 2) / hd)

    def rotate(z):
      c = (z[..., :hd // 2] + 1j * z[..., hd // 2:]) * np.exp(1j * angle)[None, :, None, :]
      return np.concatenate([c.real, c.imag], axis=-1)

    q, k = rotate(q), rotate(k)
  out = np.zeros((b, t, heads, hd))
  for h in range(heads):
    g = h // (heads // kv_heads)
    s = np.einsum("btd,bsd->bts", q[:, :, h], k[:, :, g]) / np.sqrt(hd)
    if causal:
      s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    out[:, :, h] = (w / w.sum(-1, keepdims=True)) @ v[:, :, g]
  return out.reshape(b, t, heads * hd) @ p["out"]["kernel"]


@pytest.mark.parametrize("kv_heads, rotary, causal", [(4, False, False), (2, True, True)])
def test_attention_against_numpy(kv_heads, rotary, causal):
  module = MultiHeadAttention(4, kv_heads, use_bias=False, rotary=rotary, causal=causal)
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 7, 16))
  params = {name: {"kernel": rng.normal(0.0, 0.5, (16, width))} for name, width in
            (("query", 16), ("key", 4 * kv_heads), ("value", 4 * kv_heads), ("out", 16))}
  expected = numpy_attention(x, params, 4, kv_heads, rotary, causal)
  actual = jax.jit(module.apply)({"params": jax.tree_util.tree_map(jnp.float32, params)},
                                 jnp.float32(x))
  np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def test_grouped_query_attention_equals_mha_with_repeated_heads():
  model, variables, apply = setup("llama")  # 4 query heads, 2 key/value heads of width 4
  mha, _, mha_apply = setup("llama", num_kv_heads=4)
  params = jax.tree_util.tree_map(lambda a: a, variables["params"])
  for i in range(2):
    attention = dict(params[f"layer_{i}"]["attention"])
    for name in ("key", "value"):  # head g of GQA serves query heads 2g and 2g + 1
      kernel = attention[name]["kernel"].reshape(16, 2, 1, 4)
      attention[name] = {"kernel": jnp.broadcast_to(kernel, (16, 2, 2, 4)).reshape(16, 16)}
    params[f"layer_{i}"] = {**params[f"layer_{i}"], "attention": attention}
  ids = inputs("llama")
  np.testing.assert_allclose(mha_apply({"params": params}, ids)[0][0],
                             apply(variables, ids)[0][0], rtol=1e-5, atol=1e-5)


def test_rms_norm_against_numpy():
  x = np.random.default_rng(4).normal(2.0, 3.0, size=(3, 5, 8)).astype(np.float32)
  scale = np.random.default_rng(5).uniform(0.5, 1.5, 8).astype(np.float32)
  y = RMSNorm(epsilon=1e-6).apply({"params": {"scale": scale}}, x)
  expected = x / np.sqrt(np.mean(x.astype(np.float64) ** 2, -1, keepdims=True) + 1e-6) * scale
  np.testing.assert_allclose(y, expected, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# remat, training.

@pytest.mark.parametrize("name", ["bert", "llama"])
def test_remat_gives_the_same_logits(name):
  # The gradients under remat are checked on the ViT's train step (each gradient compile costs
  # seconds on CPU); the forward traces the checkpointed layers with their static arguments.
  _, variables, _ = setup(name, depth=1)
  x = inputs(name)
  logits = lambda model: jax.jit(lambda v: model.apply(v, x, train=True)[0])(variables)
  np.testing.assert_allclose(logits(setup(name, depth=1, remat=True)[0]),
                             logits(setup(name, depth=1)[0]), rtol=1e-5, atol=1e-6)


def test_vit_train_steps_decrease_the_loss_with_and_without_remat():
  # The loop's train step (`make_train_step`) on a tiny batch. With plain SGD a step's update is
  # -learning_rate * gradient, so equal parameters after a step mean equal gradients.
  _, variables, _ = setup("vit")
  tx = optax.sgd(0.01)
  batch = {"image": jnp.asarray(inputs("vit")), "label": jnp.array([0, 2])}
  runs = {}
  for remat in (False, True):
    model = setup("vit", remat=remat)[0]
    # The train state of `create_train_state`, from the numpy-filled variables (no init compile).
    state = TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                       model_state={}, opt_state=tx.init(variables["params"]),
                       rng=jax.random.key(0))
    step = jax.jit(make_train_step(model, tx, build_loss_terms({"cross_entropy": {}})))
    losses, params = [], []
    for _ in range(3):
      state, metrics = step(state, batch)
      losses.append(float(metrics["loss"]))
      params.append(state.params)
    runs[remat] = losses, params
    assert losses[2] < losses[1] < losses[0], losses
  np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-5)
  jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7),
                         runs[True][1][0], runs[False][1][0])


# ---------------------------------------------------------------------------------------------
# Errors.

@pytest.mark.parametrize("name, fields, match", [
    ("llama", {"positions": "first"}, "Unknown LLaMA positions 'first'"),
    ("llama", {"num_heads": 4, "num_kv_heads": 3}, "multiple of num_kv_heads"),
    ("bert", {"hidden": 10, "num_heads": 4}, "multiple of num_heads"),
    ("vit", {"hidden": 10, "num_heads": 4}, "multiple of num_heads"),
])
def test_bad_fields(name, fields, match):
  with pytest.raises(ConfigError, match=match):
    get_model(name, **fields)
