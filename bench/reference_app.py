"""The reference design, rebuilt for the benchmark only: FastAPI + uvicorn, as its README describes.

- the model is loaded at startup (MODEL_PATH, LABELS_PATH, NUM_THREADS as in the reference);
- `async def` endpoints call onnxruntime synchronously (so they block the event loop while they run);
- images are fully decoded, converted to RGB and resized straight to 224x224 (no crop, no draft);
- /infer/batch classifies its files one after another.

Same model file and the same normalisation as inferd (read from the model directory's model.ini,
MANIFEST_PATH), so only the serving design differs. Run: `uvicorn bench.reference_app:app`.
"""

from __future__ import annotations

import contextlib
import io
import os
import time

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before onnxruntime loads; see DESIGN.md

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from fastapi import FastAPI, File, HTTPException, UploadFile  # noqa: E402
from PIL import Image  # noqa: E402

from bench.peers.classifier import read_manifest  # noqa: E402

MODEL: dict = {}


@contextlib.asynccontextmanager
async def lifespan(app):
    load_model()
    yield
    MODEL.clear()


app = FastAPI(title="reference image classifier", lifespan=lifespan)


def load_model() -> None:
    options = ort.SessionOptions()
    threads = int(os.environ.get("NUM_THREADS", "0"))
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(os.environ["MODEL_PATH"], sess_options=options,
                                   providers=["CPUExecutionProvider"])
    with open(os.environ["LABELS_PATH"], encoding="utf-8") as labels:
        MODEL["labels"] = [line.strip() for line in labels if line.strip()]
    MODEL["session"] = session
    MODEL["input"] = session.get_inputs()[0].name
    # inferd's manifest, so both servers feed the model the same normalisation
    manifest = read_manifest(os.environ["MANIFEST_PATH"])
    MODEL["mean"], MODEL["std"], MODEL["range"] = manifest.mean, manifest.std, manifest.value_range


def preprocess(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224))
    pixels = np.array(image).astype(np.float32) * (MODEL["range"] / 255.0)
    pixels = (pixels - MODEL["mean"]) / MODEL["std"]
    return np.expand_dims(pixels.transpose(2, 0, 1), 0).astype(np.float32)


def predict(data: bytes, top_k: int) -> dict:
    started = time.time()
    logits = MODEL["session"].run(None, {MODEL["input"]: preprocess(data)})[0][0]
    exp = np.exp(logits - logits.max())
    probabilities = exp / exp.sum()
    best = np.argsort(probabilities)[::-1][:top_k]
    return {"predictions": [{"label": MODEL["labels"][i], "index": int(i), "confidence": float(probabilities[i])}
                            for i in best],
            "inference_time_ms": (time.time() - started) * 1000, "model": os.path.basename(os.environ["MODEL_PATH"])}


@app.get("/health")
async def health() -> dict:
    return {"status": "ok", "model_loaded": "session" in MODEL}


@app.post("/infer")
async def infer(file: UploadFile = File(...), top_k: int = 5) -> dict:
    data = await file.read()
    try:
        return predict(data, top_k)
    except Exception as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None


@app.post("/infer/batch")
async def infer_batch(files: list[UploadFile] = File(...), top_k: int = 5) -> dict:
    started, results = time.time(), []
    for upload in files:
        try:
            results.append({"filename": upload.filename, **predict(await upload.read(), top_k), "error": None})
        except Exception as exc:
            results.append({"filename": upload.filename, "predictions": None, "error": str(exc)})
    failed = sum(1 for r in results if r["error"])
    return {"total_images": len(results), "successful": len(results) - failed, "failed": failed,
            "total_time_ms": (time.time() - started) * 1000, "results": results}
