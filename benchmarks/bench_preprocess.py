"""Text preprocessing throughput: data_prep/preprocess_text.py, and Megatron-LM's
tools/preprocess_data.py as the peer when given a checkout, on the same generated corpora.

    python -m benchmarks.bench_preprocess --workers 1 2
    python -m benchmarks.bench_preprocess --megatron-lm ~/src/Megatron-LM --workers 1 2

Two corpus shapes are generated from the demo documents (data_prep/make_demo_corpus.py): `short`
(one demo document per record) and `long` (40 joined per record), with a SentencePiece model
trained on them. Every (shape, workers) pair runs each tool `--repeats` times as a subprocess,
alternating which goes first; a row holds the median wall and CPU seconds (user + system of the
process and its workers) and tokens/s, and, with the peer, the ratios peer/ours. The peer runs
with --append-eod; whether its token ids equal ours is recorded (`same_ids`).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDataset

from benchmarks.common import write_results
from omni_data_prep.make_demo_corpus import demo_documents, make_demo_corpus
from omni_data_prep.train_tokenizer import train_tokenizer

SHAPES = {"short": 1, "long": 40}
"""Corpus shape -> demo documents joined per record."""


def make_corpora(folder: Path, num_docs: int) -> tuple[dict[str, Path], Path]:
    """The corpora (shape -> jsonl, each about num_docs demo documents) and a tokenizer."""
    docs = demo_documents(2000, seed=3)
    corpora = {}
    for shape, join in SHAPES.items():
        path = corpora[shape] = folder / f"{shape}.jsonl"
        with open(path, "w") as f:
            for i in range(num_docs // join):
                text = " ".join(docs[(i * join + j) % len(docs)] for j in range(join))
                f.write(json.dumps({"text": text}) + "\n")
    make_demo_corpus(folder / "tok_corpus.jsonl", num_docs=500, seed=0)
    return corpora, train_tokenizer([str(folder / "tok_corpus.jsonl")], str(folder / "tok"),
                                    vocab_size=400)


def _command(tool: str, corpus: Path, tokenizer: Path, prefix: Path, workers: int,
             megatron_lm: Path | None) -> tuple[list[str], dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if tool == "ours":
        return [sys.executable, "-m", "omni_data_prep.preprocess_text", "--input", str(corpus),
                "--tokenizer", str(tokenizer), "--output-prefix", str(prefix),
                "--workers", str(workers)], env
    env["PYTHONPATH"] = f"{megatron_lm}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return [sys.executable, str(megatron_lm / "tools" / "preprocess_data.py"), "--input",
            str(corpus), "--output-prefix", str(prefix), "--tokenizer-type",
            "SentencePieceTokenizer", "--tokenizer-model", str(tokenizer), "--workers",
            str(workers), "--append-eod", "--log-interval", "1000000000"], env


def time_run(command: list[str], env: dict) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, the process and its children) of `command`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{command[:3]} failed:\n{proc.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _tokens(prefix: Path) -> np.ndarray:
    dataset = IndexedDataset(str(prefix))
    return np.concatenate([dataset[i] for i in range(len(dataset))]).astype(np.int64)


def _median_row(times: list[tuple[float, float]], tokens: int) -> dict:
    wall = statistics.median(t[0] for t in times)
    return {"wall_s": wall, "cpu_s": statistics.median(t[1] for t in times),
            "tokens_per_s": tokens / wall, "walls": [t[0] for t in times]}


def bench(corpora: dict[str, Path], tokenizer: Path, workers: list[int], repeats: int,
          megatron_lm: Path | None, out: Path) -> list[dict]:
    """One row per (shape, workers) with the medians per tool (see the module docstring)."""
    tools = ["ours"] + (["peer"] if megatron_lm else [])
    rows = []
    for shape, corpus in corpora.items():
        for n in workers:
            times = {tool: [] for tool in tools}
            for r in range(repeats):
                for tool in tools if r % 2 == 0 else tools[::-1]:
                    command, env = _command(tool, corpus, tokenizer, out / f"{tool}_{shape}_w{n}",
                                            n, megatron_lm)
                    times[tool].append(time_run(command, env))
            ours = _tokens(out / f"ours_{shape}_w{n}")
            row = {"shape": shape, "workers": n, "docs": _count_lines(corpus),
                   "tokens": int(ours.size), "ours": _median_row(times["ours"], ours.size)}
            if megatron_lm:
                peer = _tokens(out / f"peer_{shape}_w{n}_text_document")
                row["peer"] = _median_row(times["peer"], peer.size)
                row["same_ids"] = bool(np.array_equal(ours, peer))
                row["wall_ratio"] = row["peer"]["wall_s"] / row["ours"]["wall_s"]
                row["cpu_ratio"] = row["peer"]["cpu_s"] / row["ours"]["cpu_s"]
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("ours", "peer")}
                             | {t: round(row[t]["wall_s"], 2) for t in tools}), flush=True)
    return rows


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark and write its JSON results; returns the results path."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_preprocess",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--megatron-lm", type=Path, default=None,
                        help="a Megatron-LM checkout whose tools/preprocess_data.py is the peer")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="worker counts (default: 1 2)")
    parser.add_argument("--num-docs", type=int, default=40000,
                        help="demo documents per corpus (default: 40000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per tool (default: 3)")
    parser.add_argument("--output", default="benchmarks/results/preprocess/text.json",
                        help="results JSON path")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        corpora, tokenizer = make_corpora(Path(tmp), args.num_docs)
        rows = bench(corpora, tokenizer, args.workers, args.repeats, args.megatron_lm, Path(tmp))
    peer = "Megatron-LM tools/preprocess_data.py" if args.megatron_lm else None
    path = write_results(args.output, "preprocess_text", rows, peer=peer,
                         corpus=f"demo documents, {args.num_docs} per shape",
                         tokenizer="demo sentencepiece bpe, 400 pieces",
                         repeats=args.repeats, cpu_count=os.cpu_count())
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
