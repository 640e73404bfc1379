"""The ground-truth benchmark of every explanation method: `runs.evaluate --config=...:shapes`.

The network of `configs/shapes.py` (the Table-1 CIFAR10 CNN of Rieger 2018) trained on built-in
`shapes` (one object per image, its exact mask known), then fine-tuned from its best parameters
with the block-wise L1 penalty (Rieger 2018, Eq. 5-6) of weight `evaluate.block_l1`. Every method
of `evaluate.methods` is scored on the first `evaluate.num_examples` test images by each metric
of `evaluate.metrics` (localisation against the object's mask, faithfulness, complexity), and
then explains the class of a second, smaller object on two-object test images (the separable-
explanations paper's question about the non-dominant class), with and without the penalty.

Variants (`--config=runs/configs/evaluate.py:VARIANT[,MODIFIER]`):
  shapes  (default) 32 x 32 shapes of 4 classes, 6000 images, 4 epochs, 64 test images scored.
  vit     the same data and questions for a small Vision Transformer (`SMALL_VIT`: 4 x 4
          patches, 4 pre-LayerNorm blocks of width 64), trained 12 epochs, scored with the
          transformer methods (AttnLRP, CP-LRP, attention rollout, the gradient-weighted
          attention of Chefer et al.) beside the gradient methods; the block-wise L1
          fine-tuning penalises its classifier only.
  full    (a modifier) the metrics that re-run every method too: max- and avg-sensitivity,
          model parameter randomisation, random logit, diffusion.
  smoke   (a modifier) a tiny run for tests: 256 images, 1 + 1 epochs, 3 methods, 8 images.
"""

import ml_collections

from runs.configs import shapes
from runs.configs.common import SMALL_VIT, parse_variants

METHODS = ("saliency", "gradient_x_input", "smoothgrad", "integrated_gradients",
           "lrp:epsilon_plus", "lrp:epsilon_gamma_box", "lrp:epsilon_alpha2_beta1", "lrp:dtd",
           "gradcam", "excitation_backprop", "contrastive_excitation_backprop", "random")

# The methods for a transformer: CAM and excitation backprop need convolutional feature maps.
VIT_METHODS = ("saliency", "gradient_x_input", "smoothgrad", "integrated_gradients",
               "lrp:attn_lrp", "lrp:cp_lrp", "attention_rollout", "generic_attention",
               "random")

# The excitation-backprop evaluation (Zhang et al., ECCV 2016) counts a hit within 15 pixels of
# the annotation on 224-pixel images: 15 / 224 of the side, 2 pixels at 32.
POINTING_TOLERANCE = 2.0

METRICS = {
    "pointing_game": {"tolerance": POINTING_TOLERANCE},
    "attribution_localisation": {},
    "relevance_mass_accuracy": {},
    "relevance_rank_accuracy": {},
    # Pixels replaced by 0, black in the unit normalisation (the background is dark).
    "pixel_flipping": {"steps": 16, "baseline": 0.0},
    # AttnLRP's faithfulness: the area between the least- and most-relevant-first curves.
    "faithfulness_area": {"steps": 16, "baseline": 0.0},
    # The first 16 of the 64 4x4 patches (a quarter of the image; the object covers about 12%).
    "region_perturbation": {"patch_size": 4, "steps": 16, "baseline": 0.0},
    "insertion_deletion": {"steps": 16},
    "faithfulness_correlation": {"subset_size": 32, "num_samples": 32},
    "sparseness": {},
    "complexity": {},
}
FULL_METRICS = {
    "max_sensitivity": {"radius": 0.05, "num_samples": 8},
    "avg_sensitivity": {"radius": 0.05, "num_samples": 8},
    "model_parameter_randomisation": {},
    "random_logit": {},
    "diffusion": {},
}


def get_config(variant: str = "shapes"):
  base, modifiers = parse_variants(variant, "evaluate.py", ("shapes", "vit"), ("full", "smoke"))
  c = shapes.get_config()
  c.name = f"evaluate_{base}"
  c.data.options = dict(image_size=32, num_classes=4, num_examples=6000)
  c.data.batch_size = 64
  c.train.epochs = 4
  c.train.log_every_steps = 40
  metrics = dict(METRICS, **(FULL_METRICS if "full" in modifiers else {}))
  c.evaluate = ml_collections.ConfigDict(dict(
      methods=METHODS,
      metrics=metrics,
      num_examples=64,
      batch_size=32,
      block_l1=1.0,  # the weight of the block-wise L1 fine-tuning (Rieger 2018's lambda)
      finetune_epochs=2,
      figure_examples=6,
      block_l1_layers=None,  # every dense layer
  ))
  if base == "vit":
    c.model = ml_collections.ConfigDict(SMALL_VIT)
    c.train.epochs = 12
    c.evaluate.methods = VIT_METHODS
    c.evaluate.block_l1_layers = ("head",)
  if "full" in modifiers:
    c.name += "_full"
  if "smoke" in modifiers:
    c.name += "_smoke"
    c.data.options = dict(c.data.options, num_examples=256)
    c.data.batch_size, c.data.eval_batch_size = 32, 64
    if base == "shapes":
      c.model.name = "cnn_fashion"
    else:
      c.model.update(hidden=16, depth=1, num_heads=2, mlp=16)
    c.train.epochs = 1
    c.train.log_every_steps = 8
    c.evaluate.methods = (("saliency", "lrp:epsilon_plus", "random") if base == "shapes"
                          else ("saliency", "lrp:attn_lrp", "random"))
    c.evaluate.num_examples = 8
    c.evaluate.batch_size = 8
    c.evaluate.finetune_epochs = 1
    c.evaluate.figure_examples = 2
  return c
