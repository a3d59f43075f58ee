"""Short names of searched parameters: one rule for MLflow run names, progress lines, report tables and plot labels.

A dotted key becomes its last component, abbreviated (``stage3.semantic_projector.rank`` -> ``r``); a generic last
component (``type``, ``kind``) gives way to its parent (``stage3.collab_projector.type`` -> ``collab``). Keys of one
set whose names would clash grow, one component at a time from the right, until they differ (``stage1.lr`` and
``stage3.lr`` -> ``s1.lr`` and ``s3.lr``). A trial's label is its parameters in that short form with compact values:
``collab=mlp sem=lowrank r=175 lr=0.00263``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sellarec.experiment.tracking import choice_key

__all__ = ["short_keys", "format_value", "params_label", "LABEL_CHARS"]

LABEL_CHARS = 80   # a run name that fits one line of MLflow's run table
# Leaves that name no setting of their own: the parent says what is chosen.
_GENERIC_LEAVES = frozenset({"type", "kind"})
# Words of the configuration's keys (sellarec/config/schema.py) that have a common shorter spelling.
_ABBREVIATIONS = {
    "collab_projector": "collab",
    "semantic_projector": "sem",
    "projector_init": "init",
    "rank": "r",
    "num_experts": "experts",
    "max_train_samples": "samples",
    "weight_decay": "wd",
    "batch_size": "bs",
    "emb_dim": "dim",
}
_STAGE = re.compile(r"^stage(\d+)$")
_ELLIPSIS = "..."


def _words(key: str) -> list[str]:
    """``stage3.collab_projector.type`` -> ``["s3", "collab"]``: the key's components, abbreviated."""
    parts = key.split(".")
    if len(parts) > 1 and parts[-1] in _GENERIC_LEAVES:
        parts = parts[:-1]
    return [_STAGE.sub(r"s\1", p) if _STAGE.match(p) else _ABBREVIATIONS.get(p, p) for p in parts]


def short_keys(keys: Iterable[str]) -> dict[str, str]:
    """The short name of every key of ``keys`` (see the module docstring), unique within the set.

    Keys whose abbreviated components are identical (which no configuration has) keep their full dotted form.
    """
    keys = list(dict.fromkeys(keys))
    words = {k: _words(k) for k in keys}
    depth = dict.fromkeys(keys, 1)
    while True:
        names = {k: ".".join(words[k][-depth[k]:]) for k in keys}
        counts = Counter(names.values())
        growing = [k for k in keys if counts[names[k]] > 1 and depth[k] < len(words[k])]
        if not growing:
            return {k: names[k] if counts[names[k]] == 1 else k for k in keys}
        for key in growing:
            depth[key] += 1


def format_value(value: Any) -> str:
    """A parameter value as a label shows it: floats to 3 significant digits (``0.00263``, ``1e-5``), booleans
    lowercase (as ``--set`` takes them), lists as ``a,b`` (:func:`~sellarec.experiment.tracking.choice_key`)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return re.sub(r"e([+-])0*(\d)", lambda m: f"e{m[1].replace('+', '')}{m[2]}", f"{value:.3g}")
    return str(choice_key(value))


def params_label(params: Mapping[str, Any], keys: Sequence[str] = (), limit: int | None = LABEL_CHARS) -> str:
    """``collab=mlp sem=lowrank r=175``: a trial's parameters by their short names.

    Args:
        params: the trial's parameters (dotted key -> value).
        keys: every key of the search, in its order: names are made unique over all of them, so a key has the same
            name in every trial of a sweep, also where a conditional parameter is absent. Keys of ``params`` not in
            ``keys`` follow in their own order.
        limit: most characters; whole ``name=value`` items are dropped from the end and ``...`` marks the cut.
            None: no limit.

    Returns:
        The label ('' for no parameters). The same parameters and keys always give the same label.
    """
    order = [k for k in keys if k in params] + [k for k in params if k not in keys]
    names = short_keys([*keys, *order])
    items = [f"{names[k]}={format_value(params[k])}" for k in order]
    text = " ".join(items)
    if limit is None or len(text) <= limit:
        return text
    kept: list[str] = []
    for item in items:
        if len(" ".join([*kept, item, _ELLIPSIS])) > limit:
            break
        kept.append(item)
    return " ".join([*kept, _ELLIPSIS]) if kept else text[:limit - len(_ELLIPSIS)] + _ELLIPSIS
