"""Expand an ablation spec into cells (table rows) and jobs (cells x seeds), checking every configuration first.

How the modes build their cells is described in :mod:`sellarec.ablation.spec`. Components combine by merging their
``set`` changes (two components setting one key to different values cannot be combined) and by dropping every
``remove``d element from the full model's list. Each cell's configuration is loaded, validated and checked for
settings that would only fail inside stage 3, so that nothing runs when any cell is wrong.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Sequence
from typing import Any

from sellarec.ablation.spec import FULL, AblationSpec, Cell, Change, Job
from sellarec.config import SellaConfig, apply_overrides, config_key, load_config, to_flat_dict
from sellarec.errors import ConfigError

__all__ = ["expand_cells", "expand_jobs", "combine_changes"]


def combine_changes(changes: Sequence[Change], full: SellaConfig, where: str) -> dict[str, Any]:
    """The dotted overrides that apply all ``changes`` to the full model's configuration ``full``.

    Raises:
        ConfigError: two changes set one key to different values, a key is both set and removed from, or a
            ``remove`` names an unknown key, a non-list field or an element the full model's list lacks.
    """
    flat = to_flat_dict(full)
    out: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for change in changes:
        for key, value in change.set.items():
            if key in out and out[key] != value:
                raise ConfigError(f"{where}: '{owner[key]}' sets {key}={out[key]!r} but '{change.name}' sets "
                                  f"{key}={value!r}; they cannot be combined, make their changes agree")
            out[key], owner[key] = value, change.name
    dropped: dict[str, list[Any]] = {}
    for change in changes:
        for key, elements in change.remove.items():
            if key not in flat:
                close = difflib.get_close_matches(key, list(flat), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(f"{where}: '{change.name}' removes from unknown config key '{key}'{hint}")
            if not isinstance(flat[key], list):
                raise ConfigError(f"{where}: '{change.name}' removes from {key}={flat[key]!r}, which is not a list; "
                                  f"use set: {{{key}: ...}}")
            missing = [e for e in elements if e not in flat[key]]
            if missing:
                raise ConfigError(f"{where}: '{change.name}' removes {missing} from {key} but the full model's "
                                  f"{key} is {flat[key]}")
            if key in owner:
                raise ConfigError(f"{where}: '{owner[key]}' sets {key} and '{change.name}' removes from it; use one")
            dropped.setdefault(key, []).extend(elements)
    for key, elements in dropped.items():
        out[key] = [e for e in flat[key] if e not in elements]
    return out


def _base(spec: AblationSpec, profile: str, preset: str, overrides: Sequence[str]) -> SellaConfig:
    where = f"ablation spec '{spec.name}'"
    try:
        cfg = load_config(profile, preset)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    for layer, values in (("overrides", spec.overrides), ("--set", list(overrides))):
        if values:
            try:
                cfg = apply_overrides(cfg, values)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {layer}: {exc}") from None
    return cfg


def _named_changes(spec: AblationSpec) -> list[tuple[str, str, list[Change]]]:
    """(cell name, description, changes) of every non-baseline cell, the full model first."""
    comps = list(spec.components)
    full = (FULL, f"the full model (preset {spec.preset})", [])
    if spec.mode == "leave_one_out":
        return [full] + [(f"-{c.name}", f"without {c.name}: {c.description}", [c]) for c in comps]
    if spec.mode == "add_one_in":
        bare = ("bare", "every component removed: " + ", ".join(c.name for c in comps), comps)
        return [full, bare] + [(f"+{c.name}", f"only {c.name} kept: {c.description}", [o for o in comps if o is not c])
                               for c in comps]
    if spec.mode == "factorial":
        out = []
        for size in range(len(comps) + 1):
            for combo in itertools.combinations(comps, size):
                if combo:
                    out.append(("".join(f"-{c.name}" for c in combo),
                                "without " + ", ".join(c.name for c in combo), list(combo)))
        return [full] + out
    out = []
    for levels in itertools.product(*(lv for _, lv in spec.axes)):
        first = all(level is axis_levels[0] for level, (_, axis_levels) in zip(levels, spec.axes))
        name = FULL if first else ",".join(f"{axis}={lv.name}" for (axis, axis_levels), lv in zip(spec.axes, levels)
                                           if lv is not axis_levels[0])
        description = "; ".join(f"{axis}: {lv.description or lv.name}" for (axis, _), lv in zip(spec.axes, levels))
        out.append((name, description, list(levels)))
    return out


def expand_cells(spec: AblationSpec, *, profile: str | None = None, overrides: Sequence[str] = (),
                 max_cells: int | None = None) -> list[Cell]:
    """Build and check every cell of ``spec``: the full model, the ablated cells, then the baselines.

    Args:
        spec: the parsed spec.
        profile: size profile of every row (default: the spec's).
        overrides: extra ``key=value`` overrides for every row (the runner's ``--set``), after the spec's own.
        max_cells: keep only the first this many cells (smoke tests).

    Raises:
        ConfigError: any cell's configuration is invalid or would fail in stage 3, changes conflict, or two cells
            resolve to the same configuration (a component that changes nothing).
    """
    profile = profile or spec.profile
    full = _base(spec, profile, spec.preset, overrides)
    cells: list[Cell] = []
    for name, description, changes in _named_changes(spec):
        where = f"ablation spec '{spec.name}': cell '{name}'"
        changed = combine_changes(changes, full, where)
        try:
            cfg = apply_overrides(full, changed) if changed else full
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        kind = "full" if name == FULL else "ablation"
        cells.append(Cell(name, kind, len(cells), description, spec.preset, changed, cfg))
    for preset in spec.baselines:
        cfg = _base(spec, profile, preset, overrides)
        cells.append(Cell(preset, "baseline", len(cells), f"baseline: preset {preset}", preset, {}, cfg))
    names = [c.name for c in cells]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"ablation spec '{spec.name}': two rows are named '{name}'; rename the component")
    seen: dict[str, str] = {}
    for cell in cells:
        key = config_key(cell.config)
        if key in seen:
            raise ConfigError(f"ablation spec '{spec.name}': cells '{seen[key]}' and '{cell.name}' resolve to the "
                              "same configuration; a component changes nothing there, fix its changes")
        seen[key] = cell.name
    return cells[:max_cells] if max_cells else cells


def expand_jobs(cells: Sequence[Cell], seeds: Sequence[int]) -> list[Job]:
    """Every cell at every seed, cell-major (a cell's seeds have distinct stage keys, so they run in parallel)."""
    jobs = []
    for cell in cells:
        for seed in seeds:
            cfg = apply_overrides(cell.config, {"runtime.seed": seed})
            jobs.append(Job(cell, seed, cfg, config_key(cfg)))
    return jobs
