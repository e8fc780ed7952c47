"""Whisper-compatible log-mel features in torch (the audio encoder's input).

    16 kHz mono -> zero-pad / trim to 30 s (480,000 samples)
      -> STFT: n_fft 400, hop 160, periodic Hann window, centred with reflect padding
      -> power spectrum (the last frame dropped: 3000 frames)
      -> Slaney-scale, Slaney-normalised triangular mel filters (0 – 8 kHz), 80 or 128 bins
      -> log10(max(x, 1e-10)), floored at (its maximum - 8), then (x + 4) / 4
    -> [n_mels, 3000]

This is what transformers' WhisperFeatureExtractor computes (tested equal within 1e-4); the
filters are computed here from their definition (`mel_filters`), not copied from it. A clip
shorter than 30 s is padded with silence as Whisper is; `num_valid_frames` gives how many of
the 3000 frames hold audio (the extractor's `attention_mask[::hop]` count).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE      # 480,000
N_FRAMES = N_SAMPLES // HOP_LENGTH           # 3,000

_F_SP = 200.0 / 3          # Slaney scale: linear below 1 kHz, 200/3 Hz per mel
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, np.float64)
    mel = hz / _F_SP
    log_region = hz >= _MIN_LOG_HZ
    mel[log_region] = _MIN_LOG_MEL + np.log(hz[log_region] / _MIN_LOG_HZ) / _LOGSTEP
    return mel


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    hz = mel * _F_SP
    log_region = mel >= _MIN_LOG_MEL
    hz[log_region] = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel[log_region] - _MIN_LOG_MEL))
    return hz


@functools.lru_cache(maxsize=8)
def mel_filters(n_mels: int = 80, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT,
                f_min: float = 0.0, f_max: float = 8000.0) -> np.ndarray:
    """Slaney mel filter bank [1 + n_fft // 2, n_mels] (float64; librosa's `mel(htk=False,
    norm="slaney")`, transformers' `mel_filter_bank(norm="slaney", mel_scale="slaney")`)."""
    fft_freqs = np.linspace(0, sample_rate // 2, 1 + n_fft // 2)
    mels = np.linspace(_hz_to_mel(np.array([f_min]))[0], _hz_to_mel(np.array([f_max]))[0],
                       n_mels + 2)
    edges = _mel_to_hz(mels)                                   # [n_mels + 2]
    widths = np.diff(edges)                                    # [n_mels + 1]
    slopes = edges[None, :] - fft_freqs[:, None]               # [n_freq, n_mels + 2]
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    filters *= 2.0 / (edges[2:n_mels + 2] - edges[:n_mels])    # Slaney area normalisation
    return filters


def pad_or_trim(wave: torch.Tensor, length: int = N_SAMPLES) -> torch.Tensor:
    """Zero-pad or cut the last axis to `length` samples."""
    n = wave.shape[-1]
    if n > length:
        return wave[..., :length]
    if n < length:
        return torch.nn.functional.pad(wave, (0, length - n))
    return wave


def num_valid_frames(num_samples: int) -> int:
    """Frames of the 3000 that hold audio for a clip of `num_samples` samples."""
    return min(N_FRAMES, -(-min(num_samples, N_SAMPLES) // HOP_LENGTH))


def num_mel_frames(num_samples: int, pad_to_30s: bool = True) -> int:
    """Mel frames of a clip that hold audio: those `log_mel` computes from it (at most 3000)."""
    if pad_to_30s:
        return num_valid_frames(num_samples)
    return min(num_samples, N_SAMPLES) // HOP_LENGTH


def log_mel(wave: np.ndarray | torch.Tensor, n_mels: int = 80, pad_to_30s: bool = True
            ) -> torch.Tensor:
    """Whisper log-mel of 16 kHz audio: `[n]` -> `[n_mels, frames]`, `[b, n]` -> `[b, n_mels,
    frames]` (float32). With `pad_to_30s` (Whisper's input) frames is always 3000; otherwise
    the clip (at most 30 s) gives `n // 160` frames, each equal to the padded result's first
    frames only away from the end (the log floor depends on the whole clip)."""
    x = torch.as_tensor(np.asarray(wave, np.float32) if not torch.is_tensor(wave) else wave,
                        dtype=torch.float32)
    if x.dim() not in (1, 2):
        raise ValueError(f"log_mel expects audio [n] or [b, n]; got {tuple(x.shape)}")
    x = pad_or_trim(x) if pad_to_30s else x[..., :N_SAMPLES]
    window = torch.hann_window(N_FFT)
    stft = torch.stft(x, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    power = (stft[..., :-1].abs() ** 2).contiguous()
    filters = torch.from_numpy(mel_filters(n_mels)).to(torch.float32)
    mel = filters.T @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    peak = log_spec.amax(dim=(-2, -1), keepdim=True)
    log_spec = torch.maximum(log_spec, peak - 8.0)
    return (log_spec + 4.0) / 4.0
