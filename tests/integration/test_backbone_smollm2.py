"""The real SmolLM2-135M-Instruct path: GGUF conversion into a cache dir, reload, ID tokens, Yes/No and generation.

Measured on the 2-core CPU machine (OMP_NUM_THREADS=1): the one-off conversion takes 20-24 s, a reload from the
converted directory 0.5-1.2 s, and the whole module ~25 s.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from sellarec.data.prompts import ID_TOKENS
from sellarec.models.backbone import Backbone, load_backbone, smollm2_dir, yes_no_logits

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def cache_dir(smollm2_cache: Path) -> Path:
    return smollm2_cache


@pytest.fixture(scope="module")
def converted(cache_dir: Path) -> Path:
    start = time.perf_counter()
    model_dir = smollm2_dir(cache_dir)
    print(f"SmolLM2 GGUF -> HF conversion: {time.perf_counter() - start:.1f} s")
    return model_dir


@pytest.fixture(scope="module")
def smollm2(converted: Path, cache_dir: Path) -> Backbone:
    return load_backbone("smollm2-135m", cache_dir=cache_dir, device="cpu")


def test_conversion_writes_plain_hf_dir(converted: Path, cache_dir: Path) -> None:
    assert converted == cache_dir / "backbones" / "smollm2-135m"
    names = {p.name for p in converted.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert "quantization_config" not in (converted / "config.json").read_text()
    assert not list(converted.parent.glob(".smollm2-135m.tmp*"))
    stamp = (converted / "model.safetensors").stat().st_mtime_ns
    assert smollm2_dir(cache_dir) == converted  # second call reuses, no reconversion
    assert (converted / "model.safetensors").stat().st_mtime_ns == stamp


def test_special_tokens_extend_vocab(smollm2: Backbone, converted: Path) -> None:
    base = len(AutoTokenizer.from_pretrained(converted))  # the tokenizer as saved, before our tokens
    ids = sorted(smollm2.special_ids[t] for t in ID_TOKENS.values())
    assert ids == [base, base + 1, base + 2]
    assert len(smollm2.tokenizer) == base + 3
    assert smollm2.model.get_input_embeddings().weight.shape[0] >= base + 3
    assert smollm2.model.get_output_embeddings().weight.shape[0] >= base + 3
    encoded = smollm2.tokenizer("a <Warm_ID> b", add_special_tokens=False)["input_ids"]
    assert encoded.count(smollm2.special_ids["<Warm_ID>"]) == 1


def test_yes_no_single_tokens(smollm2: Backbone) -> None:
    tok = smollm2.tokenizer
    assert smollm2.yes_id != smollm2.no_id
    assert tok.decode([smollm2.yes_id]) == "Yes" and tok.decode([smollm2.no_id]) == "No"
    assert tok("Yes", add_special_tokens=False)["input_ids"] == [smollm2.yes_id]
    assert tok("No", add_special_tokens=False)["input_ids"] == [smollm2.no_id]
    assert smollm2.hidden_size == 576 and smollm2.has_chat_template


def test_forward_gives_finite_yes_no_logits(smollm2: Backbone) -> None:
    prompt = "<|im_start|>user\nDo you like Toy Story (1995)? <Item_ID><|im_end|>\n<|im_start|>assistant\n"
    ids = smollm2.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = smollm2.model(input_ids=ids).logits  # (1, T, V)
    assert torch.isfinite(logits).all()
    scores = yes_no_logits(logits[:, -1], smollm2)  # (1, 2)
    assert scores.shape == (1, 2) and torch.isfinite(scores).all()


def test_greedy_answer_names_paris(smollm2: Backbone) -> None:
    messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": QUESTION}]
    tok = smollm2.tokenizer
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith(f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = smollm2.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
