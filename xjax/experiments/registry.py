"""Experiments by name: `get_experiment("xnet")` is a fresh `XNetProtocol`.

Each protocol module registers its class with `@EXPERIMENTS.register(name)`; the registry imports
those modules at its first lookup (they import plotting and the methods, which a user of the
registry alone does not need).
"""

from __future__ import annotations

from xjax.experiments.protocol import Protocol
from xjax.registry import Registry

EXPERIMENTS = Registry("experiment", modules=("xjax.experiments.xnet",
                                              "xjax.experiments.separable",
                                              "xjax.experiments.tour",
                                              "xjax.experiments.maximize",
                                              "xjax.experiments.evaluate",
                                              "xjax.experiments.srae",
                                              "xjax.experiments.explainer"))


def get_experiment(name: str) -> Protocol:
  """A new instance of the protocol registered as `name`."""
  return EXPERIMENTS.get(name)
