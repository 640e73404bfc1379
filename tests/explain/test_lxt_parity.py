"""AttnLRP and CP-LRP equal LXT 2.1's (the PyTorch reference of Achtibat et al., "AttnLRP:
Attention-Aware Layer-Wise Relevance Propagation for Transformers", ICML 2024) on the same weights.

The references are committed fixtures (`tests/fixtures/transformers/make_reference.py` made them
with LXT's efficient mode in a pinned PyTorch environment): tiny random Hugging Face BERT and LLaMA
(grouped-query attention) and a torchvision ViT, their weights imported here. Relevance is read
at the word embeddings (summed over features) or at the pixels (summed over channels), for a
unit gradient on each example's top logit, as LXT reads it. LXT 2.1 has no CP-LRP for BERT.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.fixtures import reference_models
from xjax.explain import composites
from xjax.explain.gradients import gradient_x_input
from xjax.explain.lrp import lrp

CASES = [("bert", "attn_lrp"), ("llama", "attn_lrp"), ("llama", "cp_lrp"), ("vit", "attn_lrp"),
         ("vit", "cp_lrp")]
TOLERANCE, MIN_PEARSON = 1e-4, 0.9999


@functools.cache
def explained(name: str):
  """(apply_fn, variables, x, data): the model as a function of what is explained."""
  model, variables, data = reference_models.load(name)
  x = jnp.asarray(data["input"])
  if name == "vit":
    return (lambda v, x: model.apply(v, x)[0]), variables, x, data
  token_types = data.get("token_type_ids")
  embeddings = model.apply(variables, x, method=model.embed)
  return ((lambda v, e: model.apply(v, e, token_types=token_types)[0]), variables, embeddings,
          data)


@functools.cache
def relevance(name: str, method: str) -> np.ndarray:
  """Token (B, T) or pixel (B, H, W) relevance of the fixture's targets."""
  apply_fn, variables, x, data = explained(name)
  target = jnp.asarray(data["target"])
  if method == "gradient_x_input":
    r = jax.jit(functools.partial(gradient_x_input, apply_fn))(variables, x, target)
  else:
    r = jax.jit(lambda v, x, t: lrp(apply_fn, v, x, t, composites.get_composite(method)))(
        variables, x, target)
  return np.asarray(r.sum(-1))


def gap(actual: np.ndarray, expected: np.ndarray) -> float:
  """max |actual - expected| / max |expected|."""
  return float(np.abs(actual - expected).max() / np.abs(expected).max())


def pearson(actual: np.ndarray, expected: np.ndarray) -> float:
  return float(np.corrcoef(actual.reshape(-1), expected.reshape(-1))[0, 1])


def test_the_targets_are_the_models_top_classes():
  for name in ("bert", "llama", "vit"):
    apply_fn, variables, x, data = explained(name)
    np.testing.assert_array_equal(np.argmax(jax.jit(apply_fn)(variables, x), -1), data["target"])


@pytest.mark.parametrize("name, method", CASES)
def test_equals_lxt(name, method):
  expected = explained(name)[3][f"relevance_{method}"]
  actual = relevance(name, method)
  print(f"{name} {method}: max |dR| / max |R| = {gap(actual, expected):.1e}, Pearson "
        f"{pearson(actual, expected):.7f}")
  assert gap(actual, expected) <= TOLERANCE
  assert pearson(actual, expected) >= MIN_PEARSON


@pytest.mark.parametrize("name", ["bert", "llama", "vit"])
def test_gradient_x_input_is_not_attn_lrp(name):
  # The negative control: plain gradient x input fails the tolerance by orders of magnitude.
  expected = explained(name)[3]["relevance_attn_lrp"]
  control = relevance(name, "gradient_x_input")
  np.testing.assert_allclose(control, explained(name)[3]["relevance_gxi"], rtol=1e-4,
                             atol=1e-5 * np.abs(control).max())
  print(f"{name} gradient x input against AttnLRP: gap {gap(control, expected):.2f}, Pearson "
        f"{pearson(control, expected):.3f}")
  assert gap(control, expected) > 100 * TOLERANCE


@pytest.mark.parametrize("name", ["llama", "vit"])
def test_cp_lrp_is_not_attn_lrp(name):
  expected = explained(name)[3]["relevance_attn_lrp"]
  cp = relevance(name, "cp_lrp")
  print(f"{name} CP-LRP against AttnLRP: gap {gap(cp, expected):.2f}, Pearson "
        f"{pearson(cp, expected):.3f}")
  assert gap(cp, expected) > 100 * TOLERANCE
