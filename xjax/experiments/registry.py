"""Experiments by name: `get_experiment("xnet")` is a fresh `XNetProtocol`; and `PLUGINS`, the one
list of the modules that register plug-ins.

Each protocol module registers its class with `@EXPERIMENTS.register(name)`; the registry imports
those modules at its first lookup (they import plotting and the methods, which a user of the
registry alone does not need).
"""

from __future__ import annotations

from xjax.experiments.protocol import Protocol
from xjax.registry import Registry

# Every module that registers a plug-in when imported, the one list of them: the training-time
# methods, which register the model `explainer` and the loss terms (the explainer's, `block_l1`,
# `xnet_drop`, in this order), then the experiments (in the order of `EXPERIMENTS.names()`, which
# is that of the CLI's help). `xjax.plugins` imports them all; this registry, at its first lookup.
PLUGINS = ("xjax.methods.explainer",
           "xjax.methods.separable",
           "xjax.methods.xnet",
           "xjax.experiments.xnet",
           "xjax.experiments.separable",
           "xjax.experiments.tour",
           "xjax.experiments.maximize",
           "xjax.experiments.evaluate",
           "xjax.experiments.srae",
           "xjax.experiments.explainer")

EXPERIMENTS = Registry("experiment", modules=PLUGINS)


def get_experiment(name: str) -> Protocol:
  """A new instance of the protocol registered as `name`."""
  return EXPERIMENTS.get(name)
