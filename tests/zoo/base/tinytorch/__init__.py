"""TinyTorch: a tiny deep learning framework built from scratch (zoo base submission)."""

__version__ = "0.1.0"
