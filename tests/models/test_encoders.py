"""SigLIP-style vision and Whisper-style audio encoders against transformers (fp32, 1e-4; outputs
and input gradients) at TP=1 and TP=2, with weights imported from randomly initialised HF models;
video, lengths, HF folders, presets and the error messages."""
import pytest
import torch
from transformers import (SiglipVisionConfig, SiglipVisionModel, WhisperConfig,
                          WhisperForConditionalGeneration)
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from megatron_omni.conversion import siglip, whisper
from megatron_omni.conversion.qwen3 import ConversionError
from megatron_omni.config.encoders import AUDIO_PRESETS, VISION_PRESETS
from megatron_omni.contract.projectors import stride2_length
from megatron_omni.models.encoders.audio import AudioEncoder
from megatron_omni.models.encoders.vision import VisionEncoder

from .multirank import run_ranks

TOL = 1e-4
# Odd sizes: an 18-px image with 4-px patches drops its last 2 px rows and columns ('valid' conv)
# -> 4 x 4 patches.
SIGLIP = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              image_size=18, patch_size=4)
WHISPER = dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=96,
               num_mel_bins=16, max_source_positions=13, decoder_layers=1, decoder_attention_heads=4,
               decoder_ffn_dim=32, vocab_size=64, max_target_positions=16, pad_token_id=1,
               bos_token_id=0, eos_token_id=2, decoder_start_token_id=0)


def hf_siglip(seed: int = 0) -> SiglipVisionModel:
    torch.manual_seed(seed)
    return SiglipVisionModel(SiglipVisionConfig(**SIGLIP)).eval()


def hf_whisper(seed: int = 0) -> WhisperEncoder:
    torch.manual_seed(seed)
    return WhisperEncoder(WhisperConfig(**WHISPER)).eval()


def imported_vision(hf: SiglipVisionModel) -> VisionEncoder:
    model = VisionEncoder(siglip.config_from_hf(hf.config)).eval()
    siglip.import_hf(model, hf.state_dict())
    return model


def imported_audio(hf: WhisperEncoder) -> AudioEncoder:
    model = AudioEncoder(whisper.config_from_hf(hf.config)).eval()
    whisper.import_hf(model, hf.state_dict())
    return model


def assert_same_outputs_and_input_grads(reference, model, x: torch.Tensor) -> None:
    """Outputs, and gradients of a fixed random projection of them with respect to the input
    (which run backward through every TP layer), agree within TOL."""
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref, out = reference(x_ref), model(x_ours)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)
    weights = torch.randn(ref.shape, generator=torch.Generator().manual_seed(7))
    (ref * weights).sum().backward()
    (out * weights).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, atol=TOL, rtol=0)


def check_vision_matches_hf() -> None:
    hf = hf_siglip()
    model = imported_vision(hf)
    pixels = torch.randn(3, 3, 18, 18, generator=torch.Generator().manual_seed(1))
    assert model(pixels).shape == (3, 16, 64)
    assert_same_outputs_and_input_grads(lambda x: hf(pixel_values=x).last_hidden_state, model, pixels)


def check_audio_matches_hf() -> None:
    hf = hf_whisper()
    model = imported_audio(hf)
    mel = torch.randn(2, 16, 26, generator=torch.Generator().manual_seed(2))
    assert model(mel).shape == (2, 13, 64)
    assert_same_outputs_and_input_grads(lambda x: hf(x).last_hidden_state, model, mel)


def test_vision_matches_hf_tp1():
    check_vision_matches_hf()


def test_audio_matches_hf_tp1():
    check_audio_matches_hf()


def _tp2_worker():
    check_vision_matches_hf()
    check_audio_matches_hf()


def test_encoders_match_hf_tp2():
    run_ranks(_tp2_worker, 2)


def test_video_equals_per_frame_calls():
    model = imported_vision(hf_siglip())
    frames = torch.randn(2, 3, 3, 18, 18, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        video = model(frames)
        per_frame = torch.stack([model(frames[:, t]) for t in range(3)], dim=1)
    assert video.shape == (2, 3, 16, 64)
    torch.testing.assert_close(video, per_frame, atol=1e-6, rtol=0)


@pytest.mark.parametrize("frames", [1, 9, 26])
def test_audio_lengths(frames):
    model = imported_audio(hf_whisper())
    with torch.no_grad():
        out = model(torch.randn(1, 16, frames))
    assert out.shape == (1, stride2_length(frames), 64) == (1, (frames + 1) // 2, 64)


def test_whisper_k_bias_is_zero_and_gets_no_gradient():
    model = imported_audio(hf_whisper()).train()
    model(torch.randn(2, 16, 20)).square().sum().backward()
    for layer in model.transformer.layers:
        bias = layer.self_attention.linear_qkv.bias
        k_part = lambda t: t.view(4, 3, 16)[:, 1]  # noqa: E731  per head [q; k; v], head_dim 16
        assert torch.count_nonzero(k_part(bias)) == 0
        assert torch.count_nonzero(k_part(bias.grad)) == 0
        assert torch.count_nonzero(bias.grad) > 0


def test_import_from_hf_folders(tmp_path):
    """Folders (config.json + safetensors); Whisper from a full WhisperForConditionalGeneration
    (keys under model.encoder., decoder ignored); SigLIP keys under vision_model. as older
    checkpoints store them."""
    torch.manual_seed(4)
    full = WhisperForConditionalGeneration(WhisperConfig(**WHISPER)).eval()
    full.save_pretrained(tmp_path / "whisper")
    state, cfg = whisper.load_hf_folder(tmp_path / "whisper")
    assert cfg == whisper.config_from_hf(full.config)
    audio = AudioEncoder(cfg).eval()
    whisper.import_hf(audio, tmp_path / "whisper")
    mel = torch.randn(1, 16, 26)
    with torch.no_grad():
        torch.testing.assert_close(audio(mel), full.model.encoder(mel).last_hidden_state, atol=TOL, rtol=0)

    hf = hf_siglip(5)
    hf.save_pretrained(tmp_path / "siglip")
    vision = VisionEncoder(siglip.config_from_hf(hf.config)).eval()
    siglip.import_hf(vision, tmp_path / "siglip")
    prefixed = VisionEncoder(vision.cfg).eval()
    siglip.import_hf(prefixed, {"vision_model." + k: v for k, v in hf.state_dict().items()})
    pixels = torch.randn(1, 3, 18, 18)
    with torch.no_grad():
        ref = hf(pixel_values=pixels).last_hidden_state
        torch.testing.assert_close(vision(pixels), ref, atol=TOL, rtol=0)
        torch.testing.assert_close(prefixed(pixels), ref, atol=TOL, rtol=0)


def test_presets_match_released_configs():
    so400m = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                num_attention_heads=16, image_size=384, patch_size=14)
    assert siglip.config_from_hf(so400m) == VISION_PRESETS["siglip-so400m-patch14-384"]
    assert VISION_PRESETS["siglip-so400m-patch14-384"].num_patches == 27 * 27
    medium = WhisperConfig(d_model=1024, encoder_layers=24, encoder_attention_heads=16,
                           encoder_ffn_dim=4096, num_mel_bins=80, max_source_positions=1500)
    assert whisper.config_from_hf(medium) == AUDIO_PRESETS["whisper-medium"]
    assert AUDIO_PRESETS["whisper-medium"].max_frames == 3000


def test_bad_inputs_name_the_expected_shape():
    vision = VisionEncoder(VISION_PRESETS["tiny"])
    with pytest.raises(ValueError, match=r"images \[b, 3, 16, 16\] or video frames \[b, T, 3, 16, 16\]"):
        vision(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[b, 3, 16, 16\]"):
        vision(torch.randn(3, 16, 16))
    audio = AudioEncoder(AUDIO_PRESETS["tiny"])
    with pytest.raises(ValueError, match=r"log-mel \[b, 16, frames\] with 1 ≤ frames ≤ 64"):
        audio(torch.randn(1, 80, 20))
    with pytest.raises(ValueError, match=r"frames ≤ 64; got \(1, 16, 65\)"):
        audio(torch.randn(1, 16, 65))


def test_conversion_errors_name_keys_and_configs():
    hf_state = hf_siglip().state_dict()
    cfg = siglip.config_from_hf(hf_siglip().config)
    broken = {k: v for k, v in hf_state.items() if k != "encoder.layers.1.mlp.fc2.bias"}
    with pytest.raises(ConversionError,
                       match=r"missing key encoder.layers.1.mlp.fc2.bias \(expected shape \(64,\)\)"):
        siglip.hf_to_megatron(broken, cfg)
    with pytest.raises(ConversionError, match="expected exactly one SigLIP vision tower"):
        siglip.hf_to_megatron({"foo.weight": torch.zeros(1)}, cfg)
    with pytest.raises(ConversionError, match="hidden_act='gelu' is not supported"):
        siglip.config_from_hf(SiglipVisionConfig(hidden_act="gelu"))
    whisper_state = hf_whisper().state_dict()
    whisper_state["layers.0.self_attn.k_proj.bias"] = torch.zeros(64)
    with pytest.raises(ConversionError, match="unexpected key layers.0.self_attn.k_proj.bias"):
        whisper.hf_to_megatron(whisper_state, whisper.config_from_hf(hf_whisper().config))
    with pytest.raises(ConversionError, match="no config.json"):
        siglip.load_hf_folder(__file__.rsplit("/", 1)[0])
