#!/usr/bin/env bash
# int8 inference, side by side in one run: fennec on an int8 (QDQ) model_3 224x224
# against fennec on the f32 file and onnxruntime on its own `quantize_static` int8
# file of the same f32 model (../shared/peers/ort_bench.py, run in place).
#
# Measures (targets of issue 9; the size and accuracy targets are bench/int8.sh's):
#   latency   batch-1 p50 at threads 1 and 2: fennec int8 vs fennec f32 (<= 0.5x) and
#             vs onnxruntime int8 (<= 0.8x); with fennec's per-node profile of the int8
#             model: GOP/s of the int8 convolutions (2 ops per multiply-add) and GB/s
#             of the int8 dense layer's weight reads
#   folder    images/s scoring a folder of 224x224 JPEGs with the int8 model: `fennec
#             eval` (defaults) vs the best ort_bench.py int8 configuration  target: >= 2x
# Each number is the median over REPS repetitions; fennec and onnxruntime alternate.
#
# The int8 files: ORT_INT8 is made by bench/ort_quantize.py (onnxruntime's quantizer,
# QDQ, per-channel int8 weights, u8 activations, min/max on CALIB images); fennec runs
# FENNEC_INT8, by default `fennec quantize` of the same f32 file when the binary has
# that command, else the onnxruntime file itself (the same format).
#
# Environment (all optional): PEERS_HOME [/work/peers], PEERS_SRC [<repo>/../shared/peers],
#   PARTS ["latency folder"] (and size), THREADS ["1 2"], REPS [3], RUNS/WARMUP [100 / 10],
#   F32 [$PEERS_HOME/models/model3_224_torch.onnx], CALIB [$PEERS_HOME/data/synth224/train],
#   FOLDER [$PEERS_HOME/data/synth224_big/test], ORT_FOLDER ["t1b1 t2b1 t1b16 t2b16"],
#   ORT_INT8 / FENNEC_INT8 (existing files to use), WORK [new /tmp dir], NO_BUILD=1.
#
# Usage: bench/int8-speed.sh    (inside /work/bin/quiet on the shared machine, with NO_BUILD=1)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS_HOME=${PEERS_HOME:-/work/peers}
PEERS_SRC=${PEERS_SRC:-$(cd "$ROOT/.." && pwd)/shared/peers}
PY=$PEERS_HOME/venv/bin/python
PARTS=${PARTS:-"latency folder"}
THREADS=${THREADS:-"1 2"}
REPS=${REPS:-3}
RUNS=${RUNS:-100}
WARMUP=${WARMUP:-10}
F32=${F32:-$PEERS_HOME/models/model3_224_torch.onnx}
CALIB=${CALIB:-$PEERS_HOME/data/synth224/train}
FOLDER=${FOLDER:-$PEERS_HOME/data/synth224_big/test}
ORT_FOLDER=${ORT_FOLDER:-"t1b1 t2b1 t1b16 t2b16"}
WORK=${WORK:-$(mktemp -d /tmp/fennec-bench-int8.XXXXXX)}
BIN=$ROOT/target/release/fennec

die() { echo "bench/int8-speed.sh: $*" >&2; exit 1; }
[[ -x $PY ]] || die "$PY not found: set PEERS_HOME ($PEERS_SRC/README.md)"
[[ -f $PEERS_SRC/ort_bench.py ]] || die "$PEERS_SRC/ort_bench.py not found: set PEERS_SRC"
[[ -f $F32 ]] || die "$F32 not found"
[[ -d $FOLDER ]] || die "$FOLDER not found"
mkdir -p "$WORK"
if [[ ${NO_BUILD:-} != 1 ]]; then
    (cd "$ROOT" && cargo build --release -p fennec-runtime --bin fennec) >&2
fi
[[ -x $BIN ]] || die "$BIN missing (build it or unset NO_BUILD)"

load() { cut -d' ' -f1 /proc/loadavg; }
say() { echo "[$(date +%H:%M:%S) load $(load)] $*" >&2; }
RESULTS=$WORK/results.tsv   # part, case, tool, rep, value, load
: > "$RESULTS"
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$RESULTS"; }

if [[ -z ${ORT_INT8:-} ]]; then
    ORT_INT8=$WORK/model3_224_ort_int8.onnx
    say "making $ORT_INT8 (onnxruntime quantize_static, 200 images of $CALIB)"
    "$PY" "$ROOT/bench/ort_quantize.py" "$F32" "$CALIB" "$ORT_INT8" > "$WORK/ort_quantize.log" 2>&1 \
        || die "ort_quantize.py failed: $WORK/ort_quantize.log"
fi
if [[ -z ${FENNEC_INT8:-} ]]; then
    if "$BIN" quantize --help > /dev/null 2>&1; then
        FENNEC_INT8=$WORK/model3_224_fennec_int8.onnx
        say "making $FENNEC_INT8 (fennec quantize)"
        "$BIN" quantize "$F32" --calibrate "$CALIB" -o "$FENNEC_INT8" > "$WORK/quantize.log" 2>&1 \
            || die "fennec quantize failed: $WORK/quantize.log"
    else
        FENNEC_INT8=$ORT_INT8
    fi
fi
say "int8 files: fennec runs $FENNEC_INT8, onnxruntime runs $ORT_INT8"

order() { if (( $1 % 2 )); then echo "fennec ort"; else echo "ort fennec"; fi; }

fennec_latency() { # rep threads kind file
    local tag=$WORK/latency.t$2.fennec-$3.$1 l
    l=$(load)
    say "latency fennec $3 threads=$2 (rep $1)"
    "$BIN" bench "$4" --threads "$2" --batch 1 --runs "$RUNS" --warmup "$WARMUP" --profile \
        --json > "$tag.json" 2> "$tag.log"
    record latency "t$2" "fennec-$3" "$1" "$(jq '.results[0].p50_ms' "$tag.json")" "$l"
    # Per-node times of the int8 ops (model_3 geometry below, in the report).
    if [[ $3 == int8 ]]; then
        # The profile is sorted by time: the first convolution is told by its node
        # name (the model's input), the big dense layer by being the slower one.
        jq -r '.results[0].profile[] | select(.op | startswith("FennecQ")) | "\(.op)\t\(.node)\t\(.ms)"' "$tag.json" \
            | awk -v t="$2" -v rep="$1" -v l="$l" -F'\t' \
                '{ if ($1 == "FennecQConv") k = ($2 ~ /^input/) ? 1 : 2; else k = ++n[$1]
                   printf "kernel\tt%s %s#%d\tfennec\t%s\t%s\t%s\n", t, $1, k, rep, $3, l}' >> "$RESULTS"
    fi
}

ort_latency() { # rep threads
    local tag=$WORK/latency.t$2.ort-int8.$1 l
    l=$(load)
    say "latency onnxruntime int8 threads=$2 (rep $1)"
    "$PY" "$PEERS_SRC/ort_bench.py" --model "$ORT_INT8" --threads "$2" --latency \
        --warmup "$WARMUP" --runs "$RUNS" --json "$tag.json" > "$tag.log" 2>&1
    record latency "t$2" ort-int8 "$1" "$(jq '.latency.p50_ms' "$tag.json")" "$l"
}

folder() { # rep tool
    local l
    if [[ $2 == fennec ]]; then
        l=$(load)
        say "folder fennec eval int8 (rep $1)"
        "$BIN" eval "$FENNEC_INT8" "$FOLDER" --quiet --json - > "$WORK/folder.fennec.$1.json" 2> "$WORK/folder.fennec.$1.log"
        record folder images/s fennec-int8 "$1" "$(jq '.images_per_second' "$WORK/folder.fennec.$1.json")" "$l"
    else
        for cfg in $ORT_FOLDER; do
            local t=${cfg#t}; t=${t%b*}
            local b=${cfg#*b} tag=$WORK/folder.ort-$cfg.$1
            l=$(load)
            say "folder ort_bench int8 threads=$t batch=$b (rep $1)"
            "$PY" "$PEERS_SRC/ort_bench.py" --model "$ORT_INT8" --threads "$t" --batch "$b" --folder "$FOLDER" \
                --json "$tag.json" > "$tag.log" 2>&1
            record folder images/s "ort-$cfg" "$1" "$(jq '.folder.images_per_s' "$tag.json")" "$l"
        done
    fi
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for part in $PARTS; do
    if [[ $part == size ]]; then
        record size "int8 / f32 %" fennec 1 "$(awk -v a="$(stat -c %s "$FENNEC_INT8")" -v b="$(stat -c %s "$F32")" 'BEGIN { printf "%.1f", 100 * a / b }')" "$(load)"
        record size "int8 / f32 %" ort-int8 1 "$(awk -v a="$(stat -c %s "$ORT_INT8")" -v b="$(stat -c %s "$F32")" 'BEGIN { printf "%.1f", 100 * a / b }')" "$(load)"
    fi
done
for rep in $(seq 1 "$REPS"); do
    for part in $PARTS; do
        case $part in
            size) ;;
            latency)
                for t in $THREADS; do
                    fennec_latency "$rep" "$t" f32 "$F32"
                    for tool in $(order "$rep"); do
                        if [[ $tool == fennec ]]; then fennec_latency "$rep" "$t" int8 "$FENNEC_INT8"; else ort_latency "$rep" "$t"; fi
                    done
                done ;;
            folder) for tool in $(order "$rep"); do folder "$rep" "$tool"; done ;;
            *) die "unknown part '$part' (size, latency, folder)" ;;
        esac
    done
done

MHZ=$(grep -m1 'cpu MHz' /proc/cpuinfo | cut -d: -f2 | xargs)
echo
echo "## fennec int8 vs f32 vs onnxruntime int8 ($(date -u +%Y-%m-%dT%H:%MZ); $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), ${MHZ} MHz; load at start $LOAD_START, at end $(cut -d' ' -f1-3 /proc/loadavg); $REPS reps)"
echo "## files: fennec $FENNEC_INT8, onnxruntime $ORT_INT8; logs: $WORK"
python3 - "$RESULTS" "$MHZ" <<'EOF'
import statistics, sys
from collections import defaultdict

rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
mhz = float(sys.argv[2] or "nan")
vals, loads = defaultdict(list), defaultdict(list)
for part, case, tool, rep, value, load in rows:
    vals[part, case, tool].append(float(value))
    loads[part].append(float(load))
med = statistics.median

def cell(v, fmt):
    return fmt.format(med(v)) + (" [" + fmt.format(min(v)) + "-" + fmt.format(max(v)) + "]" if len(v) > 1 else "")

def lr(part):
    l = loads[part]
    return "%.1f-%.1f" % (min(l), max(l)) if l else ""

print()
print("| measure | fennec int8 | reference | ratio | target | met | load |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for tool in ("fennec", "ort-int8"):
    v = vals.get(("size", "int8 / f32 %", tool))
    if v:
        who = "fennec's int8 file" if tool == "fennec" else "onnxruntime's int8 file"
        print("| %s, %% of the f32 file | %.1f %% | | | <= 27 %% | %s | |" % (who, v[0], "yes" if v[0] <= 27 else "no"))
for (part, case, tool), v in sorted(vals.items()):
    if part != "latency" or tool != "fennec-int8":
        continue
    t = case[1:]
    for ref, target in (("fennec-f32", 0.5), ("ort-int8", 0.8)):
        o = vals.get((part, case, ref))
        if not o:
            continue
        r = med(v) / med(o)
        print("| latency p50 ms, threads %s, vs %s | %s | %s | %.2f | <= %.2f | %s | %s |" % (
            t, ref, cell(v, "{:.3f}"), cell(o, "{:.3f}"), r, target, "yes" if r <= target else "no", lr(part)))
f = vals.get(("folder", "images/s", "fennec-int8"))
ort = {tool: v for (part, case, tool), v in vals.items() if part == "folder" and tool.startswith("ort-")}
if f and ort:
    best = max(ort, key=lambda k: med(ort[k]))
    r = med(f) / med(ort[best])
    print("| folder images/s (eval defaults vs best ort int8: %s) | %s | %s | %.2f | >= 2.00 | %s | %s |" % (
        best[4:], cell(f, "{:.1f}"), cell(ort[best], "{:.1f}"), r, "yes" if r >= 2 else "no", lr("folder")))
    for k in sorted(ort):
        print("| &nbsp;&nbsp;ort_bench int8 folder, %s | | %s | %.2f | | | |" % (k[4:], cell(ort[k], "{:.1f}"), med(f) / med(ort[k])))

# model_3 224x224: conv 3->32 3x3 on 224x224 (222x222 out), conv 32->32 3x3 on 111x111
# (109x109 out), dense 96,800 x 128 (12.4 MB of int8 codes). The peak assumed is AVX2
# vpmaddwd: 2 per cycle x 8 lanes x 2 multiply-adds = 64 int ops per cycle per core.
work = {"FennecQConv#1": ("GOP/s", 2 * 222 * 222 * 32 * 27 / 1e9),
        "FennecQConv#2": ("GOP/s", 2 * 109 * 109 * 32 * 288 / 1e9),
        "FennecQDense#1": ("GB/s", 96800 * 128 / 1e9)}
kern = [(case, v) for (part, case, tool), v in sorted(vals.items()) if part == "kernel"]
if kern:
    print()
    print("| int8 op (profile of the latency runs) | threads | ms | rate | share of the AVX2 vpmaddwd peak |")
    print("| --- | --- | --- | --- | --- |")
    for case, v in kern:
        t, op = case.split()
        if op not in work:
            continue
        unit, amount = work[op]
        rate = amount / (med(v) / 1e3)
        share = ""
        if unit == "GOP/s":
            peak = 64 * mhz / 1e3 * int(t[1:])
            share = "%.0f %% of %.0f GOP/s" % (100 * rate / peak, peak)
        print("| %s | %s | %s | %.1f %s | %s |" % (op, t[1:], cell(v, "{:.3f}"), rate, unit, share))
EOF
