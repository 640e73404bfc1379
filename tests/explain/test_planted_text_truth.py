"""Planted truth for transformer explanations: on the planted-text task (`xjax.data.planted_text`)
only the masked tokens can decide the label, so a tiny transformer that has learned it reads them,
and AttnLRP (Achtibat et al., "AttnLRP: attention-aware layer-wise relevance propagation for
transformers", ICML 2024) must put most of its positive relevance there; the random control, blind
to the model, puts there the mask's share of the tokens.

Both forms, `keywords` (3 key tokens among 16) and the long-range `agreement` (1 subject near the
start, attractors after it), each with a LLaMA decoder of 1 layer of width 16 reading at the last
position, trained for 200 steps with one compiled train step (well under a second of training;
seconds of compilation). LLaMA rather than BERT: at this size a BERT trained on `keywords` learns,
for some seeds, one class as the default (the absence of the other class's keys), and for that
class no token is evidence (AttnLRP's share on its keys is then at chance, as it should be); the
tiny decoder learned both classes' keys in every seed tried (5 of 5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xjax.data.registry import get_source
from xjax.explain import composites, lrp
from xjax.explain.methods import get_method
from xjax.nn import get_model
from xjax.train.losses import build_loss_terms
from xjax.train.state import create_train_state
from xjax.train.step import make_train_step

T, VOCAB, STEPS, BATCH = 16, 32, 200, 32


@pytest.fixture(scope="module", params=["keywords", "agreement"])
def trained(request):
  """(model, variables, a test batch of 64) of a model trained on the form `request.param`."""
  form = request.param
  options = dict(form=form, length=T, vocab_size=VOCAB,
                 **({"num_nouns": 6} if form == "agreement" else {}))
  train = get_source("planted_text", "train", num_examples=STEPS * BATCH, **options)
  test = get_source("planted_text", "test", num_examples=64, **options)
  model = get_model("llama", vocab_size=VOCAB, hidden=16, depth=1, num_heads=2, mlp=32,
                    num_classes=2, positions="last")
  tx = optax.adam(1e-2)
  # Compiled: eager initialisation takes longer than the training on a shared 2-core CPU.
  state = jax.jit(lambda key: create_train_state(model, tx, key, (T,)))(jax.random.key(0))
  step = jax.jit(make_train_step(model, tx, build_loss_terms({"cross_entropy": {"weight": 1.0}})))
  for k in range(STEPS):
    batch = train.read_batch(np.arange(k * BATCH, (k + 1) * BATCH))
    state, _ = step(state, {"image": batch["image"], "label": batch["label"]})
  return form, model, {"params": state.params}, test.read_batch(np.arange(64))


def _explain(method, model, variables, batch):
  """Relevance per token (64, T): the method at the word embeddings, summed over features."""
  ids, target = jnp.asarray(batch["image"]), jnp.asarray(batch["label"])
  embeddings = model.apply(variables, ids, method=model.embed)
  apply_fn = lambda v, e: model.apply(v, e)[0]
  relevance = jax.jit(lambda v, e, t: method(apply_fn, v, e, t))(variables, embeddings, target)
  return np.asarray(relevance.sum(-1))


def _positive_share_on_mask(relevance, mask):
  positive = np.maximum(relevance, 0.0)
  return (positive * mask).sum(1) / positive.sum(1)


def test_the_model_has_learned_the_task(trained):
  # The premise: better than chance means reading the masked tokens, the only evidence.
  _, model, variables, batch = trained
  logits = model.apply(variables, jnp.asarray(batch["image"]))[0]
  assert np.mean(np.argmax(logits, -1) == batch["label"]) >= 0.95


def test_attn_lrp_puts_most_positive_relevance_on_the_planted_tokens(trained):
  form, model, variables, batch = trained
  attn = lambda f, v, e, t: lrp(f, v, e, t, composites.attn_lrp())
  relevance = _explain(attn, model, variables, batch)
  mask = batch["mask"].astype(float)
  share = _positive_share_on_mask(relevance, mask)
  mask_share = mask.mean()  # 3/16 (keywords), 1/16 (agreement)
  assert share.mean() > 0.5 and share.mean() > 3 * mask_share, (form, share.mean())
  for c in (0, 1):  # for each class: the model learned both classes' tokens
    assert share[batch["label"] == c].mean() > 0.5, (form, c, share[batch["label"] == c].mean())
  # The most relevant token is a planted one in most sequences (the pointing game).
  hits = mask[np.arange(len(mask)), relevance.argmax(1)]
  assert hits.mean() >= 0.9, (form, hits.mean())


def test_the_random_control_puts_the_masks_share_there(trained):
  _, model, variables, batch = trained
  relevance = _explain(get_method("random"), model, variables, batch)
  mask = batch["mask"].astype(float)
  share = _positive_share_on_mask(relevance, mask)
  assert share.mean() == pytest.approx(mask.mean(), abs=0.03)
  assert share.mean() < 0.3
