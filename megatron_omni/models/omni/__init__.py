"""The omni model (model.py) and the media token counts and checks it shares with training (media.py)."""
