"""LRP through a transformer's units (AttnLRP, CP-LRP) on a hand-written JAX transformer.

Checked against an independent implementation (the rules written into the model with
`stop_gradient` and halved products, as AttnLRP's reference implementation does), against the
closed form of the softmax rule, for conservation where a rule claims it, and for targets
vmapped in one call. The parity with LXT on imported PyTorch models is in test_lxt_parity.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xjax.errors import ConfigError
from xjax.explain import composites, transformer_rules
from xjax.explain.lrp import lrp, trace
from xjax.explain.lrp.engine import check_rules, evaluate

D, T, HEADS = 8, 5, 2
sg = jax.lax.stop_gradient


def _rescale(y, factor):
  """y with its gradient multiplied by `factor` (the uniform rule written by hand)."""
  return factor * y + sg((1 - factor) * y)


def _identity(f, s):
  """f(s) with the gradient f(s) / s at s (the identity rule written by hand)."""
  y = f(s)
  return s * sg(jnp.where(s == 0, 0.0, y / jnp.where(s == 0, 1.0, s)))


def transformer(p, x, *, mode=None, bias=True, mask_value=None):
  """A pre-norm block (LayerNorm, causal attention, RMSNorm, GELU and SiLU-gated MLP) and a
  classifier on the mean token. `mode` None: the model; "attn" / "cp": the same with AttnLRP's /
  CP-LRP's rules written in (gradient x input of it is the reference)."""
  b = (lambda name: p[name]) if bias else (lambda name: 0.0)
  hold = sg if mode else (lambda v: v)
  half = (lambda y: _rescale(y, 0.5)) if mode == "attn" else (lambda y: y)
  ident = _identity if mode else (lambda f, s: f(s))
  mu = x.mean(-1, keepdims=True)
  var = jnp.square(x - mu).mean(-1, keepdims=True)
  h = (x - mu) * hold(jax.lax.rsqrt(var + 1e-6) * p["ln"]) + b("ln_b")
  q, k, v = ((h @ p[n] + b(n + "_b")).reshape(*h.shape[:2], HEADS, D // HEADS) for n in "qkv")
  scores = half(jnp.einsum("bqhd,bkhd->bhqk", q, k)) / jnp.sqrt(D / HEADS)
  causal = jnp.tril(jnp.ones((T, T), bool))
  scores = jnp.where(causal, scores, jnp.finfo(jnp.float32).min if mask_value is None
                     else mask_value)
  a = jax.nn.softmax(scores, axis=-1)
  a = sg(a) if mode == "cp" else a
  o = jnp.einsum("bhqk,bkhd->bqhd", a, v)
  o = o if mode == "cp" else half(o)
  x = x + o.reshape(x.shape) @ p["o"] + b("o_b")
  r = x * hold(jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6))
  gelu = ident(lambda z: jax.nn.gelu(z, approximate=False), r @ p["g1"] + b("g1_b"))
  gate = ident(jax.nn.silu, r @ p["g2"] + b("g2_b"))
  up = r @ p["up"] + b("up_b")
  gated = sg(gate) * up if mode == "cp" else half(gate * up)
  x = x + (gelu + ident(jax.nn.gelu, gated)) @ p["down"]  # a tanh-form GELU too
  return x.mean(1) @ p["cls"] + b("cls_b")


@pytest.fixture(scope="module")
def model():
  keys = iter(jax.random.split(jax.random.key(0), 32))
  shapes = {"ln": (D,), "q": (D, D), "k": (D, D), "v": (D, D), "o": (D, D), "g1": (D, D),
            "g2": (D, D), "up": (D, D), "down": (D, D), "cls": (D, 3)}
  p = {n: jax.random.normal(next(keys), s) * (3.0 if n in "qk" else 0.6)
       for n, s in shapes.items()}
  p["ln"] = 1.0 + 0.3 * p["ln"]
  for n, s in shapes.items():
    p[n + "_b"] = 0.2 * jax.random.normal(next(keys), s[-1:])
  x = jax.random.normal(next(keys), (2, T, D))
  return p, x, jnp.array([0, 2])


@functools.partial(jax.jit, static_argnames=("mode",))
def _reference(p, x, target, mode):
  """Gradient x input of the model with the rules written in (`mode`), or plain (None)."""
  def logit(x):
    out = transformer(p, x, mode=mode)
    return out[jnp.arange(len(target)), target].sum()
  return x * jax.grad(logit)(x)


@functools.partial(jax.jit, static_argnames=("preset", "mask_value"))
def _lrp(p, x, target, preset, mask_value=None):
  """LRP with a preset composite, compiled once per preset."""
  return lrp(functools.partial(transformer, mask_value=mask_value), p, x, target,
             composites.get_composite(preset))


def _gap(a, b):
  return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def test_units_are_recognised_in_the_program(model):
  p, x, _ = model
  program = trace(transformer, p, x)
  kinds = [(u.info.kind, tuple(sorted(u.info.operands))) for u in program.units]
  assert kinds == [("norm", ()), ("product", ("layer", "layer")), ("softmax", ()),
                   ("product", ("layer", "softmax")), ("norm", ()), ("activation", ()),
                   ("activation", ()), ("product", ("activation", "layer")), ("activation", ())]
  assert [info.kind for info in program.infos] == ["dense"] * 9  # q k v o g1 g2 up down cls


@pytest.mark.parametrize("name, mode", [("attn_lrp", "attn"), ("cp_lrp", "cp")])
def test_presets_equal_the_rules_written_into_the_model(model, name, mode):
  p, x, target = model
  relevance = _lrp(p, x, target, name)
  reference = _reference(p, x, target, mode)
  assert _gap(relevance, reference) < 1e-5
  # The negative control: plain gradient x input is far from both.
  assert _gap(_reference(p, x, target, None), reference) > 0.05


def test_attn_lrp_and_cp_lrp_differ(model):
  p, x, target = model
  attn, cp = _lrp(p, x, target, "attn_lrp"), _lrp(p, x, target, "cp_lrp")
  assert _gap(cp, attn) > 0.05


def test_infinite_masks_give_finite_relevance_and_none_to_masked_keys(model):
  p, x, target = model
  relevance = _lrp(p, x, target, "attn_lrp", mask_value=-jnp.inf)
  assert bool(jnp.all(jnp.isfinite(relevance)))
  assert _gap(relevance, _reference(p, x, target, "attn")) < 1e-5


def test_the_softmax_rule_is_its_closed_form():
  # f = softmax(x) @ c: AttnLRP Prop. 3.1 gives R_in = x (R - s sum(R)) with R = s * c_t.
  x = jnp.array([[0.5, -1.0, 2.0, 0.1]])
  c = jnp.array([[1.0, -2.0], [0.5, 1.0], [-1.0, 0.3], [2.0, 0.0]])
  relevance = lrp(lambda c, x: jax.nn.softmax(x) @ c, c, x, jnp.array([0]),
                  composites.attn_lrp())
  s = jax.nn.softmax(x)
  r = s * c[:, 0]
  np.testing.assert_allclose(relevance, x * (r - s * r.sum()), rtol=1e-5, atol=1e-6)


def _apply(rule, unit, source, *args):
  return rule.apply(unit, args, source)


def test_every_rule_passes_all_the_relevance_it_claims_to(model):
  """No biases, epsilon 0: at each unit but softmax (whose rule is not conservative, Prop. 3.1)
  the relevance its rule gives its inputs sums to the relevance of its output, to 1e-5."""
  p, x, target = model

  def apply_fn(p, x):
    return transformer(p, x, bias=False)

  program = trace(apply_fn, p, x)
  rules = check_rules(program, composites.attn_lrp())
  units = [unit for unit in program.units if unit.info.kind != "softmax"]
  outputs = [unit.eqn.outvars[0] for unit in units]
  read = sorted({v for unit in units for v in [*unit.eqn.invars, unit.source]
                 if isinstance(v, int)})

  def run(x, taps):  # the unit's operands, and the relevance gradient at its output
    record = dict.fromkeys(read)
    out = evaluate(program, jax.tree.leaves(p), x, rules=rules,
                   taps=dict(zip(outputs, taps)), record=record)
    return out, record

  @jax.jit
  def values_and_gradients(x, zeros):
    out, pullback, values = jax.vjp(run, x, zeros, has_aux=True)
    return values, pullback(jax.nn.one_hot(target, out.shape[-1]))[1]

  values, grads = values_and_gradients(x, [jnp.zeros(program.avals[v].shape) for v in outputs])
  kinds = set()
  for unit, g in zip(units, grads):
    rule = rules[unit.info.index]
    args = [values[v] for v in unit.eqn.invars]
    source = values.get(unit.source, jnp.zeros(()))
    y, unit_pullback = jax.vjp(functools.partial(_apply, rule, unit), source, *args)
    relevance_in = sum(float((v * c).sum()) for v, c in zip([source, *args], unit_pullback(g)))
    assert relevance_in == pytest.approx(float((y * g).sum()), rel=1e-5, abs=1e-7), unit.describe()
    kinds.add(unit.info.kind)
  assert kinds == {"product", "norm", "activation"}


def test_conservation_through_a_softmax_free_transformer():
  """Norms, products (elementwise and matrix), GELU, SiLU gating, no biases: relevance at the
  input sums to the logit, to 1e-5."""
  keys = iter(jax.random.split(jax.random.key(3), 8))
  w = [jax.random.normal(next(keys), (D, D)) for _ in range(5)]
  x = jax.random.normal(next(keys), (2, T, D))

  def apply_fn(w, x):
    mu = x.mean(-1, keepdims=True)
    h = (x - mu) / jnp.sqrt(jnp.square(x - mu).mean(-1, keepdims=True) + 1e-5)
    q, k = h @ w[0], h @ w[1]
    mixed = jnp.einsum("bqd,bkd->bqk", q, k) / D
    x = x + jnp.einsum("bqk,bkd->bqd", mixed, h @ w[2])
    r = x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6)
    x = x + (jax.nn.silu(r @ w[3]) * jax.nn.gelu(r @ w[4], approximate=False)) @ w[0]
    return x.sum(1) @ w[1][:, :3]

  target = jnp.array([1, 2])
  relevance = lrp(apply_fn, w, x, target, composites.attn_lrp())
  logits = apply_fn(w, x)[jnp.arange(2), target]
  np.testing.assert_allclose(relevance.sum(axis=(1, 2)), logits, rtol=1e-5)


def test_all_targets_in_one_vmapped_call_equal_a_loop(model):
  p, x, _ = model
  composite = composites.attn_lrp()

  def explain(target):
    return lrp(transformer, p, x, target, composite)

  targets = jnp.array([[0, 1], [2, 2], [1, 0]])
  batched = jax.jit(jax.vmap(explain))(targets)
  for i, target in enumerate(targets):
    looped = explain(target)
    np.testing.assert_allclose(batched[i], looped, atol=1e-5 * float(jnp.abs(looped).max()))


def test_a_checkpointed_block_keeps_its_relevance(model):
  p, x, target = model
  remat = jax.checkpoint(lambda p, x: transformer(p, x))
  checkpointed = jax.jit(lambda p, x, t: lrp(remat, p, x, t, composites.attn_lrp()))
  np.testing.assert_allclose(checkpointed(p, x, target), _lrp(p, x, target, "attn_lrp"),
                             rtol=1e-5, atol=1e-6)


def test_convolutional_presets_name_the_unit_they_lack_a_rule_for(model):
  p, x, target = model
  with pytest.raises(ConfigError, match="no rule for the norm .*'attn_lrp' or 'cp_lrp'"):
    lrp(transformer, p, x, target, composites.epsilon_plus())
  wrong = composites.first_of(composites.by_kind(product=transformer_rules.Identity()),
                              composites.attn_lrp())
  with pytest.raises(ConfigError, match="not a rule for a product; rules for it: Uniform"):
    lrp(transformer, p, x, target, wrong)


def test_units_are_found_at_any_depth():
  # A 16-layer BERT: every LayerNorm (2 per layer and the embeddings'), attention product,
  # softmax and GELU is recognised, however long the residual stream before it.
  from xjax.nn import get_model
  model = get_model("bert", vocab_size=11, hidden=8, depth=16, num_heads=2, mlp=8,
                    max_positions=8, num_classes=2)
  ids = jnp.zeros((1, 4), jnp.int32)
  variables = jax.eval_shape(model.init, jax.random.key(0), ids)  # shapes are all trace needs
  program = trace(lambda v, e: model.apply(v, e)[0], variables,
                  jax.ShapeDtypeStruct((1, 4, 8), jnp.float32))
  kinds = [unit.info.kind for unit in program.units]
  assert {kind: kinds.count(kind) for kind in set(kinds)} == {
      "norm": 33, "product": 32, "softmax": 16, "activation": 16}
