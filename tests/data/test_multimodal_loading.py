"""Loading multimodal training data, one dataset at a time (megatron_omni/data/multimodal):
round trips from the data_prep.multimodal tools to the tensors the omni model consumes with every
placeholder expanded to its encoder tokens, TMRoPE ids aligned with the interleaved audio-video
layout, Whisper log-mel, the metadata-only expanded lengths, and a fuzz test of bad samples
written straight into shards. Every input is made here (conftest.py, fuzz_corpus.py)."""
import dataclasses
import io

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from megatron_omni.contract import tmrope
from megatron_omni.contract.media import MediaTokens
from megatron_omni.data.bad_samples import READ_SKIP_REASONS, BadSampleError
from megatron_omni.data.multimodal import features, images as image_io
from megatron_omni.data.multimodal.dataset import LoaderConfig, MultimodalDataset, TextDocuments
from megatron_omni.data.multimodal.packing import collate, fit, pack_row
from megatron_omni.data.sample_format import TURN_END, TURN_START, sample_id
from omni_data_prep.multimodal.conversations import THINK_EMPTY

from ..synthetic_media import special_id
from .conftest import CAPTIONS
from .fuzz_corpus import fuzz_samples, write_folder

SIZE = 32
CONFIG = LoaderConfig(image_size=SIZE, max_video_frames=2,
                      media_tokens=MediaTokens(image_grid=(2, 2), video_grid=(2, 2)))


def attention_mask_from_cu_seqlens(cu_seqlens: torch.Tensor, seq_length: int) -> torch.Tensor:
    """Boolean [L, L] mask, True where query i may attend key j: same segment and j <= i."""
    segment = torch.zeros(seq_length, dtype=torch.long)
    for b in cu_seqlens[1:-1].tolist():
        segment[b:] += 1
    same = segment[:, None] == segment[None, :]
    return same & torch.ones(seq_length, seq_length, dtype=torch.bool).tril()


# ----------------------------------------------------------------------------- round trips


def _check_expanded(item, pieces, tokenizer):
    """`pieces`: (token ids, format mask) per unexpanded run, media runs given as
    ([placeholder] * positions, [0] * positions). Checks tokens, labels, loss mask, media_item."""
    tokens = [t for ids, _ in pieces for t in ids]
    target = [m for _, ms in pieces for m in ms]
    placeholders = {special_id(tokenizer, k) for k in ("image", "video", "audio")}
    assert item["tokens"].tolist() == tokens
    assert item["expanded_length"] == len(tokens)
    assert item["labels"][:-1].tolist() == tokens[1:]
    assert int(item["labels"][-1]) == tokenizer.eod_id
    expected = [float(target[i + 1] and tokens[i] not in placeholders)
                for i in range(len(tokens) - 1)] + [0.0]
    assert item["loss_mask"].tolist() == expected
    assert ((item["media_item"] >= 0) == torch.tensor([t in placeholders for t in tokens])).all()


def test_image_captions_roundtrip(corpus, tokenizer):
    ds = MultimodalDataset(corpus["root"] / "captions", tokenizer, CONFIG)
    assert len(ds) == len(CAPTIONS)
    image = special_id(tokenizer, "image")
    for i, caption in enumerate(CAPTIONS):
        item = ds[i]
        enc = tokenizer.encode(caption)
        _check_expanded(item, [([image] * 4, [0] * 4), (enc + [tokenizer.eod_id],
                                                        [1] * (len(enc) + 1))], tokenizer)
        assert item["media_item"][:4].tolist() == [0] * 4
        assert item["images"].shape == (1, 3, SIZE, SIZE) and item["media_order"] == [("image", 0)]
        if i % 2 == 0:  # png: exactly PIL's bicubic resize, normalised with mean = std = 0.5
            ref = np.asarray(Image.fromarray(corpus["pixels"][i]).resize((SIZE, SIZE),
                                                                         Image.BICUBIC))
            expected = torch.from_numpy(ref.copy()).permute(2, 0, 1).float() / 255 * 2 - 1
            torch.testing.assert_close(item["images"][0], expected, atol=1e-6, rtol=0)
        assert item["spans"] == [tmrope.ImageSpan(2, 2), tmrope.TextSpan(len(enc) + 1)]
        # image (r, c) -> (0, r, c); the text continues at 2 on all axes
        assert item["position_ids"][:, :4].tolist() == [[0] * 4, [0, 0, 1, 1], [0, 1, 0, 1]]
        assert item["position_ids"][:, 4].tolist() == [2, 2, 2]
    assert ds.skip_counts == {}
    assert ds.planned_lengths().tolist() == [ds[i]["expanded_length"] for i in range(len(ds))]


def test_audio_roundtrip_matches_whisper_features(corpus, tokenizer):
    from transformers import WhisperFeatureExtractor

    ds = MultimodalDataset(corpus["root"] / "audio", tokenizer, CONFIG)
    extractor = WhisperFeatureExtractor(feature_size=80)
    audio = special_id(tokenizer, "audio")
    for i, (text, seconds) in enumerate([("a plain tone", 2.0), ("a chirp", 3.0)]):
        item = ds[i]
        n_tokens = CONFIG.media_tokens.audio_tokens(round(seconds * 100))
        assert n_tokens == round(seconds * 12.5)
        enc = tokenizer.encode(text) + [tokenizer.eod_id]
        _check_expanded(item, [([audio] * n_tokens, [0] * n_tokens), (enc, [1] * len(enc))],
                        tokenizer)
        assert item["audio_mel"].shape == (1, 80, 3000)
        assert int(item["audio_frames"][0]) == round(seconds * 100)
        _, _, _, _, meta, media = ds.reader.raw(i)
        wave, _ = soundfile.read(io.BytesIO(media[0]), dtype="float32")
        ref = extractor(wave, sampling_rate=16000, return_tensors="np").input_features[0]
        np.testing.assert_allclose(item["audio_mel"][0].numpy(), ref, atol=1e-4, rtol=0)
        assert item["spans"][0] == tmrope.AudioSpan(n_tokens, 0.08)
        # 80 ms tokens: temporal ids 0, 2, 4, ...
        assert item["position_ids"][0, :n_tokens].tolist() == list(range(0, 2 * n_tokens, 2))
    assert ds.planned_lengths().tolist() == [ds[i]["expanded_length"] for i in range(len(ds))]
    unpadded = MultimodalDataset(corpus["root"] / "audio", tokenizer,
                                 LoaderConfig(pad_audio_to_30s=False))
    assert unpadded.planned_lengths().tolist() == [unpadded[i]["expanded_length"]
                                                   for i in range(len(ds))]


def test_video_with_its_audio_track_interleaves_in_tmrope_chunks(corpus, tokenizer):
    """3 s of video at 1 fps (frames at 0, 1, 2 s) with its 3 s track: chunk 0 (0-2 s) holds
    frames 0 and 1 then 25 audio tokens, chunk 1 frame 2 then the last 13 audio tokens."""
    config = LoaderConfig(image_size=SIZE, max_video_frames=4,
                          media_tokens=MediaTokens(image_grid=(2, 2), video_grid=(2, 2)))
    ds = MultimodalDataset(corpus["root"] / "video", tokenizer, config)
    item = ds[0]
    video, audio = special_id(tokenizer, "video"), special_id(tokenizer, "audio")
    assert item["media_order"] == [("video", 0), ("audio", 0)] and item["audio_video"] == [0]
    assert item["videos"][0].shape == (3, 3, SIZE, SIZE)
    assert item["video_timestamps"][0].tolist() == [0.0, 1.0, 2.0]
    means = item["videos"][0].mean(dim=(1, 2, 3))
    torch.testing.assert_close(means, torch.tensor([0.0, 40.0, 80.0]) / 255 * 2 - 1, atol=0.03,
                               rtol=0)
    span = item["spans"][0]
    assert span == tmrope.AudioVideoSpan(tmrope.VideoSpan(2, 2, (0.0, 1.0, 2.0)),
                                         tmrope.AudioSpan(38, 0.08))
    enc = tokenizer.encode("gray shades") + [tokenizer.eod_id]
    layout = [video] * 8 + [audio] * 25 + [video] * 4 + [audio] * 13
    _check_expanded(item, [(layout, [0] * 50), (enc, [1] * len(enc))], tokenizer)
    assert tmrope.interleave_layout(span) == [("video", 0, 8), ("audio", 0, 25),
                                              ("video", 8, 12), ("audio", 25, 38)]
    assert item["media_item"][:50].tolist() == [0] * 8 + [1] * 25 + [0] * 4 + [1] * 13
    # TMRoPE ids aligned with the tokens: the positions holding <video> carry, in order, the
    # ids of the video alone; those holding <audio> the ids of the track alone.
    ids, tokens = item["position_ids"], item["tokens"]
    alone_v = tmrope.tmrope_position_ids([span.video])
    alone_a = tmrope.tmrope_position_ids([span.audio])
    assert torch.equal(ids[:, tokens == video], alone_v)
    assert torch.equal(ids[:, tokens == audio], alone_a)
    assert ids[0, :50].tolist() == ([0] * 4 + [25] * 4 + list(range(0, 50, 2)) + [50] * 4
                                    + list(range(50, 76, 2)))
    assert ids[:, 50].tolist() == [75] * 3, "text continues after the largest id (74)"
    assert ds.planned_lengths().tolist() == [item["expanded_length"]]


def test_video_without_audio_and_positions_per_item(corpus, tokenizer):
    ds = MultimodalDataset(corpus["root"] / "videos", tokenizer, CONFIG)
    silent, voiced = ds[0], ds[1]
    video, audio = special_id(tokenizer, "video"), special_id(tokenizer, "audio")
    assert silent["media_order"] == [("video", 0)]
    assert isinstance(silent["spans"][0], tmrope.VideoSpan)
    assert silent["tokens"].tolist().count(video) == 2 * 4   # 2 frames kept x 2x2 grid
    assert voiced["tokens"].tolist().count(video) == 2 * 4
    assert voiced["tokens"].tolist().count(audio) == CONFIG.media_tokens.audio_tokens(300)
    assert ds.planned_lengths().tolist() == [silent["expanded_length"], voiced["expanded_length"]]


def test_conversation_loss_mask_is_exactly_the_assistant_turns(corpus, tokenizer):
    ds = MultimodalDataset(corpus["root"] / "sft", tokenizer, CONFIG)
    item = ds[0]
    enc = tokenizer.encode
    image, audio = special_id(tokenizer, "image"), special_id(tokenizer, "audio")
    n_audio = CONFIG.media_tokens.audio_tokens(200)
    pieces = []
    for role, content, target in [("system", enc("Be brief."), False),
                                  ("user", [image] * 4 + [audio] * n_audio
                                   + enc("\nWhat is this?"), False),
                                  ("assistant", enc("A square and a tone."), True),
                                  ("user", enc("Sure?"), False),
                                  ("assistant", enc("Yes."), True)]:
        header, end = enc(f"{TURN_START}{role}\n"), enc(TURN_END)
        header += enc(THINK_EMPTY) if role == "assistant" else []  # short reasoning mode
        pieces.append((header + content + end,
                       [0] * len(header) + [int(target)] * (len(content) + len(end))))
    pieces.append(([tokenizer.eod_id], [0]))
    _check_expanded(item, pieces, tokenizer)
    scored = item["labels"][item["loss_mask"].bool()].tolist()
    assert scored == [t for ids, mask in pieces for t, m in zip(ids, mask) if m]
    assert item["media_order"] == [("image", 0), ("audio", 0)]
    assert item["images"].shape == (1, 3, SIZE, SIZE) and item["audio_mel"].shape == (1, 80, 3000)


def test_text_documents(corpus, tokenizer):
    ds = TextDocuments(corpus["root"] / "text_document", tokenizer, CONFIG)
    item = ds[3]
    tokens = item["tokens"].tolist()
    assert tokens[-1] == tokenizer.eod_id and len(tokens) == ds.planned_lengths()[3]
    assert item["labels"][:-1].tolist() == tokens[1:]
    assert item["loss_mask"].tolist() == [1.0] * (len(tokens) - 1) + [0.0]
    assert item["position_ids"].tolist() == [list(range(len(tokens)))] * 3
    assert item["images"].shape == (0, 3, SIZE, SIZE) and item["media_order"] == []


def test_image_backends(corpus, tokenizer):
    assert image_io.resolve_backend("pil") == "pil"
    assert image_io.resolve_backend("auto") == ("dali" if image_io.dali_available() else "pil")
    if not image_io.dali_available():
        with pytest.raises(ImportError, match="pip install"):
            MultimodalDataset(corpus["root"] / "captions", tokenizer,
                              LoaderConfig(image_backend="dali"))


@pytest.mark.skipif(not image_io.dali_available(), reason="NVIDIA DALI is not installed "
                    "(pip install nvidia-dali-cuda120 runs its CPU pipelines)")
def test_dali_decodes_like_pil(corpus, tokenizer):
    """The DALI path (CPU pipeline here) gives the PIL reference's tensors up to resampling
    differences: same shapes and order; mean absolute difference on the [-1, 1] scale 1e-3 (measured)."""
    pil = MultimodalDataset(corpus["root"] / "captions", tokenizer, CONFIG)
    dali = MultimodalDataset(corpus["root"] / "captions", tokenizer,
                             dataclasses.replace(CONFIG, image_backend="dali"))
    for i in range(len(pil)):
        a, b = pil[i]["images"], dali[i]["images"]
        assert a.shape == b.shape == (1, 3, SIZE, SIZE)
        assert (a - b).abs().mean() < 0.01, (i, (a - b).abs().mean())  # a channel swap: > 0.15


# ----------------------------------------------------------------------------- log-mel

@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_equals_whisper_feature_extractor(n_mels):
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    np.testing.assert_allclose(features.mel_filters(n_mels), extractor.mel_filters, atol=1e-12)
    rng = np.random.default_rng(n_mels)
    t = np.arange(31 * 16000) / 16000
    waves = [(0.3 * rng.standard_normal(16000)).astype(np.float32),          # 1 s noise
             (0.5 * np.sin(2 * np.pi * (200 * t + 100 * t * t))).astype(np.float32),  # 31 s
             np.zeros(8000, np.float32)]                                      # silence
    for wave in waves:
        ref = extractor(wave, sampling_rate=16000, return_tensors="np").input_features[0]
        ours = features.log_mel(wave, n_mels).numpy()
        assert ours.shape == (n_mels, 3000)
        np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
        numpy_ref = extractor._np_extract_fbank_features(
            features.pad_or_trim(torch.from_numpy(wave)).numpy()[None], "cpu")[0]
        np.testing.assert_allclose(ours, numpy_ref, atol=1e-4, rtol=0)
    batch = features.log_mel(np.stack([waves[0], waves[1][:16000]]), n_mels)
    np.testing.assert_allclose(batch[0].numpy(), features.log_mel(waves[0], n_mels).numpy(),
                               atol=1e-6)
    assert features.num_valid_frames(16001) == 101 and features.num_valid_frames(10**7) == 3000


def _comparable(item):
    return {k: v for k, v in item.items() if k not in ("id", "shard")}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        elif k == "videos":
            assert all(torch.equal(x, y) for x, y in zip(a[k], b[k]))
        elif k == "video_timestamps":
            assert all(np.array_equal(x, y) for x, y in zip(a[k], b[k]))
        else:
            assert a[k] == b[k], k


def test_fuzz_bad_samples_are_counted_and_good_ones_unchanged(tmp_path, tokenizer):
    good, bad = fuzz_samples(tokenizer)
    assert set(bad) == set(READ_SKIP_REASONS) and all(len(v) >= 200 for v in bad.values())
    mixed = [(s, None) for s in good]
    mixed += [(s, reason) for reason, samples in bad.items() for s in samples]
    order = np.random.default_rng(1).permutation(len(mixed))
    mixed = [mixed[i] for i in order]
    goods = iter(good)  # good samples keep their relative order among the bad ones
    mixed = [(next(goods), None) if r is None else (s, r) for s, r in mixed]
    write_folder(tmp_path / "clean", good)
    write_folder(tmp_path / "mixed", [s for s, _ in mixed])
    config = LoaderConfig(image_size=8, max_video_frames=4, n_mels=80,
                          media_tokens=MediaTokens((2, 2), (2, 2)))
    clean = MultimodalDataset(tmp_path / "clean", tokenizer, config)
    expected = [_comparable(clean[i]) for i in range(len(clean))]
    assert clean.skip_counts == {}

    ds = MultimodalDataset(tmp_path / "mixed", tokenizer, config)
    got = []
    for i, (_, reason) in enumerate(mixed):
        item = ds[i]
        assert (item is None) == (reason is not None), (i, reason, dict(ds.skip_counts))
        if item is not None:
            got.append(_comparable(item))
    assert dict(ds.skip_counts) == {r: len(v) for r, v in bad.items()}
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        _assert_same(a, b)

    strict = MultimodalDataset(tmp_path / "mixed", tokenizer, config, strict=True)
    first_bad = next(i for i, (_, r) in enumerate(mixed) if r is not None)
    key = sample_id(first_bad // 300, first_bad % 300)
    with pytest.raises(BadSampleError, match=rf"shard-0000\d\.tar key {key}: "
                                             rf"{mixed[first_bad][1]}"):
        strict[first_bad]


def test_truncated_tar_is_missing_members_not_a_crash(tmp_path, tokenizer):
    good, _ = fuzz_samples(tokenizer)
    write_folder(tmp_path / "f", good[:20])
    tar = tmp_path / "f" / "shard-00000.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[:len(data) // 2])
    ds = MultimodalDataset(tmp_path / "f", tokenizer, LoaderConfig(image_size=8))
    items = [ds[i] for i in range(len(ds))]
    assert items[0] is not None and items[-1] is None
    assert sum(ds.skip_counts.values()) == sum(i is None for i in items) >= 5
    assert set(ds.skip_counts) <= {"missing_member", "corrupt_image", "bad_metadata"}




# ----------------------------------------------------------------------------- packing

def test_packing_keeps_expanded_samples_apart(corpus, tokenizer):
    folders = [MultimodalDataset(corpus["root"] / name, tokenizer, CONFIG)
               for name in ("captions", "sft", "audio", "videos")]
    items = [d[i] for d in folders for i in range(len(d))]
    planned = [n for d in folders for n in d.planned_lengths().tolist()]
    assert planned == [it["expanded_length"] for it in items]
    seq_length = 96
    rows, row, used = [], [], 0
    for item in items:       # greedy by expanded length, as the loader plans
        item = fit(item, seq_length)
        if row and used + item["expanded_length"] > seq_length:
            rows.append(row)
            row, used = [], 0
        row.append(item)
        used += item["expanded_length"]
    rows.append(row)
    assert len(rows) < len(items), "several samples share a row"
    packed = [pack_row(r, seq_length, tokenizer.pad_id, tmrope=True) for r in rows]
    batch = collate(packed, SIZE, 80)
    assert batch.tokens.shape == (len(rows), seq_length)
    assert batch.position_ids.shape == (len(rows), 3, seq_length)
    assert batch.sample_ids == [it["id"] for it in items]
    placeholders = {k: special_id(tokenizer, k) for k in ("image", "video", "audio")}
    for kind, tokens_per_item in [("image", 4), ("audio", None)]:
        n = int((batch.tokens == placeholders[kind]).sum())
        if kind == "image":
            assert n == batch.images.shape[0] * tokens_per_item
        else:
            assert n == sum(CONFIG.media_tokens.audio_tokens(int(f))
                            for f in batch.audio_frames)
    assert len(batch.videos) == 2 and batch.audio_mel.shape[0] == 4
    cu = batch.cu_seqlens.tolist()
    at = 0
    for b, (row, seq) in enumerate(zip(rows, packed)):
        bounds = seq["cu_seqlens"].tolist()
        mask = attention_mask_from_cu_seqlens(seq["cu_seqlens"], seq_length)
        for (a, e), item in zip(zip(bounds[:-1], bounds[1:]), row):
            n = item["expanded_length"]
            assert e - a == n
            assert not mask[a:e, :a].any() and not mask[a:e, e:].any()
            assert mask[a:e, a:e].equal(torch.ones(n, n, dtype=torch.bool).tril())
            # every label is its own sample's next token; the last one predicts nothing
            assert batch.labels[b, a:e - 1].tolist() == item["tokens"][1:].tolist()
            assert batch.loss_mask[b, a:e].tolist() == item["loss_mask"].tolist()
            assert batch.loss_mask[b, e - 1] == 0
            assert torch.equal(batch.position_ids[b, :, a:e], item["position_ids"])
            assert (batch.sample_index[b, a:e] == at).all()
            at += 1
        tail = bounds[len(row)]
        assert (batch.sample_index[b, tail:] == -1).all()
        assert (batch.loss_mask[b, tail:] == 0).all()
        assert cu[cu.index(b * seq_length):][:len(bounds)] == [x + b * seq_length for x in bounds]
    assert batch.sample_modality == (["image"] * 4 + ["cross"] + ["audio"] * 2
                                        + ["video", "cross"])


def test_fit_never_splits_a_media_item(corpus, tokenizer):
    config = LoaderConfig(image_size=SIZE, max_video_frames=4,
                          media_tokens=MediaTokens(image_grid=(2, 2), video_grid=(2, 2)))
    item = MultimodalDataset(corpus["root"] / "video", tokenizer, config)[0]
    # cut at 40: inside the first audio run of the interleaved span -> the whole span goes
    assert fit(item, 40) is None
    conversation = MultimodalDataset(corpus["root"] / "sft", tokenizer, CONFIG)[0]
    first_media = int((conversation["media_item"] >= 0).nonzero()[0])
    audio_start = int((conversation["media_item"] == 1).nonzero()[0])
    cut = fit(conversation, audio_start + 3)   # inside the audio: keep the image only
    assert cut["expanded_length"] == audio_start
    assert cut["media_order"] == [("image", 0)] and cut["audio_mel"].shape[0] == 0
    assert cut["images"].shape[0] == 1 and cut["loss_mask"][-1] == 0
    assert fit(conversation, first_media + 2)["images"].shape[0] == 0
    text_cut = fit(conversation, conversation["expanded_length"] - 1)
    assert text_cut["expanded_length"] == conversation["expanded_length"] - 1
