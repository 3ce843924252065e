#!/usr/bin/env bash
# The trainer's GPU path, proven end to end: fennec-train fits model_3 (configs/model_3.yaml,
# 224x224 RGB) for 2 epochs on synthetic JPEGs, once on the GPU and once on the CPU, with
# the same binary, data and seed, and prints training images/s for both and how far apart
# the two loss curves are (the GPU computes in a different order, so they differ in the
# last digits, not in shape).
#
# Usage:
#   scripts/gpu-check.sh [--device wgpu|cuda] [--bin PATH] [--epochs N] [--images N]
#                        [--threads N] [--work DIR]
#   scripts/gpu-check.sh --build-only [--device wgpu|cuda]
#
#   --build-only  build fennec-train with the GPU feature (cargo --profile gpu, ~20 min
#                 cold on 2 cores) into .gpu/fennec-train and stop: for a GPU machine that
#                 reaches no package registry, build on another x86-64 Linux machine and
#                 copy .gpu/ over (the binary loads the Vulkan loader, libvulkan.so.1, at
#                 run time; nothing else)
#   --bin         the fennec-train to run [default: .gpu/fennec-train, built when missing]
#   --device      wgpu (default: Vulkan) or cuda (does not build offline: see README)
#   --epochs      epochs per run [2]; images/s is taken from the last epoch, when the
#                 decoded images are cached and the GPU kernels compiled
#   --images      training images [1024] (and a quarter as many for validation), 2 classes
#   --threads     CPU threads for the CPU run [all cores]
#   --work        folder for the data and the two run directories [a new temporary one]
#
# Needs python3 with numpy and Pillow (the synthetic images). Prints one summary table;
# exits 1 when a run fails or does not learn (training loss not falling, validation
# accuracy under 90 %). The two curves are not expected to match to the digit: the
# initial weights come from each backend's own random generator.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEVICE=wgpu
BIN=""
EPOCHS=2
IMAGES=1024
THREADS=""
WORK=""
BUILD_ONLY=0

usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --device) shift; case "${1:-}" in
                wgpu|cuda) DEVICE="$1" ;;
                *) echo "gpu-check: --device must be wgpu or cuda" >&2; exit 2 ;;
            esac ;;
        --bin) shift; BIN="${1:?--bin needs a path}" ;;
        --epochs) shift; EPOCHS="${1:?--epochs needs a number}" ;;
        --images) shift; IMAGES="${1:?--images needs a number}" ;;
        --threads) shift; THREADS="${1:?--threads needs a number}" ;;
        --work) shift; WORK="${1:?--work needs a folder}" ;;
        --build-only) BUILD_ONLY=1 ;;
        -h|--help) usage 0 ;;
        *) echo "gpu-check: unknown argument '$1'" >&2; usage 2 ;;
    esac
    shift
done
[[ $EPOCHS =~ ^[0-9]+$ && $EPOCHS -ge 2 ]] || { echo "gpu-check: --epochs must be 2 or more" >&2; exit 2; }
[[ $IMAGES =~ ^[0-9]+$ && $IMAGES -ge 64 ]] || { echo "gpu-check: --images must be 64 or more" >&2; exit 2; }

log() { printf 'gpu-check: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

build() {
    log "building fennec-train --features $DEVICE (profile gpu) into .gpu/"
    (cd "$ROOT" && cargo build --locked --profile gpu -p fennec-train --features "$DEVICE" \
        --target-dir target/gpu)
    mkdir -p "$ROOT/.gpu"
    strip -o "$ROOT/.gpu/fennec-train.tmp" "$ROOT/target/gpu/gpu/fennec-train"
    mv -f "$ROOT/.gpu/fennec-train.tmp" "$ROOT/.gpu/fennec-train"
    log "built $ROOT/.gpu/fennec-train ($(stat -c %s "$ROOT/.gpu/fennec-train") bytes)"
}

if [[ $BUILD_ONLY -eq 1 ]]; then build; exit 0; fi
if [[ -z $BIN ]]; then
    BIN="$ROOT/.gpu/fennec-train"
    [[ -x $BIN ]] || build
fi
[[ -x $BIN ]] || die "$BIN: not an executable file"

if [[ -z $WORK ]]; then WORK=$(mktemp -d /tmp/fennec-gpu-check.XXXXXX); fi
mkdir -p "$WORK"
log "work folder $WORK"
uname -sm >&2
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2

# ---------------------------------------------------------------- data
# 224x224 RGB noise with a per-class tint and a per-class bright square: learnable in
# two epochs. 15 % of the training images carry the other class's pattern, so the
# training loss cannot reach 0 and the two curves stay comparable; validation is clean.
if [[ ! -d $WORK/data/train ]]; then
    python3 - "$WORK/data" "$IMAGES" <<'EOF' || die "python3 with numpy and Pillow is needed to make the images"
import os, sys
import numpy as np
from PIL import Image
out, n_train = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(7)
for split, n in (("train", n_train), ("validation", max(n_train // 4, 32))):
    for c in range(2):
        d = os.path.join(out, split, f"class{c}")
        os.makedirs(d, exist_ok=True)
        for i in range(n // 2):
            p = 1 - c if split == "train" and i % 20 < 3 else c
            img = rng.integers(0, 160, size=(224, 224, 3), dtype=np.int32)
            img[..., p] += 60
            y = 40 + 100 * p
            img[y:y + 56, y:y + 56, :] = 250
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
                os.path.join(d, f"{i:05d}.jpg"), quality=90)
EOF
fi
log "data: $(find "$WORK/data/train" -name '*.jpg' | wc -l) training, $(find "$WORK/data/validation" -name '*.jpg' | wc -l) validation images"

# ---------------------------------------------------------------- runs
run_fit() {
    local device="$1" out="$WORK/run-$1" start
    rm -rf "$out"
    local -a args=(fit "$ROOT/configs/model_3.yaml" --data "$WORK/data" --out "$out"
        --epochs "$EPOCHS" --device "$device" --quiet)
    [[ $device == cpu && -n $THREADS ]] && args+=(--threads "$THREADS")
    log "$device: fennec-train ${args[*]}"
    start=$EPOCHREALTIME
    "$BIN" "${args[@]}" >"$WORK/$device.log" 2>&1 \
        || { tail -5 "$WORK/$device.log" >&2; die "the $device run failed (log: $WORK/$device.log)"; }
    echo "$start $EPOCHREALTIME" >"$WORK/$device.wall"
    [[ -f $out/history.csv ]] || die "$out/history.csv was not written"
}
run_fit "$DEVICE"
run_fit cpu

# ---------------------------------------------------------------- summary
python3 - "$WORK" "$DEVICE" <<'EOF'
import csv, os, sys
work, gpu = sys.argv[1], sys.argv[2]
def history(dev):
    with open(os.path.join(work, f"run-{dev}", "history.csv")) as f:
        return list(csv.DictReader(f))
def wall(dev):
    start, end = open(os.path.join(work, f"{dev}.wall")).read().split()
    return float(end) - float(start)
g, c = history(gpu), history("cpu")
print(f"{'device':<8} {'images/s (last epoch)':>22} {'epoch 1 s':>10} {'wall s':>8}  "
      f"{'train loss per epoch':<28} val accuracy")
for dev, h in ((gpu, g), ("cpu", c)):
    losses = " ".join(f"{float(r['train_loss']):.4f}" for r in h)
    print(f"{dev:<8} {float(h[-1]['images_per_second']):>22.1f} "
          f"{float(h[0]['train_seconds']):>10.2f} {wall(dev):>8.1f}  {losses:<28} "
          f"{float(h[-1]['val_accuracy']):.4f}")
for key in ("train_loss", "val_loss"):
    diffs = [abs(float(a[key]) - float(b[key])) for a, b in zip(g, c)]
    rel = [d / max(abs(float(b[key])), 1e-6) for d, b in zip(diffs, c)]
    worst = max(range(len(diffs)), key=lambda i: diffs[i])
    print(f"{key}: largest |{gpu} - cpu| = {diffs[worst]:.2e} at epoch {worst + 1} "
          f"({100 * rel[worst]:.1f} % of the cpu value)")
speedup = float(g[-1]['images_per_second']) / float(c[-1]['images_per_second'])
print(f"{gpu} / cpu images/s: {speedup:.2f}x")
failed = []
for dev, h in ((gpu, g), ("cpu", c)):
    if not float(h[-1]['train_loss']) < float(h[0]['train_loss']):
        failed.append(f"{dev}: the training loss did not fall")
    if float(h[-1]['val_accuracy']) < 0.9:
        failed.append(f"{dev}: validation accuracy {float(h[-1]['val_accuracy']):.3f} < 0.9")
for f in failed:
    print(f"FAILED {f}")
sys.exit(1 if failed else 0)
EOF
