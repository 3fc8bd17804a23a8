"""Censored sampling of diffusion models from a few minutes of human feedback (docs/architecture.md)."""
