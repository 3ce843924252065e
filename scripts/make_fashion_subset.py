#!/usr/bin/env python3
"""Write data/fashion-mini: a small, stratified Fashion-MNIST subset as PNG class folders.

fennec's demo data. Source: Debian's `dataset-fashion-mnist` package (the original
Zalando IDX files). Output, deterministic for a given package and --seed:

    OUT/train/<class>/<index>.png        --train images per class, from the official training set
    OUT/validation/<class>/<index>.png   --val images per class, also from the training set (disjoint)
    OUT/test/<class>/<index>.png         --test images per class, from the official test set
    OUT/LICENSE                          the package's copyright file (Fashion-MNIST's MIT licence)
    OUT/README.md                        what this is and how it was made

<index> is the image's position in its official IDX file. Class folders carry Zalando's
names (T-shirt_top ... Ankle_boot, "/" replaced), as the peer scripts of ../shared/peers
name them and as the shipped models/fashion_model_3.onnx labels its classes (sorted folder
order: Ankle_boot, Bag, ..., T-shirt_top, Trouser), so that model scores this data as is.
With --names label they are `<label>_<name>` (0_tshirt_top ... 9_ankle_boot) instead, so
that sorted order is label order.
Images are 28x28 8-bit grayscale PNGs, written with the standard library only (zlib).

Usage:
    python3 scripts/make_fashion_subset.py [--deb dataset-fashion-mnist_*.deb] [--out data/fashion-mini]
    # the whole dataset (60,000 train, 10,000 test), as models/fashion_model_3.md uses it:
    python3 scripts/make_fashion_subset.py --out data/fashion --train 6000 --val 0 --test 1000
Without --deb the package is fetched with `apt-get download dataset-fashion-mnist`.
"""

import argparse
import gzip
import hashlib
import io
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib

CLASSES = [
    "0_tshirt_top",
    "1_trouser",
    "2_pullover",
    "3_dress",
    "4_coat",
    "5_sandal",
    "6_shirt",
    "7_sneaker",
    "8_bag",
    "9_ankle_boot",
]
# Zalando's class names ("/" replaced), the default: the layout the peer scripts of
# ../shared/peers write and the shipped model's labels; folders sort in another order
# than the labels.
PLAIN = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]
PREFIX = "usr/share/datasets/fashion-mnist/"
COPYRIGHT = "usr/share/doc/dataset-fashion-mnist/copyright"


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def ar_members(data):
    """Members of a Debian `ar` archive: {name: bytes}."""
    if not data.startswith(b"!<arch>\n"):
        fail("not a .deb (ar) archive")
    pos, out = 8, {}
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        out[name] = data[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
    return out


def read_package(deb_path):
    """The IDX files and the copyright text from the package."""
    with open(deb_path, "rb") as f:
        members = ar_members(f.read())
    data_name = next((n for n in members if n.startswith("data.tar")), None)
    if data_name is None:
        fail(f"{deb_path}: no data.tar.* member")
    if data_name.endswith(".zst"):
        fail(f"{deb_path}: {data_name} is zstd-compressed, which Python's standard library cannot read")
    files = {}
    with tarfile.open(fileobj=io.BytesIO(members[data_name]), mode="r:*") as tar:
        for m in tar.getmembers():
            name = m.name.lstrip("./")
            if m.isfile() and (name.startswith(PREFIX) or name == COPYRIGHT):
                files[name] = tar.extractfile(m).read()
    need = [PREFIX + f for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")] + [COPYRIGHT]
    for n in need:
        if n not in files:
            fail(f"{deb_path}: {n} missing")
    return files


def idx_images(gz):
    data = gzip.decompress(gz)
    magic, n, rows, cols = struct.unpack(">IIII", data[:16])
    if magic != 2051 or (rows, cols) != (28, 28) or len(data) != 16 + n * rows * cols:
        fail("unexpected image IDX header")
    return [data[16 + i * 784 : 16 + (i + 1) * 784] for i in range(n)]


def idx_labels(gz):
    data = gzip.decompress(gz)
    magic, n = struct.unpack(">II", data[:8])
    if magic != 2049 or len(data) != 8 + n:
        fail("unexpected label IDX header")
    return list(data[8:])


def paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def png_gray(pixels, width, height):
    """An 8-bit grayscale PNG; each row gets the filter with the smallest sum of
    absolute (signed) residuals, the usual heuristic, which keeps files small."""
    raw = bytearray()
    prev = bytes(width)
    for y in range(height):
        row = pixels[y * width : (y + 1) * width]
        candidates = []
        for ftype in range(5):
            out = bytearray(width)
            for x in range(width):
                a = row[x - 1] if x else 0
                b = prev[x]
                c = prev[x - 1] if x else 0
                pred = (0, a, b, (a + b) // 2, paeth(a, b, c))[ftype]
                out[x] = (row[x] - pred) & 0xFF
            cost = sum(v if v < 128 else 256 - v for v in out)
            candidates.append((cost, ftype, out))
        _, ftype, out = min(candidates, key=lambda t: (t[0], t[1]))
        raw.append(ftype)
        raw += out
        prev = row

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + chunk(b"IEND", b"")


def pick(labels, split, seed):
    """Per class, the indices in a seeded order that does not depend on Python's RNG."""
    by_class = [[] for _ in CLASSES]
    for i, label in enumerate(labels):
        by_class[label].append(i)
    key = lambda i: hashlib.sha256(f"{seed}:{split}:{i}".encode()).digest()
    return [sorted(ix, key=key) for ix in by_class]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deb", help="dataset-fashion-mnist .deb (default: apt-get download it)")
    ap.add_argument("--out", default="data/fashion-mini", help="output folder (replaced)")
    ap.add_argument("--train", type=int, default=300, help="training images per class")
    ap.add_argument("--val", type=int, default=50, help="validation images per class")
    ap.add_argument("--test", type=int, default=100, help="test images per class")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--names", choices=["plain", "label"], default="plain",
                    help="class folder names: 'plain' (T-shirt_top ...: Zalando's names, as the "
                    "shipped model's labels) or 'label' (0_tshirt_top ...: sorted = label order)")
    args = ap.parse_args()
    names = CLASSES if args.names == "label" else PLAIN

    with tempfile.TemporaryDirectory() as tmp:
        deb = args.deb
        if deb is None:
            print("fetching dataset-fashion-mnist with apt-get download ...", file=sys.stderr)
            r = subprocess.run(["apt-get", "download", "dataset-fashion-mnist"], cwd=tmp)
            debs = [f for f in os.listdir(tmp) if f.endswith(".deb")]
            if r.returncode != 0 or not debs:
                fail("apt-get download dataset-fashion-mnist failed; pass --deb PATH")
            deb = os.path.join(tmp, debs[0])
        if not os.path.isfile(deb):
            fail(f"{deb}: no such file")
        with open(deb, "rb") as f:
            deb_sha = hashlib.sha256(f.read()).hexdigest()
        files = read_package(deb)

    train_x = idx_images(files[PREFIX + "train-images-idx3-ubyte.gz"])
    train_y = idx_labels(files[PREFIX + "train-labels-idx1-ubyte.gz"])
    test_x = idx_images(files[PREFIX + "t10k-images-idx3-ubyte.gz"])
    test_y = idx_labels(files[PREFIX + "t10k-labels-idx1-ubyte.gz"])

    plan = []  # (split, class, index, pixels)
    for c, ix in enumerate(pick(train_y, "train", args.seed)):
        if len(ix) < args.train + args.val:
            fail(f"class {CLASSES[c]} has only {len(ix)} training images")
        plan += [("train", c, i, train_x[i]) for i in ix[: args.train]]
        plan += [("validation", c, i, train_x[i]) for i in ix[args.train : args.train + args.val]]
    for c, ix in enumerate(pick(test_y, "test", args.seed)):
        if len(ix) < args.test:
            fail(f"class {CLASSES[c]} has only {len(ix)} test images")
        plan += [("test", c, i, test_x[i]) for i in ix[: args.test]]

    out = os.path.abspath(args.out)
    tmp_out = out + ".tmp"
    shutil.rmtree(tmp_out, ignore_errors=True)
    total = 0
    for split, c, i, pixels in plan:
        d = os.path.join(tmp_out, split, names[c])
        os.makedirs(d, exist_ok=True)
        png = png_gray(pixels, 28, 28)
        total += len(png)
        with open(os.path.join(d, f"{i:05d}.png"), "wb") as f:
            f.write(png)
    with open(os.path.join(tmp_out, "LICENSE"), "wb") as f:
        f.write(files[COPYRIGHT])
    with open(os.path.join(tmp_out, "README.md"), "w") as f:
        f.write(README.format(
            train=args.train, val=args.val, test=args.test,
            options=f"--seed {args.seed}" + (" --names label" if args.names == "label" else ""),
            n_train=args.train * 10, n_val=args.val * 10, n_test=args.test * 10,
            deb=os.path.basename(deb), deb_sha=deb_sha, png_bytes=total,
            classes="\n".join(f"| {label} | `{name}` |" for label, name in enumerate(names)),
        ))
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp_out, out)
    print(f"wrote {len(plan)} images ({total} bytes of PNG) to {out}")


README = """# fashion-mini: a small Fashion-MNIST subset for fennec's demo

A stratified sample of [Fashion-MNIST](https://github.com/zalandoresearch/fashion-mnist)
(Zalando Research, 28x28 grayscale pictures of clothing, 10 classes), as PNG class folders
in the layout `fennec-train` reads:

| split | images per class | total | drawn from |
|---|---|---|---|
| `train/` | {train} | {n_train} | official training set |
| `validation/` | {val} | {n_val} | official training set (disjoint from `train/`) |
| `test/` | {test} | {n_test} | official test set |

File names are the image's index in its official IDX file. Class folders, by official label
(`fennec-train` numbers classes in sorted folder order; with the default names that order is
the labels of the shipped `models/fashion_model_3.onnx`, so
`fennec eval models/fashion_model_3.onnx data/fashion-mini/test` scores this folder):

| label | folder |
|---|---|
{classes}

Made by `scripts/make_fashion_subset.py {options}` from Debian's `{deb}`
(sha256 `{deb_sha}`); {png_bytes} bytes of PNG in all. The selection is deterministic
(per class, indices ordered by sha256 of `seed:split:index`), so re-running the script
on the same package gives the same files.

Licence: Fashion-MNIST is released under the MIT licence, Copyright (c) 2017 Zalando SE;
`LICENSE` is the Debian package's copyright file, which carries that notice.
"""

if __name__ == "__main__":
    main()
