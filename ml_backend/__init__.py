"""DECOMP active learning for dense segmentation, served as a Label Studio ML backend."""

__version__ = "0.1.0"
