"""Throughput of the multimodal loading on this machine: images/s and audio clips/s, PIL path,
and the DALI path when DALI is importable (it is reported as unavailable otherwise).

    python -m benchmarks.bench_multimodal_loader
    python -m benchmarks.bench_multimodal_loader --images 256 --audio 64 --image-size 384

Two levels: "dataset" reads items one by one from MultimodalDataset (dataset.py) in this process;
"loader" runs the training loader (loader.py: build_omni_loader with packing into
--seq-length rows, collation into the omni micro-batch) with 0 and --workers DataLoader workers,
over a one-modality mix (images only, audio only), so items/s is media items delivered per second.

A synthetic corpus is made with the data_prep.multimodal tools in a temporary folder: JPEG
photos-like images (--width x --height, smooth gradients + noise) with captions, and audio
clips (--audio-seconds of chirp + noise) with transcripts. Each item read is timed end to end:
tar member read, decode, resize + normalise to --image-size (images), FLAC decode + Whisper
log-mel padded to 30 s (audio), token/label/mask and TMRoPE span construction. One process
(no DataLoader workers), after one warm-up pass.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch
from PIL import Image

from benchmarks.common import write_results
from megatron_omni.config import load_config
from megatron_omni.config.schema import MultimodalDataConfig
from megatron_omni.contract.media import MediaTokens
from megatron_omni.data.multimodal.dataset import LoaderConfig, MultimodalDataset
from megatron_omni.data.multimodal.loader import build_omni_loader
from megatron_omni.data.tokenizer import load_tokenizer
from megatron_omni.data.multimodal.images import dali_available
from omni_data_prep.make_demo_corpus import make_demo_corpus
from omni_data_prep.multimodal.audio_transcript import AudioTranscriptSource
from omni_data_prep.multimodal.image_caption import ImageCaptionSource
from omni_data_prep.multimodal.runner import run
from omni_data_prep.train_tokenizer import train_tokenizer


def make_corpus(work: Path, n_images: int, n_audio: int, width: int, height: int,
                audio_seconds: float) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(0)
    tok = train_tokenizer([str(make_demo_corpus(work / "demo.jsonl", num_docs=300))],
                          str(work / "tok"), vocab_size=400, threads=1)
    (work / "img").mkdir()
    y, x = np.mgrid[:height, :width]
    records = []
    for i in range(n_images):
        base = np.stack([(x + 7 * i) % 256, (y + 3 * i) % 256, (x + y) // 4 % 256], -1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(work / "img" / f"{i}.jpg", quality=90)
        records.append({"image_path": f"img/{i}.jpg", "caption": f"picture number {i}"})
    (work / "cap.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    run(ImageCaptionSource(), [str(work / "cap.jsonl")], tok, work / "images", progress=False)
    (work / "wav").mkdir()
    t = np.arange(round(audio_seconds * 16000)) / 16000
    records = []
    for i in range(n_audio):
        wave = (0.4 * np.sin(2 * np.pi * (200 + 10 * i + 50 * t) * t)
                + 0.01 * rng.normal(size=len(t)))
        soundfile.write(work / "wav" / f"{i}.flac", wave, 16000)
        records.append({"audio_path": f"wav/{i}.flac", "transcript": f"clip {i}"})
    (work / "asr.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    run(AudioTranscriptSource(), [str(work / "asr.jsonl")], tok, work / "audio", progress=False)
    return tok, work / "images", work / "audio"


def items_per_second(dataset, passes: int) -> float:
    for i in range(len(dataset)):           # warm-up (tar index, page cache)
        dataset[i]
    start = time.perf_counter()
    for _ in range(passes):
        for i in range(len(dataset)):
            assert dataset[i] is not None
    return passes * len(dataset) / (time.perf_counter() - start)


def loader_items_per_second(tokenizer, modality: str, folder: Path, n_items: int,
                            image_size: int, n_mels: int, backend: str, workers: int,
                            seq_length: int) -> float:
    """Media items/s through build_omni_loader (one rank, one row per micro-batch) until
    n_items media items are delivered, from the first next() (worker start included)."""
    cfg = load_config(None, [f"data.seq_length={seq_length}", "training.micro_batch_size=1",
                             "training.global_batch_size=1", "training.warmup_steps=0",
                             f"training.train_steps={n_items}"])
    cfg.data.multimodal = MultimodalDataConfig(
        **{modality: [str(folder)]}, schedule={"mix": {modality: 1}}, image_size=image_size,
        n_mels=n_mels, image_backend=backend, num_workers=workers)
    loader = build_omni_loader(cfg, tokenizer, MediaTokens(), 0, 0, 1)
    key = "images" if modality == "image_text" else "audio_mel"
    items, start = 0, time.perf_counter()
    for batch in loader:
        items += getattr(batch, key).shape[0]
        if items >= n_items:
            break
    return items / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_multimodal_loader",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--audio", type=int, default=24)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--audio-seconds", type=float, default=10.0)
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--n-mels", type=int, default=80)
    parser.add_argument("--passes", type=int, default=2,
                        help="reads of every item (dataset level) / items delivered as a "
                             "multiple of the corpus (loader level)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--workers", type=int, default=2,
                        help="DataLoader workers of the loader-level run (also run with 0)")
    parser.add_argument("--seq-length", type=int, default=1024,
                        help="row length the loader packs into (64 positions per image, "
                             "up to 375 per 30 s clip)")
    parser.add_argument("--output", default="benchmarks/results/multimodal_loader.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tok, images, audio = make_corpus(Path(tmp), args.images, args.audio, args.width,
                                         args.height, args.audio_seconds)
        backends = ["pil"] + (["dali"] if dali_available() else [])
        for backend in backends:
            config = LoaderConfig(image_size=args.image_size, image_backend=backend,
                                  n_mels=args.n_mels)
            rate = items_per_second(MultimodalDataset(images, config=config), args.passes)
            rows.append({"what": "images", "level": "dataset", "backend": backend,
                         "workers": 0, "items_per_s": round(rate, 2),
                         "source": f"{args.width}x{args.height} jpeg",
                         "output": f"3x{args.image_size}x{args.image_size} float32"})
            print(f"dataset {backend}: {rate:.1f} images/s")
        config = LoaderConfig(image_size=args.image_size, n_mels=args.n_mels)
        rate = items_per_second(MultimodalDataset(audio, config=config), args.passes)
        rows.append({"what": "audio_clips", "level": "dataset", "backend": "torch",
                     "workers": 0, "items_per_s": round(rate, 2),
                     "source": f"{args.audio_seconds:g} s 16 kHz flac",
                     "output": f"{args.n_mels}x3000 log-mel"})
        print(f"dataset audio: {rate:.1f} clips/s")
        tokenizer = load_tokenizer(tok)
        for workers in sorted({0, args.workers}):
            for backend in backends:
                rate = loader_items_per_second(tokenizer, "image_text", images,
                                               args.passes * args.images, args.image_size,
                                               args.n_mels, backend, workers, args.seq_length)
                rows.append({"what": "images", "level": "loader", "backend": backend,
                             "workers": workers, "items_per_s": round(rate, 2),
                             "source": f"{args.width}x{args.height} jpeg",
                             "output": f"packed rows of {args.seq_length}, 64 tokens/image"})
                print(f"loader {backend}, {workers} workers: {rate:.1f} images/s")
            rate = loader_items_per_second(tokenizer, "audio", audio, args.passes * args.audio,
                                           args.image_size, args.n_mels, "pil", workers,
                                           args.seq_length)
            rows.append({"what": "audio_clips", "level": "loader", "backend": "torch",
                         "workers": workers, "items_per_s": round(rate, 2),
                         "source": f"{args.audio_seconds:g} s 16 kHz flac",
                         "output": f"packed rows of {args.seq_length}, {args.n_mels}x3000 mel"})
            print(f"loader audio, {workers} workers: {rate:.1f} clips/s")
    path = write_results(args.output, "multimodal_loader", rows, cpu_count=os.cpu_count(),
                         torch_threads=args.threads, dali_available=dali_available(),
                         load_average_1min=round(os.getloadavg()[0], 2),
                         dali=("measured" if dali_available() else
                               "not measured: nvidia-dali is not installed on this machine "
                               "(the PIL path is the fallback the loader uses)"),
                         note="CPU shared with other jobs; the loader level includes "
                              "packing and collation and the DataLoader worker start")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
