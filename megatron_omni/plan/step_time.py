"""Estimated time of one optimizer step of a layout (the model is in docs/planner.md).

Compute: 6 FLOPs per parameter and token for the decoder's matmuls (forward + backward) plus the
attention scores (6·s_ctx·heads·head_dim per token and layer, halved for causal), one more
forward under full recompute, the attention core again under selective; the encoders' FLOPs on
stage 0. At an achieved fraction of peak. Communication: TP all-reduces (or the sequence-parallel
all-gather/reduce-scatter pairs, the same volume), CP key/value rings, PP sends, the data-parallel
gradient reduction and (distributed optimizer) parameter all-gather, none of it overlapped.
The step is (micro-batches + (pp - 1)/vpp) times the slowest stage's micro-batch, plus the
data-parallel and optimizer time.
"""
from __future__ import annotations

from dataclasses import dataclass

from megatron_omni.config.encoders import audio_config, vision_config
from megatron_omni.config.schema import OmniConfig
from megatron_omni.plan.memory import dtype_bytes, encoder_tokens, micro_batches, rank_tokens, static_bytes
from megatron_omni.plan.params import decoder_layer, padded_vocab, stage_layers


PEAK_BF16 = {"A100": 312e12, "H100": 989e12, "H200": 989e12, "H800": 989e12, "A800": 312e12}
"""Dense bf16 tensor-core peak per GPU (datasheets); the training log's MFU uses it too."""


def tower_forward_flops(tokens: int, layers: int, hidden: int, ffn: int) -> float:
    """Forward FLOPs of a bidirectional transformer tower (q, k, v, out projections, a 2-matrix
    MLP, full attention) over one sequence of ``tokens``."""
    return tokens * layers * (2 * (4 * hidden ** 2 + 2 * hidden * ffn) + 4 * tokens * hidden)


@dataclass(frozen=True)
class Hardware:
    """The GPUs the plan targets: A100-SXM 80GB in 8-GPU NVLink nodes with one 200 Gb/s HDR
    InfiniBand port per GPU (docs/planner.md gives the sources)."""

    gpu_memory_gib: float = 80.0
    peak_tflops: float = PEAK_BF16["A100"] / 1e12
    """Dense bf16 tensor-core peak."""
    efficiency: float = 0.5
    """Achieved share of peak in the matmuls (Megatron-LM on A100: 163 of 312 TFLOP/s)."""
    gpus_per_node: int = 8
    nvlink_gbps: float = 200.0
    """Achieved all-reduce bus bandwidth inside a node, GB/s."""
    network_gbps: float = 22.0
    """Achieved bandwidth per GPU between nodes, GB/s (200 Gb/s HDR less overheads)."""
    memory_gbps: float = 1500.0
    """HBM bandwidth for the optimizer step, GB/s."""


def attention_context(cfg: OmniConfig, letter: str) -> float:
    """Keys each query attends to on average: s/2 (causal dense), the selected blocks of a sparse
    layer beyond its dense length, and a head_dim-wide state for a linear layer."""
    s, m = cfg.data.seq_length, cfg.model
    if letter == "L":
        return 2.0 * m.head_dim
    if letter == "S" and s >= m.sparse.dense_len:
        sp = m.sparse
        return float(min(s / 2, (sp.topk + sp.init_blocks + sp.local_blocks) * sp.block_size))
    return s / 2


def decoder_forward_flops(cfg: OmniConfig, letters: str, output_layer: bool) -> float:
    """Forward FLOPs per token of the decoder layers `letters` (and the output layer): 2 per
    matmul weight, 4·context·heads·head_dim for the attention scores and their use."""
    m = cfg.model
    weights = sum(sum(decoder_layer(cfg, x, 1).values()) for x in letters)
    weights += padded_vocab(cfg) * m.hidden_size if output_layer else 0
    return 2 * weights + attention_flops(cfg, letters)


def attention_flops(cfg: OmniConfig, letters: str) -> float:
    """Forward FLOPs per token of the attention cores of layers `letters` (scores and values)."""
    q = cfg.model.num_attention_heads * cfg.model.head_dim
    return sum(4 * attention_context(cfg, x) * q for x in letters)


def stage_flops(cfg: OmniConfig, stage: int) -> float:
    """FLOPs of one micro-batch through a rank of `stage` (forward, backward, recompute), over
    the whole TP·CP group."""
    m, p, t = cfg.model, cfg.parallel, cfg.training
    tokens = t.micro_batch_size * cfg.data.seq_length
    letters = stage_layers(cfg, p.pp, p.vpp or 1, stage)
    forward = tokens * decoder_forward_flops(cfg, letters, output_layer=stage == p.pp - 1)
    extra = {"full": forward, "selective": tokens * attention_flops(cfg, letters)}.get(t.recompute, 0.0)
    total = 3 * forward + extra
    if stage == 0 and m.omni is not None:
        total += encoder_flops(cfg)
    return total


def encoder_flops(cfg: OmniConfig) -> float:
    """Forward + backward FLOPs of the encoders' towers for one micro-batch (encoder_tokens per
    sample: frames of num_patches tokens, one clip of max_source_positions)."""
    vision, audio = vision_config(cfg.model.omni), audio_config(cfg.model.omni)
    total = 0.0
    for shape, tokens, window in zip((vision, audio), encoder_tokens(cfg),
                                     (vision.num_patches, audio.max_source_positions)):
        sequence = tower_forward_flops(window, shape.num_layers, shape.hidden_size, shape.ffn_hidden_size)
        total += 3 * sequence * tokens / window
    return total * cfg.training.micro_batch_size


def link_bandwidth(span: int, hw: Hardware) -> float:
    """Bytes/s between ranks of a group spanning `span` consecutive ranks: NVLink inside a
    node, the network across nodes."""
    return (hw.nvlink_gbps if span <= hw.gpus_per_node else hw.network_gbps) * 1e9


def ring_seconds(volume: float, group: int, stride: int, hw: Hardware) -> float:
    """Ring all-reduce of `volume` bytes over `group` ranks spaced `stride` apart."""
    if group == 1:
        return 0.0
    return 2 * (group - 1) / group * volume / link_bandwidth(group * stride, hw)


def micro_batch_seconds(cfg: OmniConfig, stage: int, hw: Hardware) -> float:
    """Compute and TP/CP/PP communication of one micro-batch on a rank of `stage`."""
    m, p, t = cfg.model, cfg.parallel, cfg.training
    layers = len(stage_layers(cfg, p.pp, p.vpp or 1, stage))
    compute = stage_flops(cfg, stage) / (p.tp * p.cp) / (hw.peak_tflops * 1e12 * hw.efficiency)
    activation = dtype_bytes(cfg) * rank_tokens(cfg) * m.hidden_size
    all_reduces = layers * (6 if t.recompute == "full" else 4)
    tp_comm = all_reduces * ring_seconds(activation, p.tp, 1, hw)
    kv = 2 * m.num_query_groups * m.head_dim * activation // m.hidden_size // p.tp
    # (cp - 1) hops of this rank's k and v forward, of k, v and their gradients backward
    cp_comm = 3 * layers * (p.cp - 1) * kv / link_bandwidth(p.cp * p.tp, hw)
    pp_comm = 0.0
    if p.pp > 1:
        per_send = activation / (p.tp if p.sequence_parallel else 1)
        pp_comm = 2 * (p.vpp or 1) * per_send / link_bandwidth(p.tp * p.cp * 2, hw)
    return compute + tp_comm + cp_comm + pp_comm


def step_seconds(cfg: OmniConfig, dp: int, hw: Hardware) -> float:
    """Estimated seconds per optimizer step of cfg's layout."""
    p = cfg.parallel
    slowest = max(micro_batch_seconds(cfg, stage, hw) for stage in range(p.pp))
    pipeline = slowest * (micro_batches(cfg, dp) + (p.pp - 1) / (p.vpp or 1))
    sync = 0.0
    for stage in range(p.pp):
        params, _, grads, optimizer = static_bytes(cfg, stage, dp)
        volume = grads / 2 if p.distributed_optimizer else grads   # reduce-scatter: half a ring
        if p.distributed_optimizer:
            volume += dtype_bytes(cfg) * params / 2                  # all-gather of the parameters
        update = (optimizer + grads / (dp if p.distributed_optimizer else 1)) * 2 / (hw.memory_gbps * 1e9)
        sync = max(sync, ring_seconds(volume, dp, p.tp * p.cp, hw) + update)
    return pipeline + sync


def model_flops_per_step(cfg: OmniConfig) -> float:
    """Useful FLOPs of a step (no recompute) for the MFU column: 6·params·tokens + attention."""
    m, t = cfg.model, cfg.training
    tokens = t.global_batch_size * cfg.data.seq_length
    encoders = encoder_flops(cfg) * t.global_batch_size / t.micro_batch_size if m.omni is not None else 0.0
    return 3 * tokens * decoder_forward_flops(cfg, m.layer_types(), output_layer=True) + encoders
