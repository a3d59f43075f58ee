"""Prompt-scoring speed: the plain path (caller order, whole prompts) against length-sorted batches with the shared
prefix's key/value cache (``score_examples``' defaults), same prompts, one process.

    python bench/eval_speed.py                      # quick profile (ML-100K + SmolLM2), 96 valid prompts, batch 16
    python bench/eval_speed.py --smoke-test         # tiny profile, 24 prompts

Stage-1 prompts of the valid split, scored through a LoRA adapter with random non-zero B (as after stage 1), in eval
mode, with ``runtime.threads`` torch threads (1 by default). Prints prompts/s of each path, the ratio and the largest
absolute score difference. Results go into docs/performance.md by hand, with the machine line this prints.
"""

import argparse
import time

import numpy as np
import torch

from sellarec.runtime import describe_machine
from sellarec.config import load_config
from sellarec.data.batches import build_examples, sample_rows
from sellarec.data.dataset import load_dataset
from sellarec.models.lora import attach_lora
from sellarec.pipeline import load_run_backbone
from sellarec.runtime import cache_root, configure_threads
from sellarec.stages.evaluation import common_prefix_length, score_examples

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--profile", default="quick")
parser.add_argument("--prompts", type=int, default=96)
parser.add_argument("--batch-size", type=int, default=16)
parser.add_argument("--smoke-test", action="store_true", help="tiny profile, 24 prompts")
parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
args = parser.parse_args()
profile, n = ("tiny", 24) if args.smoke_test else (args.profile, args.prompts)
cfg = load_config(profile, overrides=["runtime.progress=false", *args.overrides])
configure_threads(cfg.runtime)
torch.manual_seed(0)
cache = cache_root(cfg.runtime)
ds = load_dataset(cfg.data, cache)
backbone = load_run_backbone(cfg, ds, cache)
model = attach_lora(backbone.model, cfg.stage1.lora, trainable=False)
with torch.no_grad():
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.normal_(0, 0.02)
rows = sample_rows(ds.split("valid"), n, cfg.eval.max_rows_per_user, seed=0)
examples = build_examples(ds, rows, backbone.tokenizer, stage=1, max_length=cfg.backbone.max_length,
                          with_answer=False)
common = dict(batch_size=args.batch_size, score_fn=cfg.eval.score_fn, model=model)
score_examples(backbone, examples[:4], **common)  # warm-up: first-call allocations and lazy inits

timings, scores = {}, {}
for path, fast in (("plain", False), ("fast", True)):
    start = time.perf_counter()
    scores[path] = score_examples(backbone, examples, sort_by_length=fast, share_prefix=fast, **common)
    timings[path] = len(examples) / (time.perf_counter() - start)

lengths = [len(e.ids) for e in examples]
print(f"{len(examples)} stage-1 prompts ({min(lengths)}-{max(lengths)} tokens, mean {np.mean(lengths):.0f}; "
      f"shared prefix {common_prefix_length(examples)}), batch {args.batch_size}, {describe_machine()}")
print(f"plain {timings['plain']:.2f} prompts/s, fast {timings['fast']:.2f} prompts/s "
      f"({timings['fast'] / timings['plain']:.2f}x); max abs score diff "
      f"{np.abs(scores['fast'] - scores['plain']).max():.1e}")
