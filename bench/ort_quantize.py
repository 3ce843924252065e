#!/usr/bin/env python3
"""onnxruntime's own int8 file of an f32 model, for the int8 benchmark (bench/int8.sh).

The peer's int8 model is made by the peer's tool: `quantize_static` in QDQ format
(per-channel symmetric int8 weights, uint8 activations, min/max calibration), on
images preprocessed as `ort_bench.py` does (RGB or L, nearest resize, / 255).
Needs onnxruntime, numpy and Pillow (the peers' venv has them).

    python3 bench/ort_quantize.py MODEL.onnx CALIB_DIR OUT.onnx [--count 200]
"""

import argparse
import os
import random

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_static)
from PIL import Image


def images(folder, count, seed):
    """`count` image paths from `folder/<class>/*`, the same number from each class."""
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    if not classes:
        raise SystemExit(f"{folder}: no class folders")
    rng = random.Random(seed)
    per_class = max(1, count // len(classes))
    picked = []
    for c in classes:
        files = sorted(os.listdir(os.path.join(folder, c)))
        rng.shuffle(files)
        picked += [os.path.join(folder, c, f) for f in files[:per_class]]
    return picked


class Reader(CalibrationDataReader):
    def __init__(self, model, paths):
        inp = model.graph.input[0]
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        self.name = inp.name
        self.nchw = dims[1] in (1, 3)
        c, h, w = (dims[1], dims[2], dims[3]) if self.nchw else (dims[3], dims[1], dims[2])
        self.mode, self.size = ("RGB" if c == 3 else "L"), (w, h)
        self.paths = iter(paths)

    def get_next(self):
        path = next(self.paths, None)
        if path is None:
            return None
        img = Image.open(path).convert(self.mode).resize(self.size, Image.NEAREST)
        x = np.asarray(img, dtype=np.float32).reshape(self.size[1], self.size[0], -1) / 255.0
        x = x.transpose(2, 0, 1) if self.nchw else x
        return {self.name: x[None].copy()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("calibrate", help="DIR/<class>/* images")
    ap.add_argument("out")
    ap.add_argument("--count", type=int, default=200, help="calibration images (split over the classes)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    model = onnx.load(a.model)
    reader = Reader(model, images(a.calibrate, a.count, a.seed))
    quantize_static(a.model, a.out, reader, quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True, calibrate_method=CalibrationMethod.MinMax)
    f32, q = os.path.getsize(a.model), os.path.getsize(a.out)
    print(f"{a.out}: {q / 1e6:.1f} MB ({100 * q / f32:.1f} % of {a.model})")


if __name__ == "__main__":
    main()
