"""Synthetic media for the multimodal tests (made in the test, nothing downloaded): images with a
known pixel pattern, tones/chirps, mp4 clips with one gray shade per second and an optional
audio track, jsonl manifests."""
import json

import numpy as np
import soundfile
from PIL import Image


def make_image(path, height, width, value, y_step=1, x_step=1):
    """An image whose pixel (y, x) is (value, y_step·y, x_step·x) mod 256; format from the
    suffix. Returns the pixels."""
    y, x = np.mgrid[:height, :width]
    pixels = np.stack([np.full_like(y, value), y_step * y, x_step * x], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def make_tone(path, seconds, rate, freq=440.0, channels=1, chirp=False):
    """A sine (or a chirp rising 400 Hz per second) written with `channels` equal channels;
    returns the mono wave."""
    t = np.arange(round(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * (freq * t + (200.0 * t * t if chirp else 0.0)))
    soundfile.write(path, np.repeat(wave[:, None], channels, axis=1), rate)
    return wave


def make_video(path, seconds, fps=10, size=(48, 64), audio_rate=None, shade_step=20):
    """An mp4 whose frame i is flat gray shade_step·⌊i/fps⌋ (one shade per second), with a 300 Hz
    AAC mono track at audio_rate when given."""
    from omni_data_prep.multimodal.demo import write_mp4

    frames = [np.full((*size, 3), shade_step * (i // fps), np.uint8) for i in range(round(seconds * fps))]
    wave = None
    if audio_rate:
        wave = (0.3 * np.sin(2 * np.pi * 300 * np.arange(round(seconds * audio_rate))
                             / audio_rate)).astype(np.float32)
    write_mp4(path, frames, fps, wave, audio_rate or 16000)


def write_jsonl(path, records):
    """One line per record: dicts as JSON, strings verbatim (to plant malformed lines)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def special_id(tokenizer, name):
    return tokenizer.special_ids[f"<{name}>"]
