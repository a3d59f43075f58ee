"""Carry an ablation's finished runs from one MLflow store into another (another machine, a fresh clone).

A CPU ablation can take longer than one machine is held, and its store and stage cache stay behind with it. So the
report publishes, beside its table, every run it read as one JSON line (``<report>.runs.jsonl``: the run's tags,
params and final metric values, nothing of the data or the weights), and ``ablate --import-runs FILE`` logs each
line whose cell, seed, run key and data fingerprint match a job of the spec into the store as a FINISHED child of
the parent, tagged ``imported_from``. The runner then skips those jobs as it skips any finished one, and the report
reads imported and local runs alike (its footer names every machine and commit behind them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sellarec.ablation.records import selected_runs
from sellarec.ablation.spec import Job
from sellarec.atomic_files import write_text_atomic
from sellarec.errors import ConfigError
from sellarec.experiment.tracking import FINISHED, RunTracker, log_values

__all__ = ["RUNS_SUFFIX", "runs_path", "export_runs", "read_runs", "import_runs", "kernel_set", "kernel_warnings"]

RUNS_SUFFIX = ".runs.jsonl"
_FIELDS = ("run_name", "start_time", "end_time", "tags", "params", "metrics")
_NOT_CARRIED = ("mlflow.", "superseded")   # MLflow's own (parent, name, user) and the old store's selection
# Params that name a folder of the machine that ran (outside every stage and run key): a published file holds none.
_MACHINE_PARAMS = ("runtime.cache_dir",)
_KERNELS = re.compile(r"\((\w+) kernels\)")   # as runtime.describe_machine writes it


def runs_path(report: Path) -> Path:
    """Where the report at ``report`` (``docs/ablations/x.md``) publishes its runs (``docs/ablations/x.runs.jsonl``)."""
    return Path(report).with_suffix(RUNS_SUFFIX)


def export_runs(tracking_uri: str, ablation: str, profile: str, path: Path, experiment: str) -> int:
    """Write the runs the report of ``ablation`` on ``profile`` reads to ``path``, one JSON object per line, sorted
    by cell index, cell and seed; returns how many. The parent's ``machine`` goes onto each run that has none.

    Raises:
        DataError: no such store, ablation or finished run.
    """
    parent, runs = selected_runs(tracking_uri, ablation, profile, experiment)
    machine = parent.data.tags.get("machine", "")
    lines = []
    for run in sorted(runs, key=lambda r: (int(r.data.tags.get("cell_index", 10**6)), r.data.tags["cell"],
                                           int(r.data.tags["seed"]))):
        tags = {k: v for k, v in run.data.tags.items() if not k.startswith(_NOT_CARRIED)}
        tags.setdefault("machine", machine)
        record = {"run_name": run.info.run_name, "start_time": run.info.start_time, "end_time": run.info.end_time,
                  "tags": dict(sorted(tags.items())),
                  "params": {k: v for k, v in sorted(run.data.params.items()) if k not in _MACHINE_PARAMS},
                  "metrics": dict(sorted(run.data.metrics.items()))}
        lines.append(json.dumps(record, sort_keys=True, allow_nan=True))
    write_text_atomic(Path(path), "".join(f"{line}\n" for line in lines))
    return len(lines)


def read_runs(path: Path | str) -> list[dict[str, Any]]:
    """The runs exported at ``path`` (checked before any work: a bad file is one :class:`ConfigError`)."""
    path = Path(path)
    where = f"--import-runs {path}"
    if not path.is_file():
        raise ConfigError(f"{where}: no such file; pass a report's runs file, e.g. docs/ablations/components"
                          f"{RUNS_SUFFIX}")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise ConfigError(f"{where}: line {number} is not JSON ({error}); regenerate the file with the "
                              "ablation's report") from None
        missing = [f for f in _FIELDS if f not in record] + [t for t in ("cell", "seed", "run_key")
                                                              if t not in record.get("tags", {})]
        if missing:
            raise ConfigError(f"{where}: line {number} lacks {', '.join(missing)}; regenerate the file with the "
                              "ablation's report")
        records.append(record)
    return records


def import_runs(tracker: RunTracker, parent_id: str, records: Iterable[Mapping[str, Any]], jobs: Iterable[Job],
                fingerprints: Mapping[tuple[str, str], str], source: str) -> tuple[int, list[str]]:
    """Log each record matching a job (cell, seed, run key, data fingerprint) that has no FINISHED run under
    ``parent_id`` yet as a FINISHED child; returns (runs imported, why each other record was not).

    Args:
        tracker: the store to import into.
        parent_id: the ablation's parent run there.
        records: :func:`read_runs`' records.
        jobs: the spec's jobs.
        fingerprints: the data fingerprint of each job's (cell, seed), as this machine computes it.
        source: what the records came from (the file as typed), kept as the ``imported_from`` tag.
    """
    wanted = {(j.cell.name, str(j.seed)): j.run_key for j in jobs}
    have = {(r.data.tags.get("cell"), r.data.tags.get("seed"), r.data.tags.get("run_key"))
            for r in tracker.children(parent_id) if r.info.status == FINISHED}
    imported, skipped, other_cells = 0, [], []
    for record in records:
        tags = record["tags"]
        ident = (tags["cell"], str(tags["seed"]))
        name = f"{ident[0]} seed {ident[1]}"
        if wanted.get(ident) != tags["run_key"]:
            other_cells.append(ident[0])   # e.g. another spec's cells: one line for all of them
            continue
        if tags.get("data_fingerprint") != fingerprints.get(ident):
            skipped.append(f"{name}: data fingerprint {tags.get('data_fingerprint')} differs from this machine's "
                           f"{fingerprints.get(ident)}")
            continue
        if (*ident, tags["run_key"]) in have:
            continue   # imported before, or finished here
        run = tracker.client.create_run(tracker.experiment_id, start_time=record["start_time"],
                                        run_name=record["run_name"],
                                        tags={**tags, "mlflow.parentRunId": parent_id, "imported_from": source})
        log_values(tracker.client, run.info.run_id, params=record["params"], metrics=record["metrics"])
        tracker.client.set_terminated(run.info.run_id, FINISHED, end_time=record["end_time"])
        imported += 1
    if other_cells:
        cells = ", ".join(dict.fromkeys(other_cells))
        skipped.append(f"{len(other_cells)} runs are not jobs of this spec (other configurations; cells {cells})")
    return imported, skipped


def kernel_set(machine: str) -> str | None:
    """The CPU kernel set a ``machine`` line names (``AMD EPYC (AVX512 kernels), ...`` -> ``AVX512``); None for a line
    written before the kernel set was recorded."""
    found = _KERNELS.search(machine or "")
    return found.group(1) if found else None


def kernel_warnings(records: Iterable[Mapping[str, Any]], machine: str) -> list[str]:
    """One line for each CPU kernel set among ``records`` (imported runs) other than ``machine``'s.

    Stage 1 trained with AVX2 kernels and with AVX512 kernels under one stage key gives other LoRA weights, and stage
    3 amplifies that (bench/kernel_repro.sh, docs/results.md): a job run here is then not paired with an imported
    one at its seed through the same stage-1/2 models, so paired differences also carry the machines' difference.
    """
    mine = kernel_set(machine)
    counts: dict[str | None, int] = {}
    for record in records:
        theirs = kernel_set(record["tags"].get("machine", ""))
        if theirs != mine:
            counts[theirs] = counts.get(theirs, 0) + 1
    lines = []
    for theirs, count in sorted(counts.items(), key=lambda item: str(item[0])):
        made = f"with {theirs} CPU kernels" if theirs else "with a CPU kernel set they do not name"
        lines.append(f"{count} imported runs were made {made}, this machine runs {mine or 'unknown'} kernels: stages "
                     "trained here differ in their bits from the same stages there (bench/kernel_repro.sh), so "
                     "pairs at one seed do not share their stage-1/2 models; finish the ablation on one kind of "
                     "machine (ATEN_CPU_CAPABILITY=avx2 makes a newer CPU run AVX2 kernels)")
    return lines
