"""Properties every registered name must have, checked over each registry by name.

In the spirit of optax's tests over its aliases: a new loss term, model, explanation method,
dataset or optimizer is tested here as soon as it is registered (a loss term or model also needs
a small example below, and the test that finds none says so). Everything is tiny (8x8 or 16x16
images, batches of 2 to 4) so that the whole file runs in well under two minutes on two cores.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import xjax.plugins  # noqa: F401 (registers the methods' loss terms and the experiments)
from tests.conftest import shared_data
from xjax.data.registry import DATASETS, get_source
from xjax.errors import ConfigError
from xjax.explain import composites
from xjax.explain.methods import METHODS, get_method, is_conservative
from xjax.metrics import METRICS, get_metric
from xjax.nn import MODELS, get_model
from xjax.train.losses import LOSS_TERMS, ModelOutputs, is_penalty
from xjax.train.optim import OPTIMIZERS, make_optimizer

# ---------------------------------------------------------------------------------------------
# Loss terms: a finite scalar with a finite gradient, compiled once per input shape.

CLASSES, BATCH = 3, 4
LOSS_TERM_OPTIONS = {  # the options each term needs on the inputs of `loss_inputs`
    "cross_entropy": {},
    "l2": {},
    "block_l1": {"num_classes": CLASSES},
    "xnet_drop": {"categories": (0, 1, 2)},
    "contrastive_divergence": {},
    "reconstruction": {},
    "adversarial": {"generator_weight": 0.5},
    "explainer_reconstruction": {},
    "explainer_p": {},
    "filter_loss": {},
}


def loss_inputs(seed: int):
  """(params, logits, intermediates, batch) of a tiny network: a dense layer and an XNet head.

  The intermediates also hold what the generative models give their terms in training mode (the
  RBM's free energies, the adversarial autoencoder's errors and discriminator logits), and the
  explainer network's p, reconstructions and interpretable maps.
  """
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  params = {"dense1": {"kernel": normal(6, CLASSES), "bias": normal(CLASSES)},
            "head": {"output": {"kernel": normal(3, CLASSES), "bias": normal(CLASSES)}}}
  intermediates = {"features": normal(BATCH, 6), "xnet_hidden": jax.nn.relu(normal(BATCH, 3)),
                   **{name: normal(BATCH) for name in (
                       "free_energy_data", "free_energy_sample", "discriminator_real_logits",
                       "discriminator_fake_logits", "generator_logits")},
                   "reconstruction_error": jnp.square(normal(BATCH)),
                   # The explainer network's (xjax.methods.explainer).
                   "p": jax.nn.sigmoid(normal()),
                   **{f"{kind}_dense{i}": jax.nn.relu(normal(BATCH, 5))
                      for kind in ("target", "reconstruction") for i in (1, 2)},
                   **{f"interp_{i}": jax.nn.relu(normal(BATCH, 3, 3, 2)) for i in (1, 2)},
                   **{f"mask_{i}": jnp.clip(normal(BATCH, 3, 3, 2), -1, 1) for i in (1, 2)}}
  batch = {"label": jnp.asarray(rng.integers(0, CLASSES, BATCH), jnp.int32),
           "attributes": jnp.asarray(np.eye(3, dtype=np.int8)[np.arange(BATCH) % 3])}
  return params, normal(BATCH, CLASSES), intermediates, batch


@pytest.mark.parametrize("name", LOSS_TERMS.names())
def test_loss_term_is_a_finite_scalar_with_a_finite_gradient_compiled_once(name):
  if name not in LOSS_TERM_OPTIONS:
    pytest.fail(f"loss term {name!r} has no example: add its options to LOSS_TERM_OPTIONS")
  term = LOSS_TERMS.get(name, **LOSS_TERM_OPTIONS[name])
  traces = []

  @jax.jit
  def value_and_grad(params, logits, intermediates, batch):
    traces.append(1)  # a Python side effect: runs once per trace
    loss = lambda p, z, h: term(p, batch, ModelOutputs(z, h))
    return jax.value_and_grad(loss, argnums=(0, 1, 2))(params, logits, intermediates)

  for seed in (0, 1):  # new values of the same shapes: no second trace
    value, grads = value_and_grad(*loss_inputs(seed))
    assert value.shape == () and np.isfinite(float(value))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert len(traces) == 1


@pytest.mark.parametrize("name", LOSS_TERMS.names())
def test_a_penalty_is_a_function_of_the_parameters_alone(name):
  if not is_penalty(name):
    return
  term = LOSS_TERMS.get(name, **LOSS_TERM_OPTIONS.get(name, {}))
  params, logits, intermediates, batch = loss_inputs(0)
  alone = term(params, None, None)
  np.testing.assert_allclose(alone, term(params, batch, ModelOutputs(logits, intermediates)))


def test_penalties_are_declared():
  assert is_penalty("l2") and is_penalty("block_l1")
  assert not is_penalty("cross_entropy") and not is_penalty("xnet_drop")
  with pytest.raises(ConfigError, match="Unknown loss term 'focal'.*cross_entropy"):
    is_penalty("focal")


# ---------------------------------------------------------------------------------------------
# Models: `(logits, intermediates)` under jit, with the intermediates the class declares.

MODEL_EXAMPLES = {  # name -> (fields of a small instance, image shape)
    "cnn_cifar10": ({}, (16, 16, 3)),
    "cnn_fashion": ({}, (16, 16, 1)),
    "cnn_mnist": ({}, (16, 16, 1)),
    "sumpool_cnn": ({}, (32, 32, 1)),  # its only size
    "mlp": ({"hidden": (8,)}, (8, 8, 1)),
    "resnet18": ({"stem": "cifar", "width": 2}, (8, 8, 3)),
    "vgg": ({"config": (4, "M", 8), "dense": (8,)}, (8, 8, 3)),
    "xnet": ({"backbone": "mlp", "backbone_options": {"hidden": (8,)}, "num_neurons": 3},
             (8, 8, 3)),
    "explainer": ({"performer_options": {"config": (4, "M", 8), "dense": (8, 6)}}, (8, 8, 3)),
    "gaussian_rbm": ({"num_hidden": 5}, (8, 8, 3)),
    "adversarial_autoencoder": ({"code_size": 2, "hidden": (8,), "image_shape": (8, 8, 3)},
                                (8, 8, 3)),
    "vit": ({"patch_size": 4, "hidden": 8, "depth": 1, "num_heads": 2, "mlp": 8}, (8, 8, 3)),
    # Token ids (B, 6): the uniform floats are cast to id 0.
    "bert": ({"vocab_size": 11, "hidden": 8, "depth": 1, "num_heads": 2, "mlp": 8,
              "max_positions": 8}, (6,)),
    "llama": ({"vocab_size": 11, "hidden": 8, "depth": 1, "num_heads": 2, "num_kv_heads": 1,
               "mlp": 8}, (6,)),
}


@pytest.mark.parametrize("name", MODELS.names())
def test_model_applies_under_jit_with_its_declared_intermediates(name):
  if name not in MODEL_EXAMPLES:
    pytest.fail(f"model {name!r} has no example: add it to MODEL_EXAMPLES")
  fields, image_shape = MODEL_EXAMPLES[name]
  model = get_model(name, num_classes=CLASSES, **fields)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(2, *image_shape)), jnp.float32)
  # Random variables of the right shapes without `model.init` (its random initialisers take
  # longer to compile than the model); batch-norm variances positive.
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  variables = jax.tree_util.tree_map_with_path(
      lambda path, leaf: jnp.asarray(1.0 + rng.uniform(size=leaf.shape) if "var" in str(path[-1])
                                     else 0.3 * rng.normal(size=leaf.shape), leaf.dtype), shapes)
  logits, intermediates = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  if getattr(type(model), "GENERATIVE", False):
    # A generative model has no classes: its logits are per example (a log-density, a code), and
    # its per-example loss is what the eval step averages.
    assert logits.shape[0] == 2 and np.all(np.isfinite(logits))
    assert intermediates["example_loss"].shape == (2,)
    assert np.all(np.isfinite(intermediates["example_loss"]))
  else:
    assert logits.shape == (2, CLASSES) and np.all(np.isfinite(logits))
  declared = type(model).INTERMEDIATES
  assert "features" in declared and set(declared) <= set(intermediates)
  assert intermediates["features"].shape[0] == 2
  if "conv_maps" in declared:
    assert intermediates["conv_maps"].ndim == 4 and intermediates["conv_maps"].shape[0] == 2
  if name not in ("xnet", "explainer"):  # they add their inner network's (or its layers') own
    assert set(intermediates) == set(declared)


# ---------------------------------------------------------------------------------------------
# Explanation methods, on a tiny bias-free ReLU network (so that LRP conserves relevance); those
# that read attention maps on a tiny ViT (METHOD_MODELS).

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.uniform(size=(2, 8, 8, 3)), jnp.float32)
TARGETS = jnp.array([[0, 2], [1, 1]])  # (explanations, batch): vmapped over the first axis
PARAMS = {"w1": jnp.asarray(RNG.normal(size=(3, 3, 3, 4)) / 3, jnp.float32),
          "w2": jnp.asarray(RNG.normal(size=(3, 3, 4, 5)) / 6, jnp.float32),
          "w3": jnp.asarray(RNG.normal(size=(5, 3)), jnp.float32)}
SPECS = [*METHODS, *(f"lrp:{name}" for name in composites.COMPOSITES)]


def tiny_cnn(p, x):
  """conv-relu-conv-relu-global average pool-dense, without biases, in plain lax."""
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  h = jax.nn.relu(conv(jax.nn.relu(conv(x, p["w1"])), p["w2"]))
  return jnp.mean(h, axis=(1, 2)) @ p["w3"]


VIT_RNG = np.random.default_rng(1)
VIT_PARAMS = {name: jnp.asarray(VIT_RNG.normal(size=shape) / np.sqrt(shape[-2]), jnp.float32)
              for name, shape in [("embed", (48, 8)), ("cls", (1, 1, 8)), ("q", (2, 2, 8, 4)),
                                  ("k", (2, 2, 8, 4)), ("v", (2, 2, 8, 4)),
                                  ("out", (2, 2, 4, 8)), ("head", (8, 3))]}


def tiny_vit(p, x):
  """The smallest ViT, in plain jnp: the 4 x 4 patches of the 8 x 8 images embedded after a class
  token, two 2-head self-attention layers with residual connections, a head on the class token."""
  b = x.shape[0]
  patches = x.reshape(b, 2, 4, 2, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, 4, 48)
  h = jnp.concatenate([jnp.broadcast_to(p["cls"], (b, 1, 8)), patches @ p["embed"]], axis=1)
  for i in range(2):
    q, k, v = (jnp.einsum("btd,hde->bhte", h, p[name][i]) for name in ("q", "k", "v"))
    a = jax.nn.softmax(jnp.einsum("bhte,bhse->bhts", q, k), axis=-1)
    h = h + jnp.einsum("bhse,hed->bsd", jnp.einsum("bhts,bhse->bhte", a, v), p["out"][i])
  return h[:, 0] @ p["head"]


# The example model of the methods by what they need of it (their metadata `needs`): the tiny CNN,
# or for the methods that read attention maps the tiny ViT (same X and classes).
METHOD_MODELS = {None: (tiny_cnn, PARAMS), "attention": (tiny_vit, VIT_PARAMS)}


def method_model(spec: str):
  """(apply_fn, params) of the example model for the method `spec`."""
  needs = METHODS.metadata(spec.split(":")[0]).get("needs")
  if needs not in METHOD_MODELS:
    pytest.fail(f"method {spec!r} needs {needs!r}: add an example model to METHOD_MODELS")
  return METHOD_MODELS[needs]


@functools.cache
def explained(spec: str) -> dict[str, np.ndarray]:
  """The method on X, on zeros and vmapped over TARGETS: one compiled function per spec."""
  method = get_method(spec, bounds=(0.0, 1.0))
  apply_fn, params = method_model(spec)

  @jax.jit
  def run(params, x, targets, invalid):
    one = lambda x, t: method(apply_fn, params, x, t)
    # One vmapped call over the valid targets, the invalid ones and a NaN input (one compile).
    inputs = jnp.stack([x] * (len(targets) + len(invalid)) + [x.at[1, 0, 0, 0].set(jnp.nan)])
    every = jax.vmap(one)(inputs, jnp.concatenate([targets, invalid, targets[:1]]))
    return {"single": one(x, targets[0]), "zeros": one(jnp.zeros_like(x), targets[0]),
            "vmapped": every[:len(targets)], "invalid": every[len(targets):-1],
            "nan_input": every[-1]}

  return {k: np.asarray(v) for k, v in run(params, X, TARGETS, INVALID_TARGETS).items()}


# Class indices the 3-output model does not have: (explanations, batch), vmapped like TARGETS.
INVALID_TARGETS = jnp.array([[0, 3], [-1, 1]])


def example_is_nan(values: np.ndarray, example: int, axis: int = 0) -> bool:
  return bool(np.all(np.isnan(np.take(np.asarray(values), example, axis=axis))))


def example_is_finite(values: np.ndarray, example: int, axis: int = 0) -> bool:
  return bool(np.all(np.isfinite(np.take(np.asarray(values), example, axis=axis))))


@pytest.mark.parametrize("spec", SPECS)
def test_method_returns_the_shape_of_x_and_is_finite(spec):
  out = explained(spec)
  assert out["single"].shape == X.shape and np.all(np.isfinite(out["single"]))
  assert np.any(out["single"] != 0)


@pytest.mark.parametrize("spec", SPECS)
def test_method_is_finite_on_an_all_zero_input(spec):
  zeros = explained(spec)["zeros"]
  assert zeros.shape == X.shape and np.all(np.isfinite(zeros))


@pytest.mark.parametrize("spec", SPECS)
def test_method_works_under_vmap_over_targets(spec):
  out = explained(spec)
  assert out["vmapped"].shape == (len(TARGETS), *X.shape)
  np.testing.assert_allclose(out["vmapped"][0], out["single"], rtol=1e-4,
                             atol=1e-5 * np.abs(out["single"]).max())


@pytest.mark.parametrize("spec", SPECS)
def test_method_gives_nan_never_a_number_for_invalid_examples_under_jit_and_vmap(spec):
  """A class index out of range (or a NaN input) under jit, where it cannot raise: that example's
  relevance is NaN (never the zeros of a zero seed, or a clamped index's class), the others are
  untouched."""
  out = explained(spec)
  invalid = out["invalid"]
  assert example_is_nan(invalid[0], 1) and example_is_nan(invalid[1], 0)
  np.testing.assert_allclose(invalid[0][0], out["single"][0], rtol=1e-4,
                             atol=1e-5 * np.abs(out["single"]).max())
  assert example_is_finite(invalid[1], 1)
  assert example_is_nan(out["nan_input"], 1) and example_is_finite(out["nan_input"], 0)


@pytest.mark.parametrize("spec", SPECS)
def test_method_refuses_a_concrete_invalid_target(spec):
  with pytest.raises(ConfigError, match=r"class indices in \[0, 3\).*got \[3\] at example"):
    get_method(spec)(*method_model(spec), X, jnp.array([0, 3]))


@pytest.mark.parametrize("spec", [s for s in SPECS if is_conservative(s)])
def test_conservative_method_sums_to_the_target_logit(spec):
  relevance = explained(spec)["vmapped"]
  apply_fn, params = method_model(spec)
  logits = np.asarray(apply_fn(params, X))
  for targets, r in zip(np.asarray(TARGETS), relevance):
    np.testing.assert_allclose(r.sum(axis=(1, 2, 3)), logits[np.arange(len(X)), targets],
                               rtol=1e-3, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Metrics: the same guard as the methods', under jit and vmap, on the tiny network above.

MASK = jnp.zeros((2, 8, 8), bool).at[:, 2:6, 2:6].set(True)
KEY = jax.random.key(0)


def explain_gradient(params, x, target):
  return get_method("gradient")(tiny_cnn, params, x, target)


METRIC_OPTIONS = {  # small options of each metric on X (2 images of 8 x 8)
    "pixel_flipping": {"steps": 4},
    "faithfulness_area": {"steps": 4},
    "region_perturbation": {"patch_size": 4},
    "insertion_deletion": {"steps": 4, "blur_sigma": 1.0},
    "faithfulness_correlation": {"subset_size": 4, "num_samples": 4, "key": KEY},
    "completeness": {},
    "model_parameter_randomisation": {"explain": explain_gradient, "key": KEY},
    "random_logit": {"explain": explain_gradient, "key": KEY, "num_classes": 3},
    "diffusion": {"explain": explain_gradient},
    "max_sensitivity": {"explain": explain_gradient, "num_samples": 2, "key": KEY},
    "avg_sensitivity": {"explain": explain_gradient, "num_samples": 2, "key": KEY},
    "pointing_game": {"mask": MASK},
    "attribution_localisation": {"mask": MASK},
    "relevance_mass_accuracy": {"mask": MASK},
    "relevance_rank_accuracy": {"mask": MASK},
    "sparseness": {},
    "complexity": {},
}


def metric_options(name: str) -> dict:
  if name not in METRIC_OPTIONS:
    pytest.fail(f"metric {name!r} has no example: add its options to METRIC_OPTIONS")
  return METRIC_OPTIONS[name]


def per_example(result) -> tuple[list[jax.Array], list[int]]:
  """The per-example parts of a metric's result, and the axis of the examples in each (a result's
  other parts, e.g. RandomisationResult's layer names, are not arrays and cannot leave a jit)."""
  axes = getattr(type(result), "EXAMPLE_AXES", None)
  if axes is not None:
    return [getattr(result, field) for field in axes], list(axes.values())
  leaves = jax.tree.leaves(result)
  return leaves, [0] * len(leaves)


@functools.cache
def scored(name: str) -> list[tuple[np.ndarray, int]]:
  """The metric vmapped over two cases under one jit: case 0 has a class index the model does not
  have at example 1, case 1 NaN relevance at example 1. One compiled function per metric.

  Returns (values (cases, ...), axis of the examples in a case) per per-example part."""
  metric = get_metric(name, **metric_options(name))
  relevance = jnp.asarray(explained("gradient_x_input")["single"])
  targets = jnp.array([[0, 3], [0, 1]])
  relevances = jnp.stack([relevance, relevance.at[1, 0, 0, 0].set(jnp.nan)])
  axes = []

  def parts(t, r):
    values, example_axes = per_example(metric(tiny_cnn, PARAMS, X, t, r))
    axes[:] = example_axes
    return values

  values = jax.device_get(jax.jit(jax.vmap(parts))(targets, relevances))
  return list(zip(values, axes))


@pytest.mark.parametrize("name", METRICS.names())
def test_metric_gives_nan_never_a_number_for_invalid_examples_under_jit_and_vmap(name):
  parts = scored(name)
  assert parts, f"{name} returned no per-example values"
  for values, axis in parts:
    for case in (0, 1):  # an invalid target, NaN relevance: both at example 1
      assert example_is_nan(values[case], 1, axis), (name, case)
      assert example_is_finite(values[case], 0, axis), (name, case)


@pytest.mark.parametrize("name", METRICS.names())
def test_metric_refuses_a_concrete_invalid_target_or_nan_relevance(name):
  metric = get_metric(name, **metric_options(name))
  relevance = jnp.asarray(explained("gradient_x_input")["single"])
  with pytest.raises(ConfigError, match=r"class indices in \[0, 3\)"):
    metric(tiny_cnn, PARAMS, X, jnp.array([0, 3]), relevance)
  with pytest.raises(ConfigError, match=r"NaN or infinity in example\(s\) \[1\]"):
    metric(tiny_cnn, PARAMS, X, jnp.array([0, 1]), relevance.at[1, 0, 0, 0].set(jnp.inf))


# ---------------------------------------------------------------------------------------------
# Datasets: the source contract, wherever the data is present.

TFDS_DIR = os.environ.get("XJAX_TFDS_DIR")


def dataset_options(name: str) -> dict:
  """Small options of `name`, or skip when its data is not on this machine."""
  if name == "shapes":
    return {"image_size": 16, "num_examples": 8}
  if name == "planted_text":
    return {"num_examples": 8, "length": 12, "form": "agreement", "num_nouns": 4}
  if name == "celeb_a_local":
    return {"root": shared_data("celeb_a"), "cache": False}
  if name == "caltech_birds2011_local":  # the shared subset is downscaled: boxes at 1/4
    return {"root": shared_data("caltech_birds2011/CUB_200_2011"), "image_size": (16, 16),
            "annotation_scale": 0.25, "cache": False}
  if DATASETS.metadata(name).get("tfds"):
    from xjax.data import tfds_data
    if not TFDS_DIR or not tfds_data.is_prepared(name, TFDS_DIR):
      pytest.skip(f"TFDS dataset {name!r} is not prepared in XJAX_TFDS_DIR={TFDS_DIR} (python -m "
                  f"runs.prepare {name} --manual_dir DIR --data_dir $XJAX_TFDS_DIR)")
    return {"data_dir": TFDS_DIR, "in_memory": False, "image_size": (16, 16)}
  pytest.fail(f"dataset {name!r} has no example: add it to dataset_options")


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_meets_the_source_contract(name):
  source = get_source(name, "validation", **dataset_options(name))
  info = source.info
  tokens = info.vocab_size is not None  # token ids (n, T) int32 in `image` (xjax.data.source)
  assert len(source) > 0 and len(info.image_shape) == (1 if tokens else 3)
  assert info.num_classes >= 1
  indices = np.array([0, len(source) - 1])
  batch = source.read_batch(indices)
  assert batch["image"].dtype == (np.int32 if tokens else np.uint8)
  assert batch["image"].shape == (2, *info.image_shape)
  if tokens:
    assert np.all((0 <= batch["image"]) & (batch["image"] < info.vocab_size))
  assert np.issubdtype(batch["label"].dtype, np.integer) and batch["label"].shape == (2,)
  assert np.all((0 <= batch["label"]) & (batch["label"] < info.num_classes))
  np.testing.assert_array_equal(batch["index"], indices)


# ---------------------------------------------------------------------------------------------
# Optimizers: a negative learning rate is a config error; a valid one updates finitely.

@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_optimizer_rejects_a_negative_learning_rate(name):
  with pytest.raises(ConfigError, match=f"Bad value -1.0 for option 'learning_rate' of optimizer "
                     f"'{name}'"):
    make_optimizer(name, learning_rate=-1.0, steps_per_epoch=1)
  with pytest.raises(ConfigError, match="learning_rate"):
    OPTIMIZERS.get(name, learning_rate=float("nan"), steps_per_epoch=1)


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_optimizer_takes_a_finite_step(name):
  tx = make_optimizer(name, learning_rate=0.1, steps_per_epoch=1, schedule="step")
  params = jnp.array([1.0, -2.0])
  updates, _ = tx.update(params, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  assert np.all(np.isfinite(new)) and np.all(np.abs(new) < np.abs(params))
