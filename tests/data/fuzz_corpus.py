"""Sample-format folders written straight into shards (no preprocessing tools), and malformed
samples of every skip reason, for the fuzz tests of the multimodal loader."""
import collections
import io
import json
import tarfile

import numpy as np
import soundfile
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
from PIL import Image

from megatron_omni.data.media_items import (AudioInfo, ImageInfo, VideoInfo, media_field,
                                            media_from_json, pack_frames, write_media_sizes)
from megatron_omni.data.sample_format import (LOSS_MASK_SUFFIX, MEDIA_SIZES_SUFFIX, Manifest,
                                              SampleMeta, ShardInfo, sample_id, shard_name)

from ..synthetic_media import special_id


def write_folder(folder, samples, dtype=np.uint16):
    """A sample_format folder of one shard per 300 samples written directly. Each sample is
    (tokens, mask, meta_json (dict or raw bytes or None), {field: bytes}); `<shard>.media.json`
    lists the media of the dict metas (none for the others)."""
    folder.mkdir(parents=True)
    shards = []
    for s, start in enumerate(range(0, len(samples), 300)):
        name = shard_name(s)
        tokens_b = IndexedDatasetBuilder(str(folder / f"{name}.bin"), dtype=dtype)
        masks_b = IndexedDatasetBuilder(str(folder / f"{name}{LOSS_MASK_SUFFIX}.bin"),
                                        dtype=np.uint8)
        chunk = samples[start:start + 300]
        write_media_sizes(folder / f"{name}{MEDIA_SIZES_SUFFIX}",
                          [[media_from_json(m) for m in meta["media"]]
                           if isinstance(meta, dict) else [] for _, _, meta, _ in chunk])
        with tarfile.open(folder / f"{name}.tar", "w") as tar:
            for d, (tokens, mask, meta, members) in enumerate(chunk):
                key = sample_id(s, d)
                fields = dict(members)
                if meta is not None:
                    fields = {"json": meta if isinstance(meta, bytes) else
                              json.dumps(dict(meta, id=key)).encode(), **fields}
                for field, data in fields.items():
                    info = tarfile.TarInfo(f"{key}.{field}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                tokens_b.add_document(np.asarray(tokens), [len(tokens)])
                masks_b.add_document(np.asarray(mask), [len(mask)])
        tokens_b.finalize(str(folder / f"{name}.idx"))
        masks_b.finalize(str(folder / f"{name}{LOSS_MASK_SUFFIX}.idx"))
        shards.append(ShardInfo(name, "fuzz", 0, 0, len(chunk), len(chunk), 0, 0, {}, {}, {},
                                "x"))
    manifest = Manifest("fuzz", ["fuzz"], {"path": "", "sha256": "", "vocab_size": 400},
                        np.dtype(dtype).name, {}, shards)
    (folder / "manifest.json").write_text(json.dumps(manifest.to_json()))


def _png(h, w, v):
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), v, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(h, w, v):
    buf = io.BytesIO()
    Image.fromarray((np.arange(h * w * 3).reshape(h, w, 3) * v % 256).astype(np.uint8)).save(
        buf, "JPEG")
    return buf.getvalue()


def _flac(wave, rate=16000):
    buf = io.BytesIO()
    soundfile.write(buf, wave, rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _meta(*infos):
    return SampleMeta("", "fuzz", list(infos), {}).to_json()


def fuzz_samples(tokenizer):
    """(good samples, {reason: bad samples}); 200+ bad samples per reason."""
    rng = np.random.default_rng(0)
    enc, eod = tokenizer.encode, tokenizer.eod_id
    image, audio, video = (special_id(tokenizer, k) for k in ("image", "audio", "video"))

    def image_sample(data, info, text="a picture", placeholders=1):
        t = [image] * placeholders + enc(text) + [eod]
        return (t, [0] * placeholders + [1] * (len(t) - placeholders), _meta(info),
                {media_field(0, info): data})

    def audio_sample(data, info, text="a sound"):
        t = [audio] + enc(text) + [eod]
        return t, [0] + [1] * (len(t) - 1), _meta(info), {media_field(0, info): data}

    def video_sample(data, info, text="a clip"):
        t = [video] + enc(text) + [eod]
        return t, [0] + [1] * (len(t) - 1), _meta(info), {media_field(0, info): data}

    wave = (0.4 * np.sin(np.arange(1600) / 5)).astype(np.float32)
    frames = [_jpeg(8, 8, 3), _jpeg(8, 8, 5)]
    vinfo = VideoInfo(2, 8, 8, 1.0, (0.0, 1.0), 2.0)
    good = [image_sample(_png(8, 8, 10 * i), ImageInfo("png", 8, 8), f"good {i}")
            for i in range(20)]
    good += [audio_sample(_flac(wave * (1 + i) / 4), AudioInfo(1600, 0.0, 16000), f"tone {i}")
             for i in range(3)]
    good += [video_sample(pack_frames(frames, (0.0, 1.0)), vinfo, f"clip {i}") for i in range(3)]

    bad = collections.defaultdict(list)
    png, jpg = _png(16, 16, 7), _jpeg(16, 16, 7)
    for i in range(200):
        cut = rng.integers(20, len(jpg) - 20)
        data = (jpg[:cut] if i % 2 else png[:8] + rng.bytes(len(png) - 8))
        bad["corrupt_image"].append(image_sample(data, ImageInfo("jpg", 16, 16)))
        bad["corrupt_audio"].append(audio_sample(b"fLaC" + rng.bytes(200),
                                                 AudioInfo(1600, 0.0, 16000)))
        short = _flac(wave[:rng.integers(100, 1500)])
        bad["truncated_audio"].append(audio_sample(short, AudioInfo(1600, 0.0, 16000)))
        rate = (8000, 22050, 44100)[i % 3]
        info = (AudioInfo(1600, 0.0, rate) if i % 2 else
                AudioInfo(1600, 0.0, rate, sample_rate=rate))
        bad["wrong_sample_rate"].append(audio_sample(_flac(wave, rate), info))
        kind = i % 3
        vdata = (rng.bytes(300) if kind == 0 else
                 pack_frames([frames[0], frames[1][:len(frames[1]) // 3]], (0.0, 1.0))
                 if kind == 1 else pack_frames(frames[:1], (0.0,)))
        bad["corrupt_video"].append(video_sample(vdata, vinfo))
        t, m, meta, members = image_sample(png, ImageInfo("png", 16, 16))
        bad["missing_member"].append((t, m, meta if i % 4 else None,
                                      {} if i % 4 else members))
        bad["empty_text"].append(([image, eod], [0, 1], _meta(ImageInfo("png", 16, 16)),
                                  {media_field(0, ImageInfo("png", 16, 16)): png}))
        mismatch = (image_sample(png, ImageInfo("png", 16, 16), placeholders=2) if i % 2 else
                    audio_sample(png, ImageInfo("png", 16, 16)))
        bad["placeholder_mismatch"].append(mismatch)
        garbage = [b"{not json", json.dumps({"id": "wrong"}).encode(), b"\xff\xfe"][i % 3]
        bad["bad_metadata"].append((t, m, garbage, members))
    return good, bad
