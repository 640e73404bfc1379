"""Scores explanation methods by metrics: `python -m runs.evaluate`.

  --config=runs/configs/evaluate.py[:VARIANT] --workdir=W
      the ground-truth benchmark: trains (or resumes) a network on built-in shapes and its
      block-wise L1 fine-tuning, scores every method (`xjax.experiments.evaluate`); run it
      again to resume.
  --workdir=W --methods=saliency,lrp:epsilon_plus --metrics=pixel_flipping,... --n=N
      any trained run's explanations scored; written to W/evaluation/.
"""

from runs import cli

if __name__ == "__main__":
  cli.evaluate()
