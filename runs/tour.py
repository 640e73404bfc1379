"""The tour: `python -m runs.tour --config=runs/configs/tour.py --workdir=W` trains a small network
on the built-in shapes and explains it with eight methods, scored against the objects' masks.

The protocol: `xjax.experiments.tour`.
"""

from runs import cli

if __name__ == "__main__":
  cli.experiment("tour")
