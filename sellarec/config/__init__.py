"""The one typed configuration of a SeLLa-Rec run (:mod:`.schema`) and how it is built (:mod:`.loading`)."""

from sellarec.config.loading import (apply_overrides, config_key, from_dict, list_presets, list_profiles, load_config,
                                     read_yaml,
                                     to_dict, to_flat_dict)
from sellarec.config.schema import (LORA_TARGETS_ALL, BackboneConfig, CollabProjectorConfig, DataConfig,
                                    DatasetName, EvalConfig, LoraConfig, LossMask, RuntimeConfig, ScoreFn,
                                    SellaConfig, SemanticProjectorConfig, Stage1Config, Stage2Config, Stage3Config,
                                    TokenName)

__all__ = [
    "DatasetName", "TokenName", "ScoreFn", "LossMask", "LORA_TARGETS_ALL", "DataConfig", "BackboneConfig",
    "LoraConfig", "Stage1Config", "Stage2Config", "CollabProjectorConfig", "SemanticProjectorConfig", "Stage3Config",
    "EvalConfig", "RuntimeConfig", "SellaConfig", "load_config", "apply_overrides", "to_flat_dict", "to_dict",
    "from_dict", "config_key", "list_profiles", "list_presets", "read_yaml",
]
