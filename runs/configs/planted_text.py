"""The built-in planted-text task (`xjax.data.planted_text`) with a tiny BERT or LLaMA.

Variants: a model, `bert` (the default: the classifier reads [CLS]) or `llama` (a causal decoder
that reads its decision at the last position, [END]), combined with any of `agreement` (the
long-range form; default: `keywords`) and `smoke` (2048 sequences, 2 epochs: seconds), e.g.
`:llama,agreement` or `:bert,smoke`. The model's vocabulary follows the data's
(`--config.data.options.vocab_size=64` changes both).

Both models are 2 layers of width 32 with 2 heads (about 22k parameters), trained for 5 epochs
of 10000 sequences: on a 2-core CPU each of the four runs reaches a test accuracy of 1.000 in
under a minute (about 30 s of training), see docs/data.md.
"""

import ml_collections

from runs.configs.common import base_config, parse_variants

MODELS = {
    "bert": dict(name="bert", hidden=32, depth=2, num_heads=2, mlp=64, max_positions=64),
    "llama": dict(name="llama", hidden=32, depth=2, num_heads=2, mlp=64, positions="last"),
}


def get_config(variant: str = ""):
  model, modifiers = parse_variants(variant, "planted_text.py", ("bert", "llama"),
                                    ("agreement", "smoke"))
  form = "agreement" if "agreement" in modifiers else "keywords"
  c = base_config()
  c.name = f"planted_text_{form}_{model}"
  c.data.name = "planted_text"
  vocab_size = ml_collections.FieldReference(48)
  c.data.options = ml_collections.ConfigDict(dict(form=form, length=24, vocab_size=vocab_size))
  c.data.batch_size = 64
  c.data.eval_batch_size = 256
  c.model = ml_collections.ConfigDict(dict(MODELS[model], vocab_size=vocab_size))
  c.optimizer.learning_rate = 3e-3
  c.train.epochs = 5
  c.train.early_stopping_patience = 3
  c.train.log_every_steps = 50
  c.train.checkpoint_every_steps = 500
  if "smoke" in modifiers:
    c.name += "_smoke"
    c.data.options.num_examples = 2048
    c.train.epochs = 2
    c.train.log_every_steps = 8
    c.train.checkpoint_every_steps = 32
  return c
