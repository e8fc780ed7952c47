"""Write a small, learnable synthetic text corpus as jsonl (`{"text": ...}` per line).

    python -m omni_data_prep.make_demo_corpus --out demo/corpus.jsonl --num-docs 2000 --seed 0

Documents are made of templated sentences with structure a tiny model picks up within a few
dozen steps: counting runs, sums and products with their true results, repeated syllable
patterns, alphabet runs and fixed object-colour facts. The same seed gives the same file.
"""
from __future__ import annotations

import argparse
import json
import random
import string
from collections.abc import Sequence
from pathlib import Path

COLOURS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "sun": "yellow",
           "blood": "red", "sea": "blue", "leaf": "green", "night": "dark", "milk": "white"}
SYLLABLES = ("la", "di", "da", "bo", "ki", "mu", "ze", "ta")


def _counting(rng: random.Random) -> str:
    start, length, step = rng.randint(0, 50), rng.randint(4, 10), rng.choice((1, 1, 2, -1))
    numbers = " ".join(str(start + step * i) for i in range(length))
    return f"count: {numbers}."


def _arithmetic(rng: random.Random) -> str:
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    if rng.random() < 0.5:
        return f"{a} + {b} = {a + b}."
    a, b = a % 10, b % 10
    return f"{a} x {b} = {a * b}."


def _pattern(rng: random.Random) -> str:
    unit = " ".join(rng.sample(SYLLABLES, rng.randint(2, 3)))
    return " ".join([unit] * rng.randint(3, 5)) + "."


def _alphabet(rng: random.Random) -> str:
    start = rng.randint(0, 20)
    return "letters: " + " ".join(string.ascii_lowercase[start:start + rng.randint(4, 6)]) + "."


def _fact(rng: random.Random) -> str:
    thing = rng.choice(sorted(COLOURS))
    return f"the {thing} is {COLOURS[thing]}."


TEMPLATES = (_counting, _arithmetic, _pattern, _alphabet, _fact)


def demo_documents(num_docs: int, seed: int = 0) -> list[str]:
    """`num_docs` documents of 4-12 templated sentences each, determined by `seed`."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(TEMPLATES)(rng) for _ in range(rng.randint(4, 12)))
            for _ in range(num_docs)]


def make_demo_corpus(out: str | Path, num_docs: int = 2000, seed: int = 0) -> Path:
    """Write `demo_documents(num_docs, seed)` to `out` as jsonl; returns the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for text in demo_documents(num_docs, seed):
            f.write(json.dumps({"text": text}) + "\n")
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of `main`."""
    parser = argparse.ArgumentParser(
        prog="python -m omni_data_prep.make_demo_corpus",
        description="Write a small learnable synthetic text corpus as jsonl ({'text': ...}).")
    parser.add_argument("--out", required=True, help="output .jsonl path")
    parser.add_argument("--num-docs", type=int, default=2000,
                        help="number of documents (default: 2000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the CLI; returns the path written."""
    args = build_parser().parse_args(argv)
    out = make_demo_corpus(args.out, num_docs=args.num_docs, seed=args.seed)
    print(f"wrote {args.num_docs} documents to {out}")
    return out


if __name__ == "__main__":
    main()
