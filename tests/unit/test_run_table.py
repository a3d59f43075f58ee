"""`compare`'s model column names what a run trained, from its resolved config."""

from __future__ import annotations

import pytest

from sellarec.config import load_config, to_dict
from sellarec.run_table import model_label


@pytest.mark.parametrize("preset, final, label", [
    ("sella", "stage3", "LLM + ID tokens (stage 3: user, item, warm)"),
    ("collm-style", "stage3", "LLM + ID tokens (stage 3: user, item, MF frozen)"),
    ("mf", "stage2", "MF (stage 2)"),
    ("tallrec-style", "stage1", "LLM (stage 1, TALLRec-style)"),
])
def test_each_preset_is_labelled_by_what_it_trains(preset: str, final: str, label: str) -> None:
    cfg = load_config("quick", preset)
    assert cfg.final_stage == final
    assert model_label(final, to_dict(cfg)) == label


def test_a_run_without_its_config_keeps_the_stage_name() -> None:
    assert model_label("stage3", {}) == "LLM + ID tokens (stage 3)"
