#!/usr/bin/env bash
# Cross-builds `fennec` for the Raspberry Pi, stripped, into target/pi/<arch>/fennec:
#   aarch64  Pi 3/4/5 (and Zero 2 W) with a 64-bit OS
#   armv7    Pi 2/3/4/5 (and Zero 2 W) with a 32-bit OS
#   armv6    Pi 1, Zero, Zero W (ARM1176, no NEON) with a 32-bit OS
# By default the binaries are fully static (musl): no glibc at all, so one file runs
# on every Raspberry Pi OS (buster, bullseye, bookworm, trixie) and on any Linux.
# See docs/deploy-pi.md.
#
# Usage: scripts/build-pi.sh [--target aarch64|armv7|armv6|all] [--libc static|gnu]
#                            [--profile NAME] [--lite] [--features LIST] [--no-install]
#   --target   default all (static) or aarch64 and armv7 (gnu)
#   --libc     static (default): musl, linked by `zig cc` (scripts/zig-linker);
#              gnu: dynamic glibc builds (need glibc >= 2.34, Debian 12's) into
#              target/pi/<arch>-gnu, for comparison; no armv6
#   --profile  cargo profile: pi (default, fat LTO), pi-ci (CI: no LTO, fast to
#              build), pi-small (optimised for size), pi-tiny (pi-small without
#              unwinding: smallest; a tract panic ends the run, see docs/deploy-pi.md)
#   --lite     the lite feature set (NNEF models only, no ONNX parser)
#   --features fennec-runtime's cargo features instead of the default set, e.g. `cli`
#              (lite without multi-threaded inference: the Pi Zero has one core);
#              into target/pi/<arch>-features-<list>[-<profile>]
#
# Toolchain, all from Debian's archive and PyPI (no rustup targets, no downloads
# from elsewhere): Debian's rustc/cargo 1.96 (rustc-web, cargo-web) build the
# standard library from Debian's sources (rust-web-src) for each target with
# -Zbuild-std; `zig` from PyPI (ziglang) links against its own musl; Debian's GNU
# cross gcc only assembles tract-linalg's ARM kernels (.S files). Installing them
# needs root (or sudo) once. With rustup instead, see docs/deploy-pi.md.
#
# Each target has its own --target-dir (target/pi-<arch>[-gnu], or under
# $FENNEC_PI_TARGET_DIR), so builds never invalidate each other or the host build.
# Cold builds take ~20 min per target on 2 cores; builds run under `nice -n 10`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGETS=()
LIBC=static
PROFILE=pi
LITE=0
FEATURES=""
INSTALL=1

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --target) shift; case "${1:-}" in
                aarch64|armv7|armv6) TARGETS=("$1") ;;
                all) TARGETS=() ;;
                *) echo "build-pi: --target must be aarch64, armv7, armv6 or all" >&2; exit 2 ;;
            esac ;;
        --libc) shift; case "${1:-}" in
                static|gnu) LIBC="$1" ;;
                *) echo "build-pi: --libc must be static or gnu" >&2; exit 2 ;;
            esac ;;
        --profile) shift; PROFILE="${1:?--profile needs a name}" ;;
        --lite) LITE=1 ;;
        --features) shift; FEATURES="${1:?--features needs a list, e.g. cli}"
            [[ $FEATURES =~ ^[a-z0-9,-]+$ ]] || { echo "build-pi: --features takes a comma-separated list of feature names" >&2; exit 2; } ;;
        --no-install) INSTALL=0 ;;
        -h|--help) usage 0 ;;
        *) echo "build-pi: unknown argument '$1'" >&2; usage 2 ;;
    esac
    shift
done
if [[ $LITE -eq 1 && -n $FEATURES ]]; then
    echo "build-pi: --lite and --features do not go together (--lite is --features lite)" >&2; exit 2
fi
if [[ ${#TARGETS[@]} -eq 0 ]]; then
    if [[ $LIBC == static ]]; then TARGETS=(aarch64 armv7 armv6); else TARGETS=(aarch64 armv7); fi
fi
if [[ $LIBC == gnu && " ${TARGETS[*]} " == *" armv6 "* ]]; then
    echo "build-pi: armv6 is built static only (--libc static)" >&2; exit 2
fi

log() { printf 'build-pi: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

triple() {
    case "$LIBC-$1" in
        static-aarch64) echo aarch64-unknown-linux-musl ;;
        static-armv7) echo armv7-unknown-linux-musleabihf ;;
        static-armv6) echo arm-unknown-linux-musleabihf ;;
        gnu-aarch64) echo aarch64-unknown-linux-gnu ;;
        gnu-armv7) echo armv7-unknown-linux-gnueabihf ;;
    esac
}
gnu_prefix() { case "$1" in aarch64) echo aarch64-linux-gnu ;; *) echo arm-linux-gnueabihf ;; esac; }
zig_target() { case "$1" in aarch64) echo aarch64-linux-musl ;; *) echo arm-linux-musleabihf ;; esac; }
# The oldest CPU of each family, so the file runs on every board of it.
zig_cpu() { case "$1" in aarch64) echo cortex_a53 ;; armv7) echo cortex_a7 ;; armv6) echo arm1176jzf_s ;; esac; }

# ---------------------------------------------------------------- packages
missing_packages() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
    done
}

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

install_packages() {
    local want=(binutils file rustc-web cargo-web rust-web-src)
    local t
    for t in "${TARGETS[@]}"; do
        want+=("gcc-$(gnu_prefix "$t")" "binutils-$(gnu_prefix "$t")")
        [[ $LIBC == gnu ]] && case "$t" in
            aarch64) want+=(libc6-dev-arm64-cross) ;;
            armv7) want+=(libc6-dev-armhf-cross) ;;
        esac
    done
    local missing
    missing=$(missing_packages "${want[@]}" | sort -u)
    if [[ -n $missing ]]; then
        [[ $INSTALL -eq 1 ]] || die "missing packages (run without --no-install): $(echo $missing)"
        command -v apt-get >/dev/null || die "apt-get not found: install $(echo $missing) by hand"
        log "installing: $(echo $missing)"
        as_root apt-get update -qq
        # shellcheck disable=SC2086
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
    if [[ $LIBC == static ]] && ! python3 -m ziglang version >/dev/null 2>&1; then
        [[ $INSTALL -eq 1 ]] || die "zig is missing (run without --no-install, or: pip install ziglang)"
        log "installing zig (pip: ziglang)"
        python3 -m pip install --quiet --disable-pip-version-check ziglang==0.17.1 2>/dev/null \
            || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages ziglang==0.17.1 \
            || die "pip could not install ziglang"
    fi
}

# ---------------------------------------------------------------- checks
# Proves what the file needs from the system it runs on.
check_binary() {
    local arch="$1" f="$2" prefix desc
    prefix=$(gnu_prefix "$arch")
    desc=$(file -b "$f")
    if [[ $LIBC == static ]]; then
        # "static-pie linked" is static too: position-independent, loaded by itself.
        [[ $desc == *"statically linked"* || $desc == *"static-pie linked"* ]] \
            || die "$f is not statically linked: $desc"
        # grep >/dev/null, not grep -q: it reads to the end, so readelf never gets SIGPIPE.
        if "$prefix-readelf" -lW "$f" | grep INTERP >/dev/null \
            || "$prefix-readelf" -dW "$f" | grep NEEDED >/dev/null; then
            die "$f asks for a dynamic loader or shared libraries"
        fi
        echo "static: no loader, no shared libraries, no GLIBC_ symbols"
    else
        # Highest glibc symbol version the binary needs: the oldest OS it runs on.
        echo "needs $("$prefix-objdump" -T "$f" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)"
    fi
    if [[ $arch == armv6 ]]; then
        # The Pi 1 / Zero CPU (ARM1176JZF-S) is ARMv6 with VFPv2: the file must say so.
        local attrs
        attrs=$("$prefix-readelf" -A "$f")
        grep -q 'Tag_CPU_arch: v6' <<<"$attrs" || die "$f is not built for ARMv6: $(grep Tag_CPU_arch: <<<"$attrs")"
    fi
}

# ---------------------------------------------------------------- build
build_one() {
    local arch="$1" t prefix target_dir out bin suffix=""
    t=$(triple "$arch")
    prefix=$(gnu_prefix "$arch")
    [[ $LIBC == gnu ]] && suffix="-gnu"
    target_dir="${FENNEC_PI_TARGET_DIR:-$ROOT/target}/pi-$arch$suffix"
    # target/pi/<arch>[-gnu][-lite][-<profile>]/fennec
    out="$ROOT/target/pi/$arch$suffix"
    [[ $LITE -eq 1 ]] && out="$out-lite"
    [[ -n $FEATURES ]] && out="$out-features-${FEATURES//,/+}"
    [[ $PROFILE != pi ]] && out="$out-$PROFILE"

    local T u
    T=$(echo "$t" | tr 'a-z-' 'A-Z_')
    u=$(echo "$t" | tr '-' '_')
    # Debian's cargo and rustc (1.96); rustup's proxies, if any, stay out of it.
    # Debian ships no ARM standard library for them: it is built from rust-web-src.
    local -a env_vars=(RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1
        "CC_$u=$prefix-gcc" "AR_$u=$prefix-ar")
    local rustflags=""
    # pi-tiny aborts on panic: no unwind tables needed (profiles cannot set rustflags).
    [[ $PROFILE == pi-tiny ]] && rustflags="-C force-unwind-tables=no"
    if [[ $LIBC == static ]]; then
        env_vars+=("CARGO_TARGET_${T}_LINKER=$ROOT/scripts/zig-linker"
            # zig brings musl's crt objects and libc; rustc's own copies stay out.
            "CARGO_TARGET_${T}_RUSTFLAGS=-C link-self-contained=no $rustflags"
            "FENNEC_ZIG_TARGET=$(zig_target "$arch")" "FENNEC_ZIG_CPU=$(zig_cpu "$arch")")
    else
        env_vars+=("CARGO_TARGET_${T}_LINKER=$prefix-gcc" "CARGO_TARGET_${T}_RUSTFLAGS=$rustflags")
    fi
    local -a args=(build --profile "$PROFILE" --locked -p fennec-runtime --bin fennec
        --target "$t" --target-dir "$target_dir" -Zbuild-std=std,panic_unwind,panic_abort)
    [[ $LITE -eq 1 ]] && args+=(--no-default-features --features lite)
    [[ -n $FEATURES ]] && args+=(--no-default-features --features "$FEATURES")

    log "building $t (profile $PROFILE$([[ $LITE -eq 1 ]] && echo ', lite')$([[ -n $FEATURES ]] && echo ", features $FEATURES")) into $target_dir"
    local start=$SECONDS
    (cd "$ROOT" && env -u RUSTUP_TOOLCHAIN "${env_vars[@]}" nice -n 10 /usr/bin/cargo "${args[@]}")
    bin="$target_dir/$t/$PROFILE/fennec"
    [[ -x $bin ]] || die "$bin was not built"

    mkdir -p "$out"
    "$prefix-strip" -o "$out/fennec.tmp" "$bin"
    mv -f "$out/fennec.tmp" "$out/fennec"
    local size proof
    size=$(stat -c %s "$out/fennec")
    proof=$(check_binary "$arch" "$out/fennec")
    log "$arch: $out/fennec  $(numfmt --to=iec-i --suffix=B "$size") ($size bytes), $proof, built in $((SECONDS - start)) s"
    file -b "$out/fennec" >&2
}

install_packages
for arch in "${TARGETS[@]}"; do
    build_one "$arch"
done
