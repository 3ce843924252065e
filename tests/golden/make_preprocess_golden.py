#!/usr/bin/env python3
"""Make the preprocessing golden files: small images and the tensors Pillow/numpy
say they become. Run once; the outputs are committed. fennec's own code is not used
here, so the golden values are an independent reference.

    python3 tests/golden/make_preprocess_golden.py   # needs pillow and numpy

Writes tests/golden/preprocess/{images/*, expected/*.f32, cases.json}. Each case:
image, the fennec Preprocess spec (JSON, same keys as fennec), the expected tensor
as little-endian float32 in the spec's layout, and the tolerance fennec must meet
(max abs difference, in tensor units) with the reason for it.
"""
import io
import json
import os

import numpy as np
from PIL import Image, ImageOps

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "preprocess")
IMAGES = os.path.join(OUT, "images")
EXPECTED = os.path.join(OUT, "expected")

FILTERS = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "catmull_rom": Image.BICUBIC,
    "lanczos3": Image.LANCZOS,
}
# Exact integer pipelines (nearest, lossless formats) must match exactly; Pillow's
# convolution resamplers and fennec's (fast_image_resize) both use 8-bit fixed point
# but may round differently: one level. JPEG decoders (libjpeg-turbo vs zune-jpeg)
# differ by a few levels on some pixels.
EXACT = 1e-6
RESAMPLE_TOL = 1.01 / 255
JPEG_TOL = 4.01 / 255
# Upscaling with negative-lobe kernels (bicubic, Lanczos) rings at the borders, where
# the two implementations clip and round their 8-bit intermediate differently.
RINGING_UPSCALE_TOL = 3.01 / 255


def rng_image(w, h, seed):
    """Smooth but non-trivial RGB content (a gradient plus a few blobs)."""
    r = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack(
        [
            (x * 255 / max(w - 1, 1)),
            (y * 255 / max(h - 1, 1)),
            128 + 100 * np.sin(x / 3.0 + y / 5.0),
        ],
        axis=-1,
    )
    img += r.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def save(img, name, **kw):
    path = os.path.join(IMAGES, name)
    img.save(path, **kw)
    return name


def spec(h, w, color="rgb", resize="stretch", flt="nearest", layout="nchw", scale=1 / 255, mean=None, std=None):
    s = {"height": h, "width": w, "color": color, "resize": resize, "filter": flt, "scale": scale, "layout": layout}
    if mean is not None:
        s["mean"] = mean
    if std is not None:
        s["std"] = std
    return s


def fit(img, s):
    """Pillow geometry for the spec: stretch, center_crop (float box) or letterbox."""
    h, w = s["height"], s["width"]
    f = FILTERS[s["filter"]]
    if s["resize"] == "stretch":
        return img.resize((w, h), f) if img.size != (w, h) else img
    sw, sh = img.size
    if s["resize"] == "center_crop":
        target = w / h
        cw, ch = (sh * target, sh) if sw / sh > target else (sw, sw / target)
        l, t = (sw - cw) / 2, (sh - ch) / 2
        return img.resize((w, h), f, box=(l, t, l + cw, t + ch))
    # letterbox
    k = min(w / sw, h / sh)
    nw = min(max(int(round(sw * k)), 1), w)
    nh = min(max(int(round(sh * k)), 1), h)
    inner = img.resize((nw, nh), f)
    canvas = Image.new(img.mode, (w, h), 0)
    canvas.paste(inner, ((w - nw) // 2, (h - nh) // 2))
    return canvas


def tensor(pixels, s):
    """uint8 HxWxC (or HxW) → float32 in the spec's layout, with scale/mean/std."""
    a = pixels.astype(np.float32)
    if a.ndim == 2:
        a = a[:, :, None]
    a = a * np.float32(s["scale"])
    c = a.shape[2]
    mean = np.array(s.get("mean") or [0.0], np.float32)
    std = np.array(s.get("std") or [1.0], np.float32)
    a = (a - np.broadcast_to(mean, (c,))) / np.broadcast_to(std, (c,))
    if s["layout"] == "nchw":
        a = a.transpose(2, 0, 1)
    return np.ascontiguousarray(a, dtype="<f4")


def pil_pixels(path, s):
    img = Image.open(os.path.join(IMAGES, path))
    img.seek(0)
    img = ImageOps.exif_transpose(img)
    img = img.convert("RGB" if s["color"] == "rgb" else "L")
    return np.asarray(fit(img, s))


cases = []


def case(name, image, s, tol, why, pixels=None):
    px = pil_pixels(image, s) if pixels is None else pixels
    t = tensor(px, s)
    fname = name + ".f32"
    t.tofile(os.path.join(EXPECTED, fname))
    cases.append({"name": name, "image": image, "spec": s, "expected": fname,
                  "shape": list(t.shape), "tolerance": tol, "why": why})


def main():
    os.makedirs(IMAGES, exist_ok=True)
    os.makedirs(EXPECTED, exist_ok=True)
    rgb = Image.fromarray(rng_image(23, 17, 1), "RGB")

    png = save(rgb, "rgb_23x17.png")
    for flt in FILTERS:
        tol = EXACT if flt == "nearest" else RESAMPLE_TOL
        case(f"png_stretch_{flt}", png, spec(8, 12, flt=flt), tol, f"PNG, Pillow resize {flt}")
        up_tol = RINGING_UPSCALE_TOL if flt in ("catmull_rom", "lanczos3") else tol
        case(f"png_upscale_{flt}", png, spec(40, 31, flt=flt), up_tol, f"PNG upscale, Pillow resize {flt}")
    case("png_nhwc_mean_std", png, spec(8, 8, layout="nhwc", mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
         1e-5, "ImageNet normalisation, NHWC; float rounding only")
    case("png_grayscale", png, spec(9, 7, color="grayscale"), EXACT, "RGB → L with ITU-R 601-2 luma")
    case("png_center_crop", png, spec(10, 10, resize="center_crop", flt="bilinear"), RESAMPLE_TOL,
         "centre crop of a float box, bilinear")
    case("png_center_crop_nearest", png, spec(6, 6, resize="center_crop"), EXACT, "centre crop, nearest")
    case("png_letterbox", png, spec(12, 12, resize="letterbox", flt="bilinear"), RESAMPLE_TOL,
         "letterbox with black padding, bilinear")

    gray = Image.fromarray(rng_image(15, 11, 2)[:, :, 0], "L")
    g = save(gray, "gray_15x11.png")
    case("gray_to_rgb", g, spec(11, 15), EXACT, "L replicated to RGB")
    case("gray_to_gray", g, spec(5, 5, color="grayscale"), EXACT, "L, nearest downscale")

    # RGBA: alpha dropped, not composited (Pillow convert('RGB')).
    rgba = np.dstack([rng_image(10, 10, 3), np.linspace(0, 255, 100).reshape(10, 10).astype(np.uint8)])
    a = save(Image.fromarray(rgba, "RGBA"), "rgba_10x10.png")
    case("rgba_to_rgb", a, spec(10, 10), EXACT, "RGBA, alpha dropped")

    # Palette with transparency.
    pal = rgb.convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    p = save(pal, "palette_23x17.png", transparency=0)
    case("palette_to_rgb", p, spec(17, 23), EXACT, "palette PNG with a transparent index")

    # 16-bit grey: Pillow's convert('L') clips I;16 instead of scaling, so the
    # expected values come from numpy: round(v / 257).
    v16 = (np.arange(12 * 9, dtype=np.uint32).reshape(9, 12) * 601 + 77) % 65536
    v16 = v16.astype(np.uint16)
    Image.fromarray(v16).save(os.path.join(IMAGES, "gray16_12x9.png"))
    px16 = np.floor(v16.astype(np.float64) / 257 + 0.5).astype(np.uint8)
    case("gray16_to_gray", "gray16_12x9.png", spec(9, 12, color="grayscale"), 1.01 / 255,
         "16-bit PNG scaled to 8 bits (numpy reference, one level of rounding)", pixels=px16)

    # 1x1 image, upscaled.
    one = save(Image.new("RGB", (1, 1), (200, 10, 99)), "one_pixel.png")
    case("one_pixel", one, spec(4, 4), EXACT, "1x1 image stretched to 4x4")

    # Other lossless formats.
    case("bmp", save(rgb, "rgb_23x17.bmp"), spec(8, 8), EXACT, "BMP")
    case("webp_lossless", save(rgb, "rgb_23x17.webp", lossless=True), spec(8, 8), EXACT, "lossless WebP")
    case("tiff", save(rgb, "rgb_23x17.tiff"), spec(8, 8), EXACT, "uncompressed TIFF")

    # Animated GIF: first frame only.
    frames = [rgb.convert("P", palette=Image.ADAPTIVE, colors=32),
              Image.fromarray(255 - np.asarray(rgb), "RGB").convert("P", palette=Image.ADAPTIVE, colors=32)]
    frames[0].save(os.path.join(IMAGES, "animated.gif"), save_all=True, append_images=frames[1:], duration=100, loop=0)
    case("gif_first_frame", "animated.gif", spec(17, 23), EXACT, "animated GIF, first frame")

    # JPEG: decoders differ by a few levels.
    big = Image.fromarray(rng_image(64, 48, 4), "RGB")
    j = save(big, "rgb_64x48.jpg", quality=95)
    case("jpeg_nearest", j, spec(16, 16), JPEG_TOL, "baseline JPEG; decoder rounding")
    case("jpeg_progressive", save(big, "rgb_64x48_progressive.jpg", quality=95, progressive=True), spec(16, 16),
         JPEG_TOL, "progressive JPEG; decoder rounding")
    case("jpeg_grayscale", save(big.convert("L"), "gray_64x48.jpg", quality=95), spec(16, 16, color="grayscale"),
         JPEG_TOL, "greyscale JPEG")

    # EXIF orientation 6 (rotate 90° clockwise to display): output is portrait.
    exif = Image.Exif()
    exif[0x0112] = 6
    case("jpeg_exif_rotate", save(big, "exif_orient6.jpg", quality=95, exif=exif.tobytes()), spec(16, 12),
         JPEG_TOL, "EXIF orientation 6 applied (Pillow exif_transpose)")

    # CMYK JPEG: Pillow writes Adobe-style CMYK; reference is the multiplicative
    # conversion R = (255-C)(255-K)/255 computed by Pillow's own convert.
    cmyk = big.convert("CMYK")
    case("jpeg_cmyk", save(cmyk, "cmyk_64x48.jpg", quality=95), spec(16, 16), JPEG_TOL + 2 / 255,
         "CMYK JPEG converted to RGB; decoder and colour-conversion rounding")

    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({"generator": "tests/golden/make_preprocess_golden.py",
                   "pillow": Image.__version__, "numpy": np.__version__, "cases": cases}, f, indent=1)
    print(f"{len(cases)} cases written to {OUT}")


if __name__ == "__main__":
    main()
