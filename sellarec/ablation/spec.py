"""Ablation specs (``ablations/specs/<name>.yaml``): named components mapped to config changes, expanded into cells.

A spec names a full model (``profile`` + ``preset`` + ``overrides``) and either ``components`` (each one a set of
config changes that *removes* it: ``set: {dotted.key: value}`` and ``remove: {dotted.list.key: [elements]}``) or,
for ``mode: grid``, ``axes`` of named levels (the first level of every axis is the full model's). Modes:

* ``leave_one_out``: the full model, then one cell per component with that component removed (``-name``);
* ``add_one_in``: the full model, ``bare`` (every component removed), then ``+name`` (only that one kept);
* ``factorial``: every subset of at most 4 components removed (``full``, ``-a``, ``-a-b``, ...);
* ``grid``: every combination of the axes' levels (``full`` for the first levels, else ``axis=level,...`` naming
  the axes off their first level).

``baselines`` adds one row per method preset (``mf``, ``tallrec-style``, ``collm-style``); a ``leave_one_out``
spec with baselines and no components compares the full model with them (``ablations/specs/methods.yaml``). Seeds map to
``runtime.seed``. This module checks the file's structure; :mod:`sellarec.ablation.expansion` builds and checks
every cell's configuration before anything runs, so a bad spec is one ``ConfigError`` line.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sellarec.config import SellaConfig, list_presets, read_yaml
from sellarec.errors import ConfigError

__all__ = ["MODES", "MAX_FACTORIAL", "FULL", "Change", "AblationSpec", "Cell", "Job", "load_spec", "parse_spec",
           "spec_path"]

MODES = ("leave_one_out", "add_one_in", "factorial", "grid")
MAX_FACTORIAL = 4            # 2^4 = 16 cells per seed is the most a 2-core CPU budget allows (issue #6)
FULL = "full"                # name of the full model's cell in every mode
_TOP_KEYS = ("description", "profile", "preset", "overrides", "mode", "seeds", "components", "axes", "baselines")
_CHANGE_KEYS = ("description", "set", "remove")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
CellKind = Literal["full", "ablation", "baseline"]


@dataclass(frozen=True)
class Change:
    """The config changes of one component (what removing it means) or of one grid level.

    Attributes:
        name: component or level name (lowercase, digits, underscores).
        description: one line for the report.
        set: dotted config key -> value.
        remove: dotted key of a list field -> elements dropped from the full model's list.
    """

    name: str
    description: str
    set: dict[str, Any]
    remove: dict[str, tuple[Any, ...]]


@dataclass(frozen=True)
class AblationSpec:
    """A parsed, structurally valid spec (cells are checked by :func:`expand_cells`).

    Attributes:
        name: the file stem.
        description: what the ablation asks.
        profile: default size profile of every row.
        preset: method preset of the full model.
        overrides: dotted overrides applied to every row, baselines included.
        mode: one of :data:`MODES`.
        seeds: the seeds (``runtime.seed``) of every cell.
        components: the components, in file order (not for ``grid``).
        axes: ``(axis name, levels)`` pairs, in file order (only for ``grid``).
        baselines: method presets added as rows.
    """

    name: str
    description: str
    profile: str
    preset: str
    overrides: dict[str, Any]
    mode: str
    seeds: tuple[int, ...]
    components: tuple[Change, ...]
    axes: tuple[tuple[str, tuple[Change, ...]], ...]
    baselines: tuple[str, ...]


@dataclass(frozen=True)
class Cell:
    """One row of the ablation table.

    Attributes:
        name: ``full``, ``-warm_token``, ``+alignment``, ``collab=moe,semantic=lowrank``, ``mf``, ...
        kind: 'full', 'ablation' or 'baseline'.
        index: position in the table.
        description: one line for the report.
        preset: method preset the cell starts from.
        overrides: dotted overrides on top of profile, preset and the spec's overrides.
        config: the resolved configuration (``runtime.seed`` not yet set).
    """

    name: str
    kind: CellKind
    index: int
    description: str
    preset: str
    overrides: dict[str, Any]
    config: SellaConfig


@dataclass(frozen=True)
class Job:
    """One run: a cell at one seed.

    Attributes:
        cell: the cell.
        seed: ``runtime.seed`` of the run.
        config: the cell's configuration with the seed applied.
        run_key: :func:`~sellarec.config.config_key` of ``config``; finished runs with this key are skipped on resume.
    """

    cell: Cell
    seed: int
    config: SellaConfig
    run_key: str


def spec_path(spec: str | Path, specs_dir: Path) -> Path:
    """``NAME`` -> ``specs_dir/NAME.yaml``; a value ending in ``.yaml`` or containing a slash is a path."""
    text = str(spec)
    if text.endswith((".yaml", ".yml")) or "/" in text:
        return Path(text)
    path = specs_dir / f"{text}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in specs_dir.glob("*.yaml")) if specs_dir.is_dir() else []
        close = difflib.get_close_matches(text, names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"unknown ablation spec '{text}' ({hint}choose from {', '.join(names) or 'none'} "
                          f"in {specs_dir})")
    return path


def load_spec(spec: str | Path, specs_dir: Path) -> AblationSpec:
    """Read and check a spec file (see the module docstring for the format).

    Raises:
        ConfigError: missing or malformed file, unknown key (with the closest valid one), wrong type or value.
    """
    path = spec_path(spec, specs_dir)
    return parse_spec(read_yaml(path, "ablation spec"), path.stem)


def _unknown(where: str, key: Any, valid: tuple[str, ...]) -> ConfigError:
    close = difflib.get_close_matches(str(key), valid, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(valid)}"
    return ConfigError(f"{where}: unknown key '{key}' ({hint})")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, got {value!r}")
    return value


def _change(name: Any, body: Any, where: str) -> Change:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where}: name {name!r} must be lowercase letters, digits and underscores")
    body = _mapping(body, f"{where}.{name}")
    for key in body:
        if key not in _CHANGE_KEYS:
            raise _unknown(f"{where}.{name}", key, _CHANGE_KEYS)
    remove = {}
    for key, elements in _mapping(body.get("remove"), f"{where}.{name}.remove").items():
        if not isinstance(elements, list) or not elements:
            raise ConfigError(f"{where}.{name}.remove.{key} must be a non-empty list of elements to drop")
        remove[str(key)] = tuple(elements)
    changes = {str(k): v for k, v in _mapping(body.get("set"), f"{where}.{name}.set").items()}
    description = body.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{where}.{name}.description must be a string")
    return Change(name, description.strip(), changes, remove)


def _seeds(value: Any, where: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ConfigError(f"{where}.seeds={value} must be >= 1 (the number of seeds 0..K-1) or a list of seeds")
        return tuple(range(value))
    if (isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                  for s in value) and len(set(value)) == len(value)):
        return tuple(value)
    raise ConfigError(f"{where}.seeds={value!r} must be a count >= 1 or a list of distinct seeds >= 0")


def parse_spec(values: Any, name: str) -> AblationSpec:
    """Check the structure of a spec read from YAML (``name`` is its file stem).

    Raises:
        ConfigError: as :func:`load_spec`.
    """
    where = f"ablation spec '{name}'"
    values = _mapping(values, where)
    for key in values:
        if key not in _TOP_KEYS:
            raise _unknown(where, key, _TOP_KEYS)
    mode = values.get("mode", "leave_one_out")
    if mode not in MODES:
        close = difflib.get_close_matches(str(mode), MODES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{where}: mode={mode!r} is not one of {', '.join(MODES)}{hint}")
    components: tuple[Change, ...] = ()
    axes: tuple[tuple[str, tuple[Change, ...]], ...] = ()
    if mode == "grid":
        if "components" in values:
            raise ConfigError(f"{where}: mode grid takes 'axes', not 'components'")
        raw_axes = _mapping(values.get("axes"), f"{where}.axes")
        if not raw_axes:
            raise ConfigError(f"{where}: mode grid needs 'axes' (axis -> level -> changes)")
        axes = tuple((axis, tuple(_change(lv, body, f"{where}.axes.{axis}")
                                  for lv, body in _mapping(levels, f"{where}.axes.{axis}").items()))
                     for axis, levels in raw_axes.items())
        for axis, levels in axes:
            if not _NAME.match(str(axis)) or len(levels) < 2:
                raise ConfigError(f"{where}.axes.{axis} must be a lowercase name with at least 2 levels")
    else:
        if "axes" in values:
            raise ConfigError(f"{where}: 'axes' is only for mode grid; mode {mode} takes 'components'")
        components = tuple(_change(n, body, f"{where}.components")
                           for n, body in _mapping(values.get("components"), f"{where}.components").items())
        # leave_one_out without components is a method comparison: the full model against its baseline rows.
        if not components and not (mode == "leave_one_out" and values.get("baselines")):
            raise ConfigError(f"{where}: mode {mode} needs at least one entry under 'components' (leave_one_out "
                              "may instead list only 'baselines', to compare the full model with them)")
        if mode == "factorial" and len(components) > MAX_FACTORIAL:
            raise ConfigError(f"{where}: mode factorial takes at most {MAX_FACTORIAL} components, got "
                              f"{len(components)}; use leave_one_out or split the spec")
    baselines = values.get("baselines") or []
    if not isinstance(baselines, list) or len(set(map(str, baselines))) != len(baselines):
        raise ConfigError(f"{where}.baselines must be a list of distinct presets ({', '.join(list_presets())})")
    for preset in baselines:
        if preset not in list_presets():
            close = difflib.get_close_matches(str(preset), list_presets(), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"{where}.baselines: unknown preset '{preset}' ({hint}choose from "
                              f"{', '.join(list_presets())})")
    for key in ("description", "profile", "preset"):
        if not isinstance(values.get(key, ""), str):
            raise ConfigError(f"{where}.{key} must be a string")
    return AblationSpec(name=name, description=str(values.get("description", "")).strip(),
                        profile=values.get("profile", "quick"), preset=values.get("preset", "sella"),
                        overrides=dict(_mapping(values.get("overrides"), f"{where}.overrides")), mode=mode,
                        seeds=_seeds(values.get("seeds", 3), where), components=components, axes=axes,
                        baselines=tuple(baselines))
