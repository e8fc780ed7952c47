"""Videos with captions and/or subtitles -> multimodal shards (sample_format):
`<video>`, its audio track's `<audio>`s, then the text.

    python -m omni_data_prep.multimodal.video_caption --input 'videos/*.jsonl' \\
        --tokenizer tok.model --output-dir data/video --workers 8 --max-frames 64

Input: jsonl records {"video_path", "caption"?, "subtitles"?: [{"start", "end", "text"}]} with
a caption, subtitles or both. Frames are sampled by duration with PyAV: at --fps (1) up to
--max-frames (64); a clip longer than max_frames / fps seconds is sampled at max_frames / duration
instead, so the frames span all of it (a 3-minute clip at --fps 2 --max-frames 64: 64 frames
2.8 s apart). Frames are stored as JPEG with their presentation times, which the loader's
TMRoPE ids use. The audio track, when present and not disabled with --no-audio, becomes 16 kHz
consecutive windows of --max-audio-seconds (30), the last one shorter, on the video's clock
(window k starts at 30·k s), interleaved with the frames in 2-second TMRoPE chunks by the
loader. The text is the
caption followed by the subtitle texts, one per line; it and `<eod>` are training targets. The
subtitles with their times are kept in the sample metadata (`extra["subtitles"]`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from megatron_omni.data.bad_samples import SkipSample
from megatron_omni.data.media_items import MAX_AUDIO_SECONDS
from megatron_omni.data.sample_format import Manifest, Placeholder, split_placeholders
from omni_data_prep.multimodal import cli
from omni_data_prep.multimodal.media import (AUDIO_WINDOW_HELP, FPS_HELP, MAX_FRAMES_HELP,
                                             audio_items, check_sampling, check_window,
                                             load_video)
from omni_data_prep.multimodal.runner import (Prepared, RecordContext, SampleSource, field_of,
                                              option)


@dataclass
class VideoCaptionSource(SampleSource):
    """Options: record keys, frame sampling rate and cap, whether to keep the audio track,
    the audio window in seconds."""

    video_key: str = option("video_path", "key of the video path")
    caption_key: str = option("caption", "key of the caption")
    subtitles_key: str = option("subtitles", "key of the subtitles")
    fps: float = option(1.0, FPS_HELP)
    max_frames: int = option(64, MAX_FRAMES_HELP)
    with_audio: bool = option(True, "drop the audio track")
    max_audio_seconds: float = option(MAX_AUDIO_SECONDS, AUDIO_WINDOW_HELP)

    kind = "video_caption"
    description = "Videos with captions/subtitles -> multimodal shards."

    def __post_init__(self):
        check_sampling(self.fps, self.max_frames)
        check_window(self.max_audio_seconds, "--max-audio-seconds")

    def prepare(self, record: dict, ctx: RecordContext) -> Prepared:
        caption = field_of(record, self.caption_key, str, required=False)
        subtitles = _subtitles(field_of(record, self.subtitles_key, list, required=False))
        if caption is None and subtitles is None:
            raise SkipSample("missing_key", f"neither {self.caption_key!r} nor "
                                            f"{self.subtitles_key!r}")
        text = "\n".join(t for t in [caption or ""] + [s["text"] for s in subtitles or []]
                         if t.strip())
        if not text:
            raise SkipSample("empty_text", "caption and subtitles are empty")
        path = ctx.resolve(field_of(record, self.video_key, str), self.video_key)
        frames, track = load_video(path, self.fps, self.max_frames, self.with_audio)
        clips = [(dataclasses.replace(info, video_index=0), data) for info, data in
                 audio_items(*track, 0.0, self.max_audio_seconds)] if track is not None else []
        pieces = ([Placeholder("video")] + [Placeholder("audio")] * len(clips)
                  + split_placeholders(text, loss=True))
        return Prepared(pieces, [frames, *clips],
                        extra={"subtitles": subtitles} if subtitles else {})


def _subtitles(value: list | None) -> list[dict] | None:
    if value is None:
        return None
    for i, sub in enumerate(value):
        if (not isinstance(sub, dict) or not isinstance(sub.get("text"), str)
                or not all(isinstance(sub.get(k), (int, float)) for k in ("start", "end"))):
            raise SkipSample("bad_field", f"subtitle {i} is not {{start, end, text}}: {sub!r}")
    return [{"start": s["start"], "end": s["end"], "text": s["text"]} for s in value]


def main(argv: Sequence[str] | None = None) -> Manifest:
    """The `video_caption` command (cli); returns the Manifest."""
    return cli.main("video_caption", argv)


if __name__ == "__main__":
    main()
