"""Loading multimodal training data (megatron_omni/data/multimodal): round trips from the
data_prep.multimodal tools to the tensors the omni model consumes, Whisper log-mel, phase mixes
and the progressive schedule, packing, DP-equal micro-batches, exact resume, and a fuzz test of
bad samples written straight into shards. Every input is made here."""
import collections
import io
import json
import tarfile

import numpy as np
import pytest
import soundfile
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
from PIL import Image

from megatron_omni.data.multimodal import features, images as image_io
from megatron_omni.data.multimodal.dataset import (SKIP_REASONS, BadSampleError, LoaderConfig,
                                                   MediaTokens, MultimodalDataset)
from megatron_omni.data.multimodal.mixture import (PROGRESSIVE_SCHEDULE, MixCounter,
                                                   MixtureDataset, MixtureSampler, Schedule)
from megatron_omni.data.multimodal.packing import (EqualMicroBatchSampler, PackedDataset,
                                                   PaddedView, attention_mask_from_cu_seqlens,
                                                   pack_lengths, padded_item)
from megatron_omni.data.sample_format import (LOSS_MASK_SUFFIX, TURN_END, TURN_START, AudioInfo,
                                              ImageInfo, Manifest, SampleMeta, ShardInfo,
                                              VideoInfo, media_field, pack_frames, sample_id,
                                              shard_name)
from megatron_omni.data.tokenizer import load_tokenizer
from megatron_omni.models.positions import tmrope
from omni_data_prep.make_demo_corpus import make_demo_corpus
from omni_data_prep.multimodal import (audio_transcript, conversations, image_caption,
                                       video_caption)
from omni_data_prep.train_tokenizer import train_tokenizer

from ..synthetic_media import make_image, make_tone, make_video, special_id, write_jsonl

SIZE = 32
CONFIG = LoaderConfig(image_size=SIZE, max_video_frames=2,
                      media_tokens=MediaTokens(image_grid=(2, 2), video_grid=(2, 2)))
CAPTIONS = ["a red square on white", "two  spaces and ünïcödé", "the third one", "number four"]


# ----------------------------------------------------------------------------- corpus

@pytest.fixture(scope="module")
def spm_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("spm")
    corpus = make_demo_corpus(root / "corpus.jsonl", num_docs=300, seed=0)
    return train_tokenizer([str(corpus)], str(root / "tok"), vocab_size=400, threads=1)


@pytest.fixture(scope="module")
def tokenizer(spm_path):
    return load_tokenizer(spm_path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, spm_path):
    """Folders made by the preprocessing tools: captions, audio, video, conversation."""
    root = tmp_path_factory.mktemp("corpus")
    pixels = [make_image(root / f"{i}.{('png', 'jpg')[i % 2]}", 20 + 3 * i, 40, 30 * i,
                         y_step=4, x_step=3)
              for i in range(len(CAPTIONS))]
    image_caption.prepare_image_captions(
        [write_jsonl(root / "cap.jsonl", [{"image_path": f"{i}.{('png', 'jpg')[i % 2]}",
                                      "caption": c} for i, c in enumerate(CAPTIONS)])],
        spm_path, root / "captions", samples_per_shard=3, progress=False)
    make_tone(root / "a.wav", 2.0, 16000)
    make_tone(root / "b.wav", 3.0, 44100, chirp=True)
    audio_transcript.prepare_audio_transcripts(
        [write_jsonl(root / "asr.jsonl", [{"audio_path": "a.wav", "transcript": "a plain tone"},
                                     {"audio_path": "b.wav", "transcript": "a chirp"}])],
        spm_path, root / "audio", progress=False)
    make_video(root / "v.mp4", 3.0, fps=5, size=(24, 32), audio_rate=16000, shade_step=40)
    video_caption.prepare_video_captions(
        [write_jsonl(root / "v.jsonl", [{"video_path": "v.mp4", "caption": "gray shades"}])],
        spm_path, root / "video", progress=False)
    record = {"images": ["0.png"], "audio": "a.wav", "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "<image><audio>\nWhat is this?"},
        {"from": "gpt", "value": "A square and a tone."},
        {"from": "human", "value": "Sure?"},
        {"from": "gpt", "value": "Yes."}]}
    conversations.prepare_conversations([write_jsonl(root / "sft.jsonl", [record])], spm_path,
                                        root / "sft", progress=False)
    return {"root": root, "pixels": pixels}


# ----------------------------------------------------------------------------- round trips

def _check_shift(item, format_mask, tokenizer):
    tokens = item["tokens"]
    assert item["labels"][:-1].tolist() == tokens[1:].tolist()
    assert int(item["labels"][-1]) == tokenizer.eod_id
    assert item["loss_mask"][:-1].tolist() == [float(m) for m in format_mask[1:]]
    assert item["loss_mask"][-1] == 0


def test_image_captions_roundtrip(corpus, tokenizer):
    ds = MultimodalDataset(corpus["root"] / "captions", tokenizer, CONFIG)
    assert len(ds) == len(CAPTIONS)
    image = special_id(tokenizer, "image")
    for i, caption in enumerate(CAPTIONS):
        item = ds[i]
        enc = tokenizer.encode(caption)
        assert item["tokens"].tolist() == [image] + enc + [tokenizer.eod_id]
        _check_shift(item, [0] + [1] * (len(enc) + 1), tokenizer)
        assert item["images"].shape == (1, 3, SIZE, SIZE) and item["media_order"] == [("image", 0)]
        if i % 2 == 0:  # png: exactly PIL's bicubic resize, normalised with mean = std = 0.5
            ref = np.asarray(Image.fromarray(corpus["pixels"][i]).resize((SIZE, SIZE),
                                                                         Image.BICUBIC))
            expected = torch.from_numpy(ref.copy()).permute(2, 0, 1).float() / 255 * 2 - 1
            torch.testing.assert_close(item["images"][0], expected, atol=1e-6, rtol=0)
        assert item["spans"] == [tmrope.ImageSpan(2, 2), tmrope.TextSpan(len(enc) + 1)]
        assert item["position_ids"].shape == (3, 4 + len(enc) + 1)
        assert item["expanded_length"] == 4 + len(enc) + 1
    assert ds.skip_counts == {}


def test_audio_roundtrip_matches_whisper_features(corpus, tokenizer):
    from transformers import WhisperFeatureExtractor

    ds = MultimodalDataset(corpus["root"] / "audio", tokenizer, CONFIG)
    extractor = WhisperFeatureExtractor(feature_size=80)
    audio = special_id(tokenizer, "audio")
    for i, (text, seconds) in enumerate([("a plain tone", 2.0), ("a chirp", 3.0)]):
        item = ds[i]
        assert item["tokens"].tolist() == [audio] + tokenizer.encode(text) + [tokenizer.eod_id]
        assert item["audio_mel"].shape == (1, 80, 3000)
        assert int(item["audio_frames"][0]) == round(seconds * 100)
        _, _, _, _, meta, media = ds.raw(i)
        wave, _ = soundfile.read(io.BytesIO(media[0]), dtype="float32")
        ref = extractor(wave, sampling_rate=16000, return_tensors="np").input_features[0]
        np.testing.assert_allclose(item["audio_mel"][0].numpy(), ref, atol=1e-4, rtol=0)
        n_tokens = CONFIG.media_tokens.audio_tokens(round(seconds * 100))
        assert n_tokens == round(seconds * 12.5)
        assert item["spans"][0] == tmrope.AudioSpan(n_tokens, 0.08)


def test_video_roundtrip_with_its_audio_track(corpus, tokenizer):
    ds = MultimodalDataset(corpus["root"] / "video", tokenizer, CONFIG)
    item = ds[0]
    video, audio = special_id(tokenizer, "video"), special_id(tokenizer, "audio")
    assert item["tokens"].tolist() == [video, audio] + tokenizer.encode("gray shades") + [
        tokenizer.eod_id]
    assert item["media_order"] == [("video", 0), ("audio", 0)] and item["audio_video"] == [0]
    # 3 s at 1 fps = 3 stored frames, max_video_frames=2 keeps frames 0 and 1.
    assert item["videos"][0].shape == (2, 3, SIZE, SIZE)
    assert item["video_timestamps"][0].tolist() == [0.0, 1.0]
    means = item["videos"][0].mean(dim=(1, 2, 3))
    torch.testing.assert_close(means, torch.tensor([0.0, 40.0]) / 255 * 2 - 1, atol=0.03, rtol=0)
    av_span = item["spans"][0]
    assert isinstance(av_span, tmrope.AudioVideoSpan)
    assert av_span.video == tmrope.VideoSpan(2, 2, (0.0, 1.0))
    assert item["position_ids"].shape == (3, item["expanded_length"])


def test_conversation_loss_mask_is_exactly_the_assistant_turns(corpus, tokenizer):
    ds = MultimodalDataset(corpus["root"] / "sft", tokenizer, CONFIG)
    item = ds[0]
    enc = tokenizer.encode
    image, audio = special_id(tokenizer, "image"), special_id(tokenizer, "audio")
    tokens, mask = [], []
    for role, content, target in [("system", enc("Be brief."), False),
                                  ("user", [image, audio] + enc("\nWhat is this?"), False),
                                  ("assistant", enc("A square and a tone."), True),
                                  ("user", enc("Sure?"), False),
                                  ("assistant", enc("Yes."), True)]:
        header, end = enc(f"{TURN_START}{role}\n"), enc(TURN_END)
        tokens += header + content + end
        mask += [0] * len(header) + [int(target)] * (len(content) + len(end))
    tokens.append(tokenizer.eod_id)
    mask.append(0)
    assert item["tokens"].tolist() == tokens
    _check_shift(item, mask, tokenizer)
    scored = item["labels"][item["loss_mask"].bool()].tolist()
    assert scored == [t for t, m in zip(tokens, mask) if m]
    assert item["media_order"] == [("image", 0), ("audio", 0)]
    assert item["images"].shape == (1, 3, SIZE, SIZE) and item["audio_mel"].shape == (1, 80, 3000)


def test_image_backends(corpus, tokenizer):
    assert image_io.resolve_backend("pil") == "pil"
    assert image_io.resolve_backend("auto") == ("dali" if image_io.dali_available() else "pil")
    if not image_io.dali_available():
        with pytest.raises(ImportError, match="pip install"):
            MultimodalDataset(corpus["root"] / "captions", tokenizer,
                              LoaderConfig(image_backend="dali"))


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


# ----------------------------------------------------------------------------- mixes

def test_phase3_mix_and_progressive_schedule_proportions():
    phase3 = Schedule.from_config({"phase": 3})
    sampler = MixtureSampler(phase3, samples_per_step=64, seed=1)
    counts = collections.Counter(sampler.modality(g) for g in range(10_000))
    for m, w in {"text": 0.40, "image_text": 0.25, "video": 0.15, "audio": 0.10,
                 "cross_modal": 0.10}.items():
        assert abs(counts[m] / 10_000 - w) < 0.02, (m, counts)

    stages = [dict(s, start_step=100 * i) for i, s in enumerate(PROGRESSIVE_SCHEDULE)]
    schedule = Schedule.from_config({"stages": stages})
    sps = 100  # 100 steps x 100 samples = 10,000 samples per stage
    sampler = MixtureSampler(schedule, samples_per_step=sps, seed=3)
    for i, stage in enumerate(stages):
        first = stage["start_step"] * sps
        counts = collections.Counter(sampler.modality(g) for g in range(first, first + 10_000))
        total = sum(stage["mix"].values())
        for m in set(counts) | set(stage["mix"]):
            assert abs(counts[m] / 10_000 - stage["mix"].get(m, 0) / total) < 0.02, (i, m)
        # The switch is exactly at the configured step: the last sample of the previous step
        # still belongs to the previous stage, the first of this step to this one.
        if i:
            assert sampler.stage_of(first - 1) == i - 1 and sampler.stage_of(first) == i
            new = set(stage["mix"]) - set(stages[i - 1]["mix"])
            before = {sampler.modality(g) for g in range(first - 10_000, first)}
            assert not new & before
            assert new <= {sampler.modality(g) for g in range(first, first + sps)}
    # Ordinals: the k-th sample of a modality gets ordinal k, across stage switches.
    seen = collections.Counter()
    for g in range(25_000):
        m, k = sampler.assign(g)
        assert k == seen[m], (g, m)
        seen[m] += 1


class _ListDataset(torch.utils.data.Dataset):
    """Items {tokens, labels, loss_mask, name}; indices in `bad` are skipped (None)."""

    def __init__(self, name, n, bad=(), length=lambda i: 3 + i % 5):
        self.name, self.n, self.bad, self.length = name, n, set(bad), length
        self.skip_counts = collections.Counter()

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i in self.bad:
            self.skip_counts["corrupt_image"] += 1
            return None
        n = self.length(i)
        tokens = torch.arange(n) + 1000 * (hash(self.name) % 7) + 10 * i
        labels = torch.cat([tokens[1:], torch.tensor([0])])
        mask = torch.ones(n)
        mask[-1] = 0
        return {"tokens": tokens, "labels": labels, "loss_mask": mask, "name": f"{self.name}{i}"}


def _mixture(seed=5, bad=()):
    datasets = {m: _ListDataset(m, 50 + 7 * i, bad=bad if m == "image_text" else ())
                for i, m in enumerate(["text", "image_text", "video", "audio", "cross_modal"])}
    schedule = Schedule.from_config([dict(s, start_step=3 * i)
                                     for i, s in enumerate(PROGRESSIVE_SCHEDULE)])
    return MixtureDataset(datasets, MixtureSampler(schedule, samples_per_step=16, seed=seed),
                          length=10**6)


def test_mixture_walks_each_dataset_once_per_epoch_and_skips_bad_items():
    mix = _mixture(bad={3, 4, 10})
    names = collections.defaultdict(list)
    counter = MixCounter()
    for g in range(400):
        item = mix[g]
        names[item["modality"]].append(item["name"])
        counter.update([item])
    text = names["text"]
    n = len(mix.datasets["text"])
    assert len(set(text[:n])) == n, "every text item once in the first epoch"
    assert not {"image_text3", "image_text4", "image_text10"} & set(names["image_text"])
    assert counter.skips["corrupt_image"] >= 3 and sum(counter.counts.values()) == 400
    assert set(counter.log_dict()) >= {"data/mix/text", "data/skipped/corrupt_image"}


# ----------------------------------------------------------------------------- packing

def test_packing_keeps_samples_apart(corpus, tokenizer):
    items = [MultimodalDataset(corpus["root"] / name, tokenizer, CONFIG)
             for name in ("captions", "sft", "audio")]
    concat = torch.utils.data.ConcatDataset(items)
    dataset = [concat[i] for i in range(len(concat))]  # read once (log-mel is the slow part)
    seq_length = 48
    lengths = [len(s["tokens"]) for s in dataset]
    assert lengths == [n for d in items for n in d.token_lengths().tolist()]
    packed = PackedDataset(dataset, seq_length, tokenizer.pad_id)
    assert packed.bins == PackedDataset(concat, seq_length, tokenizer.pad_id, lengths).bins
    assert [i for b in packed.bins for i in b] == list(range(len(dataset)))
    assert len(packed) < len(dataset), "several samples share a sequence"
    for b, members in enumerate(packed.bins):
        seq = packed[b]
        cu = seq["cu_seqlens"].tolist()
        assert cu[0] == 0 and cu[-1] == seq_length and seq["num_samples"] == len(members)
        mask = attention_mask_from_cu_seqlens(seq["cu_seqlens"], seq_length)
        for (a, e), i in zip(zip(cu[:-1], cu[1:]), members):
            sample = dataset[i]
            n = min(lengths[i], seq_length)
            assert e - a == n
            # attention stays inside [a, e): nothing before a, causal inside
            assert not mask[a:e, :a].any() and not mask[a:e, e:].any()
            assert mask[a:e, a:e].equal(torch.ones(n, n, dtype=torch.bool).tril())
            # labels are the sample's own next tokens; its last token predicts its own <eod>
            assert seq["labels"][a:e - 1].tolist() == sample["tokens"][1:n].tolist()
            if n == lengths[i]:
                assert int(seq["labels"][e - 1]) == tokenizer.eod_id
                assert seq["loss_mask"][a:e].tolist() == sample["loss_mask"].tolist()
            assert seq["loss_mask"][e - 1] == 0 and seq["position_ids"][a] == 0
        assert (seq["loss_mask"][cu[len(members)]:] == 0).all()
    assert pack_lengths([5, 5, 5, 9, 1], 10) == [[0, 1], [2], [3, 4]]


@pytest.mark.parametrize("drop_last", [True, False])
def test_every_dp_rank_gets_the_same_number_of_micro_batches(drop_last):
    total, mbs, gbs, dp = 37, 2, 8, 2
    samplers = [EqualMicroBatchSampler(total, mbs, gbs, r, dp, drop_last=drop_last)
                for r in range(dp)]
    batches = [list(s) for s in samplers]
    assert len(batches[0]) == len(batches[1]) == len(samplers[0])
    assert len(batches[0]) == (4 * 2 if drop_last else 5 * 2)
    flat = sorted(i for b in batches for mb in b for i in mb)
    assert flat == list(range(32 if drop_last else 40))
    if not drop_last:
        data = _ListDataset("x", total)
        pad = padded_item(data, samplers[1], 39)
        assert pad["is_padding"] and pad["loss_mask"].sum() == 0
        assert pad["name"] == "x2"
        view = PaddedView(data, samplers[0])
        loader = torch.utils.data.DataLoader(view, batch_sampler=samplers[1],
                                             collate_fn=lambda b: [x["name"] for x in b])
        assert list(loader)[-1] == ["x1", "x2"]


def test_resume_after_restart_equals_uninterrupted_run():
    seq_length, mbs, gbs, dp, steps, k = 32, 2, 8, 2, 6, 4

    def run(consumed, rank):
        mix = _mixture(seed=11, bad={5})
        lengths = [len(mix[g]["tokens"]) for g in range(200)]
        packed = PackedDataset(mix, seq_length, pad_id=0, lengths=lengths)
        sampler = EqualMicroBatchSampler(len(packed), mbs, gbs, rank, dp, consumed=consumed)
        out = []
        for mb in sampler:
            out.append([(packed[i]["name"], packed[i]["tokens"].tolist()) for i in mb])
            if len(out) == (steps * gbs - consumed) // gbs * (gbs // dp // mbs):
                break
        return out

    per_step = gbs // dp // mbs
    for rank in range(dp):
        full = run(0, rank)
        resumed = run(k * gbs, rank)
        assert resumed == full[k * per_step:]
    assert run(0, 0) != run(0, 1)


# ----------------------------------------------------------------------------- bad samples

def _write_folder(folder, samples, dtype=np.uint16):
    """A sample_format folder of one shard per 300 samples written directly. Each sample is
    (tokens, mask, meta_json (dict or raw bytes or None), {field: bytes})."""
    folder.mkdir(parents=True)
    shards = []
    for s, start in enumerate(range(0, len(samples), 300)):
        name = shard_name(s)
        tokens_b = IndexedDatasetBuilder(str(folder / f"{name}.bin"), dtype=dtype)
        masks_b = IndexedDatasetBuilder(str(folder / f"{name}{LOSS_MASK_SUFFIX}.bin"),
                                        dtype=np.uint8)
        chunk = samples[start:start + 300]
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


def _fuzz_samples(tokenizer):
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
    good, bad = _fuzz_samples(tokenizer)
    assert set(bad) == set(SKIP_REASONS) and all(len(v) >= 200 for v in bad.values())
    mixed = [(s, None) for s in good]
    mixed += [(s, reason) for reason, samples in bad.items() for s in samples]
    order = np.random.default_rng(1).permutation(len(mixed))
    mixed = [mixed[i] for i in order]
    goods = iter(good)  # good samples keep their relative order among the bad ones
    mixed = [(next(goods), None) if r is None else (s, r) for s, r in mixed]
    _write_folder(tmp_path / "clean", good)
    _write_folder(tmp_path / "mixed", [s for s, _ in mixed])
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
    good, _ = _fuzz_samples(tokenizer)
    _write_folder(tmp_path / "f", good[:20])
    tar = tmp_path / "f" / "shard-00000.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[:len(data) // 2])
    ds = MultimodalDataset(tmp_path / "f", tokenizer, LoaderConfig(image_size=8))
    items = [ds[i] for i in range(len(ds))]
    assert items[0] is not None and items[-1] is None
    assert sum(ds.skip_counts.values()) == sum(i is None for i in items) >= 5
    assert set(ds.skip_counts) <= {"missing_member", "corrupt_image", "bad_metadata"}


def test_dataloader_workers_carry_skip_counts(corpus, tokenizer, tmp_path):
    """Real datasets behind a mixture, packed, read by two DataLoader workers: the batches
    equal a single-process read, and the skips of worker-side reads reach the main process."""
    from megatron_omni.data.multimodal.packing import collate

    good, bad = _fuzz_samples(tokenizer)
    _write_folder(tmp_path / "img", good[:20] + bad["corrupt_image"][:5] + good[20:])
    datasets = {"image_text": MultimodalDataset(tmp_path / "img", tokenizer,
                                                LoaderConfig(image_size=8)),
                "cross_modal": MultimodalDataset(corpus["root"] / "sft", tokenizer,
                                                 LoaderConfig(image_size=8,
                                                              pad_audio_to_30s=False))}
    sampler = MixtureSampler(Schedule.from_config({"mix": {"image_text": 0.8,
                                                           "cross_modal": 0.2}}), 8, seed=2)
    mix = MixtureDataset(datasets, sampler, length=40)
    packed = PackedDataset(mix, 64, tokenizer.pad_id, lengths=[
        len(mix[g]["tokens"]) for g in range(40)])
    batches = EqualMicroBatchSampler(len(packed), 2, 4, 0, 1, drop_last=True)

    def read(workers):
        loader = torch.utils.data.DataLoader(packed, batch_sampler=batches, collate_fn=collate,
                                             num_workers=workers)
        counter, out = MixCounter(), []
        for batch in loader:
            assert batch["tokens"].shape == (2, 64) and batch["cu_seqlens"][-1] == 128
            for modalities, skips in zip(batch["modality"], batch["skips"]):
                counter.update([{"modality": m, "skips": s} for m, s in zip(modalities, skips)])
            out.append(batch["tokens"])
        return out, counter

    single, c1 = read(0)
    multi, c2 = read(2)
    assert all(torch.equal(a, b) for a, b in zip(single, multi)) and len(single) == len(multi)
    assert c1.counts == c2.counts and c2.skips == c1.skips
    assert c2.skips.get("corrupt_image", 0) > 0
