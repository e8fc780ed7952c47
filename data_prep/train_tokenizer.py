"""Train a SentencePiece tokenizer with the omni special tokens reserved.

    python -m omni_data_prep.train_tokenizer --input 'corpus/*.jsonl' --model-prefix tok/omni \\
        --vocab-size 32000

Writes `<prefix>.model` and `<prefix>.vocab`. Ids 0-5 are fixed: `<pad>` 0 and `<eod>` 2 are
control symbols (never produced from text; `<eod>` is SentencePiece's eos), `<unk>` 1, and
`<image>` 3, `<video>` 4, `<audio>` 5 are user-defined symbols (the text "<image>" always encodes
to that one id). There is no BOS. Text is kept as is: identity normalization, whitespace kept
and no dummy "▁" prefix, so text encoded in pieces around media tokens gives the same ids as
the joined text. Digits are split, and characters outside the vocabulary fall back to byte
pieces, so nothing encodes to `<unk>`. The result depends only on the inputs and the arguments:
sampling is seeded, and the thread count is an argument because unigram training sums per
thread.
"""
from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece

from megatron_omni.data.tokenizer import EOD_TOKEN, PAD_TOKEN
from omni_data_prep import cli_io
from omni_data_prep.text_records import (JSONL_SUFFIXES, PARQUET_SUFFIXES, expand_inputs,
                                         iter_texts)

MEDIA_TOKENS = ("<image>", "<video>", "<audio>")
TEXT_SUFFIXES = (".txt",)


def train_tokenizer(inputs: Sequence[str], model_prefix: str, vocab_size: int = 32000,
                    model_type: str = "bpe", json_key: str = "text",
                    max_sentences: int = 2_000_000, seed: int = 0, threads: int = 8) -> Path:
    """Train on `inputs` (glob patterns of .txt, .jsonl/.json or .parquet files) and write
    `<model_prefix>.model` and `.vocab`; returns the .model path.

    Every non-blank line of a .txt file (undecodable bytes become U+FFFD), and of each good
    record's `json_key` text, is one training sentence; at most `max_sentences` of them are
    sampled (seeded by `seed`). `model_type` is "bpe" or "unigram". The vocabulary must hold
    the 6 reserved tokens, the 256 byte pieces and the corpus characters: a `vocab_size` too
    small (or too large for the corpus) raises ValueError with SentencePiece's message giving
    the bound.
    """
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
    paths = expand_inputs(inputs, TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES)
    Path(model_prefix).parent.mkdir(parents=True, exist_ok=True)
    sentencepiece.set_random_generator_seed(seed)
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=_sentences(paths, json_key),
            model_prefix=model_prefix, model_type=model_type, vocab_size=vocab_size,
            pad_id=0, pad_piece=PAD_TOKEN, unk_id=1, unk_piece="<unk>", eos_id=2,
            eos_piece=EOD_TOKEN, bos_id=-1, user_defined_symbols=list(MEDIA_TOKENS),
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=False, split_digits=True,
            byte_fallback=True, max_sentence_length=16384,
            input_sentence_size=max_sentences, shuffle_input_sentence=True,
            num_threads=threads, minloglevel=1)
    except RuntimeError as err:  # how SentencePiece reports a bad setting, e.g. the vocab size
        raise ValueError(f"SentencePiece: {err}") from None
    return Path(f"{model_prefix}.model")


def _sentences(paths: Iterable[Path], json_key: str) -> Iterator[str]:
    for path in paths:
        if path.suffix in TEXT_SUFFIXES:
            with open(path, encoding="utf-8", errors="replace") as f:
                yield from (line.rstrip("\n") for line in f if line.strip())
        else:
            for text in iter_texts([path], json_key):
                yield from (line for line in text.splitlines() if line.strip())


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of `main`."""
    parser = argparse.ArgumentParser(
        prog="python -m omni_data_prep.train_tokenizer",
        description="Train a SentencePiece tokenizer with <pad>, <eod>, <image>, <video> and "
                    "<audio> reserved; writes <prefix>.model and <prefix>.vocab.")
    cli_io.add_input(parser, "text (.txt, one sentence per line), jsonl (.jsonl/.json) or "
                             "parquet (.parquet) files")
    cli_io.add_json_key(parser)
    parser.add_argument("--model-prefix", required=True,
                        help="writes <prefix>.model and <prefix>.vocab")
    parser.add_argument("--vocab-size", type=int, default=32000,
                        help="number of pieces, reserved and byte pieces included "
                             "(default: 32000)")
    parser.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe",
                        help="SentencePiece algorithm (default: bpe)")
    parser.add_argument("--max-sentences", type=int, default=2_000_000,
                        help="sample at most this many sentences (0: all; default: 2000000)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    parser.add_argument("--threads", type=int, default=8,
                        help="training threads; part of what the result depends on "
                             "(default: 8)")
    return parser


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the CLI; returns the path of the trained .model."""
    args = build_parser().parse_args(argv)
    with cli_io.user_errors():
        model = train_tokenizer(args.input, args.model_prefix, vocab_size=args.vocab_size,
                                model_type=args.model_type, json_key=args.json_key,
                                max_sentences=args.max_sentences, seed=args.seed,
                                threads=args.threads)
    print(f"wrote {model} and {model.with_suffix('.vocab')}")
    return model


if __name__ == "__main__":
    main()
