#!/usr/bin/env bash
# `fennec serve` under load, side by side with a Python peer written for this benchmark
# (bench/serve_peer.py: Starlette + uvicorn + onnxruntime, Pillow decode), same model, same
# images, same load generator (tests/examples/loadgen.rs: closed loop, one keep-alive
# connection per client, raw image bodies, every answer's label checked against
# `fennec predict`). Localhost only; every load is bounded in time.
#
# Parts (PARTS):
#   compare  requests/s, p50/p99 latency at CONC concurrent clients, and the server's peak
#            RSS, for each model of MODELS, fennec and the peer alternating.
#            targets: Fashion-MNIST rps >= 2x the peer, p99 <= 0.5x; model_3 224x224
#            rps >= 1.25x, p99 <= 0.8x; RSS <= 0.3x the peer's.
#   soak     SOAK_SECONDS of load from SOAK_CLIENTS clients with 5 % bad requests
#            (truncated, wrong type, over the body limit, slow clients), fennec only:
#            RSS sampled every 5 s; growth after the first SOAK_WARMUP seconds must stay
#            <= 10 %, the server must live, every good answer must be right.
#
# Environment (all optional):
#   PEERS_HOME    models and data                      [/work/peers]
#   SERVE_VENV    venv with starlette uvicorn onnxruntime pillow numpy  [/work/peers-serve/venv]
#   PARTS         ["compare soak"]
#   MODELS        ["fashion model3"]
#   CONC          concurrent clients                   ["1 8 32"]
#   SECS          seconds of load per measure          [10]
#   REPS          repetitions of compare (order flips)  [1]
#   SOAK_SECONDS / SOAK_WARMUP / SOAK_CLIENTS          [600 / 60 / 8]
#   SERVE_ARGS    extra flags of `fennec serve` in compare (e.g. "--max-batch 4")  [""]
#   NO_BUILD=1    use the built binaries as they are
#   WORK          scratch folder                       [a new /tmp/fennec-bench-serve.*]
#
# Usage: bench/serve.sh   (compare: ~2 min per model at the defaults; soak: SOAK_SECONDS)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS_HOME=${PEERS_HOME:-/work/peers}
SERVE_VENV=${SERVE_VENV:-/work/peers-serve/venv}
PARTS=${PARTS:-"compare soak"}
MODELS=${MODELS:-"fashion model3"}
CONC=${CONC:-"1 8 32"}
SECS=${SECS:-10}
REPS=${REPS:-1}
SOAK_SECONDS=${SOAK_SECONDS:-600}
SOAK_WARMUP=${SOAK_WARMUP:-60}
SOAK_CLIENTS=${SOAK_CLIENTS:-8}
WORK=${WORK:-$(mktemp -d /tmp/fennec-bench-serve.XXXXXX)}
BIN=$ROOT/target/release/fennec
LOADGEN=$ROOT/target/debug/examples/loadgen
PORT_FENNEC=18080
PORT_PEER=18081

die() { echo "bench/serve.sh: $*" >&2; exit 1; }
say() { echo "[$(date -u +%T)] $*" >&2; }

if [[ -z ${NO_BUILD:-} ]]; then
    say "building fennec (release) and the load generator ..."
    (cd "$ROOT" && cargo build --quiet --release -p fennec-runtime --bin fennec \
        && cargo build --quiet -p fennec-e2e --example loadgen)
fi
[[ -x $BIN ]] || die "$BIN missing (build it, or unset NO_BUILD)"
[[ -x $LOADGEN ]] || die "$LOADGEN missing (cargo build -p fennec-e2e --example loadgen)"
[[ -x $SERVE_VENV/bin/python ]] || die "$SERVE_VENV: make it with python3 -m venv, then pip install starlette uvicorn onnxruntime pillow numpy"

model_path() {
    case $1 in
        fashion) echo "$ROOT/models/fashion_model_3.onnx" ;;
        model3) echo "$PEERS_HOME/models/model3_224_torch.onnx" ;;
        *) die "unknown model $1" ;;
    esac
}
model_images() {
    case $1 in
        fashion) echo "$ROOT/data/fashion-mini/test" ;;
        model3) echo "$PEERS_HOME/data/synth224/test" ;;
    esac
}

SERVER_PID=
stop_server() {
    if [[ -n $SERVER_PID ]]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}
trap stop_server EXIT

# start TOOL MODEL: starts the server in the background (SERVER_PID), waits for /healthz,
# sets PORT. Not run in a subshell: SERVER_PID must reach stop_server and rss_kb.
PORT=
start() {
    local tool=$1 model=$2 port
    for port in $PORT_FENNEC $PORT_PEER; do
        ! curl -sf "http://127.0.0.1:$port/healthz" > /dev/null \
            || die "something already answers on port $port (a server left from an earlier run?)"
    done
    if [[ $tool == fennec ]]; then
        port=$PORT_FENNEC
        "$BIN" serve "$model" --bind "127.0.0.1:$port" "${FENNEC_ARGS[@]}" > "$WORK/server.log" 2>&1 &
    else
        port=$PORT_PEER
        "$SERVE_VENV/bin/python" "$ROOT/bench/serve_peer.py" "$model" --port "$port" > "$WORK/server.log" 2>&1 &
    fi
    SERVER_PID=$!
    for _ in $(seq 600); do
        if curl -sf "http://127.0.0.1:$port/healthz" > /dev/null; then PORT=$port; return; fi
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; die "$tool server died"; }
        sleep 0.1
    done
    die "$tool server did not answer /healthz"
}
rss_kb() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }

RESULTS=$WORK/results.tsv
: > "$RESULTS"
read -r -a FENNEC_ARGS <<< "${SERVE_ARGS:-}"

if [[ " $PARTS " == *" compare "* ]]; then
    for name in $MODELS; do
        model=$(model_path "$name")
        images=$(model_images "$name")
        [[ -f $model && -d $images ]] || die "$model or $images missing (see ../shared/peers/README.md)"
        expect=$WORK/$name.expect.jsonl
        "$BIN" predict "$model" "$images" --json > "$expect"
        for rep in $(seq "$REPS"); do
            if (( rep % 2 )); then order="fennec peer"; else order="peer fennec"; fi
            for tool in $order; do
                say "$name $tool (rep $rep)"
                start "$tool" "$model"
                port=$PORT
                # Warm-up: plans, caches, lazy imports.
                "$LOADGEN" --addr "127.0.0.1:$port" --images "$images" --concurrency 2 --seconds 2 > /dev/null
                for c in $CONC; do
                    out=$("$LOADGEN" --addr "127.0.0.1:$port" --images "$images" --expect "$expect" \
                        --concurrency "$c" --seconds "$SECS")
                    echo "$out" > "$WORK/$name.$tool.c$c.$rep.json"
                    load=$(cut -d' ' -f1 /proc/loadavg)
                    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$c" "$tool" "$rep" \
                        "$(jq .rps <<< "$out")" "$(jq .p50_ms <<< "$out")" "$(jq .p99_ms <<< "$out")" \
                        "$(jq '.wrong + .failed' <<< "$out")" "$load" >> "$RESULTS"
                done
                printf '%s\trss\t%s\t%s\t%s\n' "$name" "$tool" "$rep" "$(rss_kb "$SERVER_PID" VmHWM)" >> "$RESULTS"
                stop_server
            done
        done
    done

    echo
    echo "## fennec serve vs Starlette + uvicorn + onnxruntime ($(date -u +%Y-%m-%dT%H:%MZ); $(nproc) CPUs; ${SECS} s per measure; $REPS rep(s); medians)"
    echo
    echo "| model | clients | fennec req/s | peer req/s | ratio | fennec p50 / p99 ms | peer p50 / p99 ms | p99 ratio | wrong or failed | load 1 min |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    for name in $MODELS; do
        for c in $CONC; do
            med() { awk -F'\t' -v n="$name" -v c="$c" -v t="$1" -v col="$2" '$1==n && $2==c && $3==t {print $col}' "$RESULTS" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
            fr=$(med fennec 5); pr=$(med peer 5)
            f50=$(med fennec 6); f99=$(med fennec 7); p50=$(med peer 6); p99=$(med peer 7)
            bad=$(awk -F'\t' -v n="$name" -v c="$c" '$1==n && $2==c {s += $8} END {print s}' "$RESULTS")
            loads=$(awk -F'\t' -v n="$name" -v c="$c" '$1==n && $2==c {printf "%s ", $9}' "$RESULTS")
            printf '| %s | %s | %.1f | %.1f | %.2f | %.2f / %.2f | %.2f / %.2f | %.2f | %s | %s|\n' \
                "$name" "$c" "$fr" "$pr" "$(echo "$fr / $pr" | bc -l)" "$f50" "$f99" "$p50" "$p99" \
                "$(echo "$f99 / $p99" | bc -l)" "$bad" "$loads"
        done
        fr=$(awk -F'\t' -v n="$name" '$1==n && $2=="rss" && $3=="fennec" {print $5}' "$RESULTS" | sort -g | tail -1)
        pr=$(awk -F'\t' -v n="$name" '$1==n && $2=="rss" && $3=="peer" {print $5}' "$RESULTS" | sort -g | tail -1)
        printf '| %s | peak RSS MB | %.1f | %.1f | %.2f | | | | | |\n' "$name" \
            "$(echo "$fr / 1024" | bc -l)" "$(echo "$pr / 1024" | bc -l)" "$(echo "$fr / $pr" | bc -l)"
    done
fi

if [[ " $PARTS " == *" soak "* ]]; then
    model=$(model_path fashion)
    images=$(model_images fashion)
    expect=$WORK/soak.expect.jsonl
    "$BIN" predict "$model" "$images" --json > "$expect"
    FENNEC_ARGS=(--read-timeout 2 --max-body 1)
    say "soak: $SOAK_SECONDS s, $SOAK_CLIENTS clients, 5 % bad requests"
    start fennec "$model"
    port=$PORT
    pid=$SERVER_PID
    (
        t=0
        while kill -0 "$pid" 2>/dev/null; do
            echo "$t $(rss_kb "$pid" VmRSS)"
            sleep 5
            t=$((t + 5))
        done
    ) > "$WORK/soak.rss" &
    sampler=$!
    out=$("$LOADGEN" --addr "127.0.0.1:$port" --images "$images" --expect "$expect" \
        --concurrency "$SOAK_CLIENTS" --seconds "$SOAK_SECONDS" --bad 0.05 --max-body $((1 << 20)) --slow-secs 3)
    alive=no
    curl -sf "http://127.0.0.1:$port/healthz" > /dev/null && alive=yes
    curl -sf "http://127.0.0.1:$port/metrics" > "$WORK/soak.metrics" || true
    stop_server
    kill "$sampler" 2>/dev/null || true
    echo "$out" > "$WORK/soak.json"
    at_warm=$(awk -v w="$SOAK_WARMUP" '$1 >= w {print $2; exit}' "$WORK/soak.rss")
    peak=$(awk -v w="$SOAK_WARMUP" '$1 >= w && $2 > m {m = $2} END {print m}' "$WORK/soak.rss")
    echo
    echo "## soak ($(date -u +%Y-%m-%dT%H:%MZ); ${SOAK_SECONDS} s, $SOAK_CLIENTS clients, Fashion-MNIST model; load at end $(cut -d' ' -f1-3 /proc/loadavg))"
    echo
    echo "| alive at end | good requests | right | wrong | failed | bad sent | bad refused (4xx / cut off) | bad accepted | RSS at ${SOAK_WARMUP} s MB | peak after MB | growth |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %.1f | %.1f | %.1f %% |\n' "$alive" \
        "$(jq .good <<< "$out")" "$(jq .right <<< "$out")" "$(jq .wrong <<< "$out")" "$(jq .failed <<< "$out")" \
        "$(jq .bad_sent <<< "$out")" "$(jq .bad_refused <<< "$out")" "$(jq .bad_accepted <<< "$out")" \
        "$(echo "$at_warm / 1024" | bc -l)" "$(echo "$peak / 1024" | bc -l)" \
        "$(echo "($peak - $at_warm) * 100 / $at_warm" | bc -l)"
fi
echo
echo "(raw results in $WORK)"
