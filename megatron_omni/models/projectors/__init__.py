"""Projectors from encoder features to the LLM's hidden size: a 2-layer MLP (mlp.py), the
3D-Resampler for images and video (resampler.py) and the Conv-GMLP audio projector (conv_gmlp.py)."""
