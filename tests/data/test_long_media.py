"""Long media through the prep CLIs and the loader (docs/omni_batch.md "Long media"): a 3-minute
video sampled by duration (fps with a frame cap) whose stored timestamps are the TMRoPE times,
75 s of audio as consecutive 30 s windows in one time-ordered span, a 65 s video with its audio
track interleaved in 2-second chunks by absolute time (ids checked against hand-computed ones),
a 40-turn dialogue longer than the row (cut after its last whole answer), and packing planned from
the expanded lengths of the index."""
import numpy as np
import pytest
import torch

from megatron_omni.config.mixes import Schedule
from megatron_omni.contract import tmrope
from megatron_omni.contract.media import MediaTokens
from megatron_omni.data.multimodal.dataset import LoaderConfig, MultimodalDataset
from megatron_omni.data.multimodal.loader import ModalitySources, RowReader, plan_steps
from megatron_omni.data.multimodal.mixture import MixtureStream
from megatron_omni.data.multimodal.packing import fit
from omni_data_prep.multimodal import cli

from ..synthetic_media import make_tone, make_video, special_id, write_jsonl

TOKENS = MediaTokens(image_grid=(1, 1), video_grid=(1, 1))
CONFIG = LoaderConfig(image_size=16, max_video_frames=8, media_tokens=TOKENS)
TURNS = 40


def _prep(kind, root, name, records, spm_path, *options):
    cli.main(kind, ["--input", write_jsonl(root / f"{name}.jsonl", records), "--tokenizer",
                    str(spm_path), "--output-dir", str(root / name), *options])
    return MultimodalDataset(root / name, config=CONFIG)


@pytest.fixture(scope="module")
def long_media(tmp_path_factory, spm_path):
    """Prepared folders: a 3-minute silent video at --fps 2 --max-frames 24 (one gray shade per
    second: shade = second), a 65 s video with its track at --fps 0.2, 75 s of audio, and a
    40-turn dialogue after that audio."""
    root = tmp_path_factory.mktemp("long")
    make_video(root / "long.mp4", 180.0, fps=2, size=(16, 16), shade_step=1)
    make_video(root / "av.mp4", 65.0, fps=1, size=(16, 16), audio_rate=16000, shade_step=3)
    make_tone(root / "speech.wav", 75.0, 16000)
    turns = [{"from": "human", "value": "<audio>\nWhat do you hear?"}]
    for t in range(1, TURNS):
        turns.append({"from": ("human", "gpt")[t % 2],
                      "value": f"turn {t}: " + " ".join(["a tone"] * 6)})
    return {
        "video": _prep("video_caption", root, "video",
                       [{"video_path": "long.mp4", "caption": "a slow fade"}], spm_path,
                       "--fps", "2", "--max-frames", "24"),
        "av": _prep("video_caption", root, "av",
                    [{"video_path": "av.mp4", "caption": "a tone"}], spm_path, "--fps", "0.2"),
        "audio": _prep("audio_transcript", root, "audio",
                       [{"audio_path": "speech.wav", "transcript": "a long tone"}], spm_path),
        "dialogue": _prep("conversations", root, "dialogue",
                          [{"audio": "speech.wav", "conversations": turns}], spm_path),
    }


def test_three_minute_video_sampled_by_duration_keeps_real_times(long_media, tokenizer):
    """180 s at --fps 2 would be 360 frames > --max-frames 24: sampled at 24 / 180 fps, one frame
    per 7.5 s over the whole clip; each stored timestamp is its frame's time (shade = second),
    and the video's TMRoPE temporal ids are 25 per second of those times."""
    ds = long_media["video"]
    _, _, _, _, meta, media = ds.reader.raw(0)
    info = meta.media[0]
    assert info.num_frames == 24 and info.fps == pytest.approx(24 / 180, rel=0.01)
    assert info.timestamps == tuple(7.5 * k for k in range(24))
    frames = ds[0]["videos"][0]   # max_video_frames 8 of the 24: every third
    item = ds[0]
    kept = [7.5 * k for k in range(0, 24, 3)]
    assert item["video_timestamps"][0].tolist() == kept
    shades = (frames.mean(dim=(1, 2, 3)) + 1) / 2 * 255
    np.testing.assert_allclose(shades.numpy(), [int(t) for t in kept], atol=3)
    video = special_id(tokenizer, "video")
    ids = item["position_ids"][:, item["tokens"] == video]
    assert ids[0].tolist() == [int(25 * t) for t in kept]   # 0, 562, 1125, ...
    assert item["spans"][0] == tmrope.VideoSpan(1, 1, tuple(kept))


def test_75s_audio_is_three_windows_in_one_time_ordered_span(long_media, tokenizer):
    """75 s -> windows at 0, 30, 60 s of 30, 30, 15 s; 375 + 375 + 188 tokens of 80 ms; window k
    starts at temporal id 750·k; the transcript follows the largest id."""
    ds = long_media["audio"]
    _, _, _, _, meta, _ = ds.reader.raw(0)
    assert [(m.start, m.num_samples) for m in meta.media] == [(0.0, 480000), (30.0, 480000),
                                                              (60.0, 240000)]
    item = ds[0]
    assert item["audio_frames"].tolist() == [3000, 3000, 1500]
    assert item["spans"][0] == tmrope.AudioSpan(938, 0.08, ((375, 0.0), (375, 30.0), (188, 60.0)))
    audio = special_id(tokenizer, "audio")
    assert item["tokens"][:938].eq(audio).all() and item["tokens"][938] != audio
    expected = list(range(0, 750, 2)) + list(range(750, 1500, 2)) + list(range(1500, 1876, 2))
    assert item["position_ids"][0, :938].tolist() == expected
    assert item["position_ids"][:, 938].tolist() == [1875] * 3
    assert item["media_item"][:938].tolist() == [0] * 375 + [1] * 375 + [2] * 188


def test_65s_video_with_its_track_interleaves_by_absolute_time(long_media, tokenizer):
    """Frames every 5 s (0 … 60 s; 8 of them kept, 1 token each) and the track's windows at 0, 30, 60 s (375,
    375, n tokens): per 2-second chunk (50 ids) the chunk's frames, then its audio. Hand
    computed: frame at t s has id 25·t; audio token j of window k has id 750·k + 2j."""
    ds = long_media["av"]
    _, _, _, _, meta, _ = ds.reader.raw(0)
    video_info, *windows = meta.media
    assert video_info.timestamps == tuple(5.0 * k for k in range(13))
    assert [m.start for m in windows] == [0.0, 30.0, 60.0]
    assert [m.num_samples for m in windows[:2]] == [480000, 480000]
    assert abs(windows[2].num_samples - 80000) < 1600        # 5 s, give or take AAC padding
    item = ds[0]
    last = TOKENS.audio_tokens(int(item["audio_frames"][2]))
    kept = [0, 1, 3, 4, 6, 8, 9, 11]    # max_video_frames 8 of the 13 frames, spread evenly
    assert item["video_timestamps"][0].tolist() == [5.0 * k for k in kept]
    frame_ids = [125 * k for k in kept]
    audio_ids = ([2 * j for j in range(375)] + [750 + 2 * j for j in range(375)]
                 + [1500 + 2 * j for j in range(last)])
    layout = []
    for chunk in range(max(frame_ids + audio_ids) // 50 + 1):
        layout += [("video", t) for t in frame_ids if t // 50 == chunk]
        layout += [("audio", t) for t in audio_ids if t // 50 == chunk]
    n = len(layout)
    video, audio = special_id(tokenizer, "video"), special_id(tokenizer, "audio")
    assert item["tokens"][:n].tolist() == [video if k == "video" else audio for k, _ in layout]
    assert item["position_ids"][0, :n].tolist() == [t for _, t in layout]
    is_audio = torch.tensor([k == "audio" for k, _ in layout])
    for axis in (1, 2):   # audio: the temporal id on every axis; a 1 x 1 frame: row = column = 0
        assert torch.equal(item["position_ids"][axis, :n],
                           torch.where(is_audio, item["position_ids"][0, :n], 0))
    # Frame 6 (30 s, id 750) opens chunk 15, then window 1's first token (also 750).
    at = layout.index(("video", 750))
    assert layout[at + 1] == ("audio", 750) and layout[at - 1] == ("audio", 748)
    assert item["position_ids"][0, n] == max(audio_ids) + 1, "the caption follows the media"
    owners = item["media_item"][:n].tolist()
    assert [owners[i] for i, (k, t) in enumerate(layout) if k == "audio"] == (
        [1] * 375 + [2] * 375 + [3] * last)


def test_40_turn_dialogue_longer_than_the_row_is_cut_after_its_last_whole_answer(long_media, tokenizer):
    """The rule (docs/omni_batch.md): a sample longer than data.seq_length is cut within its first
    seq_length positions, never inside a media item; a conversation right after the end-of-turn
    of its last answer that fits whole (no answer trained half-way). The turns after the cut are
    not trained, the last kept position predicts nothing; only a sample that starts with an item
    longer than the row keeps nothing (None: the loader counts it too_long)."""
    ds = long_media["dialogue"]
    item = ds[0]
    assert item["kind"] == "conversation"
    assert item["expanded_length"] == int(ds.planned_lengths()[0]) > 2000, item["expanded_length"]
    assert item["media_order"] == [("audio", 0), ("audio", 1), ("audio", 2)]
    mask = item["loss_mask"]
    answer_ends = [c for c in range(2, item["expanded_length"]) if mask[c - 2] == 1 and mask[c - 1] == 0]
    assert len(answer_ends) == TURNS // 2, answer_ends        # turns 1, 3, ..., 39 are answers
    last = max(c for c in answer_ends if c <= 1200)
    assert 1200 - last > 10, "the row ends inside an answer"
    cut = fit(item, 1200)
    assert cut["expanded_length"] == last
    assert torch.equal(cut["tokens"], item["tokens"][:last])
    assert torch.equal(cut["position_ids"], item["position_ids"][:, :last])
    assert torch.equal(cut["loss_mask"], item["loss_mask"][:last]) and cut["loss_mask"][-1] == 0
    text = tokenizer.decode(cut["tokens"][cut["media_item"] < 0].tolist())
    assert text.endswith("<|im_end|>\n"), text[-80:]   # an answer's targets end with its newline
    answered = (answer_ends.index(last) + 1) * 2 - 1         # the last whole answer's turn
    assert f"turn {answered}:" in text and f"turn {answered + 1}:" not in text, text[-200:]
    assert fit(item, last)["expanded_length"] == last        # a row ending on a turn end keeps it
    full = tokenizer.decode(item["tokens"][item["media_item"] < 0].tolist())
    assert f"turn {TURNS - 1}:" in full
    # Another kind with the same positions keeps its first seq_length positions.
    other = fit(dict(item, kind="interleaved"), 1200)
    assert other["expanded_length"] == 1200 and other["loss_mask"][1199] == 0 and mask[1199] == 1
    # A row ending inside the second window: the cut moves back before it (window 0 kept); one
    # ending inside the first window keeps the turn header only. No answer ends before either:
    # both keep the media rule's cut and train nothing.
    header = int((item["media_item"] >= 0).nonzero()[0])
    short = fit(item, 500)
    assert short["expanded_length"] == header + 375 and short["loss_mask"].sum() == 0
    assert short["media_order"] == [("audio", 0)] and len(short["audio_mel"]) == 1
    assert short["audio_times"] == [(0.0, 30.0)] and len(short["audio_frames"]) == 1
    assert fit(item, 300)["expanded_length"] == header
    assert fit(dict(item, media_item=item["media_item"][header:],
                    expanded_length=item["expanded_length"] - header), 300) is None


def test_packing_plans_long_samples_by_their_expanded_lengths(long_media):
    """The plan reads each sample's expanded length from the index (no media decoded); a long
    sample takes min(length, row) positions, and the rows read back hold those, but for the long
    dialogue, cut back to its last whole answer (the rest of its row is padding)."""
    datasets = [long_media[k] for k in ("video", "av", "audio", "dialogue")]
    sources = {"cross_modal": ModalitySources(datasets)}
    expanded = [d[0]["expanded_length"] for d in datasets]
    assert sources["cross_modal"].lengths.tolist() == expanded
    seq_length = 1200
    stream = MixtureStream(Schedule.from_config({"mix": {"cross_modal": 1.0}}), {"cross_modal": 4},
                           seed=0)
    rows = next(plan_steps(stream, {"cross_modal": sources["cross_modal"].lengths}, seq_length,
                           rows_per_step=4, packing=True))
    planned = [[min(expanded[i], seq_length) for _, i in row] for row in rows]
    assert all(sum(p) <= seq_length for p in planned) and sum(len(r) for r in rows) >= 4
    held = [fit(d[0], seq_length)["expanded_length"] for d in datasets]
    assert held[:3] == [min(n, seq_length) for n in expanded[:3]] and held[3] < seq_length < expanded[3]
    reader = RowReader(sources, seq_length, pad_id=0, tmrope=True)
    for row in rows:
        out = reader[tuple(row)]
        assert out["skips"] == {}
        bounds = out["cu_seqlens"].tolist()
        assert [b - a for a, b in zip(bounds, bounds[1:])][:len(row)] == [held[i] for _, i in row]


def test_audio_windows_span_hand_computed_and_checked():
    """The contract alone: windows of 3 and 2 tokens of 1 s at 0 s and 10 s after text; window 1
    starts at id 3 + 250 (rule 4), not after window 0's last id; bad windows are refused."""
    span = tmrope.AudioSpan(5, 1.0, ((3, 0.0), (2, 10.0)))
    ids = tmrope.tmrope_position_ids([tmrope.TextSpan(3), span, tmrope.TextSpan(1)])
    assert ids[0].tolist() == [0, 1, 2, 3, 28, 53, 253, 278, 279]
    with pytest.raises(ValueError, match=r"do not hold num_tokens=6"):
        tmrope.tmrope_position_ids([tmrope.AudioSpan(6, 1.0, span.windows)])
    with pytest.raises(ValueError, match="overlap or start before 0 s"):
        tmrope.tmrope_position_ids([tmrope.AudioSpan(5, 1.0, ((3, 0.0), (2, 1.5)))])
