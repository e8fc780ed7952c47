"""OCR corruption samples for phase 2 (plan 3.1.3, 7.2.3; MiniCPM-V 4.5's dynamic corruption).

From a document image with text regions, every region gives one sample: the image with that
region corrupted at one of three levels, and the region's original text as the target.
    low     Gaussian noise, sigma 10, inside the region
    medium  5x5 Gaussian blur, then Gaussian noise, sigma 25, inside the region
    high    the region filled with a solid value (the text is gone; it must be inferred)
Levels come in the ratio low:medium:high = 3:4:3 exactly within every aligned block of 10 draws
(so every batch of 10 holds the plan's ratio), in an order and with noise fixed by the seed.

    python -m omni_data_prep.ocr_corruption --input docs.jsonl --output-dir ocr --seed 0

Input: jsonl {"image": path, "regions": [{"text": str, "bbox": [x0, y0, x1, y1]}]} (pixel
boxes, x1/y1 exclusive; relative paths from the jsonl's folder). Output: `images/<n>.png` and
`ocr.jsonl` in the plan's format {"original_image", "corrupted_image", "damage_level",
"target_text", "bbox"}, which `omni_data_prep.multimodal.image_caption --image-key
corrupted_image --caption-key target_text` turns into training shards.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from megatron_omni.data.bad_samples import SkipCounter, SkipSample
from omni_data_prep import cli_io

LEVELS = ("low", "medium", "high")
LEVEL_RATIO = (3, 4, 3)
_BLOCK = np.repeat(np.arange(len(LEVELS)), LEVEL_RATIO)


@dataclass(frozen=True)
class CorruptionConfig:
    """Parameters of the three levels (defaults: the plan's).

    Attributes:
        low_sigma: noise standard deviation of "low", in 0-255 pixel units.
        medium_blur: Gaussian blur kernel size of "medium" (odd; binomial weights, 5 -> sigma 1).
        medium_sigma: noise standard deviation of "medium", added after the blur.
        mask_value: the gray value that fills a region at "high".
    """

    low_sigma: float = 10.0
    medium_blur: int = 5
    medium_sigma: float = 25.0
    mask_value: int = 0


@dataclass(frozen=True)
class TextRegion:
    """Text in a document image and its box (x0, y0, x1, y1) in pixels, x1/y1 exclusive."""

    text: str
    box: tuple[int, int, int, int]


@dataclass
class OcrSample:
    """A corrupted image (uint8 [H, W, 3]), its level, and the target: the region's text."""

    image: np.ndarray
    level: str
    target_text: str
    box: tuple[int, int, int, int]


def level_for(index: int, seed: int) -> str:
    """Corruption level of draw `index`: each block of draws [10k, 10k + 10) holds exactly 3
    "low", 4 "medium" and 3 "high" in an order drawn from (seed, k)."""
    order = np.random.default_rng([seed, index // len(_BLOCK)]).permutation(_BLOCK)
    return LEVELS[order[index % len(_BLOCK)]]


def add_gaussian_noise(pixels: np.ndarray, sigma: float, rng: np.random.Generator
                       ) -> np.ndarray:
    """uint8 `pixels` plus N(0, sigma^2) noise per value, rounded and clipped to 0-255."""
    noisy = pixels.astype(np.float64) + rng.normal(0.0, sigma, pixels.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def gaussian_blur(pixels: np.ndarray, size: int) -> np.ndarray:
    """Blur [H, W, C] uint8 with the separable size x size binomial kernel (the discrete
    Gaussian; edges replicated), rounded back to uint8."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"blur size must be odd and positive, got {size}")
    kernel = np.array([1.0])
    for _ in range(size - 1):
        kernel = np.convolve(kernel, [0.5, 0.5])
    half = size // 2
    out = np.pad(pixels.astype(np.float64), ((half, half), (half, half), (0, 0)), mode="edge")
    h, w = pixels.shape[:2]
    out = sum(k * out[i:i + h, :, :] for i, k in enumerate(kernel))
    out = sum(k * out[:, i:i + w, :] for i, k in enumerate(kernel))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def corrupt_region(image: np.ndarray, box: Sequence[int], level: str,
                   rng: np.random.Generator, config: CorruptionConfig = CorruptionConfig()
                   ) -> np.ndarray:
    """A copy of uint8 [H, W, 3] `image` with the pixels inside `box` corrupted at `level`;
    pixels outside the box are unchanged. The blur reads the pixels around the box too."""
    x0, y0, x1, y1 = _clip_box(box, image.shape)
    out = image.copy()
    region = out[y0:y1, x0:x1]
    if level == "low":
        out[y0:y1, x0:x1] = add_gaussian_noise(region, config.low_sigma, rng)
    elif level == "medium":
        m = config.medium_blur // 2
        ay0, ax0 = max(y0 - m, 0), max(x0 - m, 0)
        context = gaussian_blur(image[ay0:min(y1 + m, image.shape[0]),
                                      ax0:min(x1 + m, image.shape[1])], config.medium_blur)
        blurred = context[y0 - ay0:y1 - ay0, x0 - ax0:x1 - ax0]
        out[y0:y1, x0:x1] = add_gaussian_noise(blurred, config.medium_sigma, rng)
    elif level == "high":
        out[y0:y1, x0:x1] = config.mask_value
    else:
        raise ValueError(f"unknown corruption level {level!r}; expected one of {LEVELS}")
    return out


def corrupt_documents(documents: Iterable[tuple[np.ndarray, Sequence[TextRegion]]], seed: int,
                      config: CorruptionConfig = CorruptionConfig()) -> Iterator[OcrSample]:
    """One OcrSample per text region of each (image, regions) document, in order. Draw i (over
    all regions of all documents) has level `level_for(i, seed)` and noise from (seed, i), so
    the output depends only on the documents, their order and the seed."""
    index = 0
    for image, regions in documents:
        for region in regions:
            level = level_for(index, seed)
            rng = np.random.default_rng([seed, index, 1])
            yield OcrSample(corrupt_region(image, region.box, level, rng, config), level,
                            region.text, tuple(region.box))
            index += 1


def render_document(lines: Sequence[str], width: int = 320, font_size: int = 16,
                    margin: int = 8) -> tuple[np.ndarray, list[TextRegion]]:
    """A synthetic document: black `lines` on white, one text region per line (its box is the
    line's ink box plus 2 px). Returns (uint8 [H, W, 3], regions)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=font_size)
    line_height = font_size + 8
    img = Image.new("RGB", (width, 2 * margin + line_height * len(lines)), "white")
    draw = ImageDraw.Draw(img)
    regions = []
    for i, line in enumerate(lines):
        xy = (margin, margin + i * line_height)
        draw.text(xy, line, fill="black", font=font)
        x0, y0, x1, y1 = draw.textbbox(xy, line, font=font)
        regions.append(TextRegion(line, (max(x0 - 2, 0), max(y0 - 2, 0), min(x1 + 2, width),
                                         min(y1 + 2, img.height))))
    return np.asarray(img), regions


def _clip_box(box: Sequence[int], shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = (int(v) for v in box)
    x0, x1 = max(x0, 0), min(x1, shape[1])
    y0, y1 = max(y0, 0), min(y1, shape[0])
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {tuple(box)} is empty inside a {shape[1]}x{shape[0]} image")
    return x0, y0, x1, y1


# ----------------------------------------------------------------------------- command line

def _read_documents(path: Path, skips: SkipCounter
                    ) -> Iterator[tuple[str, np.ndarray, list[TextRegion]]]:
    from PIL import Image

    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                image_path = path.parent / record["image"]
                regions = [TextRegion(r["text"], tuple(int(v) for v in r["bbox"]))
                           for r in record["regions"]]
                if not all(isinstance(r.text, str) and r.text.strip() and len(r.box) == 4
                           for r in regions):
                    raise ValueError("a region needs a non-empty text and a 4-number bbox")
            except (ValueError, KeyError, TypeError) as err:
                reason, detail = "bad_record", f"{type(err).__name__}: {err}"
            else:
                try:
                    with Image.open(image_path) as img:
                        pixels = np.asarray(img.convert("RGB"))
                    yield str(image_path), pixels, regions
                    continue
                except FileNotFoundError:
                    reason, detail = "missing_file", str(image_path)
                except Exception as err:  # noqa: BLE001 - PIL's many errors mean "corrupt"
                    reason, detail = "corrupt_image", f"{image_path}: {err}"
            skips.skip(SkipSample(reason, detail), f"{path}:{line_no}")


def generate(input_path: str | Path, output_dir: str | Path, seed: int = 0,
             config: CorruptionConfig = CorruptionConfig(), strict: bool = False,
             progress: bool = True) -> dict:
    """Write the corrupted images of every region of the documents in `input_path` to
    `output_dir/images/` and their records to `output_dir/ocr.jsonl` (written last, under a
    temporary name until complete). Bad records are skipped and counted per reason
    (bad_samples.OCR_SKIP_REASONS); `strict` raises BadSampleError at the first.
    Returns {"samples", "levels": count per level, "skipped": count per reason, "jsonl"}."""
    from PIL import Image

    input_path, out = Path(input_path), Path(output_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    skips = SkipCounter(strict, log_first=0)
    docs = _read_documents(input_path, skips)
    originals: list[str] = []

    def pixels_and_regions():
        for original, pixels, regions in docs:
            originals.extend([original] * len(regions))
            yield pixels, regions

    levels = dict.fromkeys(LEVELS, 0)
    jsonl = out / "ocr.jsonl"
    with (cli_io.atomic_file(jsonl) as tmp_jsonl, open(tmp_jsonl, "w") as f,
          tqdm(unit="sample", disable=None if progress else True) as bar):
        for i, sample in enumerate(corrupt_documents(pixels_and_regions(), seed, config)):
            name = out / "images" / f"{i:08d}.png"
            with cli_io.atomic_file(name) as tmp:
                Image.fromarray(sample.image).save(tmp, "PNG")
            f.write(json.dumps({"original_image": originals[i],
                                "corrupted_image": str(name.relative_to(out)),
                                "damage_level": sample.level,
                                "target_text": sample.target_text,
                                "bbox": list(sample.box)}) + "\n")
            levels[sample.level] += 1
            bar.update()
    return {"samples": sum(levels.values()), "levels": levels, "skipped": dict(skips.counts),
            "jsonl": str(jsonl)}


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the CLI; returns the `generate` summary. Exits 1 on a bad record under --strict."""
    parser = argparse.ArgumentParser(
        prog="python -m omni_data_prep.ocr_corruption",
        description="Corrupt the text regions of document images (3:4:3 low/medium/high) with "
                    "the original text as the target.")
    parser.add_argument("--input", required=True, help="jsonl of {image, regions}")
    parser.add_argument("--output-dir", required=True, help="receives images/ and ocr.jsonl")
    parser.add_argument("--seed", type=int, default=0, help="fixes levels and noise (default: 0)")
    cli_io.add_strict(parser)
    args = parser.parse_args(argv)
    with cli_io.user_errors():
        summary = generate(args.input, args.output_dir, args.seed, strict=args.strict)
    print(f"samples {summary['samples']}, levels {summary['levels']}\n"
          f"{cli_io.skipped_line(summary['skipped'])}\nwrote {summary['jsonl']}")
    return summary


if __name__ == "__main__":
    main()
