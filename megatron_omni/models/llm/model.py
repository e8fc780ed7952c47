"""The Qwen3-style decoder as a megatron-core GPTModel, built from our config and layer spec."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt.gpt_model import GPTModel
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import get_pg_rank, get_pg_size

from megatron_omni import platform
from megatron_omni.config.schema import OmniConfig
from megatron_omni.config.validate_model import packed_rows
from megatron_omni.models.llm.spec import decoder_block_spec
from megatron_omni.models.transformer_config import base_transformer_config
from megatron_omni.platform.backend import resolve_backend

VOCAB_DIVISOR = 128
"""The embedding table is padded to a multiple of this (independent of TP, so a checkpoint
reshards between TP sizes; any TP that is a power of two up to 128 divides it)."""


PADDED_LOGIT = -1e9
"""The logit of a padding row (ids >= the true vocabulary): exp underflows to exactly 0 in
float32/bf16, so padding takes no probability mass; finite (not -inf) so a softmax difference of
two masked logits (the distillation KL) stays 0 instead of NaN."""


def padded_vocab_size(vocab_size: int) -> int:
    return -(-vocab_size // VOCAB_DIVISOR) * VOCAB_DIVISOR


def mask_padded_logits(output_layer, vocab_size: int) -> None:
    """Make the logits of the padding rows (global ids >= vocab_size) PADDED_LOGIT wherever
    ``output_layer`` (a ColumnParallelLinear over the padded vocabulary) is used: the loss, the
    logits returned for generation and evaluation, the distillation teacher. megatron-core 0.16.1
    has no such option (its cross entropy normalises over every padded column; its generation
    controller only clamps sampled ids). Under TP each rank masks its own slice of columns (or the
    whole row when the output is gathered); the masked entries get no gradient, so the padding
    rows of the output layer are never trained."""
    per_rank, rank = output_layer.output_size_per_partition, get_pg_rank(output_layer.tp_group)
    if per_rank * get_pg_size(output_layer.tp_group) == vocab_size:
        return

    def mask(module, args, output):
        logits = output[0]
        start = rank * per_rank if logits.shape[-1] == per_rank else 0
        first_pad = max(vocab_size - start, 0)
        if first_pad < logits.shape[-1]:
            logits[..., first_pad:] = PADDED_LOGIT
        return output

    output_layer.register_forward_hook(mask)


def params_dtype(cfg: OmniConfig) -> torch.dtype:
    """bf16 on GPU and fp32 on CPU under precision=auto."""
    precision = cfg.training.precision
    if precision == "auto":
        precision = platform.default_precision()
    return torch.bfloat16 if precision == "bf16" else torch.float32


def transformer_config(cfg: OmniConfig) -> TransformerConfig:
    """megatron-core's TransformerConfig for the decoder described by cfg.model / cfg.parallel."""
    m, p, t = cfg.model, cfg.parallel, cfg.training
    fused = platform.fused_bias_ops()
    recompute = {}
    if t.recompute == "full":
        recompute = dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    elif t.recompute == "selective":
        recompute = dict(recompute_granularity="selective", recompute_modules=["core_attn"])
    return base_transformer_config(
        params_dtype(cfg),
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        ffn_hidden_size=m.ffn_hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups,
        kv_channels=m.head_dim,
        tensor_model_parallel_size=p.tp,
        pipeline_model_parallel_size=p.pp,
        virtual_pipeline_model_parallel_size=p.vpp if (p.vpp or 1) > 1 else None,
        context_parallel_size=p.cp,
        sequence_parallel=p.sequence_parallel,
        normalization="RMSNorm",
        layernorm_epsilon=m.norm_eps,
        qk_layernorm=True,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        bias_activation_fusion=fused,
        bias_dropout_fusion=fused,
        init_method_std=m.init_std,
        hidden_dropout=m.hidden_dropout,
        attention_dropout=m.attention_dropout,
        calculate_per_token_loss=True,
        deallocate_pipeline_outputs=True,
        # Layers of different attention types differ in shapes: checkpoint each layer under its
        # own key (decoder.layers.<i>.) instead of stacking all layers into one tensor per name.
        hetereogenous_dist_checkpoint=set(m.layer_types()) != {"D"},
        # With pp=2 a rank's previous and next stage are the same peer; the interleaved
        # schedule's batched p2p posts [send_prev, recv_prev, send_next, recv_next], so a
        # forward activation can be matched with a backward gradient of the same shape.
        # Megatron's unbatched even/odd ordering pairs them correctly.
        batch_p2p_comm=not (p.pp == 2 and (p.vpp or 1) > 1),
        **recompute,
    )


def rope_base(m) -> float:
    """The RoPE base: model.rope_theta, raised NTK-aware to theta · s^(d/(d−2)) under
    model.rope_scaling=ntk (s = rope_scaling_factor, d = head_dim)."""
    if m.rope_scaling == "ntk":
        return m.rope_theta * m.rope_scaling_factor ** (m.head_dim / (m.head_dim - 2))
    return m.rope_theta


def rope_interpolation(m) -> float | None:
    """megatron's seq_len_interpolation_factor: s under model.rope_scaling=linear, else None."""
    if m.rope_scaling == "linear" and m.rope_scaling_factor != 1.0:
        return m.rope_scaling_factor
    return None


def build_llm(cfg: OmniConfig, vocab_size: int, vp_stage: int | None = None, *,
              mrope_section: list[int] | None = None,
              scatter_embedding_sequence_parallel: bool = True) -> GPTModel:
    """The decoder chunk this rank holds (pipeline stage, and virtual stage when vpp > 1).
    ``vocab_size`` is the true vocabulary (the tokenizer's): the tables are padded to a multiple
    of VOCAB_DIVISOR and the padding logits masked (mask_padded_logits).

    ``mrope_section``: rotary from 3-D position ids [3, b, s] (megatron's mrope slot; the omni
    model puts TMRoPE there); None = 1-D RoPE. ``scatter_embedding_sequence_parallel=False``
    leaves the sequence-parallel scatter to a caller that builds the decoder input itself.
    """
    config = transformer_config(cfg)
    config.mrope_section = mrope_section
    pre = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
    post = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
    m = cfg.model
    # TE's dense layers take no packed batches: auto picks local (config/validate_model.py refuses te)
    packed_dense = packed_rows(cfg) is not None and "D" in m.layer_types()
    backend = "local" if packed_dense and m.backend == "auto" else resolve_backend(m.backend)
    model = GPTModel(
        config=config,
        transformer_layer_spec=decoder_block_spec(config, backend, vp_stage, m),
        vocab_size=padded_vocab_size(vocab_size),
        max_sequence_length=m.max_position_embeddings,
        pre_process=pre,
        post_process=post,
        parallel_output=True,
        share_embeddings_and_output_weights=m.tie_embeddings,
        position_embedding_type="mrope" if mrope_section else "rope",
        scatter_embedding_sequence_parallel=scatter_embedding_sequence_parallel,
        rotary_base=rope_base(m),
        seq_len_interpolation_factor=rope_interpolation(m),
        vp_stage=vp_stage,
    )
    if post:
        mask_padded_logits(model.output_layer, vocab_size)
    return model
