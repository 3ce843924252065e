#!/usr/bin/env bash
# Training throughput, side by side: `fennec-train fit` against the Keras and PyTorch
# peers (../shared/peers, run in place, never copied) on the same folders, in one run,
# alternating the frameworks within each round so that they see the same machine load.
#
# Prints, per case and framework: training images/s (median of the epochs after the
# first, the peers' convention; range in brackets), the ratio to Keras, the validation
# accuracy after the last epoch (per round), peak RSS, CPU
# seconds of the whole process, and the 1-minute load average before each run.
# Images/s counts the training phase only (first batch to last batch of an epoch),
# image decoding included, validation excluded — as the peers measure it.
#
# Cases:
#   synth224  model_3 (configs/model_3.yaml), 224x224 RGB synthetic JPEGs, batch 64
#             ($PEERS_HOME/data/synth224: 512 train / 128 validation images)
#   fashion   model_3 on Fashion-MNIST 28x28 grayscale (configs/fashion_model_3.yaml),
#             60k train; test/ serves as validation (linked as validation/ in $WORK)
# Frameworks:
#   fennec          fennec-train fit (decoded images cached in memory when they fit: the default)
#   fennec-nocache  the same with `training.cache: false`: every epoch decodes its JPEG/PNGs
#   keras           keras_train.py (tf_keras, TF default threads)
#   torch           torch_train.py --channels-last --malloc-tune (its fastest CPU settings)
#
# Environment (all optional):
#   PEERS_HOME   peer venv + data                  [/work/peers]
#   PEERS_SRC    peer scripts                      [<repo>/../shared/peers]
#   CASES        cases to run                      ["synth224 fashion"]
#   FRAMEWORKS   frameworks, in run order          ["fennec keras torch"]
#   EPOCHS       epochs per run (>= 2)             [3]
#   ROUNDS       rounds of all frameworks per case [1]
#   THREADS      --threads for fennec-train        [all cores]
#   WORK         scratch folder for runs and logs  [a new /tmp/fennec-bench-train.*]
#   NO_BUILD=1   use target/release/fennec-train as it is
#
# Usage: bench/train.sh            (from anywhere; about 10 min for the defaults on 2 cores)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS_HOME=${PEERS_HOME:-/work/peers}
PEERS_SRC=${PEERS_SRC:-$(cd "$ROOT/.." && pwd)/shared/peers}
PY=$PEERS_HOME/venv/bin/python
CASES=${CASES:-"synth224 fashion"}
FRAMEWORKS=${FRAMEWORKS:-"fennec keras torch"}
EPOCHS=${EPOCHS:-3}
ROUNDS=${ROUNDS:-1}
WORK=${WORK:-$(mktemp -d /tmp/fennec-bench-train.XXXXXX)}
BIN=$ROOT/target/release/fennec-train

die() { echo "bench/train.sh: $*" >&2; exit 1; }
[[ $EPOCHS -ge 2 ]] || die "EPOCHS must be at least 2 (the first epoch is not counted)"
[[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) is needed for peak RSS"
for fw in $FRAMEWORKS; do
    case $fw in
        fennec | fennec-nocache) ;;
        keras | torch)
            [[ -x $PY ]] || die "$PY not found: set PEERS_HOME (see $PEERS_SRC/README.md)"
            [[ -f $PEERS_SRC/${fw}_train.py ]] || die "$PEERS_SRC/${fw}_train.py not found: set PEERS_SRC" ;;
        *) die "unknown framework '$fw' (fennec, fennec-nocache, keras, torch)" ;;
    esac
done
mkdir -p "$WORK"

if [[ ${NO_BUILD:-} != 1 ]]; then
    echo "building fennec-train (release) ..." >&2
    (cd "$ROOT" && cargo build --release -p fennec-train --bin fennec-train) >&2
fi
[[ -x $BIN ]] || die "$BIN missing (build it or unset NO_BUILD)"

# Per case: data folder, fennec config, peer arguments.
case_setup() {
    case $1 in
        synth224)
            DATA=$PEERS_HOME/data/synth224
            CONFIG=$ROOT/configs/model_3.yaml
            PEER_ARGS="--model 3 --size 224 --color rgb --batch 64" ;;
        fashion)
            # The trainer wants train/ and validation/; Fashion-MNIST has train/ and test/.
            DATA=$WORK/fashion
            mkdir -p "$DATA"
            ln -sfn "$PEERS_HOME/data/fashion/train" "$DATA/train"
            ln -sfn "$PEERS_HOME/data/fashion/test" "$DATA/validation"
            CONFIG=$ROOT/configs/fashion_model_3.yaml
            PEER_ARGS="--model 3 --size 28 --color grayscale --batch 64" ;;
        *) die "unknown case '$1' (synth224, fashion)" ;;
    esac
    [[ -d $DATA/train ]] || die "$DATA/train not found (see $PEERS_SRC/README.md, Data)"
}

# run CASE FRAMEWORK ROUND: one timed run; leaves $WORK/CASE.FRAMEWORK.ROUND.{log,time,load,json}.
run() {
    local case=$1 fw=$2 round=$3 tag=$1.$2.$3
    local out=$WORK/$tag
    cut -d' ' -f1 /proc/loadavg > "$out.load"
    echo "[$(date +%H:%M:%S)] $case / $fw (round $round, load $(cat "$out.load")) ..." >&2
    local cmd
    case $fw in
        fennec | fennec-nocache)
            local config=$CONFIG
            if [[ $fw == fennec-nocache ]]; then
                # `training:` is the last mapping of the shipped configs.
                config=$WORK/$case.nocache.yaml
                { cat "$CONFIG"; echo "  cache: false"; } > "$config"
            fi
            rm -rf "$out.run"
            cmd=("$BIN" fit "$config" --data "$DATA" --out "$out.run" --epochs "$EPOCHS" --quiet ${THREADS:+--threads "$THREADS"}) ;;
        keras)
            cmd=("$PY" "$PEERS_SRC/keras_train.py" --data "$DATA" $PEER_ARGS --epochs "$EPOCHS"
                 --test-mode none --json "$out.json") ;;
        torch)
            cmd=("$PY" "$PEERS_SRC/torch_train.py" --data "$DATA" $PEER_ARGS --epochs "$EPOCHS"
                 --channels-last --malloc-tune --test-mode none --json "$out.json") ;;
    esac
    if ! /usr/bin/time -f '%M %e %U %S' -o "$out.time" "${cmd[@]}" > "$out.log" 2>&1; then
        tail -5 "$out.log" >&2
        die "$case / $fw failed (log: $out.log)"
    fi
    if [[ $fw == fennec* ]]; then
        cp "$out.run/history.json" "$out.json"
    fi
}

for case in $CASES; do
    case_setup "$case"
    for round in $(seq 1 "$ROUNDS"); do
        for fw in $FRAMEWORKS; do
            run "$case" "$fw" "$round"
        done
    done
done

echo
echo "## Training throughput ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), epochs $EPOCHS, rounds $ROUNDS)"
echo "## logs: $WORK"
python3 - "$WORK" "$EPOCHS" "$CASES" "$FRAMEWORKS" "$ROUNDS" <<'EOF'
import json, statistics, sys
work, epochs, cases, fws, rounds = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split(), int(sys.argv[5])

def epochs_of(path):
    """(images/s, validation accuracy) per epoch, from fennec's history.json or a peer's JSON."""
    d = json.load(open(path))
    if isinstance(d, list):                      # fennec history.json
        return [(r["images_per_second"], r["val_accuracy"]) for r in d]
    return [(r["train_images_per_s"], r["val_categorical_accuracy"]) for r in d["epochs_log"]]

print()
print("| case | framework | images/s (median epochs 2..%d) [range] | vs Keras | final val accuracy | peak RSS | CPU s (user+sys) | load before |" % epochs)
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for case in cases:
    rows, keras = [], None
    for fw in fws:
        steady, accs, rss, cpu, loads = [], [], [], [], []
        for r in range(1, rounds + 1):
            base = f"{work}/{case}.{fw}.{r}"
            per_epoch = epochs_of(base + ".json")
            steady += [rate for rate, _ in per_epoch[1:]]
            accs.append(f"{per_epoch[-1][1]:.4f}")
            kb, _wall, user, sys_ = open(base + ".time").read().split()[-4:]
            rss.append(int(kb) / 1024)
            cpu.append(float(user) + float(sys_))
            loads.append(open(base + ".load").read().strip())
        med = statistics.median(steady)
        if fw == "keras":
            keras = med
        rows.append((fw, med, min(steady), max(steady), ", ".join(accs), max(rss), statistics.median(cpu), ", ".join(loads)))
    for fw, med, lo, hi, acc, rss, cpu, loads in rows:
        ratio = f"{med / keras:.2f}x" if keras else "-"
        print(f"| {case} | {fw} | {med:.1f} [{lo:.1f}-{hi:.1f}] | {ratio} | {acc} | {rss:.0f} MB | {cpu:.0f} | {loads} |")
EOF
