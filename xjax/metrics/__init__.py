"""Scores of explanations, one calling convention beside the methods'.

`metric(apply_fn, params, x, target, relevance, **options)` returns one score per example (plus
curves where the metric has them); batched and jit-compatible (the caller jits it with the
options static); ground truth comes in as options. `apply_fn`, `params`, `x` and `target` are
those the explanation method was called with (see `xjax.explain.targets`).

* `pixel_flipping`: flip pixels in the order of relevance and record the explained output
  (Bach et al. 2015; Samek et al., IEEE TNNLS 2017); the area under the curve, lower is better.
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

Where Quantus 0.6.0 (Hedstroem et al., JMLR 2023) computes the same metric, the scores are equal
to its with its normalisation off; each docstring names the differences.

This package registers the metrics in `METRICS` (`xjax.metrics.registry`, which imports no
metric): importing any module of `xjax.metrics` imports this one first, so the registry is
always complete.
"""

from xjax.metrics.completeness import completeness
from xjax.metrics.complexity import complexity, sparseness
from xjax.metrics.diffusion import diffusion
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
from xjax.registry import Check, at_least, in_range, non_negative, one_of, positive

_count = Check(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
               "a Python int >= 1")
_optional_count = Check(lambda v: v is None or _count(v), "None or a Python int >= 1")
_at_least_two = Check(lambda v: _count(v) and v >= 2, "a Python int >= 2")
_flag = Check(lambda v: isinstance(v, bool), "True or False")
_explain = Check(callable, "a function explain(params, x, target) -> relevance")
_baseline = Check(lambda v: not isinstance(v, str) or v in BASELINES,
                  f"a number, an array or one of {', '.join(BASELINES)}")
_canvas = Check(lambda v: not isinstance(v, str) or v in CANVASES,
                f"a number, an array or one of {', '.join(CANVASES)}")

METRICS.register(
    "pixel_flipping", pixel_flipping,
    checks={"steps": _count,
            "fraction": in_range(0, 1, include_low=False),
            "max_batch": _optional_count, "baseline": _baseline,
            "order": one_of(*ORDERS),
            "score": one_of(*SCORES)},
    # higher_is_better is that of the default order, most relevant first; with
    # order="least_relevant_first" a higher area is the better explanation.
    description="pixel flipping: the explained output as the most relevant pixels are replaced, "
                "and the area under it (Samek et al. 2017)",
    higher_is_better=False)

METRICS.register(
    "region_perturbation", region_perturbation,
    checks={"patch_size": _count,
            "steps": _optional_count,
            "order": one_of(*ORDERS), "baseline": _canvas, "blur_sigma": at_least(0),
            "score": one_of(*SCORES), "max_batch": _optional_count},
    # The area under the most-relevant-first curve; the result's `aopc` is higher-is-better.
    description="region perturbation: the explained output as the most relevant patches are "
                "replaced, its area and AOPC (Samek et al. 2017)",
    higher_is_better=False)
METRICS.register(
    "insertion_deletion", insertion_deletion,
    checks={"steps": _count, "fraction": in_range(0, 1, include_low=False),
            "deletion_baseline": _canvas, "insertion_baseline": _canvas,
            "blur_sigma": at_least(0), "score": one_of(*SCORES), "max_batch": _optional_count},
    # For the insertion area; the result's `deletion_area` is lower-is-better.
    description="insertion and deletion: the class probability as the most relevant pixels are "
                "inserted into a blurred canvas or deleted, and the areas (Petsiuk et al. 2018)",
    higher_is_better=True)
METRICS.register(
    "faithfulness_correlation", faithfulness_correlation,
    checks={"subset_size": _count,
            "num_samples": _at_least_two,
            "baseline": _baseline, "score": one_of(*SCORES), "max_batch": _optional_count},
    description="faithfulness correlation: the Pearson correlation of the relevance of random "
                "subsets and the drop of the output when they are removed (Bhatt et al. 2020)",
    higher_is_better=True)

_broadcast_baseline = Check(lambda v: v is not None and not isinstance(v, (str, bytes)),
                            "a number or an array broadcastable to x")
_sensitivity_checks = {"explain": _explain, "radius": positive, "num_samples": _count,
                       "norm": one_of(*NORMS)}

METRICS.register(
    "completeness", completeness,
    checks={"baseline": _broadcast_baseline, "relative": _flag},
    # A signed error, best at 0: neither higher nor lower is better.
    description="completeness: the sum of the relevance minus the change of the explained output "
                "from the baseline (Sundararajan et al. 2017; Bach et al. 2015)",
    higher_is_better=None)
METRICS.register(
    "model_parameter_randomisation", model_parameter_randomisation,
    checks={"explain": _explain, "order": one_of(*LAYER_ORDERS),
            "similarity": one_of(*SIMILARITIES), "cascade": _flag},
    # The similarity to the original explanation as layers are randomised: lower is better.
    description="model parameter randomisation: the similarity of the explanation to the "
                "original as the layers are randomised from the top (Adebayo et al. 2018)",
    higher_is_better=False)
METRICS.register(
    "random_logit", random_logit,
    checks={"explain": _explain,
            "num_classes": _at_least_two,
            "similarity": one_of(*SIMILARITIES)},
    description="random logit: the similarity of the explanation of a random other class to "
                "that of the target (Sixt et al. 2020)",
    higher_is_better=False)
METRICS.register(
    "diffusion", diffusion,
    checks={"explain": _explain, "unit": _flag},
    description="diffusion: the distance between the (unit) explanations of the target and the "
                "runner-up class (Rieger et al. 2018, Eq. 7)",
    higher_is_better=True)
METRICS.register(
    "max_sensitivity", max_sensitivity,
    checks=_sensitivity_checks,
    description="max-sensitivity: the largest relative change of the explanation under uniform "
                "input noise (Yeh et al. 2019)",
    higher_is_better=False)
METRICS.register(
    "avg_sensitivity", avg_sensitivity,
    checks=_sensitivity_checks,
    description="avg-sensitivity: the mean relative change of the explanation under uniform "
                "input noise (Yeh et al. 2019)",
    higher_is_better=False)

METRICS.register(
    "pointing_game", pointing_game,
    checks={"tolerance": non_negative},
    description="pointing game: 1 where the most relevant pixel lies within `tolerance` pixels of "
                "the ground-truth mask (Zhang et al. 2016)",
    higher_is_better=True)
METRICS.register(
    "attribution_localisation", attribution_localisation,
    checks={"positive_only": _flag, "weighted": _flag},
    description="attribution localisation: the share of the positive relevance inside the "
                "ground-truth mask (Kohlbrenner et al. 2020)",
    higher_is_better=True)
METRICS.register(
    "relevance_mass_accuracy", relevance_mass_accuracy,
    description="relevance mass accuracy: the share of the (signed) relevance inside the "
                "ground-truth mask (Arras et al. 2022)",
    higher_is_better=True)
METRICS.register(
    "relevance_rank_accuracy", relevance_rank_accuracy,
    description="relevance rank accuracy: the share of the K most relevant pixels inside the "
                "ground-truth mask of K pixels (Arras et al. 2022)",
    higher_is_better=True)
METRICS.register(
    "sparseness", sparseness,
    checks={"sum_channels": _flag},
    description="sparseness: the Gini index of the absolute relevance (Chalasani et al. 2020)",
    higher_is_better=True)
METRICS.register(
    "complexity", complexity,
    checks={"sum_channels": _flag},
    description="complexity: the entropy of the shares of the absolute relevance (Bhatt et al. "
                "2020)",
    higher_is_better=False)

__all__ = ["BASELINES", "METRICS", "ORDERS", "PixelFlippingResult", "RandomisationResult",
           "SCORES", "attribution_localisation", "avg_sensitivity", "completeness", "complexity",
           "diffusion", "faithfulness_correlation", "flip_counts", "get_metric",
           "insertion_deletion",
           "max_sensitivity", "model_parameter_randomisation", "pixel_flipping", "pointing_game",
           "random_logit", "region_perturbation", "relevance_mass_accuracy",
           "relevance_rank_accuracy", "sparseness"]
