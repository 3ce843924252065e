#!/usr/bin/env python3
"""The Python peer of `fennec serve` for bench/serve.sh: Starlette + uvicorn + onnxruntime,
Pillow decode, written for this benchmark the way such a service is usually written.

POST /v1/predict takes a raw image body and answers as fennec does:
{"results": [{"name": null, "predictions": [{"label", "index", "probability"}]}]} (top 1, or ?k=).
GET /healthz answers {"status": "ok"}. Preprocessing and labels come from the model's
`fennec.preprocess` / `fennec.labels` metadata when present; otherwise Keras'
flow_from_directory defaults at the input size (RGB or L by channel count, nearest resize,
rescale 1/255) and the output indices as labels, which is what `fennec` does for such a model.
Decoding and inference run in Starlette's thread pool (onnxruntime releases the GIL);
onnxruntime keeps its default threading. Bad images get a 4xx JSON error.

  python serve_peer.py MODEL.onnx --port 8081
"""
import argparse
import io
import json

import numpy as np
import onnxruntime as ort
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse
from starlette.routing import Route


def model_setup(path):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    inp = session.get_inputs()[0]
    shape = inp.shape
    nchw = shape[1] in (1, 3) and shape[3] not in (1, 3)
    channels, height, width = (shape[1], shape[2], shape[3]) if nchw else (shape[3], shape[1], shape[2])
    pre = {"height": height, "width": width, "scale": 1 / 255, "mean": [], "std": []}
    if "fennec.preprocess" in meta:
        pre.update(json.loads(meta["fennec.preprocess"]))
    mode = "L" if channels == 1 else "RGB"
    n_out = session.get_outputs()[0].shape[-1]
    labels = json.loads(meta["fennec.labels"]) if "fennec.labels" in meta else [str(i) for i in range(n_out)]
    logits = meta.get("fennec.output") == "logits"
    return session, inp.name, nchw, mode, pre, labels, logits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8081)
    a = ap.parse_args()
    session, input_name, nchw, mode, pre, labels, logits = model_setup(a.model)
    mean = np.array(pre.get("mean") or [0.0], dtype=np.float32)
    std = np.array(pre.get("std") or [1.0], dtype=np.float32)

    def score(body, k):
        img = Image.open(io.BytesIO(body))
        img = img.convert(mode).resize((pre["width"], pre["height"]), Image.NEAREST)
        x = np.asarray(img, dtype=np.float32) * np.float32(pre["scale"])
        if x.ndim == 2:
            x = x[:, :, None]
        x = (x - mean) / std
        x = x.transpose(2, 0, 1)[None] if nchw else x[None]
        probs = session.run(None, {input_name: np.ascontiguousarray(x)})[0][0]
        if logits:
            e = np.exp(probs - probs.max())
            probs = e / e.sum()
        top = np.argsort(-probs)[:k]
        return [{"label": labels[i], "index": int(i), "probability": float(probs[i])} for i in top]

    async def predict(request):
        try:
            k = max(1, int(request.query_params.get("k", "1")))
        except ValueError:
            return JSONResponse({"error": "bad k", "kind": "bad_query"}, status_code=400)
        ctype = request.headers.get("content-type", "")
        if ctype and not (ctype.startswith("image/") or ctype.startswith("application/octet-stream")):
            return JSONResponse({"error": "not an image type", "kind": "unsupported_media_type"}, status_code=415)
        body = await request.body()
        try:
            preds = await run_in_threadpool(score, body, k)
        except Exception as e:  # Pillow's errors for bad images
            return JSONResponse({"error": str(e), "kind": "bad_image"}, status_code=422)
        return JSONResponse({"results": [{"name": None, "predictions": preds}]})

    async def healthz(request):
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[Route("/v1/predict", predict, methods=["POST"]), Route("/healthz", healthz)])
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
