"""Per-stage figures of finished `sellarec train` runs that `python -m sellarec compare` (final stage only) leaves out:
each stage's valid and test AUC with interval and rows, the selection history of the LLM stages, stage 3's injected
token norms against the vocabulary's, and stage 2's alignment cosine. docs/results.md quotes it.

    python bench/run_diagnostics.py runs/quick-seeds/sella-s0 runs/quick-seeds/sella-s1 ...
"""

import argparse
import json
from pathlib import Path


def auc(split: dict) -> str:
    """``0.7666 [0.738, 0.793] n=1500 (631 users)``, or n/a."""
    if not split or "auc" not in split:
        return "n/a"
    ci = f" [{split['auc_ci_low']:.3f}, {split['auc_ci_high']:.3f}]" if "auc_ci_low" in split else ""
    return f"{split['auc']:.4f}{ci} n={int(split.get('rows', 0))} ({int(split.get('users', 0))} users)"


parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("runs", nargs="+", type=Path)
for folder in parser.parse_args().runs:
    metrics = json.loads((folder / "metrics.json").read_text())
    print(f"## {folder}")
    for stage in ("stage1", "stage2", "stage3"):
        m = metrics.get(stage)
        if not m:
            continue
        print(f"- {stage}: valid {auc(m.get('valid'))}; test {auc(m.get('test'))}; "
              f"warm {auc(m.get('test_warm'))}; cold {auc(m.get('test_cold'))}; {m.get('seconds', 0):.0f} s")
        for record in m.get("history", []):
            values = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "step")
            print(f"  - step {record['step']}: {values}")
        norms = m.get("norms", {})
        if norms:  # mean L2 norm of each injected token's vector (before/after training) and of the vocabulary's
            print("  - norms: " + ", ".join(f"{k.removeprefix('norms/')} {v:.3f}" for k, v in sorted(norms.items())))
