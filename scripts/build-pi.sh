#!/usr/bin/env bash
# Cross-builds `fennec` for the Raspberry Pi: aarch64 (Pi 3/4/5 with a 64-bit OS)
# and armv7 hard-float (32-bit Raspberry Pi OS, Pi 2 and later), stripped, into
# target/pi/<arch>/fennec. See docs/deploy-pi.md.
#
# Usage: scripts/build-pi.sh [--target aarch64|armv7|all] [--profile NAME]
#                            [--toolchain debian|rustup] [--lite] [--no-install]
#
# Toolchains:
#   debian (default): works on Debian 12 (bookworm) without downloading rustup
#     targets. Installs from apt: rustc-web/cargo-web 1.96 (bookworm-security), the
#     aarch64 standard library as the multiarch package libstd-rust-web-dev:arm64,
#     rust-web-src (armv7: the standard library is compiled from source with
#     -Zbuild-std, as Debian ships no armhf std for 1.96 that installs here), and
#     the GNU cross linkers. Needs root (or sudo) for apt once.
#   rustup: for machines with normal internet. Run first:
#       rustup target add aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf
#       sudo apt-get install gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf
#     (or use `cross`, see docs/deploy-pi.md).
#
# Each target has its own --target-dir (target/pi-<arch>, or $FENNEC_PI_TARGET_DIR/
# pi-<arch>), so the builds never invalidate each other or the host build. Cold builds take ~20 min per target on
# 2 cores; builds run under `nice -n 10`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGETS=(aarch64 armv7)
PROFILE=pi
TOOLCHAIN=debian
LITE=0
INSTALL=1

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --target) shift; case "${1:-}" in
                aarch64|armv7) TARGETS=("$1") ;;
                all) TARGETS=(aarch64 armv7) ;;
                *) echo "build-pi: --target must be aarch64, armv7 or all" >&2; exit 2 ;;
            esac ;;
        --profile) shift; PROFILE="${1:?--profile needs a name}" ;;
        --toolchain) shift; case "${1:-}" in
                debian|rustup) TOOLCHAIN="$1" ;;
                *) echo "build-pi: --toolchain must be debian or rustup" >&2; exit 2 ;;
            esac ;;
        --lite) LITE=1 ;;
        --no-install) INSTALL=0 ;;
        -h|--help) usage 0 ;;
        *) echo "build-pi: unknown argument '$1'" >&2; usage 2 ;;
    esac
    shift
done

log() { printf 'build-pi: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

triple() { case "$1" in aarch64) echo aarch64-unknown-linux-gnu ;; armv7) echo armv7-unknown-linux-gnueabihf ;; esac; }
gnu_prefix() { case "$1" in aarch64) echo aarch64-linux-gnu ;; armv7) echo arm-linux-gnueabihf ;; esac; }

# ---------------------------------------------------------------- packages
missing_packages() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
    done
}

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

install_packages() {
    local want=(binutils file)
    local t
    for t in "${TARGETS[@]}"; do
        want+=("gcc-$(gnu_prefix "$t")")
        case "$t" in
            aarch64) want+=(libc6-dev-arm64-cross) ;;
            armv7) want+=(libc6-dev-armhf-cross) ;;
        esac
    done
    if [[ $TOOLCHAIN == debian ]]; then
        want+=(rustc-web cargo-web)
        for t in "${TARGETS[@]}"; do
            case "$t" in
                aarch64) want+=(libstd-rust-web-dev:arm64) ;;
                armv7) want+=(rust-web-src) ;;
            esac
        done
    fi
    local missing
    missing=$(missing_packages "${want[@]}")
    [[ -z $missing ]] && return 0
    [[ $INSTALL -eq 1 ]] || die "missing packages (run without --no-install): $(echo $missing)"
    command -v apt-get >/dev/null || die "apt-get not found: install $(echo $missing) by hand"
    log "installing: $(echo $missing)"
    if grep -q ':arm64' <<<"$missing" && ! dpkg --print-foreign-architectures | grep -qx arm64; then
        # Only arm64: bookworm-security's armhf index does not always download, and a
        # failing index would make every later `apt-get update` report errors.
        as_root dpkg --add-architecture arm64
    fi
    as_root apt-get update -qq
    # shellcheck disable=SC2086
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

# ---------------------------------------------------------------- build
build_one() {
    local arch="$1" t prefix target_dir out bin
    t=$(triple "$arch")
    prefix=$(gnu_prefix "$arch")
    target_dir="${FENNEC_PI_TARGET_DIR:-$ROOT/target}/pi-$arch"
    # target/pi/<arch>[-lite][-<profile>]/fennec
    out="$ROOT/target/pi/$arch"
    [[ $LITE -eq 1 ]] && out="$out-lite"
    [[ $PROFILE != pi ]] && out="$out-$PROFILE"

    local -a cargo_cmd env_vars args
    local linker_var="CARGO_TARGET_$(echo "$t" | tr 'a-z-' 'A-Z_')_LINKER"
    env_vars=("$linker_var=$prefix-gcc")
    args=(build --profile "$PROFILE" --locked -p fennec-runtime --bin fennec
          --target "$t" --target-dir "$target_dir")
    if [[ $LITE -eq 1 ]]; then
        args+=(--no-default-features --features lite)
    fi
    if [[ $TOOLCHAIN == debian ]]; then
        # Debian's cargo and rustc (1.96); rustup's proxies, if any, stay out of it.
        cargo_cmd=(/usr/bin/cargo)
        env_vars+=(RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc)
        if [[ $arch == armv7 ]]; then
            # No armhf std package: build std from rust-web-src (same 1.96 sources).
            env_vars+=(RUSTC_BOOTSTRAP=1)
            args+=(-Zbuild-std=std,panic_unwind)
        fi
    else
        cargo_cmd=(cargo)
        rustup target list --installed 2>/dev/null | grep -qx "$t" \
            || die "rustup has no $t: run 'rustup target add $t'"
    fi

    log "building $t (profile $PROFILE$([[ $LITE -eq 1 ]] && echo ', lite')) into $target_dir"
    local start=$SECONDS
    (cd "$ROOT" && env -u RUSTUP_TOOLCHAIN "${env_vars[@]}" nice -n 10 "${cargo_cmd[@]}" "${args[@]}")
    bin="$target_dir/$t/$PROFILE/fennec"
    [[ -x $bin ]] || die "$bin was not built"

    mkdir -p "$out"
    "$prefix-strip" -o "$out/fennec.tmp" "$bin"
    mv -f "$out/fennec.tmp" "$out/fennec"
    local size glibc
    size=$(stat -c %s "$out/fennec")
    # Highest glibc symbol version the binary needs: the oldest OS it runs on.
    glibc=$("$prefix-objdump" -T "$out/fennec" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
    log "$arch: $out/fennec  $(numfmt --to=iec-i --suffix=B "$size") ($size bytes), needs $glibc, built in $((SECONDS - start)) s"
    file -b "$out/fennec" >&2
}

install_packages
for arch in "${TARGETS[@]}"; do
    build_one "$arch"
done
