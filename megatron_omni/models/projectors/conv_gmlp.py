"""Conv-GMLP audio projector: 4× temporal downsampling by two strided convolutions, then a gated
MLP to the LLM width.

    [b, L, input_size]                                   (Whisper encoder: 50 tokens per second)
      -> GELU(Conv1d(input_size, hidden_size, k=3, stride=2, pad=1))   L1 = (L - 1) // 2 + 1
      -> GELU(Conv1d(hidden_size, hidden_size, k=3, stride=2, pad=1))  L2 = (L1 - 1) // 2 + 1
      -> LayerNorm -> down(GELU(gate(x)) * up(x))                      gated MLP, hidden_size wide
    -> [b, L2, output_size]              (≈ L / 4: 12.5 tokens per second, each covering 80 ms)

So 30 s of audio (1500 Whisper tokens) becomes 375 LLM tokens (its registry entry,
contract/projectors.py AUDIO_PROJECTORS["conv_gmlp"], counts them for the data path). Parameters
are replicated over tensor-parallel ranks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from megatron_omni.contract.projectors import AUDIO_PROJECTORS


class ConvGMLPProjector(torch.nn.Module):
    """``[b, L, input_size]`` → ``[b, layouts[0].output_length(L), output_size]``."""

    trainable_group = "projectors"
    """Parameter group for training.trainable (training/freeze.py)."""
    layouts = (AUDIO_PROJECTORS["conv_gmlp"],)
    """Its registry entry: two stride-2 convolutions, 80 ms per token."""

    @classmethod
    def for_encoder(cls, omni, encoder, output_size: int, dtype: torch.dtype) -> ConvGMLPProjector:
        """The projector of model.omni (projector_hidden_size) after `encoder`."""
        hidden = omni.projector_hidden_size or output_size
        return cls(encoder.cfg.hidden_size, hidden, output_size).to(dtype)

    def __init__(self, input_size: int, hidden_size: int, output_size: int, layer_norm_eps: float = 1e-5):
        super().__init__()
        self.input_size = input_size
        self.conv1 = torch.nn.Conv1d(input_size, hidden_size, kernel_size=3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv1d(hidden_size, hidden_size, kernel_size=3, stride=2, padding=1)
        self.norm = torch.nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.gate_up = torch.nn.Linear(hidden_size, 2 * hidden_size)
        self.down = torch.nn.Linear(hidden_size, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.input_size or x.shape[1] == 0:
            raise ValueError(f"ConvGMLPProjector expects features [b, L, {self.input_size}] with L ≥ 1; "
                             f"got {tuple(x.shape)}")
        x = F.gelu(self.conv1(x.transpose(1, 2)))
        x = F.gelu(self.conv2(x)).transpose(1, 2)        # [b, L/4, hidden]
        gate, up = self.gate_up(self.norm(x)).chunk(2, dim=-1)
        return self.down(F.gelu(gate) * up)
