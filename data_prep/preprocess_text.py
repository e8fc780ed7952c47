"""Tokenize jsonl/parquet text into a Megatron indexed dataset: `<prefix>.bin` + `<prefix>.idx`.

    python -m omni_data_prep.preprocess_text --input 'corpus/*.jsonl' --tokenizer tok.model \\
        --output-prefix data/text --workers 8

Every good record becomes one document (its tokens, then `<eod>`). Bad records are skipped and
counted per reason (`--strict` stops at the first one instead). The output appears atomically:
both files are written under temporary names beside the prefix and moved into place at the end,
`.idx` last, so an interrupted or failed run never leaves a loadable index behind.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import multiprocessing
import os
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder
from tqdm import tqdm

from megatron_omni.data.tokenizer import load_tokenizer
from omni_data_prep.text_records import (SKIP_REASONS, BadRecordError, Chunk, ChunkEncoder,
                                         EncodedChunk, encode_in_worker, expand_inputs,
                                         init_worker, read_chunks)


def preprocess(inputs: Sequence[str], tokenizer: str | Path, output_prefix: str | Path,
               json_key: str = "text", workers: int = 1, append_eod: bool = True,
               strict: bool = False, chunk_size: int = 256, progress: bool = True) -> dict:
    """Tokenize the records of `inputs` (glob patterns of jsonl/parquet files) into
    `<output_prefix>.bin/.idx`, one document per record, in input order.

    Args:
        inputs: glob patterns; each must match at least one `.jsonl`, `.json` or `.parquet` file.
        tokenizer: a SentencePiece `.model` or a Hugging Face `tokenizer.json`.
        output_prefix: output path without `.bin`/`.idx`; its folder is created.
        json_key: the record field (parquet: column) holding the text.
        workers: tokenizer processes; 1 tokenizes in this process.
        append_eod: end every document with the tokenizer's `<eod>` id.
        strict: raise BadRecordError (naming file and line) at the first bad record instead of
            skipping it; nothing is written then.
        chunk_size: records per task sent to a worker.
        progress: show a tqdm bar (on a terminal) with documents and tokens/s.

    Returns a summary: docs, tokens, seconds, tokens_per_s, skipped (count per reason in
    SKIP_REASONS), dtype, bin and idx paths.
    """
    if workers < 1 or chunk_size < 1:
        raise ValueError(f"workers and chunk_size must be >= 1, got {workers} and {chunk_size}")
    paths = expand_inputs(inputs)
    dtype = DType.optimal_dtype(load_tokenizer(tokenizer).vocab_size)
    prefix = Path(output_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)

    skipped = dict.fromkeys(SKIP_REASONS, 0)
    docs = tokens = 0
    start = time.perf_counter()
    chunks = read_chunks(paths, json_key, chunk_size)
    with (_atomic_output(prefix) as (bin_tmp, idx_tmp),
          _encode(chunks, workers, (str(tokenizer), json_key, append_eod, dtype)) as encoded,
          tqdm(unit="doc", disable=None if progress else True) as bar):
        builder = IndexedDatasetBuilder(bin_tmp, dtype=dtype)
        for chunk in encoded:
            if strict and chunk.bad:
                line, reason, detail = chunk.bad[0]
                raise BadRecordError(f"{chunk.path}:{line}: {reason}: {detail}")
            for _, reason, _ in chunk.bad:
                skipped[reason] += 1
            _add_documents(builder, chunk)
            docs += len(chunk.lengths)
            tokens += chunk.tokens.size
            bar.update(len(chunk.lengths))
            bar.set_postfix_str(f"{tokens / (time.perf_counter() - start):,.0f} tokens/s",
                                refresh=False)
        builder.finalize(idx_tmp)
    seconds = time.perf_counter() - start
    return {"docs": docs, "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds if seconds > 0 else 0.0, "skipped": skipped,
            "dtype": np.dtype(dtype).name, "bin": f"{prefix}.bin", "idx": f"{prefix}.idx"}


def _add_documents(builder: IndexedDatasetBuilder, chunk: EncodedChunk) -> None:
    offset = 0
    for length in chunk.lengths:
        builder.add_document(chunk.tokens[offset:offset + length], [length])
        offset += length


@contextlib.contextmanager
def _atomic_output(prefix: Path) -> Iterator[tuple[str, str]]:
    """Yield temporary .bin/.idx paths beside `prefix`. On success, move them to `<prefix>.bin`
    and then `<prefix>.idx`, removing an old `<prefix>.idx` first so that no index ever points
    into the wrong .bin; on failure, delete them and leave `<prefix>.*` as they were."""
    tmp = f"{prefix}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    bin_tmp, idx_tmp = f"{tmp}.bin.part", f"{tmp}.idx.part"
    try:
        yield bin_tmp, idx_tmp
    except BaseException:
        for path in (bin_tmp, idx_tmp):
            Path(path).unlink(missing_ok=True)
        raise
    Path(f"{prefix}.idx").unlink(missing_ok=True)
    os.replace(bin_tmp, f"{prefix}.bin")
    os.replace(idx_tmp, f"{prefix}.idx")


@contextlib.contextmanager
def _encode(chunks: Iterable[Chunk], workers: int, encoder_args: tuple
            ) -> Iterator[Iterator[EncodedChunk]]:
    """Yield the encoded chunks in input order, from this process or a pool of `workers`."""
    if workers == 1:
        yield map(ChunkEncoder(*encoder_args), chunks)
        return
    with multiprocessing.Pool(workers, initializer=init_worker, initargs=encoder_args) as pool:
        yield _bounded_ordered_map(pool, chunks, window=4 * workers)


def _bounded_ordered_map(pool, chunks: Iterable[Chunk], window: int) -> Iterator[EncodedChunk]:
    # Pool.imap reads its whole input ahead of the workers (a large corpus would pile up in
    # memory); this keeps at most `window` chunks in flight and yields results in order.
    pending = collections.deque()
    for chunk in chunks:
        pending.append(pool.apply_async(encode_in_worker, (chunk,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def format_summary(summary: dict) -> str:
    """Two lines for a `preprocess` summary: totals and the skipped records per reason."""
    skipped = ", ".join(f"{reason} {n}" for reason, n in summary["skipped"].items())
    return (f"docs {summary['docs']:,}, tokens {summary['tokens']:,}, "
            f"seconds {summary['seconds']:.2f}, tokens/s {summary['tokens_per_s']:,.0f}\n"
            f"skipped: {skipped}")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of `main`."""
    parser = argparse.ArgumentParser(
        prog="python -m omni_data_prep.preprocess_text",
        description="Tokenize jsonl/parquet text into a Megatron indexed dataset "
                    "(<prefix>.bin + <prefix>.idx), one document per record.")
    parser.add_argument("--input", nargs="+", required=True, metavar="GLOB",
                        help="jsonl (.jsonl/.json) or parquet (.parquet) files or glob patterns "
                             "(quote them), processed in the order given")
    parser.add_argument("--json-key", default="text",
                        help="record field (parquet: column) holding the text (default: text)")
    parser.add_argument("--tokenizer", required=True,
                        help="SentencePiece .model or Hugging Face tokenizer.json")
    parser.add_argument("--output-prefix", required=True,
                        help="writes <prefix>.bin and <prefix>.idx")
    parser.add_argument("--workers", type=int, default=1,
                        help="tokenizer processes (default: 1, in this process)")
    parser.add_argument("--chunk-size", type=int, default=256,
                        help="records per task sent to a worker (default: 256)")
    parser.add_argument("--no-append-eod", dest="append_eod", action="store_false",
                        help="do not end each document with <eod>")
    parser.add_argument("--strict", action="store_true",
                        help="stop with an error naming file and line at the first bad record "
                             "instead of skipping it")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the CLI; returns the `preprocess` summary. Exits with status 1 on a bad record under
    --strict."""
    args = build_parser().parse_args(argv)
    try:
        summary = preprocess(args.input, args.tokenizer, args.output_prefix,
                             json_key=args.json_key, workers=args.workers,
                             append_eod=args.append_eod, strict=args.strict,
                             chunk_size=args.chunk_size)
    except BadRecordError as err:
        print(f"error: {err} (--strict)", file=sys.stderr)
        sys.exit(1)
    print(format_summary(summary))
    print(f"wrote {summary['bin']} and {summary['idx']} ({summary['dtype']})")
    return summary


if __name__ == "__main__":
    main()
