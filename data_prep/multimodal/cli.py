"""The command line of the multimodal preprocessing: one command per sample kind (`KINDS`),

    python -m omni_data_prep.multimodal <kind> --help
    python -m omni_data_prep.multimodal.<kind> --help        (the same)

with the options every kind shares (`runner.run`'s arguments) and those of its `SampleSource`
(each field declared with `runner.option` is `--<field-name>`; a boolean field `with_<x>` that
defaults to True is `--no-<x>`). It prints a summary, or one `error:` line and exits 1.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from megatron_omni.data.sample_format import MANIFEST_NAME, Manifest
from omni_data_prep import cli_io
from omni_data_prep.multimodal.runner import SampleSource, run

KINDS = {"image_caption": "ImageCaptionSource", "interleaved": "InterleavedSource",
         "audio_transcript": "AudioTranscriptSource", "video_caption": "VideoCaptionSource",
         "conversations": "ConversationSource", "preferences": "PreferenceSource"}
"""Command name (= module of omni_data_prep.multimodal) -> its SampleSource class."""
TOOLS = ("interruptions",)
"""Commands (modules of omni_data_prep.multimodal, each with its own `main`) that rewrite input
records rather than prepare shards."""


def source_class(kind: str) -> type[SampleSource]:
    module = importlib.import_module(f"omni_data_prep.multimodal.{kind}")
    return getattr(module, KINDS[kind])


def build_parser(kind: str) -> argparse.ArgumentParser:
    """The options of command `kind`: the shared ones, then its source's."""
    source = source_class(kind)
    parser = argparse.ArgumentParser(prog=f"python -m omni_data_prep.multimodal.{kind}",
                                     description=source.description)
    cli_io.add_input(parser, "input files")
    cli_io.add_tokenizer(parser)
    parser.add_argument("--output-dir", required=True,
                        help="folder for the shards and manifest.json; a rerun resumes there")
    cli_io.add_workers(parser, "shard-writing")
    parser.add_argument("--samples-per-shard", type=int, default=1000,
                        help="input records per shard (default: 1000)")
    parser.add_argument("--media-root", default=None,
                        help="folder relative media paths start from (default: the folder of "
                             "the input file)")
    cli_io.add_strict(parser, "file and line (or tar key)")
    cli_io.add_allow_empty(parser)
    for f in dataclasses.fields(source):
        if isinstance(f.default, bool):
            parser.add_argument(f"--no-{f.name.removeprefix('with_')}", dest=f.name,
                                action="store_false", help=f.metadata["help"])
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default),
                                default=f.default,
                                help=f"{f.metadata['help']} (default: {f.default})")
    return parser


def main(kind: str, argv: Sequence[str] | None = None) -> Manifest:
    """Run command `kind` on `argv` (default: the process arguments); returns the Manifest."""
    args = build_parser(kind).parse_args(argv)
    source_cls = source_class(kind)
    start = time.perf_counter()
    with cli_io.user_errors():   # a source checks its options when made (ValueError)
        source = source_cls(**{f.name: getattr(args, f.name)
                               for f in dataclasses.fields(source_cls)})
        manifest = run(source, args.input, args.tokenizer, args.output_dir,
                       workers=args.workers, samples_per_shard=args.samples_per_shard,
                       strict=args.strict, media_root=args.media_root,
                       allow_empty=args.allow_empty)
    print(format_summary(manifest, time.perf_counter() - start))
    report = source.report(Path(args.output_dir), manifest)
    if report:
        print(report)
    print(f"wrote {len(manifest.shards)} shards and {MANIFEST_NAME} to {args.output_dir}")
    return manifest


def format_summary(manifest: Manifest, seconds: float) -> str:
    """Two lines: totals, and skipped records per reason."""
    totals = manifest.totals()
    counts = totals["counts"]
    media = ", ".join(f"{kind} {n:,}" for kind, n in counts["media"].items())
    return (f"records {counts['records']:,}, samples {counts['samples']:,}, "
            f"tokens {counts['tokens']:,}, media: {media}, seconds {seconds:.2f}\n"
            f"{cli_io.skipped_line(totals['skipped'])}")


def dispatch(argv: Sequence[str]) -> Manifest | dict:
    """`<kind> <options>`: command `kind` (one of KINDS, or of TOOLS) on the options."""
    if argv and argv[0] in TOOLS:
        return importlib.import_module(f"omni_data_prep.multimodal.{argv[0]}").main(argv[1:])
    if not argv or argv[0] not in KINDS:
        print(f"usage: python -m omni_data_prep.multimodal {{{','.join((*KINDS, *TOOLS))}}} ...\n"
              f"error: the first argument must be a sample kind ({', '.join(KINDS)}) or a tool "
              f"({', '.join(TOOLS)})", file=sys.stderr)
        sys.exit(2)
    return main(argv[0], argv[1:])
