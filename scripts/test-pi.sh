#!/usr/bin/env bash
# Runs the cross-built Raspberry Pi binaries under qemu user emulation and checks
# they give the x86 build's answers: the same labels, in the same order, with
# probabilities (and eval metrics) within 1e-4.
#
# Usage: FENNEC_PI_TESTS=1 scripts/test-pi.sh [--target aarch64|armv7|all] [--no-build]
#        [--bench] [--lite|--lite-only] [--profile NAME]
#
# Without FENNEC_PI_TESTS=1 it prints SKIP and exits 0: the two cold cross builds
# take ~20 min each on 2 cores, more than CI's budget leaves. It builds with
# scripts/build-pi.sh (incremental after the first run) unless --no-build, the x86
# reference with `cargo build` (the dev profile the e2e tests use: Rust does not
# reorder float operations, so the answers do not depend on the profile), and the
# fixtures (tests/examples/pi_fixtures.rs) with the tests crate. --bench adds a `fennec bench` smoke figure
# per target (emulated time, not device time). --lite also tests the lite build
# on the NNEF-converted models (--lite-only: only that). --profile tests the binaries built with that
# cargo profile (build-pi.sh --profile; default pi).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOL=1e-4
TARGETS=(aarch64 armv7)
BUILD=1
BENCH=0
LITE=0
FULL=1
PROFILE=pi
while [[ $# -gt 0 ]]; do
    case "$1" in
        --target) shift; case "${1:-}" in
                aarch64|armv7) TARGETS=("$1") ;;
                all) TARGETS=(aarch64 armv7) ;;
                *) echo "test-pi: --target must be aarch64, armv7 or all" >&2; exit 2 ;;
            esac ;;
        --no-build) BUILD=0 ;;
        --bench) BENCH=1 ;;
        --lite) LITE=1 ;;
        --lite-only) LITE=1; FULL=0 ;;
        --profile) shift; PROFILE="${1:?--profile needs a name}" ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "test-pi: unknown argument '$1'" >&2; exit 2 ;;
    esac
    shift
done

if [[ "${FENNEC_PI_TESTS:-0}" != 1 ]]; then
    echo "SKIP: Raspberry Pi cross-build tests (scripts/test-pi.sh): set FENNEC_PI_TESTS=1 to run them (~45 min cold on 2 cores)"
    exit 0
fi

log() { printf 'test-pi: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# ---------------------------------------------------------------- tools
if ! command -v qemu-aarch64 >/dev/null || ! command -v qemu-arm >/dev/null; then
    log "installing qemu-user"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-user >/dev/null
fi
# Where build-pi.sh puts a build: target/pi/<arch>[-lite][-<profile>]/fennec.
pi_bin() {
    local d="$ROOT/target/pi/$1"
    [[ ${2:-} == lite ]] && d="$d-lite"
    [[ $PROFILE != pi ]] && d="$d-$PROFILE"
    echo "$d/fennec"
}
if [[ $BUILD -eq 1 ]]; then
    for arch in "${TARGETS[@]}"; do
        [[ $FULL -eq 1 ]] && "$ROOT/scripts/build-pi.sh" --target "$arch" --profile "$PROFILE"
        if [[ $LITE -eq 1 ]]; then
            "$ROOT/scripts/build-pi.sh" --target "$arch" --profile "$PROFILE" --lite
        fi
    done
fi
# qemu-aarch64 runs the binary with the host's multiarch arm64 glibc (libc6:arm64,
# installed with libstd-rust-web-dev:arm64): with `-L /usr/aarch64-linux-gnu`
# threaded programs hang. qemu-arm uses the cross sysroot.
if [[ " ${TARGETS[*]} " == *" aarch64 "* ]] && [[ ! -e /lib/ld-linux-aarch64.so.1 ]]; then
    log "installing libc6:arm64 (the loader qemu-aarch64 runs the binary with)"
    dpkg --print-foreign-architectures | grep -qx arm64 || as_root dpkg --add-architecture arm64
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libc6:arm64 >/dev/null
fi

log "building the x86 reference and the fixtures"
(cd "$ROOT" && nice -n 10 cargo build --quiet -p fennec-runtime --bin fennec \
    && nice -n 10 cargo build --quiet -p fennec-e2e --example pi_fixtures)
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
X86="$TARGET_DIR/debug/fennec"
FIX="$TARGET_DIR/debug/examples/pi_fixtures"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fennec-pi-test.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
"$FIX" write "$WORK/fx" >/dev/null
cd "$WORK/fx"   # relative paths: the outputs name the same files on every run

# ---------------------------------------------------------------- runners
# run_<arch> BIN ARGS...: how each target binary is started.
run_aarch64() { local b="$1"; shift; qemu-aarch64 -cpu cortex-a72 "$b" "$@"; }
run_armv7() { local b="$1"; shift; qemu-arm -cpu cortex-a7 -L /usr/arm-linux-gnueabihf "$b" "$@"; }
# armv7: tract reads /proc/cpuinfo for NEON, which qemu-user does not emulate for
# ARM; this variant forces the NEON kernels a real Pi 2+ gets.
run_armv7neon() { TRACT_CPU_ARM32_NEON=true run_armv7 "$@"; }
run_x86() { local b="$1"; shift; "$b" "$@"; }

# The checks: name | arguments. Each output goes through `pi_fixtures compare`.
CHECKS=(
    "predict cnn|predict cnn.onnx images -k 3 --json"
    "predict cnn batch 5, 2 threads|predict cnn.onnx images -k 3 --json --batch 5 --threads 2 --decode-threads 2"
    "predict cnn center-crop lanczos3|predict cnn.onnx images -k 3 --json --resize center-crop --filter lanczos3"
    "predict cnn letterbox catmull-rom|predict cnn.onnx images -k 3 --json --resize letterbox --filter catmull-rom"
    "predict color nhwc logits|predict color_nhwc.onnx images -k 3 --json"
    "eval cnn|eval cnn.onnx folder --json - --quiet"
    "eval color nhwc|eval color_nhwc.onnx folder --json - --quiet --batch 4"
)

passed=0
failed=0
failures=()
check() { # check LABEL RUNNER BIN ARGS...
    local label="$1" runner="$2" bin="$3"; shift 3
    local exp="$WORK/expected.$RANDOM" act="$WORK/actual.$RANDOM" msg
    run_x86 "$X86" "$@" >"$exp" 2>"$exp.err" || true
    if ! "run_$runner" "$bin" "$@" >"$act" 2>"$act.err"; then
        # predict exits 1 when an explicit file fails; compare the outputs anyway,
        # but a crash (no output) is a failure.
        [[ -s $act ]] || { failures+=("$label: no output: $(tail -1 "$act.err")"); failed=$((failed + 1)); log "FAIL $label"; return; }
    fi
    if msg=$("$FIX" compare "$exp" "$act" "$TOL" 2>&1); then
        passed=$((passed + 1)); log "ok   $label: $msg"
    else
        failed=$((failed + 1)); failures+=("$label: $msg"); log "FAIL $label"
    fi
}

declare -A BINS
[[ $FULL -eq 1 ]] && for arch in "${TARGETS[@]}"; do
    BINS[$arch]=$(pi_bin "$arch")
    [[ -x ${BINS[$arch]} ]] || die "${BINS[$arch]} missing: run scripts/build-pi.sh --target $arch --profile $PROFILE"
done

[[ $FULL -eq 1 ]] && for arch in "${TARGETS[@]}"; do
    runners=("$arch")
    [[ $arch == armv7 ]] && runners+=(armv7neon)
    for runner in "${runners[@]}"; do
        # The binary starts and is the build we think it is.
        if "run_$runner" "${BINS[$arch]}" --version >/dev/null 2>&1; then
            passed=$((passed + 1))
        else
            failed=$((failed + 1)); failures+=("$runner: --version does not run")
        fi
        for c in "${CHECKS[@]}"; do
            # shellcheck disable=SC2086
            check "$runner: ${c%%|*}" "$runner" "${BINS[$arch]}" ${c#*|}
        done
        # A bad model is one error line and exit 1 on ARM too (no crash, no hang).
        head -c 300 cnn.onnx >truncated.onnx
        rc=0; err=$("run_$runner" "${BINS[$arch]}" predict truncated.onnx images 2>&1 >/dev/null) || rc=$?
        if [[ $rc -eq 1 && $err == error:*truncated.onnx* ]]; then
            passed=$((passed + 1)); log "ok   $runner: truncated model rejected: $err"
        else
            failed=$((failed + 1)); failures+=("$runner: truncated model: exit $rc: $err")
        fi
    done
done

if [[ $LITE -eq 1 ]]; then
    for m in cnn color_nhwc; do "$X86" convert "$m.onnx" "$m.nnef.tgz" >/dev/null; done
    for arch in "${TARGETS[@]}"; do
        lite=$(pi_bin "$arch" lite)
        [[ -x $lite ]] || die "$lite missing: run scripts/build-pi.sh --target $arch --profile $PROFILE --lite"
        runner=$arch; [[ $arch == armv7 ]] && runner=armv7neon
        # Same answers from the converted model under the lite build as from the ONNX file on x86.
        exp="$WORK/lite-exp.json"; act="$WORK/lite-act.json"
        for m in cnn color_nhwc; do
            run_x86 "$X86" predict "$m.onnx" images -k 3 --json >"$exp" 2>/dev/null || true
            "run_$runner" "$lite" predict "$m.nnef.tgz" images -k 3 --json >"$act" 2>"$act.err" || true
            sed -i "s/$m\.nnef\.tgz/$m.onnx/g" "$act"
            if msg=$("$FIX" compare "$exp" "$act" "$TOL" 2>&1); then
                passed=$((passed + 1)); log "ok   $arch-lite: predict $m.nnef.tgz: $msg"
            else
                failed=$((failed + 1)); failures+=("$arch-lite: predict $m.nnef.tgz: $msg")
            fi
        done
    done
fi

if [[ $BENCH -eq 1 && $FULL -eq 1 ]]; then
    log "bench smoke figures: qemu emulation on this machine, NOT device latency"
    for runner in "${TARGETS[@]}"; do
        bin="${BINS[$runner]}"
        [[ $runner == armv7 ]] && runner=armv7neon
        echo "== fennec bench cnn.onnx ($runner, qemu)"
        "run_$runner" "$bin" bench cnn.onnx --runs 30 --warmup 5 --threads 1,4 || true
    done
fi

for f in "${failures[@]}"; do printf 'FAILED: %s\n' "$f"; done
echo "pi: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
