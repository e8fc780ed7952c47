"""Checks of the parallel layout against the model, the batch and the sequence (parallel.*)."""
from __future__ import annotations

import math

from megatron_omni.config.load import ConfigError
from megatron_omni.config.schema import OmniConfig


def validate_parallel(cfg: OmniConfig, world_size: int) -> int:
    """parallel.* against the model shapes, the world size, the batch and the sequence; returns
    the data-parallel size."""
    _validate_sizes(cfg)
    _validate_heads(cfg)
    dp = _validate_world(cfg, world_size)
    _validate_layers(cfg)
    _validate_batch(cfg, dp)
    _validate_sequence(cfg)
    _validate_decoupled(cfg)
    return dp


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _validate_sizes(cfg: OmniConfig) -> None:
    p = cfg.parallel
    for name in ("tp", "pp", "cp"):
        if getattr(p, name) < 1:
            raise ConfigError(f"parallel.{name}={getattr(p, name)} must be >= 1")
    if p.vpp is not None and p.vpp < 1:
        raise ConfigError(f"parallel.vpp={p.vpp} must be >= 1 or null (plain 1F1B)")


def _validate_decoupled(cfg: OmniConfig) -> None:
    p = cfg.parallel
    if not p.modality_decoupled:
        return
    if cfg.model.omni is None:
        raise ConfigError("parallel.modality_decoupled=true needs model.omni (it spreads the omni model's "
                          "encoders over the pipeline stages); set parallel.modality_decoupled=false")
    if (p.vpp or 1) > 1:
        raise ConfigError(f"parallel.modality_decoupled=true with parallel.vpp={p.vpp} is not implemented; "
                          "set parallel.vpp=null or parallel.modality_decoupled=false")


def _validate_world(cfg: OmniConfig, world_size: int) -> int:
    p = cfg.parallel
    model_parallel = p.tp * p.pp * p.cp
    if world_size % model_parallel:
        raise ConfigError(
            f"world size {world_size} is not a multiple of parallel.tp*pp*cp = "
            f"{p.tp}*{p.pp}*{p.cp} = {model_parallel}; launch a multiple of {model_parallel} "
            f"processes, or choose tp*pp*cp in {divisors(world_size)}")
    if p.sequence_parallel and p.tp == 1:
        raise ConfigError("parallel.sequence_parallel=true needs parallel.tp > 1; "
                          "set parallel.sequence_parallel=false or raise parallel.tp")
    # cp > 1: transformer-engine's attention under model.backend=te, our own
    # (megatron_omni.parallel.context_parallel) for the local backend and the S/L layers
    return world_size // model_parallel


def _validate_heads(cfg: OmniConfig) -> None:
    m, tp = cfg.model, cfg.parallel.tp
    for name in ("num_attention_heads", "num_query_groups"):
        if getattr(m, name) < 1:
            raise ConfigError(f"model.{name}={getattr(m, name)} must be >= 1")
    if m.num_attention_heads % m.num_query_groups:
        raise ConfigError(
            f"model.num_attention_heads={m.num_attention_heads} is not divisible by "
            f"model.num_query_groups={m.num_query_groups}; use num_query_groups in "
            f"{divisors(m.num_attention_heads)}")
    for name in ("num_attention_heads", "num_query_groups"):
        n = getattr(m, name)
        if n % tp:
            raise ConfigError(
                f"model.{name}={n} is not divisible by parallel.tp={tp}; "
                f"use parallel.tp in {[d for d in divisors(n) if m.num_attention_heads % d == 0 and m.num_query_groups % d == 0]}")
    if m.ffn_hidden_size % tp:
        raise ConfigError(
            f"model.ffn_hidden_size={m.ffn_hidden_size} is not divisible by parallel.tp={tp} (the "
            f"MLP columns are split over tp); use ffn_hidden_size={m.ffn_hidden_size // tp * tp or tp}")


def _validate_layers(cfg: OmniConfig) -> None:
    p, n = cfg.parallel, cfg.model.num_layers
    vpp = p.vpp or 1
    if vpp > 1 and p.pp == 1:
        raise ConfigError(f"parallel.vpp={p.vpp} needs parallel.pp > 1 (interleaved pipeline); "
                          "set parallel.vpp=null or raise parallel.pp")
    if n % (p.pp * vpp):
        valid_pp = [d for d in divisors(n) if n % (d * vpp) == 0 and (vpp == 1 or d > 1)]
        fix = f"parallel.pp in {valid_pp} (with vpp={vpp}) or " if valid_pp else ""
        raise ConfigError(
            f"model.num_layers={n} is not divisible by parallel.pp*vpp = {p.pp}*{vpp} = "
            f"{p.pp * vpp}; use {fix}model.num_layers a multiple of {p.pp * vpp}")


def _validate_batch(cfg: OmniConfig, dp: int) -> None:
    t, p = cfg.training, cfg.parallel
    if t.micro_batch_size < 1:
        raise ConfigError(f"training.micro_batch_size={t.micro_batch_size} must be >= 1")
    per_step = t.micro_batch_size * dp
    if t.global_batch_size % per_step or t.global_batch_size < per_step:
        lower = max(per_step, t.global_batch_size // per_step * per_step)
        raise ConfigError(
            f"training.global_batch_size={t.global_batch_size} is not a multiple of "
            f"training.micro_batch_size*dp = {t.micro_batch_size}*{dp} = {per_step}; "
            f"use global_batch_size={lower} or {lower + per_step}")
    num_micro = t.global_batch_size // per_step
    if (p.vpp or 1) > 1 and num_micro % p.pp:
        raise ConfigError(
            f"interleaved pipeline (parallel.vpp={p.vpp}) needs the number of micro-batches "
            f"({num_micro} = global_batch_size / (micro_batch_size*dp)) to be a multiple of "
            f"parallel.pp={p.pp}; use training.global_batch_size={per_step * p.pp * max(1, num_micro // p.pp)}")


def _validate_sequence(cfg: OmniConfig) -> None:
    p, s = cfg.parallel, cfg.data.seq_length
    if p.cp > 1 and s % (2 * p.cp):
        raise ConfigError(
            f"data.seq_length={s} must be divisible by 2*parallel.cp = {2 * p.cp} (load-balanced "
            f"context parallel); use data.seq_length={s // (2 * p.cp) * (2 * p.cp) or 2 * p.cp}")
    if p.sequence_parallel and s % (p.tp * p.cp):
        # each context-parallel rank holds seq_length/cp tokens, split again over tp
        step = math.lcm(p.tp * p.cp, 2 * p.cp if p.cp > 1 else 1)
        across = f"parallel.tp*cp = {p.tp}*{p.cp} = {p.tp * p.cp}" if p.cp > 1 else f"parallel.tp={p.tp}"
        raise ConfigError(
            f"data.seq_length={s} must be divisible by {across} with sequence "
            f"parallelism; use data.seq_length={max(step, s // step * step)}")
    if cfg.data.packed and cfg.training.micro_batch_size != 1:
        raise ConfigError(
            f"data.packed=true packs the documents of one seq_length sample: set "
            f"training.micro_batch_size=1 (got {cfg.training.micro_batch_size}; raise "
            "data.seq_length for more tokens per micro-batch)")
    if s > cfg.model.max_position_embeddings:
        raise ConfigError(
            f"data.seq_length={s} exceeds model.max_position_embeddings="
            f"{cfg.model.max_position_embeddings}; raise max_position_embeddings or shorten seq_length")
