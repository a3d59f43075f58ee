"""Bad paths, URIs and data fail before any work (issue 13): one line on stderr, exit code 2, and nothing written.

Every case runs the real command line in a subprocess (no Ray starts: the checks come first). The folder the case
works in holds only its inputs afterwards; the stage cache lives elsewhere (a dataset that processes fine but cannot
train is rejected after its processed copy is cached, which is no run output).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
       "MLFLOW_DISABLE_TELEMETRY": "true"}
CSV = {"three.csv": "user,item,rating,timestamp,title\n1,1,5,1,A\n1,2,1,2,B\n1,3,5,3,C\n",
       "columns.csv": "user,item,rating\n1,1,5\n",
       "text.csv": "user,item,rating,timestamp,title\n1,1,five,1,A\n",
       "empty.csv": ""}
SEARCH, ABLATE, REPORT, CLI = "tune/search.py", "ablations/run.py", "ablations/report.py", "-m sellarec"
STORE = "sqlite:///{tmp}/m.db"

CASES = [  # (id, program, arguments, the one line's expected fragment)
    ("search-storage-unwritable", SEARCH, "--smoke-test --storage /proc/x --tracking-uri " + STORE,
     "ConfigError: --storage /proc/x: cannot write in /proc"),
    ("search-storage-file", SEARCH, "--smoke-test --storage {tmp}/file --tracking-uri " + STORE,
     "--storage {tmp}/file is a file, not a folder"),
    ("search-report-dir-unwritable", SEARCH, "--smoke-test --report-dir /proc/x --storage {tmp}/s --tracking-uri "
     + STORE, "--report-dir /proc/x: cannot write in /proc"),
    ("search-tracking-uri-scheme", SEARCH, "--smoke-test --tracking-uri garbage://x --storage {tmp}/s",
     "--tracking-uri garbage://x: MLflow accepts sqlite://"),
    ("search-tracking-uri-plain-path", SEARCH, "--smoke-test --tracking-uri {tmp}/m.db --storage {tmp}/s",
     "--tracking-uri {tmp}/m.db: MLflow accepts"),
    ("search-config-missing", SEARCH, "--smoke-test --config {tmp}/none.yaml --storage {tmp}/s --tracking-uri "
     + STORE, "--config {tmp}/none.yaml does not exist"),
    ("ablate-tracking-uri-scheme", ABLATE, "--smoke-test --tracking-uri garbage://x --storage {tmp}/s",
     "--tracking-uri garbage://x: MLflow accepts"),
    ("ablate-cache-dir-unwritable", ABLATE, "--smoke-test --cache-dir /proc/x --storage {tmp}/s --tracking-uri "
     + STORE, "--cache-dir /proc/x: cannot write in /proc"),
    ("ablate-storage-unwritable", ABLATE, "--smoke-test --storage /proc/x --tracking-uri " + STORE,
     "--storage /proc/x: cannot write in /proc"),
    ("ablate-import-runs-missing", ABLATE, "--smoke-test --import-runs {tmp}/none.jsonl --storage {tmp}/s "
     "--tracking-uri " + STORE, "--import-runs {tmp}/none.jsonl: no such file"),
    ("ablate-import-runs-not-json", ABLATE, "--smoke-test --import-runs {tmp}/columns.csv --storage {tmp}/s "
     "--tracking-uri " + STORE, "--import-runs {tmp}/columns.csv: line 1 is not JSON"),
    ("report-tracking-uri-scheme", REPORT, "--smoke-test --tracking-uri garbage://x --out {tmp}/r.md",
     "--tracking-uri garbage://x: MLflow accepts"),
    ("report-unknown-profile", REPORT, "--spec components --profile tinyy --tracking-uri " + STORE,
     "ConfigError: unknown profile 'tinyy' (did you mean 'tiny'?"),
    ("report-out-folder", REPORT, "--smoke-test --out {tmp}", "--out {tmp} is a folder; pass a file name"),
    ("report-out-unwritable", REPORT, "--smoke-test --out /proc/x.md", "--out /proc/x.md: cannot write in /proc"),
    ("train-out-unwritable", CLI, "train --profile tiny --out /proc/x", "--out /proc/x: cannot write in /proc"),
    ("train-out-file", CLI, "train --profile tiny --out {tmp}/file", "--out {tmp}/file is a file, not a folder"),
    ("train-cache-dir-unwritable", CLI, "train --profile tiny --cache-dir /proc/x --out {tmp}/o",
     "--cache-dir /proc/x: cannot write in /proc"),
    ("train-config-folder", CLI, "train --profile tiny --config {tmp} --out {tmp}/o",
     "--config {tmp} is a folder; pass a file"),
    ("train-csv-columns", CLI, "train --profile tiny --dataset csv --data-dir {tmp}/columns.csv --out {tmp}/o",
     "lacks column(s) timestamp, title"),
    ("train-csv-text-ratings", CLI, "train --profile tiny --dataset csv --data-dir {tmp}/text.csv --out {tmp}/o",
     "csv column 'rating' must be numeric"),
    ("train-csv-empty", CLI, "train --profile tiny --dataset csv --data-dir {tmp}/empty.csv --out {tmp}/o",
     "cannot be parsed"),
    ("train-csv-three-rows", CLI, "train --profile tiny --dataset csv --data-dir {tmp}/three.csv --out {tmp}/o",
     "DataError: the valid split of csv has no row with an earlier positive"),
    ("train-csv-folder", CLI, "train --profile tiny --dataset csv --data-dir {tmp} --out {tmp}/o",
     "is a folder; pass --data-dir PATH/TO/FILE.csv, the file itself"),
    ("data-dir-for-embedded-ml100k", CLI, "data stats --data-dir {tmp}",
     "data.data_dir='{tmp}' is for ml1m, amazon-book and csv; ml100k is embedded"),
]
if not torch.cuda.is_available():
    CASES.append(("train-cuda-without-gpu", CLI, "train --profile tiny --set runtime.device=cuda --out {tmp}/o",
                  "ResourceError: device='cuda' asks for CUDA but torch sees no GPU"))


@pytest.mark.parametrize("program, arguments, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                                                         program: str, arguments: str, expected: str) -> None:
    (tmp_path / "file").write_text("")
    for name, text in CSV.items():
        (tmp_path / name).write_text(text)
    inputs = set(tmp_path.iterdir())
    cache = tmp_path_factory.mktemp("cache")
    words = arguments.format(tmp=tmp_path).split()
    command = [sys.executable, *program.split(), *words]
    if program == CLI and "--cache-dir" not in words:
        command += ["--cache-dir", str(cache)]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and expected.format(tmp=tmp_path) in lines[0], result.stderr[-2000:]
    assert set(tmp_path.iterdir()) == inputs          # no run folder, store, storage or report appeared
