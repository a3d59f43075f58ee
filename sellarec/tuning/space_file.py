"""Reading a search-space file (``tune/spaces/<name>.yaml``, format in :mod:`sellarec.tuning.space`): YAML with
no duplicate keys, every entry checked, one-line errors naming the file and the entry."""

from __future__ import annotations

import difflib
import itertools
import math
from pathlib import Path
from typing import Any

import yaml

from sellarec.errors import ConfigError
from sellarec.experiment.tracking import choice_key
from sellarec.runtime import repo_root
from sellarec.tuning.space import METRICS, SAMPLERS, SCHEDULERS, ParamSpec, SamplerSpec, SearchSpace

__all__ = ["load_space", "parse_space", "space_dir", "list_spaces"]

_KINDS = ("choice", "subsets", "int", "float")
_TOP_KEYS = ("metric", "mode", "num_samples", "sampler", "scheduler", "incumbent", "params", "include", "fixed")
_SPEC_KEYS = {"choice": (), "subsets": (), "int": ("log", "step"), "float": ("log", "step")}


def space_dir() -> Path:
    """``tune/spaces`` of the source checkout."""
    return repo_root() / "tune" / "spaces"


def list_spaces() -> list[str]:
    """Names of the shipped spaces."""
    folder = space_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key written twice (YAML silently keeps the last one)."""


def _no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"key '{key}' appears twice (line {key_node.start_mark.line + 1}); keep one")
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"space file {path} does not exist") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"space {path.name}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"space {path.name}{where}: {getattr(exc, 'problem', None) or 'invalid YAML'}; "
                          "fix the YAML syntax") from None


def _resolve_path(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    path = Path(text)
    if text.endswith((".yaml", ".yml")) or path.is_file() or "/" in text:
        return path
    names = list_spaces()
    if text not in names:
        close = difflib.get_close_matches(text, names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"unknown space '{text}' ({hint}choose from {', '.join(names) or 'none'} "
                          f"in {space_dir()}, or pass a .yaml path)")
    return space_dir() / f"{text}.yaml"


def _is_number(value: Any, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if integer else isinstance(value, (int, float)) and math.isfinite(value)


def _parse_range(where: str, kind: str, raw: dict[str, Any]) -> dict[str, Any]:
    bounds = raw[kind]
    integer = kind == "int"
    if (not isinstance(bounds, list) or len(bounds) != 2
            or not all(_is_number(b, integer) for b in bounds)):
        raise ConfigError(f"{where}: {kind} needs [low, high] of {'integers' if integer else 'numbers'}, "
                          f"got {bounds!r}")
    low, high = bounds if integer else (float(b) for b in bounds)
    if not low < high:
        raise ConfigError(f"{where}: {kind} needs low < high, got [{low}, {high}]")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: log: true needs low > 0, got {low}")
    step = raw.get("step")
    if step is not None and (not _is_number(step, integer) or step <= 0):
        raise ConfigError(f"{where}: step must be a positive {'integer' if integer else 'number'}, got {step!r}")
    if step is not None and log:
        raise ConfigError(f"{where}: step and log: true cannot be combined; drop one")
    return {"low": low, "high": high, "log": log, "step": step}


def _parse_choices(where: str, kind: str, raw: Any) -> tuple[Any, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: {kind} needs a non-empty list, got {raw!r}")
    for value in raw:
        items = value if isinstance(value, list) else [value]
        if isinstance(value, dict) or not all(v is None or isinstance(v, (bool, int, float, str)) for v in items):
            raise ConfigError(f"{where}: {kind} values must be scalars or lists of scalars, got {value!r}")
    if kind == "subsets":
        if len(set(map(str, raw))) != len(raw) or any(isinstance(v, list) for v in raw):
            raise ConfigError(f"{where}: subsets needs distinct scalars, got {raw!r}")
        return tuple(list(c) for n in range(len(raw), 0, -1) for c in itertools.combinations(raw, n))
    labels = [choice_key(v) for v in raw]
    if len(set(map(repr, labels))) != len(labels):
        raise ConfigError(f"{where}: {kind} lists a value twice: {raw!r}")
    return tuple(raw)


def _parse_when(where: str, raw: Any, earlier: dict[str, ParamSpec]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: when needs a mapping {{earlier.path: value or [values]}}, got {raw!r}")
    pairs = []
    for key, allowed in raw.items():
        if key not in earlier:
            close = difflib.get_close_matches(str(key), list(earlier), n=1)
            hint = f"did you mean '{close[0]}'?" if close else "conditions may only name parameters listed above"
            raise ConfigError(f"{where}: when refers to '{key}', which is not an earlier parameter ({hint})")
        parent = earlier[key]
        list_valued = any(isinstance(c, list) for c in parent.choices)
        if isinstance(allowed, list) and (not list_valued or all(isinstance(v, list) for v in allowed)):
            values = tuple(allowed)          # several allowed values
        else:
            values = (allowed,)              # one value (for list-valued parameters: one list)
        possible = {choice_key(v) for v in parent.choices} | ({choice_key(parent.otherwise)} if parent.has_otherwise else set())
        if parent.kind == "choice":
            for value in values:
                if choice_key(value) not in possible:
                    raise ConfigError(f"{where}: when {key}={value!r} can never hold "
                                      f"({key} takes {', '.join(map(str, sorted(possible, key=str)))})")
        pairs.append((str(key), values))
    return tuple(pairs)


def _parse_param(where: str, key: Any, raw: Any, earlier: dict[str, ParamSpec]) -> ParamSpec:
    if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{where}: a parameter must be a dotted config path such as stage3.lr")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: needs a mapping such as {{choice: [a, b]}} or {{float: [1e-4, 1e-2], log: true}}"
                          f", got {raw!r}")
    kinds = [k for k in _KINDS if k in raw]
    if len(kinds) != 1:
        unknown = [k for k in raw if k not in (*_KINDS, "when", "otherwise", "log", "step")]
        hint = ""
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), _KINDS, n=1)
            hint = f"; unknown '{unknown[0]}'" + (f" (did you mean '{close[0]}'?)" if close else "")
        raise ConfigError(f"{where}: needs exactly one of {', '.join(_KINDS)}, got {len(kinds)}{hint}")
    kind = kinds[0]
    allowed = {kind, "when", "otherwise", *_SPEC_KEYS[kind]}
    for extra in raw:
        if extra not in allowed:
            raise ConfigError(f"{where}: unknown field '{extra}' for {kind} (allowed: {', '.join(sorted(allowed))})")
    if "otherwise" in raw and "when" not in raw:
        raise ConfigError(f"{where}: otherwise needs a when condition")
    fields: dict[str, Any] = {}
    if kind in ("choice", "subsets"):
        fields["choices"] = _parse_choices(where, kind, raw[kind])
    else:
        fields.update(_parse_range(where, kind, raw))
    when = _parse_when(where, raw["when"], earlier) if "when" in raw else ()
    return ParamSpec(key=key, kind="choice" if kind == "subsets" else kind, when=when,
                     otherwise=raw.get("otherwise"), has_otherwise="otherwise" in raw, **fields)


def _parse_sampler(where: str, raw: Any) -> SamplerSpec:
    if raw is None:
        return SamplerSpec()
    if isinstance(raw, str):
        raw = {"kind": raw}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: needs a mapping such as {{kind: tpe, seed: 0}}, got {raw!r}")
    for key in raw:
        if key not in ("kind", "seed", "n_startup_trials"):
            raise ConfigError(f"{where}: unknown field '{key}' (allowed: kind, seed, n_startup_trials)")
    kind = raw.get("kind", "tpe")
    if kind not in SAMPLERS:
        raise ConfigError(f"{where}.kind={kind!r} is not one of {', '.join(SAMPLERS)}")
    seed = raw.get("seed", 0)
    if not _is_number(seed, integer=True):
        raise ConfigError(f"{where}.seed={seed!r} must be an integer")
    startup = raw.get("n_startup_trials")
    if startup is not None and (not _is_number(startup, integer=True) or startup < 0):
        raise ConfigError(f"{where}.n_startup_trials={startup!r} must be an integer >= 0")
    return SamplerSpec(kind=kind, seed=seed, n_startup_trials=startup)


def _parse_params(prefix: str, raw: Any, earlier: dict[str, ParamSpec]) -> None:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix}params must be a mapping of dotted config paths, got {type(raw).__name__}")
    for key, spec in raw.items():
        if key in earlier:
            raise ConfigError(f"{prefix}params.{key} is already defined (by an included space); keep one")
        earlier[key] = _parse_param(f"{prefix}params.{key}", key, spec, earlier)


def _parse_fixed(where: str, raw: Any, fixed: dict[str, Any], params: dict[str, ParamSpec]) -> None:
    """``fixed: {dotted.path: value}``: settings every trial of the space runs with (its budget, say)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}fixed must be a mapping of dotted config paths to values, got {raw!r}")
    for key, value in raw.items():
        if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"{where}fixed: {key!r} is not a dotted config path such as stage3.lr")
        items = value if isinstance(value, list) else [value]
        if isinstance(value, dict) or not all(v is None or isinstance(v, (bool, int, float, str)) for v in items):
            raise ConfigError(f"{where}fixed.{key} must be a scalar or a list of scalars, got {value!r}")
        if key in params:
            raise ConfigError(f"{where}fixed.{key} is also a searched parameter; keep one")
        fixed[key] = value


def parse_space(raw: Any, path: Path, _seen: tuple[Path, ...] = ()) -> SearchSpace:
    """Build a :class:`SearchSpace` from the loaded YAML of ``path``.

    Raises:
        ConfigError: one line naming the file and the entry (``space x.yaml: params.stage3.lr: ...``).
    """
    where = f"space {path.name}: "
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}must be a mapping with metric, mode, num_samples, sampler and params")
    for key in raw:
        if key not in _TOP_KEYS:
            close = difflib.get_close_matches(str(key), _TOP_KEYS, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(_TOP_KEYS)}"
            raise ConfigError(f"{where}unknown field '{key}' ({hint})")
    params: dict[str, ParamSpec] = {}
    fixed: dict[str, Any] = {}
    include = raw.get("include", [])
    if not isinstance(include, list) or not all(isinstance(n, str) for n in include):
        raise ConfigError(f"{where}include must be a list of space names, got {include!r}")
    for name in include:
        other = path.parent / f"{name}.yaml"
        if other.resolve() in _seen or other.resolve() == path.resolve():
            raise ConfigError(f"{where}include '{name}' includes itself; remove the cycle")
        included = parse_space(_read(other), other, (*_seen, path.resolve()))
        for spec in included.params:
            if spec.key in params:
                raise ConfigError(f"{where}include '{name}' defines {spec.key} again; keep one")
            params[spec.key] = spec
        fixed.update(included.fixed)
    if "params" not in raw and not params:
        raise ConfigError(f"{where}needs params: a mapping of dotted config paths to distributions")
    _parse_params(where, raw.get("params") or {}, params)
    _parse_fixed(where, raw.get("fixed") or {}, fixed, params)
    clash = sorted(set(fixed) & set(params))
    if clash:
        raise ConfigError(f"{where}fixed.{clash[0]} is searched by an included space; keep one")
    if not params:
        raise ConfigError(f"{where}params is empty; list at least one dotted config path")
    metric = raw.get("metric", "valid/auc")
    if metric not in METRICS:
        raise ConfigError(f"{where}metric={metric!r} is not one of {', '.join(METRICS)}")
    mode = raw.get("mode", "max")
    if mode not in ("max", "min"):
        raise ConfigError(f"{where}mode={mode!r} is not one of max, min")
    num_samples = raw.get("num_samples", 8)
    if not _is_number(num_samples, integer=True) or num_samples < 1:
        raise ConfigError(f"{where}num_samples={num_samples!r} must be an integer >= 1")
    scheduler = raw.get("scheduler", "asha")
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"{where}scheduler={scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    incumbent = raw.get("incumbent", False)
    if not isinstance(incumbent, bool):
        raise ConfigError(f"{where}incumbent={incumbent!r} must be true or false")
    return SearchSpace(name=path.stem, path=path.resolve(), metric=metric, mode=mode, num_samples=num_samples,
                       sampler=_parse_sampler(f"{where}sampler", raw.get("sampler")), params=tuple(params.values()),
                       fixed=fixed, scheduler=scheduler, incumbent=incumbent)


def load_space(name_or_path: str | Path) -> SearchSpace:
    """Load a space by name (``projector`` -> ``tune/spaces/projector.yaml``) or by path.

    Raises:
        ConfigError: unknown name, missing file, malformed YAML or a bad entry (one line naming it).
    """
    path = _resolve_path(name_or_path)
    return parse_space(_read(path), path)
