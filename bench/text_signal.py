"""What a model reading only the stage-1 text prompt could know about the answer: AUC of simple item-side scores on
the exact valid and test rows the quick profile evaluates (uniform samples, seeds 0-2), beside a user-side score the
prompt does not show. docs/results.md quotes it to explain a stage-1 LLM at chance.

    python bench/text_signal.py [--profile quick] [--seeds 0 1 2]

Scores (all from the train split only):
  item positive rate   (positives + 1) / (ratings + 2) of the target item: what memorising titles could give
  release year         minus the year in the target's title: older films are rated higher on ML-100K
  user positive rate   the user's share of positive train ratings: the prompt lists liked titles only, so hidden
"""

import argparse
import re

import numpy as np

from sellarec.config import load_config
from sellarec.data.batches import sample_rows
from sellarec.data.dataset import load_dataset
from sellarec.metrics import auc, bootstrap_ci
from sellarec.runtime import cache_root

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--profile", default="quick")
parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
args = parser.parse_args()
cfg = load_config(args.profile, overrides=["runtime.progress=false"])
ds = load_dataset(cfg.data, cache_root(cfg.runtime))
train = ds.split("train", raw=True)
item_rate = ((train.groupby("item")["label"].sum() + 1) / (train.groupby("item")["label"].count() + 2))
user_rate = train.groupby("user")["label"].mean()
years = np.array([float(m.group(1)) if (m := re.search(r"\((\d{4})\)\s*$", t)) else np.nan for t in ds.titles])
scores = {"item positive rate": lambda r: r["item"].map(item_rate).fillna(0.5).to_numpy(),
          "release year (older first)": lambda r: -np.nan_to_num(years[r["item"].to_numpy()],
                                                                 nan=np.nanmedian(years)),
          "user positive rate (not in the prompt)": lambda r: r["user"].map(user_rate).fillna(0.5).to_numpy()}
print(f"{ds.name}, split {cfg.data.split}, profile {args.profile}; rows drawn as the pipeline draws them "
      f"({cfg.eval.max_valid_samples} valid, {cfg.eval.max_test_samples} test); 95 % user-bootstrap intervals")
print("| score | seed | valid AUC [95% CI] | test AUC [95% CI] | test rows (users) |")
print("|---|---|---|---|---|")
for name, score in scores.items():
    for seed in args.seeds:
        cells = []
        for split, n, offset in (("valid", cfg.eval.max_valid_samples, 0), ("test", cfg.eval.max_test_samples, 1)):
            rows = sample_rows(ds.split(split), n, seed + offset)
            s, y, u = score(rows), rows["label"].to_numpy(), rows["user"].to_numpy()
            lo, hi = bootstrap_ci(u, y, s, n_samples=cfg.eval.bootstrap_samples, seed=seed)
            cells.append(f"{auc(y, s):.4f} [{lo:.3f}, {hi:.3f}]")
        print(f"| {name} | {seed} | {cells[0]} | {cells[1]} | {len(rows)} ({rows['user'].nunique()}) |")
