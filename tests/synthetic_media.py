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
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=audio_rate, layout="mono") if audio_rate else None
        for i in range(round(seconds * fps)):
            pixels = np.full((*size, 3), shade_step * (i // fps), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        container.mux(stream.encode())
        if audio is not None:
            wave = (0.3 * np.sin(2 * np.pi * 300 * np.arange(round(seconds * audio_rate))
                                 / audio_rate)).astype(np.float32)
            for start in range(0, len(wave), 1024):
                frame = av.AudioFrame.from_ndarray(wave[None, start:start + 1024], format="fltp",
                                                   layout="mono")
                frame.sample_rate, frame.pts = audio_rate, start
                container.mux(audio.encode(frame))
            container.mux(audio.encode())


def write_jsonl(path, records):
    """One line per record: dicts as JSON, strings verbatim (to plant malformed lines)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def special_id(tokenizer, name):
    return tokenizer.special_ids[f"<{name}>"]
