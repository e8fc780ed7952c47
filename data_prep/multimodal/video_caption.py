"""Videos with captions and/or subtitles -> multimodal shards (sample_format):
`<video>`, its audio track's `<audio>`s, then the text.

    python -m omni_data_prep.multimodal.video_caption --input 'videos/*.jsonl' \\
        --tokenizer tok.model --output-dir data/video --workers 8 --max-frames 64

Input: jsonl records {"video_path", "caption"?, "subtitles"?: [{"start", "end", "text"}]} with
a caption, subtitles or both. Frames are sampled with PyAV at --fps (1) up to --max-frames (64;
a longer clip is sampled evenly over its whole length), stored as JPEG. The audio track, when
present and not disabled with --no-audio, becomes 16 kHz clips of at most 30 s. The text is the
caption followed by the subtitle texts, one per line; it and `<eod>` are training targets. The
subtitles with their times are kept in the sample metadata (`extra["subtitles"]`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from megatron_omni.data.sample_format import (MAX_AUDIO_SECONDS, Manifest, Placeholder,
                                              split_placeholders)
from omni_data_prep.multimodal.media import audio_items, load_video
from omni_data_prep.multimodal.runner import (Prepared, RecordContext, SampleSource, SkipSample,
                                              common_parser, field_of, run, run_cli)


@dataclass
class VideoCaptionSource(SampleSource):
    """Options: record keys, frame sampling rate and cap, whether to keep the audio track,
    the longest audio clip in seconds."""

    video_key: str = "video_path"
    caption_key: str = "caption"
    subtitles_key: str = "subtitles"
    fps: float = 1.0
    max_frames: int = 64
    with_audio: bool = True
    max_audio_seconds: float = MAX_AUDIO_SECONDS

    kind = "video_caption"

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


def prepare_video_captions(inputs: Sequence[str], tokenizer: str | Path, output_dir: str | Path,
                           fps: float = 1.0, max_frames: int = 64, with_audio: bool = True,
                           **run_options) -> Manifest:
    """Preprocess video jsonl files (glob patterns `inputs`) into `output_dir` with the
    default record keys; `run_options` (workers, samples_per_shard, strict, media_root,
    progress) go to `runner.run`. Returns the Manifest."""
    source = VideoCaptionSource(fps=fps, max_frames=max_frames, with_audio=with_audio)
    return run(source, inputs, tokenizer, output_dir, **run_options)


def main(argv: Sequence[str] | None = None) -> Manifest:
    """Run the CLI; returns the Manifest."""
    parser = common_parser("python -m omni_data_prep.multimodal.video_caption",
                           "Videos with captions/subtitles -> multimodal shards.")
    parser.add_argument("--video-key", default="video_path",
                        help="key of the video path (default: video_path)")
    parser.add_argument("--caption-key", default="caption", help="(default: caption)")
    parser.add_argument("--subtitles-key", default="subtitles", help="(default: subtitles)")
    parser.add_argument("--fps", type=float, default=1.0,
                        help="frames sampled per second (default: 1)")
    parser.add_argument("--max-frames", type=int, default=64,
                        help="most frames per video; longer videos are sampled evenly over "
                             "their length (default: 64)")
    parser.add_argument("--no-audio", dest="with_audio", action="store_false",
                        help="drop the audio track")
    parser.add_argument("--max-audio-seconds", type=float, default=MAX_AUDIO_SECONDS,
                        help="longest audio clip (default: 30)")
    args = parser.parse_args(argv)
    source = VideoCaptionSource(args.video_key, args.caption_key, args.subtitles_key, args.fps,
                                args.max_frames, args.with_audio, args.max_audio_seconds)
    return run_cli(source, args)


if __name__ == "__main__":
    main()
