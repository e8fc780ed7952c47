"""Fixtures for the multimodal loading tests: a tokenizer and a corpus made by the preprocessing
tools from synthetic media (made here, nothing downloaded)."""
import pytest

from megatron_omni.data.tokenizer import load_tokenizer
from omni_data_prep.make_demo_corpus import make_demo_corpus
from omni_data_prep.multimodal.audio_transcript import AudioTranscriptSource
from omni_data_prep.multimodal.conversations import ConversationSource
from omni_data_prep.multimodal.image_caption import ImageCaptionSource
from omni_data_prep.multimodal.runner import run
from omni_data_prep.multimodal.video_caption import VideoCaptionSource
from omni_data_prep.preprocess_text import preprocess
from omni_data_prep.train_tokenizer import train_tokenizer

from ..synthetic_media import make_image, make_tone, make_video, write_jsonl

CAPTIONS = ["a red square on white", "two  spaces and ünïcödé", "the third one", "number four"]


@pytest.fixture(scope="session")
def spm_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("spm")
    corpus = make_demo_corpus(root / "corpus.jsonl", num_docs=300, seed=0)
    return train_tokenizer([str(corpus)], str(root / "tok"), vocab_size=400, threads=1)


@pytest.fixture(scope="session")
def tokenizer(spm_path):
    return load_tokenizer(spm_path)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, spm_path):
    """Folders made by the preprocessing tools: captions, audio, video, conversation."""
    root = tmp_path_factory.mktemp("corpus")
    pixels = [make_image(root / f"{i}.{('png', 'jpg')[i % 2]}", 20 + 3 * i, 40, 30 * i,
                         y_step=4, x_step=3)
              for i in range(len(CAPTIONS))]
    run(ImageCaptionSource(),
        [write_jsonl(root / "cap.jsonl", [{"image_path": f"{i}.{('png', 'jpg')[i % 2]}",
                                      "caption": c} for i, c in enumerate(CAPTIONS)])],
        spm_path, root / "captions", samples_per_shard=3, progress=False)
    make_tone(root / "a.wav", 2.0, 16000)
    make_tone(root / "b.wav", 3.0, 44100, chirp=True)
    run(AudioTranscriptSource(),
        [write_jsonl(root / "asr.jsonl", [{"audio_path": "a.wav", "transcript": "a plain tone"},
                                     {"audio_path": "b.wav", "transcript": "a chirp"}])],
        spm_path, root / "audio", progress=False)
    make_video(root / "v.mp4", 3.0, fps=5, size=(24, 32), audio_rate=16000, shade_step=40)
    run(VideoCaptionSource(),
        [write_jsonl(root / "v.jsonl", [{"video_path": "v.mp4", "caption": "gray shades"}])],
        spm_path, root / "video", progress=False)
    record = {"images": ["0.png"], "audio": "a.wav", "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "<image><audio>\nWhat is this?"},
        {"from": "gpt", "value": "A square and a tone."},
        {"from": "human", "value": "Sure?"},
        {"from": "gpt", "value": "Yes."}]}
    run(ConversationSource(), [write_jsonl(root / "sft.jsonl", [record])], spm_path,
        root / "sft", progress=False)
    make_video(root / "silent.mp4", 2.0, fps=5, size=(24, 32), shade_step=60)
    run(VideoCaptionSource(),
        [write_jsonl(root / "s.jsonl", [{"video_path": "silent.mp4", "caption": "no sound"},
                                        {"video_path": "v.mp4", "caption": "with sound"}])],
        spm_path, root / "videos", progress=False)
    text = make_demo_corpus(root / "text.jsonl", num_docs=40, seed=2)
    preprocess([str(text)], spm_path, root / "text_document", progress=False)
    return {"root": root, "pixels": pixels}
