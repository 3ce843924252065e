#!/usr/bin/env bash
# fennec's main job end to end on the data shipped in the repo (data/fashion-mini):
# train the Fashion-MNIST model_3 config on CPU, export it to ONNX (fit does that at
# the end), then score the test folder with the runtime and print per-class accuracy.
#
#   scripts/demo.sh [RUN_DIR]        # default runs/demo (replaced if it exists)
#
# It builds with the dev profile, whose dependencies are optimised (Cargo.toml), and
# resolves features as `cargo test --workspace` does (`--workspace --tests`), so the
# tests and this script share one build.
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-runs/demo}

cargo build --quiet --workspace --bins --tests
rm -rf "$run"
"${CARGO_TARGET_DIR:-target}"/debug/fennec-train fit configs/fashion_model_3.yaml --data data/fashion-mini --out "$run"
"${CARGO_TARGET_DIR:-target}"/debug/fennec eval "$run/model.onnx" data/fashion-mini/test
