"""Row-wise correlations of explanations and scores, shared by the metrics that compare them."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def pearson(a: jax.Array, b: jax.Array) -> jax.Array:
  """(B,) the Pearson correlation of the rows of `a` and `b` (B, N), centred first for accuracy.

  NaN where a row is constant (its variance is 0).
  """
  a = a - a.mean(-1, keepdims=True)
  b = b - b.mean(-1, keepdims=True)
  return jnp.sum(a * b, -1) / jnp.sqrt(jnp.sum(a * a, -1) * jnp.sum(b * b, -1))


def ranks(a: jax.Array) -> jax.Array:
  """(B, N) the 1-based ranks of each row of `a`, ties given their average rank (as scipy's
  `rankdata(method="average")`); sorting and two binary searches, O(N log N), not O(N^2)."""
  def row(v):
    s = jnp.sort(v)
    below = jnp.searchsorted(s, v, side="left")
    upto = jnp.searchsorted(s, v, side="right")
    # The tied values hold ranks below+1 .. upto; their mean.
    return (below + upto + 1) / 2.0
  return jax.vmap(row)(a)
