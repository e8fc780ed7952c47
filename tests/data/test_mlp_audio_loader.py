"""The mlp audio projector with the omni loader: the trainer's loader, built from the model
config, expands every clip to exactly as many <audio> positions as the model's audio encoder +
mlp projector emit for it (one token per encoder frame), and the batches train."""
import pytest
import torch

from megatron_omni.config import load_config, validate
from megatron_omni.config.schema import MultimodalDataConfig
from megatron_omni.contract.media import PLACEHOLDERS
from megatron_omni.models.omni.model import OmniModel
from megatron_omni.training.step import omni_forward_step
from megatron_omni.training.trainer import omni_micro_batches


@pytest.fixture(scope="module")
def mlp_audio(corpus, megatron_single_rank):
    cfg = load_config(None, ["model.num_layers=2", "model.omni.preset=tiny",
                             "model.omni.audio_projector=mlp", "data.seq_length=256",
                             "model.omni.audio_overrides={max_source_positions: 1500, num_mel_bins: 80}",
                             "training.micro_batch_size=1", "training.global_batch_size=2",
                             "training.train_steps=3", "training.warmup_steps=1"])
    root = corpus["root"]
    cfg.data.multimodal = MultimodalDataConfig(
        audio=[str(root / "audio")], cross_modal=[str(root / "video")],
        schedule={"mix": {"audio": 1, "cross_modal": 1}}, image_size=16, max_video_frames=4)
    validate(cfg, world_size=1)  # audio_projector=mlp with data.multimodal is a valid run
    return cfg


def test_loader_counts_mlp_audio_tokens_per_clip(mlp_audio, tokenizer):
    torch.manual_seed(0)
    ids = {kind: tokenizer.special_ids[text] for kind, text in PLACEHOLDERS.items()}
    model = OmniModel(mlp_audio, tokenizer.vocab_size, ids)
    clips = 0
    for batch in omni_micro_batches(mlp_audio, tokenizer, 0, 0, 1):
        audio = batch.sample_index[batch.tokens == ids["audio"]]
        per_sample = torch.bincount(audio, minlength=len(batch.sample_ids))
        with_audio = per_sample[per_sample > 0].tolist()   # each sample here has at most one clip
        assert len(with_audio) == len(batch.mel_frames())
        for i, n in enumerate(batch.mel_frames()):
            emitted = model.audio_projector(model.audio_encoder(batch.audio_mel[i:i + 1, :, :n]))
            assert emitted.shape[1] == with_audio[i] == (n - 1) // 2 + 1, (batch.sample_ids, i)
            clips += 1
        output, loss = omni_forward_step(batch, model)
        loss_sum, tokens, _ = loss(output)
        loss_sum.backward()
        assert torch.isfinite(loss_sum) and int(tokens) > 0
    assert clips >= 4
