#!/usr/bin/env bash
# int8 models, side by side with the float files they come from (issue 9's targets):
#
#   size       model_3 224x224 (the peers' torch export): `fennec quantize` int8 file
#              bytes / f32 file bytes.                                  target: <= 0.27
#   accuracy   the shipped Fashion-MNIST model: `fennec quantize` (calibrated on
#              CALIB_IMAGES images of the full training folder), then `fennec compare`
#              f32 vs int8 on the 10,000 test images: accuracy of both and argmax
#              agreement.                    target: within 0.5 points, agreement >= 0.99
#
# Timings are not measured here yet (the latency and folder parts are the integer
# kernels' half of the issue, and go through /work/bin/quiet when they come).
#
# Environment (all optional):
#   PEERS_HOME    peer models and data                   [/work/peers]
#   PARTS         what to measure                        ["size accuracy"]
#   CALIB_IMAGES  calibration images                     [300]
#   METHOD        calibration method (min-max|percentile) [min-max]
#   WORK          scratch folder                         [a new /tmp/fennec-bench-int8.*]
#   NO_BUILD=1    use target/release/fennec as it is
#
# Usage: bench/int8.sh   (a few minutes on 2 cores after the build)
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS_HOME=${PEERS_HOME:-/work/peers}
PARTS=${PARTS:-size accuracy}
CALIB_IMAGES=${CALIB_IMAGES:-300}
METHOD=${METHOD:-min-max}
WORK=${WORK:-$(mktemp -d /tmp/fennec-bench-int8.XXXXXX)}
FENNEC=target/release/fennec

if [ "${NO_BUILD:-}" != 1 ]; then
    cargo build --release -p fennec-runtime --bin fennec
fi
echo "# bench/int8.sh $(date -u +%FT%TZ), load: $(cut -d' ' -f1-3 /proc/loadavg), work: $WORK"
echo
echo "| measure | f32 | int8 | int8 / f32 or difference | target | met |"
echo "| --- | --- | --- | --- | --- | --- |"

bytes() { stat -c %s "$1"; }

for part in $PARTS; do
    case $part in
    size)
        f32=$PEERS_HOME/models/model3_224_torch.onnx
        int8=$WORK/model3_224_torch.int8.onnx
        $FENNEC quantize "$f32" --calibrate "$PEERS_HOME/data/synth224/train" -o "$int8" \
            --images "$CALIB_IMAGES" --method "$METHOD" >"$WORK/quantize_model3.log"
        python3 - "$(bytes "$f32")" "$(bytes "$int8")" <<'EOF'
import sys
f, q = map(int, sys.argv[1:])
r = q / f
print(f"| file bytes, model_3 224x224 (torch export) | {f:,} | {q:,} | {r:.3f} | <= 0.27 | {'yes' if r <= 0.27 else '**no**'} |")
EOF
        ;;
    accuracy)
        f32=models/fashion_model_3.onnx
        int8=$WORK/fashion_model_3.int8.onnx
        $FENNEC quantize "$f32" --calibrate "$PEERS_HOME/data/fashion/train" -o "$int8" \
            --images "$CALIB_IMAGES" --method "$METHOD" >"$WORK/quantize_fashion.log"
        $FENNEC compare "$f32" "$int8" "$PEERS_HOME/data/fashion/test" --json -q >"$WORK/compare_fashion.json"
        python3 - "$WORK/compare_fashion.json" "$(bytes "$f32")" "$(bytes "$int8")" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
f, q = map(int, sys.argv[2:])
a, b, agree = c["a_accuracy"], c["b_accuracy"], c["agreement"]
d = 100 * (b - a)
print(f"| Fashion-MNIST test accuracy, {c['images']} images | {100*a:.2f} % | {100*b:.2f} % | {d:+.2f} points | within ±0.5 | {'yes' if abs(d) <= 0.5 else '**no**'} |")
print(f"| argmax agreement int8 vs f32 | | | {100*agree:.2f} % ({len(c['changed'])} changed) | >= 99 % | {'yes' if agree >= 0.99 else '**no**'} |")
print(f"| file bytes, shipped Fashion-MNIST model | {f:,} | {q:,} | {q/f:.3f} | | |")
EOF
        ;;
    *)
        echo "unknown part '$part' (expected: size accuracy)" >&2
        exit 2
        ;;
    esac
done
