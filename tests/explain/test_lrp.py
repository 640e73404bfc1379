"""LRP / DTD: every rule against hand formulas, conservation, and the engine's invariants."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xjax.errors import ConfigError, UnsupportedOperationError
from xjax.explain import composites, rules
from xjax.explain.excitation import winning_probability
from xjax.explain.lrp import layers, lrp

RNG = np.random.default_rng(0)


# -------------------------------------------------------------------------------------------------
# Reference formulas on a dense matrix, written out per (i, j) from the rule definitions
# (Montavon et al., DSP 2018, Sec. 5.1; zennit's bias conventions).
# -------------------------------------------------------------------------------------------------

def _stab(z, eps=1e-6):
  return z + eps * np.where(z >= 0, 1.0, -1.0)


def reference(rule: str, x, w, b, r_out, low=None, high=None, connected=None):
  """Relevance of one input vector x (n,) through y = x @ w + b (w: n x m), by the formulas.

  `connected` (n x m) is 1 where an input reaches an output (all ones for a dense layer; the
  receptive fields of a convolution): the flat rule's weights.
  """
  n, m = w.shape
  connected = np.ones((n, m)) if connected is None else connected
  wp, wn = np.maximum(w, 0), np.minimum(w, 0)
  xp, xn = np.maximum(x, 0), np.minimum(x, 0)
  r_in = np.zeros(n)
  for j in range(m):
    if rule == "epsilon0":
      z = x @ w[:, j] + b[j]
      share = x * w[:, j] / _stab(z)
    elif rule == "zplus":  # bias ignored
      contributions = xp * wp[:, j] + xn * wn[:, j]
      share = contributions / _stab(contributions.sum())
    elif rule == "alpha2beta1":
      pos = xp * wp[:, j] + xn * wn[:, j]
      neg = xp * wn[:, j] + xn * wp[:, j]
      share = 2 * pos / _stab(pos.sum() + max(b[j], 0)) - neg / _stab(neg.sum() + min(b[j], 0))
    elif rule == "zbox":
      terms = x * w[:, j] - low * wp[:, j] - high * wn[:, j]
      share = terms / _stab(terms.sum())
    elif rule == "wsquare":
      share = w[:, j] ** 2 / _stab((w[:, j] ** 2).sum() + b[j] ** 2)
    elif rule == "flat":
      share = connected[:, j] / _stab(connected[:, j].sum())
    elif rule == "gamma":  # gamma = 0.25, zennit's split by the sign of y_j
      y = x @ w[:, j] + b[j]
      if y > 0:
        c = xp * (w[:, j] + 0.25 * wp[:, j]) + xn * (w[:, j] + 0.25 * wn[:, j])
        share = c / _stab(c.sum() + b[j] + 0.25 * max(b[j], 0))
      elif y < 0:
        c = xp * (w[:, j] + 0.25 * wn[:, j]) + xn * (w[:, j] + 0.25 * wp[:, j])
        share = c / _stab(c.sum() + b[j] + 0.25 * min(b[j], 0))
      else:
        share = np.zeros(n)
    r_in += share * r_out[j]
  return r_in


def assert_matches_reference(name, got, x, y, target, matrix, bias, rtol, connected=None):
  """Each image's relevance against `reference`, with R_out = onehot(target) * y."""
  for k, t in enumerate(np.asarray(target)):
    r_out = np.zeros(y.shape[1])
    r_out[t] = y[k, t]
    want = reference(name, np.asarray(x[k], np.float64).reshape(-1),
                     np.asarray(matrix, np.float64), np.asarray(bias, np.float64), r_out,
                     low=-1.5, high=2.0, connected=connected)
    np.testing.assert_allclose(np.asarray(got[k]).reshape(-1), want, rtol=rtol, atol=1e-5)


def unrolled(linear, x):
  """The matrix (inputs, outputs) of a linear map of one image, from the basis images."""
  n = x[0].size
  basis = np.eye(n, dtype=np.float32).reshape(n, *x.shape[1:])
  return np.asarray(linear(basis)).reshape(n, -1)


RULES = {
    "epsilon0": rules.Epsilon(0.0),
    "zplus": rules.ZPlus(ignore_bias=True),
    "alpha2beta1": rules.AlphaBeta(2.0, 1.0),
    "zbox": rules.ZBox(-1.5, 2.0),
    "wsquare": rules.WSquare(),
    "flat": rules.Flat(),
    "gamma": rules.Gamma(0.25),
}


def _dense_case(nonnegative: bool):
  x = RNG.uniform(0 if nonnegative else -1.5, 2.0, size=(3, 5)).astype(np.float32)
  w = RNG.normal(size=(5, 4)).astype(np.float32)
  b = RNG.normal(size=(4,)).astype(np.float32) * 0.5
  return x, w, b


@pytest.mark.parametrize("name", sorted(RULES))
def test_rule_on_a_dense_input_layer_matches_the_formula(name):
  x, w, b = _dense_case(nonnegative=name in ("zplus",))

  def apply_fn(p, x):
    return x @ p["w"] + p["b"]

  target = np.array([0, 3, 1])
  got = lrp(apply_fn, {"w": w, "b": b}, jnp.asarray(x), jnp.asarray(target),
            composites.uniform(RULES[name]))
  assert_matches_reference(name, got, x, x @ w + b, target, w, b, rtol=2e-4)


@pytest.mark.parametrize("name", ["epsilon0", "zplus", "alpha2beta1", "gamma"])
def test_rule_on_a_hidden_layer_matches_the_formula(name):
  """A layer behind a ReLU takes the hidden path (relevance / x as gradient); x >= 0 there."""
  x, w, b = _dense_case(nonnegative=True)

  def apply_fn(p, x):
    return jax.nn.relu(x) @ p["w"] + p["b"]

  assert not layers(apply_fn, {"w": w, "b": b}, jnp.asarray(x))[0].is_input
  target = np.array([2, 2, 0])
  got = lrp(apply_fn, {"w": w, "b": b}, jnp.asarray(x), jnp.asarray(target),
            composites.uniform(RULES[name]))
  assert_matches_reference(name, got, x, x @ w + b, target, w, b, rtol=2e-4)


def _conv(x, k):
  return jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 0), (0, 1)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("name", ["epsilon0", "zplus", "zbox", "flat", "wsquare"])
def test_rule_on_a_conv_layer_matches_the_unrolled_dense_formula(name):
  """The conv layer as its dense matrix (found by applying it to basis images)."""
  x = RNG.uniform(0 if name == "zplus" else -1.5, 2.0, size=(2, 4, 3, 2)).astype(np.float32)
  kernel = RNG.normal(size=(2, 2, 2, 3)).astype(np.float32)
  bias = RNG.normal(size=(3,)).astype(np.float32) * 0.3

  def apply_fn(p, x):
    return (_conv(x, p["k"]) + p["b"]).reshape(x.shape[0], -1)

  params = {"k": kernel, "b": bias}
  matrix = unrolled(lambda v: _conv(v, kernel), x)
  connected = unrolled(lambda v: _conv(v, np.ones_like(kernel)), x)  # the flat rule's weights
  bias_flat = np.asarray(apply_fn({"k": kernel * 0, "b": bias}, x[:1]))[0]
  target = np.array([5, 11])
  got = lrp(apply_fn, params, jnp.asarray(x), jnp.asarray(target), composites.uniform(RULES[name]))
  assert_matches_reference(name, got, x, np.asarray(apply_fn(params, x)), target, matrix,
                           bias_flat, rtol=5e-4, connected=connected)


# -------------------------------------------------------------------------------------------------
# Networks: a CNN with max pooling, a residual net with BatchNorm and pooling.
# -------------------------------------------------------------------------------------------------

class SmallCNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(6, (3, 3), name="conv1")(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(8, (3, 3), padding="VALID", name="conv2")(x))
    x = nn.relu(nn.Dense(16, name="dense1")(x.reshape(x.shape[0], -1)))
    return nn.Dense(5, name="classifier")(x)


class ResidualNet(nn.Module):
  """conv-BN-ReLU, a residual block (two conv-BN, identity shortcut), avg pool, a block with a
  1x1 projection shortcut and a concatenation, global average pooling, dense: ResNet's
  ingredients, small."""

  @nn.compact
  def __call__(self, x):
    bn = lambda name: nn.BatchNorm(use_running_average=True, name=name)  # noqa: E731
    x = nn.relu(bn("bn0")(nn.Conv(8, (3, 3), use_bias=False, name="stem")(x)))
    y = nn.relu(bn("bn1")(nn.Conv(8, (3, 3), use_bias=False, name="conv1")(x)))
    y = bn("bn2")(nn.Conv(8, (3, 3), use_bias=False, name="conv2")(y))
    x = nn.relu(x + y)
    x = nn.avg_pool(x, (2, 2), (2, 2))
    shortcut = bn("bn_proj")(nn.Conv(12, (1, 1), use_bias=False, name="proj")(x))
    y = bn("bn3")(nn.Conv(12, (3, 3), use_bias=False, name="conv3")(jnp.concatenate([x, x], -1)))
    x = nn.relu(shortcut + y)
    x = x.mean(axis=(1, 2))
    return nn.Dense(4, name="classifier")(x)


def _random_bn_stats(variables, key):
  """Random BN statistics and affine parameters, so canonization is really exercised."""
  keys = iter(jax.random.split(key, 100))
  stats = jax.tree.map(lambda a: 0.5 * jax.random.normal(next(keys), a.shape),
                       variables["batch_stats"])
  stats = jax.tree_util.tree_map_with_path(
      lambda p, a: jnp.abs(a) + 0.5 if "var" in jax.tree_util.keystr(p) else a, stats)
  params = jax.tree_util.tree_map_with_path(
      lambda p, a: (1.0 + 0.3 * jax.random.normal(next(keys), a.shape))
      if "scale" in jax.tree_util.keystr(p) else
      (0.3 * jax.random.normal(next(keys), a.shape) if "bn" in jax.tree_util.keystr(p) else a),
      variables["params"])
  return {"params": params, "batch_stats": stats}


def _zero_dense_biases(variables):
  return jax.tree_util.tree_map_with_path(
      lambda p, a: jnp.zeros_like(a)
      if jax.tree_util.keystr(p).endswith("['bias']") and "bn" not in jax.tree_util.keystr(p)
      else a, variables)


@pytest.fixture(scope="module")
def cnn():
  model = SmallCNN()
  x = jax.random.uniform(jax.random.key(1), (3, 12, 12, 2))
  variables = jax.jit(model.init)(jax.random.key(0), x)
  variables = jax.tree.map(lambda a: a * 1.5, variables)  # logits of order 1
  return model.apply, variables, x


@pytest.fixture(scope="module")
def resnet():
  model = ResidualNet()
  x = jax.random.uniform(jax.random.key(2), (2, 8, 8, 3))
  variables = _random_bn_stats(jax.jit(model.init)(jax.random.key(0), x), jax.random.key(5))
  return model.apply, _zero_dense_biases(variables), x


def _explained(apply_fn, variables, x):
  logits = apply_fn(variables, x)
  target = jnp.argmax(logits, -1)
  return target, logits[jnp.arange(x.shape[0]), target]


def _compiled_dtd(apply_fn):
  """DTD in the box [0, 1], compiled (one compile instead of one per operation)."""
  return jax.jit(lambda v, x, t: lrp(apply_fn, v, x, t, composites.dtd(0.0, 1.0)))


def test_dtd_conserves_relevance_on_a_cnn(cnn):
  apply_fn, variables, x = cnn
  variables = _zero_dense_biases(variables)
  target, logit = _explained(apply_fn, variables, x)
  relevance = _compiled_dtd(apply_fn)(variables, x, target)
  np.testing.assert_allclose(relevance.sum(axis=(1, 2, 3)), logit, rtol=1e-4)
  assert float(jnp.abs(relevance).max()) > 0


def test_dtd_conserves_relevance_on_a_residual_net_with_batchnorm(resnet):
  apply_fn, variables, x = resnet
  target, logit = _explained(apply_fn, variables, x)
  assert float(jnp.abs(logit).min()) > 0.05  # a meaningful logit, not rounding noise
  relevance = _compiled_dtd(apply_fn)(variables, x, target)
  np.testing.assert_allclose(relevance.sum(axis=(1, 2, 3)), logit, rtol=1e-4)
  # The BatchNorm layers were merged into the convolutions: 6 layers, all conv but the last.
  infos = layers(apply_fn, variables, x)
  assert [i.kind for i in infos] == ["conv"] * 5 + ["dense"]
  assert infos[0].is_input and not infos[1].is_input and infos[-1].is_output


def test_z_plus_conserves_with_nonzero_biases_when_the_bias_is_ignored(cnn):
  apply_fn, variables, x = cnn
  target, logit = _explained(apply_fn, variables, x)
  composite = composites.first_of(composites.first_layer(rules.ZBox(0.0, 1.0)),
                                  composites.uniform(rules.ZPlus(ignore_bias=True)))
  relevance = jax.jit(lambda v, x, t: lrp(apply_fn, v, x, t, composite))(variables, x, target)
  np.testing.assert_allclose(relevance.sum(axis=(1, 2, 3)), logit, rtol=1e-4)


def test_lrp_0_equals_gradient_times_input(cnn):
  apply_fn, variables, x = cnn  # biases non-zero: LRP-0 lets them absorb relevance, as x * grad
  target, _ = _explained(apply_fn, variables, x)
  relevance = lrp(apply_fn, variables, x, target, composites.uniform(rules.Epsilon(0.0)))
  gradient = jax.grad(lambda x: apply_fn(variables, x)[jnp.arange(3), target].sum())(x)
  np.testing.assert_allclose(relevance, x * gradient,
                             atol=1e-6 * float(jnp.abs(x * gradient).max()) + 1e-7)


def test_batchnorm_is_merged_exactly_like_a_folded_convolution():
  """conv + BN gives the relevance of one conv with the BN folded into kernel and bias."""
  x = jax.random.normal(jax.random.key(3), (2, 6, 6, 2))
  kernel = jax.random.normal(jax.random.key(4), (3, 3, 2, 4))
  mean, var = jnp.array([0.3, -0.2, 0.1, 0.5]), jnp.array([0.5, 2.0, 1.0, 0.25])
  scale, shift = jnp.array([1.5, -0.7, 0.9, 1.1]), jnp.array([0.2, -0.1, 0.4, 0.0])
  head = jax.random.normal(jax.random.key(5), (6 * 6 * 4, 3))

  def with_bn(p, x):
    z = jax.lax.conv_general_dilated(x, p["k"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    z = (z - mean) * (scale / jnp.sqrt(var + 1e-5)) + shift
    return jax.nn.relu(z).reshape(2, -1) @ p["head"]

  factor = scale / jnp.sqrt(var + 1e-5)

  def folded(p, x):
    z = jax.lax.conv_general_dilated(x, p["k"] * factor, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.relu(z + (shift - mean * factor)).reshape(2, -1) @ p["head"]

  params = {"k": kernel, "head": head}
  target = jnp.array([0, 2])
  for composite in (composites.uniform(rules.ZPlus()), composites.epsilon_gamma_box(-3.0, 3.0),
                    composites.uniform(rules.AlphaBeta())):
    a = jax.jit(lambda p, x, t, c=composite: lrp(with_bn, p, x, t, c))(params, x, target)
    b = jax.jit(lambda p, x, t, c=composite: lrp(folded, p, x, t, c))(params, x, target)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()))


def test_z_plus_equals_the_marginal_winning_probability_up_to_the_logit():
  """Excitation backprop's MWP (Zhang et al. 2016, Eq. 7), computed by hand per layer."""
  w1 = RNG.normal(size=(6, 5)).astype(np.float32)
  w2 = RNG.normal(size=(5, 3)).astype(np.float32)
  b1 = np.abs(RNG.normal(size=(5,))).astype(np.float32)  # most hidden units active
  x = RNG.uniform(0, 1, size=(2, 6)).astype(np.float32)

  def divide(a, b):  # 0 where nothing wins through a unit
    return np.divide(a, b, out=np.zeros_like(a), where=b != 0)

  def apply_fn(p, x):
    return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"]

  params = {"w1": w1, "b1": b1, "w2": w2}
  # MWP by hand: P_bottom = a * (W+ (P_top / (W+^T a))) per layer, starting from P = onehot.
  hidden = np.maximum(x @ w1 + b1, 0)
  target = np.argmax(hidden @ np.maximum(w2, 0), axis=1)  # classes some evidence wins through
  mwp = []
  for k in range(2):
    p_top = np.eye(3)[target[k]]
    p_hidden = hidden[k] * (np.maximum(w2, 0) @ divide(p_top, hidden[k] @ np.maximum(w2, 0)))
    p_in = x[k] * (np.maximum(w1, 0) @ divide(p_hidden, x[k] @ np.maximum(w1, 0)))
    mwp.append(p_in)
  mwp = np.stack(mwp)
  np.testing.assert_allclose(mwp.sum(1), 1.0, rtol=1e-5)  # a probability distribution
  np.testing.assert_allclose(winning_probability(apply_fn, params, jnp.asarray(x),
                                                 jnp.asarray(target)), mwp, rtol=1e-4, atol=1e-7)
  logit = (hidden @ w2)[np.arange(2), target]
  relevance = lrp(apply_fn, params, jnp.asarray(x), jnp.asarray(target),
                  composites.uniform(rules.ZPlus(stabilizer=1e-12, ignore_bias=True)))
  np.testing.assert_allclose(relevance / logit[:, None], mwp, rtol=1e-4, atol=1e-7)


def test_jit_equals_no_jit_and_vmap_over_targets_equals_a_loop(cnn):
  apply_fn, variables, x = cnn
  composite = composites.dtd(0.0, 1.0)
  explain = lambda p, x, t: lrp(apply_fn, p, x, t, composite)  # noqa: E731
  targets = jnp.stack([jnp.full((3,), c) for c in range(5)])  # all classes
  eager = [explain(variables, x, t) for t in targets]
  jitted = jax.jit(explain)
  np.testing.assert_allclose(jitted(variables, x, targets[1]), eager[1], rtol=1e-5, atol=1e-7)
  all_classes = jax.jit(jax.vmap(explain, in_axes=(None, None, 0)))(variables, x, targets)
  np.testing.assert_allclose(all_classes, np.stack(eager), rtol=1e-5, atol=1e-7)


def test_explicit_output_relevance_equals_class_indices(cnn):
  apply_fn, variables, x = cnn
  target, _ = _explained(apply_fn, variables, x)
  logits = apply_fn(variables, x)
  explicit = jax.nn.one_hot(target, 5) * logits
  composite = composites.epsilon_plus()
  np.testing.assert_allclose(lrp(apply_fn, variables, x, explicit, composite),
                             lrp(apply_fn, variables, x, target, composite), rtol=1e-5, atol=1e-8)


def test_all_zero_input_gives_finite_relevance(cnn):
  apply_fn, variables, x = cnn
  zeros = jnp.zeros_like(x)
  for composite in (composites.dtd(0.0, 1.0), composites.epsilon_plus_flat(),
                    composites.epsilon_alpha2_beta1(), composites.epsilon_gamma_box(0.0, 1.0)):
    relevance = lrp(apply_fn, variables, zeros, jnp.zeros(3, jnp.int32), composite)
    assert bool(jnp.all(jnp.isfinite(relevance)))


def test_a_flax_model_and_the_same_plain_functions_give_the_same_relevance(cnn):
  apply_fn, variables, x = cnn
  p = variables["params"]

  def plain(p, x):
    def conv(x, layer, padding):
      z = jax.lax.conv_general_dilated(x, layer["kernel"], (1, 1), padding,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      return z + layer["bias"]
    x = jnp.maximum(conv(x, p["conv1"], "SAME"), 0)
    x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    x = jnp.maximum(conv(x, p["conv2"], "VALID"), 0).reshape(x.shape[0], -1)
    x = jnp.maximum(x @ p["dense1"]["kernel"] + p["dense1"]["bias"], 0)
    return x @ p["classifier"]["kernel"] + p["classifier"]["bias"]

  np.testing.assert_allclose(plain(p, x), apply_fn(variables, x), rtol=1e-5, atol=1e-6)
  target = jnp.array([0, 1, 2])
  for composite in (composites.dtd(0.0, 1.0), composites.epsilon_plus_flat()):
    np.testing.assert_allclose(lrp(plain, p, x, target, composite),
                               lrp(apply_fn, variables, x, target, composite), rtol=1e-4,
                               atol=1e-7)


def test_max_pool_as_average_splits_in_proportion():
  x = jnp.array([[[[1.0], [3.0]], [[0.0], [4.0]]]])  # one 2x2 window
  w = jnp.array([[2.0]])

  def apply_fn(p, x):
    pooled = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return pooled.reshape(1, 1) @ p

  target = jnp.array([0])
  winner = lrp(apply_fn, w, x, target, composites.uniform(rules.Epsilon(0.0)))
  np.testing.assert_allclose(winner.reshape(-1), [0, 0, 0, 8.0], atol=1e-5)
  ties = jnp.array([[[[3.0], [3.0]], [[0.0], [1.0]]]])  # two maxima share (lrp_toolbox)
  split = lrp(apply_fn, w, ties, target, composites.uniform(rules.Epsilon(0.0)))
  np.testing.assert_allclose(split.reshape(-1), [3.0, 3.0, 0, 0], atol=1e-5)
  average = lrp(apply_fn, w, x, target, composites.uniform(rules.Epsilon(0.0)), max_pool="average")
  np.testing.assert_allclose(average.reshape(-1), np.array([1, 3, 0, 4]) / 8 * 8.0, rtol=1e-5)


@pytest.mark.parametrize("fn, op", [
    (lambda p, x: (x @ p) / jnp.sum(x), "div"),  # not a norm: the sum is not over x @ p
    (lambda p, x: jnp.log(jnp.abs(x) + 1.0) @ p, "log"),
    (lambda p, x: jnp.exp(x) @ p, "exp"),  # an exp outside a softmax
])
def test_unsupported_operations_raise_a_clear_error(fn, op):
  with pytest.raises(UnsupportedOperationError, match=f"`{op}`.*test_lrp.py"):
    lrp(fn, jnp.ones((3, 2)), jnp.ones((1, 3)), jnp.array([0]))


def test_a_softmax_needs_a_rule_from_the_composite():
  with pytest.raises(ConfigError, match="no rule for the softmax `div`.*'attn_lrp'"):
    lrp(lambda p, x: jax.nn.softmax(x @ p), jnp.ones((3, 2)), jnp.ones((1, 3)), jnp.array([0]))


def test_bad_composites_and_rules_raise_config_errors():
  with pytest.raises(ConfigError, match="alpha - beta = 1"):
    rules.AlphaBeta(3.0, 1.0)
  with pytest.raises(ConfigError, match="known composites"):
    composites.get_composite("dtd_plus")
  with pytest.raises(ConfigError, match="expected a rule"):
    lrp(lambda p, x: x @ p, jnp.ones((3, 2)), jnp.ones((1, 3)), jnp.array([0]), lambda info: None)
  with pytest.raises(ConfigError, match="target"):
    lrp(lambda p, x: x @ p, jnp.ones((3, 2)), jnp.ones((2, 3)), jnp.array([0]))


def test_composites_choose_by_position_kind_and_name(cnn):
  apply_fn, variables, x = cnn
  first, conv, dense, named = rules.Flat(), rules.ZPlus(), rules.Epsilon(0.1), rules.Epsilon(0.5)
  composite = composites.first_of(composites.by_name({"classifier": named}),
                                  composites.first_layer(first),
                                  composites.by_kind(conv=conv, dense=dense))
  infos = layers(apply_fn, variables, x)
  assert [composite(info) for info in infos] == [first, conv, dense, named]
  # Each piece alone chooses only its layers; first_of takes the first choice.
  assert [composites.by_name({"classifier": named})(i) for i in infos] == [None] * 3 + [named]
  assert [composites.first_layer(first)(i) for i in infos] == [first, None, None, None]
  assert [composites.by_kind(conv=conv)(i) for i in infos] == [conv, conv, None, None]
  assert [composites.first_of()(i) for i in infos] == [None] * 4
  with pytest.raises(ConfigError, match="returned None for layer 2"):  # no rule for a layer
    lrp(apply_fn, variables, x, jnp.array([0, 1, 2]), composites.by_kind(conv=conv))


@pytest.mark.parametrize("name", ["zplus", "alpha2beta1", "zbox"])
def test_a_scale_that_varies_over_positions_is_applied_in_the_output_space(name):
  """A merged scale that is not per channel cannot fold into the kernel: A+ f(W+) + A- f(W-)."""
  x = RNG.uniform(0 if name == "zplus" else -1.5, 2.0, size=(2, 4, 3, 2)).astype(np.float32)
  kernel = RNG.normal(size=(2, 2, 2, 3)).astype(np.float32)
  out_shape = np.asarray(_conv(x[:1], kernel)).shape
  scale = RNG.normal(size=(1, *out_shape[1:])).astype(np.float32)  # mixed signs, per position

  def apply_fn(p, x):
    return (_conv(x, p) * scale).reshape(x.shape[0], -1)

  matrix = unrolled(lambda v: _conv(v, kernel), x) * scale.reshape(1, -1)
  target = np.array([3, 7])
  got = lrp(apply_fn, kernel, jnp.asarray(x), jnp.asarray(target), composites.uniform(RULES[name]))
  y = np.asarray(apply_fn(kernel, x))
  assert_matches_reference(name, got, x, y, target, matrix, np.zeros(y.shape[1]), rtol=5e-4)


@pytest.mark.parametrize("name", ["epsilon_plus", "dtd", "by_output", "epsilon"])
def test_a_bias_after_layout_ops_is_merged_as_in_the_batched_model(name):
  """Single-example layers under vmap (as Equinox's) put a reshape after the convolution and a
  transpose after the dot_general, before the bias: the layer must still hold the bias (z+
  ignores it, the epsilon rules weigh it) and the classifier must be the output layer."""
  import dataclasses

  from xjax.explain.lrp import trace

  x = jnp.asarray(RNG.uniform(-1.0, 1.0, size=(3, 2, 5, 5)), jnp.float32)  # NCHW
  p = {"kernel": jnp.asarray(RNG.normal(size=(4, 2, 3, 3)), jnp.float32),  # OIHW
       "bias": jnp.asarray(RNG.normal(size=(4,)), jnp.float32),
       "scale": jnp.asarray(RNG.normal(size=(4,)), jnp.float32),  # per channel, mixed signs
       "weight": jnp.asarray(RNG.normal(size=(3, 4 * 5 * 5)), jnp.float32),  # (out, in)
       "dense_bias": jnp.asarray(RNG.normal(size=(3,)), jnp.float32)}

  def one(p, image):  # (C, H, W) -> (classes,)
    z = jax.lax.conv(image[None], p["kernel"], (1, 1), "SAME").reshape(4, 5, 5)
    h = jnp.maximum((z + p["bias"][:, None, None]) * p["scale"][:, None, None], 0)
    return p["weight"] @ h.reshape(-1) + p["dense_bias"]

  def vmapped(p, x):
    return jax.vmap(one, in_axes=(None, 0))(p, x)

  def batched(p, x):
    z = jax.lax.conv(x, p["kernel"], (1, 1), "SAME")
    h = jnp.maximum((z + p["bias"][:, None, None]) * p["scale"][:, None, None], 0)
    return h.reshape(x.shape[0], -1) @ p["weight"].T + p["dense_bias"]

  program = trace(vmapped, p, x)
  assert [eqn.primitive.name for layer in program.layers for eqn in layer.layout] == [
      "reshape", "reshape", "transpose"]  # the vmapped conv's and the reshape; the dot's
  assert program.layers[0].feature_axes == (1, 0)  # the BatchNorm-like scale still folds
  assert [info.is_output for info in program.infos] == [False, True]
  # The same layers, shapes included (the names differ: vmap adds a "vmap()" scope).
  assert ([dataclasses.replace(info, name="") for info in layers(vmapped, p, x)]
          == layers(batched, p, x))
  np.testing.assert_allclose(vmapped(p, x), batched(p, x), rtol=1e-5, atol=1e-5)
  composite = {"epsilon_plus": composites.epsilon_plus(), "dtd": composites.dtd(-1.0, 1.0),
               "epsilon": composites.uniform(rules.Epsilon(0.1)),
               "by_output": lambda info: (rules.Epsilon(0.25) if info.is_output
                                          else rules.ZPlus(ignore_bias=True))}[name]
  target = jnp.array([0, 2, 1])
  reference = lrp(batched, p, x, target, composite)
  assert np.abs(np.asarray(reference)).max() > 1e-2
  np.testing.assert_allclose(lrp(vmapped, p, x, target, composite), reference, rtol=1e-5,
                             atol=1e-5)
