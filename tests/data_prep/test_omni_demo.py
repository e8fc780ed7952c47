"""The synthetic omni demo corpus (data_prep/multimodal/demo.py): made through the real CLIs
without a skipped record, and read by the omni loader under the phase-3 mix with every kind of
media present and the captions' tokens intact."""
import collections

import pytest

from megatron_omni.config import load_config, validate
from megatron_omni.config.schema import MultimodalDataConfig
from megatron_omni.contract.media import MediaTokens
from megatron_omni.data.multimodal.loader import build_omni_loader
from megatron_omni.data.sample_format import Manifest
from megatron_omni.data.tokenizer import load_tokenizer
from omni_data_prep.multimodal.demo import main, prepare_omni_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return prepare_omni_demo(tmp_path_factory.mktemp("omni"), num_images=12, num_audio=6,
                             num_videos=3, num_conversations=6, num_docs=120)


def test_demo_corpus_is_complete(demo):
    mm = demo["multimodal"]
    expected = {mm["image_text"][0]: {"image": 12}, mm["audio"][0]: {"audio": 6},
                mm["video"][0]: {"video": 3}, mm["cross_modal"][0]: {"video": 3, "audio": 3},
                mm["cross_modal"][1]: {"image": 3, "audio": 3}}
    for folder, media in expected.items():
        manifest = Manifest.load(folder)
        totals = manifest.totals()
        assert totals["skipped"] == {} or not any(totals["skipped"].values()), folder
        assert {k: v for k, v in totals["counts"]["media"].items() if v} == media, folder


def test_demo_feeds_the_loader(demo):
    tokenizer = load_tokenizer(demo["tokenizer"])
    cfg = load_config(None, ["data.seq_length=256", "training.micro_batch_size=2",
                             "training.global_batch_size=8", "training.train_steps=3",
                             "training.warmup_steps=1", f"data.tokenizer={demo['tokenizer']}"])
    cfg.data.multimodal = MultimodalDataConfig(**demo["multimodal"], image_size=32,
                                               max_video_frames=4)
    validate(cfg, world_size=1)
    loader = build_omni_loader(cfg, tokenizer, MediaTokens((2, 2), (2, 2)), 0, 0, 1)
    kinds, texts = collections.Counter(), []
    for batch in loader:
        kinds.update(batch.sample_modality)
        for r in range(2):
            index = batch.sample_index[r]
            for s in index[index >= 0].unique().tolist():
                texts.append(tokenizer.decode(batch.tokens[r][index == s].tolist()))
    assert set(kinds) == {"text", "image", "video", "audio", "cross"}
    assert any(t.startswith("a ") and t.split()[1] in ("red", "green", "blue", "yellow", "black")
               for t in texts)
    assert not any(v for k, v in loader.stats().items() if k.startswith("data/skipped/"))


def test_cli_prints_the_data_section(capsys, tmp_path):
    values = main(["--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "multimodal:" in printed and values["multimodal"]["audio"][0] in printed
