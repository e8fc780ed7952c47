"""Conversations in the plan's unified SFT format -> multimodal shards (sample_format).

    python -m omni_data_prep.multimodal.conversations --input 'sft/*.jsonl' \\
        --tokenizer tok.model --output-dir data/sft --workers 8

Input: jsonl records
    {"id", "images": [path, ...], "audio": path, "audio_segments": [{"path", "start", "end"}],
     "videos": [path, ...],
     "conversations": [{"from": "human" | "gpt" | "system", "value": "<image><audio>\\n..."}]}
(every media key optional; "audio" and "audio_segments" exclusive). The k-th `<image>` in the
turns is images[k], the k-th `<audio>` the k-th audio segment, the k-th `<video>` videos[k]; the
counts must match (else `placeholder_mismatch`). Audio longer than 30 s becomes consecutive clips,
each with its own `<audio>`. Turns are rendered by `sample_format.render_conversation`; only the
assistant ("gpt") turns' content and turn-end markers are training targets, `<eod>` is not.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from megatron_omni.data.bad_samples import SkipSample
from megatron_omni.data.media_items import MAX_AUDIO_SECONDS
from megatron_omni.data.sample_format import (PLACEHOLDERS, ROLES, Manifest, Placeholder,
                                              placeholder_kinds, render_conversation,
                                              split_placeholders)
from omni_data_prep.multimodal import cli
from omni_data_prep.multimodal.media import (audio_items, load_audio, load_image, load_video,
                                             read_bytes)
from omni_data_prep.multimodal.runner import (Prepared, RecordContext, SampleSource, field_of,
                                              option)


@dataclass
class ConversationSource(SampleSource):
    """Options: the longest audio clip, the lowest accepted sample rate, video frame
    sampling."""

    max_audio_seconds: float = option(MAX_AUDIO_SECONDS, "longest audio clip")
    min_sample_rate: int = option(8000, "skip audio recorded below this rate")
    fps: float = option(1.0, "video frames sampled per second")
    max_frames: int = option(64, "most frames per video")

    kind = "conversation"
    description = ("SFT conversations (images/audio/videos + turns) -> multimodal shards with "
                   "loss on assistant turns only.")

    def prepare(self, record: dict, ctx: RecordContext) -> Prepared:
        turns = _turns(field_of(record, "conversations", list))
        media = {"image": [ctx.resolve(p, "images[]") for p in _list(record, "images")],
                 "audio": _audio_segments(record, ctx),
                 "video": [ctx.resolve(p, "videos[]") for p in _list(record, "videos")]}
        found = placeholder_kinds([p for _, content in turns for p in content])
        for kind in PLACEHOLDERS:
            if found.count(kind) != len(media[kind]):
                raise SkipSample("placeholder_mismatch",
                                 f"{found.count(kind)} {PLACEHOLDERS[kind]} but "
                                 f"{len(media[kind])} {kind} items")
        next_item = {kind: iter(items) for kind, items in media.items()}
        stored = []
        expanded = []
        for role, content in turns:
            pieces = []
            for piece in content:
                if isinstance(piece, Placeholder):
                    items = self._load(piece.kind, next(next_item[piece.kind]))
                    stored.extend(items)
                    pieces.extend(Placeholder(info.kind) for info, _ in items)
                else:
                    pieces.append(piece)
            expanded.append((role, pieces))
        return Prepared(render_conversation(expanded), stored, eod_loss=False)

    def _load(self, kind: str, item) -> list:
        if kind == "image":
            return [load_image(read_bytes(item), str(item))]
        if kind == "video":
            frames, _ = load_video(item, self.fps, self.max_frames, with_audio=False)
            return [frames]
        path, start, end = item
        wave, rate = load_audio(path, start, end, min_rate=self.min_sample_rate)
        return audio_items(wave, rate, start, self.max_audio_seconds)


def _list(record: dict, key: str) -> list:
    return field_of(record, key, list, required=False) or []


def _turns(conversations: list) -> list[tuple[str, list]]:
    turns = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or turn.get("from") not in ROLES:
            raise SkipSample("bad_field", f"turn {i} has no known 'from' ({sorted(ROLES)})")
        value = turn.get("value")
        if not isinstance(value, str):
            raise SkipSample("bad_field", f"turn {i} value is {type(value).__name__}")
        if not value.strip():
            raise SkipSample("empty_text", f"turn {i} is empty")
        turns.append((ROLES[turn["from"]], split_placeholders(value, loss=False)))
    if not any(role == "assistant" for role, _ in turns):
        raise SkipSample("bad_field", "no assistant turn")
    return turns


def _audio_segments(record: dict, ctx: RecordContext) -> list[tuple[Path, float, float | None]]:
    single = field_of(record, "audio", str, required=False)
    segments = _list(record, "audio_segments")
    if single is not None and segments:
        raise SkipSample("bad_field", "both 'audio' and 'audio_segments'")
    if single is not None:
        return [(ctx.resolve(single, "audio"), 0.0, None)]
    items = []
    for i, seg in enumerate(segments):
        if not isinstance(seg, dict):
            raise SkipSample("bad_field", f"audio_segments[{i}] is {type(seg).__name__}")
        start = field_of(seg, "start", (int, float), required=False) or 0.0
        end = field_of(seg, "end", (int, float), required=False)
        if start < 0 or (end is not None and end <= start):
            raise SkipSample("bad_field", f"audio_segments[{i}]: start={start} end={end}")
        items.append((ctx.resolve(seg.get("path"), f"audio_segments[{i}].path"), float(start),
                      end))
    return items


def main(argv: Sequence[str] | None = None) -> Manifest:
    """The `conversations` command (cli); returns the Manifest."""
    return cli.main("conversations", argv)


if __name__ == "__main__":
    main()
