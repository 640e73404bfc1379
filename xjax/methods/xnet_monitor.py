"""XNet over a dataset: drop losses, matching and activations, measured while and after training.

The per-batch loss term lives in `xjax.methods.xnet`; this module runs the network over a whole
split (eval mode) and derives from one pass the quantities of the paper's figures:

* the category x neuron drop-loss matrix M (Alg. 1, per-sample means) and the matching (Alg. 2);
* each neuron's drop loss DL_j = M[c, j] for the category c matched to it (Fig. 1, 7, 8);
* the category x neuron activation matrix, summed per category and normalised per neuron (Fig. 2);
* each image's loss with neuron j dropped, for the top-9 images of each neuron (Fig. 5, 6).

`XNetHooks` plugs this into `xjax.train.loop.train_and_evaluate`: it records the drop losses on
the validation split before training and after every epoch, matches categories to neurons once
before training ("initial") or before every epoch ("em") on the training split, and adds the
matched membership to every training batch (`batch["xnet_membership"]`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax

from xjax.data import pipeline
from xjax.data.source import Source
from xjax.errors import ConfigError
from xjax.methods.xnet import (
  MEMBERSHIP_KEY,
  category_membership,
  drop_logits,
  drop_loss_matrix,
  match_neurons,
)
from xjax.train.loop import LoopState, TrainHooks

MATCHINGS = ("none", "initial", "em")


@dataclasses.dataclass(frozen=True)
class SplitOutputs:
  """One eval-mode pass over a split: per image, in the split's order."""

  hidden: np.ndarray  # (N, k) explainable-layer activations
  logits: np.ndarray  # (N, C)
  labels: np.ndarray  # (N,)
  membership: np.ndarray  # (N, K) category membership, in category order
  index: np.ndarray  # (N,) the images' indices in the source


def make_forward(model) -> Callable[[dict, jax.Array], tuple[jax.Array, jax.Array]]:
  """`(variables, images) -> (logits, hidden)` in eval mode, jit-compiled."""

  @jax.jit
  def forward(variables, images):
    logits, intermediates = model.apply(variables, images, train=False)
    return logits, intermediates["xnet_hidden"]

  return forward


def run_split(forward: Callable, variables: dict, source: Source, categories: Sequence[int], *,
              batch_size: int = 256, normalization: str = "unit",
              max_examples: int | None = None) -> SplitOutputs:
  """The network's outputs over (the first `max_examples` images of) `source`."""
  parts: dict[str, list[np.ndarray]] = {k: [] for k in ("hidden", "logits", "labels",
                                                         "membership", "index")}
  seen = 0
  for batch in pipeline.eval_batches(source, batch_size=batch_size, normalization=normalization,
                                     fields=("image", "label", "attributes", "index")):
    logits, hidden = jax.device_get(forward(variables, batch["image"]))
    valid = batch["valid"]
    if max_examples is not None:
      valid = valid & (np.arange(len(valid)) < max_examples - seen)
    parts["hidden"].append(hidden[valid])
    parts["logits"].append(logits[valid])
    parts["labels"].append(batch["label"][valid])
    parts["membership"].append(category_membership(batch["attributes"][valid], categories))
    parts["index"].append(batch["index"][valid])
    seen += int(valid.sum())
    if max_examples is not None and seen >= max_examples:
      break
  return SplitOutputs(**{k: np.concatenate(v) for k, v in parts.items()})


def split_drop_loss_matrix(output_params: dict, outputs: SplitOutputs,
                           chunk: int = 4096) -> np.ndarray:
  """M[c, i] over the split (Alg. 1): mean loss of category c's images with neuron i dropped."""
  n = len(outputs.labels)
  return drop_loss_matrix(output_params, [
      (outputs.hidden[s:s + chunk], outputs.labels[s:s + chunk], outputs.membership[s:s + chunk])
      for s in range(0, n, chunk)])


def neuron_drop_losses(matrix: np.ndarray, neuron_of_category: Sequence[int]) -> np.ndarray:
  """DL_j: the drop loss of neuron j on the images of the category matched to it, (k,)."""
  neuron_of_category = np.asarray(neuron_of_category)
  losses = np.empty(len(neuron_of_category))
  losses[neuron_of_category] = matrix[np.arange(len(neuron_of_category)), neuron_of_category]
  return losses


def category_activation(hidden: np.ndarray, membership: np.ndarray) -> np.ndarray:
  """(K, k): neuron j's activations summed over category c's images, over their sum over c.

  Fig. 2 of the paper: "we record category specific activations for every neuron, and normalize
  under total sum of its activations" (each column sums to 1; a silent neuron's column is 0).
  """
  sums = np.asarray(membership, np.float64).T @ np.asarray(hidden, np.float64)
  totals = sums.sum(axis=0, keepdims=True)
  return sums / np.where(totals > 0, totals, 1.0)


def per_image_drop_losses(output_params: dict, outputs: SplitOutputs) -> np.ndarray:
  """(N, k): each image's cross-entropy with neuron j dropped."""
  logits = drop_logits(output_params, outputs.hidden)  # (k, N, C)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, outputs.labels[None, :])
  return np.asarray(losses).T


def category_means(per_image: np.ndarray, membership: np.ndarray) -> np.ndarray:
  """M[c, i] from per-image drop losses (N, k): their mean over category c's images (Alg. 1)."""
  weights = np.asarray(membership, np.float64)
  return (weights.T @ per_image) / np.maximum(weights.sum(axis=0), 1.0)[:, None]


def top_images(scores: np.ndarray, m: int = 9) -> np.ndarray:
  """(k, m) row indices of the m largest scores of each column (Fig. 5 / 6), largest first."""
  return np.argsort(-scores, axis=0, kind="stable")[:m].T


@dataclasses.dataclass
class XNetState:
  """What `XNetHooks` remembers across epochs, kept in `LoopState.hooks["xnet"]` (so saved in
  every checkpoint, as a JSON object of these fields) and written to results.json's "xnet".

  Attributes:
    neuron_of_category: the neuron matched to each category (in category order).
    drop_loss_history: each neuron's drop loss on the validation split, per epoch (epoch 0 =
      before training).
    matchings: each matching made: its `epoch`, `neuron_of_category` and drop-loss `matrix`.
  """

  neuron_of_category: list[int]
  drop_loss_history: list[list[float]] = dataclasses.field(default_factory=list)
  matchings: list[dict[str, Any]] = dataclasses.field(default_factory=list)


class XNetHooks(TrainHooks):
  """Per-epoch drop losses, and matching, for `train_and_evaluate` (module docstring); their
  state is an `XNetState`."""

  KEY = "xnet"  # this hook's key in `LoopState.hooks` (and in results.json)

  def __init__(self, model, sources: dict[str, Source], categories: Sequence[int], *,
               matching: str = "none", batch_size: int = 256, normalization: str = "unit",
               match_examples: int | None = None):
    if matching not in MATCHINGS:
      raise ConfigError(f"Unknown XNet matching {matching!r}; known: {', '.join(MATCHINGS)}.")
    self.forward = make_forward(model)
    self.sources, self.categories, self.matching = sources, tuple(categories), matching
    self.options = dict(batch_size=batch_size, normalization=normalization)
    self.match_examples = match_examples

  def _state(self, loop: LoopState) -> XNetState:
    """The state in `loop`: new (identity matching) on the first call, and typed again after a
    resume (a checkpoint restores it as the JSON object of its fields)."""
    saved = loop.hooks.get(self.KEY)
    if not isinstance(saved, XNetState):
      saved = (XNetState(list(range(len(self.categories)))) if saved is None
               else XNetState(**saved))
      loop.hooks[self.KEY] = saved
    return saved

  def _matrix(self, state, split: str, max_examples: int | None = None) -> np.ndarray:
    outputs = run_split(self.forward, state.variables, self.sources[split], self.categories,
                        max_examples=max_examples, **self.options)
    return split_drop_loss_matrix(jax.device_get(state.params["head"]["output"]), outputs)

  def _record(self, state, xnet: XNetState) -> list[float]:
    losses = neuron_drop_losses(self._matrix(state, "validation"), xnet.neuron_of_category)
    xnet.drop_loss_history.append([float(v) for v in losses])
    return xnet.drop_loss_history[-1]

  def on_epoch_start(self, state, epoch: int, loop: LoopState) -> None:
    xnet = self._state(loop)
    due = self.matching == "em" or (self.matching == "initial" and epoch == 0)
    if due and not any(m["epoch"] == epoch for m in xnet.matchings):  # not made before a resume
      matrix = self._matrix(state, "train", self.match_examples)
      xnet.neuron_of_category = [int(j) for j in match_neurons(matrix)]
      xnet.matchings.append({"epoch": epoch, "neuron_of_category": xnet.neuron_of_category,
                             "matrix": matrix.tolist()})
    if epoch == 0 and not xnet.drop_loss_history:
      self._record(state, xnet)  # before training, under the matching training starts with

  def transform_batch(self, batch: dict[str, np.ndarray], loop: LoopState
                      ) -> dict[str, np.ndarray]:
    neuron_of_category = self._state(loop).neuron_of_category
    membership = category_membership(batch["attributes"], self.categories, neuron_of_category)
    return {**batch, MEMBERSHIP_KEY: membership.astype(np.int8)}

  def on_epoch_end(self, state, epoch: int, loop: LoopState) -> dict[str, Any]:
    return {"drop_losses": self._record(state, self._state(loop))}

  def results(self, loop: LoopState) -> dict[str, Any]:
    return {self.KEY: dataclasses.asdict(self._state(loop))}
