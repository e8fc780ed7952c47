"""Typed, validated configuration (schema.py), its YAML loader (load.py) and checks (validate.py)."""
from megatron_omni.config.load import ConfigError, config_from_dict, config_to_dict, load_config
from megatron_omni.config.schema import (CheckpointConfig, DataConfig, LoggingConfig, ModelConfig,
                                         OmniConfig, ParallelConfig, TrainingConfig)
from megatron_omni.config.validate import validate

__all__ = ["ConfigError", "load_config", "config_to_dict", "config_from_dict", "validate", "OmniConfig", "ModelConfig",
           "ParallelConfig", "TrainingConfig", "DataConfig", "LoggingConfig", "CheckpointConfig"]
