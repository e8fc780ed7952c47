"""Throughput of the multimodal loader (megatron_omni/data/multimodal/dataset.py) on this
machine: images/s and audio clips/s, PIL path, and the DALI path when DALI is importable.

    python -m benchmarks.bench_multimodal_loader
    python -m benchmarks.bench_multimodal_loader --images 256 --audio 64 --image-size 384

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
from megatron_omni.data.multimodal.dataset import LoaderConfig, MultimodalDataset
from megatron_omni.data.multimodal.images import dali_available
from omni_data_prep.make_demo_corpus import make_demo_corpus
from omni_data_prep.multimodal.audio_transcript import prepare_audio_transcripts
from omni_data_prep.multimodal.image_caption import prepare_image_captions
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
    prepare_image_captions([str(work / "cap.jsonl")], tok, work / "images", progress=False)
    (work / "wav").mkdir()
    t = np.arange(round(audio_seconds * 16000)) / 16000
    records = []
    for i in range(n_audio):
        wave = (0.4 * np.sin(2 * np.pi * (200 + 10 * i + 50 * t) * t)
                + 0.01 * rng.normal(size=len(t)))
        soundfile.write(work / "wav" / f"{i}.flac", wave, 16000)
        records.append({"audio_path": f"wav/{i}.flac", "transcript": f"clip {i}"})
    (work / "asr.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    prepare_audio_transcripts([str(work / "asr.jsonl")], tok, work / "audio", progress=False)
    return tok, work / "images", work / "audio"


def items_per_second(dataset, passes: int) -> float:
    for i in range(len(dataset)):           # warm-up (tar index, page cache)
        dataset[i]
    start = time.perf_counter()
    for _ in range(passes):
        for i in range(len(dataset)):
            assert dataset[i] is not None
    return passes * len(dataset) / (time.perf_counter() - start)


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
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
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
            rows.append({"what": "images", "backend": backend, "items_per_s": round(rate, 2),
                         "source": f"{args.width}x{args.height} jpeg",
                         "output": f"3x{args.image_size}x{args.image_size} float32"})
            print(f"{backend}: {rate:.1f} images/s")
        config = LoaderConfig(image_size=args.image_size, n_mels=args.n_mels)
        rate = items_per_second(MultimodalDataset(audio, config=config), args.passes)
        rows.append({"what": "audio_clips", "backend": "torch", "items_per_s": round(rate, 2),
                     "source": f"{args.audio_seconds:g} s 16 kHz flac",
                     "output": f"{args.n_mels}x3000 log-mel"})
        print(f"audio: {rate:.1f} clips/s")
    path = write_results(args.output, "multimodal_loader", rows, cpu_count=os.cpu_count(),
                         torch_threads=args.threads, dali_available=dali_available(),
                         load_average_1min=round(os.getloadavg()[0], 2),
                         note="one process, no DataLoader workers; CPU shared with other jobs")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
