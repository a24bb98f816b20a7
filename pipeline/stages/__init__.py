"""DVC stage entry points: `python -m pipeline.stages.<name>`; each reads only its own params."""
