"""Model FLOPs of a training step, for MFU: the LLM over the non-padding tokens, and on the omni
model the vision/audio encoders and projectors over the media of the micro-batches.

Counts are matmul FLOPs (2 per multiply-add). A component's forward is counted once; the backward
adds 2x forward when the component trains (input and weight gradients) and 1x when it is frozen
but a trainable part lies before it (input gradients only), so phase 1 (projectors train, the
LLM passes gradients back, the encoders run forward only) counts what actually runs. Encoder
towers are exact for their shapes (config/encoders.py); the projectors are approximated by
2 x their parameters per LLM token they emit.
"""
from __future__ import annotations

from megatron_omni import platform
from megatron_omni.config.encoders import audio_config, media_tokens, vision_config
from megatron_omni.config.phases import trainable_groups
from megatron_omni.config.schema import OmniConfig
from megatron_omni.contract.batch import OmniBatch
from megatron_omni.contract.projectors import stride2_length
from megatron_omni.plan.step_time import PEAK_BF16, tower_forward_flops


def peak_flops() -> float | None:
    """The GPU's dense bf16 peak, or None (CPU or an unknown GPU: MFU is not reported)."""
    name = platform.gpu_name()
    if name is None:
        return None
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def llm_forward_flops_per_token(cfg: OmniConfig, vocab_size: int) -> float:
    """Forward FLOPs per token of the LLM: 2 x matmul parameters + causal attention scores
    (QK^T and AV over on average half the sequence)."""
    m, s = cfg.model, cfg.data.seq_length
    attn_dim = m.num_attention_heads * m.head_dim
    per_layer = (m.hidden_size * (attn_dim + 2 * m.num_query_groups * m.head_dim)
                 + attn_dim * m.hidden_size + 3 * m.hidden_size * m.ffn_hidden_size)
    matmul_params = m.num_layers * per_layer + m.hidden_size * vocab_size
    return 2 * matmul_params + 2 * m.num_layers * s * attn_dim


def image_forward_flops(cfg: OmniConfig) -> float:
    """Vision encoder forward FLOPs of one image (or video frame): patch embedding + tower."""
    v = vision_config(cfg.model.omni)
    embed = v.num_patches * 2 * v.num_channels * v.patch_size ** 2 * v.hidden_size
    return embed + tower_forward_flops(v.num_patches, v.num_layers, v.hidden_size, v.ffn_hidden_size)


def audio_forward_flops(cfg: OmniConfig, mel_frames: int) -> float:
    """Audio encoder forward FLOPs of one clip of ``mel_frames`` valid frames: the two k=3
    convolutions (the second at stride 2) + the tower over the stride-2 length of the frames."""
    a = audio_config(cfg.model.omni)
    tokens = stride2_length(mel_frames)
    convs = 2 * 3 * a.hidden_size * (mel_frames * a.num_mel_bins + tokens * a.hidden_size)
    return convs + tower_forward_flops(tokens, a.num_layers, a.hidden_size, a.ffn_hidden_size)


def pass_factors(cfg: OmniConfig) -> dict[str, int]:
    """Forward + backward as a multiple of the forward, per component (module docstring)."""
    groups = trainable_groups(cfg.phase, cfg.training.trainable)

    def trains(*names: str) -> bool:
        return groups is None or any(n in groups for n in names)

    out = {}
    for kind in ("vision", "audio"):
        encoder = trains(f"{kind}_encoder")
        out[f"{kind}_encoder"] = 3 if encoder else 1
        out[f"{kind}_projector"] = 3 if trains("projectors") else 2 if encoder else 1
    before_llm = trains("vision_encoder", "audio_encoder", "projectors")
    out["llm"] = 3 if trains("llm", "linear_attention") else 2 if before_llm else 1
    return out


class StepFlops:
    """``of(batch)``: the model FLOPs (forward + backward) of one micro-batch.

    ``projector_params``: {"vision": n, "audio": n} full (unsharded) parameter counts of the omni
    model's projectors; empty for the text LLM."""

    def __init__(self, cfg: OmniConfig, vocab_size: int, projector_params: dict[str, int]):
        self.cfg, self.factors = cfg, pass_factors(cfg)
        self.per_token = llm_forward_flops_per_token(cfg, vocab_size) * self.factors["llm"]
        self.projector_params = projector_params
        self.omni = cfg.model.omni is not None
        if self.omni:
            self.media = media_tokens(cfg.model.omni)
            self.image = image_forward_flops(cfg)

    def of(self, batch) -> float:
        if not isinstance(batch, OmniBatch):
            return self.per_token * non_padding_tokens(batch)
        f, m = self.factors, self.media
        frames = int(batch.images.shape[0]) + sum(int(v.shape[0]) for v in batch.videos)
        vision_tokens = (m.image_tokens * int(batch.images.shape[0])
                         + sum(m.video_tokens(int(v.shape[0])) for v in batch.videos))
        clips = batch.mel_frames()
        audio = sum(audio_forward_flops(self.cfg, n) for n in clips)
        audio_tokens = sum(m.audio_tokens(n) for n in clips)
        return (self.per_token * batch.non_padding_tokens()
                + f["vision_encoder"] * frames * self.image
                + f["vision_projector"] * 2 * self.projector_params.get("vision", 0) * vision_tokens
                + f["audio_encoder"] * audio
                + f["audio_projector"] * 2 * self.projector_params.get("audio", 0) * audio_tokens)


def non_padding_tokens(batch) -> int:
    """Positions of a micro-batch that hold a sample's token: an omni batch's non-padding ones,
    every position of a text batch (its documents fill the sequence)."""
    return batch.non_padding_tokens() if isinstance(batch, OmniBatch) else batch["tokens"].numel()


def mfu(flops: float, seconds: float, world_size: int, peak: float | None) -> float | None:
    """Model FLOPs utilisation of ``flops`` done in ``seconds`` by ``world_size`` GPUs."""
    if not peak or seconds <= 0:
        return None
    return flops / (seconds * world_size * peak)
