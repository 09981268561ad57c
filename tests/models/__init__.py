"""Models and reloads: building, loading, the repository, the batcher, preprocessing and decoding."""
