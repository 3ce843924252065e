#!/usr/bin/env bash
# Inference speed, side by side: `fennec bench` / `fennec eval` against onnxruntime
# (../shared/peers/ort_bench.py, run in place, never copied) on the same ONNX files
# and JPEG folder, in one run, alternating fennec and onnxruntime within each
# repetition (and flipping which goes first) so that both see the same machine load.
#
# Measures (the targets are those of issue 2, "Performance"):
#   latency   batch-1 p50 of `fennec bench --threads T` vs `ort_bench.py --latency
#             --threads T`, T = 1 and 2, on the torch export (NCHW) and the Keras
#             export (NHWC) of model_3 at 224x224.              target: ratio <= 0.8
#   folder    images/s scoring a folder of 224x224 JPEGs, decode + resize + infer:
#             `fennec eval MODEL DIR` with its defaults (all cores) vs ort_bench.py's
#             Pillow + onnxruntime loop in each of its ORT_FOLDER configurations; the
#             ratio is against the best of those.                target: ratio >= 2
#   rss       peak RSS of `fennec eval` (defaults) on RSS_IMAGES images, hard links
#             to the folder's JPEGs in $WORK.                   target: <= 300 MB
#   profile   once, after the repetitions: `fennec bench --profile` (per node: ms,
#             GFLOP/s, share of this CPU's measured multiply-add peak, GB/s of
#             weights) beside onnxruntime's own per-node profile (ort_profile.py),
#             for each export and thread count; `fennec eval --profile` on the
#             folder (decode, resize, inference, waiting).
# Each number is the median over REPS repetitions, [min-max] beside it.
#
# Peers: set up once as ../shared/peers/README.md says (venv, then the data and
# ONNX files under $PEERS_HOME, as recorded in $PEERS_HOME/SETUP_NOTES.md):
#   $PEERS_HOME/venv/bin/python                        onnxruntime 1.31.1, Pillow, numpy
#   $PEERS_HOME/models/model3_224_{torch,keras}.onnx   torch_train.py / keras_train.py --onnx
#   $PEERS_HOME/data/synth224_big/test                 make_synthetic.py --size 224 --test 2048
#
# Environment (all optional):
#   PEERS_HOME   peer venv, models, data            [/work/peers]
#   PEERS_SRC    peer scripts                       [<repo>/../shared/peers]
#   PARTS        what to measure                    ["latency folder rss profile"]
#   MODELS       exports for latency                ["torch keras"]
#   THREADS      thread counts for latency          ["1 2"]
#   REPS         repetitions                        [3]
#   RUNS/WARMUP  timed / untimed latency runs       [200 / 20]
#   FOLDER       JPEG folder (<class>/<images>)     [$PEERS_HOME/data/synth224_big/test]
#   FOLDER_MODEL model for folder and rss           [torch]
#   ORT_FOLDER   ort_bench folder configurations    ["t1b1 t2b1 t1b16 t2b16"] (tT = --threads, bB = --batch)
#   RSS_IMAGES   images in the RSS folder           [20000]
#   WORK         scratch folder (RSS folder, logs)  [a new /tmp/fennec-bench-runtime.*]
#   NO_BUILD=1   use target/release/fennec as it is
#
# Usage: bench/runtime.sh      (from anywhere; about 15 min for the defaults on 2 busy cores)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS_HOME=${PEERS_HOME:-/work/peers}
PEERS_SRC=${PEERS_SRC:-$(cd "$ROOT/.." && pwd)/shared/peers}
PY=$PEERS_HOME/venv/bin/python
PARTS=${PARTS:-"latency folder rss profile"}
MODELS=${MODELS:-"torch keras"}
THREADS=${THREADS:-"1 2"}
REPS=${REPS:-3}
RUNS=${RUNS:-200}
WARMUP=${WARMUP:-20}
FOLDER=${FOLDER:-$PEERS_HOME/data/synth224_big/test}
FOLDER_MODEL=${FOLDER_MODEL:-torch}
ORT_FOLDER=${ORT_FOLDER:-"t1b1 t2b1 t1b16 t2b16"}
RSS_IMAGES=${RSS_IMAGES:-20000}
WORK=${WORK:-$(mktemp -d /tmp/fennec-bench-runtime.XXXXXX)}
BIN=$ROOT/target/release/fennec

die() { echo "bench/runtime.sh: $*" >&2; exit 1; }
model_path() { echo "$PEERS_HOME/models/model3_224_$1.onnx"; }

[[ -x $PY ]] || die "$PY not found: set PEERS_HOME, or set the peers up ($PEERS_SRC/README.md)"
[[ -f $PEERS_SRC/ort_bench.py ]] || die "$PEERS_SRC/ort_bench.py not found: set PEERS_SRC"
[[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) is needed for peak RSS"
for m in $MODELS $FOLDER_MODEL; do
    [[ -f $(model_path "$m") ]] || die "$(model_path "$m") not found (see $PEERS_SRC/README.md)"
done
[[ -d $FOLDER ]] || die "$FOLDER not found (see $PEERS_SRC/README.md, Data: make_synthetic.py)"
mkdir -p "$WORK"

if [[ ${NO_BUILD:-} != 1 ]]; then
    echo "building fennec (release) ..." >&2
    (cd "$ROOT" && cargo build --release -p fennec-runtime --bin fennec) >&2
fi
[[ -x $BIN ]] || die "$BIN missing (build it or unset NO_BUILD)"

RESULTS=$WORK/results.tsv   # part, case, tool, rep, value, load
: > "$RESULTS"
load() { cut -d' ' -f1 /proc/loadavg; }
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$RESULTS"; }
say() { echo "[$(date +%H:%M:%S) load $(load)] $*" >&2; }

# The tools in this repetition's order: fennec first on odd repetitions.
order() { if (( $1 % 2 )); then echo "fennec ort"; else echo "ort fennec"; fi; }

latency() {
    local rep=$1 model=$2 t=$3 tool=$4 tag=$WORK/latency.$2.t$3.$4.$1 l
    l=$(load)
    say "latency $model threads=$t $tool (rep $rep)"
    if [[ $tool == fennec ]]; then
        "$BIN" bench "$(model_path "$model")" --threads "$t" --batch 1 --runs "$RUNS" --warmup "$WARMUP" \
            --json > "$tag.json" 2> "$tag.log"
        record latency "$model t$t" fennec "$rep" "$(jq '.results[0].p50_ms' "$tag.json")" "$l"
    else
        "$PY" "$PEERS_SRC/ort_bench.py" --model "$(model_path "$model")" --threads "$t" --latency \
            --warmup "$WARMUP" --runs "$RUNS" --json "$tag.json" > "$tag.log" 2>&1
        record latency "$model t$t" ort "$rep" "$(jq '.latency.p50_ms' "$tag.json")" "$l"
    fi
}

folder() {
    local rep=$1 tool=$2 model l
    model=$(model_path "$FOLDER_MODEL")
    if [[ $tool == fennec ]]; then
        l=$(load)
        say "folder fennec eval (rep $rep)"
        "$BIN" eval "$model" "$FOLDER" --quiet --json - > "$WORK/folder.fennec.$rep.json" 2> "$WORK/folder.fennec.$rep.log"
        record folder "images/s" fennec "$rep" "$(jq '.images_per_second' "$WORK/folder.fennec.$rep.json")" "$l"
    else
        for cfg in $ORT_FOLDER; do
            local t=${cfg#t}; t=${t%b*}
            local b=${cfg#*b} tag=$WORK/folder.ort-$cfg.$rep
            l=$(load)
            say "folder ort_bench threads=$t batch=$b (rep $rep)"
            "$PY" "$PEERS_SRC/ort_bench.py" --model "$model" --threads "$t" --batch "$b" --folder "$FOLDER" \
                --json "$tag.json" > "$tag.log" 2>&1
            record folder "images/s" "ort-$cfg" "$rep" "$(jq '.folder.images_per_s' "$tag.json")" "$l"
        done
    fi
}

rss() {
    local rep=$1 dir=$WORK/rss$RSS_IMAGES l
    if [[ ! -d $dir ]]; then
        say "making $dir: $RSS_IMAGES hard links to the JPEGs of $FOLDER"
        local classes=("$FOLDER"/*/) per n
        per=$(( (RSS_IMAGES + ${#classes[@]} - 1) / ${#classes[@]} ))
        for c in "${classes[@]}"; do
            local name src=() i=0
            name=$(basename "$c")
            mkdir -p "$dir/$name"
            mapfile -t src < <(find "$c" -maxdepth 1 -type f -name '*.jpg' | sort)
            (( ${#src[@]} )) || die "no .jpg files in $c"
            for (( n = 0; n < per; n++ )); do
                ln -f "${src[i]}" "$dir/$name/$n.jpg" 2>/dev/null || cp "${src[i]}" "$dir/$name/$n.jpg"
                i=$(( (i + 1) % ${#src[@]} ))
            done
        done
    fi
    l=$(load)
    say "rss fennec eval on $(find "$dir" -type f | wc -l) images (rep $rep)"
    /usr/bin/time -f '%M' -o "$WORK/rss.$rep.time" \
        "$BIN" eval "$(model_path "$FOLDER_MODEL")" "$dir" --quiet --json - > "$WORK/rss.$rep.json" 2> "$WORK/rss.$rep.log"
    record rss "peak MB" fennec "$rep" "$(awk '{printf "%.1f", $1 / 1024}' "$WORK/rss.$rep.time")" "$l"
    record rss "images/s" fennec "$rep" "$(jq '.images_per_second' "$WORK/rss.$rep.json")" "$l"
}

profile() {
    local model t tag
    for model in $MODELS; do
        for t in $THREADS; do
            tag=$WORK/profile.$model.t$t
            say "profile $model threads=$t: fennec, then onnxruntime"
            "$BIN" bench "$(model_path "$model")" --threads "$t" --runs "$RUNS" --warmup "$WARMUP" \
                --profile > "$tag.fennec.txt" 2>&1
            "$PY" "$PEERS_SRC/ort_profile.py" --model "$(model_path "$model")" --threads "$t" \
                --runs "$RUNS" --warmup "$WARMUP" > "$tag.ort.txt" 2>&1
        done
    done
    say "profile fennec eval --profile on the folder"
    "$BIN" eval "$(model_path "$FOLDER_MODEL")" "$FOLDER" --quiet --profile > "$WORK/profile.eval.txt" 2>&1
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for rep in $(seq 1 "$REPS"); do
    for part in $PARTS; do
        case $part in
            profile) ;; # once, below
            latency)
                for model in $MODELS; do
                    for t in $THREADS; do
                        for tool in $(order "$rep"); do latency "$rep" "$model" "$t" "$tool"; done
                    done
                done ;;
            folder) for tool in $(order "$rep"); do folder "$rep" "$tool"; done ;;
            rss) rss "$rep" ;;
            *) die "unknown part '$part' (latency, folder, rss, profile)" ;;
        esac
    done
done
[[ " $PARTS " == *" profile "* ]] && profile

echo
echo "## fennec vs onnxruntime ($(date -u +%Y-%m-%dT%H:%MZ); $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs); load at start $LOAD_START, at end $(cut -d' ' -f1-3 /proc/loadavg); $REPS reps)"
echo "## onnxruntime $("$PY" -c 'import onnxruntime; print(onnxruntime.__version__)' 2>/dev/null); fennec $("$BIN" --version | cut -d' ' -f2); logs: $WORK"
python3 - "$RESULTS" <<'EOF'
import statistics, sys
from collections import defaultdict

rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
vals, loads = defaultdict(list), defaultdict(list)
for part, case, tool, rep, value, load in rows:
    vals[part, case, tool].append(float(value))
    loads[part].append(float(load))

def med(v):
    return statistics.median(v)

def cell(v, fmt):
    s = fmt.format(med(v))
    return s + (" [" + fmt.format(min(v)) + "-" + fmt.format(max(v)) + "]" if len(v) > 1 else "")

def load_range(part):
    l = loads[part]
    return "%.1f-%.1f" % (min(l), max(l)) if l else ""

print()
print("| measure | fennec | onnxruntime | fennec / ort | target | met | load |")
print("| --- | --- | --- | --- | --- | --- | --- |")
layout = {"torch": "NCHW", "keras": "NHWC"}
for (part, case, tool), v in sorted(vals.items()):
    if part != "latency" or tool != "fennec":
        continue
    o = vals.get((part, case, "ort"))
    model, t = case.split()
    name = "latency p50 ms, %s export (%s), threads %s" % (model, layout.get(model, "?"), t[1:])
    ratio = med(v) / med(o) if o else float("nan")
    print("| %s | %s | %s | %.2f | <= 0.80 | %s | %s |" % (
        name, cell(v, "{:.3f}"), cell(o, "{:.3f}") if o else "-", ratio,
        "yes" if ratio <= 0.8 else "no", load_range(part)))
f = vals.get(("folder", "images/s", "fennec"))
ort = {tool: v for (part, case, tool), v in vals.items() if part == "folder" and tool.startswith("ort-")}
if f and ort:
    best = max(ort, key=lambda k: med(ort[k]))
    ratio = med(f) / med(ort[best])
    print("| folder images/s (eval defaults vs best ort_bench: %s) | %s | %s | %.2f | >= 2.00 | %s | %s |" % (
        best[4:], cell(f, "{:.1f}"), cell(ort[best], "{:.1f}"), ratio, "yes" if ratio >= 2 else "no",
        load_range("folder")))
    for k in sorted(ort):
        print("| &nbsp;&nbsp;ort_bench folder, %s (t = --threads, b = --batch) | | %s | %.2f | | | |" % (
            k[4:], cell(ort[k], "{:.1f}"), med(f) / med(ort[k])))
r = vals.get(("rss", "peak MB", "fennec"))
if r:
    ips = vals.get(("rss", "images/s", "fennec"), [])
    print("| peak RSS MB, fennec eval of the RSS folder (%s images/s) | %s | - | - | <= 300 | %s | %s |" % (
        cell(ips, "{:.1f}") if ips else "?", cell(r, "{:.1f}"), "yes" if max(r) <= 300 else "no",
        load_range("rss")))
EOF
if [[ " $PARTS " == *" profile "* ]]; then
    for f in "$WORK"/profile.*.fennec.txt; do
        echo; echo "### $(basename "$f" .fennec.txt): fennec bench --profile"; echo '```'
        sed -n '/^this CPU/,$p' "$f"; echo '```'
        echo "onnxruntime (ort_profile.py):"; echo '```'; cat "${f%.fennec.txt}.ort.txt"; echo '```'
    done
    echo; echo "### fennec eval --profile"; echo '```'; sed -n '/^where the/,$p' "$WORK/profile.eval.txt"; echo '```'
fi
