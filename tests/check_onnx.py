#!/usr/bin/env python3
"""Cross-check fennec's exported ONNX models with the reference tools.

Called by tests/export_parity.rs with a folder holding cases.json and, per case,
<name>.onnx, <name>.input.bin and <name>.expected.bin (little-endian float32; the
expected values are burn's probabilities). For each model:

  - onnx.checker.check_model(full_check=True): the file is valid ONNX, shapes infer;
  - the interface fennec promises: one input `image` [N, C, H, W] float32 with a
    symbolic batch, one output `probabilities` [N, classes] float32, producer fennec,
    fennec.* metadata (labels, preprocessing, weights hash);
  - onnxruntime (CPU) on the input: max |ort - burn| <= tolerance, same argmax per row.

Exit status 0 when every case passes; otherwise one line per failure.
Needs: pip install -r .ci/requirements.txt (onnx, onnxruntime, numpy).
"""

import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort


def check(folder, case):
    name = case["name"]
    path = os.path.join(folder, case["model"])
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    problems = []
    if model.producer_name != "fennec":
        problems.append(f"producer_name is {model.producer_name!r}")
    props = {p.key: p.value for p in model.metadata_props}
    for key in ("fennec.labels", "fennec.preprocess", "fennec.weights_sha256", "fennec.output"):
        if key not in props:
            problems.append(f"metadata {key} missing")
    if len(json.loads(props.get("fennec.labels", "[]"))) != case["classes"]:
        problems.append("label count differs from the output size")
    g = model.graph
    init = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in init]
    if [i.name for i in inputs] != ["image"] or [o.name for o in g.output] != ["probabilities"]:
        problems.append(f"interface is {[i.name for i in inputs]} -> {[o.name for o in g.output]}")
    dims = [d.dim_param or d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    if dims != ["N"] + case["input_shape"][1:]:
        problems.append(f"input dims {dims}")
    for v in list(inputs) + list(g.output):
        if v.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            problems.append(f"{v.name} is not float32")

    x = np.fromfile(os.path.join(folder, case["input"]), dtype="<f4").reshape(case["input_shape"])
    want = np.fromfile(os.path.join(folder, case["expected"]), dtype="<f4").reshape(len(x), case["classes"])
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (got,) = sess.run(["probabilities"], {"image": x})
    diff = float(np.abs(got - want).max())
    flips = int((got.argmax(1) != want.argmax(1)).sum())
    if diff > case["tolerance"] or flips:
        problems.append(f"max |ort - burn| {diff:.3e} (tolerance {case['tolerance']:.0e}), {flips} argmax differ")
    print(f"{name:<22} onnx.checker ok  max |onnxruntime - burn| = {diff:.3e}  argmax flips: {flips}")
    return [f"{name}: {p}" for p in problems]


def main():
    folder = sys.argv[1]
    with open(os.path.join(folder, "cases.json")) as f:
        cases = json.load(f)
    print(f"onnx {onnx.__version__}, onnxruntime {ort.__version__}")
    failures = []
    for case in cases:
        try:
            failures += check(folder, case)
        except Exception as e:  # a checker or runtime error is a failure of this case
            failures.append(f"{case['name']}: {type(e).__name__}: {e}")
    for f in failures:
        print("FAIL", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
