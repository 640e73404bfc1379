"""Explains a trained run: `python -m runs.explain --workdir=W --methods=lrp:dtd,saliency --n=16`.

Figures, `explanations.npz` and a table per method (time per image, conservation, relevance on the
object): `xjax.experiments.explain.explain_workdir`.
"""

from runs import cli

if __name__ == "__main__":
  cli.explain()
