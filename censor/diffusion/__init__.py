"""The diffusion model: networks, sources, denoisers, schedulers and step formulas, training."""
