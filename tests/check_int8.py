#!/usr/bin/env python3
"""int8 models made by onnxruntime's quantizer, and onnxruntime's answers on them.

Called by tests/int8.rs with a folder holding int8.json, the float model, and
little-endian float32 tensors already preprocessed by fennec (calib.bin: the
calibration images, input.bin: the images to score). It writes, next to them:

  - qdq.onnx: quantize_static, QDQ format, uint8 activations, int8 per-channel weights;
  - qoperator.onnx: quantize_static, QOperator format (QLinearConv, QLinearMatMul,
    standard domain only: Conv and MatMul are quantized, the rest stays float);
  - dynamic.onnx: quantize_dynamic (DynamicQuantizeLinear, ConvInteger, MatMulInteger);
  - <name>.ort.bin for each of those and for every extra model listed in int8.json
    (e.g. the file `fennec quantize` wrote, which must also pass onnx.checker):
    onnxruntime's probabilities on input.bin with graph optimisations off, i.e. the
    ONNX operators evaluated one by one as the standard defines them;
  - <name>.ortopt.bin: the same with onnxruntime's default optimisations, which fuse
    Q/DQ pairs into its own integer kernels (these round differently and may move a
    borderline image to another class: the Rust test bounds how often).

Exit status 0 when all of that worked; otherwise the error.
Needs: pip install -r .ci/requirements.txt (onnx, onnxruntime, numpy).
"""

import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)


class Reader(CalibrationDataReader):
    def __init__(self, name, images):
        self.items = iter([{name: images[i : i + 1]} for i in range(len(images))])

    def get_next(self):
        return next(self.items, None)


def main():
    folder = sys.argv[1]
    with open(os.path.join(folder, "int8.json")) as f:
        case = json.load(f)
    path = lambda name: os.path.join(folder, name)  # noqa: E731
    model = path(case["model"])
    input_name = case["input_name"]
    calib = np.fromfile(path("calib.bin"), dtype="<f4").reshape(case["calib_shape"])
    x = np.fromfile(path("input.bin"), dtype="<f4").reshape(case["input_shape"])

    # The shape inference onnxruntime recommends before quantizing.
    quantize_static(
        model, path("qdq.onnx"), Reader(input_name, calib),
        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8, per_channel=True,
    )
    quantize_static(
        model, path("qoperator.onnx"), Reader(input_name, calib),
        quant_format=QuantFormat.QOperator, activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["Conv", "MatMul"],
    )
    quantize_dynamic(model, path("dynamic.onnx"), weight_type=QuantType.QUInt8)

    for name in ["qdq.onnx", "qoperator.onnx", "dynamic.onnx"] + case.get("check", []):
        m = onnx.load(path(name))
        onnx.checker.check_model(m, full_check=True)
        ops = sorted({n.op_type for n in m.graph.node})
        reference = ort.SessionOptions()
        reference.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        for suffix, opts in [(".ort.bin", reference), (".ortopt.bin", ort.SessionOptions())]:
            sess = ort.InferenceSession(path(name), opts, providers=["CPUExecutionProvider"])
            (got,) = sess.run(None, {input_name: x})
            got.astype("<f4").tofile(path(name + suffix))
        print(f"{name:<22} onnx.checker ok  ops: {', '.join(ops)}")


if __name__ == "__main__":
    main()
