"""Rewards of GRPO rollouts (phase 6, docs/grpo.md): pluggable functions of one response, summed
with the weights of rl.rewards (config/schema.py RlConfig).

A response is the generated continuation of a prompt that ends with the assistant header and the
mode's marker (rl/prompts.py): in short mode `<think>\\n\\n</think>\\n\\n` is in the prompt and
the response is the answer; in long mode the prompt ends with `<think>\\n` and the response is
reasoning + `\\n</think>\\n\\n` + answer. Either ends with the end-of-turn marker `<|im_end|>`
when generation stopped there.

Each function maps a `Response` to a float:
- accuracy: 1 when the answer matches the sample's ground truth exactly (whitespace and case
  folded, a trailing period dropped) or as a number (both parse as decimals, commas removed, and
  are equal), else 0;
- format: 1 when the response has the mode's structure and stopped at the end-of-turn marker:
  long, one closed reasoning block (non-empty reasoning, `</think>`, a non-empty answer) and no
  other `<think>`; short, no reasoning tags and a non-empty answer; else 0;
- repetition: minus the share of the response's token n-grams (n = rl.repetition_ngram) that
  repeat an earlier n-gram of it (0 for no repeats, towards −1 for a loop).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
END_OF_TURN = "<|im_end|>"


@dataclass
class Response:
    """One rollout as the rewards see it."""

    text: str
    """The decoded response (the end-of-turn marker included when generated)."""
    ids: list[int]
    """Its token ids."""
    answer: str
    """The prompt's ground-truth answer."""
    mode: str
    """short or long."""
    stopped: bool
    """True when generation ended at the end-of-turn marker (not at max_new_tokens)."""
    ngram: int = 4
    """n of the repetition penalty."""


def split_response(text: str, mode: str) -> tuple[str | None, str | None]:
    """(reasoning, answer) of a response in its mode, each stripped; None where the structure
    is missing (long without `</think>`: no answer)."""
    body = text.split(END_OF_TURN, 1)[0]
    if mode == "short":
        return None, body.strip()
    if THINK_CLOSE not in body:
        return body.strip(), None
    reasoning, answer = body.split(THINK_CLOSE, 1)
    return reasoning.strip(), answer.strip()


def _normalise(text: str) -> str:
    return " ".join(text.split()).lower().removesuffix(".").strip()


def _number(text: str) -> float | None:
    try:
        value = float(_normalise(text).replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def accuracy(r: Response) -> float:
    _, answer = split_response(r.text, r.mode)
    if not answer:
        return 0.0
    if _normalise(answer) == _normalise(r.answer):
        return 1.0
    got, want = _number(answer), _number(r.answer)
    return float(got is not None and want is not None and got == want)


def format_reward(r: Response) -> float:
    body = r.text.split(END_OF_TURN, 1)[0]
    if not r.stopped:
        return 0.0
    reasoning, answer = split_response(r.text, r.mode)
    if r.mode == "short":
        return float(bool(answer) and THINK_OPEN not in body and THINK_CLOSE not in body)
    return float(bool(reasoning) and bool(answer) and body.count(THINK_CLOSE) == 1
                 and THINK_OPEN not in body)


def repetition(r: Response) -> float:
    n = r.ngram
    grams = [tuple(r.ids[i:i + n]) for i in range(len(r.ids) - n + 1)]
    if not grams:
        return 0.0
    return -(len(grams) - len(set(grams))) / len(grams)


REWARDS: dict[str, Callable[[Response], float]] = {
    "accuracy": accuracy, "format": format_reward, "repetition": repetition}
"""The reward functions by the name rl.rewards weights them under."""


def score(r: Response, weights: dict[str, float]) -> dict[str, float]:
    """{name: value} of each weighted reward function and "total": the weighted sum."""
    terms = {name: REWARDS[name](r) for name in weights}
    terms["total"] = sum(weights[name] * value for name, value in terms.items())
    return terms
