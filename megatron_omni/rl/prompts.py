"""The prompts of GRPO rollouts (phase 6, docs/grpo.md): records from a jsonl file
(rl.prompts) or the synthetic two-digit-addition task, each rendered as a conversation that ends
with the assistant header and the reasoning mode's marker (as SFT renders it: docs/sft.md).

A record is {"prompt": ..., "answer": ..., "reasoning_mode"?: "short" | "long"}: prompt a string
(the user turn) or a list of turns {"from": "system" | "human" | "gpt", "value"} ending with a
user turn; answer the ground truth the accuracy reward compares against (rl/rewards.py). Prompts
are text: a turn holding a media placeholder is refused (the rollouts take no media yet).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from megatron_omni.config.load import ConfigError
from megatron_omni.data.sample_format import TURN_START, Text, render_conversation

MODE_MARKERS = {"short": "<think>\n\n</think>\n\n", "long": "<think>\n"}
"""What follows the assistant header in each reasoning mode (the SFT rendering, docs/sft.md)."""
ROLES = {"system": "system", "human": "user", "gpt": "assistant"}
MEDIA = ("<image>", "<audio>", "<video>")


@dataclass
class PromptRecord:
    turns: list[tuple[str, str]]
    """(role, text) per turn: system, user, assistant; the last is a user turn."""
    answer: str
    """Ground truth of the accuracy reward."""
    mode: str | None = None
    """short, long, or None: drawn per rollout with rl.long_ratio."""


def parse_record(obj, where: str) -> PromptRecord:
    """A PromptRecord of one decoded jsonl record; ConfigError naming `where` and the key."""
    if not isinstance(obj, dict) or "prompt" not in obj or "answer" not in obj:
        raise ConfigError(f"{where}: a prompt record needs keys prompt and answer")
    prompt, mode = obj["prompt"], obj.get("reasoning_mode")
    if isinstance(prompt, str):
        turns = [("user", prompt)]
    elif isinstance(prompt, list) and prompt and all(
            isinstance(t, dict) and t.get("from") in ROLES and isinstance(t.get("value"), str) for t in prompt):
        turns = [(ROLES[t["from"]], t["value"]) for t in prompt]
    else:
        raise ConfigError(f"{where}: prompt must be a string or a list of turns "
                          "{from: system|human|gpt, value: text}")
    if turns[-1][0] != "user":
        raise ConfigError(f"{where}: the prompt's last turn must be from human")
    if any(m in text for _, text in turns for m in MEDIA):
        raise ConfigError(f"{where}: the prompt holds a media placeholder; GRPO rollouts take text "
                          "prompts only")
    if mode not in (None, "short", "long"):
        raise ConfigError(f"{where}: reasoning_mode={mode!r}; use short or long")
    return PromptRecord(turns, str(obj["answer"]), mode)


def load_prompts(path: str | Path) -> list[PromptRecord]:
    """Every record of a jsonl file (blank lines skipped)."""
    records = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"rl.prompts={path}:{number}: not JSON ({err.msg})") from None
            records.append(parse_record(obj, f"rl.prompts={path}:{number}"))
    if not records:
        raise ConfigError(f"rl.prompts={path} holds no records")
    return records


def addition_records(count: int, seed: int) -> list[PromptRecord]:
    """The synthetic verifiable task: `count` prompts "a+b=" of two-digit a, b (seeded), the
    answer their sum."""
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        records.append(PromptRecord([("user", f"{a}+{b}=")], str(a + b)))
    return records


def addition_response(record: PromptRecord, mode: str) -> str:
    """A correct, well-formed response to an addition record (the SFT warm start's target): the
    answer, in long mode after a reasoning block that spells the sum out."""
    if mode == "short":
        return record.answer
    question = record.turns[-1][1].removesuffix("=")
    return f"{question}={record.answer}\n</think>\n\n{record.answer}"


def pick_mode(record: PromptRecord, index: int, seed: int, long_ratio: float) -> str:
    """The record's reasoning_mode, else long with probability long_ratio, drawn from (seed,
    index) so every rank of a model-parallel group picks the same."""
    if record.mode is not None:
        return record.mode
    return "long" if random.Random(f"{seed}/{index}").random() < long_ratio else "short"


def prompt_ids(record: PromptRecord, mode: str, tokenizer) -> list[int]:
    """Token ids of the record's conversation, then `<|im_start|>assistant\\n` and the mode's
    marker; each piece encoded on its own, as the SFT data is."""
    pieces = render_conversation([(role, [Text(text, False)]) for role, text in record.turns])
    pieces += [Text(f"{TURN_START}assistant\n", False), Text(MODE_MARKERS[mode], False)]
    return [i for p in pieces for i in tokenizer.encode(p.text)]
