"""Shapes of the omni model's encoders and their named presets (model.omni.vision / audio).

Plain data: the encoders themselves (models/encoders/) are built from these. `vision_config` /
`audio_config` apply model.omni's overrides; `media_tokens` gives the LLM tokens per media item of
the configured encoders and projectors (contract/media.py), what the model checks its encoder
outputs against and the data path expands placeholders to.
"""
from __future__ import annotations

import dataclasses

from megatron_omni.contract.media import MediaTokens, media_tokens as count_tokens


@dataclasses.dataclass(frozen=True)
class VisionEncoderConfig:
    """Shapes of a SigLIP-style vision tower."""

    hidden_size: int
    num_layers: int
    num_attention_heads: int
    ffn_hidden_size: int
    patch_size: int
    image_size: int
    num_channels: int = 3
    layer_norm_eps: float = 1e-6

    @property
    def grid_size(self) -> int:
        """Patches per side (SigLIP's 'valid' convolution drops a remainder of pixels)."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2


VISION_PRESETS: dict[str, VisionEncoderConfig] = {
    "siglip-so400m-patch14-384": VisionEncoderConfig(
        hidden_size=1152, num_layers=27, num_attention_heads=16, ffn_hidden_size=4304,
        patch_size=14, image_size=384),
    "tiny": VisionEncoderConfig(
        hidden_size=64, num_layers=2, num_attention_heads=4, ffn_hidden_size=96,
        patch_size=4, image_size=16),
}
"""Named shapes: the released SigLIP so400m/14 at 384 px (27×27 = 729 patches), and a tiny
tower for CPU tests (4×4 = 16 patches)."""


@dataclasses.dataclass(frozen=True)
class AudioEncoderConfig:
    """Shapes of a Whisper-style audio encoder."""

    hidden_size: int
    num_layers: int
    num_attention_heads: int
    ffn_hidden_size: int
    num_mel_bins: int = 80
    max_source_positions: int = 1500
    layer_norm_eps: float = 1e-5

    @property
    def max_frames(self) -> int:
        """Longest accepted mel input (3000 frames = 30 s for Whisper)."""
        return 2 * self.max_source_positions


AUDIO_PRESETS: dict[str, AudioEncoderConfig] = {
    "whisper-medium": AudioEncoderConfig(
        hidden_size=1024, num_layers=24, num_attention_heads=16, ffn_hidden_size=4096, num_mel_bins=80),
    "tiny": AudioEncoderConfig(
        hidden_size=64, num_layers=2, num_attention_heads=4, ffn_hidden_size=96, num_mel_bins=16,
        max_source_positions=32),
}
"""Named shapes: Whisper-medium's encoder (80 mel bins, 30 s), and a tiny one for CPU tests."""


def vision_config(omni) -> VisionEncoderConfig:
    """The vision preset of model.omni with model.omni.vision_overrides applied."""
    return dataclasses.replace(VISION_PRESETS[omni.vision], **(omni.vision_overrides or {}))


def audio_config(omni) -> AudioEncoderConfig:
    """The audio preset of model.omni with model.omni.audio_overrides applied."""
    return dataclasses.replace(AUDIO_PRESETS[omni.audio], **(omni.audio_overrides or {}))


def media_tokens(omni) -> MediaTokens:
    """LLM tokens per media item of this omni model config: its projectors' registry entries and
    its vision encoder's patch grid."""
    return count_tokens(omni, vision_config(omni).grid_size)
