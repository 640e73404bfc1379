"""Imports every module that registers a plug-in, so that each name works from any entrypoint.

Registration happens on import: `xjax.methods.separable` registers the loss term `block_l1`,
`xjax.methods.xnet` the term `xnet_drop`, `xjax.methods.explainer` the model `explainer` and
its terms, `xjax.experiments` the experiments. The command lines
(`runs/cli.py`) import this module first; in Python, `import xjax.plugins` does the same.
"""

import xjax.experiments  # noqa: F401 (registers the experiments)
import xjax.methods.explainer  # noqa: F401 (registers the model explainer and its loss terms)
import xjax.methods.separable  # noqa: F401 (registers the loss term block_l1)
import xjax.methods.xnet  # noqa: F401 (registers the loss term xnet_drop)
