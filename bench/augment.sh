#!/usr/bin/env bash
# Augmentation throughput, side by side: fennec's augmenter (trainer/benches/augment.rs)
# against Keras' ImageDataGenerator.random_transform with the same options (flip,
# rotation 20, zoom 0.2, shifts 0.2, brightness [0.8, 1.2]), one core each, on the same
# synthetic RGB images at 28, 150 and 224 pixels, in one run. Prints one JSON line per
# implementation and size (median of 5 rounds) and the ratio at each size.
#
# Environment (optional):
#   PEERS_HOME  a venv with tf_keras (and Pillow, scipy) under $PEERS_HOME/venv  [/work/peers]
#               without it, only fennec's numbers are printed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS_HOME=${PEERS_HOME:-/work/peers}
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT

(cd "$ROOT" && cargo bench -q -p fennec-train --bench augment) | tee "$OUT"

PY="$PEERS_HOME/venv/bin/python"
if [[ ! -x "$PY" ]]; then
    echo "no $PY: Keras comparison skipped" >&2
    exit 0
fi
OMP_NUM_THREADS=1 TF_NUM_INTRAOP_THREADS=1 TF_CPP_MIN_LOG_LEVEL=3 "$PY" - <<'PYEOF' | tee -a "$OUT"
import json, time
import numpy as np
from tf_keras.preprocessing.image import ImageDataGenerator
gen = ImageDataGenerator(rotation_range=20, zoom_range=0.2, width_shift_range=0.2,
                         height_shift_range=0.2, horizontal_flip=True,
                         brightness_range=[0.8, 1.2])
for size, n in [(28, 2000), (150, 200), (224, 100)]:
    i = np.arange(size * size * 3)
    img = ((i * 37 + i // 3 * 11) % 251).astype(np.float32).reshape(size, size, 3)
    gen.random_transform(img, seed=0)
    rounds = []
    for r in range(5):
        t = time.perf_counter()
        for s in range(n):
            gen.random_transform(img, seed=r * n + s)
        rounds.append((time.perf_counter() - t) / n)
    m = sorted(rounds)[2]
    print(json.dumps({"impl": "keras", "size": size, "ms_per_image": round(m * 1e3, 4),
                      "images_per_s": round(1 / m)}))
PYEOF

python3 - "$OUT" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {(r["impl"], r["size"]): r["images_per_s"] for r in rows}
for size in sorted({r["size"] for r in rows}):
    if ("keras", size) in by:
        print(f"{size}x{size}: fennec {by[('fennec', size)]} img/s, keras {by[('keras', size)]} img/s, "
              f"ratio {by[('fennec', size)] / by[('keras', size)]:.1f}x")
PYEOF
