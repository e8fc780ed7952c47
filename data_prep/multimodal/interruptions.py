"""Interruption samples (seed 7.2.5) from ordinary conversation records, jsonl -> jsonl.

    python -m omni_data_prep.multimodal.interruptions --input 'sft/*.jsonl' \\
        --output sft/with_interruptions.jsonl --rate 0.05 --seed 0

Every input record is written as it is; after every 1/rate-th of them (in input order, so
exactly floor(n x rate) of n records) its interruption record follows: the conversation up to an
assistant turn, that turn cut short at a word boundary (the model was speaking), a user turn
that is one interrupt command of `COMMANDS`, and an assistant turn that is only
`conversations.STOP_MARKER`. The earlier assistant turns and the cut one are context
(`"loss": false`), so the stop marker is the sample's only target. Media whose placeholders were
cut away are dropped from the record (the k-th placeholder of a kind stays the kind's k-th
item). The record keeps the other fields, gets `id` `<id>#interrupt` and
`interruption: {"command", "turn"}` (the cut assistant turn's index), and is short reasoning
mode; the cut turn, the cut and the command are drawn with `seed`. A chosen record that is not
a JSON object with a `conversations` list holding an assistant turn of two words (or, without
spaces, two characters) or more is only passed through, and counted as unusable. Prepare the
output with `python -m omni_data_prep.multimodal conversations`.
"""
from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Sequence
from pathlib import Path

from megatron_omni.contract.media import PLACEHOLDERS
from megatron_omni.data.sample_format import ROLES, placeholder_kinds, split_placeholders
from omni_data_prep import cli_io
from omni_data_prep.multimodal.conversations import STOP_MARKER
from omni_data_prep.text_records import expand_inputs

COMMANDS = ("停", "打断一下", "别说了", "换个话题", "等一下",
            "stop", "interrupt", "wait", "change topic", "hold on")
"""The interrupt commands (seed 7.2.2 / 7.2.5), Chinese and English."""
_MEDIA_KEYS = {"image": "images", "video": "videos"}
_PLACEHOLDER_RE = re.compile("|".join(map(re.escape, PLACEHOLDERS.values())))


def interrupted(record: dict, rng: random.Random) -> dict | None:
    """The interruption record of `record` (module doc), or None when it has no assistant turn
    with text to cut."""
    turns = record.get("conversations")
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        return None
    spoken = [i for i, t in enumerate(turns) if ROLES.get(t.get("from")) == "assistant"
              and isinstance(t.get("value"), str) and _cut(t["value"], 0.0)]
    if not spoken:
        return None
    at = rng.choice(spoken)
    command = rng.choice(COMMANDS)
    kept = [dict(t, loss=False) if ROLES.get(t.get("from")) == "assistant" else dict(t)
            for t in turns[:at]]
    kept.append({"from": turns[at]["from"], "value": _cut(turns[at]["value"], rng.random()),
                 "loss": False})
    kept += [{"from": "human", "value": command}, {"from": "gpt", "value": STOP_MARKER}]
    for t in kept:
        t.pop("reasoning", None)
    out = {k: v for k, v in record.items() if k not in ("images", "videos", "audio", "audio_segments")}
    out.update(conversations=kept, reasoning_mode="short",
               interruption={"command": command, "turn": at})
    if "id" in record:
        out["id"] = f"{record['id']}#interrupt"
    found = placeholder_kinds([p for t in kept for p in split_placeholders(str(t["value"]), False)])
    for kind, key in _MEDIA_KEYS.items():
        if found.count(kind):
            out[key] = list(record.get(key) or [])[:found.count(kind)]
    if found.count("audio"):
        if "audio" in record:
            out["audio"] = record["audio"]
        else:
            out["audio_segments"] = list(record.get("audio_segments") or [])[:found.count("audio")]
    return out


def _cut(text: str, fraction: float) -> str:
    """`text` cut about `fraction` of the way in, at a word boundary (at a character for text
    without spaces, e.g. Chinese; never inside a placeholder): at least its first word or
    character, never all of it ('' when it cannot be cut)."""
    text = text.strip()
    bounds = [m.start() for m in re.finditer(r"\s+", text)]
    if not bounds:
        inside = {i for m in _PLACEHOLDER_RE.finditer(text) for i in range(m.start() + 1, m.end())}
        bounds = [i for i in range(1, len(text)) if i not in inside]
    if not bounds:
        return ""
    return text[:bounds[min(int(fraction * len(bounds)), len(bounds) - 1)]]


def generate(inputs: Sequence[str], output: str | Path, rate: float, seed: int = 0) -> dict:
    """Write the records of `inputs` (jsonl glob patterns), every 1/rate-th followed by its
    interruption record, to `output` (published whole when complete). Returns the
    counts: {"records", "interruptions", "unusable": chosen records without an assistant turn
    to cut}."""
    if not 0 <= rate <= 1:
        raise ValueError(f"rate={rate} must be in [0, 1], e.g. 0.05")
    rng = random.Random(seed)
    counts = {"records": 0, "interruptions": 0, "unusable": 0}
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    with cli_io.atomic_file(Path(output)) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for path in expand_inputs(inputs, (".jsonl", ".json")):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        continue
                    k = counts["records"]
                    counts["records"] += 1
                    out.write(line if line.endswith("\n") else line + "\n")
                    if int((k + 1) * rate) == int(k * rate):  # every 1/rate-th record
                        continue
                    made = interrupted(_record(line), rng)
                    if made is None:
                        counts["unusable"] += 1
                    else:
                        counts["interruptions"] += 1
                        out.write(json.dumps(made, ensure_ascii=False) + "\n")
    return counts


def _record(line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m omni_data_prep.multimodal.interruptions",
                                     description=__doc__.split("\n\n")[0])
    cli_io.add_input(parser, "conversation jsonl files")
    parser.add_argument("--output", required=True, help="the jsonl file to write")
    parser.add_argument("--rate", type=float, default=0.05,
                        help="share of records that also yield an interruption (default: 0.05)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the cut turn, the cut and the command (default: 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """The command line; prints the counts."""
    args = build_parser().parse_args(argv)
    with cli_io.user_errors():
        counts = generate(args.input, args.output, args.rate, args.seed)
    print(", ".join(f"{k} {v:,}" for k, v in counts.items()) + f"; wrote {args.output}")
    return counts


if __name__ == "__main__":
    main()
