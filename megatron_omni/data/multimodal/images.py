"""Image decoding for the loader: PIL always, NVIDIA DALI when installed.

DALI is optional behind one check, `dali_available()`; asking for it without it raises
ImportError with `DALI_INSTALL_HINT`. Both paths give float32 `[n, 3, size, size]`, resized
(bicubic, aspect ratio not kept: the vision tower takes square inputs) and normalised as
(x / 255 - mean) / std.
"""
from __future__ import annotations

import functools
import io
from collections.abc import Sequence

import numpy as np
import torch

DALI_INSTALL_HINT = ("NVIDIA DALI is not installed: pip install --extra-index-url "
                     "https://pypi.nvidia.com nvidia-dali-cuda120 (or use image_backend='pil')")


@functools.lru_cache(maxsize=1)
def dali_available() -> bool:
    """The one DALI availability check."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str) -> str:
    """"pil", "dali" (ImportError with the install hint when missing) or "auto" (DALI when
    available, else PIL)."""
    if backend == "auto":
        return "dali" if dali_available() else "pil"
    if backend == "dali" and not dali_available():
        raise ImportError(DALI_INSTALL_HINT)
    if backend not in ("pil", "dali"):
        raise ValueError(f"image backend {backend!r}: expected 'pil', 'dali' or 'auto'")
    return backend


def decode_rgb(data: bytes) -> "PIL.Image.Image":  # noqa: F821
    """Fully decoded RGB PIL image; raises on damaged or truncated bytes."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB")


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the headers only (no pixel decoding)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.size


def pil_to_tensor(img, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """[3, size, size] float32 of a decoded RGB image."""
    from PIL import Image

    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return x.sub_(m).div_(s)


class DaliImageDecoder:
    """Batched decode + resize + normalise with a DALI pipeline (GPU "mixed" decoding when
    `device_id` is given, CPU otherwise). CI does not install DALI; where it is installed,
    tests/data/test_multimodal_loading.py::test_dali_decodes_like_pil checks it against the PIL
    reference (CPU pipeline: mean difference ~1e-3 on the normalised scale)."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float],
                 max_batch: int = 64, num_threads: int = 2, device_id: int | None = None):
        resolve_backend("dali")
        from nvidia.dali import fn, pipeline_def, types

        self.size = size

        @pipeline_def(batch_size=max_batch, num_threads=num_threads, device_id=device_id,
                      prefetch_queue_depth=1)
        def pipe():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8)
            images = fn.decoders.image(encoded, device="mixed" if device_id is not None else "cpu",
                                       output_type=types.RGB)
            images = fn.resize(images, resize_x=size, resize_y=size,
                               interp_type=types.INTERP_CUBIC)
            return fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                            mean=[255.0 * m for m in mean],
                                            std=[255.0 * s for s in std])

        self.max_batch = max_batch
        self.pipe = pipe()
        self.pipe.build()

    def __call__(self, encoded: Sequence[bytes]) -> torch.Tensor:
        out = []
        for i in range(0, len(encoded), self.max_batch):
            batch = [np.frombuffer(b, np.uint8) for b in encoded[i:i + self.max_batch]]
            self.pipe.feed_input("encoded", batch)
            (images,) = self.pipe.run()
            if hasattr(images, "as_cpu"):
                images = images.as_cpu()
            out.append(torch.from_numpy(np.stack([np.asarray(images[j])
                                                  for j in range(len(batch))])))
        if not out:
            return torch.zeros(0, 3, self.size, self.size)
        return torch.cat(out)
