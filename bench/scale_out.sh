#!/usr/bin/env bash
# Scale-out scoring (issue 11): shards, merge and the HTML report at size.
#
# Measures (targets of issue 11):
#   make     N_IMAGES 28x28 PNGs under $WORK/million/<class>/: hard links to the
#            Fashion-MNIST test images (not copies: 1,000,000 links take no data
#            blocks, only inodes), generated here, never committed.
#   shards   `fennec eval MODEL $WORK/million --shard i/4 --part ...` for the 4
#            shards at once (each --threads 1 --decode-threads 1: 4 jobs share 2
#            cores), each under /usr/bin/time: peak RSS per shard. target: <= 300 MB
#   merge    `fennec merge` of the 4 parts, REPS times: wall seconds.  target: <= 5 s
#   report   `fennec eval MODEL FASHION_TEST` with and without `--report DIR`,
#            alternated (which goes first flips each repetition), REPS times: median
#            wall seconds and the overhead of --report.                target: <= 10 %
# Peak RSS is not a timing: `make` and `shards` may run under /work/bin/cpu; run
# `merge` and `report` (timings) under /work/bin/quiet with NO_BUILD=1 and the
# same WORK, e.g.:
#   W=/tmp/fennec-scale; PARTS="make shards" WORK=$W /work/bin/cpu bench/scale_out.sh
#   PARTS="merge report" WORK=$W NO_BUILD=1 /work/bin/quiet bench/scale_out.sh
#
# Environment (all optional):
#   PEERS_HOME    data set up by ../shared/peers (Fashion-MNIST folders) [/work/peers]
#   FASHION_TEST  the 10,000 test images, <class>/<png>  [$PEERS_HOME/data/fashion/test]
#   MODEL         a model whose labels are those folders [models/fashion_model_3.onnx]
#   PARTS         what to do                             ["make shards merge report"]
#   N_IMAGES      images of the big folder               [1000000]
#   SHARDS        shards of the big folder               [4]
#   REPS          repetitions of merge and report        [3]
#   WORK          scratch folder (images, parts, logs)   [a new /tmp/fennec-bench-scale.*]
#   NO_BUILD=1    use target/release/fennec as it is
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS_HOME=${PEERS_HOME:-/work/peers}
FASHION_TEST=${FASHION_TEST:-$PEERS_HOME/data/fashion/test}
MODEL=${MODEL:-$ROOT/models/fashion_model_3.onnx}
PARTS=${PARTS:-"make shards merge report"}
N_IMAGES=${N_IMAGES:-1000000}
SHARDS=${SHARDS:-4}
REPS=${REPS:-3}
WORK=${WORK:-$(mktemp -d /tmp/fennec-bench-scale.XXXXXX)}
BIN=$ROOT/target/release/fennec
BIG=$WORK/million

die() { echo "bench/scale_out.sh: $*" >&2; exit 1; }
has() { [[ " $PARTS " == *" $1 "* ]]; }
[ -d "$FASHION_TEST" ] || die "$FASHION_TEST: no Fashion-MNIST test folder (see ../shared/peers/README.md)"
[ -x /usr/bin/time ] || die "/usr/bin/time (GNU time) is needed for peak RSS"
mkdir -p "$WORK"
if [ "${NO_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release -p fennec-runtime)
fi
[ -x "$BIN" ] || die "$BIN missing (build it, or unset NO_BUILD)"
echo "# bench/scale_out.sh, $(date -u +%FT%TZ), load: $(cut -d' ' -f1-3 /proc/loadavg), WORK=$WORK"

# median of the numbers on stdin
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

if has make; then
    # The test images, cycled: link k is a hard link to test image k mod 10,000,
    # in the class folder of its source, named by k so every path is new.
    python3 - "$FASHION_TEST" "$BIG" "$N_IMAGES" <<'EOF'
import os, sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
files = sorted((c, f) for c in os.listdir(src) for f in os.listdir(os.path.join(src, c)))
for c in {c for c, _ in files}:
    os.makedirs(os.path.join(dst, c), exist_ok=True)
have = sum(len(os.listdir(os.path.join(dst, c))) for c in os.listdir(dst))
if have != n:
    for k in range(n):
        c, f = files[k % len(files)]
        target = os.path.join(dst, c, f"{k:07d}.png")
        if not os.path.exists(target):
            os.link(os.path.join(src, c, f), target)
print(f"{n} images in {dst} (links to {len(files)} test images)")
EOF
fi

if has shards; then
    mkdir -p "$WORK/parts"
    pids=()
    for ((i = 0; i < SHARDS; i++)); do
        /usr/bin/time -f "%e %M" -o "$WORK/parts/time$i" \
            "$BIN" eval "$MODEL" "$BIG" --shard "$i/$SHARDS" --part "$WORK/parts/part$i.json" \
            --threads 1 --decode-threads 1 --quiet > "$WORK/parts/out$i.txt" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || die "a shard failed (see $WORK/parts/out*.txt)"; done
    echo
    echo "| shard | images scored | wall s | images/s | peak RSS MB |"
    echo "| --- | --- | --- | --- | --- |"
    for ((i = 0; i < SHARDS; i++)); do
        read -r secs kb < "$WORK/parts/time$i"
        scored=$(sed -n 's/.* \([0-9]*\) scored.*/\1/p' "$WORK/parts/out$i.txt" | head -1)
        echo "| $i/$SHARDS | $scored | $secs | $(awk -v n="$scored" -v s="$secs" 'BEGIN {printf "%.0f", n / s}') | $(awk -v k="$kb" 'BEGIN {printf "%.1f", k / 1024}') |"
    done
fi

if has merge; then
    parts=("$WORK"/parts/part*.json)
    [ -e "${parts[0]}" ] || die "no parts in $WORK/parts (run PARTS=shards first)"
    for ((r = 0; r < REPS; r++)); do
        /usr/bin/time -f "%e %M" -o "$WORK/merge_time" "$BIN" merge "${parts[@]}" --json "$WORK/merged.json" > /dev/null
        cat "$WORK/merge_time"
    done > "$WORK/merge_times"
    echo
    echo "merge of ${#parts[@]} parts ($(du -ch "${parts[@]}" | tail -1 | cut -f1)): wall s $(cut -d' ' -f1 "$WORK/merge_times" | median) (median of $REPS: $(cut -d' ' -f1 "$WORK/merge_times" | tr '\n' ' ')), peak RSS MB $(cut -d' ' -f2 "$WORK/merge_times" | median | awk '{printf "%.1f", $1 / 1024}'), load now $(cut -d' ' -f1 /proc/loadavg)"
    python3 -c "import json; r = json.load(open('$WORK/merged.json')); print(f\"merged: {r['files']} files, {r['scored']} scored, accuracy {r['accuracy']:.4f}\")"
fi

if has report; then
    : > "$WORK/plain_times"
    : > "$WORK/report_times"
    run_plain() { /usr/bin/time -f "%e" -a -o "$WORK/plain_times" "$BIN" eval "$MODEL" "$FASHION_TEST" --quiet > /dev/null; }
    run_report() {
        rm -rf "$WORK/report"
        /usr/bin/time -f "%e" -a -o "$WORK/report_times" "$BIN" eval "$MODEL" "$FASHION_TEST" --quiet --report "$WORK/report" > /dev/null
    }
    for ((r = 0; r < REPS; r++)); do
        if ((r % 2 == 0)); then run_plain; run_report; else run_report; run_plain; fi
    done
    plain=$(median < "$WORK/plain_times")
    report=$(median < "$WORK/report_times")
    echo
    echo "| fennec eval on $(find "$FASHION_TEST" -name '*.png' | wc -l) Fashion-MNIST test images | wall s (median of $REPS) | runs |"
    echo "| --- | --- | --- |"
    echo "| without --report | $plain | $(tr '\n' ' ' < "$WORK/plain_times") |"
    echo "| with --report DIR | $report | $(tr '\n' ' ' < "$WORK/report_times") |"
    awk -v a="$plain" -v b="$report" 'BEGIN {printf "report overhead: %+.1f %% (target <= 10 %%)\n", (b / a - 1) * 100}'
    echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
fi
