"""Prompt-scoring speed: the plain path (caller order, whole prompts) against length-sorted batches with the shared
prefix's key/value cache (``score_examples``' defaults), same prompts, one process.

    python bench/eval_speed.py                      # quick profile (ML-100K + SmolLM2), 96 valid prompts, batch 16
    python bench/eval_speed.py --smoke-test         # tiny profile, 24 prompts

Stage-1 prompts of the valid split, scored through a LoRA adapter with random non-zero B (as after stage 1), in eval
mode, with ``runtime.threads`` torch threads (1 by default). Prints prompts/s of each path, the ratio and the largest
absolute score difference. Results go into docs/performance.md by hand, with the machine line this prints.
"""

import argparse

import numpy as np

from sellarec.benchmarks import eval_speed
from sellarec.config import load_config

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--profile", default="quick")
parser.add_argument("--prompts", type=int, default=96)
parser.add_argument("--batch-size", type=int, default=16)
parser.add_argument("--smoke-test", action="store_true", help="tiny profile, 24 prompts")
parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
args = parser.parse_args()
profile, n = ("tiny", 24) if args.smoke_test else (args.profile, args.prompts)
result = eval_speed(load_config(profile, overrides=["runtime.progress=false", *args.overrides]), prompts=n,
                    batch_size=args.batch_size)
lengths = result["prompt_tokens"]
print(f"{len(lengths)} stage-1 prompts ({min(lengths)}-{max(lengths)} tokens, mean {np.mean(lengths):.0f}; shared "
      f"prefix {result['shared_prefix']}), batch {args.batch_size}, {result['machine']}")
print(f"plain {result['plain_prompts_per_s']:.2f} prompts/s, fast {result['fast_prompts_per_s']:.2f} prompts/s "
      f"({result['speedup']:.2f}x); max abs score diff {result['max_abs_score_diff']:.1e}")
