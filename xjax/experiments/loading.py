"""Loading a trained run back: its config, data, model and variables, from its workdir alone."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from xjax.data import pipeline
from xjax.errors import XjaxError
from xjax.nn.registry import logits_fn
from xjax.train import checkpoint
from xjax.train.loop import build_model, load_sources


@dataclasses.dataclass
class LoadedRun:
  """A trained run: `config` (its config.json), `source` (one split of its data, as trained),
  `model` (rebuilt from the config) and `variables` (`{"params": ..., **model_state}`)."""

  workdir: Path
  config: ml_collections.ConfigDict
  source: Any
  model: Any
  variables: dict

  @property
  def apply_fn(self) -> Callable:
    """`(variables, x) -> logits` in eval mode, what the explanation methods take."""
    return logits_fn(self.model)

  @property
  def tokens(self) -> bool:
    """Whether the run reads token sequences (its data has a vocabulary)."""
    return getattr(self.source.info, "vocab_size", None) is not None

  def inputs(self, images: np.ndarray) -> np.ndarray:
    """What the explanation methods explain: the source's `image` field normalised as in
    training, or, for a token model, the word embeddings of the ids (B, T, D), which the text
    models take in place of ids (relevance per token is then the sum over D)."""
    if not self.tokens:
      return pipeline.input_transform(self.source.info, self.config.data.normalization)(images)
    embed = jax.jit(lambda v, ids: self.model.apply(v, ids, method=self.model.embed))
    return np.asarray(embed(self.variables, jnp.asarray(images, jnp.int32)))


def load_run(workdir: str | Path, split: str = "test", which: str = "best") -> LoadedRun:
  """The run in `workdir` (written by `runs.train` or one run of an experiment).

  Args:
    workdir: the run's directory (config.json and checkpoints/).
    split: the split of its dataset to open ("train", "validation" or "test").
    which: the checkpoint, "best" (falls back to "latest") or "latest".

  Raises:
    XjaxError: no such workdir, no config.json or no checkpoint in it.
    CheckpointMismatchError: the checkpoint does not fit the model its config builds.
  """
  workdir = Path(workdir)
  if not workdir.is_dir():
    raise XjaxError(f"No workdir {workdir}: train a model there first (python -m runs.train "
                    f"--config=... --workdir={workdir}).")
  config_path = workdir / "config.json"
  if not config_path.is_file():
    raise XjaxError(f"{workdir} has no config.json: it is not the workdir of a training run.")
  if not (workdir / "checkpoints").is_dir():
    raise XjaxError(f"No checkpoint under {workdir / 'checkpoints'}: train a model in this "
                    f"workdir first.")
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  source = load_sources(config.data, splits=(split,))[split]
  model = build_model(config, source.info)
  variables = checkpoint.load_variables(workdir, which)
  expected = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                            jax.ShapeDtypeStruct((1, *source.info.image_shape), jnp.float32))
  checkpoint.check_fits({"params": expected["params"]}, {"params": variables["params"]},
                        workdir / "checkpoints")
  return LoadedRun(workdir, config, source, model, variables)


def read_split(source, normalization: str, n: int | None = None, batch: int = 4096
               ) -> dict[str, np.ndarray]:
  """The first `n` records of a split (all of them by default), with `x`: the images normalised
  as in training."""
  n = len(source) if n is None else min(n, len(source))
  mean, std = pipeline.normalization_constants(source.info, normalization)
  parts = [source.read_batch(np.arange(s, min(n, s + batch))) for s in range(0, n, batch)]
  records = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  records["x"] = pipeline.normalize(records["image"], mean, std)
  return records
