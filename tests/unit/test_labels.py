"""Short parameter names and trial labels (MLflow run names, report tables, plot labels): expected strings written
by hand from the rule in sellarec/experiment/labels.py's docstring."""

from __future__ import annotations

import math

import pytest

from sellarec.experiment.labels import LABEL_CHARS, format_value, params_label, short_keys

# The projector space's keys (tune/spaces/projector.yaml) plus the lora space's, in the full space's order.
PROJECTOR = ["stage3.collab_projector.type", "stage3.projector_init", "stage3.collab_projector.hidden",
             "stage3.collab_projector.num_experts", "stage3.semantic_projector.type",
             "stage3.semantic_projector.rank", "stage3.semantic_projector.hidden"]
LORA = ["stage1.lora.r", "stage1.lora.alpha", "stage1.lora.targets", "stage1.lr", "stage3.train_lora",
        "stage3.lora.r", "stage3.lr"]


def test_a_key_is_its_last_word_and_a_type_is_named_by_its_owner() -> None:
    assert short_keys(PROJECTOR) == {
        "stage3.collab_projector.type": "collab", "stage3.projector_init": "init",
        "stage3.collab_projector.hidden": "collab.hidden", "stage3.collab_projector.num_experts": "experts",
        "stage3.semantic_projector.type": "sem", "stage3.semantic_projector.rank": "r",
        "stage3.semantic_projector.hidden": "sem.hidden"}


def test_clashing_names_grow_until_they_differ() -> None:
    names = short_keys(PROJECTOR + LORA)
    assert (names["stage1.lr"], names["stage3.lr"]) == ("s1.lr", "s3.lr")
    assert (names["stage1.lora.r"], names["stage3.lora.r"], names["stage3.semantic_projector.rank"]) == (
        "s1.lora.r", "s3.lora.r", "sem.r")
    assert names["stage1.lora.alpha"] == "alpha" and names["stage3.train_lora"] == "train_lora"
    assert len(set(names.values())) == len(names)


@pytest.mark.parametrize(("value", "shown"), [
    (0.0026341, "0.00263"), (1e-5, "1e-5"), (2.5e4, "2.5e4"), (0.5, "0.5"), (1234.5, "1.23e3"),
    (True, "true"), (False, "false"), (["user", "item"], "user,item"), (256, "256"), ("lowrank", "lowrank"),
    (math.inf, "inf"),
])
def test_values_are_compact(value: object, shown: str) -> None:
    assert format_value(value) == shown


def test_a_label_follows_the_search_order_and_names_a_key_alike_in_every_trial() -> None:
    keys = PROJECTOR + LORA
    trial = {"stage3.lr": 0.0026341, "stage3.semantic_projector.rank": 175, "stage3.collab_projector.type": "mlp",
             "stage3.semantic_projector.type": "lowrank"}
    assert params_label(trial, keys) == "collab=mlp sem=lowrank sem.r=175 s3.lr=0.00263"
    # the lora keys are not drawn here, yet the rank keeps the name it has in trials that draw them
    assert params_label({"stage3.semantic_projector.rank": 8}, keys) == "sem.r=8"
    assert params_label({"stage3.semantic_projector.rank": 8}) == "r=8"       # no search given: its own keys
    assert params_label({}) == ""


def test_a_long_label_keeps_whole_items_within_the_limit() -> None:
    params = {f"p{i}": "abcdefghij" for i in range(8)}                       # 8 items of 13 characters: 111
    label = params_label(params)
    assert label == "p0=abcdefghij p1=abcdefghij p2=abcdefghij p3=abcdefghij p4=abcdefghij ..."
    assert len(label) <= LABEL_CHARS == 80
    assert params_label(params, limit=None).endswith("p7=abcdefghij")
    assert params_label({"x": "y" * 100}) == "x=" + "y" * 75 + "..."           # one item longer than the limit
