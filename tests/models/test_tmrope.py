"""TMRoPE position ids (hand-computed values for a 5-second audio+video clip, text continuation,
video timestamps, batching) and the sectioned rotary embedding (equal to 1-D RoPE when the axes
agree; each section follows its own axis)."""
import functools
import types

import pytest
import torch
from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_omni.contract.tmrope import (AudioSpan, AudioVideoSpan, ImageSpan, TextSpan, VideoSpan,
                                           interleave_layout, tmrope_position_ids)
from megatron_omni.models.positions.tmrope import TMRotaryEmbedding
from tests.omni_batches import batch_position_ids

# A 5-second clip: video at 1 fps as 2 × 2 token grids (frames at 0..4 s), audio at 25 tokens/s.
CLIP = AudioVideoSpan(VideoSpan(2, 2, (0.0, 1.0, 2.0, 3.0, 4.0)), AudioSpan(125, seconds_per_token=0.04))


def test_five_second_audio_video_clip_hand_computed():
    """3 text tokens, the clip (starts at id 3), 2 text tokens. Chunks of 2 s = 50 ids:
    chunk 0 = frames at 0 s, 1 s (t = 3, 28) + audio 0..49; chunk 1 = frames at 2 s, 3 s (t = 53, 78)
    + audio 50..99; chunk 2 = frame at 4 s (t = 103) + audio 100..124. Text resumes at 3 + 124 + 1."""
    ids = tmrope_position_ids([TextSpan(3), CLIP, TextSpan(2)])
    frame = lambda t: ([t] * 4, [3, 3, 4, 4], [3, 4, 3, 4])  # noqa: E731  one 2 × 2 frame, row-major
    audio = lambda a, b: (list(range(a, b)),) * 3              # noqa: E731  same id on all axes
    pieces = [([0, 1, 2],) * 3, frame(3), frame(28), audio(3, 53), frame(53), frame(78), audio(53, 103),
              frame(103), audio(103, 128), ([128, 129],) * 3]
    expected = torch.tensor([sum((p[axis] for p in pieces), []) for axis in range(3)])
    assert ids.shape == (3, 3 + 20 + 125 + 2)
    assert torch.equal(ids, expected)
    assert interleave_layout(CLIP) == [("video", 0, 8), ("audio", 0, 50), ("video", 8, 16),
                                       ("audio", 50, 100), ("video", 16, 20), ("audio", 100, 125)]


def test_clip_with_80ms_audio_tokens():
    """Whisper (50 Hz) + the 4× Conv-GMLP projector give 80 ms tokens: ids advance 2 per token."""
    clip = AudioVideoSpan(CLIP.video, AudioSpan(63, seconds_per_token=0.08))
    ids = tmrope_position_ids([clip])
    assert interleave_layout(clip) == [("video", 0, 8), ("audio", 0, 25), ("video", 8, 16),
                                       ("audio", 25, 50), ("video", 16, 20), ("audio", 50, 63)]
    assert ids[0, 8:33].tolist() == list(range(0, 50, 2))
    assert ids[0, -13:].tolist() == list(range(100, 125, 2))


def test_clip_matches_transformers_qwen2_5_omni_block():
    """The interleaved block equals transformers' Qwen2.5-Omni get_rope_index for the same clip
    (relative to the block start; Qwen's own <bos>/<eos> numbering around the block differs)."""
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import (
        Qwen2_5OmniPreTrainedModelForConditionalGeneration as Qwen)

    cfg = types.SimpleNamespace(image_token_id=1, video_token_id=2, audio_token_id=3, vision_start_token_id=4,
                                audio_start_token_id=5, position_id_per_seconds=25, seconds_per_chunk=2)
    fake = types.SimpleNamespace(spatial_merge_size=2, config=cfg)
    fake.get_llm_pos_ids_for_vision = functools.partial(Qwen.get_llm_pos_ids_for_vision, fake)
    fake.get_chunked_index = functools.partial(Qwen.get_chunked_index, fake)
    tokens = [0, 0, 0, 4, 5] + [2] * 20 + [3] * 125 + [6, 7, 0, 0]
    qwen, _ = Qwen.get_rope_index(fake, torch.tensor([tokens]), video_grid_thw=torch.tensor([[5, 4, 4]]),
                                  use_audio_in_video=True, audio_seqlens=torch.tensor([500]),
                                  second_per_grids=torch.tensor([1.0]))
    block = qwen[:, 0, 5:150]
    ours = tmrope_position_ids([CLIP])
    assert torch.equal(block - block[0, 0], ours)


def test_text_continues_after_the_largest_media_id():
    ids = tmrope_position_ids([TextSpan(2), ImageSpan(2, 3), TextSpan(2)])
    assert ids.tolist() == [[0, 1, 2, 2, 2, 2, 2, 2, 5, 6],
                            [0, 1, 2, 2, 2, 3, 3, 3, 5, 6],
                            [0, 1, 2, 3, 4, 2, 3, 4, 5, 6]]
    audio_first = tmrope_position_ids([AudioSpan(3), TextSpan(1)], start=10)
    assert audio_first[0].tolist() == [10, 11, 12, 13]


def test_video_timestamps_and_sparse_chunks():
    ids = tmrope_position_ids([VideoSpan(1, 1, (0.0, 0.5, 1.16, 2.3))])  # 1.16 * 25 = 28.999999999999996
    assert ids[0].tolist() == [0, 12, 29, 57]
    # Frames every 3 s: chunk k holds ids [50k, 50k + 50): frames at 0, 3, 6 s -> chunks 0, 1, 3.
    sparse = AudioVideoSpan(VideoSpan(1, 1, (0.0, 3.0, 6.0)), AudioSpan(7, seconds_per_token=1.0))
    assert interleave_layout(sparse) == [("video", 0, 1), ("audio", 0, 2), ("video", 1, 2), ("audio", 2, 4),
                                         ("audio", 4, 6), ("video", 2, 3), ("audio", 6, 7)]


def test_batch_position_ids_pad_as_text():
    a = tmrope_position_ids([TextSpan(1), ImageSpan(2, 2)])
    b = tmrope_position_ids([TextSpan(3)])
    batch = batch_position_ids([a, b], seq_length=7)
    assert batch.shape == (3, 2, 7)
    assert batch[:, 0].tolist() == [[0, 1, 1, 1, 1, 3, 4], [0, 1, 1, 2, 2, 3, 4], [0, 1, 2, 1, 2, 3, 4]]
    assert batch[0, 1].tolist() == list(range(7))
    with pytest.raises(ValueError,
                       match=r"sample 0: expected ids \[3, L\] with L ≤ seq_length=4; got \(3, 5\)"):
        batch_position_ids([a], seq_length=4)


def test_rotary_with_equal_axes_is_1d_rope():
    head_dim, s = 32, 11
    rope_1d = RotaryEmbedding(kv_channels=head_dim, rotary_percent=1.0, rotary_base=10000)(s)  # [s, 1, 1, d]
    tm = TMRotaryEmbedding(head_dim, sections=(4, 6, 6))
    positions = torch.arange(s)[None]
    for ids in (positions[None].expand(3, -1, -1), positions):  # [3, b, s] and plain [b, s]
        torch.testing.assert_close(tm(ids), rope_1d, atol=0, rtol=0)
    config = TransformerConfig(num_layers=1, hidden_size=head_dim * 2, num_attention_heads=2,
                               apply_rope_fusion=False)
    q = torch.randn(s, 1, 2, head_dim)
    torch.testing.assert_close(apply_rotary_pos_emb(q, tm(positions), config),
                               apply_rotary_pos_emb(q, rope_1d, config), atol=0, rtol=0)


def test_rotary_sections_follow_their_axes():
    head_dim, sections = 16, (2, 3, 3)
    ids = torch.randint(0, 100, (3, 2, 5))
    freqs = TMRotaryEmbedding(head_dim, sections=sections, rotary_base=500)(ids)  # [s, b, 1, d]
    inv_freq = 1.0 / 500 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    axis = torch.tensor([0] * 2 + [1] * 3 + [2] * 3)  # which axis rotates frequency pair i
    angles = ids[axis].permute(2, 1, 0).float() * inv_freq  # [s, b, d/2]
    torch.testing.assert_close(freqs[:, :, 0], torch.cat([angles, angles], dim=-1))


def test_bad_sections_and_positions():
    with pytest.raises(ValueError, match=r"sum(ming)? to rotary_dim / 2 = 64 \(e.g. \(16, 24, 24\)\)"):
        TMRotaryEmbedding(128, sections=(16, 24, 23))
    with pytest.raises(ValueError, match=r"position ids \[3, b, s\] or \[b, s\]; got \(2, 1, 4\)"):
        TMRotaryEmbedding(16, sections=(2, 3, 3))(torch.zeros(2, 1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="sizes must be positive"):
        tmrope_position_ids([ImageSpan(0, 3)])
    with pytest.raises(ValueError, match="non-decreasing"):
        tmrope_position_ids([VideoSpan(1, 1, (1.0, 0.5))])
