"""Position ids and rotary embeddings for the omni model (TMRoPE)."""
