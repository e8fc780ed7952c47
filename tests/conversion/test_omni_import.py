"""HF Qwen3 + SigLIP + Whisper folders → a weights-only omni checkpoint (launch/convert_checkpoint.py
from-hf-omni): the loaded model reproduces transformers' encoders and LLM; a 2-rank TP=2 phase-1
run starts from it and leaves the frozen parts bit for bit as imported; bad folders fail clearly."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (Qwen3Config, Qwen3ForCausalLM, SiglipVisionConfig, SiglipVisionModel,
                          WhisperConfig)
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from megatron_omni.config import config_from_dict, load_config
from megatron_omni.conversion.common import ConversionError
from megatron_omni.conversion.omni import derive_config, hf_folders_to_omni, read_sources
from omni_data_prep.multimodal.demo import prepare_omni_demo
from tests.parallel.conftest import checkpoint_tensors

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "omni_tiny_cpu.yaml"
VISION = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
              patch_size=4, image_size=32, layer_norm_eps=1e-6)
"""The tiny vision preset at the demo's 32 px (examples/omni_tiny_cpu.yaml)."""
AUDIO = dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=96, num_mel_bins=80,
             max_source_positions=1500, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=96)
"""The tiny audio preset with Whisper's 80 mels and 30 s (examples/omni_tiny_cpu.yaml)."""


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """O(1) activations with non-trivial norms; Whisper's sinusoidal positions stay as they are."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" in name:
                continue
            p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name and name.endswith("weight")
                    else 0.1 * torch.randn_like(p))
    return model.eval()


def hf_qwen3(vocab_size: int) -> Qwen3ForCausalLM:
    cfg = Qwen3Config(vocab_size=vocab_size, hidden_size=64, intermediate_size=192, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                      rms_norm_eps=1e-6, tie_word_embeddings=True,
                      rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0})
    return randomise(Qwen3ForCausalLM(cfg), 0)


def hf_siglip(**overrides) -> SiglipVisionModel:
    return randomise(SiglipVisionModel(SiglipVisionConfig(**{**VISION, **overrides})), 1)


def hf_whisper() -> WhisperEncoder:
    return randomise(WhisperEncoder(WhisperConfig(**AUDIO)), 2)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(demo corpus --set strings, HF folders, HF models, converter summary)."""
    root = tmp_path_factory.mktemp("omni_import")
    values = prepare_omni_demo(root / "demo", num_images=8, num_audio=4, num_videos=2, num_conversations=2,
                               num_docs=40)
    from megatron_omni.data.tokenizer import load_tokenizer

    vocab_size = load_tokenizer(values["tokenizer"]).vocab_size
    models = {"llm": hf_qwen3(vocab_size), "vision": hf_siglip(), "audio": hf_whisper()}
    for name, model in models.items():
        model.save_pretrained(root / name)
    cmd = [sys.executable, str(ROOT / "launch" / "convert_checkpoint.py"), "from-hf-omni",
           "--llm", str(root / "llm"), "--vision", str(root / "vision"), "--audio", str(root / "audio"),
           "--out", str(root / "init"), "--config", str(CONFIG), "--set", "training.seed=7"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=root,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    sets = [f"data.tokenizer={values['tokenizer']}"] + [
        f"data.multimodal.{name}=[{','.join(paths)}]" for name, paths in values["multimodal"].items()]
    return sets, root, models, summary


def test_summary_names_imported_and_fresh_parts(imported):
    _, root, _, summary = imported
    assert summary["checkpoint"] == str(root / "init" / "iter_0000000")
    # per layer 12 tensors (q, k, v fused); vision: patch embed 2, positions, post-LN 2 (no pooling
    # head); audio: 2 convs 4, positions, LN 2; LLM: 8 per layer, embedding (tied), final norm
    assert summary["imported"] == {"llm": 8 * 4 + 2, "vision_encoder": 12 * 2 + 5, "audio_encoder": 12 * 2 + 7}
    assert summary["fresh"] and all(k.startswith(("vision_projector.", "audio_projector.")) for k in summary["fresh"])
    assert "model.omni.vision_overrides={image_size: 32}" in summary["model_sets"]


@pytest.mark.usefixtures("megatron_single_rank")
def test_loaded_model_matches_transformers(imported):
    from megatron_omni.models.omni.model import OmniModel
    from megatron_omni.training import checkpoint

    _, root, models, _ = imported
    path = root / "init" / "iter_0000000"
    common = checkpoint.read_common(path)
    cfg, vocab = config_from_dict(common["config"]), common["vocab_size"]
    assert (cfg.parallel.tp, cfg.training.precision, cfg.model.backend) == (1, "fp32", "local")
    never = {k: vocab + i for i, k in enumerate(("image", "video", "audio"))}  # text-only batches
    model = OmniModel(cfg, vocab, never)
    checkpoint.load_checkpoint(path, [model])
    model.eval()
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, 32, 32, generator=g)
    mel = torch.randn(1, 80, 3000, generator=g)
    tokens = torch.randint(0, vocab, (2, 24), generator=g)
    positions = torch.arange(24).expand(2, 3, 24)  # text: all three TMRoPE axes equal = 1-D RoPE
    with torch.no_grad():
        diffs = {
            "vision": model.vision_encoder(pixels) - models["vision"](pixel_values=pixels).last_hidden_state,
            "audio": model.audio_encoder(mel) - models["audio"](mel).last_hidden_state,
            "llm": model(tokens, positions, None)[..., :vocab] - models["llm"](tokens).logits,  # padded vocab
        }
    worst = {k: d.abs().max().item() for k, d in diffs.items()}
    assert all(v < 1e-4 for v in worst.values()), worst


def test_tp2_phase1_run_starts_from_import(imported, tmp_path):
    sets, root, _, summary = imported
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "launch" / "pretrain_omni.py"), "--phase", "1", "--config", str(CONFIG)]
    for s in sets + ["training.train_steps=2", "training.warmup_steps=1", f"checkpoint.dir={run}",
                     f"checkpoint.load={root / 'init'}"]:
        cmd += ["--set", s]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "initialised weights from" in done.stdout + done.stderr
    start = checkpoint_tensors(Path(summary["checkpoint"]))
    end = checkpoint_tensors(run / "iter_0000002")
    fresh = {k for k in start if k.startswith(("vision_projector.", "audio_projector."))}
    frozen = [k for k in start if k not in fresh]
    for part in ("decoder.", "embedding.", "vision_encoder.", "audio_encoder."):
        assert any(k.startswith(part) for k in frozen), (part, frozen)
    assert [k for k in frozen if not torch.equal(start[k], end[k])] == []
    assert any(not torch.equal(start[k], end[k]) for k in fresh)  # phase 1 trained the projectors


@pytest.mark.usefixtures("megatron_single_rank")
def test_projectors_are_seeded(imported, tmp_path):
    _, root, _, summary = imported
    cli = checkpoint_tensors(Path(summary["checkpoint"]))
    for seed, same in ((7, True), (8, False)):
        out = hf_folders_to_omni(root / "llm", root / "vision", root / "audio", tmp_path / str(seed), CONFIG,
                                 [f"training.seed={seed}"])
        again = checkpoint_tensors(Path(out["checkpoint"]))
        equal = [torch.equal(again[k], cli[k]) for k in summary["fresh"]]
        assert all(equal) if same else not all(equal), seed  # (norms start at 1 whatever the seed)
        assert all(torch.equal(again[k], cli[k]) for k in cli if k not in summary["fresh"])


def test_vision_folder_that_is_not_siglip(imported):
    _, root, _, _ = imported
    cmd = [sys.executable, str(ROOT / "launch" / "convert_checkpoint.py"), "from-hf-omni", "--llm", str(root / "llm"),
           "--vision", str(root / "audio"), "--audio", str(root / "audio"), "--out", str(root / "never")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: --vision {root / 'audio'}: config model_type='whisper': expected 'siglip' or 'siglip_vision_model'")
    assert not (root / "never").exists()


def test_folder_not_matching_the_config(imported, tmp_path):
    _, root, _, _ = imported
    hf_siglip(hidden_size=32, intermediate_size=48).save_pretrained(tmp_path / "vision32")
    with pytest.raises(ConversionError, match=r"--vision .*vision32: the vision encoder does not match the "
                                              r"config \(model.omni.vision=tiny, vision_overrides=\{'image_size': "
                                              r"32\}\): hidden_size: folder 32 vs config 64; ffn_hidden_size: "
                                              r"folder 48 vs config 96$"):
        hf_folders_to_omni(root / "llm", tmp_path / "vision32", root / "audio", root / "never", CONFIG)
    with pytest.raises(ConversionError, match=r"--llm .*llm: the Qwen3 LLM does not match the config "
                                              r"\(model.preset=tiny\): hidden_size: folder 64 vs config 128"):
        hf_folders_to_omni(root / "llm", root / "vision", root / "audio", root / "never", CONFIG,
                           ["model.hidden_size=128"])


def test_model_section_derived_without_config(imported, tmp_path):
    _, root, _, _ = imported
    hf_siglip(hidden_size=32, intermediate_size=48).save_pretrained(tmp_path / "vision32")
    src = read_sources(root / "llm", tmp_path / "vision32", root / "audio")
    base = load_config(None, ["model.omni.preset=tiny", "model.hidden_size=128"])
    cfg = derive_config(base, src, set(), {})
    assert (cfg.model.hidden_size, cfg.model.preset) == (64, "custom")  # 128 unpinned: derived
    assert (cfg.model.omni.vision, cfg.model.omni.vision_overrides) == (
        "tiny", {"hidden_size": 32, "ffn_hidden_size": 48, "image_size": 32})
    assert (cfg.model.omni.audio, cfg.model.omni.audio_overrides) == (
        "tiny", {"num_mel_bins": 80, "max_source_positions": 1500})
