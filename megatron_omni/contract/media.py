"""Media kinds, their placeholder texts, and how many LLM tokens (positions) each media item
becomes: one `MediaTokens` object, built from the model config by `media_tokens`, that the data
path expands placeholders with and the model checks its encoder outputs against.

    image  image_grid h * w tokens
    video  ceil(frames / video_frames_per_group) groups of video_grid h * w tokens
    audio  mel frames -> Whisper encoder (one stride-2 conv, 20 ms per token) -> the audio
           projector's downsampling (contract/projectors.py)
"""
from __future__ import annotations

from dataclasses import dataclass

from megatron_omni.contract.projectors import AUDIO_PROJECTORS, AudioLayout, projector_layouts, stride2_length

KINDS = ("image", "video", "audio")
"""Media kinds, in the order the model encodes them."""

PLACEHOLDERS = {"image": "<image>", "video": "<video>", "audio": "<audio>"}
"""Placeholder text of each kind: one per media item in a prepared sample, expanded by the data
path to the item's token count (each position holding the placeholder's token id)."""


@dataclass(frozen=True)
class MediaTokens:
    """LLM tokens of each media item and their TMRoPE grids.

    image_grid: (h, w) tokens per image (e.g. the resampler's 64 queries = 8 x 8).
    video_grid: (h, w) tokens per temporal group of `video_frames_per_group` frames.
    audio: the audio projector's registry entry (token count and seconds per token).
    """

    image_grid: tuple[int, int] = (8, 8)
    video_grid: tuple[int, int] = (8, 8)
    video_frames_per_group: int = 1
    audio: AudioLayout = AUDIO_PROJECTORS["conv_gmlp"]

    @property
    def image_tokens(self) -> int:
        return self.image_grid[0] * self.image_grid[1]

    def video_tokens(self, frames: int) -> int:
        """Tokens of a video of `frames` (sampled) frames: one grid per temporal group."""
        return -(-frames // self.video_frames_per_group) * self.video_grid[0] * self.video_grid[1]

    def audio_tokens(self, mel_frames: int) -> int:
        """Tokens of a clip of `mel_frames` valid mel frames."""
        return self.audio.output_length(stride2_length(mel_frames))

    @property
    def audio_seconds_per_token(self) -> float:
        return self.audio.seconds_per_token


def media_tokens(omni, patch_grid: int) -> MediaTokens:
    """The counts of an omni model config (read duck-typed: vision_projector, audio_projector,
    image_tokens, frames_per_package) whose vision encoder has `patch_grid` patches per side."""
    vision, audio = projector_layouts(omni)
    grid = vision.grid(omni.image_tokens, patch_grid)
    return MediaTokens(image_grid=grid, video_grid=grid,
                       video_frames_per_group=vision.frames_per_group(omni.frames_per_package),
                       audio=audio)
