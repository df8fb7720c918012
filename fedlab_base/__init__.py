"""The bottom layer: validation helpers, the config schema and the names of every choice.

``clients/`` and ``strategies/`` build on it; ``fedlab_app/`` builds on all three. Nothing here
imports torch, Flower or any other fedlab package (``pyproject.toml``'s import-linter contracts).
"""
