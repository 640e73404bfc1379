"""Imports every module that registers a plug-in, so that each name works from any entrypoint.

Registration happens on import: `xjax.methods.separable` registers the loss term `block_l1`,
`xjax.methods.xnet` the term `xnet_drop`, `xjax.methods.explainer` the model `explainer` and
its terms, the protocol modules of `xjax.experiments` the experiments. Which modules those are is
one list, `xjax.experiments.registry.PLUGINS` (the experiments' registry imports it at its first
lookup too). The command lines (`runs/cli.py`) import this module first; in Python,
`import xjax.plugins` does the same.
"""

import importlib

from xjax.experiments.registry import PLUGINS

for _module in PLUGINS:
  importlib.import_module(_module)
del _module
