"""Reading, checking and encoding media for the multimodal preprocessing CLIs.

Every loader raises `SkipSample` (megatron_omni/data/bad_samples.py) for input it cannot use, so
the caller skips and counts the record (or stops under --strict). Images keep their encoded
bytes; audio becomes 16 kHz mono FLAC clips, consecutive windows of at most 30 s (the audio
encoder's window); videos become JPEG frames sampled by duration (a rate, lowered for a clip
longer than the frame cap allows) with their timestamps (PyAV), plus, optionally, their audio
track as audio windows.
"""
from __future__ import annotations

import io
import math
from fractions import Fraction
from pathlib import Path

import numpy as np

from megatron_omni.data.bad_samples import SkipSample
from megatron_omni.data.media_items import (AUDIO_SAMPLE_RATE, MAX_AUDIO_SECONDS, AudioInfo,
                                            ImageInfo, VideoInfo, pack_frames)

_IMAGE_EXTS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
_JPEG_QUALITY = 95
_MEL_HOP = 160
"""Samples per Whisper mel frame at 16 kHz (10 ms)."""


def read_bytes(path: Path) -> bytes:
    """The file's bytes; `missing_file` when it does not exist or cannot be read."""
    try:
        return path.read_bytes()
    except OSError as err:
        raise SkipSample("missing_file", f"{path}: {err.strerror or err}") from None


# ----------------------------------------------------------------------------- images

def load_image(data: bytes, where: str) -> tuple[ImageInfo, bytes]:
    """Check that `data` decodes completely; keep JPEG/PNG/WebP bytes as they are, re-encode
    any other format as PNG. `where` names the image in a skip message."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            ext = _IMAGE_EXTS.get(img.format)
            if ext is None:
                buf = io.BytesIO()
                img.convert("RGBA" if "A" in img.getbands() else "RGB").save(buf, "PNG")
                data, ext = buf.getvalue(), "png"
            return ImageInfo(ext, img.width, img.height), data
    # PIL raises many exception types on damaged input (OSError when truncated, SyntaxError,
    # ValueError, struct.error, DecompressionBombError, ...): all mean "unusable image".
    except Exception as err:  # noqa: BLE001
        raise SkipSample("corrupt_image", f"{where}: {type(err).__name__}: {err}") from None


# ----------------------------------------------------------------------------- audio

def resample(wave: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling of a 1-D signal from `orig_rate` to `target_rate` Hz (float64).

    The same filter and output alignment as `scipy.signal.resample_poly(wave, up, down)` with
    up/down = target/orig in lowest terms: a linear-phase low-pass FIR with cutoff at the lower
    Nyquist rate, 20·max(up, down) + 1 taps, Kaiser window (beta 5), zero padding at the ends.
    Output length ceil(len(wave) · up / down).
    """
    ratio = Fraction(target_rate, orig_rate)
    up, down = ratio.numerator, ratio.denominator
    x = np.asarray(wave, np.float64)
    if up == down == 1:
        return x.copy()
    max_rate = max(up, down)
    half_len = 10 * max_rate
    taps = np.arange(2 * half_len + 1) - half_len
    h = np.sinc(taps / max_rate) / max_rate * np.kaiser(2 * half_len + 1, 5.0)
    h *= up / h.sum()
    # Polyphase form: output n reads input k_n - t through tap phase_n + t·up, t = 0..T-1.
    n_pre_pad = down - half_len % down
    n_pre_remove = (half_len + n_pre_pad) // down
    n_out = -(-len(x) * up // down)
    num_taps = -(-len(h) // up)
    bank = np.zeros(num_taps * up)
    bank[:len(h)] = h
    bank = bank.reshape(num_taps, up)
    padded = np.concatenate([np.zeros(num_taps), x, np.zeros(num_taps)])
    out = np.empty(n_out)
    t = np.arange(num_taps)
    for start in range(0, n_out, 8192):
        n = np.arange(start, min(start + 8192, n_out))
        pos = (n + n_pre_remove) * down - n_pre_pad
        phase, k = pos % up, pos // up
        out[n] = np.sum(bank[t[None, :], phase[:, None]]
                        * padded[k[:, None] - t[None, :] + num_taps], axis=1)
    return out


def load_audio(path: Path, start: float = 0.0, end: float | None = None,
               declared_rate: int | None = None, declared_duration: float | None = None,
               min_rate: int = 8000) -> tuple[np.ndarray, int]:
    """(mono float64 samples, sample rate) of `path` from `start` to `end` seconds (the end of
    the file when None).

    `declared_rate` and `declared_duration` (of the part from `start`) are what a manifest
    says; they are checked, not applied. Skips with `missing_file`, `corrupt_audio`
    (undecodable, empty or non-finite), `wrong_sample_rate` (differs from `declared_rate`, or
    below `min_rate`) or `truncated_audio` (the file ends more than 50 ms before `end` or
    `start + declared_duration`).
    """
    soundfile = _require("soundfile", "soundfile")
    if not path.is_file():
        raise SkipSample("missing_file", f"{path} does not exist")
    try:
        info = soundfile.info(str(path))
    except (soundfile.SoundFileError, RuntimeError) as err:
        raise SkipSample("corrupt_audio", f"{path}: {err}") from None
    rate = info.samplerate
    if declared_rate is not None and declared_rate != rate:
        raise SkipSample("wrong_sample_rate", f"{path}: {rate} Hz, manifest says {declared_rate}")
    if rate < min_rate:
        raise SkipSample("wrong_sample_rate", f"{path}: {rate} Hz is below {min_rate} Hz")
    first = round(start * rate)
    expected_end = end if end is not None else (
        start + declared_duration if declared_duration is not None else None)
    if expected_end is not None and expected_end * rate > info.frames + 0.05 * rate:
        raise SkipSample("truncated_audio", f"{path}: {info.frames / rate:.2f} s, "
                                            f"expected {expected_end:.2f} s")
    stop = info.frames if end is None else min(round(end * rate), info.frames)
    if stop <= first:
        raise SkipSample("corrupt_audio", f"{path}: no samples in [{start}, {end}) s")
    try:
        data, _ = soundfile.read(str(path), start=first, stop=stop, dtype="float64",
                                 always_2d=True)
    except (soundfile.SoundFileError, RuntimeError) as err:
        raise SkipSample("corrupt_audio", f"{path}: {err}") from None
    if len(data) < stop - first - 0.05 * rate:
        raise SkipSample("truncated_audio", f"{path}: read {len(data)} of {stop - first} samples")
    if len(data) == 0 or not np.isfinite(data).all():
        raise SkipSample("corrupt_audio", f"{path}: empty or non-finite samples")
    return data.mean(axis=1), rate


def audio_items(wave: np.ndarray, rate: int, start: float, window_seconds: float
                ) -> list[tuple[AudioInfo, bytes]]:
    """Resample to 16 kHz and cut into consecutive windows of `window_seconds` (the audio
    encoder's window), the last one shorter; each is (AudioInfo, 16-bit FLAC bytes), window k
    starting at `start` + k·window_seconds (`start`: where `wave` begins in its source). A last
    window shorter than one Whisper mel frame (10 ms) is dropped: it would encode to nothing."""
    soundfile = _require("soundfile", "soundfile")
    resampled = resample(wave, rate, AUDIO_SAMPLE_RATE)
    size = round(window_seconds * AUDIO_SAMPLE_RATE)
    starts = list(range(0, len(resampled), size)) or [0]
    if len(starts) > 1 and len(resampled) - starts[-1] < _MEL_HOP:
        starts.pop()
    items = []
    for a in starts:
        clip = np.clip(resampled[a:a + size], -1.0, 32767 / 32768)
        buf = io.BytesIO()
        soundfile.write(buf, clip, AUDIO_SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        items.append((AudioInfo(len(clip), start + a / AUDIO_SAMPLE_RATE, rate), buf.getvalue()))
    return items


AUDIO_WINDOW_HELP = ("audio encoder window in seconds (at most 30): longer audio becomes "
                     "consecutive windows of this length, the last one shorter")
FPS_HELP = "video frames sampled per second"
MAX_FRAMES_HELP = ("most frames per video: a video longer than max_frames / fps seconds is "
                   "sampled at max_frames / duration instead, so the frames span all of it")


def check_window(window_seconds: float, option: str) -> None:
    """ValueError naming `option` unless 0 < window_seconds <= the encoder's 30 s window (the
    loader keeps at most 30 s of a clip)."""
    if not 0 < window_seconds <= MAX_AUDIO_SECONDS:
        raise ValueError(f"{option}={window_seconds} must be in (0, {MAX_AUDIO_SECONDS:g}] seconds "
                         f"(the audio encoder's window), e.g. {MAX_AUDIO_SECONDS:g}")


def check_sampling(fps: float, max_frames: int) -> None:
    """ValueError naming the option unless fps > 0 and max_frames >= 1."""
    if not fps > 0:
        raise ValueError(f"--fps={fps} must be > 0, e.g. 2")
    if max_frames < 1:
        raise ValueError(f"--max-frames={max_frames} must be >= 1, e.g. 64")


# ----------------------------------------------------------------------------- video

def load_video(path: Path, fps: float, max_frames: int, with_audio: bool
               ) -> tuple[tuple[VideoInfo, bytes], tuple[np.ndarray, int] | None]:
    """Frames of `path` sampled at `fps` and, when `with_audio` and the file has an audio track,
    that track as (mono float64 samples, rate).

    Sampling takes the first frame at or after each multiple of 1/fps. A clip longer than
    max_frames/fps (by its container duration) is sampled at max_frames/duration instead, so
    the frames span all of it. Skips with `missing_file` or `corrupt_video` (unreadable, no
    video stream, or no decodable frame).
    """
    av = _require("av", "av")
    if not path.is_file():
        raise SkipSample("missing_file", f"{path} does not exist")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise SkipSample("corrupt_video", f"{path}: no video stream")
            video = container.streams.video[0]
            video.thread_type = "AUTO"
            duration = _duration(container, video)
            if duration is not None and duration * fps > max_frames:
                fps = max_frames / duration
            audio = container.streams.audio[0] if with_audio and container.streams.audio else None
            jpegs, times, size, track = _decode(container, video, audio, fps, max_frames)
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise SkipSample("corrupt_video", f"{path}: {err}") from None
    if not jpegs:
        raise SkipSample("corrupt_video", f"{path}: no decodable video frame")
    info = VideoInfo(len(jpegs), size[0], size[1], fps, tuple(times),
                     duration if duration is not None else times[-1])
    return (info, pack_frames(jpegs, times)), track


def _decode(container, video, audio, fps: float, max_frames: int):
    """One pass over the streams: (JPEG frames, their times, frame size, audio track or None).
    Stops early once the frames are complete and no audio is wanted."""
    import av

    jpegs, times, size, chunks = [], [], None, []
    resampler = av.AudioResampler(format="fltp") if audio is not None else None
    next_time = 0.0
    for frame in container.decode(*[s for s in (video, audio) if s is not None]):
        if isinstance(frame, av.AudioFrame):
            chunks.extend(f.to_ndarray() for f in resampler.resample(frame))
        elif len(jpegs) < max_frames and frame.time is not None and frame.time >= next_time - 1e-6:
            image = frame.to_image()
            buf = io.BytesIO()
            image.save(buf, "JPEG", quality=_JPEG_QUALITY)
            jpegs.append(buf.getvalue())
            times.append(float(frame.time))
            size = image.size
            next_time = (math.floor(frame.time * fps + 1e-6) + 1) / fps
        elif audio is None and len(jpegs) == max_frames:
            break
    if resampler is not None:
        chunks.extend(f.to_ndarray() for f in resampler.resample(None))
    wave = np.concatenate(chunks, axis=1).mean(axis=0) if chunks else np.zeros(0)
    track = (wave.astype(np.float64), audio.codec_context.sample_rate) if wave.size else None
    return jpegs, times, size, track


def _require(module: str, package: str):
    """Import `module`, or fail with the pip command that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"multimodal preprocessing needs {module!r}: pip install {package}"
                          ) from err


def _duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None
