"""`python -m sellarec train` end to end on the tiny profile: metrics.json contract, resume, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sellarec.cache import StageCache
from sellarec.config import load_config
from sellarec.pipeline import run_pipeline


def _cfg(cache: Path, *overrides: str):
    return load_config("tiny", overrides=[f"runtime.cache_dir={cache}", "runtime.progress=false", *overrides])


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("run")
    cfg = _cfg(root / "cache")
    return cfg, root, run_pipeline(cfg, root / "out")


def test_metrics_json_contract(first_run) -> None:
    _, root, result = first_run
    metrics = json.loads((root / "out" / "metrics.json").read_text())
    assert metrics["final"] == "stage3" and metrics["cache"] == {
        "stage1": "miss", "stage1_test": "miss", "stage2": "miss", "stage3": "miss", "stage3_test": "miss"}
    for stage in ("stage1", "stage2", "stage3"):                          # the nested layout scripts read
        for split in ("valid", "test", "test_warm", "test_cold"):
            assert {"auc", "uauc", "rows"} <= set(metrics[stage][split]), (stage, split)
    assert metrics["stage3"]["trainable_params"] > 0 and metrics["stage3"]["seconds"] > 0
    align = metrics["stage2"]["align"]
    assert align["after"] > align["before"]                               # the alignment loss did its job
    # every stage is scored on the same evaluation rows
    assert len({metrics[s]["test"]["rows"] for s in ("stage1", "stage2", "stage3")}) == 1
    adapter = root / "cache" / "stages" / "stage1" / metrics["keys"]["stage1"] / "adapter.safetensors"
    assert adapter.stat().st_size < 200_000                               # adapter only, no embeddings


def test_stage2_test_auc_is_sklearn_on_the_cached_mf_tables(first_run) -> None:
    # Recomputed outside the pipeline: the same test rows, the cached MF tables, sklearn's AUC of the dot product.
    from safetensors.torch import load_file
    from sklearn.metrics import roc_auc_score

    from sellarec.data.batches import sample_rows
    from sellarec.data.dataset import load_dataset

    cfg, root, result = first_run
    rows = sample_rows(load_dataset(cfg.data, root / "cache").split("test"), cfg.eval.max_test_samples,
                       cfg.runtime.seed + 1)
    tables = load_file(str(root / "cache" / "stages" / "stage2" / result.metrics["keys"]["stage2"] / "mf.safetensors"))
    scores = (tables["user_emb.weight"][rows["user"].to_numpy()] * tables["item_emb.weight"][rows["item"].to_numpy()])
    expected = roc_auc_score(rows["label"].to_numpy(), scores.sum(-1).numpy())
    assert result.metrics["stage2"]["test"]["rows"] == len(rows) == cfg.eval.max_test_samples
    assert result.metrics["stage2"]["test"]["auc"] == pytest.approx(expected, abs=1e-6)


def test_identical_rerun_is_all_cache_hits(first_run) -> None:
    cfg, root, result = first_run
    again = run_pipeline(cfg, root / "again")
    assert set(again.cache.values()) == {"hit"} and len(again.cache) == 5
    for stage in ("stage1", "stage2", "stage3"):
        assert again.metrics[stage] == json.loads(json.dumps(result.metrics[stage]))


def test_changing_stage3_recomputes_only_stage3(first_run) -> None:
    _, root, _ = first_run
    changed = run_pipeline(_cfg(root / "cache", "stage3.tokens=[user,item]"), root / "s3")
    assert changed.cache == {"stage1": "hit", "stage1_test": "hit", "stage2": "hit", "stage3": "miss",
                             "stage3_test": "miss"}


def test_changing_stage2_recomputes_stage2_and_3(first_run) -> None:
    _, root, _ = first_run
    changed = run_pipeline(_cfg(root / "cache", "stage2.lr=0.02"), root / "s2")
    assert changed.cache == {"stage1": "hit", "stage1_test": "hit", "stage2": "miss", "stage3": "miss",
                             "stage3_test": "miss"}


def test_runtime_settings_do_not_change_keys(first_run) -> None:
    _, root, result = first_run
    again = run_pipeline(_cfg(root / "cache", "runtime.threads=2", "runtime.progress=true"), root / "rt")
    assert set(again.cache.values()) == {"hit"}


def test_a_sweep_run_skips_test_and_a_later_run_adds_it(first_run, tmp_path: Path) -> None:
    """Without test evaluation (sweeps) the stages are the same entries; a later run scores test alone, and the
    stage-3 model rebuilt from the cache scores exactly as the one trained in process did."""
    _, root, result = first_run
    cfg = _cfg(tmp_path / "cache", "stage3.lr=0.002")
    sweep = run_pipeline(cfg, tmp_path / "sweep", evaluate_test=False)
    assert sweep.cache == {"stage1": "miss", "stage2": "miss", "stage3": "miss"}
    assert not any(k.startswith("test") for stage in ("stage1", "stage3") for k in sweep.metrics[stage])
    later = run_pipeline(cfg, tmp_path / "later")
    assert later.cache == {"stage1": "hit", "stage1_test": "miss", "stage2": "hit", "stage3": "hit",
                           "stage3_test": "miss"}
    fresh = run_pipeline(_cfg(tmp_path / "fresh", "stage3.lr=0.002"), tmp_path / "fresh_out")
    for stage in ("stage1", "stage3"):
        for split in ("test", "test_warm", "test_cold"):
            assert later.metrics[stage][split] == pytest.approx(fresh.metrics[stage][split], abs=1e-6)


@pytest.mark.parametrize("preset, stages", [("mf", ["stage2"]), ("tallrec-style", ["stage1"]),
                                            ("collm-style", ["stage1", "stage2", "stage3"])])
def test_presets_run_only_what_they_need(tmp_path: Path, preset: str, stages: list[str]) -> None:
    cfg = load_config("tiny", preset, [f"runtime.cache_dir={tmp_path / 'cache'}", "runtime.progress=false"])
    result = run_pipeline(cfg, tmp_path / "out")
    assert sorted(k for k in result.cache if not k.endswith("_test")) == stages
    if preset == "mf":
        assert result.metrics["stage2"]["align"] is None
        assert not (tmp_path / "cache" / "backbones").exists()            # the LLM was never loaded
    if preset == "collm-style":
        assert result.metrics["stage2"]["align"] is None


def _cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SELLAREC_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "sellarec", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_cli_train_prints_a_table_and_writes_metrics(tmp_path: Path) -> None:
    result = _cli("train", "--profile", "tiny", "--until", "stage1", "--out", str(tmp_path / "out"),
                  "--set", "runtime.progress=false", cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("LLM (stage 1, TALLRec-style)")]
    valid = metrics["stage1"]["valid"]
    assert f"{valid['auc']:.4f} [{valid['auc_ci_low']:.3f}, {valid['auc_ci_high']:.3f}] n={int(valid['rows'])}" in row
    assert {"stage1"} <= set(metrics) and "stage2" not in metrics
    assert metrics["cache"] == {"stage1": "miss", "stage1_test": "miss"} and "test" in metrics["stage1"]


def test_cli_train_valid_only_skips_the_test_evaluation(tmp_path: Path) -> None:
    result = _cli("train", "--profile", "tiny", "--until", "stage1", "--valid-only", "--out", str(tmp_path / "out"),
                  "--set", "runtime.progress=false", cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["cache"] == {"stage1": "miss"} and "test" not in metrics["stage1"]
    assert "valid" in metrics["stage1"] and not (tmp_path / "cache" / "stages" / "stage1_test").exists()


@pytest.mark.parametrize("args, message", [
    (["train", "--until", "stage9"], "invalid choice: 'stage9'"),
    (["train", "--profile", "tiny", "--set", "stage1.lora.r=0"], "stage1.lora.r=0 must be >= 1"),
    (["train", "--profile", "tiny", "--set", "backbone.name=/no/such/model"], "/no/such/model"),
])
def test_cli_train_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    result = _cli(*args, "--out", str(tmp_path / "out"), cache=tmp_path / "cache")
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr.strip().splitlines()[-1]
    assert StageCache(tmp_path / "cache").entries() == []                  # no artifact ...
    assert not list((tmp_path / "cache").glob("stages/*/.*.tmp-*"))         # ... and no half-written one


def test_compare_renders_the_final_stage_of_each_run(first_run, tmp_path: Path) -> None:
    _, root, result = first_run
    out = _cli("compare", str(root / "out"), cache=tmp_path / "cache")
    assert out.returncode == 0, out.stderr
    table = out.stdout.splitlines()
    assert len(table) == 3 and table[2].startswith("| out | LLM + ID tokens (stage 3: user, item, warm) |")
    test_auc = result.metrics["stage3"]["test"]["auc"]
    assert f"{test_auc:.4f} [" in table[2]
    missing = _cli("compare", str(tmp_path / "nothing"), cache=tmp_path / "cache")
    assert missing.returncode == 2 and "has no metrics.json" in missing.stderr


def test_dtype_enters_the_keys_only_when_not_float32(tmp_path: Path) -> None:
    from sellarec.pipeline import stage_keys

    base = stage_keys(_cfg(tmp_path), "fp")
    assert stage_keys(_cfg(tmp_path, "runtime.dtype=float32"), "fp") == base   # CPU auto = float32: same keys
    bf16 = stage_keys(_cfg(tmp_path, "runtime.dtype=bfloat16"), "fp")
    assert set(bf16) == set(base) and all(bf16[s] != base[s] for s in base)   # a bf16 run never reuses fp32 work


def test_an_added_field_at_its_old_value_keeps_the_old_stage3_key(tmp_path: Path) -> None:
    import hashlib
    import json

    from sellarec.config import to_dict
    from sellarec.pipeline import CODE_VERSION, stage_keys

    # The stage-3 key as it was computed before `collab_projector.activation` existed: the same parts, that field
    # absent. Rebuilt by hand so the test does not go through the pruning it checks.
    cfg = _cfg(tmp_path, "stage3.projector_init=random")
    keys = stage_keys(cfg, "fp")
    stage3 = to_dict(cfg.stage3)
    del stage3["collab_projector"]["activation"]
    common = {"data": "fp", "eval": to_dict(cfg.eval), "seed": cfg.runtime.seed}
    llm = {"backbone": to_dict(cfg.backbone), "data_render": to_dict(cfg.data)}
    parts = ["stage3", CODE_VERSION["stage3"], common, llm, keys["stage1"], keys["stage2"], stage3]
    old = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]
    assert keys["stage3"] == old
    relu = stage_keys(_cfg(tmp_path, "stage3.projector_init=random", "stage3.collab_projector.activation=relu"), "fp")
    assert relu["stage3"] != old and relu["stage2"] == keys["stage2"]


@pytest.mark.parametrize("damage", ["truncate", "scramble"])
def test_a_damaged_cache_entry_is_recomputed_to_the_same_metrics(tmp_path: Path, caplog, damage: str) -> None:
    """Damage the largest file of every stage-cache entry of a finished run, one entry at a time: each rerun warns
    once about that entry and ends with the clean run's metrics (issue 13)."""
    from sellarec.pipeline import flat_metrics

    cfg = _cfg(tmp_path / "cache")
    clean = flat_metrics(run_pipeline(cfg, tmp_path / "clean").metrics)
    measured = {k: v for k, v in clean.items() if not k.startswith(("cost/", "cache/"))}
    for entry in StageCache(tmp_path / "cache").entries():
        largest = max((f for f in entry.path.iterdir() if f.name != "meta.json"), key=lambda f: f.stat().st_size)
        data = largest.read_bytes()
        largest.write_bytes(data[: len(data) // 2] if damage == "truncate" else os.urandom(len(data)))
        caplog.clear()
        with caplog.at_level("WARNING", logger="sellarec.cache"):
            again = flat_metrics(run_pipeline(cfg, tmp_path / f"rerun-{entry.stage}").metrics)
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and f"{entry.stage}/{entry.key} is broken" in warnings[0], (entry.stage, warnings)
        assert {k: v for k, v in again.items() if not k.startswith(("cost/", "cache/"))} == measured, entry.stage
        assert again[f"cache/{entry.stage}"] == 0.0                 # that entry, and only it, was computed again
        assert sum(v == 0.0 for k, v in again.items() if k.startswith("cache/")) == 1
