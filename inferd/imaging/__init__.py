"""Images: bytes -> the tensor a model wants (preprocess.py), what a JPEG's structure says about
its completeness (jpeg.py), the memory budget for decoding (budget.py), why an image is refused
(errors.py), and where the codecs' own warnings go (codec_log.py)."""
