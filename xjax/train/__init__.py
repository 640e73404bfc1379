"""Training: loss terms, the train and eval steps, checkpoints and the loop (`xjax.train.loop`).

Importing the package registers the generative models' loss terms (`xjax.train.generative`), so
that `LOSS_TERMS` knows them from any entrypoint.
"""

from xjax.train import generative  # noqa: F401 (registers contrastive_divergence, ...)
