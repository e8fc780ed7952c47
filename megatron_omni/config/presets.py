"""Model size presets (Qwen3 shapes from the released configs)."""
from __future__ import annotations

CUSTOM_PRESET = "custom"
"""The preset of a model that matches no named one (e.g. an HF import): no preset values, every
field as the config gives it (schema defaults otherwise); from-hf prints the ``--set`` strings."""

MODEL_PRESETS: dict[str, dict] = {
    CUSTOM_PRESET: {},
    "tiny": dict(num_layers=4, hidden_size=64, ffn_hidden_size=192, num_attention_heads=4,
                 num_query_groups=2, head_dim=16, max_position_embeddings=4096,
                 rope_theta=1_000_000.0, tie_embeddings=True),
    "qwen3-0.6b": dict(num_layers=28, hidden_size=1024, ffn_hidden_size=3072,
                       num_attention_heads=16, num_query_groups=8, head_dim=128,
                       vocab_size=151936, max_position_embeddings=40960,
                       rope_theta=1_000_000.0, tie_embeddings=True),
    "qwen3-1.7b": dict(num_layers=28, hidden_size=2048, ffn_hidden_size=6144,
                       num_attention_heads=16, num_query_groups=8, head_dim=128,
                       vocab_size=151936, max_position_embeddings=40960,
                       rope_theta=1_000_000.0, tie_embeddings=True),
    "qwen3-8b": dict(num_layers=36, hidden_size=4096, ffn_hidden_size=12288,
                     num_attention_heads=32, num_query_groups=8, head_dim=128,
                     vocab_size=151936, max_position_embeddings=40960,
                     rope_theta=1_000_000.0, tie_embeddings=False),
    "qwen3-32b": dict(num_layers=64, hidden_size=5120, ffn_hidden_size=25600,
                      num_attention_heads=64, num_query_groups=8, head_dim=128,
                      vocab_size=151936, max_position_embeddings=40960,
                      rope_theta=1_000_000.0, tie_embeddings=False),
}

OMNI_PRESETS: dict[str, dict] = {
    "tiny": dict(vision="tiny", audio="tiny", vision_projector="resampler", audio_projector="conv_gmlp",
                 image_tokens=4, frames_per_package=2, resampler_heads=4, max_video_frames=8),
    # SigLIP so400m/14 at its released 384 px (27 x 27 patches, so the HF weights import; the
    # plan's 448 px would need interpolated position embeddings), Whisper-medium, 64 resampler
    # queries per image and per package of 6 frames, Conv-GMLP 4x, TMRoPE, contrastive 0.1.
    "plan": dict(vision="siglip-so400m-patch14-384", audio="whisper-medium",
                 vision_projector="resampler", audio_projector="conv_gmlp", image_tokens=64,
                 frames_per_package=6, resampler_heads=16, max_video_frames=64,
                 contrastive_weight=0.1),
}
"""Encoder/projector presets of model.omni (schema.OmniModelConfig)."""
