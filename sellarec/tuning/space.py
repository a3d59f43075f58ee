"""Search spaces as data: a YAML file of dotted config paths -> an Optuna define-by-run space with conditions.

A space file (``tune/spaces/<name>.yaml``) holds ``metric``, ``mode``, ``num_samples``, ``sampler`` and ``params``;
``include: [other, ...]`` prepends the params of other spaces in the same folder; ``fixed:`` sets what every trial runs
with; ``scheduler: asha | fifo`` is the default of ``--scheduler``; ``incumbent: true`` runs the base configuration's
own values of the searched parameters as the first trial. Each entry of ``params`` is one
dotted config path with exactly one distribution:

* ``{choice: [a, b, ...]}``: categorical; list values (``[[user, item], [item]]``) are allowed;
* ``{subsets: [user, item, warm]}``: every non-empty subset, in the listed order (a categorical over lists);
* ``{int: [low, high]}`` / ``{float: [low, high]}``: ranges, with optional ``log: true`` and ``step``;

plus optional ``when: {earlier.path: value | [values]}`` (sampled only if every earlier parameter has one of the
values) and ``otherwise: value`` (the value set when the condition fails). A trial's parameters are plain dotted
overrides, applied by :func:`sellarec.config.apply_overrides` exactly like ``--set``.

The classes live here; reading and checking a space file is :mod:`sellarec.tuning.space_file`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sellarec.config import SellaConfig, apply_overrides, to_flat_dict
from sellarec.errors import ConfigError
from sellarec.experiment.tracking import choice_key

__all__ = ["METRICS", "SAMPLERS", "SCHEDULERS", "ParamSpec", "SamplerSpec", "SearchSpace"]

METRICS = ("valid/auc", "valid/uauc")   # final validation metrics of stage 3 (model selection; never test)
SAMPLERS = ("tpe", "gp", "random")
SCHEDULERS = ("asha", "fifo")


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
        return all(choice_key(chosen.get(key)) in {choice_key(v) for v in allowed} for key, allowed in self.when)

    def parse(self, text: str) -> Any:
        """The value whose stored form (an MLflow param, :func:`choice_key` as text) is ``text``."""
        known = list(self.choices) + ([self.otherwise] if self.has_otherwise else [])
        for value in known:
            if str(choice_key(value)) == text:
                return value
        return int(float(text)) if self.kind == "int" else float(text)

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter from an Optuna trial; returns the config value (lists for list choices)."""
        if self.kind == "choice":
            labels = [choice_key(c) for c in self.choices]
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
        fixed: settings every trial runs with (``fixed:`` in the file, included spaces' first), e.g. the budget;
            ``--set`` overrides them.
        scheduler: the space's trial scheduler (``asha`` or ``fifo``); ``--scheduler`` overrides it.
        incumbent: the first trial runs the base configuration's own values of the searched parameters, so the
            report ranks the setting a profile ships beside what the search finds.
    """

    name: str
    path: Path
    metric: str = "valid/auc"
    mode: str = "max"
    num_samples: int = 8
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    params: tuple[ParamSpec, ...] = ()
    fixed: dict[str, Any] = field(default_factory=dict)
    scheduler: str = "asha"
    incumbent: bool = False

    @property
    def fixed_overrides(self) -> list[str]:
        """``fixed`` as ``key=value`` overrides (the form ``--set`` and the printed train command take)."""
        def text(value: Any) -> str:
            if isinstance(value, list):
                return "[" + ",".join(text(v) for v in value) + "]"
            return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        return [f"{key}={text(value)}" for key, value in self.fixed.items()]

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

    def point(self, cfg: SellaConfig) -> dict[str, Any]:
        """``cfg``'s own values of the searched parameters, as Optuna stores them (the incumbent trial's point).

        Raises:
            ConfigError: a value lies outside its parameter's range or choices, so no trial could run it.
        """
        values = to_flat_dict(cfg)
        point: dict[str, Any] = {}
        for spec in self.params:
            if not spec.active(point):
                continue
            value = values[spec.key]
            ok = (choice_key(value) in {choice_key(c) for c in spec.choices} if spec.kind == "choice"
                  else spec.low <= value <= spec.high)
            if not ok:
                raise ConfigError(f"space {self.name}: incumbent: the configuration's {spec.key}={choice_key(value)!r} "
                                  "is outside the searched values; widen the range or drop incumbent")
            point[spec.key] = choice_key(value)
        return point

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
                                  f"{', '.join(f'{k}={choice_key(drawn[k])}' for k in named)}, which fails: {exc}; "
                                  "make one conditional on the other with when:") from None


class _ProbeTrial:
    """A stand-in for an Optuna trial that draws at random (bounds included) and can force chosen values."""

    def __init__(self, rng: random.Random, forced: dict[str, Any]) -> None:
        self.rng, self.forced = rng, forced

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        return choice_key(self.forced[name]) if name in self.forced else self.rng.choice(choices)

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
