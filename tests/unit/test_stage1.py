"""Stage 1 on the tiny backbone: LR schedule, scoring, LoRA training, distillation."""

from __future__ import annotations

import math

import pytest
import torch

from sellarec.config import DataConfig, EvalConfig, LoraConfig, Stage1Config, Stage2Config
from sellarec.data import load_dataset
from sellarec.data.batches import build_examples, collate, sample_rows
from sellarec.models.backbone import load_backbone
from sellarec.data.prompts import tiny_corpus
from sellarec.stages import stage1
from sellarec.stages.loop import lr_factor
from sellarec.stages.distill import distill_items
from sellarec.stages.evaluation import answer_logits, yes_no_score


def test_constant_warmup_is_logarithmic_then_flat() -> None:
    factors = [lr_factor("constant_warmup", s, warmup_steps=10, total_steps=100) for s in range(100)]
    assert factors[0] == pytest.approx(math.log(2) / math.log(11))
    assert all(a < b for a, b in zip(factors[:9], factors[1:10]))
    assert factors[9:] == [1.0] * 91


def test_cosine_warms_up_linearly_and_decays_to_zero() -> None:
    f = [lr_factor("cosine", s, warmup_steps=4, total_steps=104) for s in range(105)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[54] == pytest.approx(0.5)                                  # half-way through the decay
    assert f[104] == pytest.approx(0.0, abs=1e-12)


def test_score_functions_by_hand() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0]])                            # ids: 0 other, 1 yes, 2 no
    two_way = yes_no_score(logits, yes_id=1, no_id=2, score_fn="two_way_softmax")
    assert two_way.item() == pytest.approx(math.exp(2) / (math.exp(2) + math.exp(1)))
    p = torch.softmax(logits, -1)[0]
    double = yes_no_score(logits, yes_id=1, no_id=2, score_fn="double_softmax")
    assert double.item() == pytest.approx(1 / (1 + math.exp(-(p[1] - p[2]).item())))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    cache = tmp_path_factory.mktemp("cache")
    ds = load_dataset(DataConfig(max_users=40), cache)
    return ds, cache


def _backbone(tiny):
    ds, cache = tiny
    return load_backbone("tiny", cache_dir=cache, tiny_corpus=tiny_corpus(ds.titles, ds.item_word))


def test_answer_logits_do_not_depend_on_padding(tiny) -> None:
    ds, _ = tiny
    bb = _backbone(tiny)
    examples = build_examples(ds, ds.split("valid").head(6), bb.tokenizer, stage=1, max_length=512,
                              with_answer=False)
    batched = answer_logits(bb.model, collate(examples, bb.tokenizer.pad_token_id))
    for row, ex in enumerate(examples):
        alone = answer_logits(bb.model, collate([ex], bb.tokenizer.pad_token_id))
        torch.testing.assert_close(batched[row], alone[0], atol=1e-4, rtol=1e-4)
        full = bb.model(input_ids=torch.tensor([ex.ids])).logits[0, -1]    # the plain HF forward
        torch.testing.assert_close(alone[0], full, atol=1e-4, rtol=1e-4)


def test_stage1_trains_lora_only_and_reports_metrics(tiny) -> None:
    ds, _ = tiny
    bb = _backbone(tiny)
    base_before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    cfg = Stage1Config(lora=LoraConfig(r=4, alpha=8, dropout=0.0, targets=("q_proj", "v_proj")), lr=1e-2,
                       batch_size=8, grad_accum=1, max_train_samples=24)
    eval_cfg = EvalConfig(batch_size=16, bootstrap_samples=20)
    valid = sample_rows(ds.split("valid"), 24, 0)
    test = sample_rows(ds.split("test"), 24, 1)
    out = stage1.run(cfg, eval_cfg, ds, bb, valid_rows=valid, test_rows=test, max_length=512, seed=0)
    assert not any(k.startswith("test") for k in out.metrics)                 # test is a step of its own
    out.metrics.update(stage1.evaluate_test(out.model, eval_cfg, ds, bb, test_rows=test, max_length=512, seed=0))
    assert out.steps == 3 and out.train_samples == 24
    assert any(v.abs().sum() > 0 for k, v in out.adapter.items() if "lora_B" in k)   # B starts at 0: it moved
    for name, value in out.model.get_base_model().state_dict().items():
        if "lora_" not in name:
            original = name.replace(".base_layer", "")
            torch.testing.assert_close(value, base_before[original], rtol=0, atol=0)   # base weights untouched
    for key in ("valid/auc", "valid/uauc", "test/auc", "test/uauc", "test_warm/auc", "test_cold/auc"):
        assert key in out.metrics
    assert 0.0 <= out.metrics["test/auc"] <= 1.0
    assert out.metrics["test/auc_ci_low"] <= out.metrics["test/auc"] <= out.metrics["test/auc_ci_high"]

    semantic = distill_items(Stage2Config(distill_batch_size=16), ds, bb, out.model)
    assert semantic.shape == (ds.num_items, bb.hidden_size) and semantic.dtype == torch.float32
    assert torch.all(semantic[0] == 0) and torch.isfinite(semantic).all()
    real = semantic[1:]
    assert (real != real.round()).float().mean() > 0.99                 # floats, not the official int cast
    assert torch.unique(real, dim=0).shape[0] > 0.9 * real.shape[0]      # distinct titles -> distinct vectors
    cast = distill_items(Stage2Config(distill_batch_size=16, faithful_int_cast=True), ds, bb, out.model)
    assert torch.equal(cast, cast.round()) and torch.equal(cast, semantic.trunc())
