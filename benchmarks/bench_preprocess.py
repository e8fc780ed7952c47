"""Throughput of data_prep/preprocess_text.py (tokens/s) per worker count.

    python -m benchmarks.bench_preprocess --workers 1 2
    python -m benchmarks.bench_preprocess --input 'corpus/*.jsonl' --tokenizer tok.model \
        --workers 1 4 8

Without --input, a demo corpus (data_prep/make_demo_corpus.py) and a tokenizer trained on it are
generated in a temporary folder. Each worker count runs once over the whole input; the time
includes starting the worker pool and writing the .bin/.idx.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from benchmarks.common import write_results
from omni_data_prep.make_demo_corpus import make_demo_corpus
from omni_data_prep.preprocess_text import preprocess
from omni_data_prep.text_records import expand_inputs
from omni_data_prep.train_tokenizer import train_tokenizer


def run(inputs: list[str], tokenizer: str, workers: list[int], json_key: str, work_dir: Path
        ) -> list[dict]:
    """One preprocess run per worker count; returns a row per run."""
    input_mb = sum(p.stat().st_size for p in expand_inputs(inputs)) / 2**20
    rows = []
    for n in workers:
        summary = preprocess(inputs, tokenizer, str(work_dir / f"out_w{n}"), json_key=json_key,
                             workers=n, progress=False)
        row = {"workers": n, "input_mb": round(input_mb, 2),
               **{k: summary[k] for k in ("docs", "tokens", "seconds", "tokens_per_s")}}
        rows.append(row)
        print(f"workers {n}: {row['docs']:,} docs, {row['tokens']:,} tokens, "
              f"{row['seconds']:.2f} s, {row['tokens_per_s']:,.0f} tokens/s")
    return rows


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark and write its JSON results; returns the results path."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_preprocess",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", nargs="+", metavar="GLOB",
                        help="jsonl/parquet corpus (default: a generated demo corpus)")
    parser.add_argument("--tokenizer", help="tokenizer for --input (.model or tokenizer.json)")
    parser.add_argument("--json-key", default="text", help="text field (default: text)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="worker counts to time (default: 1 2)")
    parser.add_argument("--num-docs", type=int, default=60000,
                        help="documents in the generated corpus (default: 60000)")
    parser.add_argument("--output", default="benchmarks/results/preprocess_text.json",
                        help="results JSON path")
    args = parser.parse_args(argv)
    if bool(args.input) != bool(args.tokenizer):
        parser.error("--input and --tokenizer go together")

    with tempfile.TemporaryDirectory() as tmp:
        work_dir = Path(tmp)
        inputs, tokenizer = args.input, args.tokenizer
        if not inputs:
            corpus = make_demo_corpus(work_dir / "demo.jsonl", num_docs=args.num_docs)
            inputs = [str(corpus)]
            tokenizer = str(train_tokenizer(inputs, str(work_dir / "tok"), vocab_size=400))
        rows = run(inputs, tokenizer, args.workers, args.json_key, work_dir)
    corpus_name = " ".join(args.input) if args.input else f"demo corpus, {args.num_docs} docs"
    path = write_results(args.output, "preprocess_text", rows, corpus=corpus_name,
                         tokenizer=args.tokenizer or "demo sentencepiece bpe, 400 pieces",
                         cpu_count=os.cpu_count())
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
