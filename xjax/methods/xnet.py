"""XNet: an explainable layer whose neurons are each made important for one category.

David & Liu, "XNet: Towards training explainable neural networks" (2019). A backbone gives
features g (B, F); the explainable layer h = ReLU(g W_h + b_h) has k neurons; the output is
`logits = (h D_j) W_o + b_o`, where the X-layer `D_j` is the identity with neuron j zeroed
(D = I in ordinary use).

* **Drop loss** of neuron j: the mean cross-entropy over the images of category j with neuron j
  dropped (Sec. 3). All k are computed in parallel by `jax.vmap` over the neurons, on top of one
  backbone pass: only the head's last dense layer runs k more times.
* **Objective** (a loss term): `L = CE - alpha * min_j DL_j` (Eq. 2, the paper's choice) or the
  sum / mean over j (Eq. 1, the ablation); alpha = 0 is the baseline. Categories are per-image
  binary attributes; an image may be in several or none, and a category with no image in the
  batch is left out of the min (its drop loss is not defined), so it cannot poison the loss.
* **Matching** (Alg. 1-2): the category x neuron drop-loss matrix over a dataset and the
  bipartite matching `linear_sum_assignment(M, maximize=True)` that assigns each category the
  neuron whose loss it raises most.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize

from xjax.errors import ConfigError
from xjax.registry import one_of
from xjax.train.losses import LOSS_TERMS, ModelOutputs

Array = jax.Array
OBJECTIVES = ("min", "sum", "mean")


def head_logits(output_params: Mapping[str, Array], hidden: Array,
                keep: Array | None = None) -> Array:
  """`(hidden * keep) W_o + b_o`: the output layer behind the X-layer `D = diag(keep)`."""
  if keep is not None:
    hidden = hidden * keep
  return hidden @ output_params["kernel"] + output_params["bias"]


def drop_logits(output_params: Mapping[str, Array], hidden: Array) -> Array:
  """Logits with each neuron dropped in turn, (k, B, C): `jax.vmap` over the k X-layers D_j."""
  k = hidden.shape[-1]
  keeps = 1.0 - jnp.eye(k, dtype=hidden.dtype)  # row j: D_j's diagonal
  return jax.vmap(lambda keep: head_logits(output_params, hidden, keep))(keeps)


def drop_losses(output_params: Mapping[str, Array], hidden: Array, labels: Array,
                membership: Array) -> tuple[Array, Array]:
  """Per-neuron drop losses DL_j and the number of images of each category in the batch.

  Args:
    output_params: the output layer's {"kernel": (k, C), "bias": (C,)}.
    hidden: the explainable layer's activations h (B, k).
    labels: integer labels (B,).
    membership: (B, k), 1 where image b is in category j (the category of neuron j).

  Returns:
    (DL (k,), counts (k,)): DL_j = mean over the images of category j of the cross-entropy with
    neuron j dropped; 0 where the category has no image (see `counts`).
  """
  logits = drop_logits(output_params, hidden)  # (k, B, C)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels[None, :])  # (k, B)
  weights = membership.T.astype(losses.dtype)  # (k, B)
  counts = weights.sum(axis=1)
  return (weights * losses).sum(axis=1) / jnp.maximum(counts, 1.0), counts


def drop_losses_loop(output_params: Mapping[str, Array], hidden: Array, labels: Array,
                     membership: Array) -> tuple[Array, Array]:
  """`drop_losses` by a Python loop over the neurons: the naive reference and benchmark peer."""
  k = hidden.shape[-1]
  values, counts = [], []
  for j in range(k):
    keep = jnp.ones((k,), hidden.dtype).at[j].set(0.0)
    loss = optax.softmax_cross_entropy_with_integer_labels(
        head_logits(output_params, hidden, keep), labels)
    weight = membership[:, j].astype(loss.dtype)
    values.append((weight * loss).sum() / jnp.maximum(weight.sum(), 1.0))
    counts.append(weight.sum())
  return jnp.stack(values), jnp.stack(counts)


def objective(losses: Array, counts: Array, kind: str = "min") -> Array:
  """The drop-loss objective to maximise: min_j DL_j (Eq. 2), sum_j or mean_j (Eq. 1).

  Categories without an image in the batch are left out (+inf in the min, 0 in the sum); with
  none present the objective is 0.
  """
  present = counts > 0
  if kind == "min":
    value = jnp.min(jnp.where(present, losses, jnp.inf))
    return jnp.where(jnp.any(present), value, 0.0)
  if kind == "sum":
    return jnp.sum(jnp.where(present, losses, 0.0))
  if kind == "mean":
    return jnp.sum(jnp.where(present, losses, 0.0)) / jnp.maximum(present.sum(), 1)
  raise ConfigError(f"Unknown XNet objective {kind!r}; known: {', '.join(OBJECTIVES)}.")


MEMBERSHIP_KEY = "xnet_membership"


def category_membership(attributes: np.ndarray, categories: Iterable[int],
                        neuron_of_category: np.ndarray | None = None) -> np.ndarray:
  """(B, k) membership of the images in the categories, in neuron order (numpy or jax).

  `categories[c]` is the attribute column of category c; `neuron_of_category[c]` the neuron
  matched to it (identity by default), so column j is the category of neuron j.
  """
  xp = jnp if isinstance(attributes, jax.Array) else np
  columns = xp.asarray(attributes)[:, np.asarray(list(categories))] > 0
  if neuron_of_category is None:
    return columns
  return columns[:, np.argsort(np.asarray(neuron_of_category))]  # neuron j -> its category


def xnet_drop_loss(categories: Iterable[int], objective_kind: str = "min",
                   head: str = "head", hidden_key: str = "xnet_hidden") -> Callable:
  """The loss term `-objective(DL)`; weight it by alpha (`{"xnet_drop": {"weight": 0.05, ...}}`).

  Reads the explainable layer's activations from `outputs.intermediates[hidden_key]` and the
  output layer's parameters from `params[head]["output"]`. The images of neuron j's category are
  `batch["xnet_membership"][:, j]` when the batch has that field (the input pipeline puts it
  there after a matching, `category_membership(attributes, categories, neuron_of_category)`),
  otherwise `batch["attributes"][:, categories[j]]`.
  """
  categories = tuple(int(c) for c in categories)
  if objective_kind not in OBJECTIVES:
    raise ConfigError(f"Unknown XNet objective {objective_kind!r}; known: {', '.join(OBJECTIVES)}.")

  def term(params: Any, batch: Mapping[str, Array], outputs: ModelOutputs) -> Array:
    hidden = outputs.intermediates[hidden_key]
    if len(categories) != hidden.shape[-1]:
      raise ConfigError(f"{len(categories)} categories for an explainable layer of "
                        f"{hidden.shape[-1]} neurons; XNet needs one category per neuron.")
    membership = batch.get(MEMBERSHIP_KEY)
    if membership is None:
      membership = category_membership(batch["attributes"], categories)
    losses, counts = drop_losses(params[head]["output"], hidden, batch["label"], membership)
    return -objective(losses, counts, objective_kind)

  return term


@LOSS_TERMS.register("xnet_drop", checks={"objective": one_of(*OBJECTIVES)})
def xnet_drop_term(categories: Iterable[int], objective: str = "min", head: str = "head",
                   hidden_key: str = "xnet_hidden") -> Callable:
  """The loss term `xnet_drop`: `xnet_drop_loss` with the config's option names."""
  return xnet_drop_loss(categories, objective, head, hidden_key)


def drop_loss_matrix(output_params: Mapping[str, Array],
                     batches: Iterable[tuple[Array, Array, Array]]) -> np.ndarray:
  """M[c, i]: mean cross-entropy over the images of category c with neuron i dropped (Alg. 1).

  Args:
    output_params: the output layer's parameters.
    batches: (hidden (B, k), labels (B,), category membership (B, K)) per batch.

  Returns:
    (K, k) with per-sample sums divided by the category's image count (Alg. 1 adds per-batch
    losses, then divides by the image count: right only with sum reduction); rows of empty
    categories are 0.
  """
  totals, counts = None, None
  for hidden, labels, membership in batches:
    losses = optax.softmax_cross_entropy_with_integer_labels(
        drop_logits(output_params, hidden), labels[None, :])  # (k, B)
    weights = jnp.asarray(membership, losses.dtype)  # (B, K)
    batch_totals = np.asarray(weights.T @ losses.T)  # (K, k)
    batch_counts = np.asarray(weights.sum(axis=0))
    totals = batch_totals if totals is None else totals + batch_totals
    counts = batch_counts if counts is None else counts + batch_counts
  if totals is None:
    raise ConfigError("drop_loss_matrix needs at least one batch.")
  return totals / np.maximum(counts, 1.0)[:, None]


def match_neurons(matrix: np.ndarray) -> np.ndarray:
  """The neuron of each category: the assignment maximising the total drop loss (Alg. 2)."""
  rows, cols = scipy.optimize.linear_sum_assignment(np.asarray(matrix), maximize=True)
  neuron_of_category = np.empty(len(rows), dtype=np.int32)
  neuron_of_category[rows] = cols
  return neuron_of_category
