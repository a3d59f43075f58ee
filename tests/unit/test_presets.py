"""Each method preset pins its recipe (issue 11): what trains, the projector's shape and activation, the loss, the
prompt. Expected values are the published recipes (CoLLM: github.com/zyang1580/CoLLM, `minigpt4/models/
rec_model.py` MF, `train_configs/*.yaml` `freeze_rec: True`, projector `Linear(256, 2560) -> ReLU -> Linear`;
TALLRec: github.com/SAI990323/TALLRec `shell/instruct_7B.sh`: LoRA r 8, alpha 16, dropout 0.05 on q_proj/v_proj,
`--train_on_inputs`), not this code's output; docs/results.md lists what the `-style` presets still do differently."""

from __future__ import annotations

import pytest
from torch import nn

from sellarec.config import load_config
from sellarec.data.batches import build_examples
from sellarec.data.prompts import ID_TOKENS
from sellarec.errors import ConfigError
from sellarec.models.mf import AlignedMF
from sellarec.stages import stage3


def test_collm_style_freezes_mf_and_projects_with_relu_at_ten_times_the_mf_width(tiny_stage3_parts) -> None:
    ds, bb, _, _, semantic = tiny_stage3_parts
    cfg = load_config("quick", "collm-style")
    assert cfg.stage2.align == "none" and cfg.stage2.emb_dim == 256     # CoLLM's MF: plain BCE, 256-d
    s3 = cfg.stage3
    assert s3.tokens == ("user", "item") and s3.projector_init == "random"
    plain = AlignedMF(ds.num_users, ds.num_items, cfg.stage2.emb_dim)  # what the preset's stage 2 builds
    injector = stage3.build_injector(s3, plain, semantic, bb, seed=0)
    layers = list(injector.collab)
    assert [type(m) for m in layers] == [nn.Linear, nn.ReLU, nn.Linear]
    assert (layers[0].in_features, layers[0].out_features) == (256, 2560)       # rec_size * 10
    assert (layers[2].in_features, layers[2].out_features) == (2560, bb.hidden_size)
    assert not injector.user_emb.weight.requires_grad and not injector.item_emb.weight.requires_grad  # freeze_rec
    trainable = sum(p.numel() for p in injector.parameters() if p.requires_grad)
    assert trainable == (256 * 2560 + 2560) + (2560 * bb.hidden_size + bb.hidden_size)   # the projector alone
    assert not s3.train_lora                                         # the stage-1 LoRA stays frozen, as CoLLM's


def test_collm_style_prompt_carries_one_user_and_one_item_token(tiny_stage3_parts) -> None:
    ds, bb, *_ = tiny_stage3_parts
    tokens = load_config("tiny", "collm-style").stage3.tokens
    example = build_examples(ds, ds.split("train").head(1), bb.tokenizer, stage=3, tokens=tokens, max_length=512,
                             with_answer=True)[0]
    count = {name: example.ids.count(bb.special_ids[text]) for name, text in ID_TOKENS.items()}
    assert count == {"user": 1, "item": 1, "warm": 0}


def test_tallrec_style_is_stage_one_with_tallrecs_adapter_and_full_lm_loss() -> None:
    cfg = load_config("quick", "tallrec-style")
    assert cfg.final_stage == "stage1"
    lora = cfg.stage1.lora
    assert (lora.r, lora.alpha, lora.dropout, tuple(lora.targets)) == (8, 16.0, 0.05, ("q_proj", "v_proj"))
    assert cfg.stage1.loss_mask == "all_tokens"                        # --train_on_inputs: prompt and answer


def test_mf_is_plain_mf_and_never_loads_the_llm() -> None:
    cfg = load_config("quick", "mf")
    assert (cfg.final_stage, cfg.stage2.align) == ("stage2", "none")


def test_warmup_init_needs_stage_twos_gelu() -> None:
    with pytest.raises(ConfigError, match="stage3.collab_projector.activation.*must be gelu"):
        load_config("tiny", overrides=["stage3.collab_projector.activation=relu"])
    assert load_config("tiny", "sella").stage3.collab_projector.activation == "gelu"
