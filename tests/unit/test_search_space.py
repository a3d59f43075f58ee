"""Search-space YAML -> Optuna distributions, conditional parameters, and one-line errors for bad spaces."""

from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from sellarec.config import apply_overrides, load_config
from sellarec.errors import ConfigError
from sellarec.tuning.space_file import list_spaces, load_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

PROJECTOR = """
metric: valid/uauc
mode: max
num_samples: 5
sampler: {kind: random, seed: 3}
params:
  stage3.collab_projector.type: {choice: [mlp, linear, moe]}
  stage3.projector_init: {choice: [warmup, random], when: {stage3.collab_projector.type: [mlp, moe]}, otherwise: random}
  stage3.collab_projector.num_experts: {int: [2, 8], when: {stage3.collab_projector.type: moe}}
  stage3.collab_projector.hidden: {int: [16, 64], step: 16, when: {stage3.projector_init: random}}
  stage3.lr: {float: [1.0e-4, 1.0e-2], log: true}
  stage3.tokens: {subsets: [user, item, warm]}
  stage1.lora.targets: {choice: [[q_proj, v_proj], [q_proj]]}
"""


def _space(tmp_path: Path, text: str, name: str = "s"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return load_space(path)


def _draws(space, n: int = 150, seed: int = 0) -> list[tuple[dict, dict]]:
    """(sampled overrides, Optuna distributions of the trial) for n random trials."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((space(trial), dict(trial.distributions)))
        study.tell(trial, 0.5)
    return out


@pytest.mark.parametrize("name", ["projector", "tokens", "lora", "full", "training", "mf"])
def test_shipped_spaces_validate_against_tiny_and_quick(name: str) -> None:
    assert name in list_spaces()
    space = load_space(name)
    for profile in ("tiny", "quick"):
        space.validate(load_config(profile))
    assert space.metric in ("valid/auc", "valid/uauc") and space.num_samples >= 1
    for overrides, _ in _draws(space, n=40):      # every sampled trial is a valid configuration
        apply_overrides(load_config("tiny"), overrides)


def test_mf_space_trains_plain_mf_only_and_runs_to_the_end() -> None:
    space = load_space("mf")
    cfg = apply_overrides(load_config("quick"), space.fixed_overrides)
    assert (cfg.final_stage, cfg.stage2.align, space.scheduler) == ("stage2", "none", "fifo")
    assert set(space.keys) == {"stage2.lr", "stage2.weight_decay", "stage2.emb_dim", "stage2.batch_size"}
    assert space.num_samples >= 16 and load_space("lora").scheduler == "asha"  # a space without the key


def test_incumbent_point_is_the_configurations_own_values() -> None:
    space = load_space("mf")
    assert space.incumbent
    cfg = apply_overrides(load_config("quick"), space.fixed_overrides)
    assert space.point(cfg) == {"stage2.lr": 1e-2, "stage2.weight_decay": 1e-4, "stage2.emb_dim": 256,
                                "stage2.batch_size": 1024}                # quick.yaml's and the paper's MF
    with pytest.raises(ConfigError, match=r"incumbent: the configuration's stage2.emb_dim=16 is outside"):
        space.point(load_config("tiny"))                                    # tiny's 16-d MF is not searched
    projector = load_space("projector")
    point = projector.point(load_config("quick"))   # conditional parameters: only those active at the base
    assert point["stage3.collab_projector.type"] == "mlp" and "stage3.collab_projector.num_experts" not in point


def test_full_space_is_the_union_of_the_others() -> None:
    union = [k for name in ("tokens", "projector", "lora") for k in load_space(name).keys]
    assert load_space("full").keys == union


def test_top_level_fields(tmp_path: Path) -> None:
    space = _space(tmp_path, PROJECTOR)
    assert (space.metric, space.mode, space.num_samples) == ("valid/uauc", "max", 5)
    assert (space.sampler.kind, space.sampler.seed, space.sampler.n_startup_trials) == ("random", 3, None)


def test_yaml_becomes_optuna_distributions(tmp_path: Path) -> None:
    seen: dict[str, object] = {}
    for _, dists in _draws(_space(tmp_path, PROJECTOR)):
        seen.update(dists)
    assert seen == {
        "stage3.collab_projector.type": CategoricalDistribution(["mlp", "linear", "moe"]),
        "stage3.projector_init": CategoricalDistribution(["warmup", "random"]),
        "stage3.collab_projector.num_experts": IntDistribution(2, 8),
        "stage3.collab_projector.hidden": IntDistribution(16, 64, step=16),
        "stage3.lr": FloatDistribution(1e-4, 1e-2, log=True),
        # subsets of three tokens: 3 + 3 + 1 non-empty ones, stored by their comma-joined label
        "stage3.tokens": CategoricalDistribution(["user,item,warm", "user,item", "user,warm", "item,warm",
                                                  "user", "item", "warm"]),
        "stage1.lora.targets": CategoricalDistribution(["q_proj,v_proj", "q_proj"]),
    }


def test_conditional_parameters_follow_their_conditions(tmp_path: Path) -> None:
    draws = _draws(_space(tmp_path, PROJECTOR), n=200)
    kinds = set()
    for overrides, dists in draws:
        kind = overrides["stage3.collab_projector.type"]
        kinds.add(kind)
        assert ("stage3.collab_projector.num_experts" in overrides) == (kind == "moe")
        if kind == "linear":   # not sampled: the `otherwise` value is set instead
            assert overrides["stage3.projector_init"] == "random"
            assert "stage3.projector_init" not in dists
        else:
            assert "stage3.projector_init" in dists
        assert ("stage3.collab_projector.hidden" in overrides) == (overrides["stage3.projector_init"] == "random")
        assert overrides["stage3.collab_projector.hidden"] % 16 == 0 if "stage3.collab_projector.hidden" in \
            overrides else True
        assert 1e-4 <= overrides["stage3.lr"] <= 1e-2
        assert overrides["stage3.tokens"] and set(overrides["stage3.tokens"]) <= {"user", "item", "warm"}
    assert kinds == {"mlp", "linear", "moe"}


def test_fixed_trial_values_map_back_to_config_values(tmp_path: Path) -> None:
    space = _space(tmp_path, PROJECTOR)
    trial = optuna.trial.FixedTrial({"stage3.collab_projector.type": "moe", "stage3.projector_init": "warmup",
                                     "stage3.collab_projector.num_experts": 3, "stage3.lr": 0.001,
                                     "stage3.tokens": "item,warm", "stage1.lora.targets": "q_proj"})
    overrides = space(trial)
    assert overrides == {"stage3.collab_projector.type": "moe", "stage3.projector_init": "warmup",
                         "stage3.collab_projector.num_experts": 3, "stage3.lr": 0.001,
                         "stage3.tokens": ["item", "warm"], "stage1.lora.targets": ["q_proj"]}
    cfg = apply_overrides(load_config("tiny"), overrides)
    assert cfg.stage3.tokens == ("item", "warm") and cfg.stage1.lora.targets == ("q_proj",)
    assert cfg.stage3.collab_projector.num_experts == 3


def test_space_pickles_for_tune(tmp_path: Path) -> None:
    space = _space(tmp_path, PROJECTOR)
    again = pickle.loads(pickle.dumps(space))
    assert [o for o, _ in _draws(again, n=10)] == [o for o, _ in _draws(space, n=10)]


def test_when_on_a_list_valued_parameter(tmp_path: Path) -> None:
    space = _space(tmp_path, """
params:
  stage3.tokens: {choice: [[user, item], [warm]]}
  stage3.semantic_projector.type: {choice: [lowrank], when: {stage3.tokens: [warm]}}
""")
    for overrides, _ in _draws(space, n=30):
        assert ("stage3.semantic_projector.type" in overrides) == (overrides["stage3.tokens"] == ["warm"])


def test_include_prepends_params(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("params:\n  stage3.lr: {float: [0.001, 0.01]}\n")
    space = _space(tmp_path, "include: [a]\nparams:\n  stage1.lr: {float: [0.001, 0.01]}\n", "b")
    assert space.keys == ["stage3.lr", "stage1.lr"]


def test_fixed_settings_become_overrides_and_set_wins(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("fixed: {stage3.max_train_samples: 64, stage3.tokens: [user, item]}\n"
                                     "params:\n  stage3.lr: {float: [0.001, 0.01]}\n")
    space = _space(tmp_path, "include: [a]\nfixed: {stage3.train_lora: true, stage3.max_train_samples: 32}\n"
                             "params:\n  stage1.lr: {float: [0.001, 0.01]}\n", "b")
    assert space.fixed_overrides == ["stage3.max_train_samples=32", "stage3.tokens=[user,item]",
                                     "stage3.train_lora=true"]
    cfg = load_config("tiny", overrides=[*space.fixed_overrides, "stage3.max_train_samples=16"])
    assert cfg.stage3.max_train_samples == 16 and cfg.stage3.tokens == ("user", "item") and cfg.stage3.train_lora


BAD = [
    ("params:\n  stage3.lr: {chioce: [1]}\n",
     r"params.stage3.lr: needs exactly one of choice, subsets, int, float, got 0; unknown 'chioce' "
     r"\(did you mean 'choice'\?\)"),
    ("params:\n  stage3.lr: {choice: [1], float: [1, 2]}\n", r"params.stage3.lr: needs exactly one of .*got 2"),
    ("params:\n  stage3.tokens: {choice: []}\n", r"params.stage3.tokens: choice needs a non-empty list"),
    ("params:\n  stage3.tokens: {choice: [[user], [user]]}\n", r"params.stage3.tokens: choice lists a value twice"),
    ("params:\n  stage1.lora.r: {int: [2.5, 8]}\n", r"params.stage1.lora.r: int needs \[low, high\] of integers"),
    ("params:\n  stage3.lr: {float: [0.1, 0.01]}\n", r"params.stage3.lr: float needs low < high"),
    ("params:\n  stage3.lr: {float: [0, 0.01], log: true}\n", r"params.stage3.lr: log: true needs low > 0"),
    ("params:\n  stage3.lr: {float: [0.001, 0.01], lgo: true}\n", r"params.stage3.lr: unknown field 'lgo' for float"),
    ("params:\n  stage3.collab_projector.num_experts: {int: [2, 4], when: {stage3.collab_projector.type: moe}}\n"
     "  stage3.collab_projector.type: {choice: [moe, mlp]}\n",
     r"params.stage3.collab_projector.num_experts: when refers to 'stage3.collab_projector.type', which is not an "
     r"earlier parameter"),
    ("params:\n  stage3.collab_projector.type: {choice: [moe, mlp]}\n"
     "  stage3.collab_projector.num_experts: {int: [2, 4], when: {stage3.collab_projector.type: linear}}\n",
     r"params.stage3.collab_projector.num_experts: when stage3.collab_projector.type='linear' can never hold"),
    ("params:\n  stage3.lr: {float: [0.001, 0.01], otherwise: 0.002}\n",
     r"params.stage3.lr: otherwise needs a when condition"),
    ("param:\n  stage3.lr: {float: [0.001, 0.01]}\n", r"unknown field 'param' \(did you mean 'params'\?\)"),
    ("metric: test/auc\nparams:\n  stage3.lr: {float: [0.001, 0.01]}\n",
     r"metric='test/auc' is not one of valid/auc, valid/uauc"),
    ("mode: maximum\nparams:\n  stage3.lr: {float: [0.001, 0.01]}\n", r"mode='maximum' is not one of max, min"),
    ("num_samples: 0\nparams:\n  stage3.lr: {float: [0.001, 0.01]}\n", r"num_samples=0 must be an integer >= 1"),
    ("sampler: {kind: cmaes}\nparams:\n  stage3.lr: {float: [0.001, 0.01]}\n",
     r"sampler.kind='cmaes' is not one of tpe, gp, random"),
    ("scheduler: hyperband\nparams:\n  stage3.lr: {float: [0.001, 0.01]}\n",
     r"scheduler='hyperband' is not one of asha, fifo"),
    ("incumbent: yes please\nparams:\n  stage3.lr: {float: [0.001, 0.01]}\n",
     r"incumbent='yes please' must be true or false"),
    ("params:\n  stage3.lr: {float: [0.001, 0.01]}\n  stage3.lr: {float: [0.001, 0.1]}\n",
     r"key 'stage3.lr' appears twice \(line 3\)"),
    ("params:\n  stage3.lr: {float: [0.001, 0.01]\n", r"expected ',' or '}'.*; fix the YAML syntax"),
    ("- a\n- b\n", r"must be a mapping with metric, mode, num_samples, sampler and params"),
    ("params: {}\n", r"params is empty"),
    ("include: [s]\nparams:\n  stage3.lr: {float: [0.001, 0.01]}\n", r"include 's' includes itself"),
    ("fixed: [stage3.lr]\nparams:\n  stage3.lr: {float: [0.001, 0.01]}\n", r"fixed must be a mapping"),
    ("fixed: {stage3.lr: 0.01}\nparams:\n  stage3.lr: {float: [0.001, 0.01]}\n",
     r"fixed.stage3.lr is also a searched parameter; keep one"),
    ("fixed: {stage3.lr: {a: 1}}\nparams:\n  stage1.lr: {float: [0.001, 0.01]}\n",
     r"fixed.stage3.lr must be a scalar or a list of scalars"),
]


@pytest.mark.parametrize("text, message", BAD)
def test_bad_space_is_one_line_naming_the_entry(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^space s\.yaml(: | line)" + ".*" + message) as info:
        _space(tmp_path, text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text, message", [
    ("params:\n  stage3.tokns: {subsets: [user, item]}\n",
     r"params.stage3.tokns: unknown config key 'stage3.tokns' \(did you mean 'stage3.tokens'\?\)"),
    ("params:\n  stage3.collab_projector.type: {choice: [mlp, cnn]}\n",
     r"params.stage3.collab_projector.type: stage3.collab_projector.type='cnn' is not one of mlp, linear"),
    ("params:\n  stage1.lora.r: {int: [0, 8]}\n", r"params.stage1.lora.r: stage1.lora.r=0 must be >= 1"),
])
def test_values_are_checked_against_the_config(tmp_path: Path, text: str, message: str) -> None:
    space = _space(tmp_path, text)
    with pytest.raises(ConfigError, match=r"^space s\.yaml: " + message) as info:
        space.validate(load_config("tiny"))
    assert "\n" not in str(info.value)


def test_a_value_invalid_in_every_context_names_its_entry(tmp_path: Path) -> None:
    # the base config keeps projector_init=warmup, which a linear projector cannot take
    space = _space(tmp_path, "params:\n  stage3.collab_projector.type: {choice: [mlp, linear]}\n")
    with pytest.raises(ConfigError, match=r"^space s\.yaml: params\.stage3\.collab_projector\.type: "
                                          r"stage3\.projector_init='warmup' needs a collab projector"):
        space.validate(load_config("tiny"))


def test_a_condition_makes_a_clash_valid(tmp_path: Path) -> None:
    conditional = _space(tmp_path, """
params:
  stage3.collab_projector.type: {choice: [mlp, linear]}
  stage3.projector_init: {choice: [warmup, random], when: {stage3.collab_projector.type: mlp}, otherwise: random}
""")
    conditional.validate(load_config("tiny"))


def test_two_unlinked_parameters_that_clash_are_named(tmp_path: Path) -> None:
    space = _space(tmp_path, """
params:
  stage3.collab_projector.type: {choice: [mlp, linear]}
  stage3.projector_init: {choice: [warmup, random]}
""")
    base = load_config("tiny", overrides=["stage3.projector_init=random"])   # each value alone is fine here
    with pytest.raises(ConfigError, match=r"^space s\.yaml: params stage3\.collab_projector\.type, "
                                          r"stage3\.projector_init can be sampled together as "
                                          r"stage3\.collab_projector\.type=linear, stage3\.projector_init=warmup, "
                                          r"which fails: .*make one conditional on the other with when:$") as info:
        space.validate(base)
    assert "\n" not in str(info.value)


def test_unknown_space_name_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"unknown space 'projectr' \(did you mean 'projector'\?"):
        load_space("projectr")


def test_missing_space_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"space file .*nope.yaml does not exist"):
        load_space(tmp_path / "nope.yaml")
