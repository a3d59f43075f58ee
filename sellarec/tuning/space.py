"""Search spaces as data: a YAML file of dotted config paths -> an Optuna define-by-run space with conditions.

A space file (``tune/spaces/<name>.yaml``) holds ``metric``, ``mode``, ``num_samples``, ``sampler`` and ``params``;
``include: [other, ...]`` prepends the params of other spaces in the same folder. Each entry of ``params`` is one
dotted config path with exactly one distribution:

* ``{choice: [a, b, ...]}``: categorical; list values (``[[user, item], [item]]``) are allowed;
* ``{subsets: [user, item, warm]}``: every non-empty subset, in the listed order (a categorical over lists);
* ``{int: [low, high]}`` / ``{float: [low, high]}``: ranges, with optional ``log: true`` and ``step``;

plus optional ``when: {earlier.path: value | [values]}`` (sampled only if every earlier parameter has one of the
values) and ``otherwise: value`` (the value set when the condition fails). A trial's parameters are plain dotted
overrides, applied by :func:`sellarec.config.apply_overrides` exactly like ``--set``.
"""

from __future__ import annotations

import difflib
import itertools
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sellarec.config import SellaConfig, apply_overrides
from sellarec.errors import ConfigError

__all__ = ["METRICS", "SAMPLERS", "ParamSpec", "SamplerSpec", "SearchSpace", "load_space", "space_dir",
           "list_spaces", "parse_space", "label", "repo_root"]

METRICS = ("valid/auc", "valid/uauc")   # final validation metrics of stage 3 (model selection; never test)
SAMPLERS = ("tpe", "gp", "random")
_KINDS = ("choice", "subsets", "int", "float")
_TOP_KEYS = ("metric", "mode", "num_samples", "sampler", "params", "include")
_SPEC_KEYS = {"choice": (), "subsets": (), "int": ("log", "step"), "float": ("log", "step")}


def label(value: Any) -> Any:
    """The Optuna-storable form of a choice: lists become ``"a,b"``; scalars stay as they are."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return value


def repo_root() -> Path:
    """The source checkout holding the ``sellarec`` package (``tune/``, ``mlflow/``, ``docs/``, ``runs/``)."""
    return Path(__file__).resolve().parents[2]


def space_dir() -> Path:
    """``tune/spaces`` of the source checkout."""
    return repo_root() / "tune" / "spaces"


def list_spaces() -> list[str]:
    """Names of the shipped spaces."""
    folder = space_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


@dataclass(frozen=True)
class SamplerSpec:
    """Which Optuna sampler proposes trials.

    Attributes:
        kind: 'tpe', 'gp' or 'random'.
        seed: the sampler's seed.
        n_startup_trials: random trials before TPE/GP model the results (None: half the samples, at most 10).
    """

    kind: str = "tpe"
    seed: int = 0
    n_startup_trials: int | None = None


@dataclass(frozen=True)
class ParamSpec:
    """One searched config path.

    Attributes:
        key: dotted config path (``stage3.collab_projector.type``).
        kind: 'choice' (``subsets`` become a choice too), 'int' or 'float'.
        choices: the values of a choice (lists allowed).
        low: lower bound of a range.
        high: upper bound of a range.
        log: sample a range on a log scale.
        step: grid step of a range (None: continuous / every integer).
        when: (earlier key, allowed values) pairs that must all hold for the parameter to be sampled.
        otherwise: value set when the condition fails (if ``has_otherwise``; else the config's value stays).
        has_otherwise: whether ``otherwise`` is set.
    """

    key: str
    kind: str
    choices: tuple[Any, ...] = ()
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    otherwise: Any = None
    has_otherwise: bool = False

    def values_to_check(self) -> list[Any]:
        """Representative values for validation against the config: every choice, or both bounds."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def active(self, chosen: dict[str, Any]) -> bool:
        """Whether the condition holds for the values chosen so far (keyed by dotted path)."""
        return all(label(chosen.get(key)) in {label(v) for v in allowed} for key, allowed in self.when)

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter from an Optuna trial; returns the config value (lists for list choices)."""
        if self.kind == "choice":
            labels = [label(c) for c in self.choices]
            picked = trial.suggest_categorical(self.key, labels)
            return self.choices[labels.index(picked)]
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)


@dataclass(frozen=True)
class SearchSpace:
    """A parsed space; calling it with an Optuna trial is the define-by-run function (picklable, module level).

    Attributes:
        name: the file's stem.
        path: the file.
        metric: what the sweep optimises (one of :data:`METRICS`).
        mode: 'max' or 'min'.
        num_samples: number of trials.
        sampler: the sampler settings.
        params: the searched parameters, in file order (conditions refer to earlier ones).
    """

    name: str
    path: Path
    metric: str = "valid/auc"
    mode: str = "max"
    num_samples: int = 8
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    params: tuple[ParamSpec, ...] = ()

    @property
    def keys(self) -> list[str]:
        """The searched dotted paths."""
        return [p.key for p in self.params]

    def __call__(self, trial: Any) -> dict[str, Any]:
        """Sample one configuration: ``{dotted path: value}`` for every active parameter (and ``otherwise``)."""
        chosen: dict[str, Any] = {}
        for spec in self.params:
            if spec.active(chosen):
                chosen[spec.key] = spec.suggest(trial)
            elif spec.has_otherwise:
                chosen[spec.key] = spec.otherwise
        return chosen

    def related(self, key: str) -> set[str]:
        """``key`` and every parameter linked to it through ``when`` conditions, in either direction."""
        group, changed = {key}, True
        while changed:
            changed = False
            for spec in self.params:
                linked = {k for k, _ in spec.when}
                if spec.key not in group and linked & group or spec.key in group and not linked <= group:
                    group |= linked | {spec.key}
                    changed = True
        return group

    def validate(self, cfg: SellaConfig, draws: int = 64) -> None:
        """Check the space against the configuration before any trial runs.

        Each value of each parameter must give a valid configuration in some context of the parameters it is
        linked to by ``when`` (random draws with that value forced); then random draws of the whole space must all
        be valid, so two unlinked parameters cannot clash (``projector_init=warmup`` with a ``linear`` projector
        needs a ``when``).

        Raises:
            ConfigError: ``space <file>: params.<key>: <what the config says>`` or, for a clash, the entries the
                config's message names.
        """
        rng = random.Random(0)
        for spec in self.params:
            group = self.related(spec.key)
            for value in spec.values_to_check():
                error = None
                for _ in range(draws):
                    drawn = self(_ProbeTrial(rng, {spec.key: value}))
                    if spec.key not in drawn:   # inactive in this draw
                        continue
                    try:
                        apply_overrides(cfg, {k: v for k, v in drawn.items() if k in group})
                        error = None
                        break
                    except ConfigError as exc:
                        error = exc
                else:
                    if error is None:   # never active: check the value on its own
                        try:
                            apply_overrides(cfg, {spec.key: value})
                        except ConfigError as exc:
                            error = exc
                if error is not None:
                    raise ConfigError(f"space {self.path.name}: params.{spec.key}: {error}") from None
        for _ in range(draws):
            drawn = self(_ProbeTrial(rng, {}))
            try:
                apply_overrides(cfg, drawn)
            except ConfigError as exc:
                named = [k for k in drawn if k in str(exc)] or list(drawn)
                raise ConfigError(f"space {self.path.name}: params {', '.join(named)} can be sampled together as "
                                  f"{', '.join(f'{k}={label(drawn[k])}' for k in named)}, which fails: {exc}; "
                                  "make one conditional on the other with when:") from None


class _ProbeTrial:
    """A stand-in for an Optuna trial that draws at random (bounds included) and can force chosen values."""

    def __init__(self, rng: random.Random, forced: dict[str, Any]) -> None:
        self.rng, self.forced = rng, forced

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        return label(self.forced[name]) if name in self.forced else self.rng.choice(choices)

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        if name in self.forced:
            return self.forced[name]
        return self.rng.choice([low, high, low + step * self.rng.randint(0, (high - low) // step)])

    def suggest_float(self, name: str, low: float, high: float, step: float | None = None,
                      log: bool = False) -> float:
        if name in self.forced:
            return self.forced[name]
        inner = math.exp(self.rng.uniform(math.log(low), math.log(high))) if log else self.rng.uniform(low, high)
        return self.rng.choice([low, high, inner])


# --------------------------------------------------------------------------------------------------- parsing


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
    labels = [label(v) for v in raw]
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
        possible = {label(v) for v in parent.choices} | ({label(parent.otherwise)} if parent.has_otherwise else set())
        if parent.kind == "choice":
            for value in values:
                if label(value) not in possible:
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
    include = raw.get("include", [])
    if not isinstance(include, list) or not all(isinstance(n, str) for n in include):
        raise ConfigError(f"{where}include must be a list of space names, got {include!r}")
    for name in include:
        other = path.parent / f"{name}.yaml"
        if other.resolve() in _seen or other.resolve() == path.resolve():
            raise ConfigError(f"{where}include '{name}' includes itself; remove the cycle")
        for spec in parse_space(_read(other), other, (*_seen, path.resolve())).params:
            if spec.key in params:
                raise ConfigError(f"{where}include '{name}' defines {spec.key} again; keep one")
            params[spec.key] = spec
    if "params" not in raw and not params:
        raise ConfigError(f"{where}needs params: a mapping of dotted config paths to distributions")
    _parse_params(where, raw.get("params") or {}, params)
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
    return SearchSpace(name=path.stem, path=path.resolve(), metric=metric, mode=mode, num_samples=num_samples,
                       sampler=_parse_sampler(f"{where}sampler", raw.get("sampler")), params=tuple(params.values()))


def load_space(name_or_path: str | Path) -> SearchSpace:
    """Load a space by name (``projector`` -> ``tune/spaces/projector.yaml``) or by path.

    Raises:
        ConfigError: unknown name, missing file, malformed YAML or a bad entry (one line naming it).
    """
    path = _resolve_path(name_or_path)
    return parse_space(_read(path), path)
