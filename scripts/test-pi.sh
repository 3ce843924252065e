#!/usr/bin/env bash
# Runs the cross-built Raspberry Pi binaries under qemu user emulation and checks
# they give the x86 build's answers: the same labels, in the same order, with
# probabilities (and eval metrics) within 1e-4.
#
# Usage: FENNEC_PI_TESTS=1 scripts/test-pi.sh [--target aarch64|armv7|armv6|all]
#        [--libc static|gnu] [--no-build] [--bench] [--lite|--lite-only] [--profile NAME]
#
# Without FENNEC_PI_TESTS=1 it prints SKIP and exits 0 (.ci/run sets it for aarch64).
# It builds with scripts/build-pi.sh (incremental after the first run) unless
# --no-build, the x86 reference with `cargo build --workspace` (the dev profile the
# e2e tests use, so after `cargo test --workspace` nothing is rebuilt: Rust does not
# reorder float operations, so the answers do not depend on the profile), and the
# fixtures (tests/examples/pi_fixtures.rs). What is checked on each target: the
# shipped Fashion-MNIST models (f32 and int8), a CNN, an NHWC model with raw
# logits, every codec and resize mode, eval metrics, a folder of bad files (reported
# and skipped as on x86) and a truncated model (one error line, exit 1).
# Static builds run with no system libraries at all; armv6 runs on qemu's ARM1176
# (the Pi 1 / Zero CPU: no NEON), so an instruction it lacks fails the test.
# --target default: aarch64 and armv7 (all: armv6 too). --libc: which build-pi.sh
# build to test (default static). --bench adds `fennec bench` figures and the
# start-up time (exec to first prediction; emulated time, not device time).
# --lite also tests the lite build on NNEF-converted models (--lite-only: only
# that). --profile: the cargo profile the binaries were built with (default pi).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOL=1e-4
TARGETS=(aarch64 armv7)
LIBC=static
BUILD=1
BENCH=0
LITE=0
FULL=1
PROFILE=pi
while [[ $# -gt 0 ]]; do
    case "$1" in
        --target) shift; case "${1:-}" in
                aarch64|armv7|armv6) TARGETS=("$1") ;;
                all) TARGETS=(aarch64 armv7 armv6) ;;
                *) echo "test-pi: --target must be aarch64, armv7, armv6 or all" >&2; exit 2 ;;
            esac ;;
        --libc) shift; case "${1:-}" in
                static|gnu) LIBC="$1" ;;
                *) echo "test-pi: --libc must be static or gnu" >&2; exit 2 ;;
            esac ;;
        --no-build) BUILD=0 ;;
        --bench) BENCH=1 ;;
        --lite) LITE=1 ;;
        --lite-only) LITE=1; FULL=0 ;;
        --profile) shift; PROFILE="${1:?--profile needs a name}" ;;
        -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "test-pi: unknown argument '$1'" >&2; exit 2 ;;
    esac
    shift
done

if [[ "${FENNEC_PI_TESTS:-0}" != 1 ]]; then
    echo "SKIP: Raspberry Pi cross-build tests (scripts/test-pi.sh): set FENNEC_PI_TESTS=1 to run them (~20 min cold per target on 2 cores)"
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
if [[ $LIBC == gnu && " ${TARGETS[*]} " == *" armv6 "* ]]; then die "armv6 is built static only"; fi
# Where build-pi.sh puts a build: target/pi/<arch>[-gnu][-lite][-<profile>]/fennec.
pi_bin() {
    local d="$ROOT/target/pi/$1"
    [[ $LIBC == gnu ]] && d="$d-gnu"
    [[ ${2:-} == lite ]] && d="$d-lite"
    [[ $PROFILE != pi ]] && d="$d-$PROFILE"
    echo "$d/fennec"
}
if [[ $BUILD -eq 1 ]]; then
    for arch in "${TARGETS[@]}"; do
        [[ $FULL -eq 1 ]] && "$ROOT/scripts/build-pi.sh" --target "$arch" --libc "$LIBC" --profile "$PROFILE"
        if [[ $LITE -eq 1 ]]; then
            "$ROOT/scripts/build-pi.sh" --target "$arch" --libc "$LIBC" --profile "$PROFILE" --lite
        fi
    done
fi
# gnu builds: qemu-aarch64 runs the binary with the host's multiarch arm64 glibc
# (libc6:arm64): with `-L /usr/aarch64-linux-gnu` threaded programs hang. qemu-arm
# uses the cross sysroot. Static builds need neither.
if [[ $LIBC == gnu && " ${TARGETS[*]} " == *" aarch64 "* ]] && [[ ! -e /lib/ld-linux-aarch64.so.1 ]]; then
    log "installing libc6:arm64 (the loader qemu-aarch64 runs the binary with)"
    dpkg --print-foreign-architectures | grep -qx arm64 || as_root dpkg --add-architecture arm64
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libc6:arm64 >/dev/null
fi

log "building the x86 reference and the fixtures"
(cd "$ROOT" && nice -n 10 cargo build --quiet --workspace --bins --examples)
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
X86="$TARGET_DIR/debug/fennec"
FIX="$TARGET_DIR/debug/examples/pi_fixtures"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fennec-pi-test.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
"$FIX" write "$WORK/fx" >/dev/null
cd "$WORK/fx"   # relative paths: the outputs name the same files on every run
# The shipped models and two test images per class of the data they were trained on.
cp "$ROOT/models/fashion_model_3.onnx" "$ROOT/models/fashion_model_3.int8.onnx" .
for d in "$ROOT"/data/fashion-mini/test/*/; do
    c=$(basename "$d"); mkdir -p "fashion/$c"
    # sed, not head: head exits early, and under pipefail sort's SIGPIPE (exit 141)
    # would end the script at random.
    find "$d" -type f | sort | sed -n '1,2p' | xargs -I{} cp {} "fashion/$c/"
done

# ---------------------------------------------------------------- runners
# run_<arch> BIN ARGS...: how each target binary is started.
# Static builds need no -L: there is nothing for them to load.
SYSROOT=(); [[ $LIBC == gnu ]] && SYSROOT=(-L /usr/arm-linux-gnueabihf)
run_aarch64() { local b="$1"; shift; qemu-aarch64 -cpu cortex-a72 "$b" "$@"; }
run_armv7() { local b="$1"; shift; qemu-arm -cpu cortex-a7 "${SYSROOT[@]}" "$b" "$@"; }
# The Pi 1 / Zero CPU: ARMv6 with VFPv2 and no NEON.
run_armv6() { local b="$1"; shift; qemu-arm -cpu arm1176 "$b" "$@"; }
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
    "predict shipped fashion f32|predict fashion_model_3.onnx fashion -k 3 --json"
    "eval shipped fashion f32|eval fashion_model_3.onnx fashion --json - --quiet"
    "predict shipped fashion int8|predict fashion_model_3.int8.onnx fashion -k 3 --json"
    "predict shipped fashion int8 batch 5, 2 threads|predict fashion_model_3.int8.onnx fashion -k 3 --json --batch 5 --threads 2"
    "eval folder with bad files|eval cnn.onnx bad --json - --quiet"
    "predict bad files|predict color_nhwc.onnx bad/red bad/blue -k 2 --json"
)

passed=0
failed=0
failures=()
check() { # check LABEL RUNNER BIN ARGS...
    local label="$1" runner="$2" bin="$3"; shift 3
    local exp="$WORK/expected.$RANDOM" act="$WORK/actual.$RANDOM" msg rx=0 ra=0
    run_x86 "$X86" "$@" >"$exp" 2>"$exp.err" || rx=$?
    "run_$runner" "$bin" "$@" >"$act" 2>"$act.err" || ra=$?
    # predict exits 1 when an explicit file fails: the exit code must be x86's too,
    # and a crash (no output) is a failure.
    if [[ ! -s $act || $ra -ne $rx ]]; then
        failures+=("$label: exit $ra (x86: $rx): $(tail -1 "$act.err")"); failed=$((failed + 1)); log "FAIL $label"; return
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
    [[ -x ${BINS[$arch]} ]] || die "${BINS[$arch]} missing: run scripts/build-pi.sh --target $arch --libc $LIBC --profile $PROFILE"
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
        # A model tract panics on: the same last line and exit 1 as x86, also in the
        # builds that cannot unwind (pi-tiny: classifier.rs's panic_guard).
        want=$(run_x86 "$X86" predict stride0.onnx images 2>&1 >/dev/null | tail -n 1) || true
        rc=0; err=$("run_$runner" "${BINS[$arch]}" predict stride0.onnx images 2>&1 >/dev/null) || rc=$?
        last=$(tail -n 1 <<<"$err")
        if [[ $rc -eq 1 && $last == "$want" && $last == *"tract hit an internal error"* ]]; then
            passed=$((passed + 1)); log "ok   $runner: model tract panics on rejected: $last"
        else
            failed=$((failed + 1)); failures+=("$runner: stride0.onnx: exit $rc: $last (x86: $want)")
        fi
    done
done

# ---------------------------------------------------------------- other systems
# The same binaries inside root filesystems that are not this machine's: an empty one
# (nothing but the binary and a static qemu: no libc, no loader, no /proc), and
# Debian bullseye's (glibc 2.31, the base of Raspberry Pi OS bullseye), made once with
# `debootstrap --foreign` into target/pi-rootfs/. Static builds only; needs root.
CHROOT_CHECKS=("predict cnn" "predict shipped fashion f32" "predict shipped fashion int8"
    "eval folder with bad files")
run_chroot() { # run_chroot BIN ARGS...: BIN was copied into $CH_ROOT as /fennec
    shift
    python3 -c 'import os, sys; os.chroot(sys.argv[1]); os.chdir("/fx"); os.execv(sys.argv[2], sys.argv[2:])' \
        "$CH_ROOT" /qemu -cpu "$CH_CPU" /fennec "$@"
}
# prepare_root DIR ARCH BIN: puts qemu, the binary and the fixtures into DIR.
prepare_root() {
    local qemu
    qemu=$(command -v "$([[ $2 == aarch64 ]] && echo qemu-aarch64-static || echo qemu-arm-static)")
    mkdir -p "$1/fx"
    cp "$qemu" "$1/qemu"
    cp "$3" "$1/fennec"
    cp -r "$WORK/fx/." "$1/fx/"
}
if [[ $FULL -eq 1 && $LIBC == static ]]; then
    if [[ $(id -u) -ne 0 ]]; then
        log "SKIP other root filesystems: chroot needs root"
    else
        if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
            log "installing qemu-user-static and debootstrap"
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-user-static debootstrap >/dev/null
        fi
        for arch in "${TARGETS[@]}"; do
            case $arch in
                aarch64) CH_CPU=cortex-a72; debarch=arm64 ;;
                armv7) CH_CPU=cortex-a7; debarch=armhf ;;
                armv6) CH_CPU=arm1176; debarch=armhf ;;
            esac
            roots=("empty:$WORK/root-empty-$arch")
            bullseye="$ROOT/target/pi-rootfs/bullseye-$debarch"
            if ! ls "$bullseye"/lib/*-linux-gnu*/libc-2.31.so >/dev/null 2>&1; then
                log "making a Debian bullseye $debarch root filesystem (debootstrap, ~40 MB download)"
                rm -rf "$bullseye"
                if ! debootstrap --foreign --variant=minbase --arch="$debarch" bullseye "$bullseye" \
                        http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1; then
                    log "SKIP bullseye root: debootstrap failed: $(tail -1 "$WORK/debootstrap.log")"
                    bullseye=""
                fi
            fi
            [[ -n $bullseye ]] && roots+=("bullseye (glibc 2.31):$bullseye")
            for r in "${roots[@]}"; do
                CH_ROOT=${r#*:}
                prepare_root "$CH_ROOT" "$arch" "${BINS[$arch]}"
                for c in "${CHECKS[@]}"; do
                    [[ " ${CHROOT_CHECKS[*]/%/|} " == *" ${c%%|*}|"* ]] || continue
                    # shellcheck disable=SC2086
                    check "$arch in ${r%%:*} root: ${c%%|*}" chroot "${BINS[$arch]}" ${c#*|}
                done
                rm -rf "$CH_ROOT/fx" "$CH_ROOT/fennec" "$CH_ROOT/qemu"
            done
        done
    fi
fi

if [[ $LITE -eq 1 ]]; then
    # The lite build reads models converted on the PC; each answer must be x86's on the
    # ONNX file (the JSON names the model, so the .nnef.tgz name is mapped back).
    for m in cnn color_nhwc fashion_model_3; do "$X86" convert "$m.onnx" "$m.nnef.tgz" >/dev/null; done
    LITE_CHECKS=(
        "predict cnn|predict cnn.MODEL images -k 3 --json"
        "predict color nhwc, 2 threads|predict color_nhwc.MODEL images -k 3 --json --threads 2"
        "predict shipped fashion f32|predict fashion_model_3.MODEL fashion -k 3 --json"
        "eval shipped fashion f32|eval fashion_model_3.MODEL fashion --json - --quiet"
        "eval folder with bad files|eval cnn.MODEL bad --json - --quiet"
    )
    for arch in "${TARGETS[@]}"; do
        lite=$(pi_bin "$arch" lite)
        [[ -x $lite ]] || die "$lite missing: run scripts/build-pi.sh --target $arch --profile $PROFILE --lite"
        runner=$arch; [[ $arch == armv7 ]] && runner=armv7neon
        exp="$WORK/lite-exp.json"; act="$WORK/lite-act.json"
        for c in "${LITE_CHECKS[@]}"; do
            label="$arch-lite: ${c%%|*}"; args=${c#*|}
            rx=0; ra=0
            # shellcheck disable=SC2086
            run_x86 "$X86" ${args//.MODEL/.onnx} >"$exp" 2>/dev/null || rx=$?
            # shellcheck disable=SC2086
            "run_$runner" "$lite" ${args//.MODEL/.nnef.tgz} >"$act" 2>"$act.err" || ra=$?
            sed -i 's/\.nnef\.tgz/.onnx/g' "$act"
            # eval's report carries the model file's hash: another file, by design.
            sed -i -E 's/"model_sha256": *"[0-9a-f]*"/"model_sha256":"-"/g' "$exp" "$act"
            if [[ ! -s $act || $ra -ne $rx ]]; then
                failed=$((failed + 1)); failures+=("$label: exit $ra (x86: $rx): $(tail -1 "$act.err")"); log "FAIL $label"
            elif msg=$("$FIX" compare "$exp" "$act" "$TOL" 2>&1); then
                passed=$((passed + 1)); log "ok   $label: $msg"
            else
                failed=$((failed + 1)); failures+=("$label: $msg"); log "FAIL $label"
            fi
        done
        # An ONNX file and a truncated NNEF file: one error line naming the file, exit 1.
        head -c 300 cnn.nnef.tgz >truncated.nnef.tgz
        for bad in cnn.onnx truncated.nnef.tgz; do
            rc=0; err=$("run_$runner" "$lite" predict "$bad" images 2>&1 >/dev/null) || rc=$?
            if [[ $rc -eq 1 && $err == error:*$bad* && $err != *$'\n'* ]]; then
                passed=$((passed + 1)); log "ok   $arch-lite: $bad rejected: $err"
            else
                failed=$((failed + 1)); failures+=("$arch-lite: $bad: exit $rc: $err"); log "FAIL $arch-lite: $bad"
            fi
        done
    done
fi

# Start-up: wall time from exec to the first prediction of one image with the shipped
# model (process start, model load and optimisation, decode, inference, JSON out),
# the median of 5 runs, in ms.
FIRST_IMAGE=$(find fashion -type f | sort | sed -n 1p)
startup_ms() { # startup_ms RUNNER BIN
    local i t0 t1 times=()
    for i in 1 2 3 4 5; do
        t0=$(date +%s%N)
        "run_$1" "$2" predict fashion_model_3.onnx "$FIRST_IMAGE" --json >/dev/null 2>&1 \
            || { echo "failed"; return; }
        t1=$(date +%s%N)
        times+=($(((t1 - t0) / 1000000)))
    done
    printf '%s\n' "${times[@]}" | sort -n | sed -n 3p
}

if [[ $BENCH -eq 1 && $FULL -eq 1 ]]; then
    log "bench figures: qemu emulation on this machine, NOT device latency"
    echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
    # x86: the release build if there is one (cargo build --release), else the dev build.
    x86_fast="$TARGET_DIR/release/fennec"; [[ -x $x86_fast ]] || x86_fast=$X86
    echo "start-up, exec to first prediction (fashion_model_3.onnx, 1 image, median of 5):"
    echo "  x86_64 native ($x86_fast): $(startup_ms x86 "$x86_fast") ms"
    for arch in "${TARGETS[@]}"; do
        runner=$arch; [[ $arch == armv7 ]] && runner=armv7neon
        echo "  $runner under qemu ($PROFILE, $LIBC): $(startup_ms "$runner" "${BINS[$arch]}") ms"
    done
    for arch in "${TARGETS[@]}"; do
        runner=$arch; [[ $arch == armv7 ]] && runner=armv7neon
        echo "== fennec bench cnn.onnx ($runner, qemu)"
        "run_$runner" "${BINS[$arch]}" bench cnn.onnx --runs 30 --warmup 5 --threads 1,4 || true
    done
fi

for f in "${failures[@]}"; do printf 'FAILED: %s\n' "$f"; done
echo "pi: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
