"""The base of our core attentions (SDPA, InfLLM-V2, Lightning): megatron's core_attention slot."""
from __future__ import annotations

from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_omni.parallel.context_parallel import attention_cp_group


class CoreAttention(MegatronModule):
    """megatron's core_attention constructor signature; keeps the CP group, the mask type, the
    attention dropout probability (the config's unless given) and the softmax scale (None: the
    subclass's default)."""

    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type: AttnMaskType,
                 attention_type: str = "self", attention_dropout: float | None = None,
                 softmax_scale: float | None = None, cp_comm_type: str | None = None,
                 pg_collection=None):
        super().__init__(config=config)
        self.cp_group = attention_cp_group(config, pg_collection)
        self.attn_mask_type = attn_mask_type
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self.scale = softmax_scale
