"""Configuration: profiles, presets, overrides, validation messages and round trips."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml

from sellarec import config as C
from sellarec.errors import ConfigError


CONFIGS = Path(C.__file__).resolve().parents[1] / "configs"


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """Dotted key -> value of every leaf of a YAML mapping, read independently of the config code."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def _flat(cfg: C.SellaConfig) -> dict[str, object]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in C.to_flat_dict(cfg).items()}


@pytest.mark.parametrize("profile", C.list_profiles())
def test_every_profile_sets_what_its_file_says(profile: str) -> None:
    leaves = _leaves(yaml.safe_load((CONFIGS / "profiles" / f"{profile}.yaml").read_text()))
    flat = _flat(C.load_config(profile))
    assert leaves and {k: flat[k] for k in leaves} == leaves


def test_shipped_profiles_and_presets() -> None:
    assert {"tiny", "quick", "full", "paper-ml1m", "paper-book"} <= set(C.list_profiles())
    assert {"sella", "collm-style", "tallrec-style", "mf"} == set(C.list_presets())


@pytest.mark.parametrize("preset", C.list_presets())
def test_every_preset_combines_with_a_profile(preset: str) -> None:
    # The preset's keys win over the profile's; every other key stays the profile's.
    leaves = _leaves(yaml.safe_load((CONFIGS / "presets" / f"{preset}.yaml").read_text()))
    tiny, combined = _flat(C.load_config("tiny")), _flat(C.load_config("tiny", preset))
    assert leaves and {k: combined[k] for k in leaves} == leaves
    assert {k: v for k, v in combined.items() if k not in leaves} == {k: v for k, v in tiny.items() if k not in leaves}


def test_precedence_profile_then_preset_then_override() -> None:
    cfg = C.load_config("tiny", "collm-style", ["stage3.tokens=[item]"])
    assert cfg.backbone.name == "tiny"                  # from the profile
    assert cfg.stage2.align == "none"                   # from the preset
    assert cfg.stage3.projector_init == "random"        # from the preset
    assert cfg.stage3.tokens == ("item",)               # the override beats the preset
    assert cfg.stage1.betas == (0.9, 0.95)              # untouched default


def test_override_types_are_parsed_by_field_type() -> None:
    cfg = C.load_config("tiny", overrides=["stage1.lr=3e-4", "stage1.lora.r=16", "eval.max_test_samples=null",
                                           "stage3.train_lora=true", "stage1.lora.targets=q_proj,k_proj",
                                           "stage3.collab_projector.type=moe"])
    assert cfg.stage1.lr == pytest.approx(3e-4) and isinstance(cfg.stage1.lr, float)
    assert cfg.stage1.lora.r == 16
    assert cfg.eval.max_test_samples is None
    assert cfg.stage3.train_lora is True
    assert cfg.stage1.lora.targets == ("q_proj", "k_proj")
    assert cfg.stage3.collab_projector.type == "moe"


def test_empty_token_list_is_allowed_without_stage3() -> None:
    assert C.load_config("tiny", overrides=["stage3.tokens=[]", "final_stage=stage1"]).stage3.tokens == ()


@pytest.mark.parametrize("override, message", [
    ("stage3.tokns=[user]", r"unknown config key 'stage3.tokns' \(did you mean 'stage3.tokens'\?\)"),
    ("stag1.lr=1", r"unknown config key 'stag1' \(did you mean 'stage1'\?\)"),
    ("stage1.lr=abc", r"stage1.lr='abc' must be a number"),
    ("stage1.lora.r=2.5", r"stage1.lora.r=2.5 must be an integer"),
    ("stage3.train_lora=maybe", r"stage3.train_lora='maybe' must be true or false"),
    ("stage3.tokens=[user,usr]", r"stage3.tokens\[1\]='usr' is not one of user, item, warm \(did you mean 'user'\?\)"),
    ("stage3.collab_projector.type=mop", r"is not one of mlp, linear, mlp_residual, moe \(did you mean 'moe'\?\)"),
    ("stage1.lr=-1", r"stage1.lr=-1.0 must be > 0"),
    ("data.valid_fraction=0.95", r"data.test_fraction=0.1 plus valid_fraction=0.95 must leave data for train"),
    ("stage3.tokens=[user,user]", r"stage3.tokens=\['user', 'user'\] must not repeat a token"),
    ("stage1.lr.x=1", r"config key 'stage1.lr.x' goes below the value 'stage1.lr'"),
    ("stage1.lr", r"must look like key.path=value"),
])
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        C.load_config("tiny", overrides=[override])


def test_errors_are_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        C.load_config("tiny", overrides=["stage3.tokns=[user]"])
    assert "\n" not in str(info.value)


def test_unknown_profile_and_preset() -> None:
    with pytest.raises(ConfigError, match=r"unknown profile 'quik' \(did you mean 'quick'\?"):
        C.load_config("quik")
    with pytest.raises(ConfigError, match=r"unknown preset 'sela'"):
        C.load_config("tiny", "sela")


def test_config_file_layer_and_errors(tmp_path) -> None:
    good = tmp_path / "mine.yaml"
    good.write_text("stage3:\n  lr: 0.005\n")
    assert C.load_config("tiny", config_file=good).stage3.lr == pytest.approx(0.005)
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage3:\n  lr: [1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml line \d+: .*fix the YAML syntax"):
        C.load_config("tiny", config_file=bad)
    with pytest.raises(ConfigError, match=r"does not exist"):
        C.load_config("tiny", config_file=tmp_path / "missing.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"must be a mapping"):
        C.load_config("tiny", config_file=listy)


@pytest.mark.parametrize("profile", C.list_profiles())
def test_dump_then_load_gives_the_same_config(profile: str) -> None:
    cfg = C.load_config(profile, overrides=["stage3.tokens=[warm, user]"])
    text = yaml.safe_dump(C.to_dict(cfg))
    assert C.from_dict(yaml.safe_load(text)) == cfg


def test_flat_dict_uses_dotted_paths() -> None:
    flat = C.to_flat_dict(C.load_config("tiny"))
    assert flat["stage3.collab_projector.type"] == "mlp"
    assert flat["stage1.lora.r"] == 4
    assert C.apply_overrides(C.SellaConfig(), {k: v for k, v in flat.items()}) == C.load_config("tiny")


def _config_classes() -> list[type]:
    return [obj for _, obj in inspect.getmembers(C, inspect.isclass)
            if dataclasses.is_dataclass(obj) and obj.__module__.startswith(C.__name__)]


@pytest.mark.parametrize("cls", _config_classes(), ids=lambda c: c.__name__)
def test_every_config_field_is_documented(cls: type) -> None:
    doc = inspect.getdoc(cls) or ""
    assert "Attributes:" in doc
    missing = [f.name for f in dataclasses.fields(cls) if f"{f.name}:" not in doc]
    assert not missing, f"{cls.__name__} lacks docs for {missing}"


@pytest.mark.parametrize("overrides, message", [
    (["stage3.tokens=[]"], r"stage3.tokens=\[\] leaves stage 3 nothing to inject"),
    (["stage2.align=none"], r"stage3.projector_init='warmup' copies stage 2's projection, but stage2.align='none'"),
    (["stage3.collab_projector.type=linear"], r"not stage3.collab_projector.type='linear'"),
    (["stage3.collab_projector.hidden=64"], r"stage3.collab_projector.hidden=64 must equal stage2.proj_hidden=32"),
    (["stage3.train_user_emb=false", "stage3.train_item_emb=false", "stage3.train_semantic=false",
      "stage3.train_projectors=false"], r"leaves stage 3 nothing to train"),
])
def test_impossible_stage3_fails_at_load_time(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        C.load_config("tiny", overrides=overrides)


def test_stage3_checks_do_not_apply_when_stage3_does_not_run() -> None:
    cfg = C.load_config("tiny", "tallrec-style", ["stage3.tokens=[]", "stage2.align=none"])
    assert cfg.final_stage == "stage1"
    assert C.load_config("tiny", overrides=["stage2.align=none", "stage3.tokens=[warm]"]).stage3.tokens == ("warm",)
