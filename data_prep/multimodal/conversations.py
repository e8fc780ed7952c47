"""Conversations in the plan's unified SFT format -> multimodal shards (sample_format).

    python -m omni_data_prep.multimodal.conversations --input 'sft/*.jsonl' \\
        --tokenizer tok.model --output-dir data/sft --workers 8

Input: jsonl records
    {"id", "images": [path, ...], "audio": path, "audio_segments": [{"path", "start", "end"}],
     "videos": [path, ...], "reasoning_mode": "short" | "long",
     "conversations": [{"from": "human" | "gpt" | "system", "value": "<image><audio>\\n...",
                        "reasoning": "...", "loss": true}]}
(every media key optional; "audio" and "audio_segments" exclusive). The k-th `<image>` in the
turns is images[k], the k-th `<audio>` the k-th audio segment, the k-th `<video>` videos[k]; the
counts must match (else `placeholder_mismatch`). Audio longer than --max-audio-seconds (30, the
audio encoder's window) becomes consecutive windows, each with its own `<audio>`, which the
loader keeps as one TMRoPE audio span in time order. Videos are sampled by duration as in
video_caption.py (--fps, --max-frames), without their audio track. Turns are rendered by `sample_format.render_conversation`; only the
assistant ("gpt") turns' content and turn-end markers are training targets, `<eod>` is not.

Reasoning mode (docs/sft.md). `reasoning_mode` is rendered the way the model is asked at
inference, right after each assistant header: short puts the empty block `THINK_EMPTY` there as
prompt (not a target), long puts `<think>\\n` there as prompt and the turn's `reasoning` as the
target `{reasoning}\\n</think>\\n\\n` before the answer (a long sample whose trained assistant
turn has no `reasoning` is skipped as `bad_field`). A record without `reasoning_mode` is long for
a `--long-share` of those whose trained assistant turns all have `reasoning` (picked by a hash of
the turns, so a rerun picks the same), else short. The mode is kept in the sample's metadata
(`SampleMeta.extra["reasoning_mode"]`) and the command prints the count of each.

Per assistant turn, `"loss": false` makes it context (no target at all), as interruption samples
(interruptions.py) do with the turns before the interruption; a turn whose value is exactly
`STOP_MARKER` has the marker as its only target (its turn end is not one: inference stops at the
marker). A record's `interruption` field is kept in `SampleMeta.extra` as it is.
"""
from __future__ import annotations

import collections
import json
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from megatron_omni.data.bad_samples import SkipSample
from megatron_omni.data.media_items import MAX_AUDIO_SECONDS
from megatron_omni.data.sample_format import (PLACEHOLDERS, ROLES, Manifest, Placeholder, Text,
                                              placeholder_kinds, render_conversation,
                                              shard_name, split_placeholders)
from omni_data_prep.multimodal import cli
from omni_data_prep.multimodal.media import (AUDIO_WINDOW_HELP, FPS_HELP, MAX_FRAMES_HELP,
                                             audio_items, check_sampling, check_window,
                                             load_audio, load_image, load_video, read_bytes)
from omni_data_prep.multimodal.runner import (Prepared, RecordContext, SampleSource, field_of,
                                              option)

REASONING_MODES = ("short", "long")
THINK_EMPTY = "<think>\n\n</think>\n\n"
"""The prompt after the assistant header in short mode (Qwen3's non-thinking prompt)."""
THINK_OPEN, THINK_CLOSE = "<think>\n", "\n</think>\n\n"
"""Long mode: THINK_OPEN is prompt, the reasoning + THINK_CLOSE the first target text."""
STOP_MARKER = "[INTERRUPTED]"
"""The whole reply to an interruption command: encoded as its own piece, a fixed token sequence."""


@dataclass
class ConversationSource(SampleSource):
    """Options: the audio window, the lowest accepted sample rate, video frame
    sampling, the share of long reasoning mode among records that leave it open."""

    max_audio_seconds: float = option(MAX_AUDIO_SECONDS, AUDIO_WINDOW_HELP)
    min_sample_rate: int = option(8000, "skip audio recorded below this rate")
    fps: float = option(1.0, FPS_HELP)
    max_frames: int = option(64, MAX_FRAMES_HELP)
    long_share: float = option(0.0, "share of the records without reasoning_mode whose assistant "
                                    "turns all have reasoning rendered long (chosen by a hash "
                                    "of the turns); the rest short")

    kind = "conversation"
    description = ("SFT conversations (images/audio/videos + turns) -> multimodal shards with "
                   "loss on assistant turns only.")

    def __post_init__(self):
        check_window(self.max_audio_seconds, "--max-audio-seconds")
        check_sampling(self.fps, self.max_frames)
        if not 0 <= self.long_share <= 1:
            raise ValueError(f"long_share={self.long_share} must be in [0, 1], e.g. 0.3")

    def prepare(self, record: dict, ctx: RecordContext) -> Prepared:
        mode = field_of(record, "reasoning_mode", str, required=False)
        if mode is not None and mode not in REASONING_MODES:
            raise SkipSample("bad_field", f"reasoning_mode is {mode!r}, not one of "
                                          f"{', '.join(REASONING_MODES)}")
        turns = _turns(field_of(record, "conversations", list))
        if mode is None:
            mode = "long" if _draws_long(turns, self.long_share) else "short"
        media = {"image": [ctx.resolve(p, "images[]") for p in _list(record, "images")],
                 "audio": _audio_segments(record, ctx),
                 "video": [ctx.resolve(p, "videos[]") for p in _list(record, "videos")]}
        found = placeholder_kinds([p for turn in turns for p in turn.content])
        for kind in PLACEHOLDERS:
            if found.count(kind) != len(media[kind]):
                raise SkipSample("placeholder_mismatch",
                                 f"{found.count(kind)} {PLACEHOLDERS[kind]} but "
                                 f"{len(media[kind])} {kind} items")
        next_item = {kind: iter(items) for kind, items in media.items()}
        stored = []
        expanded = []
        for turn in turns:
            expanded.extend(_render_turn(turn, self._expand(turn.content, next_item, stored), mode))
        extra = {"reasoning_mode": mode}
        if record.get("interruption") is not None:
            extra["interruption"] = record["interruption"]
        return Prepared(expanded, stored, eod_loss=False, extra=extra)

    def report(self, output_dir: Path, manifest: Manifest) -> str:
        """The samples per reasoning mode."""
        counts = reasoning_mode_counts(output_dir, manifest)
        return "reasoning_mode: " + ", ".join(f"{m} {counts[m]:,}" for m in REASONING_MODES)

    def _expand(self, content: list, next_item: dict, stored: list) -> list:
        """``content`` with each placeholder replaced by one per item its media loads as (a clip
        longer than the encoder's window gives several); the loaded items are appended to
        ``stored`` in order."""
        pieces = []
        for piece in content:
            if isinstance(piece, Placeholder):
                items = self._load(piece.kind, next(next_item[piece.kind]))
                stored.extend(items)
                pieces.extend(Placeholder(info.kind) for info, _ in items)
            else:
                pieces.append(piece)
        return pieces

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


@dataclass(frozen=True)
class _Turn:
    role: str
    content: list
    reasoning: str | None
    trains: bool


def _turns(conversations: list) -> list[_Turn]:
    turns = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or turn.get("from") not in ROLES:
            raise SkipSample("bad_field", f"turn {i} has no known 'from' ({sorted(ROLES)})")
        value, reasoning, trains = turn.get("value"), turn.get("reasoning"), turn.get("loss", True)
        if not isinstance(value, str):
            raise SkipSample("bad_field", f"turn {i} value is {type(value).__name__}")
        if not value.strip():
            raise SkipSample("empty_text", f"turn {i} is empty")
        if reasoning is not None and not isinstance(reasoning, str):
            raise SkipSample("bad_field", f"turn {i} reasoning is {type(reasoning).__name__}")
        if not isinstance(trains, bool):
            raise SkipSample("bad_field", f"turn {i} loss is {trains!r}, not true or false")
        role = ROLES[turn["from"]]
        turns.append(_Turn(role, split_placeholders(value, loss=False), reasoning,
                           trains and role == "assistant"))
    if not any(t.trains for t in turns):
        raise SkipSample("bad_field", "no assistant turn that trains")
    return turns


def _draws_long(turns: list[_Turn], share: float) -> bool:
    """Whether a record that leaves its mode open is long: every trained assistant turn has
    reasoning, and a hash of the turns falls below `share`."""
    if not all(t.reasoning and t.reasoning.strip() for t in turns if t.trains):
        return False
    text = json.dumps([(t.role, t.reasoning,
                        [p.text if isinstance(p, Text) else p.kind for p in t.content])
                       for t in turns], ensure_ascii=False)
    return zlib.crc32(text.encode()) / 2**32 < share


def _render_turn(turn: _Turn, content: list, mode: str) -> list:
    """`render_conversation` of one turn, with the reasoning mode's prompt (and, long, the
    reasoning) after an assistant header, and the targets the module doc describes."""
    header, *body, end = render_conversation([(turn.role, content)])
    if turn.role != "assistant":
        return [header, *body, end]
    if not turn.trains:
        body = [Text(p.text, False) if isinstance(p, Text) else p for p in body]
        end = Text(end.text, False)
    elif len(body) == 1 and isinstance(body[0], Text) and body[0].text == STOP_MARKER:
        end = Text(end.text, False)
    if mode == "short":
        return [header, Text(THINK_EMPTY, False), *body, end]
    if not turn.reasoning or not turn.reasoning.strip():
        if turn.trains:
            raise SkipSample("bad_field", "reasoning_mode long but a trained assistant turn has "
                                          "no 'reasoning'")
        return [header, Text(THINK_EMPTY, False), *body, end]
    return [header, Text(THINK_OPEN, False), Text(turn.reasoning + THINK_CLOSE, turn.trains),
            *body, end]


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


def reasoning_mode_counts(folder: str | Path, manifest: Manifest) -> collections.Counter:
    """Samples per reasoning mode of a prepared conversations folder, from the tars' metadata
    members (the media are skipped, not read)."""
    counts = collections.Counter()
    for shard in manifest.shards:
        if not shard.samples:
            continue
        with tarfile.open(Path(folder) / f"{shard_name(shard.index)}.tar") as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    meta = json.load(tar.extractfile(member))
                    counts[meta.get("extra", {}).get("reasoning_mode", "short")] += 1
    return counts


if __name__ == "__main__":
    main()
