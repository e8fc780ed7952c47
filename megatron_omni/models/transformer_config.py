"""The megatron-core TransformerConfig settings every model here shares (decoder and encoders)."""
from __future__ import annotations

import torch
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_omni import platform


def base_transformer_config(params_dtype: torch.dtype, **fields) -> TransformerConfig:
    """A TransformerConfig with ``fields`` (the model's own: shape, parallelism, norm, biases,
    dropout, ...) over the shared settings, which a field may override:

    - no masked-softmax, persistent-layer-norm, gradient-accumulation or RoPE fusion: those are
      apex / transformer-engine kernels, and our core attention (models/attention/sdpa.py) never
      uses megatron's fused softmax;
    - weights, pipeline buffers and the bf16/fp16 flags follow ``params_dtype``;
    - weights are initialised on the CPU when there is no GPU (platform.cpu_initialization).
    """
    shared = dict(
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        apply_rope_fusion=False,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        use_cpu_initialization=platform.cpu_initialization(),
    )
    return TransformerConfig(**{**shared, **fields})
