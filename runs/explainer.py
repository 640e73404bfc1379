"""Explainer networks (Zhang, Yang & Wu, AAAI 2019): `python -m runs.explainer
--config=runs/configs/explainer.py[:VARIANT] --workdir=W` trains (or reuses) the performer, then
the explainer on the frozen performer, and reports location instability, p and the performer's
head on the reconstructed features.

The protocol: `xjax.experiments.explainer`.
"""

from runs import cli

if __name__ == "__main__":
  cli.experiment("explainer")
