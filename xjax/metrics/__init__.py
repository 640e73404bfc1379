"""Scores of explanations, one calling convention beside the methods'.

`metric(apply_fn, params, x, target, relevance, **options)` returns one score per example (plus
curves where the metric has them); batched and jit-compatible (the caller jits it with the
options static); ground truth comes in as options. `apply_fn`, `params`, `x` and `target` are
those the explanation method was called with (see `xjax.explain.targets`).

* `pixel_flipping`: flip pixels in the order of relevance and record the explained output
  (Bach et al. 2015; Samek et al., IEEE TNNLS 2017); the area under the curve, lower is better.
* `faithfulness_area` (Achtibat et al., AttnLRP, ICML 2024): the area between the least- and
  the most-relevant-first flipping curves of the target logit; higher is better.
* `region_perturbation` (patches, Samek et al. 2017), `insertion_deletion` (Petsiuk et al.,
  BMVC 2018) and `faithfulness_correlation` (Bhatt et al., IJCAI 2020): faithfulness;
* `completeness` (Sundararajan et al., ICML 2017; conservation, Bach et al. 2015): the sum of
  the relevance against the change of the output from a baseline;
* `max_sensitivity`, `avg_sensitivity` (Yeh et al., NeurIPS 2019): robustness, the method re-run
  on inputs with uniform noise (`explain=`);
* `model_parameter_randomisation` (Adebayo et al., NeurIPS 2018) and `random_logit` (Sixt et
  al., ICML 2020): randomisation sanity checks, the method re-run (`explain=`);
* `diffusion` (Rieger et al. 2018, Eq. 7): the distance between the explanations of the target
  and of the runner-up class, the method re-run (`explain=`);
* localisation against a ground-truth `mask` (`localisation`): `pointing_game` (Zhang et al.,
  ECCV 2016), `attribution_localisation` (Kohlbrenner et al., IJCNN 2020),
  `relevance_mass_accuracy` and `relevance_rank_accuracy` (Arras et al., Information Fusion 2022);
* complexity (`complexity`): `sparseness`, the Gini index (Chalasani et al., ICML 2020), and
  `complexity`, the entropy of the relevance shares (Bhatt et al., IJCAI 2020).

The seeds' other measures are not one score per example and are not registered: XNet's drop
losses of each neuron and category (`xjax.methods.xnet.drop_loss_matrix`, a dataset-level
matrix); SRAE's locality (`xjax.metrics.locality`: per example the mass of a heatmap in each part
cell, `part_histograms`, reduced over the dataset to an entropy, `locality_entropy`) and F_reg
(`f_reg`); and the explainer networks' location instability, which that paper's experiment adds.

The faithfulness, localisation and complexity metrics also take token sequences: x (B, T, D)
embeddings, relevance (B, T) (or (B, T, D), summed over D), a `mask` (B, T), and a baseline
embedding (D,) such as a [MASK] token's; a sequence is scored as an image of T x 1 pixels with D
channels, by the same code (`xjax.metrics.relevance`).

Where Quantus 0.6.0 (Hedstroem et al., JMLR 2023) computes the same metric, the scores are equal
to its with its normalisation off; each docstring names the differences.

Each metric registers itself in `METRICS` (`xjax.metrics.registry`) where it is defined, with
its checks, description, direction, score field and curves; `METRICS` imports the metric
modules at its first lookup, so it is complete (and in the same order) however it is imported.
"""

from xjax.metrics.completeness import completeness
from xjax.metrics.complexity import complexity, sparseness
from xjax.metrics.diffusion import diffusion
from xjax.metrics.faithfulness_area import FaithfulnessAreaResult, faithfulness_area
from xjax.metrics.faithfulness_correlation import faithfulness_correlation
from xjax.metrics.insertion_deletion import CANVASES, insertion_deletion
from xjax.metrics.localisation import (
  attribution_localisation,
  pointing_game,
  relevance_mass_accuracy,
  relevance_rank_accuracy,
)
from xjax.metrics.pixel_flipping import (
  BASELINES,
  ORDERS,
  SCORES,
  PixelFlippingResult,
  flip_counts,
  pixel_flipping,
)
from xjax.metrics.randomisation import (
  LAYER_ORDERS,
  SIMILARITIES,
  RandomisationResult,
  model_parameter_randomisation,
  random_logit,
)
from xjax.metrics.region_perturbation import region_perturbation
from xjax.metrics.registry import METRICS, get_metric
from xjax.metrics.sensitivity import NORMS, avg_sensitivity, max_sensitivity

__all__ = ["BASELINES", "CANVASES", "FaithfulnessAreaResult", "LAYER_ORDERS", "METRICS", "NORMS",
           "ORDERS", "PixelFlippingResult", "RandomisationResult", "SCORES", "SIMILARITIES",
           "attribution_localisation", "avg_sensitivity", "completeness", "complexity",
           "diffusion", "faithfulness_area", "faithfulness_correlation", "flip_counts",
           "get_metric", "insertion_deletion", "max_sensitivity", "model_parameter_randomisation",
           "pixel_flipping", "pointing_game", "random_logit", "region_perturbation",
           "relevance_mass_accuracy", "relevance_rank_accuracy", "sparseness"]
