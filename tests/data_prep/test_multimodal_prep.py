"""Multimodal preprocessing: round trips through the sample format for every source kind, bad
input accounting per reason, --strict, and atomic/resumable shards. All media are made here."""
import io
import json
import math
import tarfile

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset
from PIL import Image

from megatron_omni.data.bad_samples import BadSampleError
from megatron_omni.data.media_items import AUDIO_SAMPLE_RATE, AudioInfo, VideoInfo
from megatron_omni.data.sample_format import (LOSS_MASK_SUFFIX, TURN_END, TURN_START, Manifest,
                                              locate)
from megatron_omni.data.sample_reader import iter_samples, read_sample
from omni_data_prep.multimodal import (audio_transcript, cli, conversations, image_caption,
                                       interleaved, runner, video_caption)
from omni_data_prep.multimodal.media import resample

from ..synthetic_media import make_image, make_tone, make_video, special_id, write_jsonl

CAPTIONS = ["a red square on white", "two  spaces and ünïcödé 漢字", "the third one",
            "number four", "five is a png", "six", "seven, the last"]


# ----------------------------------------------------------------------------- media makers

def _captions(folder, n=len(CAPTIONS)):
    """Images 0..n-1 (png, jpg, and one bmp that is stored re-encoded as png) and their
    caption jsonl; returns (jsonl path, pixels per image)."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    pixels, records = [], []
    for i in range(n):
        ext = ("png", "jpg", "bmp")[i % 3]
        pixels.append(make_image(folder / "img" / f"{i}.{ext}", 20 + i, 30, 10 * i))
        records.append({"image_path": f"img/{i}.{ext}", "caption": CAPTIONS[i], "id": f"cap{i}"})
    return write_jsonl(folder / "captions.jsonl", records), pixels


# ----------------------------------------------------------------------------- round trips

def test_resample_matches_scipy_and_keeps_frequency():
    scipy_signal = pytest.importorskip("scipy.signal")
    x = np.random.default_rng(0).standard_normal(9001)
    for rate, up, down in [(44100, 160, 441), (8000, 2, 1), (48000, 1, 3), (22050, 320, 441)]:
        np.testing.assert_allclose(resample(x, rate, 16000),
                                   scipy_signal.resample_poly(x, up, down), atol=1e-12)
    t = np.arange(44100) / 44100
    y = resample(np.sin(2 * np.pi * 1000 * t) + np.sin(2 * np.pi * 10000 * t), 44100, 16000)
    assert len(y) == 16000
    spectrum = np.abs(np.fft.rfft(y[2000:-2000] * np.hanning(12000)))
    freqs = np.fft.rfftfreq(12000, 1 / 16000)
    assert abs(freqs[spectrum.argmax()] - 1000) < 2
    assert spectrum[freqs > 7000].max() < 1e-3 * spectrum.max(), "10 kHz must be filtered out"


@pytest.mark.parametrize("workers", [1, 2])
def test_image_caption_roundtrip(tmp_path, spm_path, tokenizer, workers):
    jsonl, pixels = _captions(tmp_path)
    out = tmp_path / "out"
    manifest = runner.run(image_caption.ImageCaptionSource(), [jsonl], spm_path, out,
                          workers=workers, samples_per_shard=3, progress=False)
    samples = list(iter_samples(out))
    assert [s.id for s in samples] == ["00000-000000", "00000-000001", "00000-000002",
                                       "00001-000000", "00001-000001", "00001-000002",
                                       "00002-000000"]
    for i, sample in enumerate(samples):
        caption = tokenizer.encode(CAPTIONS[i])
        assert sample.tokens.tolist() == [special_id(tokenizer, "image")] + caption + [tokenizer.eod_id]
        assert sample.loss_mask.tolist() == [False] + [True] * (len(caption) + 1)
        assert sample.media[0].shape == pixels[i].shape
        if i % 3 != 1:  # png and bmp (re-encoded as png) are lossless
            np.testing.assert_array_equal(sample.media[0], pixels[i])
        assert sample.meta.media[0].ext == ("png", "jpg", "png")[i % 3]
        assert sample.meta.source == {"file": jsonl, "loc": i + 1, "id": f"cap{i}"}
        sample.check(tokenizer)

    totals = manifest.totals()
    assert totals["counts"]["samples"] == 7 and totals["counts"]["media"]["image"] == 7
    assert totals["counts"]["tokens"] == sum(len(s.tokens) for s in samples)
    assert totals["skipped"] == {}
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["tokenizer"]["vocab_size"] == tokenizer.vocab_size
    assert len(on_disk["tokenizer"]["sha256"]) == 64 and on_disk["counts"]["records"] == 7
    assert Manifest.load(out).shards == manifest.shards

    location = locate(out, manifest, "00001-000002")
    assert (location.doc_index, location.global_index, location.shard) == (2, 5, "shard-00001")
    again = read_sample(out, "00001-000002")
    assert again.tokens.tolist() == samples[5].tokens.tolist()
    with pytest.raises(ValueError, match="no sample"):
        locate(out, manifest, "00001-000003")

    # One sequence per document in both binaries (readable by megatron-core as they are).
    tokens = IndexedDataset(str(out / "shard-00000"))
    masks = IndexedDataset(str(out / "shard-00000") + LOSS_MASK_SUFFIX)
    assert tokens.document_indices.tolist() == [0, 1, 2, 3]
    assert tokens.sequence_lengths.tolist() == masks.sequence_lengths.tolist()
    assert masks[0].dtype == np.uint8


def test_webdataset_tars_in_and_out(tmp_path, spm_path, tokenizer):
    wds = pytest.importorskip("webdataset")
    src = tmp_path / "in.tar"
    with tarfile.open(src, "w") as tar:
        for i in range(3):
            buf = io.BytesIO()
            Image.fromarray(np.full((8, 9 + i, 3), i, np.uint8)).save(buf, "PNG")
            caption = {"txt": CAPTIONS[i].encode()} if i != 1 else {
                "json": json.dumps({"caption": CAPTIONS[i]}).encode()}
            for field, data in {"png": buf.getvalue(), **caption}.items():
                info = tarfile.TarInfo(f"src{i}.{field}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    image_caption.main(["--input", str(src), "--tokenizer", str(spm_path),
                        "--output-dir", str(out)])
    samples = list(iter_samples(out))
    assert [s.tokens.tolist()[1:-1] for s in samples] == [tokenizer.encode(c)
                                                          for c in CAPTIONS[:3]]
    assert [s.meta.source["loc"] for s in samples] == ["src0", "src1", "src2"]
    assert [s.media[0].shape for s in samples] == [(8, 9, 3), (8, 10, 3), (8, 11, 3)]
    read = list(wds.WebDataset(str(out / "shard-00000.tar"), shardshuffle=False))
    assert [r["__key__"] for r in read] == [s.id for s in samples]
    assert all(set(r) >= {"json", "0.png"} for r in read)

    with tarfile.open(src, "a") as tar:  # a sample whose image member is missing
        info = tarfile.TarInfo("src3.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"lost"))
    with pytest.raises(BadSampleError, match=f"{src}:src3: missing_file: no image member"):
        runner.run(image_caption.ImageCaptionSource(), [str(src)], spm_path, out, strict=True,
                   progress=False)


def test_interleaved_roundtrip(tmp_path, spm_path, tokenizer):
    (tmp_path / "img").mkdir()
    shapes = [(10, 12), (14, 6), (5, 5)]
    for i, (h, w) in enumerate(shapes):
        make_image(tmp_path / "img" / f"{i}.png", h, w, i)
    docs = [{"texts": ["Intro text.", None, "Middle part", None, "the end"],
             "images": [None, "img/0.png", None, "img/1.png", None]},
            {"texts": [None, "only a caption after"], "images": ["img/2.png", None]}]
    out = tmp_path / "out"
    interleaved.main(["--input", write_jsonl(tmp_path / "docs.jsonl", docs), "--tokenizer",
                      str(spm_path), "--output-dir", str(out), "--workers", "2"])
    first, second = iter_samples(out)
    image = special_id(tokenizer, "image")
    enc = tokenizer.encode
    assert first.tokens.tolist() == (enc("Intro text.") + [image] + enc("Middle part") + [image]
                                     + enc("the end") + [tokenizer.eod_id])
    assert second.tokens.tolist() == [image] + enc("only a caption after") + [tokenizer.eod_id]
    assert first.loss_mask.tolist() == [t != image for t in first.tokens.tolist()]
    assert [m.shape[:2] for m in first.media + second.media] == shapes


def test_audio_transcript_roundtrip(tmp_path, spm_path, tokenizer):
    long_wave = make_tone(tmp_path / "long.flac", 65.0, 16000, chirp=True)
    make_tone(tmp_path / "cd.wav", 2.0, 44100, freq=440.0)
    stereo = make_tone(tmp_path / "phone.wav", 3.0, 8000, freq=500.0, channels=2)
    records = [{"audio_path": "long.flac", "transcript": "a long chirp", "duration": 65.0},
               {"audio_path": "cd.wav", "transcript": "forty four one", "sample_rate": 44100},
               {"audio_path": "phone.wav", "transcript": "a segment", "start": 0.5, "end": 2.0}]
    out = tmp_path / "out"
    audio_transcript.main(["--input", write_jsonl(tmp_path / "asr.jsonl", records), "--tokenizer",
                           str(spm_path), "--output-dir", str(out)])
    long, cd, phone = iter_samples(out)
    audio = special_id(tokenizer, "audio")

    # 65 s -> consecutive 30 s windows (30, 30, 5 s), one <audio> each, then the transcript.
    assert long.tokens.tolist() == [audio] * 3 + tokenizer.encode("a long chirp") + [
        tokenizer.eod_id]
    assert long.loss_mask.tolist() == [False] * 3 + [True] * (len(long.tokens) - 3)
    assert all(isinstance(m, AudioInfo) and m.sample_rate == AUDIO_SAMPLE_RATE
               and m.duration <= 30 for m in long.meta.media)
    assert [m.num_samples for m in long.meta.media] == [480000, 480000, 80000]
    assert [m.start for m in long.meta.media] == [0.0, 30.0, 60.0]
    np.testing.assert_allclose(np.concatenate(long.media), long_wave, atol=1.5 / 32768)

    assert [m.num_samples for m in cd.meta.media] == [32000]
    assert cd.meta.media[0].source_sample_rate == 44100
    spectrum = np.abs(np.fft.rfft(cd.media[0]))
    assert abs(np.fft.rfftfreq(32000, 1 / 16000)[spectrum.argmax()] - 440) < 1

    # Stereo 8 kHz, [0.5, 2.0) s: mixed to mono and upsampled to 1.5 s at 16 kHz.
    assert phone.meta.media[0].num_samples == 24000 and phone.meta.media[0].start == 0.5
    expected = resample(stereo[4000:16000], 8000, 16000)
    np.testing.assert_allclose(phone.media[0], expected, atol=1.5 / 32768)


def test_video_roundtrip(tmp_path, spm_path, tokenizer):
    make_video(tmp_path / "with_audio.mp4", 3.5, audio_rate=16000)
    make_video(tmp_path / "silent.mp4", 2.0)
    records = [{"video_path": "with_audio.mp4", "caption": "shades of gray",
                "subtitles": [{"start": 0.0, "end": 1.0, "text": "hello"}]},
               {"video_path": "silent.mp4", "caption": "no sound here"}]
    jsonl = write_jsonl(tmp_path / "videos.jsonl", records)
    out = tmp_path / "out"
    runner.run(video_caption.VideoCaptionSource(), [jsonl], spm_path, out, progress=False)
    noisy, silent = iter_samples(out)
    video, audio = special_id(tokenizer, "video"), special_id(tokenizer, "audio")
    assert noisy.tokens.tolist() == [video, audio] + tokenizer.encode("shades of gray\nhello") + [
        tokenizer.eod_id]
    assert noisy.loss_mask[:2].tolist() == [False, False] and noisy.loss_mask[2:].all()
    info = noisy.meta.media[0]
    assert isinstance(info, VideoInfo) and info.fps == 1.0
    assert info.timestamps == (0.0, 1.0, 2.0, 3.0) and abs(info.duration - 3.5) < 0.05
    frames = noisy.media[0]
    assert frames.shape == (4, 48, 64, 3)
    np.testing.assert_allclose(frames.mean(axis=(1, 2, 3)), [0, 20, 40, 60], atol=3)
    assert abs(noisy.meta.media[1].duration - 3.5) < 0.1 and noisy.media[1].ndim == 1
    assert noisy.meta.media[1].video_index == 0
    assert noisy.meta.extra == {"subtitles": [{"start": 0.0, "end": 1.0, "text": "hello"}]}
    assert silent.tokens.tolist()[:2] == [video, tokenizer.encode("no sound here")[0]]
    assert silent.media[0].shape == (2, 48, 64, 3)

    # Capped at 2 frames, the 3.5 s clip is sampled evenly: every 1.75 s.
    capped = tmp_path / "capped"
    runner.run(video_caption.VideoCaptionSource(max_frames=2, with_audio=False), [jsonl],
               spm_path, capped, progress=False)
    first = next(iter_samples(capped))
    assert first.meta.media[0].timestamps == (0.0, 1.8) and len(first.meta.media) == 1
    assert first.meta.media[0].fps == pytest.approx(2 / 3.5, rel=0.02)


def test_conversation_loss_mask_covers_exactly_assistant_turns(tmp_path, spm_path, tokenizer):
    make_image(tmp_path / "a.png", 16, 16, 1)
    make_image(tmp_path / "b.jpg", 12, 20, 2)
    make_tone(tmp_path / "q.wav", 40.0, 16000)
    make_tone(tmp_path / "r.wav", 4.0, 22050)
    record = {"id": "sft_001", "images": ["a.png", "b.jpg"],
              "audio_segments": [{"path": "q.wav", "start": 0, "end": 40},
                                 {"path": "r.wav", "start": 1.0, "end": 3.0}],
              "conversations": [
                  {"from": "system", "value": "You are helpful."},
                  {"from": "human", "value": "<image><audio>\nWhat is happening?"},
                  {"from": "gpt", "value": "A tone plays over a square."},
                  {"from": "human", "value": "And <image> with <audio>?"},
                  {"from": "gpt", "value": "Another image, a shorter tone."}]}
    out = tmp_path / "out"
    conversations.main(["--input", write_jsonl(tmp_path / "sft.jsonl", [record]), "--tokenizer",
                        str(spm_path), "--output-dir", str(out)])
    (sample,) = iter_samples(out)
    enc = tokenizer.encode
    image, audio = special_id(tokenizer, "image"), special_id(tokenizer, "audio")
    expected, mask = [], []
    for role, content, target in [
            ("system", enc("You are helpful."), False),
            ("user", [image, audio, audio] + enc("\nWhat is happening?"), False),
            ("assistant", enc("A tone plays over a square."), True),
            ("user", enc("And ") + [image] + enc(" with ") + [audio] + enc("?"), False),
            ("assistant", enc("Another image, a shorter tone."), True)]:
        header, end = enc(f"{TURN_START}{role}\n"), enc(TURN_END)
        header += enc(conversations.THINK_EMPTY) if role == "assistant" else []  # short reasoning mode
        expected += header + content + end
        mask += [False] * len(header) + [target] * (len(content) + len(end))
    assert sample.tokens.tolist() == expected + [tokenizer.eod_id]
    assert sample.loss_mask.tolist() == mask + [False]
    targets = sample.tokens[sample.loss_mask].tolist()
    assert tokenizer.decode(targets).count("shorter tone") == 1
    assert [m.kind for m in sample.meta.media] == ["image", "audio", "audio", "image", "audio"]
    assert [m.duration for m in sample.meta.media if m.kind == "audio"] == [30.0, 10.0, 2.0]
    assert [m.start for m in sample.meta.media if m.kind == "audio"] == [0.0, 30.0, 1.0]
    assert all(m.video_index is None for m in sample.meta.media if m.kind == "audio")
    assert [x.shape for x in sample.media] == [(16, 16, 3), (480000,), (160000,), (12, 20, 3),
                                               (32000,)]
    assert sample.meta.source["id"] == "sft_001"
    sample.check(tokenizer)


# ----------------------------------------------------------------------------- bad input

def _bad_inputs(folder):
    """Per kind: (source, jsonl, good sample count, expected skip counts). Every bad record
    has exactly one defect."""
    folder.mkdir()
    make_image(folder / "ok.png", 8, 8, 0)
    make_image(folder / "ok.jpg", 32, 32, 0)
    data = (folder / "ok.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[:len(data) // 2])
    (folder / "garbage.png").write_bytes(b"\x89PNG not really")
    make_tone(folder / "ok.wav", 1.0, 16000)
    make_tone(folder / "low.wav", 1.0, 4000)
    (folder / "garbage.flac").write_bytes(b"fLaC" + bytes(100))
    wav = (folder / "ok.wav").read_bytes()
    (folder / "truncated.wav").write_bytes(wav[:len(wav) // 2])
    make_video(folder / "ok.mp4", 1.0)
    clip = (folder / "ok.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(clip[:len(clip) // 3])
    (folder / "garbage.mp4").write_bytes(bytes(range(256)) * 4)

    def cap(image, caption="fine"):
        return {"image_path": image, "caption": caption}

    captions = [cap("ok.png"), '{"image_path": "ok.png", "caption": ', "[1, 2]",
                {"image_path": "ok.png"}, cap("ok.png", 7), cap("ok.png", "   "),
                cap("absent.png"), cap("truncated.jpg"), cap("garbage.png"),
                cap("ok.jpg", "two <image> tokens"), cap("ok.jpg")]
    caption_skips = {"malformed_json": 2, "missing_key": 1, "bad_field": 1, "empty_text": 1,
                     "missing_file": 1, "corrupt_image": 2, "placeholder_mismatch": 1}

    def asr(path, **extra):
        return {"audio_path": path, "transcript": "words", **extra}

    asrs = [asr("ok.wav", duration=1.0), asr("garbage.flac"), asr("truncated.wav", duration=1.0),
            asr("ok.wav", sample_rate=44100), asr("low.wav"), asr("absent.wav"),
            {"audio_path": "ok.wav", "transcript": ""}, asr("ok.wav", start=0.5, end=0.2)]
    asr_skips = {"corrupt_audio": 1, "truncated_audio": 1, "wrong_sample_rate": 2,
                 "missing_file": 1, "empty_text": 1, "bad_field": 1}

    videos = [{"video_path": "ok.mp4", "caption": "ok"},
              {"video_path": "truncated.mp4", "caption": "x"},
              {"video_path": "garbage.mp4", "caption": "not a video"},
              {"video_path": "absent.mp4", "caption": "x"}, {"video_path": "ok.mp4"},
              {"video_path": "ok.mp4", "caption": " ", "subtitles": []},
              {"video_path": "ok.mp4", "subtitles": [{"text": "no times"}]}]
    video_skips = {"corrupt_video": 2, "missing_file": 1, "missing_key": 1, "empty_text": 1,
                   "bad_field": 1}

    def conv(value, answer="yes", **media):
        return {**media, "conversations": [{"from": "human", "value": value},
                                           {"from": "gpt", "value": answer}]}

    convs = [conv("<image> hi", images=["ok.png"]), conv("<image><image>", images=["ok.png"]),
             conv("<audio>", audio_segments=[]), conv("<image>", images=["absent.png"]),
             conv("<audio>", audio="garbage.flac"), conv("hello", answer=""),
             {"conversations": [{"from": "human", "value": "only a question"}]},
             {"conversations": [{"from": "robot", "value": "beep"}]}, {"images": []},
             conv("<video> what?", videos=["truncated.mp4"])]
    conv_skips = {"placeholder_mismatch": 2, "missing_file": 1, "corrupt_audio": 1,
                  "empty_text": 1, "bad_field": 2, "missing_key": 1, "corrupt_video": 1}
    return [(image_caption.ImageCaptionSource(), captions, 2, caption_skips),
            (audio_transcript.AudioTranscriptSource(), asrs, 1, asr_skips),
            (video_caption.VideoCaptionSource(), videos, 1, video_skips),
            (conversations.ConversationSource(), convs, 1, conv_skips)]


def test_bad_inputs_are_counted_per_reason(tmp_path, spm_path):
    for source, records, good, skips in _bad_inputs(tmp_path / "media"):
        jsonl = write_jsonl(tmp_path / "media" / f"{source.kind}.jsonl", records)
        with open(jsonl, "ab") as f:
            f.write(b'{"caption": "\xff\xfe"}\n')  # invalid UTF-8
        manifest = runner.run(source, [jsonl], spm_path, tmp_path / source.kind,
                              samples_per_shard=4, progress=False)
        totals = manifest.totals()
        assert totals["skipped"] == {**skips, "invalid_utf8": 1}, source.kind
        assert totals["counts"]["samples"] == good, source.kind
        assert totals["counts"]["records"] == len(records) + 1
        assert len(list(iter_samples(tmp_path / source.kind))) == good


def test_strict_names_file_and_line(tmp_path, spm_path, capsys):
    jsonl, _ = _captions(tmp_path, n=5)
    lines = (tmp_path / "captions.jsonl").read_text().splitlines()
    lines[3] = json.dumps({"image_path": "img/missing.png", "caption": "gone"})
    (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    args = ["--input", jsonl, "--tokenizer", str(spm_path), "--output-dir", str(tmp_path / "o"),
            "--samples-per-shard", "2", "--workers", "2"]
    with pytest.raises(SystemExit) as exit_info:
        image_caption.main(args + ["--strict"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"{jsonl}:4: missing_file: " in err and "img/missing.png" in err
    assert not (tmp_path / "o" / "manifest.json").exists()
    assert image_caption.main(args).totals()["skipped"] == {"missing_file": 1}


def test_one_command_per_kind_and_user_errors(tmp_path, spm_path, capsys):
    for kind in cli.KINDS:
        assert f"python -m omni_data_prep.multimodal.{kind}" in cli.build_parser(kind).format_help()
    jsonl, _ = _captions(tmp_path, n=3)
    args = ["--tokenizer", str(spm_path), "--output-dir", str(tmp_path / "o")]
    manifest = cli.dispatch(["image_caption", "--input", jsonl, *args, "--caption-key", "caption"])
    assert manifest.totals()["counts"]["samples"] == 3
    capsys.readouterr()
    missing = str(tmp_path / "none-*.jsonl")
    with pytest.raises(SystemExit) as exit_info:
        cli.dispatch(["interleaved", "--input", missing, *args])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == f"error: input {missing!r} matches no file\n"
    with pytest.raises(SystemExit) as exit_info:
        cli.dispatch(["no_such_kind", "--input", jsonl, *args])
    assert exit_info.value.code == 2 and "sample kind" in capsys.readouterr().err


# ----------------------------------------------------------------------------- atomic and resume

def _tree(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_interrupted_run_resumes_to_identical_output(tmp_path, spm_path, monkeypatch):
    jsonl, _ = _captions(tmp_path)
    options = dict(samples_per_shard=2, progress=False)
    runner.run(image_caption.ImageCaptionSource(), [jsonl], spm_path, tmp_path / "whole",
               **options)
    expected = _tree(tmp_path / "whole")

    real_write = runner.write_shard
    calls = []

    def crash_after_two(state, task):
        calls.append(task.index)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real_write(state, task)

    monkeypatch.setattr(runner, "write_shard", crash_after_two)
    out = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="killed"):
        runner.run(image_caption.ImageCaptionSource(), [jsonl], spm_path, out, **options)
    names = sorted(p.name for p in out.iterdir())
    assert "manifest.json" not in names and not [n for n in names if ".tmp-" in n]
    assert [n for n in names if n.endswith(".done.json")] == ["shard-00000.done.json",
                                                              "shard-00001.done.json"]

    calls.clear()
    monkeypatch.setattr(runner, "write_shard", lambda s, t: calls.append(t.index)
                        or real_write(s, t))
    runner.run(image_caption.ImageCaptionSource(), [jsonl], spm_path, out, **options)
    assert calls == [2, 3], "finished shards are reused, the rest written"
    assert _tree(out) == expected

    # A changed record invalidates exactly its shard.
    records = (tmp_path / "captions.jsonl").read_text().splitlines()
    records[6] = records[6].replace("seven", "SEVEN")
    (tmp_path / "captions.jsonl").write_text("\n".join(records) + "\n")
    calls.clear()
    runner.run(image_caption.ImageCaptionSource(), [jsonl], spm_path, out, **options)
    assert calls == [3]


def test_parallel_output_equals_serial(tmp_path, spm_path):
    jsonl, _ = _captions(tmp_path)
    for workers in (1, 2):
        runner.run(image_caption.ImageCaptionSource(), [jsonl], spm_path, tmp_path / f"w{workers}",
                   workers=workers, samples_per_shard=2, progress=False)
    assert _tree(tmp_path / "w1") == _tree(tmp_path / "w2")
    assert math.ceil(len(CAPTIONS) / 2) == len(Manifest.load(tmp_path / "w2").shards)
