"""Typed, validated configuration (schema.py), its YAML loader (load.py) and checks (validate.py
and its validate_*.py sections), with the tables they read: model presets (presets.py), encoder
shapes (encoders.py), phases and parameter groups (phases.py), data mixes (mixes.py)."""
from megatron_omni.config.load import ConfigError, config_from_dict, config_to_dict, load_config
from megatron_omni.config.schema import (CheckpointConfig, DataConfig, LoggingConfig, ModelConfig,
                                         OmniConfig, ParallelConfig, TrainingConfig)
from megatron_omni.config.validate import validate

__all__ = ["ConfigError", "load_config", "config_to_dict", "config_from_dict", "validate", "OmniConfig", "ModelConfig",
           "ParallelConfig", "TrainingConfig", "DataConfig", "LoggingConfig", "CheckpointConfig"]
