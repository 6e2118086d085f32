"""jointdiff: joint diffusion models (Deja, Trzcinski, Tomczak 2023) and their baselines, on PyTorch Lightning."""

__version__ = "0.1.0"
