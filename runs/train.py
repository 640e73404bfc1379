"""Trains a model: `python -m runs.train --config=runs/configs/shapes.py:smoke --workdir=W`.

Writes config.json, checkpoints/, metrics.jsonl, results.json, results.md and
figures/training_curves.png; run it again with the same workdir to resume.
"""

from __future__ import annotations

from runs import cli
from xjax.experiments.runner import train_run
from xjax.train.config_checks import check_config


def main(config, workdir, resume_with_changes=False):
  check_config(config)
  return train_run(config, workdir, resume_with_changes=resume_with_changes)


if __name__ == "__main__":
  cli.run(main)
