"""The method registry: spec parsing, errors listing the known names, every method on a tiny CNN."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xjax.errors import ConfigError
from xjax.explain import composites, gradients
from xjax.explain import methods as m
from xjax.explain.lrp import lrp

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.uniform(size=(2, 8, 8, 3)), jnp.float32)
TARGET = jnp.array([0, 2])
PARAMS = {"w1": jnp.asarray(RNG.normal(size=(3, 3, 3, 4)) / 3, jnp.float32),
          "b1": jnp.asarray(RNG.normal(size=(4,)) * 0.1, jnp.float32),
          "w2": jnp.asarray(RNG.normal(size=(3, 3, 4, 5)) / 6, jnp.float32),
          "b2": jnp.asarray(RNG.normal(size=(5,)) * 0.1, jnp.float32),
          "w3": jnp.asarray(RNG.normal(size=(5, 3)), jnp.float32),
          "b3": jnp.asarray(RNG.normal(size=(3,)) * 0.1, jnp.float32)}


def tiny_cnn(p, x):
  """conv-relu-conv-relu-global average pool-dense, in plain lax (no model library)."""
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  h = jax.nn.relu(conv(x, p["w1"]) + p["b1"])
  h = jax.nn.relu(conv(h, p["w2"]) + p["b2"])
  return jnp.mean(h, axis=(1, 2)) @ p["w3"] + p["b3"]


def close(a, b, **tolerance):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), **{"rtol": 1e-5, "atol": 1e-6,
                                                               **tolerance})


# --- parsing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, parsed", [
    ("saliency", ("saliency", None)), ("lrp", ("lrp", None)), ("lrp:dtd", ("lrp", "dtd")),
    (" lrp:epsilon_plus_flat ", ("lrp", "epsilon_plus_flat")),
    ("smoothgrad:saliency", ("smoothgrad", "saliency")),
])
def test_parse_spec(spec, parsed):
  assert m.parse_spec(spec) == parsed


def test_lrp_without_composite_is_epsilon_plus():
  assert m.canonical_spec("lrp") == "lrp:epsilon_plus"
  assert m.canonical_spec("lrp:dtd") == "lrp:dtd" and m.canonical_spec("gradcam") == "gradcam"
  close(m.get_method("lrp")(tiny_cnn, PARAMS, X, TARGET),
        lrp(tiny_cnn, PARAMS, X, TARGET, composite=composites.epsilon_plus()))


NAMES = ("saliency", "gradient", "sensitivity", "gradient_x_input", "smoothgrad",
         "integrated_gradients", "lrp", "cam", "gradcam", "excitation_backprop",
         "contrastive_excitation_backprop", "attention_rollout", "generic_attention", "random")


def test_the_registry_names_every_method_of_the_brief_in_order():
  assert m.METHODS.names() == NAMES
  assert m.is_conservative("lrp:dtd") and m.is_conservative("lrp")
  assert not m.is_conservative("saliency")


def test_random_control_is_seeded_blind_to_the_model_and_the_same_in_any_batch():
  method = m.get_method("random", key=jax.random.key(3))
  noise = np.asarray(method(tiny_cnn, PARAMS, X, TARGET))
  assert noise.shape == X.shape and 0 <= noise.min() and noise.max() < 1
  assert not np.allclose(noise[0], noise[1])  # each image its own map ...
  for i in range(len(X)):  # ... and the same one alone as in the batch
    close(method(tiny_cnn, PARAMS, X[i:i + 1], TARGET[i:i + 1])[0], noise[i])
  other = jax.tree.map(jnp.zeros_like, PARAMS)
  close(m.get_method("random", key=jax.random.key(3))(None, other, X, 2 - TARGET), noise)
  assert not np.allclose(m.get_method("random", key=jax.random.key(4))(tiny_cnn, PARAMS, X,
                                                                      TARGET), noise)


# --- errors ---------------------------------------------------------------------------------------


def test_unknown_method_lists_the_known_ones():
  with pytest.raises(ConfigError, match="Unknown explanation method 'deconvnet'") as e:
    m.get_method("deconvnet")
  assert all(name in str(e.value) for name in m.METHODS)


def test_unknown_composite_lists_the_known_ones():
  with pytest.raises(ConfigError, match="Unknown composite 'zplus'") as e:
    m.get_method("lrp:zplus")
  assert all(name in str(e.value) for name in composites.COMPOSITES)


@pytest.mark.parametrize("spec, message", [
    ("saliency:abs", "takes no option"), ("gradcam:conv1", "takes no option"),
    ("lrp:", "Empty composite"), ("smoothgrad:median", "Unknown SmoothGrad base 'median'"),
])
def test_bad_options_are_config_errors(spec, message):
  with pytest.raises(ConfigError, match=message):
    m.get_method(spec)


@pytest.mark.parametrize("bounds", [(0, 1, 2), (0,), "ab", (None, 1), (1.0, -1.0), (0, np.inf),
                                    (np.zeros(3), np.ones(2)), (np.zeros((2, 3)), 1.0)])
@pytest.mark.parametrize("spec", ["saliency", "lrp:dtd"])
def test_bad_bounds_are_one_line_config_errors_for_every_method(spec, bounds):
  with pytest.raises(ConfigError, match=r"bounds must be a \(low, high\) pair of finite scalars "
                     r"or per-channel arrays") as e:
    m.get_method(spec, bounds=bounds)
  assert "\n" not in str(e.value)


def test_good_bounds_scalars_or_per_channel_arrays():
  for bounds in ((-1, 1), (np.zeros(3), np.ones(3)), (jnp.zeros(3), 1.0), [0.0, 0.0]):
    assert callable(m.get_method("lrp:dtd", bounds=bounds))


@pytest.mark.parametrize("first", ["", "xjax.explain.random_control", "xjax.explain.excitation",
                                   "xjax.explain.lrp"])
def test_the_methods_are_complete_and_in_order_on_any_import_path(first):
  # In a fresh interpreter: the registry imports the method modules at its first lookup, in the
  # order of MODULES, whichever registering module a program imported first (or none).
  code = (f"import importlib\nif {first!r}: importlib.import_module({first!r})\n"
          "from xjax.explain.methods import METHODS\nprint(','.join(METHODS.names()))")
  names = subprocess.check_output([sys.executable, "-c", code], text=True, timeout=600)
  assert tuple(names.strip().split(",")) == NAMES


def test_each_entry_is_the_method_registered_at_its_definition():
  import importlib  # the modules (the package exports functions of the same names)
  cam, excitation, random_control = (importlib.import_module(f"xjax.explain.{module}")
                                     for module in ("cam", "excitation", "random_control"))
  defined = {"saliency": gradients.saliency, "smoothgrad": gradients.smoothgrad, "lrp": lrp,
             "cam": cam.cam, "gradcam": cam.gradcam,
             "excitation_backprop": excitation.excitation_backprop,
             "contrastive_excitation_backprop": excitation.excitation_backprop,
             "random": random_control.random}
  for name, method in defined.items():
    assert m.METHODS[name] is method, name
  assert m.METHODS.metadata("contrastive_excitation_backprop")["fixed"] == {"contrastive": True}


def test_a_binding_the_method_does_not_take_is_said_at_lookup(monkeypatch):
  about = dict(m.METHODS.metadata("gradient"), fixed={"relu": True})
  monkeypatch.setitem(m.METHODS._metadata, "gradient", about)
  with pytest.raises(ConfigError, match=r"'gradient' does not take the options \['relu'\]"):
    m.get_method("gradient")


def test_cam_methods_are_imported_when_asked_for():
  import importlib
  cam = importlib.import_module("xjax.explain.cam")  # the module (the package exports a function)
  assert m.get_method("cam") is cam.cam and m.get_method("gradcam") is cam.gradcam


# --- what the methods compute ---------------------------------------------------------------------


def test_dtd_uses_the_given_bounds():
  low, high = np.array([-1.0, -0.5, 0.0]), np.array([1.0, 2.0, 1.5])
  got = m.get_method("lrp:dtd", bounds=(low, high))(tiny_cnn, PARAMS, X, TARGET)
  close(got, lrp(tiny_cnn, PARAMS, X, TARGET, composite=composites.dtd(low, high)))
  default = m.get_method("lrp:dtd")(tiny_cnn, PARAMS, X, TARGET)  # the box [0, 1]
  assert not np.allclose(got, default)


def test_gradient_methods_are_the_functions_of_gradients():
  for name in ("saliency", "gradient", "sensitivity", "gradient_x_input", "integrated_gradients"):
    assert m.get_method(name) is getattr(gradients, name)


def test_smoothgrad_uses_the_fixed_default_key_or_the_given_one():
  reference = gradients.smoothgrad(tiny_cnn, PARAMS, X, TARGET, key=jax.random.key(0))
  close(m.get_method("smoothgrad")(tiny_cnn, PARAMS, X, TARGET), reference)
  close(m.get_method("smoothgrad")(tiny_cnn, PARAMS, X, TARGET), reference)  # run after run
  other = m.get_method("smoothgrad", key=jax.random.key(1))(tiny_cnn, PARAMS, X, TARGET)
  assert not np.allclose(other, reference)
  close(m.get_method("smoothgrad:saliency")(tiny_cnn, PARAMS, X, TARGET),
        gradients.smoothgrad(tiny_cnn, PARAMS, X, TARGET, key=jax.random.key(0), base="saliency"))


def test_contrastive_excitation_backprop_is_the_contrastive_option():
  from xjax.explain.excitation import excitation_backprop
  close(m.get_method("contrastive_excitation_backprop")(tiny_cnn, PARAMS, X, TARGET),
        excitation_backprop(tiny_cnn, PARAMS, X, TARGET, contrastive=True))
  close(m.get_method("excitation_backprop")(tiny_cnn, PARAMS, X, TARGET),
        excitation_backprop(tiny_cnn, PARAMS, X, TARGET))


# The methods that need attention maps (metadata `needs`) are tested on a transformer in
# tests/explain/test_attention_maps.py and tests/test_registry_properties.py.
SPECS = [*(name for name in m.METHODS if "needs" not in m.METHODS.metadata(name)),
         *(f"lrp:{name}" for name in composites.COMPOSITES)]


@pytest.mark.parametrize("spec", SPECS)
def test_every_method_returns_the_shape_of_x_under_jit(spec):
  method = m.get_method(spec, bounds=(0.0, 1.0))
  relevance = jax.jit(lambda p, x, t: method(tiny_cnn, p, x, t))(PARAMS, X, TARGET)
  assert relevance.shape == X.shape
  assert np.all(np.isfinite(relevance)) and np.any(relevance != 0)
