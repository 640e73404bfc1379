"""Activation maximization and the explanation figures of Montavon, Samek, Mueller (DSP 2018):
`python -m runs.maximize --config=runs/configs/maximize.py[:VARIANT] --workdir=W` trains (or
reuses) the tutorial CNN, a Gaussian RBM and an adversarial autoencoder, then writes the
prototypes of every class by the three priors, the heatmaps and the pixel-flipping curves.

The protocol: `xjax.experiments.maximize`.
"""

from runs import cli

if __name__ == "__main__":
  cli.experiment("maximize")
