"""Checkpoint conversion between our megatron-core models and Hugging Face formats."""
