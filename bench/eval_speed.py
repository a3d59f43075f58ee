"""Prompt-scoring speed: today's path (length-sorted batches on the template prefix's key/value cache, one thread)
against group prefixes (prompts sharing a history run it once) at one and two threads, same prompts, one process.

    python bench/eval_speed.py                      # quick profile (ML-100K + SmolLM2), >= 192 test prompts, batch 16
    python bench/eval_speed.py --smoke-test         # tiny profile, 24 prompts

Stage-1 prompts of every row of randomly chosen users of a uniform 1,500-row test sample (the quick profile's
evaluation; per-user chronological split), so they share prefixes as that evaluation does, scored through a LoRA
adapter with random non-zero B (as after stage 1), in eval mode. The variants alternate; the plain path (caller
order, whole prompts) scores a subset with grouped rows as the reference. Also counts the shared prefixes of that
1,500-row sample. Results go into docs/performance.md by hand, with the machine line this prints.
"""

import argparse

import numpy as np

from sellarec.benchmarks import eval_speed
from sellarec.config import load_config

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--profile", default="quick")
parser.add_argument("--prompts", type=int, default=192)
parser.add_argument("--batch-size", type=int, default=16)
parser.add_argument("--repeats", type=int, default=2, help="rounds of the alternating variants")
parser.add_argument("--smoke-test", action="store_true", help="tiny profile, 24 prompts")
parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
args = parser.parse_args()
profile, n = ("tiny", 24) if args.smoke_test else (args.profile, args.prompts)
cfg = load_config(profile, overrides=["runtime.progress=false", "data.split=user_time", *args.overrides])
r = eval_speed(cfg, prompts=n, batch_size=args.batch_size, repeats=args.repeats, stats_rows=100 if args.smoke_test
               else 1500)
lengths = r["prompt_tokens"]
print(f"{len(lengths)} stage-1 prompts of whole users of a uniform {r['split']} test sample "
      f"({min(lengths)}-{max(lengths)} tokens, mean {np.mean(lengths):.0f}), batch {args.batch_size}, {r['machine']}; "
      f"load {r['load_before'][0]:.2f} before, {r['load_after'][0]:.2f} after")
for name, rate in r["prompts_per_s"].items():
    runs = ", ".join(f"{x:.2f}" for x in r["runs_prompts_per_s"][name])
    print(f"{name:10s} {rate:6.2f} prompts/s ({r['speedup'][name]:.2f}x today; runs {runs}); max |diff| vs plain "
          f"{r['max_abs_diff_vs_plain'][name]:.1e} ({r['check_rows']} rows), "
          f"vs today {r['max_abs_diff_vs_today'][name]:.1e}")
for label, s in [("timed prompts, stage 1", r["sharing"])] + [(f"{s['rows']} test rows, stage {stage}", s)
                                                              for stage, s in r["sharing_stats_rows"].items()]:
    print(f"{label}: common prefix {s['common_prefix']} tokens; {s['groups']} groups, {s['grouped_rows']} rows in "
          f"them (largest {s['largest_group']}); tokens past the common prefix {s['tokens']}, saved "
          f"{s['tokens_saved']} ({s['tokens_saved'] / s['tokens']:.1%})")
