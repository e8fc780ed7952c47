"""Audio–transcript manifests -> multimodal shards (sample_format): `<audio>`s, then the
transcript.

    python -m omni_data_prep.multimodal.audio_transcript --input 'asr/*.jsonl' \\
        --tokenizer tok.model --output-dir data/asr --workers 8

Input: jsonl records as in the plan, {"audio_path", "transcript", "duration", ...}; optional
"start"/"end" (seconds) take a segment of a longer recording, optional "sample_rate" is checked
against the file. Audio is mixed to mono, resampled to 16 kHz and cut into the fewest equal
clips of at most --max-seconds (30), one `<audio>` each. The transcript and `<eod>` are
training targets.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from megatron_omni.data.sample_format import (MAX_AUDIO_SECONDS, Manifest, Placeholder,
                                              split_placeholders)
from omni_data_prep.multimodal.media import audio_items, load_audio
from omni_data_prep.multimodal.runner import (Prepared, RecordContext, SampleSource, SkipSample,
                                              common_parser, field_of, run, run_cli, text_of)


@dataclass
class AudioTranscriptSource(SampleSource):
    """Options: record keys, the longest clip in seconds, the lowest accepted sample rate."""

    audio_key: str = "audio_path"
    text_key: str = "transcript"
    max_seconds: float = MAX_AUDIO_SECONDS
    min_sample_rate: int = 8000

    kind = "audio_transcript"

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
        clips = audio_items(wave, rate, float(start), self.max_seconds)
        pieces = [Placeholder("audio")] * len(clips) + split_placeholders(text, loss=True)
        return Prepared(pieces, clips)


def prepare_audio_transcripts(inputs: Sequence[str], tokenizer: str | Path,
                              output_dir: str | Path, audio_key: str = "audio_path",
                              text_key: str = "transcript",
                              max_seconds: float = MAX_AUDIO_SECONDS,
                              min_sample_rate: int = 8000, **run_options) -> Manifest:
    """Preprocess audio–transcript jsonl manifests (glob patterns `inputs`) into `output_dir`;
    `run_options` (workers, samples_per_shard, strict, media_root, progress) go to
    `runner.run`. Returns the Manifest."""
    source = AudioTranscriptSource(audio_key, text_key, max_seconds, min_sample_rate)
    return run(source, inputs, tokenizer, output_dir, **run_options)


def main(argv: Sequence[str] | None = None) -> Manifest:
    """Run the CLI; returns the Manifest."""
    parser = common_parser("python -m omni_data_prep.multimodal.audio_transcript",
                           "Audio–transcript manifests -> multimodal shards (16 kHz FLAC).")
    parser.add_argument("--audio-key", default="audio_path",
                        help="key of the audio path (default: audio_path)")
    parser.add_argument("--text-key", default="transcript",
                        help="key of the transcript (default: transcript)")
    parser.add_argument("--max-seconds", type=float, default=MAX_AUDIO_SECONDS,
                        help="longest audio clip; longer audio is cut into equal clips "
                             "(default: 30)")
    parser.add_argument("--min-sample-rate", type=int, default=8000,
                        help="skip audio recorded below this rate (default: 8000)")
    args = parser.parse_args(argv)
    source = AudioTranscriptSource(args.audio_key, args.text_key, args.max_seconds,
                                   args.min_sample_rate)
    return run_cli(source, args)


if __name__ == "__main__":
    main()
