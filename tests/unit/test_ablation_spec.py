"""Ablation specs: the shipped specs, expansion per mode (cell names and resolved configs), jobs, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sellarec.ablation.expansion import expand_cells, expand_jobs
from sellarec.ablation.spec import load_spec, parse_spec
from sellarec.config import apply_overrides, config_key
from sellarec.errors import ConfigError

SPECS = Path(__file__).resolve().parents[2] / "ablations" / "specs"
TOY = {"a": {"description": "warm token", "remove": {"stage3.tokens": ["warm"]}},
       "b": {"description": "random init", "set": {"stage3.projector_init": "random"}},
       "c": {"description": "big lr", "set": {"stage3.lr": 0.5}}}


def _spec(mode: str = "leave_one_out", **extra):
    body = {"profile": "tiny", "mode": mode, "seeds": 2, "components": TOY, **extra}
    return parse_spec(yaml.safe_load(yaml.safe_dump(body)), "toy")


def _names(spec, **kwargs) -> list[str]:
    return [c.name for c in expand_cells(spec, **kwargs)]


def test_components_spec_maps_each_paper_component_to_its_config() -> None:
    cells = {c.name: c for c in expand_cells(load_spec("components", SPECS), profile="tiny")}
    assert list(cells) == ["full", "-warm_token", "-user_token", "-item_token", "-alignment", "-warmup_init",
                           "-stage1_lora", "-semantic_projector", "mf", "tallrec-style", "collm-style"]
    full = cells["full"].config
    assert full.stage3.tokens == ("user", "item", "warm") and full.stage3.projector_init == "warmup"
    assert cells["-warm_token"].config.stage3.tokens == ("user", "item")
    assert cells["-user_token"].config.stage3.tokens == ("item", "warm")
    assert cells["-item_token"].config.stage3.tokens == ("user", "warm")
    alignment = cells["-alignment"].config
    assert alignment.stage2.align == "none" and alignment.stage3.projector_init == "random"
    assert cells["-warmup_init"].config.stage3.projector_init == "random"
    assert cells["-warmup_init"].config.stage2 == full.stage2                  # shares stage 2 with the full model
    lora = cells["-stage1_lora"].config.stage1
    assert lora.max_train_samples == 1 and lora.lr == 1e-12
    assert cells["-semantic_projector"].config.stage3.semantic_projector.type == "lowrank"
    assert cells["mf"].config.final_stage == "stage2" and cells["tallrec-style"].config.final_stage == "stage1"
    assert cells["collm-style"].config.stage3.tokens == ("user", "item")
    assert [c.kind for c in cells.values()] == ["full"] + ["ablation"] * 7 + ["baseline"] * 3


def test_projector_spec_is_the_4x2_grid() -> None:
    cells = expand_cells(load_spec("projector", SPECS), profile="tiny")
    assert len(cells) == 8 and cells[0].name == "full"
    pairs = {(c.config.stage3.collab_projector.type, c.config.stage3.semantic_projector.type) for c in cells}
    assert pairs == {(a, b) for a in ("mlp", "linear", "mlp_residual", "moe") for b in ("linear", "lowrank")}
    linear = next(c for c in cells if c.name == "collab=linear")
    assert linear.config.stage3.projector_init == "random"                  # warm-up cannot copy into one Linear
    assert "collab=moe,semantic=lowrank" in [c.name for c in cells]


def test_leave_one_out() -> None:
    cells = expand_cells(_spec(baselines=["mf"]))
    assert [c.name for c in cells] == ["full", "-a", "-b", "-c", "mf"]
    assert cells[1].overrides == {"stage3.tokens": ["user", "item"]}
    assert cells[2].config.stage3.projector_init == "random" and cells[2].config.stage3.tokens == ("user", "item",
                                                                                                  "warm")
    assert cells[3].config.stage3.lr == 0.5 and cells[4].kind == "baseline"


def test_methods_spec_is_the_full_model_and_its_baselines() -> None:
    cells = expand_cells(load_spec("methods", SPECS), profile="tiny")
    assert [(c.name, c.kind) for c in cells] == [("full", "full"), ("mf", "baseline"), ("tallrec-style", "baseline"),
                                                 ("collm-style", "baseline")]
    with pytest.raises(ConfigError, match=r"mode add_one_in needs at least one entry under 'components'"):
        parse_spec({"profile": "tiny", "mode": "add_one_in", "baselines": ["mf"]}, "toy")
    with pytest.raises(ConfigError, match=r"mode leave_one_out needs at least one entry under 'components'"):
        parse_spec({"profile": "tiny"}, "toy")                              # neither components nor baselines


def test_add_one_in() -> None:
    cells = {c.name: c.config for c in expand_cells(_spec("add_one_in"))}
    assert list(cells) == ["full", "bare", "+a", "+b", "+c"]
    bare = cells["bare"].stage3
    assert (bare.tokens, bare.projector_init, bare.lr) == (("user", "item"), "random", 0.5)
    only_a = cells["+a"].stage3                                             # a kept: every other component removed
    assert (only_a.tokens, only_a.projector_init, only_a.lr) == (("user", "item", "warm"), "random", 0.5)
    only_c = cells["+c"].stage3
    assert (only_c.tokens, only_c.projector_init, only_c.lr) == (("user", "item"), "random", 1e-3)


def test_factorial_is_every_subset() -> None:
    cells = {c.name: c.config for c in expand_cells(_spec("factorial"))}
    assert list(cells) == ["full", "-a", "-b", "-c", "-a-b", "-a-c", "-b-c", "-a-b-c"]
    ab = cells["-a-b"].stage3
    assert (ab.tokens, ab.projector_init, ab.lr) == (("user", "item"), "random", 1e-3)


def test_grid_names_only_the_axes_off_their_first_level() -> None:
    axes = {"collab": {"mlp": {}, "moe": {"set": {"stage3.collab_projector.type": "moe"}}},
            "lr": {"small": {}, "mid": {"set": {"stage3.lr": 0.01}}, "big": {"set": {"stage3.lr": 0.1}}}}
    spec = parse_spec({"profile": "tiny", "mode": "grid", "axes": axes}, "grid")
    assert _names(spec) == ["full", "lr=mid", "lr=big", "collab=moe", "collab=moe,lr=mid", "collab=moe,lr=big"]


def test_jobs_map_seeds_to_runtime_seed_and_keys_ignore_runtime() -> None:
    cells = expand_cells(_spec(), max_cells=2)
    jobs = expand_jobs(cells, (0, 1))
    assert [(j.cell.name, j.seed, j.config.runtime.seed) for j in jobs] == [("full", 0, 0), ("full", 1, 1),
                                                                           ("-a", 0, 0), ("-a", 1, 1)]
    assert len({j.run_key for j in jobs}) == 4
    moved = apply_overrides(jobs[0].config, {"runtime.cache_dir": "/elsewhere", "runtime.threads": 2})
    assert config_key(moved) == jobs[0].run_key
    assert _spec().seeds == (0, 1)


@pytest.mark.parametrize("body, message", [
    ({"mdoe": "factorial"}, r"unknown key 'mdoe' \(did you mean 'mode'\?\)"),
    ({"mode": "leave_one_ou"}, r"mode='leave_one_ou' is not one of .* \(did you mean 'leave_one_out'\?\)"),
    ({"seeds": 0}, r"seeds=0 must be >= 1"),
    ({"seeds": [1, 1]}, r"seeds=\[1, 1\] must be a count >= 1 or a list of distinct seeds"),
    ({"baselines": ["collm_style"]}, r"unknown preset 'collm_style' \(did you mean 'collm-style'\?"),
    ({"components": {"Bad-Name": {"set": {}}}}, r"name 'Bad-Name' must be lowercase"),
    ({"components": {"a": {"sett": {}}}}, r"unknown key 'sett' \(did you mean 'set'\?\)"),
    ({"mode": "factorial", "components": {n: {"set": {"stage3.lr": i / 10}} for i, n in enumerate("abcde", 1)}},
     r"factorial takes at most 4 components, got 5"),
    ({"mode": "grid"}, r"mode grid takes 'axes', not 'components'"),
])
def test_structural_errors_are_one_line(body: dict, message: str) -> None:
    values = {"profile": "tiny", "components": TOY, **body}
    with pytest.raises(ConfigError, match=message) as info:
        parse_spec(values, "toy")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("components, mode, message", [
    ({"a": {"set": {"stage3.tokenz": ["user"]}}}, "leave_one_out",
     r"cell '-a': unknown config key 'stage3.tokenz' \(did you mean 'stage3.tokens'\?\)"),
    ({"a": {"remove": {"stage3.tokens": ["wram"]}}}, "leave_one_out",
     r"'a' removes \['wram'\] from stage3.tokens but the full model's stage3.tokens is \['user', 'item', 'warm'\]"),
    ({"a": {"remove": {"stage3.lr": [1]}}}, "leave_one_out", r"stage3.lr=0.001, which is not a list"),
    ({"a": {"set": {"stage3.lr": 0.1}}, "b": {"set": {"stage3.lr": 0.2}}}, "add_one_in",
     r"cell 'bare': 'a' sets stage3.lr=0.1 but 'b' sets stage3.lr=0.2; they cannot be combined"),
    ({"a": {"set": {"stage2.align": "none"}}}, "leave_one_out",
     r"cell '-a': stage3.projector_init='warmup' copies stage 2's projection, but stage2.align='none'"),
    ({"u": {"remove": {"stage3.tokens": ["user"]}}, "i": {"remove": {"stage3.tokens": ["item"]}},
      "w": {"remove": {"stage3.tokens": ["warm"]}}}, "add_one_in", r"cell 'bare': stage3.tokens=\[\] leaves stage 3 nothing to inject"),
    ({"a": {"set": {"stage3.projector_init": "warmup"}}}, "leave_one_out",
     r"cells 'full' and '-a' resolve to the same configuration"),
    ({"a": {"set": {"stage3.lr": -1}}}, "leave_one_out", r"cell '-a': stage3.lr=-1.0 must be > 0"),
    ({"a": {"set": {"stage3.train_user_emb": False, "stage3.train_item_emb": False, "stage3.train_semantic": False,
                    "stage3.train_projectors": False}}}, "leave_one_out", r"cell '-a': .*leaves stage 3 nothing to train"),
])
def test_cell_errors_name_the_cell(components: dict, mode: str, message: str) -> None:
    spec = parse_spec({"profile": "tiny", "mode": mode, "components": components}, "toy")
    with pytest.raises(ConfigError, match=message) as info:
        expand_cells(spec)
    assert "\n" not in str(info.value)


def test_bad_profile_and_override_and_spec_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ablation spec 'toy': unknown profile 'tinyy' \(did you mean 'tiny'"):
        expand_cells(_spec(), profile="tinyy")
    with pytest.raises(ConfigError, match=r"ablation spec 'toy': --set: unknown config key 'stage9'"):
        expand_cells(_spec(), overrides=["stage9.lr=1"])
    with pytest.raises(ConfigError, match=r"unknown ablation spec 'component' \(did you mean 'components'\?"):
        load_spec("component", SPECS)
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: [unclosed\n")
    with pytest.raises(ConfigError, match=r"ablation spec file .*bad.yaml line \d+"):
        load_spec(str(bad), SPECS)
