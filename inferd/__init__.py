"""inferd: a small, dependable image-classification daemon."""

__version__ = "0.1.0"
