"""Encoder towers (vision, audio) built from megatron-core transformer layers."""
