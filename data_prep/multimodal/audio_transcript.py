"""Audio–transcript manifests -> multimodal shards (sample_format): `<audio>`s, then the
transcript.

    python -m omni_data_prep.multimodal.audio_transcript --input 'asr/*.jsonl' \\
        --tokenizer tok.model --output-dir data/asr --workers 8

Input: jsonl records as in the plan, {"audio_path", "transcript", "duration", ...}; optional
"start"/"end" (seconds) take a segment of a longer recording, optional "sample_rate" is checked
against the file. Audio is mixed to mono, resampled to 16 kHz and cut into consecutive windows
of --max-audio-seconds (30, the audio encoder's window; the last window shorter), one `<audio>`
each, in time order: a 75 s recording is windows at 0, 30 and 60 s (30, 30 and 15 s long), and
the loader gives them one TMRoPE audio span in which window k starts 30·k seconds after the
first (megatron_omni/data/multimodal/expand.py). The transcript and `<eod>` are training
targets.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from megatron_omni.data.bad_samples import SkipSample
from megatron_omni.data.media_items import MAX_AUDIO_SECONDS
from megatron_omni.data.sample_format import Manifest, Placeholder, split_placeholders
from omni_data_prep.multimodal import cli
from omni_data_prep.multimodal.media import (AUDIO_WINDOW_HELP, audio_items, check_window,
                                             load_audio)
from omni_data_prep.multimodal.runner import (Prepared, RecordContext, SampleSource, field_of,
                                              option, text_of)


@dataclass
class AudioTranscriptSource(SampleSource):
    """Options: record keys, the audio window in seconds, the lowest accepted sample rate."""

    audio_key: str = option("audio_path", "key of the audio path")
    text_key: str = option("transcript", "key of the transcript")
    max_audio_seconds: float = option(MAX_AUDIO_SECONDS, AUDIO_WINDOW_HELP)
    min_sample_rate: int = option(8000, "skip audio recorded below this rate")

    kind = "audio_transcript"
    description = "Audio–transcript manifests -> multimodal shards (16 kHz FLAC)."

    def __post_init__(self):
        check_window(self.max_audio_seconds, "--max-audio-seconds")

    def prepare(self, record: dict, ctx: RecordContext) -> Prepared:
        text = text_of(record, self.text_key)
        path = ctx.resolve(field_of(record, self.audio_key, str), self.audio_key)
        start = field_of(record, "start", (int, float), required=False) or 0.0
        end = field_of(record, "end", (int, float), required=False)
        if start < 0 or (end is not None and end <= start):
            raise SkipSample("bad_field", f"bad segment start={start} end={end}")
        wave, rate = load_audio(path, start, end,
                                field_of(record, "sample_rate", int, required=False),
                                field_of(record, "duration", (int, float), required=False),
                                self.min_sample_rate)
        clips = audio_items(wave, rate, float(start), self.max_audio_seconds)
        pieces = [Placeholder("audio")] * len(clips) + split_placeholders(text, loss=True)
        return Prepared(pieces, clips)


def main(argv: Sequence[str] | None = None) -> Manifest:
    """The `audio_transcript` command (cli); returns the Manifest."""
    return cli.main("audio_transcript", argv)


if __name__ == "__main__":
    main()
