"""Stage-3 step speed: our fast step against a step written the official way, same batches, one process.

    python bench/stage3.py                       # quick profile (ML-100K + SmolLM2), batch 8, 3 batches, 1 thread
    python bench/stage3.py --profile tiny --batches 2

Checks that both steps give the same loss and the same gradients on every trainable tensor, then prints samples/s
and the speed-up. Results go into docs/performance.md by hand, with the machine line this prints.
"""

import argparse
import json

from sellarec.benchmarks import stage3_step
from sellarec.config import load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    cfg = load_config(args.profile, overrides=["runtime.progress=false", *args.overrides])
    result = stage3_step(cfg, batches=args.batches, batch_size=args.batch_size)
    print(json.dumps({k: v for k, v in result.items() if k not in ("step_seconds", "losses", "prompt_tokens")},
                     indent=2))
    print(f"official {result['official_samples_per_s']:.3f} samples/s, ours {result['fast_samples_per_s']:.3f} "
          f"samples/s ({result['speedup']:.1f}x; {result['speedup_exact']:.1f}x with the prefix loss value); "
          f"loss diff {result['max_rel_loss_diff']:.1e}, gradient diff {result['max_rel_grad_diff']:.1e} (relative)")


if __name__ == "__main__":
    main()
