"""Tokenize jsonl/parquet text into a Megatron indexed dataset: `<prefix>.bin` + `<prefix>.idx`.

    python -m omni_data_prep.preprocess_text --input 'corpus/*.jsonl' --tokenizer tok.model \\
        --output-prefix data/text --workers 8

Every good record becomes one document (its tokens, then `<eod>`). Bad records are skipped and
counted per reason (`--strict` stops at the first one instead). The output appears atomically:
both files are written under temporary names beside the prefix and moved into place at the end,
`.idx` last, so an interrupted or failed run never leaves a loadable index behind, and a rerun
deletes the temporary files that a killed run of the same prefix left. An input without a usable
record is an error unless `--allow-empty`.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import glob
import json
import multiprocessing
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path


from megatron_omni.data.bad_samples import TEXT_SKIP_REASONS, SkipCounter, SkipSample
from megatron_omni.data.tokenizer import load_tokenizer
from omni_data_prep import cli_io
from omni_data_prep.indexed_writer import IndexedWriter, optimal_dtype
from omni_data_prep.progress import Progress
from omni_data_prep.text_records import (Chunk, ChunkEncoder, EncodedChunk, encode_in_worker,
                                         expand_inputs, init_worker, read_chunks)


def preprocess(inputs: Sequence[str], tokenizer: str | Path, output_prefix: str | Path,
               json_key: str = "text", workers: int = 1, append_eod: bool = True,
               strict: bool = False, chunk_size: int = 256, progress: bool = True,
               allow_empty: bool = False) -> dict:
    """Tokenize the records of `inputs` (glob patterns of jsonl/parquet files) into
    `<output_prefix>.bin/.idx`, one document per record, in input order.

    Args:
        inputs: glob patterns; each must match at least one `.jsonl`, `.json` or `.parquet` file.
        tokenizer: a SentencePiece `.model` or a Hugging Face `tokenizer.json`.
        output_prefix: output path without `.bin`/`.idx`; its folder is created.
        json_key: the record field (parquet: column) holding the text.
        workers: tokenizer processes; 1 tokenizes in this process.
        append_eod: end every document with the tokenizer's `<eod>` id.
        strict: raise BadSampleError (naming file and line) at the first bad record instead of
            skipping it; nothing is written then.
        chunk_size: records per task sent to a worker.
        progress: print progress lines on stderr (data_prep/progress.py).
        allow_empty: write an empty dataset when no record is usable, instead of raising
            ValueError (megatron's IndexedDataset cannot open an empty one).

    Returns a summary: docs, tokens, input_bytes, workers, seconds, docs_per_s, tokens_per_s,
    skipped (count per reason in TEXT_SKIP_REASONS), dtype, bin, idx and summary paths; it is
    also written (atomically) to `<output_prefix>.summary.json`.
    """
    if workers < 1 or chunk_size < 1:
        raise ValueError(f"workers and chunk_size must be >= 1, got {workers} and {chunk_size}")
    paths = expand_inputs(inputs)
    dtype = optimal_dtype(load_tokenizer(tokenizer).vocab_size)
    prefix = Path(output_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    cli_io.remove_stale_temps(prefix.parent, glob.escape(prefix.name))

    skips = SkipCounter(strict, log_first=0)  # the summary has the counts
    bar = Progress(sum(path.stat().st_size for path in paths), enabled=progress)
    chunks = read_chunks(paths, json_key, chunk_size)
    with (cli_io.atomic_output(prefix) as (bin_tmp, idx_tmp),
          _encode(chunks, workers, (str(tokenizer), json_key, append_eod, dtype)) as encoded,
          IndexedWriter(bin_tmp, dtype) as writer):
        for chunk in encoded:
            for line, reason, detail in chunk.bad:
                skips.skip(SkipSample(reason, detail), f"{chunk.path}:{line}")
            writer.add_documents(chunk.tokens, chunk.lengths)
            bar.update(chunk.nbytes, len(chunk.lengths), chunk.tokens.size,
                       skips.table(TEXT_SKIP_REASONS) if chunk.bad else bar.skipped)
        skipped = skips.table(TEXT_SKIP_REASONS)
        cli_io.check_not_empty(bar.items, bar.items + sum(skipped.values()), skipped,
                               "documents", allow_empty)
        writer.finalize(idx_tmp)
    bar.close()
    seconds = time.perf_counter() - bar.start
    summary = {"docs": bar.items, "tokens": bar.tokens, "input_bytes": bar.total,
               "workers": workers, "seconds": seconds, "docs_per_s": bar.items / seconds,
               "tokens_per_s": bar.tokens / seconds, "skipped": skipped,
               "dtype": dtype.name, "bin": f"{prefix}.bin", "idx": f"{prefix}.idx",
               "summary": f"{prefix}.summary.json"}
    with cli_io.atomic_file(Path(summary["summary"])) as tmp:
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


@contextlib.contextmanager
def _encode(chunks: Iterable[Chunk], workers: int, encoder_args: tuple
            ) -> Iterator[Iterator[EncodedChunk]]:
    """Yield the encoded chunks in input order, from this process or a pool of `workers`."""
    if workers == 1:
        with concurrent.futures.ThreadPoolExecutor(1) as reader:
            yield _parsed_ahead(ChunkEncoder(*encoder_args), iter(chunks), reader)
        return
    with multiprocessing.Pool(workers, initializer=init_worker, initargs=encoder_args) as pool:
        yield _bounded_ordered_map(pool, chunks, window=4 * workers)


def _parsed_ahead(encoder: ChunkEncoder, chunks: Iterator[Chunk],
                  reader: concurrent.futures.Executor) -> Iterator[EncodedChunk]:
    # The tokenizer's batched call releases the GIL, so the `reader` thread reads and parses
    # the next chunk while this one is tokenized.
    def parse_next():
        chunk = next(chunks, None)
        return None if chunk is None else (chunk, encoder.parse(chunk))

    ahead = reader.submit(parse_next)
    while (parsed := ahead.result()) is not None:
        ahead = reader.submit(parse_next)
        yield encoder.encode(parsed[0], *parsed[1])


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
    return (f"docs {summary['docs']:,}, tokens {summary['tokens']:,}, "
            f"seconds {summary['seconds']:.2f}, docs/s {summary['docs_per_s']:,.0f}, "
            f"tokens/s {summary['tokens_per_s']:,.0f}\n"
            f"{cli_io.skipped_line(summary['skipped'])}")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of `main`."""
    parser = argparse.ArgumentParser(
        prog="python -m omni_data_prep.preprocess_text",
        description="Tokenize jsonl/parquet text into a Megatron indexed dataset "
                    "(<prefix>.bin + <prefix>.idx), one document per record.")
    cli_io.add_input(parser, "jsonl (.jsonl/.json) or parquet (.parquet) files")
    cli_io.add_json_key(parser)
    cli_io.add_tokenizer(parser)
    parser.add_argument("--output-prefix", required=True,
                        help="writes <prefix>.bin and <prefix>.idx")
    cli_io.add_workers(parser, "tokenizer")
    parser.add_argument("--chunk-size", type=int, default=256,
                        help="records per task sent to a worker (default: 256)")
    parser.add_argument("--no-append-eod", dest="append_eod", action="store_false",
                        help="do not end each document with <eod>")
    cli_io.add_strict(parser)
    cli_io.add_allow_empty(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the CLI; returns the `preprocess` summary. Exits with status 1 on a bad record under
    --strict."""
    args = build_parser().parse_args(argv)
    with cli_io.user_errors():
        summary = preprocess(args.input, args.tokenizer, args.output_prefix,
                             json_key=args.json_key, workers=args.workers,
                             append_eod=args.append_eod, strict=args.strict,
                             chunk_size=args.chunk_size, allow_empty=args.allow_empty)
    print(format_summary(summary))
    print(f"wrote {summary['bin']} and {summary['idx']} ({summary['dtype']}), "
          f"summary {summary['summary']}")
    return summary


if __name__ == "__main__":
    main()
