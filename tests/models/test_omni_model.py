"""The omni model (models/omni/): the embedding merge (placeholder positions replaced exactly,
others untouched), the errors that name the sample, the text-only path and its anchor, TMRoPE ids
reaching the attention, TP=2 == TP=1 forward and backward on a mixed micro-batch, and DP=2 under
megatron's DDP with one rank text-only."""
import dataclasses
from pathlib import Path

import pytest
import torch
from megatron.core import dist_checkpointing, parallel_state as ps
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

from megatron_omni.config import load_config
from megatron_omni.models.omni.model import OmniModel
from tests.omni_batches import MIXED, PLACEHOLDER_IDS, micro_batch

from .multirank import run_ranks

VOCAB, SEQ = 200, 96

CONFIG = ["model.num_layers=2", "model.omni.preset=tiny", f"data.seq_length={SEQ}"]


def build(*overrides: str) -> OmniModel:
    torch.manual_seed(0)
    cfg = load_config(None, CONFIG + list(overrides))
    return OmniModel(cfg, VOCAB, PLACEHOLDER_IDS)


def batch(modalities=MIXED, **kwargs) -> dict:
    return micro_batch(load_config(None, CONFIG).model.omni, modalities, SEQ, VOCAB, **kwargs)


def token_losses(model: OmniModel, b: dict) -> torch.Tensor:
    return model(b.tokens, b.position_ids, None, labels=b.labels, batch=b)


def test_placeholder_positions_get_the_media_tokens_in_order_and_nothing_else_changes():
    model = build()
    b = batch()
    word = model.llm.embedding.word_embeddings(b.tokens)
    merged, anchor, _ = model.merge_media(word, b.tokens, b)
    assert anchor.item() == 0
    enc_v, proj_v = model.vision_encoder, model.vision_projector
    expected = {
        "image": proj_v(enc_v(b.images)).flatten(0, -2),
        "video": torch.cat([proj_v(enc_v(v)[None]).flatten(0, -2) for v in b.videos]),
        "audio": torch.cat([model.audio_projector(model.audio_encoder(b.audio_mel[i:i + 1, :, :n]))[0]
                            for i, n in enumerate(b.audio_frames.tolist())]),
    }
    is_media = torch.zeros_like(b.tokens, dtype=torch.bool)
    for kind, tokens in expected.items():
        positions = b.tokens == PLACEHOLDER_IDS[kind]
        assert positions.sum() == tokens.shape[0] > 0
        torch.testing.assert_close(merged[positions], tokens, atol=0, rtol=0)
        is_media |= positions
    assert torch.equal(merged[~is_media], word[~is_media])
    # the cross sample (row 4) interleaves its video and audio tokens chunk by chunk
    row = b.tokens[4]
    assert (row == PLACEHOLDER_IDS["video"]).any() and (row == PLACEHOLDER_IDS["audio"]).any()


def test_count_mismatch_names_the_sample_and_both_counts():
    model = build()
    b = batch(["text", "image"])
    first = (b.tokens[1] == PLACEHOLDER_IDS["image"]).nonzero()[0, 0]
    b.tokens[1, first] = 9
    with pytest.raises(ValueError, match=r"sample image-0-1: 3 <image> positions but its image embeddings "
                                         r"give 4 tokens"):
        token_losses(model, b)


def test_media_without_placeholder_is_refused():
    model = build()
    b = batch(["text", "audio"])
    b.images = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"1 image item\(s\) of 4 tokens have no <image> positions "
                                         r"\(media without placeholder\) in the micro-batch with samples "
                                         r"\['text-0-0', 'audio-0-1'\]"):
        token_losses(model, b)


def test_oversize_media_names_the_sample():
    model = build("model.omni.max_video_frames=2")
    with pytest.raises(ValueError, match="sample video-0-0: video of 3 frames exceeds model.omni.max_video_frames=2"):
        token_losses(model, batch(["video"]))
    model = build()
    with pytest.raises(ValueError, match=r"sample audio-0-1: audio clip of 80 mel frames; the audio encoder "
                                         r"takes 1 to 64"):
        token_losses(model, batch(["text", "audio"], audio_frames=80))
    b = batch(["image"])
    b.images = torch.randn(1, 3, 20, 20)
    with pytest.raises(ValueError, match=r"sample image-0-0: images are \[3, 20, 20\]; the vision encoder "
                                         r"takes \[3, 16, 16\] \(model.omni.vision_overrides\)"):
        token_losses(model, b)


def test_text_only_batch_is_the_llm_and_anchors_every_encoder_parameter():
    model = build()
    b = batch(["text", "text"])
    losses = token_losses(model, b)
    plain = model.llm(b.tokens, b.position_ids.transpose(0, 1), None, labels=b.labels)
    torch.testing.assert_close(losses, plain, atol=0, rtol=0)
    (losses * b.loss_mask).sum().backward()
    media_params = {n: p for n, p in model.named_parameters() if not n.startswith("llm.")}
    assert media_params and all(p.grad is not None for p in media_params.values())
    assert all(torch.count_nonzero(p.grad) == 0 for p in media_params.values())


def test_tmrope_ids_reach_the_attention():
    """Equal axes give exactly 1-D RoPE on those ids; the image tokens' own height/width ids
    change the losses; with tmrope off the model is plain RoPE over 0..s-1."""
    model = build()
    b = batch(["image"])
    one_d = b.position_ids[:, 0]
    flat = dataclasses.replace(b, position_ids=one_d[:, None].expand(-1, 3, -1).contiguous())
    one_d_batch = dataclasses.replace(b, position_ids=one_d)
    torch.testing.assert_close(token_losses(model, flat), token_losses(model, one_d_batch), atol=0, rtol=0)
    assert not torch.allclose(token_losses(model, b), token_losses(model, flat))
    plain = build("model.omni.tmrope=false")
    plain.load_state_dict(model.state_dict())
    arange = torch.arange(SEQ).expand(1, 3, -1).contiguous()
    torch.testing.assert_close(token_losses(plain, one_d_batch),
                               token_losses(model, dataclasses.replace(b, position_ids=arange)), atol=0, rtol=0)


def test_contrastive_loss_adds_its_weighted_gradient_and_leaves_the_forward_alone():
    b = batch(["cross", "text", "cross"])
    weighted, plain = build("model.omni.contrastive_weight=0.5"), build()
    losses = token_losses(weighted, b)
    (losses * b.loss_mask).sum().backward()
    reference = token_losses(plain, b)
    torch.testing.assert_close(losses, reference, atol=0, rtol=0)
    pooled = {"video": [], "audio": []}
    for row, frames in zip((0, 2), b.audio_frames.tolist()):
        video = plain.vision_projector(plain.vision_encoder(b.videos[len(pooled["video"])])[None])
        audio = plain.audio_projector(plain.audio_encoder(b.audio_mel[len(pooled["audio"])][None, :, :frames]))
        pooled["video"].append(torch.nn.functional.normalize(video.flatten(0, -2).mean(0), dim=0))
        pooled["audio"].append(torch.nn.functional.normalize(audio[0].mean(0), dim=0))
    logits = torch.stack(pooled["video"]) @ torch.stack(pooled["audio"]).t() / 0.07
    target = torch.arange(2)
    info_nce = (torch.nn.functional.cross_entropy(logits, target)
                + torch.nn.functional.cross_entropy(logits.t(), target)) / 2
    ((reference * b.loss_mask).sum() + 0.5 * b.loss_mask.sum() * info_nce).backward()
    grads = dict(plain.named_parameters())
    assert torch.count_nonzero(grads["vision_projector.query"].grad) > 0
    for name, param in weighted.named_parameters():
        # the model encodes all frames in one batch, the reference video by video: compare norms
        error = (param.grad - grads[name].grad).norm() / grads[name].grad.norm().clamp_min(1e-12)
        assert error < 1e-5, (name, error)


# ---------------------------------------------------------------------- multi-rank

def _shard(full: torch.Tensor, param: torch.Tensor, name: str) -> torch.Tensor:
    """This TP rank's part of a TP=1 tensor (the SwiGLU fc1 holds [gate_r; up_r] per rank)."""
    if not getattr(param, "tensor_model_parallel", False):
        return full
    tp, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    if name.startswith("llm.") and name.endswith("mlp.linear_fc1.weight"):
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp, 0)[rank], up.chunk(tp, 0)[rank]])
    return full.chunk(tp, dim=param.partition_dim)[rank]


def _forward_backward(model: OmniModel, b: dict) -> torch.Tensor:
    losses = token_losses(model, b)
    (losses * b.loss_mask).sum().backward()
    return losses.detach()


def check_tp_matches_single_rank(folder: str) -> None:
    reference = torch.load(Path(folder) / "reference.pt")
    model = build()
    dist_checkpointing.load(model.sharded_state_dict(), str(Path(folder) / "ckpt"))
    losses = _forward_backward(model, batch())
    torch.testing.assert_close(losses, reference["losses"], atol=1e-5, rtol=0)
    for name, param in model.named_parameters():
        if "q_layernorm" in name or "k_layernorm" in name:
            # each rank's heads add their part; megatron's finalize_model_grads all-reduces these
            torch.distributed.all_reduce(param.grad, group=ps.get_tensor_model_parallel_group())
        torch.testing.assert_close(param.grad, _shard(reference["grads"][name], param, name),
                                   atol=1e-5, rtol=1e-4, msg=name)


def save_reference(folder: Path) -> None:
    """The one-rank model as a dist checkpoint, and its losses and gradients on the mixed batch."""
    model = build()
    (folder / "ckpt").mkdir()
    dist_checkpointing.save(model.sharded_state_dict(), str(folder / "ckpt"))
    losses = _forward_backward(model, batch())
    grads = {n: p.grad for n, p in model.named_parameters()}
    torch.save({"losses": losses, "grads": grads}, folder / "reference.pt")


def test_tp2_forward_backward_matches_one_rank(tmp_path):
    save_reference(tmp_path)
    run_ranks(check_tp_matches_single_rank, 2, str(tmp_path))


def check_dp2_with_a_text_only_rank(folder: str) -> None:
    ps.destroy_model_parallel()
    ps.initialize_model_parallel(1, 1)  # DP = 2
    model = build()
    dist_checkpointing.load(model.sharded_state_dict(), str(Path(folder) / "ckpt"))
    ddp = DistributedDataParallel(model.config, DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=True, average_in_collective=False), model)
    rank = ps.get_data_parallel_rank()
    # megatron's DDP learns from the first step which parameters get gradients; a later step
    # where a rank's batch lacks a modality must still produce them (else its bucket never
    # launches and finish_grad_sync asserts while the other rank waits)
    for b in (batch(seed=2), batch() if rank == 0 else batch(["text", "text"], seed=1)):
        ddp.zero_grad_buffer()
        losses = ddp(b.tokens, b.position_ids, None, labels=b.labels, batch=b)
        (losses * b.loss_mask).sum().backward()
        ddp.finish_grad_sync()
    reference = torch.load(Path(folder) / "reference.pt")["grads"]
    media = [(n, p) for n, p in model.named_parameters() if not n.startswith("llm.")]
    assert media
    for name, param in media:
        # per-token loss: DDP sums over ranks, and the text-only rank adds exact zeros
        torch.testing.assert_close(param.main_grad, reference[name], atol=1e-6, rtol=1e-4, msg=name)


def test_dp2_with_one_text_only_rank_reduces_media_gradients(tmp_path):
    save_reference(tmp_path)
    run_ranks(check_dp2_with_a_text_only_rank, 2, str(tmp_path))


def test_omni_config_presets_and_errors():
    from megatron_omni.config import ConfigError, validate

    assert load_config(None, []).model.omni is None
    plan = load_config(None, ["model.preset=qwen3-8b", "model.omni.preset=plan"])
    assert (plan.model.omni.image_tokens, plan.model.omni.frames_per_package, plan.model.omni.audio) == (
        64, 6, "whisper-medium")
    validate(plan, 1)
    with pytest.raises(ConfigError, match=r"model.omni.audio_projector='conv'; use conv_gmlp or mlp"):
        validate(load_config(None, ["model.omni.audio_projector=conv"]), 1)
    with pytest.raises(ConfigError, match=r"model.omni.mrope_sections=\[2, 2, 2\] must be three counts summing "
                                          r"to model.head_dim / 2 = 8"):
        validate(load_config(None, ["model.omni.mrope_sections=[2,2,2]"]), 1)
    with pytest.raises(ConfigError, match="model.omni.preset='big' is unknown"):
        load_config(None, ["model.omni.preset=big"])


def test_packed_micro_batch_matches_one_sample_per_row():
    """The same samples as one packed sequence (cu_seqlens) give the same
    per-token losses and gradients as one sample per row (TMRoPE ids restart per sample)."""
    from megatron_omni.training.step import omni_forward_step

    b = batch()
    lengths = (b.sample_index >= 0).sum(1).tolist()
    bounds = [0]
    for length in lengths:  # each row: its sample, then its padding as a segment of its own
        bounds += [bounds[-1] + length, bounds[-1] + SEQ]
    packed = dataclasses.replace(b, cu_seqlens=torch.tensor(bounds, dtype=torch.int32))
    results = []
    for micro_batch_ in (b, packed):
        model = build()
        output, loss = omni_forward_step(micro_batch_, model)
        loss_sum, _, _ = loss(output)
        loss_sum.backward()
        results.append((output.reshape(b.tokens.shape), {n: p.grad for n, p in model.named_parameters()}))
    (rows, row_grads), (flat, flat_grads) = results
    mask = b.loss_mask.bool()
    torch.testing.assert_close(flat[mask], rows[mask], atol=1e-5, rtol=0)
    for name, grad in row_grads.items():
        error = (flat_grads[name] - grad).norm() / grad.norm().clamp_min(1e-12)
        assert error < 1e-5, (name, error)


def test_mlp_projectors_emit_one_token_per_patch_and_per_encoder_frame():
    overrides = ["model.omni.vision_projector=mlp", "model.omni.audio_projector=mlp"]
    model = build(*overrides)
    omni = load_config(None, CONFIG + overrides).model.omni
    b = micro_batch(omni, MIXED, SEQ * 2, VOCAB, video_frames=2, audio_frames=10)
    counts = {kind: int((b.tokens == PLACEHOLDER_IDS[kind]).sum()) for kind in PLACEHOLDER_IDS}
    # 16 patches per image / frame (2 videos x 2 frames); 10 mel frames -> 5 encoder tokens (2 clips)
    assert counts == {"image": 16, "video": 2 * 2 * 16, "audio": 2 * 5}
    losses = token_losses(model, b)
    (losses * b.loss_mask).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
