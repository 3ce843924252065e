#!/usr/bin/env bash
# Start-up time of the Raspberry Pi builds: wall time from exec to the first prediction of
# one image with the shipped Fashion-MNIST model (process start, model load and
# optimisation, decode, inference, JSON out), median of N runs, for every file
# scripts/build-pi.sh has written under target/pi/ and for an x86 build, side by side.
# The ARM files run under qemu user emulation (-cpu cortex-a72 / cortex-a7 / arm1176), so
# their figures are emulated time on this machine, not device time; `fennec bench MODEL` on
# the board prints the real load time.
#
# Usage: bench/pi-startup.sh [--runs N] [--x86 PATH]
#   --x86   the x86 fennec to time [target/release/fennec, else target/debug/fennec]
# Lite builds get the model converted to NNEF (by the x86 build, which must read ONNX).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS=5
X86=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) shift; RUNS="${1:?--runs needs a number}" ;;
        --x86) shift; X86="${1:?--x86 needs a path}" ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "pi-startup: unknown argument '$1'" >&2; exit 2 ;;
    esac
    shift
done
if [[ -z $X86 ]]; then
    X86="$ROOT/target/release/fennec"; [[ -x $X86 ]] || X86="$ROOT/target/debug/fennec"
fi
[[ -x $X86 ]] || { echo "pi-startup: no x86 fennec (cargo build -p fennec-runtime, or --x86 PATH)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/fennec-pi-startup.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cp "$ROOT/models/fashion_model_3.onnx" "$WORK/"
IMAGE=$(find "$ROOT/data/fashion-mini/test" -type f | sort | sed -n 1p)
cp "$IMAGE" "$WORK/image.png"
"$X86" convert "$WORK/fashion_model_3.onnx" "$WORK/fashion_model_3.nnef.tgz" >/dev/null
cd "$WORK"

median_ms() { # median_ms MODEL CMD...
    local model="$1" i t0 t1 times=(); shift
    for ((i = 0; i < RUNS; i++)); do
        t0=$(date +%s%N)
        "$@" predict "$model" image.png --json >/dev/null 2>&1 || { echo "failed"; return; }
        t1=$(date +%s%N)
        times+=($(((t1 - t0) / 1000000)))
    done
    printf '%s\n' "${times[@]}" | sort -n | sed -n "$(((RUNS + 1) / 2))p"
}

echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-44s %-34s %10s\n' "file" "runs on" "start-up ms"
printf '%-44s %-34s %10s\n' "$X86" "x86_64, native" "$(median_ms fashion_model_3.onnx "$X86")"
for f in "$ROOT"/target/pi/*/fennec; do
    name=${f#"$ROOT"/}
    dir=$(basename "$(dirname "$f")")
    case "$dir" in
        aarch64*) run=(qemu-aarch64 -cpu cortex-a72); where="qemu-aarch64 -cpu cortex-a72" ;;
        armv7*) run=(env TRACT_CPU_ARM32_NEON=true qemu-arm -cpu cortex-a7); where="qemu-arm -cpu cortex-a7 (NEON on)" ;;
        armv6*) run=(qemu-arm -cpu arm1176); where="qemu-arm -cpu arm1176" ;;
        *) continue ;;
    esac
    [[ $dir == *-gnu* ]] && continue # dynamic builds need a sysroot: scripts/test-pi.sh --libc gnu
    model=fashion_model_3.onnx
    [[ $dir == *lite* || $dir == *features* ]] && model=fashion_model_3.nnef.tgz
    printf '%-44s %-34s %10s\n' "$name" "$where" "$(median_ms "$model" "${run[@]}" "$f")"
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
