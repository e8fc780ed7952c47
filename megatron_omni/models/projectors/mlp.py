"""2-layer MLP projector (LLaVA-style): Linear → GELU → Linear, tensor parallel.

    [..., input_size] -> ColumnParallelLinear(input_size, hidden_size) -> GELU (exact)
                      -> RowParallelLinear(hidden_size, output_size) -> [..., output_size]

Each TP rank holds hidden_size / TP of the hidden units; the output is all-reduced, so every rank
returns the full ``[..., output_size]``. No token compression: one output token per input token.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_omni.contract.projectors import AUDIO_PROJECTORS, VISION_PROJECTORS


class MLPProjector(MegatronModule):
    """``[..., input_size]`` → ``[..., output_size]`` through a GELU hidden layer of ``hidden_size``.

    ``config`` supplies TP size, params dtype and init methods (the LLM's config is fine) and must
    have ``sequence_parallel=False``: the projector runs before the LLM's sequence-parallel split.
    ``hidden_size`` must be divisible by the TP size.
    """

    trainable_group = "projectors"
    """Parameter group for training.trainable (training/freeze.py)."""
    layouts = (VISION_PROJECTORS["mlp"], AUDIO_PROJECTORS["mlp"])
    """Its registry entries: one token per patch / per audio encoder token."""

    @classmethod
    def for_encoder(cls, omni, encoder, output_size: int, dtype: torch.dtype) -> MLPProjector:
        """The projector of model.omni (projector_hidden_size) after `encoder`; its dtype comes
        with the encoder's TransformerConfig (`dtype` is the same)."""
        hidden = omni.projector_hidden_size or output_size
        return cls(encoder.config, encoder.cfg.hidden_size, hidden, output_size)

    def __init__(self, config: TransformerConfig, input_size: int, hidden_size: int, output_size: int):
        if config.sequence_parallel:
            raise ValueError("MLPProjector runs before the sequence-parallel split: pass a "
                             "TransformerConfig with sequence_parallel=False")
        super().__init__(config=config)
        self.input_size = input_size
        self.linear_fc1 = ColumnParallelLinear(
            input_size, hidden_size, config=config, init_method=config.init_method, bias=True,
            gather_output=False, skip_bias_add=False)
        self.linear_fc2 = RowParallelLinear(
            hidden_size, output_size, config=config, init_method=config.output_layer_init_method,
            bias=True, input_is_parallel=True, skip_bias_add=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size:
            raise ValueError(f"MLPProjector expects features [..., {self.input_size}]; got {tuple(x.shape)}")
        lead = x.shape[:-1]
        h, _ = self.linear_fc1(x.reshape(-1, 1, self.input_size))  # megatron linears take [s, b, h]
        out, _ = self.linear_fc2(F.gelu(h))
        return out.reshape(*lead, out.shape[-1])
