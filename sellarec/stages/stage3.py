"""Stage 3: SeLLa-Rec proper: ID tokens injected through the hybrid projection layer, LLM frozen (METHOD.md §5).

Inputs: the stage-1 model (frozen adapter), stage 2's MF model and semantic table. Output: the trained injector
(MF tables, semantic table, projectors) and AUC/UAUC on valid; :func:`evaluate_test` adds test, test-warm and
test-cold.

Two training steps give the same loss and the same gradients (tested): ``official`` pads every prompt to
``max_length`` and runs the whole sequence with gradients and full-vocabulary logits, as the official code does;
``fast`` pads dynamically, runs the prefix before the first ID token once without gradients (its hidden states
cannot depend on anything trainable) and keeps its key/value cache, then runs only the suffix with gradients. The
prefix's loss terms are constants; training skips them (same gradients), the benchmark and tests compute them to
check that the loss value is the official one too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sellarec.config import EvalConfig, Stage3Config
from sellarec.data.batches import Batch, build_examples, collate
from sellarec.data.dataset import Dataset
from sellarec.data.prompts import ID_TOKENS
from sellarec.errors import ConfigError
from sellarec.models.backbone import Backbone
from sellarec.models.mf import AlignedMF
from sellarec.models.injection import IdTokenInjector
from sellarec.models.lora import adapter_state, attach_lora, load_adapter_state
from sellarec.models.projector import build_collab_projector, build_semantic_projector, warmup_init
from sellarec.stages.evaluation import decoder_and_head, evaluate_scores, score_examples
from sellarec.stages.loop import OnEval, run_loop

__all__ = ["Stage3Output", "build_injector", "fast_loss", "official_loss", "run", "restore", "score_rows",
           "evaluate_test"]



@dataclass
class Stage3Output:
    """What stage 3 hands on.

    Attributes:
        injector: the injector selected on ``eval.select_on``, in eval mode.
        model: the LLM it runs with (the stage-1 model, or its merge with the stage-3 adapter), in eval mode.
        adapter: the stage-3 adapter weights when ``train_lora`` is set, else None.
        metrics: ``valid/auc``, ``valid/auc_ci_low``, ``valid_warm/uauc``, ... (test: :func:`evaluate_test`).
        history: one record per evaluation.
        best_step: the optimizer step of the selected state.
        trainable_params: number of trained parameters (injector, plus the stage-3 adapter if any).
        steps: optimizer steps taken.
        train_samples: training prompts used.
        seconds: wall time of the stage.
    """

    injector: IdTokenInjector
    model: nn.Module
    metrics: dict[str, float]
    adapter: dict[str, Tensor] | None = None
    history: list[dict] = field(default_factory=list)
    best_step: int = 0
    trainable_params: int = 0
    steps: int = 0
    train_samples: int = 0
    seconds: float = 0.0


def build_injector(cfg: Stage3Config, mf: AlignedMF, semantic: Tensor, backbone: Backbone, *,
                   seed: int) -> IdTokenInjector:
    """The stage-3 trainable part, initialised from stage 2 (warm-up) or at random, with the trainable flags set.

    Args:
        cfg: stage-3 settings.
        mf: stage 2's MF model (its semantic table and projection exist only when stage 2 aligned).
        semantic: the distilled table (num_items, d_llm), used for ``<Warm_ID>`` when stage 2 did not align.
        backbone: its hidden size and token ids.
        seed: seeds the projectors' random init.
    """
    d_mf, d_llm = mf.item_emb.embedding_dim, backbone.hidden_size
    uses_collab = "user" in cfg.tokens or "item" in cfg.tokens
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        collab = build_collab_projector(cfg.collab_projector, d_mf, d_llm) if uses_collab else None
        sem_proj = build_semantic_projector(cfg.semantic_projector, d_llm) if "warm" in cfg.tokens else None
    if collab is not None and cfg.projector_init == "warmup":
        if mf.proj is None:
            raise ConfigError("stage3.projector_init='warmup' copies stage 2's projection, but stage2.align='none' "
                              "trains none; set stage3.projector_init=random or stage2.align=rince")
        warmup_init(collab, cfg.collab_projector, mf.proj, seed=seed)
    item_sem = mf.item_sem.weight if mf.item_sem is not None else semantic
    injector = IdTokenInjector(
        user_emb=mf.user_emb.weight, item_emb=mf.item_emb.weight,
        item_sem=item_sem if "warm" in cfg.tokens else None, collab=collab, semantic=sem_proj, tokens=cfg.tokens,
        token_ids={name: backbone.special_ids[ID_TOKENS[name]] for name in cfg.tokens})
    # A table whose token is absent gets no gradient; leaving it frozen keeps the trainable count honest.
    injector.user_emb.weight.requires_grad_(cfg.train_user_emb and "user" in cfg.tokens)
    injector.item_emb.weight.requires_grad_(cfg.train_item_emb and "item" in cfg.tokens)
    if injector.item_sem is not None:
        injector.item_sem.weight.requires_grad_(cfg.train_semantic)
    for module in (collab, sem_proj):
        if module is not None:
            module.requires_grad_(cfg.train_projectors)
    return injector.to(backbone.device)


def _embed(model: nn.Module, injector: IdTokenInjector, batch: Batch) -> Tensor:
    return injector(batch.input_ids, batch.users, batch.items, model.get_input_embeddings())


def official_loss(model: nn.Module, injector: IdTokenInjector, batch: Batch, pad_to: int) -> Tensor:
    """The official step: pad to ``pad_to``, full forward with gradients, full logits, HF's mean token loss."""
    extra = pad_to - batch.input_ids.shape[1]
    if extra > 0:
        batch = Batch(F.pad(batch.input_ids, (0, extra), value=int(batch.input_ids[0, -1])),
                      F.pad(batch.attention_mask, (0, extra)), F.pad(batch.labels, (0, extra), value=-100),
                      batch.answer_pos, batch.labels_yes, batch.users, batch.items)
    embeds = _embed(model, injector, batch)
    return model(inputs_embeds=embeds, attention_mask=batch.attention_mask, labels=batch.labels).loss


def _ce_sum(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100,
                           reduction="sum")


def _align_prefixes(batch: Batch, first: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """Left-pad each row so that every row's first ID token lands in the same column.

    Returns ``(input_ids, attention_mask, labels, position_ids, prefix_width)``; real tokens keep their positions
    0..L-1 and their order, so every row computes exactly what it computes unpadded.
    """
    lengths = batch.attention_mask.sum(dim=1)  # (B,)
    shift = first.max() - first  # (B,) left padding per row
    width = int((shift + lengths).max())
    columns = torch.arange(width, device=first.device).unsqueeze(0)  # (1, W)
    source = columns - shift.unsqueeze(1)  # (B, W) column in the original row
    real = (source >= 0) & (source < lengths.unsqueeze(1))
    gather = source.clamp(0, batch.input_ids.shape[1] - 1)
    input_ids = torch.where(real, batch.input_ids.gather(1, gather), batch.input_ids[0, -1])
    labels = torch.where(real & (source > 0), batch.labels.gather(1, gather), -100)  # nothing predicts a row's token 0
    return input_ids, real.long(), labels, torch.where(real, source, 0), int(first.max())


def fast_loss(model: nn.Module, injector: IdTokenInjector, batch: Batch, *, exact_value: bool = True) -> Tensor:
    """The fast step; same gradients as :func:`official_loss` when the backbone is frozen (same loss value too when
    ``exact_value``).

    Rows are left-aligned at their first ID token (:func:`_align_prefixes`); the columns before it form a prefix whose
    hidden states cannot depend on any trainable parameter. It runs once under ``no_grad`` and hands its key/value
    cache to the suffix pass, the only one with gradients and the only one needing LM-head logits for the gradient.
    The prefix's loss terms are constants: ``exact_value=False`` skips their LM head (about a fifth of the step) and
    returns the suffix part over the same denominator, which has the same gradient.
    """
    body, head = decoder_and_head(model)
    first = injector.token_mask(batch.input_ids).float().argmax(dim=1)  # (B,) first ID token of each row
    input_ids, attention, labels, positions, split = _align_prefixes(batch, first)
    n_targets = (labels != -100).sum()
    with torch.no_grad():
        prefix = body(input_ids=input_ids[:, :split], attention_mask=attention[:, :split],
                      position_ids=positions[:, :split], use_cache=True)
        prefix_sum = (_ce_sum(head(prefix.last_hidden_state), labels[:, 1: split + 1]) if exact_value
                      else torch.zeros((), device=input_ids.device))
    aligned = Batch(input_ids, attention, labels, batch.answer_pos, batch.labels_yes, batch.users, batch.items)
    suffix_embeds = _embed(model, injector, aligned)[:, split:]  # (B, W - split, D)
    suffix = body(inputs_embeds=suffix_embeds, attention_mask=attention, cache=prefix.cache,
                  position_ids=positions[:, split:], use_cache=True)
    suffix_sum = _ce_sum(head(suffix.last_hidden_state[:, :-1]), labels[:, split + 1:])
    return (prefix_sum + suffix_sum) / n_targets


def _stage3_model(cfg: Stage3Config, model: nn.Module) -> nn.Module:
    """The LLM stage 3 runs: the stage-1 model, or (``train_lora``) its merge with a new trainable adapter."""
    if cfg.train_lora:
        # differs from official SeLLa (METHOD.md #5): the stage-1 adapter is merged and a new one trains here.
        return attach_lora(model.merge_and_unload(), cfg.lora, trainable=True)
    return model


def _score(backbone: Backbone, model: nn.Module, injector: IdTokenInjector, examples: list, eval_cfg: EvalConfig,
           split: str, progress: bool) -> np.ndarray:
    return score_examples(backbone, examples, batch_size=eval_cfg.batch_size, score_fn=eval_cfg.score_fn,
                          model=model, embed=lambda b: _embed(model, injector, b), progress=progress,
                          desc=f"stage3 {split}")


@torch.no_grad()
def token_norms(injector: IdTokenInjector, model: nn.Module, rows: pd.DataFrame, device: torch.device
                ) -> dict[str, float]:
    """Mean L2 norm of each injected token's vector over ``rows`` against the vocabulary's mean embedding norm.

    A diagnostic of whether the projected vectors live on the scale of the word embeddings the LLM was trained on
    (``norms/user``, ``norms/item``, ``norms/warm``, ``norms/vocab``).
    """
    users = torch.as_tensor(rows["user"].to_numpy(copy=True), device=device)
    items = torch.as_tensor(rows["item"].to_numpy(copy=True), device=device)
    vocab = model.get_input_embeddings().weight
    special = list(injector.token_ids.values())
    keep = torch.ones(vocab.shape[0], dtype=torch.bool, device=vocab.device)
    keep[special] = False
    out = {f"norms/{name}": float(v.float().norm(dim=-1).mean())
           for name, v in injector.token_vectors(users, items).items()}
    out["norms/vocab"] = float(vocab[keep].float().norm(dim=-1).mean())
    return out


def run(cfg: Stage3Config, eval_cfg: EvalConfig, ds: Dataset, backbone: Backbone, model: nn.Module, mf: AlignedMF,
        semantic: Tensor, *, valid_rows: pd.DataFrame, test_rows: pd.DataFrame, max_length: int, seed: int,
        progress: bool = False, on_eval: OnEval | None = None) -> Stage3Output:
    """Train the injector (and optionally a stage-3 adapter), selecting on ``eval_cfg.select_on``, and evaluate it on
    valid. See the module docstring; :func:`evaluate_test` adds test. ``test_rows`` are scored during training only
    when ``eval.select_on`` is 'test' (the official code's choice)."""
    start = time.perf_counter()
    if not cfg.tokens:
        raise ConfigError("stage3.tokens is empty, so stage 3 has nothing to inject; use --until stage1 "
                          "(the TALLRec baseline) or choose tokens, e.g. stage3.tokens=[user,item,warm]")
    # --- inputs
    train_rows = ds.split("train")
    if cfg.max_train_samples is not None and cfg.max_train_samples < len(train_rows):
        train_rows = train_rows.sample(n=cfg.max_train_samples, random_state=seed).sort_index()
    tok = backbone.tokenizer

    def examples(rows: pd.DataFrame, with_answer: bool) -> list:
        return build_examples(ds, rows, tok, stage=3, tokens=cfg.tokens, max_length=max_length,
                              with_answer=with_answer)

    train, valid = examples(train_rows, True), examples(valid_rows, False)
    select_rows = valid_rows if eval_cfg.select_on == "valid" else test_rows
    select = valid if eval_cfg.select_on == "valid" else examples(test_rows, False)

    # --- model
    injector = build_injector(cfg, mf, semantic, backbone, seed=seed)
    model = _stage3_model(cfg, model)
    params = [p for p in injector.parameters() if p.requires_grad]
    params += [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("stage 3 has no trainable parameter: enable one of stage3.train_user_emb, "
                          "train_item_emb, train_semantic, train_projectors, train_lora")

    def loss_fn(chunk: list) -> Tensor:
        batch = collate(chunk, tok.pad_token_id, cfg.loss_mask).to(backbone.device)
        if cfg.step == "official" or cfg.train_lora:  # a trained adapter needs gradients through the prefix too
            return official_loss(model, injector, batch, max_length if cfg.step == "official" else 0)
        return fast_loss(model, injector, batch, exact_value=False)

    def evaluate_select() -> tuple[float, np.ndarray]:
        scores = _score(backbone, model, injector, select, eval_cfg, eval_cfg.select_on, progress)
        return evaluate_scores(ds, select_rows, scores, eval_cfg, "select")["select/auc"], scores

    def train_mode() -> None:
        injector.train()
        model.train()  # the frozen stage-1 LoRA keeps its dropout active, as in the official code

    def snapshot() -> dict:
        state = {"injector": {k: v.detach().clone() for k, v in injector.state_dict().items()}}
        state["adapter"] = adapter_state(model) if cfg.train_lora else None
        return state

    injector.eval()
    norms_before = {f"{k}_init": v for k, v in token_norms(injector, model, valid_rows, backbone.device).items()}

    # --- train
    loop = run_loop(
        name="stage3", examples=train, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, epochs=cfg.epochs,
        loss_fn=loss_fn, params=params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
        grad_clip=cfg.grad_clip, schedule="constant_warmup", warmup_ratio=0.0,
        eval_every_steps=cfg.eval_every_steps, evaluate=evaluate_select,
        snapshot=snapshot, train_mode=train_mode,
        generator=torch.Generator().manual_seed(seed), progress=progress, on_eval=on_eval,
        select_on=eval_cfg.select_on)

    # --- evaluate the selected state on valid
    injector.load_state_dict(loop.best_state["injector"])
    if cfg.train_lora:
        load_adapter_state(model, loop.best_state["adapter"])
    injector.eval()
    model.eval()
    valid_scores = (loop.best_scores if eval_cfg.select_on == "valid"
                    else _score(backbone, model, injector, valid, eval_cfg, "valid", progress))
    metrics = evaluate_scores(ds, valid_rows, valid_scores, eval_cfg, "valid", seed=seed, bootstrap=True)
    metrics.update(norms_before)
    metrics.update(token_norms(injector, model, valid_rows, backbone.device))
    return Stage3Output(injector=injector, model=model, metrics=metrics, adapter=loop.best_state["adapter"],
                        history=loop.history, best_step=loop.best_step,
                        trainable_params=sum(p.numel() for p in params), steps=loop.steps,
                        train_samples=len(train), seconds=time.perf_counter() - start)


def restore(cfg: Stage3Config, backbone: Backbone, model: nn.Module, mf: AlignedMF, semantic: Tensor,
            injector_state: dict[str, Tensor], adapter: dict[str, Tensor] | None, *, seed: int
            ) -> tuple[IdTokenInjector, nn.Module]:
    """Rebuild a trained stage 3 (injector, and the model it runs) from its saved weights, in eval mode."""
    injector = build_injector(cfg, mf, semantic, backbone, seed=seed)
    injector.load_state_dict(injector_state)
    model = _stage3_model(cfg, model)
    if adapter is not None:
        load_adapter_state(model, adapter)
    injector.eval()
    model.eval()
    return injector, model


def score_rows(cfg: Stage3Config, eval_cfg: EvalConfig, ds: Dataset, backbone: Backbone, model: nn.Module,
               injector: IdTokenInjector, rows: pd.DataFrame, *, max_length: int, progress: bool = False,
               split: str = "test") -> np.ndarray:
    """Scores (N,) of a trained stage 3 on ``rows`` (``user``, ``item``, ``history``, ``label``), in their order:
    their ID-token prompts scored by ``eval_cfg.score_fn``, as every stage-3 evaluation does."""
    examples = build_examples(ds, rows, backbone.tokenizer, stage=3, tokens=cfg.tokens, max_length=max_length,
                              with_answer=False)
    return _score(backbone, model, injector, examples, eval_cfg, split, progress)


def evaluate_test(cfg: Stage3Config, eval_cfg: EvalConfig, ds: Dataset, backbone: Backbone, model: nn.Module,
                  injector: IdTokenInjector, *, test_rows: pd.DataFrame, max_length: int, seed: int,
                  progress: bool = False) -> dict[str, float]:
    """AUC/UAUC with bootstrap CIs of a trained stage 3 on ``test_rows`` (all, warm, cold).

    A step of its own so that a sweep, which selects on valid and never needs it, skips it.
    """
    scores = score_rows(cfg, eval_cfg, ds, backbone, model, injector, test_rows, max_length=max_length,
                        progress=progress)
    return evaluate_scores(ds, test_rows, scores, eval_cfg, "test", seed=seed, bootstrap=True)
