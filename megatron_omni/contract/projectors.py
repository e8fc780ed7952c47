"""The projector registry: what each vision and audio projector makes of one media item, by the
name model.omni.{vision,audio}_projector gives it.

    vision  resampler  omni.image_tokens learnable queries per image and per package of
                       omni.frames_per_package video frames, on a sqrt(image_tokens) square grid
            mlp        one token per encoder patch (the patch grid), each frame its own package
    audio   conv_gmlp  the Whisper encoder's tokens (20 ms) downsampled 4x by two stride-2
                       convolutions: 80 ms per token
            mlp        one token per encoder token: 20 ms per token

The model's projector classes (models/projectors/) name their entries (``layouts``), the model
builds the class of the configured entry, and the data path counts placeholder positions from
the same entries (contract/media.py MediaTokens), so model and data cannot disagree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


def stride2_length(length: int) -> int:
    """Output length of a kernel-3, padding-1, stride-2 convolution: ``ceil(length / 2)``."""
    return (length - 1) // 2 + 1


@dataclass(frozen=True)
class VisionLayout:
    """A vision projector's tokens. ``resamples``: learnable queries per package of frames (the
    3D-Resampler) rather than one token per patch. ``tp_sharded``: its hidden layer is split
    over the tensor-parallel ranks (so its width must divide by parallel.tp)."""

    name: str
    resamples: bool
    tp_sharded: bool

    def grid(self, image_tokens: int, patch_grid: int) -> tuple[int, int]:
        """(h, w) tokens of one image / one video package; ``image_tokens`` (a square) is
        model.omni.image_tokens, ``patch_grid`` the vision encoder's patches per side."""
        if self.resamples:
            side = math.isqrt(image_tokens)
            return side, side
        return patch_grid, patch_grid

    def frames_per_group(self, frames_per_package: int) -> int:
        """Video frames that become one grid of tokens (model.omni.frames_per_package)."""
        return frames_per_package if self.resamples else 1


@dataclass(frozen=True)
class AudioLayout:
    """An audio projector's tokens: ``downsample_convs`` stride-2 convolutions after the encoder,
    each token covering ``seconds_per_token``; ``tp_sharded`` as for VisionLayout."""

    name: str
    downsample_convs: int
    seconds_per_token: float
    tp_sharded: bool

    def output_length(self, encoder_tokens: int) -> int:
        """Projector tokens for ``encoder_tokens`` audio encoder tokens."""
        for _ in range(self.downsample_convs):
            encoder_tokens = stride2_length(encoder_tokens)
        return encoder_tokens


VISION_PROJECTORS: dict[str, VisionLayout] = {
    "resampler": VisionLayout("resampler", resamples=True, tp_sharded=False),
    "mlp": VisionLayout("mlp", resamples=False, tp_sharded=True),
}
AUDIO_PROJECTORS: dict[str, AudioLayout] = {
    "conv_gmlp": AudioLayout("conv_gmlp", downsample_convs=2, seconds_per_token=0.08, tp_sharded=False),
    "mlp": AudioLayout("mlp", downsample_convs=0, seconds_per_token=0.02, tp_sharded=True),
}


def projector_layouts(omni) -> tuple[VisionLayout, AudioLayout]:
    """The entries of an omni model config (read duck-typed: ``vision_projector``,
    ``audio_projector``); ValueError naming the field for an unknown name."""
    for field, registry in (("vision_projector", VISION_PROJECTORS),
                            ("audio_projector", AUDIO_PROJECTORS)):
        name = getattr(omni, field)
        if name not in registry:
            raise ValueError(f"model.omni.{field}={name!r}; use one of {sorted(registry)}")
    return VISION_PROJECTORS[omni.vision_projector], AUDIO_PROJECTORS[omni.audio_projector]
