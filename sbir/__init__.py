"""sbir: zero-shot sketch-based image retrieval (ZSE-SBIR and CLIP-AT). Pure-PyTorch core library."""

__version__ = "0.1.0"
