"""SRAE x-features of a frozen network (Qi & Li, "Embedding deep networks into visual
explanations"): `python -m runs.srae --config=runs/configs/srae.py[:VARIANT] --workdir=W` trains
(or reuses) the network, extracts Z and y-hat once, trains SRAE and the NN and SAE baselines for
every chosen class (one jit call per method), and writes Table 1 (F_reg, locality, pointing
game) and the figures.

The protocol: `xjax.experiments.srae`.
"""

from runs import cli

if __name__ == "__main__":
  cli.experiment("srae")
