"""Checks of the decoder (model.*): sizes, RoPE, the layer pattern and its S/L settings, and the
backend for packed data."""
from __future__ import annotations

from megatron_omni.config.load import ConfigError
from megatron_omni.config.schema import OmniConfig
from megatron_omni.config.validate_parallel import divisors


def validate_sizes(cfg: OmniConfig) -> None:
    """Positive sizes and probabilities of model.* and data.seq_length (first: the layout checks
    divide by them)."""
    m = cfg.model
    for name in ("num_layers", "hidden_size", "ffn_hidden_size", "head_dim", "max_position_embeddings"):
        if getattr(m, name) < 1:
            raise ConfigError(f"model.{name}={getattr(m, name)} must be >= 1, e.g. {getattr(type(m)(), name)}")
    if m.vocab_size is not None and m.vocab_size < 1:
        raise ConfigError(f"model.vocab_size={m.vocab_size} must be >= 1, or null (the tokenizer's size)")
    for name in ("norm_eps", "init_std"):
        if not getattr(m, name) > 0:
            raise ConfigError(f"model.{name}={getattr(m, name)} must be > 0, e.g. {getattr(type(m)(), name)}")
    for name in ("attention_dropout", "hidden_dropout"):
        if not 0 <= getattr(m, name) < 1:
            raise ConfigError(f"model.{name}={getattr(m, name)} must be in [0, 1), e.g. 0.0")
    if cfg.data.seq_length < 1:
        raise ConfigError(f"data.seq_length={cfg.data.seq_length} must be >= 1, e.g. 4096")


def validate_model(cfg: OmniConfig) -> None:
    """RoPE, the layer pattern and the settings of the layer types it uses, the backend."""
    _validate_rope(cfg)
    _validate_hybrid(cfg)
    _validate_packed_backend(cfg)


def packed_rows(cfg: OmniConfig) -> str | None:
    """The field that puts several samples in one row (data.packed for text,
    data.multimodal.packing for the omni model), or None when rows hold one sample."""
    if cfg.model.omni is not None:
        mm = cfg.data.multimodal
        return "data.multimodal.packing" if mm is not None and mm.packing else None
    return "data.packed" if cfg.data.packed else None


def _validate_packed_backend(cfg: OmniConfig) -> None:
    field = packed_rows(cfg)
    if field and cfg.model.backend == "te" and "D" in cfg.model.layer_types():
        raise ConfigError(f"{field}=true: dense (D) layers take packed batches (qkv_format sbhd) "
                          "with the local backend only; set model.backend=local (or auto)")


def _validate_rope(cfg: OmniConfig) -> None:
    m = cfg.model
    if not m.rope_scaling_factor >= 1.0:
        raise ConfigError(f"model.rope_scaling_factor={m.rope_scaling_factor} must be >= 1 "
                          "(1 = no scaling), e.g. 8 to stretch 4K positions to 32K")
    if m.rope_theta <= 0:
        raise ConfigError(f"model.rope_theta={m.rope_theta} must be > 0, e.g. 1000000")


def _validate_hybrid(cfg: OmniConfig) -> None:
    """model.layer_pattern and the settings of the layer types it uses."""
    m = cfg.model
    if m.layer_pattern is not None and m.layer_pattern != "hybrid":
        bad = sorted(set(m.layer_pattern) - set("DSL"))
        if bad:
            raise ConfigError(
                f"model.layer_pattern={m.layer_pattern!r} has letters {bad}; use D (dense), "
                f"S (sparse) and L (linear), one per layer, or 'hybrid'")
        if len(m.layer_pattern) != m.num_layers:
            raise ConfigError(
                f"model.layer_pattern={m.layer_pattern!r} has {len(m.layer_pattern)} letters but "
                f"model.num_layers={m.num_layers}; give one letter per layer, e.g. "
                f"{'SLLL' * (m.num_layers // 4) + 'S' * (m.num_layers % 4)!r}, or 'hybrid'")
    types = m.layer_types()
    cp = cfg.parallel.cp
    if "S" in types and cp > 1 and (cfg.data.seq_length // (2 * cp)) % m.sparse.block_size:
        # block selection is per query block: a CP chunk must start on a block boundary
        chunk = 2 * cp * m.sparse.block_size
        raise ConfigError(
            f"data.seq_length={cfg.data.seq_length} with parallel.cp={cp}: sparse (S) layers need "
            f"seq_length / (2*cp) to be a multiple of model.sparse.block_size="
            f"{m.sparse.block_size}; use data.seq_length="
            f"{max(chunk, cfg.data.seq_length // chunk * chunk)}")
    if "S" in types:
        _validate_sparse(cfg)
    if "L" in types:
        _validate_linear(cfg)


def _validate_sparse(cfg: OmniConfig) -> None:
    s = cfg.model.sparse
    if s.block_size < 16 or s.block_size & (s.block_size - 1):
        raise ConfigError(f"model.sparse.block_size={s.block_size} must be a power of two >= 16, "
                          "e.g. 64")
    if s.kernel_stride < 1 or s.kernel_size < s.kernel_stride or s.kernel_size % s.kernel_stride:
        raise ConfigError(
            f"model.sparse.kernel_size={s.kernel_size} must be a positive multiple of "
            f"model.sparse.kernel_stride={s.kernel_stride}; e.g. kernel_size=32, kernel_stride=16")
    if s.block_size % s.kernel_stride:
        raise ConfigError(
            f"model.sparse.block_size={s.block_size} must be a multiple of "
            f"model.sparse.kernel_stride={s.kernel_stride}; use kernel_stride in "
            f"{[d for d in divisors(s.block_size) if s.kernel_size % d == 0]}")
    for name in ("topk", "init_blocks"):
        if getattr(s, name) < 0:
            raise ConfigError(f"model.sparse.{name}={getattr(s, name)} must be >= 0")
    if s.local_blocks < 1:
        raise ConfigError(f"model.sparse.local_blocks={s.local_blocks} must be >= 1 (it counts "
                          "the query's own block)")
    if s.dense_len < 1:
        raise ConfigError(f"model.sparse.dense_len={s.dense_len} must be >= 1")


def _validate_linear(cfg: OmniConfig) -> None:
    m, tp = cfg.model, cfg.parallel.tp
    lin = m.linear
    if lin.slopes not in ("alibi", "minimax"):
        raise ConfigError(f"model.linear.slopes={lin.slopes!r}; use alibi or minimax")
    if lin.chunk_size < 16 or lin.chunk_size & (lin.chunk_size - 1):
        raise ConfigError(f"model.linear.chunk_size={lin.chunk_size} must be a power of two >= 16, "
                          "e.g. 64")
    groups = lin.num_query_groups
    if groups is not None and (groups < 1 or m.num_attention_heads % groups or groups % tp):
        valid = [d for d in divisors(m.num_attention_heads) if d % tp == 0]
        raise ConfigError(
            f"model.linear.num_query_groups={groups} must divide model.num_attention_heads="
            f"{m.num_attention_heads} and be divisible by parallel.tp={tp}; use one of {valid} "
            "or null (= num_attention_heads)")
