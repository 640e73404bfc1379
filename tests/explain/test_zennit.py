"""xjax's heatmaps equal the PyTorch peers' on the same weights: LRP vs zennit, gradients vs captum.

The CIFAR10 CNN of Table 1 and its PyTorch twin (benchmarks/torch_models.py) hold the same
weights: `init_variables`, then every bias perturbed (`benchmarks.explain.nonzero_biases`; Flax
initialises biases to zero, which would leave the bias handling of the rules untested). Each
xjax composite is compared with its zennit counterpart (`benchmarks.explain.zennit_composite`)
on the same images, as relative L2 over the batch, against the acceptance bound 1e-4. The z^B
box is per channel, to check that xjax reads per-channel bounds on the last (NHWC) axis as zennit
reads them on the channel axis. Every xjax function is compiled once; the seeds change weights
and images only.
"""

from __future__ import annotations

import functools
import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (optional: pip install "
                            "xjax[bench]); the PyTorch peers cannot be compared")
pytest.importorskip("captum", reason="captum is not installed (optional: pip install --no-deps "
                    "captum); the gradient heatmaps cannot be compared with it")
if importlib.util.find_spec("zennit") is None:
  # Not importorskip: zennit's import can fail for want of torchvision, which
  # benchmarks.torchvision_stub works around; only a missing zennit is a reason to skip.
  pytest.skip("zennit is not installed (optional: pip install --no-deps zennit); the LRP "
              "heatmaps cannot be compared with it", allow_module_level=True)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks import explain as bench  # noqa: E402  (imports zennit)
from xjax.explain import gradients  # noqa: E402
from xjax.nn.registry import get_model, logits_fn  # noqa: E402

NAME = "cnn_cifar10"
BATCH = 4
SEEDS = (0, 1)
# A per-channel z^B box around standard-normal pixels.
LOW = (-4.0, -4.5, -5.0)
HIGH = (4.5, 4.0, 5.0)
IG_STEPS, IG_CHUNK = 16, 8  # two chunks: the chunked sum is part of what is compared
COMPOSITES = ("dtd", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1")
ACCEPTANCE = 1e-4  # relative L2, xjax vs peer (the number for LRP vs zennit)
# Integrated Gradients: near the zero baseline float32 rounding decides ReLU / max-pooling ties,
# differently in each framework (see benchmarks.explain.TOLERANCE); measured here ~3e-7.
IG_TOLERANCE = bench.TOLERANCE[NAME]["integrated_gradients"]


@functools.cache
def _model():
  return get_model(NAME, **bench.MODEL_KWARGS[NAME])


@functools.cache
def xjax_fn(method: str):
  """The jitted xjax method `(params, x, target) -> heatmap`, compiled once for all seeds."""
  apply_fn = logits_fn(_model())
  if method == "saliency":
    return jax.jit(lambda p, x, t: gradients.saliency(apply_fn, p, x, t))
  if method == "integrated_gradients":
    return jax.jit(lambda p, x, t: gradients.integrated_gradients(
        apply_fn, p, x, t, steps=IG_STEPS, chunk_size=IG_CHUNK, method="gausslegendre"))
  return bench.xjax_lrp_fn(apply_fn, bench.xjax_composite(method, LOW, HIGH))


@functools.cache
def case(seed: int) -> dict:
  """Weights, images and targets of one seed, on both sides."""
  variables = bench.model_and_variables(NAME, seed=seed)[1]
  batch = bench.make_batch(BATCH, seed=seed)
  twin = bench.torch_twin(NAME, variables)
  return {"variables": variables, "x": jnp.asarray(batch["image"]),
          "target": jnp.asarray(batch["label"]), "twin": twin,
          "x_torch": bench.to_nchw(batch["image"]),
          "target_torch": torch.from_numpy(batch["label"].astype(np.int64)),
          "logits": np.asarray(jax.jit(logits_fn(_model()))(variables, batch["image"]))}


def xjax_heatmap(method: str, seed: int) -> np.ndarray:
  c = case(seed)
  return np.asarray(xjax_fn(method)(c["variables"], c["x"], c["target"]))


def zennit_heatmap(composite: str, seed: int) -> np.ndarray:
  c = case(seed)
  attributor = bench.ZennitLRP(c["twin"], bench.zennit_composite(composite, NAME, LOW, HIGH))
  try:
    return bench.to_nhwc(attributor(c["x_torch"], c["target_torch"]))
  finally:
    attributor.close()


def test_weights_have_nonzero_biases():
  params = case(0)["variables"]["params"]
  for layer in ("conv1", "conv4", "dense1", "classifier"):
    assert np.min(np.abs(params[layer]["bias"])) > 0, layer


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("composite", COMPOSITES)
def test_lrp_matches_zennit(composite, seed):
  ours, theirs = xjax_heatmap(composite, seed), zennit_heatmap(composite, seed)
  assert ours.shape == theirs.shape == (BATCH, 32, 32, 3)
  assert np.linalg.norm(theirs) > 0
  assert bench.relative_l2(ours, theirs) < ACCEPTANCE, bench.relative_l2(ours, theirs)


@pytest.mark.parametrize("seed", SEEDS)
def test_dtd_conserves_the_explained_logit(seed):
  # z^B and z+ without bias pass on all the relevance: each image's relevance sums to its logit.
  c = case(seed)
  explained = c["logits"][np.arange(BATCH), np.asarray(c["target"])]
  sums = xjax_heatmap("dtd", seed).reshape(BATCH, -1).sum(axis=1)
  np.testing.assert_allclose(sums, explained, rtol=1e-4, atol=1e-5 * np.max(np.abs(explained)))


def test_composites_differ():
  # The rules matter: four composites, four different heatmaps (none degenerates to another).
  maps = {c: xjax_heatmap(c, 0) for c in COMPOSITES}
  for i, a in enumerate(COMPOSITES):
    for b in COMPOSITES[i + 1:]:
      assert bench.relative_l2(maps[a], maps[b]) > 1e-2, (a, b)


@pytest.mark.parametrize("seed", SEEDS)
def test_saliency_matches_captum(seed):
  c = case(seed)
  theirs = bench.captum_saliency(c["twin"], c["x_torch"], c["target_torch"])
  assert bench.relative_l2(xjax_heatmap("saliency", seed), bench.to_nhwc(theirs)) < ACCEPTANCE


@pytest.mark.parametrize("seed", SEEDS)
def test_integrated_gradients_match_captum(seed):
  c = case(seed)
  theirs = bench.captum_integrated_gradients(c["twin"], c["x_torch"], c["target_torch"],
                                             steps=IG_STEPS, chunk=IG_CHUNK)
  ours = xjax_heatmap("integrated_gradients", seed)
  assert bench.relative_l2(ours, bench.to_nhwc(theirs)) < IG_TOLERANCE


def test_explain_benchmark_check_cnn_cifar10():
  # The benchmark's own correctness check (no timing), on a batch of 2; IG with fewer points than
  # the benchmark's 32 (still two chunks), to keep it quick.
  check = bench.check_explain(NAME, bench.make_batch(2), ig_steps=8, ig_chunk=4)
  assert set(check["rel_l2"]) == set(bench.METHODS)
  for method, diff in check["rel_l2"].items():
    assert diff < bench.TOLERANCE[NAME][method], (method, diff)
  assert check["conservation"]["lrp_dtd"] < 1e-4
