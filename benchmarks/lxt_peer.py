"""LXT's AttnLRP on a Hugging Face BERT, timed: the PyTorch side of `benchmarks.transformer`.

Runs in an environment where LXT 2.1 imports (it needs an older stack than xjax's: torch 2.6,
torchvision 0.21, transformers 4.52.4, then `pip install --no-deps lxt==2.1`), never in xjax's,
and imports nothing from xjax. It builds `BertForSequenceClassification` from the given
configuration with seeded random weights, saves them (`model.safetensors`) and the token ids
(`inputs.npz`) for xjax to load, and times LXT's efficient AttnLRP (gradient x input with LXT's
patched modules: one forward and one backward pass per explained logit) on them. It writes
`lxt.json` (seconds per call, the relevance of the first call) to `--out`.

Run: `python benchmarks/lxt_peer.py --out DIR --config JSON --batch 8 --length 128 --rounds 3`.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import numpy as np
import torch
from lxt.efficient import monkey_patch
from safetensors.torch import save_file
from transformers import BertConfig
from transformers.models.bert import modeling_bert


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--config", required=True, help="BertConfig arguments as JSON")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--length", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)

  monkey_patch(modeling_bert)  # before the model is built: LXT replaces the module's classes
  torch.manual_seed(args.seed)
  config = BertConfig(**json.loads(args.config), attn_implementation="eager")
  model = modeling_bert.BertForSequenceClassification(config).eval()
  for p in model.parameters():
    p.requires_grad_(False)
  save_file({k: v.contiguous() for k, v in model.state_dict().items()},
            str(out / "model.safetensors"))
  rng = np.random.default_rng(args.seed)
  ids = rng.integers(0, config.vocab_size, (args.batch, args.length)).astype(np.int64)
  np.savez(out / "inputs.npz", ids=ids.astype(np.int32))
  ids_t = torch.from_numpy(ids)
  with torch.no_grad():
    target = model(ids_t).logits.argmax(-1)

  def explain() -> torch.Tensor:
    embeddings = model.get_input_embeddings()(ids_t).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeddings).logits
    logits[torch.arange(args.batch), target].sum().backward()
    return (embeddings * embeddings.grad).sum(-1)

  relevance = explain()  # the first call (warm-up) gives the relevance to check
  seconds = []
  for _ in range(args.rounds):
    start = time.perf_counter()
    explain()
    seconds.append(time.perf_counter() - start)
  result = {"seconds": statistics.median(seconds), "all_seconds": seconds,
            "target": target.tolist(), "relevance": relevance.detach().numpy().tolist(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}
  (out / "lxt.json").write_text(json.dumps(result))


if __name__ == "__main__":
  main()
