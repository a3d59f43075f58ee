"""Building configurations: YAML profiles and presets, dotted overrides, typed coercion and validation.

Precedence, lowest first (RecBole's rule, written once here):
    dataclass defaults < profile YAML < preset YAML < ``--config`` file < ``--set a.b=c`` overrides < trial parameters.
Every layer goes through :func:`apply_overrides`, so a Tune trial's configuration *is* a command-line configuration.
Neither torch nor transformers is imported, so ``--help`` and config tests stay instant.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from sellarec.config.schema import FieldError, SellaConfig
from sellarec.errors import ConfigError

__all__ = ["load_config", "apply_overrides", "to_flat_dict", "config_key", "to_dict", "from_dict", "list_profiles",
           "list_presets", "read_yaml"]

_CONFIG_DIR = "configs"

# --------------------------------------------------------------------------------------------------- conversion


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict (tuples become lists) suitable for YAML/JSON."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value

    return plain(cfg)


def config_key(cfg: SellaConfig) -> str:
    """Identity of a run: SHA-256 of every setting except ``runtime`` (the seed excepted), 16 hex characters."""
    flat = {k: v for k, v in to_flat_dict(cfg).items() if not k.startswith("runtime.") or k == "runtime.seed"}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def to_flat_dict(cfg: Any) -> dict[str, Any]:
    """Flat dict keyed by dotted path (``stage3.collab_projector.type``), the names used by MLflow and search spaces."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else key, sub)
        else:
            flat[prefix] = value

    walk("", to_dict(cfg))
    return flat


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a list"
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` (already parsed from YAML) against the declared type ``tp``; return the typed value."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of its fields, got {value!r}")
        return _build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{key}={value!r} is not {_type_name(tp)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(str, choices))}{hint}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str) and args[-1] is Ellipsis:
            value = [v.strip() for v in value.split(",") if v.strip()]  # `--set stage1.lora.targets=q_proj,v_proj`
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} must be a list, e.g. [a, b]")
        if args[-1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}={value!r} must be a list of {len(args)} values")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} must be an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r} must be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} must be a string")
        return value
    raise TypeError(f"unsupported config field type {tp!r} at {key}")  # a bug in this module, not user input


def _unknown_key(cls: type, name: str, prefix: str) -> ConfigError:
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(name, names, n=1)
    where = f"{prefix}.{name}" if prefix else name
    hint = f"did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else f"valid keys: {', '.join(names)}"
    return ConfigError(f"unknown config key '{where}' ({hint})")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        if name not in hints or name not in {f.name for f in dataclasses.fields(cls)}:
            raise _unknown_key(cls, str(name), prefix)
        kwargs[name] = _coerce(value, hints[name], f"{prefix}.{name}" if prefix else name)
    try:
        return cls(**kwargs)
    except FieldError as exc:
        raise ConfigError(f"{prefix}.{exc}" if prefix else str(exc)) from None


def from_dict(values: dict[str, Any]) -> SellaConfig:
    """Build a validated :class:`SellaConfig` from a nested dict (missing keys take their defaults)."""
    if not isinstance(values, dict):
        raise ConfigError(f"a configuration must be a mapping of sections, got {type(values).__name__}")
    return _build(SellaConfig, values, "")


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value, e.g. stage3.tokens=[user,item]")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key; write it as key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # a plain string such as a path with a colon
    return key.split("."), value


def _nest(path: list[str], value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(path):
        out = {part: out}
    return out


def apply_overrides(cfg: SellaConfig, overrides: list[str] | dict[str, Any]) -> SellaConfig:
    """Return ``cfg`` with dotted overrides applied and revalidated.

    Args:
        cfg: the configuration to start from.
        overrides: ``["stage3.tokens=[user,item]", ...]`` (values parsed as YAML) or ``{"stage3.lr": 1e-4}``.

    Raises:
        ConfigError: unknown key (with the closest valid key), wrong type or impossible value.
    """
    items = overrides.items() if isinstance(overrides, dict) else (_parse_override(o) for o in overrides)
    merged = to_dict(cfg)
    for key, value in items:
        path = key.split(".") if isinstance(key, str) else key
        _check_path(path)
        merged = _merge(merged, _nest(path, value))
    return from_dict(merged)


def _check_path(path: list[str]) -> None:
    cls: Any = SellaConfig
    for depth, part in enumerate(path):
        prefix = ".".join(path[:depth])
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"config key '{'.'.join(path)}' goes below the value '{prefix}'")
        hints = typing.get_type_hints(cls)
        if part not in hints:
            raise _unknown_key(cls, part, prefix)
        cls = hints[part]


# --------------------------------------------------------------------------------------------------- YAML files


def _yaml_names(kind: str) -> list[str]:
    folder = resources.files("sellarec").joinpath(_CONFIG_DIR, kind)
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def list_profiles() -> list[str]:
    """Names of the profiles shipped in ``sellarec/configs/profiles``."""
    return _yaml_names("profiles")


def list_presets() -> list[str]:
    """Names of the method presets shipped in ``sellarec/configs/presets``."""
    return _yaml_names("presets")


def read_yaml(path: Path | str, what: str) -> Any:
    """Read a YAML file with ``safe_load``; a missing or malformed file is a one-line ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} does not exist") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{what} file {path}{where}: {problem}; fix the YAML syntax") from None


def _named_yaml(kind: str, name: str) -> dict[str, Any]:
    names = _yaml_names(kind)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"unknown {kind[:-1]} '{name}' ({hint}choose from {', '.join(names)})")
    path = resources.files("sellarec").joinpath(_CONFIG_DIR, kind, f"{name}.yaml")
    values = read_yaml(Path(str(path)), kind[:-1]) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{kind[:-1]} '{name}' must be a mapping of config sections")
    return values


def load_config(profile: str | None = "quick", preset: str | None = None,
                overrides: list[str] | dict[str, Any] | None = None,
                config_file: Path | str | None = None) -> SellaConfig:
    """Build the configuration of a run.

    Precedence, lowest first: dataclass defaults < profile < preset < config_file < overrides.

    Args:
        profile: size profile (``tiny``, ``quick``, ``full``, ``paper-ml1m``, ``paper-book``); None = the defaults.
        preset: method preset (``sella``, ``collm-style``, ``tallrec-style``, ``mf``) or None.
        overrides: dotted overrides such as ``["stage3.tokens=[user,item]"]``.
        config_file: a user YAML file with the same sections as the profiles.

    Raises:
        ConfigError: unknown profile/preset/key, wrong type, impossible value, missing or malformed YAML file.
    """
    merged = _named_yaml("profiles", profile) if profile is not None else {}
    if preset is not None:
        merged = _merge(merged, _named_yaml("presets", preset))
    if config_file is not None:
        values = read_yaml(config_file, "config") or {}
        if not isinstance(values, dict):
            raise ConfigError(f"config file {config_file} must be a mapping of sections (data:, stage1:, ...)")
        merged = _merge(merged, values)
    cfg = from_dict(merged)
    return apply_overrides(cfg, overrides) if overrides else cfg
