"""Preference pairs (DPO, phase 6) -> multimodal shards (sample_format), one sample per pair.

    python -m omni_data_prep.multimodal preferences --input 'prefs/*.jsonl' \\
        --tokenizer tok.model --output-dir data/prefs --workers 8

Input: jsonl records
    {"id", "images": [path, ...], "audio": path, "audio_segments": [{"path", "start", "end"}],
     "videos": [path, ...],
     "prompt": [{"from": "system" | "human" | "gpt" | "tool", "value": "<image>..."}, ...],
     "chosen": "text" | [turns], "rejected": "text" | [turns],
     "trajectory_id": optional str}
The media belong to the prompt (the k-th `<image>` of the prompt is images[k], as in
conversations.py); the responses hold text only. A response given as a string is one assistant
turn; as a list, a multi-turn continuation: assistant turns (from "gpt", optionally with
"tool_calls": [{"name", "arguments"}], rendered as `<tool_call>{json}</tool_call>` lines after
the content), tool results (from "tool") and user turns. A trajectory-level pair (OmniDPO) is
two such tool-use continuations of one prompt.

One stored sample per pair: its tokens are prompt + chosen + rejected + `<eod>`, its media the
prompt's (stored and decoded once), and `extra` holds
    token_offsets   [start of the chosen response, start of the rejected response]
    trajectory_id   the record's trajectory id (or its id), tool_calls {"chosen": [...],
                    "rejected": [...]}: the tool names called, in order
The loss mask is 1 only on the assistant turns of the responses (their content, tool calls and
turn-end markers): the prompt, tool results and user turns are context. The loader
(megatron_omni/data/multimodal/pairs.py) turns a sample into its two rows, prompt + chosen and
prompt + rejected, which share the prompt's decoded media; docs/dpo.md.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from megatron_omni.data.bad_samples import SkipSample
from megatron_omni.data.sample_format import (PLACEHOLDERS, ROLES, Manifest, Text,
                                              placeholder_kinds, render_conversation,
                                              split_placeholders)
from omni_data_prep.multimodal import cli
from omni_data_prep.multimodal.conversations import ConversationSource, _audio_segments, _list
from omni_data_prep.multimodal.runner import Prepared, RecordContext, field_of

TURN_ROLES = {**ROLES, "tool": "tool"}
"""Turn senders of a preference record and the role each renders as."""


@dataclass
class PreferenceSource(ConversationSource):
    """Options: those of conversations (the media of the prompt)."""

    kind = "preference"
    description = ("Preference pairs (prompt with media + chosen + rejected, single or multi-turn "
                   "tool-use trajectories) -> one multimodal sample per pair for DPO.")

    def prepare(self, record: dict, ctx: RecordContext) -> Prepared:
        prompt = _turns(field_of(record, "prompt", list), "prompt")
        chosen, chosen_calls = _response(record, "chosen")
        rejected, rejected_calls = _response(record, "rejected")
        media = {"image": [ctx.resolve(p, "images[]") for p in _list(record, "images")],
                 "audio": _audio_segments(record, ctx),
                 "video": [ctx.resolve(p, "videos[]") for p in _list(record, "videos")]}
        found = placeholder_kinds([p for _, content in prompt for p in content])
        for kind in PLACEHOLDERS:
            if found.count(kind) != len(media[kind]):
                raise SkipSample("placeholder_mismatch", f"{found.count(kind)} {PLACEHOLDERS[kind]} "
                                 f"in the prompt but {len(media[kind])} {kind} items")
        next_item = {kind: iter(items) for kind, items in media.items()}
        stored, expanded = [], []
        for role, content in prompt:
            expanded.append((role, self._expand(content, next_item, stored)))
        context = [Text(p.text, False) if isinstance(p, Text) else p
                   for p in render_conversation(expanded)]
        chosen_pieces, rejected_pieces = render_conversation(chosen), render_conversation(rejected)
        pieces = context + chosen_pieces + rejected_pieces
        trajectory = record.get("trajectory_id", record.get("id"))
        extra = {"trajectory_id": trajectory if isinstance(trajectory, (str, int)) else None,
                 "tool_calls": {"chosen": chosen_calls, "rejected": rejected_calls}}
        return Prepared(pieces, stored, eod_loss=False, extra=extra,
                        marks=(len(context), len(context) + len(chosen_pieces)))


def _turns(turns: list, key: str) -> list[tuple[str, list]]:
    """(role, pieces) of each turn of `key`; placeholders only in the prompt."""
    out = []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict) or turn.get("from") not in TURN_ROLES:
            raise SkipSample("bad_field", f"{where} has no known 'from' ({sorted(TURN_ROLES)})")
        value = turn.get("value", "")
        if not isinstance(value, str):
            raise SkipSample("bad_field", f"{where} value is {type(value).__name__}")
        calls = turn.get("tool_calls") or []
        if not isinstance(calls, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str)
                                                  for c in calls):
            raise SkipSample("bad_field", f"{where} tool_calls must be a list of {{name, arguments}}")
        text = value + "".join(f"\n<tool_call>{json.dumps(c, sort_keys=True)}</tool_call>" for c in calls)
        if not text.strip():
            raise SkipSample("empty_text", f"{where} is empty")
        pieces = split_placeholders(text, loss=False)
        if key != "prompt" and placeholder_kinds(pieces):
            raise SkipSample("bad_field", f"{where} holds a media placeholder; media belong to the prompt")
        out.append((TURN_ROLES[turn["from"]], pieces, [c["name"] for c in calls]))
    if not out:
        raise SkipSample("bad_field", f"{key} has no turns")
    return [(role, pieces) for role, pieces, _ in out] if key == "prompt" else out


def _response(record: dict, key: str) -> tuple[list[tuple[str, list]], list[str]]:
    """(turns, tool names called in order) of response `key`: a string is one assistant turn."""
    value = record.get(key)
    if isinstance(value, str):
        value = [{"from": "gpt", "value": value}]
    if not isinstance(value, list):
        raise SkipSample("missing_key" if value is None else "bad_field",
                         f"{key} must be a string or a list of turns")
    turns = _turns(value, key)
    if not any(role == "assistant" for role, _, _ in turns):
        raise SkipSample("bad_field", f"{key} has no assistant turn")
    return [(role, pieces) for role, pieces, _ in turns], [n for _, _, names in turns for n in names]


def main(argv: Sequence[str] | None = None) -> Manifest:
    """The `preferences` command (cli); returns the Manifest."""
    return cli.main("preferences", argv)


if __name__ == "__main__":
    main()
