//! Fixtures and the output comparison for the cross-built Raspberry Pi binaries
//! (scripts/test-pi.sh): the same models and images are scored by the x86 `fennec`
//! and by the ARM builds under qemu, and the JSON outputs must agree.
//!
//! `pi_fixtures write DIR` writes:
//! - `cnn.onnx`: a small convolutional net (Conv-Relu-MaxPool-Conv-Relu-GAP-Gemm-
//!   Softmax, NCHW, 32x32 RGB, mean/std normalisation) with fixed pseudo-random
//!   weights, so tract's convolution and matrix-product kernels (NEON on ARM) run
//!   and the probabilities are spread out rather than saturated;
//! - `color_nhwc.onnx`: the e2e tests' colour classifier, NHWC, raw logits;
//! - `images/`: the committed preprocessing golden images (every codec, EXIF,
//!   CMYK, 16-bit, palette, animated GIF) plus generated photos-like images in
//!   PNG, JPEG, BMP, GIF, WebP and TIFF;
//! - `stride0.onnx`: a convolution with stride 0, which makes tract panic (it
//!   divides by the stride) while loading: every build, also the Pi builds that
//!   cannot unwind (`pi-tiny`), must end with the one `error:` line and exit 1;
//! - `folder/<blue|green|red>/`: a labelled folder for `fennec eval`;
//! - `bad/<blue|green|red>/`: a small labelled folder with bad files in it (empty,
//!   text named .jpg, a truncated JPEG, a 100-megapixel PNG over the decode cap),
//!   which must be reported and skipped on ARM exactly as on x86.
//!
//! `pi_fixtures compare EXPECTED ACTUAL TOL` compares two outputs of `fennec
//! predict --json` (JSON lines) or `fennec eval --json -` (one document): same
//! structure, same strings (labels, files, in rank order), numbers within TOL;
//! timing fields are ignored. Exit 1 with the first differences listed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use fennec_e2e::{
    COLORS, TinyModel, color_folders, color_image, color_model, pool_and_flatten, save,
    stride0_model,
};
use fennec_runtime::metadata::ModelMetadata;
use fennec_runtime::onnx_writer::{Attr, GraphBuilder};
use fennec_runtime::{ColorMode, Preprocess, ResizeFilter};
use image::{Rgb, RgbImage};
use serde_json::Value;

const CNN_SIZE: i64 = 32;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["write", dir] => write(Path::new(dir)),
        ["compare", expected, actual, tol] => match tol.parse::<f64>() {
            Ok(tol) => compare(Path::new(expected), Path::new(actual), tol),
            Err(_) => Err(anyhow!("tolerance '{tol}' is not a number")),
        },
        _ => Err(anyhow!(
            "usage: pi_fixtures write DIR | pi_fixtures compare EXPECTED ACTUAL TOL"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn write(dir: &Path) -> Result<()> {
    let io = |p: &Path| p.display().to_string();
    let images = dir.join("images");
    std::fs::create_dir_all(&images).with_context(|| io(&images))?;

    let cnn = dir.join("cnn.onnx");
    std::fs::write(&cnn, cnn_model()).with_context(|| io(&cnn))?;
    let color = dir.join("color_nhwc.onnx");
    let tiny = TinyModel::default().nhwc().logits();
    std::fs::write(&color, color_model(&tiny)).with_context(|| io(&color))?;
    let stride0 = dir.join("stride0.onnx");
    std::fs::write(&stride0, stride0_model()).with_context(|| io(&stride0))?;

    // The committed golden images: real encoder output from Pillow, odd formats included.
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden/preprocess/images");
    let entries = std::fs::read_dir(&golden).with_context(|| io(&golden))?;
    for entry in entries {
        let src = entry.with_context(|| io(&golden))?.path();
        let dst = images.join(format!(
            "golden_{}",
            src.file_name().unwrap().to_string_lossy()
        ));
        std::fs::copy(&src, &dst).with_context(|| io(&src))?;
    }
    // Generated scenes, one per codec, at sizes that make every resize path work.
    for (i, ext) in ["png", "jpg", "bmp", "gif", "webp", "tiff"]
        .iter()
        .enumerate()
    {
        let i = i as u32;
        save(
            &scene(37 + 11 * i, 29 + 7 * i, i),
            &images.join(format!("scene_{i}.{ext}")),
        );
    }
    for (i, (name, rgb)) in COLORS.iter().enumerate() {
        save(
            &color_image(40, 30, *rgb, i as u32),
            &images.join(format!("color_{name}.png")),
        );
    }
    color_folders(&dir.join("folder"), 6);
    bad_folder(&dir.join("bad"))?;
    println!("wrote {}", dir.display());
    Ok(())
}

/// A labelled folder where some files cannot be scored (see the module comment).
fn bad_folder(dir: &Path) -> Result<()> {
    let io = |p: &Path| p.display().to_string();
    color_folders(dir, 2);
    let red = dir.join("red");
    let whole = red.join("whole.jpg");
    save(&color_image(48, 40, COLORS[2].1, 7), &whole);
    let bytes = std::fs::read(&whole).with_context(|| io(&whole))?;
    let files: [(PathBuf, &[u8]); 3] = [
        (red.join("empty.jpg"), b""),
        (red.join("text.jpg"), b"this is not a JPEG\n"),
        (red.join("truncated.jpg"), &bytes[..bytes.len() / 2]),
    ];
    for (path, content) in files {
        std::fs::write(&path, content).with_context(|| io(&path))?;
    }
    // 10000x10000 is over the 64-megapixel cap: refused from the header, never decoded.
    let huge = dir.join("blue/huge.png");
    image::GrayImage::new(10_000, 10_000)
        .save(&huge)
        .with_context(|| io(&huge))?;
    Ok(())
}

/// Gradients, stripes and a disc: varied enough that the CNN's answers differ per image.
fn scene(w: u32, h: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
        let disc = ((fx - 0.5).powi(2) + (fy - 0.4).powi(2)) < 0.06 + 0.01 * seed as f32;
        let stripe = ((x + y * (seed + 1)) / 3).is_multiple_of(2);
        let r = 255.0 * fx * (1.0 - 0.15 * seed as f32).max(0.2);
        let g = if disc { 230.0 } else { 255.0 * fy };
        let b = if stripe {
            200.0
        } else {
            40.0 + 30.0 * seed as f32
        };
        Rgb([r as u8, g as u8, b.min(255.0) as u8])
    })
}

/// Deterministic weights in [-scale, scale] (a fixed LCG, so the file never changes).
fn weights(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn cnn_model() -> Vec<u8> {
    let s = CNN_SIZE;
    let mut g = GraphBuilder::new("pi-cnn");
    g.input("image", &[None, Some(3), Some(s), Some(s)]);
    let conv = |g: &mut GraphBuilder, x: &str, cin: i64, cout: i64, seed: u64| {
        let fan_in = (cin * 9) as f32;
        let w = g.weight(
            &format!("conv{seed}_w"),
            &[cout, cin, 3, 3],
            &weights((cout * cin * 9) as usize, seed, 1.7 / fan_in.sqrt()),
        );
        let b = g.weight(
            &format!("conv{seed}_b"),
            &[cout],
            &weights(cout as usize, seed + 100, 0.1),
        );
        let attrs = vec![
            ("kernel_shape", Attr::Ints(vec![3, 3])),
            ("pads", Attr::Ints(vec![1, 1, 1, 1])),
        ];
        let y = g.node("Conv", &[x, &w, &b], attrs, None);
        g.node("Relu", &[&y], vec![], None)
    };
    let x = conv(&mut g, "image", 3, 8, 1);
    let x = g.node(
        "MaxPool",
        &[&x],
        vec![
            ("kernel_shape", Attr::Ints(vec![2, 2])),
            ("strides", Attr::Ints(vec![2, 2])),
        ],
        None,
    );
    let x = conv(&mut g, &x, 8, 16, 2);
    let x = pool_and_flatten(&mut g, &x, None);
    let w = g.weight("fc_w", &[16, 3], &weights(48, 3, 1.5));
    let b = g.weight("fc_b", &[3], &[0.1, -0.2, 0.05]);
    let x = g.node("Gemm", &[&x, &w, &b], vec![], None);
    g.node(
        "Softmax",
        &[&x],
        vec![("axis", Attr::Int(1))],
        Some("probs"),
    );
    g.output("probs", &[None, Some(3)]);

    let mut p = Preprocess::keras(s as u32, s as u32, ColorMode::Rgb);
    p.filter = ResizeFilter::Bilinear;
    p.mean = vec![0.485, 0.456, 0.406];
    p.std = vec![0.229, 0.224, 0.225];
    g.finish(&ModelMetadata {
        labels: Some(COLORS.iter().map(|(n, _)| n.to_string()).collect()),
        preprocess: Some(p),
        model_name: Some("pi-cnn".into()),
        ..Default::default()
    })
}

/// Fields that measure time, not answers.
const IGNORED: [&str; 2] = ["seconds", "images_per_second"];

fn compare(expected: &Path, actual: &Path, tol: f64) -> Result<()> {
    let (e, a) = (parse(expected)?, parse(actual)?);
    let mut diffs = Vec::new();
    let mut max_diff = 0.0f64;
    let mut numbers = 0usize;
    if e.len() != a.len() {
        diffs.push(format!("{} documents vs {}", e.len(), a.len()));
    }
    for (i, (e, a)) in e.iter().zip(&a).enumerate() {
        walk(
            &format!("#{i}"),
            e,
            a,
            tol,
            &mut diffs,
            &mut max_diff,
            &mut numbers,
        );
    }
    if diffs.is_empty() {
        println!(
            "same: {} documents, {numbers} numbers, max |diff| {max_diff:.2e} (tolerance {tol:.0e})",
            e.len()
        );
        Ok(())
    } else {
        let shown: Vec<String> = diffs.iter().take(10).cloned().collect();
        bail!(
            "{} differs from {} in {} place(s):\n  {}",
            actual.display(),
            expected.display(),
            diffs.len(),
            shown.join("\n  ")
        )
    }
}

/// A whole JSON document, or JSON lines.
fn parse(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    if let Ok(v) = serde_json::from_str::<Value>(&text) {
        return Ok(vec![v]);
    }
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

fn walk(
    at: &str,
    e: &Value,
    a: &Value,
    tol: f64,
    diffs: &mut Vec<String>,
    max_diff: &mut f64,
    numbers: &mut usize,
) {
    match (e, a) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            let d = (x - y).abs();
            *numbers += 1;
            *max_diff = max_diff.max(d);
            if d.is_nan() || d > tol {
                diffs.push(format!("{at}: {x} vs {y}"));
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                walk(&format!("{at}[{i}]"), x, y, tol, diffs, max_diff, numbers);
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                if IGNORED.contains(&k.as_str()) {
                    continue;
                }
                match (x.get(k), y.get(k)) {
                    (Some(x), Some(y)) => {
                        walk(&format!("{at}.{k}"), x, y, tol, diffs, max_diff, numbers)
                    }
                    _ => diffs.push(format!("{at}.{k}: present in only one")),
                }
            }
        }
        _ if e == a => {}
        _ => diffs.push(format!("{at}: {e} vs {a}")),
    }
}
