"""XNet against its baseline (David & Liu 2019): `python -m runs.xnet
--config=runs/configs/xnet.py[:VARIANT] --workdir=W`; run it again to resume.

The protocol, its results and figures: `xjax.experiments.xnet`.
"""

from runs import cli

if __name__ == "__main__":
  cli.experiment("xnet")
