"""Training new modules on top of a frozen, pre-trained network.

Explanation modules (an explainer network's encoder and decoder, an SRAE) learn on the features of
a network trained before them, which must not change. Two config keys say how:

  train.pretrained = {"backbone": "workdirs/performer"}   # subtree <- another run's best parameters
  train.frozen = ("backbone",)                            # parameter path prefixes to freeze

`load_pretrained` copies a run's parameters (and BatchNorm statistics) into a subtree of the new
model; leaves of that run that the subtree lacks (e.g. its classifier) are left out. `freeze` wraps
the optimizer in optax's partitioned transform (`optax.multi_transform`): the frozen leaves get
`optax.set_to_zero()`, so they are never updated and carry no optimizer state (no Adam moments), and
`keep_frozen` puts their exact previous values back after the update, so they stay bit-identical to
the checkpoint they came from (x + 0.0 would turn a -0.0 weight into +0.0).

Freezing fixes the parameters and the BatchNorm statistics, not the mode the frozen network runs
in: the train step applies the whole model with `train=True`. A module that wraps a frozen
network should call it with `train=False` (running statistics, no dropout), so that the new
modules learn on the features they will see at evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from xjax.errors import CheckpointMismatchError, ConfigError, XjaxError
from xjax.train import checkpoint

FROZEN, TRAINABLE = "frozen", "trainable"


def path_of(key_path) -> str:
  """A pytree key path as "conv1/kernel"."""
  return jax.tree_util.keystr(key_path, simple=True, separator="/")


def _matches(path: str, prefix: str) -> bool:
  prefix = prefix.strip("/")
  return prefix == "" or path == prefix or path.startswith(prefix + "/")


def frozen_mask(params: Any, prefixes: Sequence[str], *, check: bool = True) -> Any:
  """A pytree of bools like `params`: True where a leaf's path starts with one of `prefixes`.

  Args:
    params: parameters (arrays or `jax.ShapeDtypeStruct`s), e.g. `{"backbone": {...}, ...}`.
    prefixes: "/"-separated path prefixes, e.g. ("backbone",) or ("backbone/conv1",).
    check: raise when a prefix matches no leaf (a misspelt module name freezes nothing).

  Raises:
    ConfigError: a prefix that matches no parameter, listing the top-level modules.
  """
  prefixes = tuple(str(p) for p in prefixes)
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths = [path_of(k) for k, _ in flat]
  if check:
    unused = [p for p in prefixes if not any(_matches(path, p) for path in paths)]
    if unused:
      top = sorted({path.split("/")[0] for path in paths})
      raise ConfigError(f"train.frozen {unused} match no parameter of the model; its top-level "
                        f"modules: {', '.join(top)}.")
  return jax.tree_util.tree_unflatten(
      treedef, [any(_matches(path, p) for p in prefixes) for path in paths])


def freeze(tx: optax.GradientTransformation, mask: Any) -> optax.GradientTransformation:
  """`tx` on the trainable leaves, nothing (no update, no state) on those where `mask` is True."""
  labels = jax.tree.map(lambda frozen: FROZEN if frozen else TRAINABLE, mask)
  return optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()}, labels)


def keep_frozen(mask: Any, old: Any, new: Any) -> Any:
  """`new` with the leaves where `mask` is True taken from `old` (bit for bit)."""
  return jax.tree.map(lambda frozen, a, b: a if frozen else b, mask, old, new)


def _subtree(tree: Mapping, prefix: str) -> Any:
  node = tree
  for part in [p for p in prefix.split("/") if p]:
    if not isinstance(node, Mapping) or part not in node:
      return None
    node = node[part]
  return node


def _with_subtree(tree: Mapping, prefix: str, value: Any) -> dict:
  parts = [p for p in prefix.split("/") if p]
  if not parts:
    return value
  out = dict(tree)
  out[parts[0]] = _with_subtree(tree.get(parts[0], {}), "/".join(parts[1:]), value)
  return out


def _load_into(target: Any, source: Any, where: str) -> Any:
  """`source`'s arrays with `target`'s tree and dtypes; source leaves beyond it are ignored."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(target)
  source_leaves = {path_of(k): v for k, v in jax.tree_util.tree_flatten_with_path(source)[0]}
  missing = [path_of(k) for k, _ in flat if path_of(k) not in source_leaves]
  wrong = [f"{path_of(k)}: checkpoint {np.shape(source_leaves[path_of(k)])}, model {leaf.shape}"
           for k, leaf in flat if path_of(k) in source_leaves
           and tuple(np.shape(source_leaves[path_of(k)])) != tuple(leaf.shape)]
  if missing or wrong:
    raise CheckpointMismatchError(
        f"train.pretrained: {where} does not fit the model's subtree: "
        + "; ".join([*(f"only in the model: {m}" for m in missing[:5]), *wrong[:5]]) + ".")
  return jax.tree_util.tree_unflatten(
      treedef, [np.asarray(source_leaves[path_of(k)], leaf.dtype) for k, leaf in flat])


def load_pretrained(params: Any, model_state: Mapping, pretrained: Mapping[str, str]
                    ) -> tuple[Any, dict, list[str]]:
  """`params` and `model_state` with subtrees replaced by other runs' best parameters.

  Args:
    params: the new model's parameters.
    model_state: its other collections, e.g. {"batch_stats": ...}.
    pretrained: parameter path prefix -> workdir of a finished run, e.g. {"backbone": W}; the
      prefix "" loads the whole model.

  Returns:
    (params, model_state, notes): notes name the run's leaves that the subtree does not have
    (e.g. a classifier dropped by the new model), which were not loaded.

  Raises:
    XjaxError: a workdir without a best checkpoint, or a prefix that is not a module.
    CheckpointMismatchError: the run's parameters do not fit the subtree.
  """
  notes = []
  model_state = dict(model_state)
  for prefix, workdir in pretrained.items():
    best = Path(workdir).absolute() / "checkpoints" / "best"
    if not any(p.name.isdigit() for p in best.glob("*")):
      raise XjaxError(f"train.pretrained[{prefix!r}]: no best checkpoint under {best}; train "
                      f"that run first.")
    saved = checkpoint.load_params(workdir, "best")
    target = _subtree(params, prefix)
    if target is None:
      raise ConfigError(f"train.pretrained: {prefix!r} is not a module of the model; its "
                        f"top-level modules: {', '.join(sorted(params))}.")
    params = _with_subtree(params, prefix, _load_into(target, saved["params"], str(best)))
    for collection, tree in model_state.items():
      part = _subtree(tree, prefix)
      if part is not None:
        model_state[collection] = _with_subtree(tree, prefix, _load_into(
            part, saved.get("model_state", {}).get(collection, {}), f"{best} ({collection})"))
    loaded = {path_of(k) for k, _ in jax.tree_util.tree_flatten_with_path(target)[0]}
    extra = sorted({path_of(k).split("/")[0] for k, _ in
                    jax.tree_util.tree_flatten_with_path(saved["params"])[0]
                    if path_of(k) not in loaded})
    notes.append(f"{prefix or '(the whole model)'} <- {workdir}"
                 + (f" (not loaded: {', '.join(extra)})" if extra else ""))
  return params, model_state, notes
