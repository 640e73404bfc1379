"""Separable explanations (Rieger et al. 2018): `python -m runs.separable
--config=runs/configs/separable.py[:DATASET][,smoke] --workdir=W`; run it again to resume.

The protocol, its results (Tables 2 and 3) and figures (Figs. 4-6): `xjax.experiments.separable`.
"""

from runs import cli

if __name__ == "__main__":
  cli.experiment("separable")
