"""Media preprocessing rates against the codec ceiling on the same machine.

    python -m benchmarks.bench_media_prep --workers 1 2

For each kind (image_caption, audio_transcript, video_caption) a corpus of generated media is
preprocessed by `python -m omni_data_prep.multimodal <kind>` (a subprocess, `--workers N`), and
the ceiling is measured in this process on one core: the bare decode -> resize -> encode loop of
the codec libraries the CLI uses, over the same files, with no tokenizing, tar or index writing:

    image  PIL: decode, resize to 384x384, JPEG encode (the CLI keeps JPEG/PNG/WebP bytes and
           only decodes them to check them, so it may pass this "ceiling")
    audio  soundfile: decode, resample to 16 kHz mono (media.resample), FLAC encode
    video  PyAV: decode every frame, JPEG-encode one per second (PIL), as the CLI samples them

Rates are units (images, audio hours, video minutes) per second. The machine may be shared, so
CPU seconds are the steadier measure: the ceiling is timed in CPU seconds of this process (one
thread), and a row holds, per worker count, our wall and CPU seconds (user + system of the CLI
and its workers), the rate per worker by wall (`per_worker_per_s`), the rate per CPU second
after the start-up (`per_cpu_s`: the CPU seconds of a run over an empty input, imports and
tokenizer loading, taken off) and both ratios to the ceiling.
"""
from __future__ import annotations

import argparse
import io
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

from benchmarks.common import write_results
from omni_data_prep.make_demo_corpus import make_demo_corpus
from omni_data_prep.multimodal.demo import write_mp4
from omni_data_prep.multimodal.media import resample
from omni_data_prep.train_tokenizer import train_tokenizer

UNITS = {"image_caption": "images", "audio_transcript": "audio_hours",
         "video_caption": "video_minutes"}


def make_media(folder: Path, images: int, audios: int, videos: int, audio_seconds: float,
               video_seconds: float) -> dict[str, tuple[Path, list[Path], float]]:
    """Per kind: (its jsonl, the media files, the amount in its unit)."""
    from PIL import Image
    import soundfile

    rng = np.random.default_rng(0)
    y, x = np.mgrid[:480, :640]
    made = {}
    paths = []
    for i in range(images):  # smooth gradients plus noise: JPEG sizes like photos' (~60 KB)
        pixels = np.stack([(x + 3 * i) % 256, (y + 5 * i) % 256, (x + y) % 256], -1)
        pixels = (pixels + rng.integers(0, 24, pixels.shape)).clip(0, 255).astype(np.uint8)
        paths.append(folder / f"img{i}.jpg")
        Image.fromarray(pixels).save(paths[-1], quality=90)
    made["image_caption"] = (_jsonl(folder / "images.jsonl", [
        {"image_path": p.name, "caption": f"picture number {i}"} for i, p in enumerate(paths)]),
        paths, float(images))
    paths = []
    t = np.arange(round(audio_seconds * 44100)) / 44100
    for i in range(audios):  # 44.1 kHz stereo WAV, a chirp with noise
        wave = 0.4 * np.sin(2 * np.pi * (300 + 50 * i + 80 * t) * t)
        wave = wave + 0.05 * rng.standard_normal(t.size)
        paths.append(folder / f"aud{i}.wav")
        soundfile.write(paths[-1], np.stack([wave, wave[::-1]], -1), 44100)
    made["audio_transcript"] = (_jsonl(folder / "audio.jsonl", [
        {"audio_path": p.name, "transcript": f"clip number {i}"} for i, p in enumerate(paths)]),
        paths, audios * audio_seconds / 3600)
    paths = []
    for i in range(videos):  # 320x240 at 25 fps, a moving gradient, no audio track
        frames = [np.stack([(x[:240, :320] + 4 * f) % 256, (y[:240, :320] + i) % 256,
                            np.full((240, 320), 8 * f % 256)], -1).astype(np.uint8)
                  for f in range(round(video_seconds * 25))]
        paths.append(folder / f"vid{i}.mp4")
        write_mp4(paths[-1], frames, 25)
    made["video_caption"] = (_jsonl(folder / "video.jsonl", [
        {"video_path": p.name, "caption": f"video number {i}"} for i, p in enumerate(paths)]),
        paths, videos * video_seconds / 60)
    return made


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def ceiling_seconds(kind: str, paths: list[Path]) -> float:
    """CPU seconds of the bare codec loop of `kind` over `paths` (see module doc)."""
    from PIL import Image

    start = time.process_time()
    for path in paths:
        data = path.read_bytes()
        if kind == "image_caption":
            with Image.open(io.BytesIO(data)) as img:
                img.convert("RGB").resize((384, 384)).save(io.BytesIO(), "JPEG", quality=95)
        elif kind == "audio_transcript":
            import soundfile

            wave, rate = soundfile.read(io.BytesIO(data), dtype="float64")
            mono = resample(wave.mean(axis=1), rate, 16000)
            soundfile.write(io.BytesIO(), mono, 16000, format="FLAC", subtype="PCM_16")
        else:
            import av

            with av.open(io.BytesIO(data)) as container:
                next_time = 0.0
                for frame in container.decode(video=0):
                    if frame.time is not None and frame.time >= next_time - 1e-6:
                        frame.to_image().save(io.BytesIO(), "JPEG", quality=95)
                        next_time += 1.0
    return time.process_time() - start


def run_cli(kind: str, jsonl: Path, tokenizer: Path, out: Path, workers: int, *extra: str
            ) -> tuple[float, float]:
    """Wall and CPU seconds (this CLI process and its workers) of one CLI run."""
    command = [sys.executable, "-m", "omni_data_prep.multimodal", kind, "--input", str(jsonl),
               "--tokenizer", str(tokenizer), "--output-dir", str(out), "--workers", str(workers),
               "--samples-per-shard", "16", *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{kind} failed:\n{proc.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def bench(media: dict, tokenizer: Path, kinds: list[str], workers: list[int], repeats: int,
          tmp: Path) -> list[dict]:
    """One row per kind of `kinds` (see the module docstring)."""
    rows = []
    for kind, (jsonl, paths, amount) in media.items():
        if kind not in kinds:
            continue
        ceiling = statistics.median(ceiling_seconds(kind, paths) for _ in range(repeats))
        empty = _jsonl(tmp / f"{kind}_empty.jsonl", [])
        startup = statistics.median(
            run_cli(kind, empty, tokenizer, tmp / f"{kind}_empty{r}", 1, "--allow-empty")[1]
            for r in range(repeats))
        row = {"kind": kind, "unit": UNITS[kind], "amount": amount, "files": len(paths),
               "ceiling_cpu_s": ceiling, "ceiling_per_s": amount / ceiling,
               "startup_cpu_s": startup, "ours": {}}
        for n in workers:
            runs = []
            for r in range(repeats):
                out = tmp / f"{kind}_w{n}_{r}"  # a fresh folder: no shard is reused
                runs.append(run_cli(kind, jsonl, tokenizer, out, n))
            wall = statistics.median(w for w, _ in runs)
            cpu = statistics.median(c for _, c in runs)
            by_cpu = amount / max(cpu - startup, 1e-3)
            row["ours"][str(n)] = {
                "wall_s": wall, "cpu_s": cpu, "per_worker_per_s": amount / wall / n,
                "wall_vs_ceiling": amount / wall / n / row["ceiling_per_s"], "per_cpu_s": by_cpu,
                "cpu_vs_ceiling": by_cpu / row["ceiling_per_s"], "walls": [w for w, _ in runs]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark and write its JSON results; returns the results path."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_media_prep",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", choices=list(UNITS), default=list(UNITS))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--images", type=int, default=200, help="640x480 JPEGs (default: 200)")
    parser.add_argument("--audios", type=int, default=20,
                        help="44.1 kHz stereo WAV clips (default: 20)")
    parser.add_argument("--audio-seconds", type=float, default=60.0)
    parser.add_argument("--videos", type=int, default=8, help="320x240 25 fps mp4 (default: 8)")
    parser.add_argument("--video-seconds", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="benchmarks/results/media_prep.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        media = make_media(folder, args.images, args.audios, args.videos, args.audio_seconds,
                           args.video_seconds)
        make_demo_corpus(folder / "tok_corpus.jsonl", num_docs=500, seed=0)
        tokenizer = train_tokenizer([str(folder / "tok_corpus.jsonl")], str(folder / "tok"),
                                    vocab_size=400)
        rows = bench(media, tokenizer, args.kinds, args.workers, args.repeats, folder)
    path = write_results(args.output, "media_prep", rows, repeats=args.repeats,
                         cpu_count=os.cpu_count(), load_average=os.getloadavg())
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
