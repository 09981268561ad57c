"""inferd: a small, dependable image-classification daemon."""

import os

__version__ = "0.1.0"

# Official onnxruntime wheels carry telemetry that writes a persistent device id on first use.
# Nothing leaves the box unless the operator opts in by setting the variable themselves.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
