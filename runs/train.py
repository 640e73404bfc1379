"""Trains a model: `python -m runs.train --config=runs/configs/shapes.py:smoke --workdir=W`.

Writes the workdir of DESIGN.md (checkpoints/, metrics.jsonl, results.json, results.md, figures/);
run again with the same workdir to resume.
"""

from __future__ import annotations

from runs import cli
from xjax.train.loop import check_config, train_and_evaluate


def main(config, workdir):
  check_config(config)
  train_and_evaluate(config, workdir)


if __name__ == "__main__":
  cli.run(main)
