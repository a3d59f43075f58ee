"""LoRA adapters on the backbone (peft), as stage 1 trains them and later stages load them."""

from __future__ import annotations

import warnings

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

from sellarec.config import LoraConfig
from sellarec.errors import ConfigError

__all__ = ["attach_lora", "adapter_state", "load_adapter_state"]


def attach_lora(model: torch.nn.Module, cfg: LoraConfig, *, trainable: bool) -> PeftModel:
    """Wrap ``model`` with a fresh LoRA adapter (peft's default init: B = 0, so the output is unchanged at first).

    Only adapter weights can require grad; with ``trainable=False`` nothing does (stage 3's frozen stage-1 LoRA).
    """
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in cfg.targets if t not in names]
    if missing:
        raise ConfigError(f"stage1.lora.targets {missing} are not modules of this backbone; "
                          f"choose among {sorted(n for n in names if n.endswith('_proj'))}")
    peft_cfg = PeftLoraConfig(task_type="CAUSAL_LM", r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=list(cfg.targets), bias="none")
    with warnings.catch_warnings():
        # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing`: its FutureWarning is not ours to fix.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        wrapped = get_peft_model(model, peft_cfg)
    for name, param in wrapped.named_parameters():
        param.requires_grad_(trainable and "lora_" in name)
    return wrapped


def adapter_state(model: PeftModel) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the adapter weights."""
    # save_embedding_layers=False: the resized ID-token rows are reproduced from the seed, not stored (113 MB on SmolLM2).
    state = get_peft_model_state_dict(model, save_embedding_layers=False)
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def load_adapter_state(model: PeftModel, state: dict[str, torch.Tensor]) -> None:
    """Load adapter weights saved by :func:`adapter_state`; every adapter weight must be present."""
    result = set_peft_model_state_dict(model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"adapter state has keys this model lacks: {unexpected[:3]}")
