//! End-to-end tests of the `fennec` binary on generated images and tiny ONNX models:
//! every command, every output format, and the bad inputs of the runtime issue.

use std::fs;
use std::path::{Path, PathBuf};

use fennec_e2e::*;
use predicates::prelude::*;
use predicates::str::contains;
use serde_json::Value;
use tempfile::TempDir;

/// A temporary folder holding the default colour model as `m.onnx`.
fn with_model() -> (TempDir, PathBuf) {
    let d = tempdir();
    let m = color_model_file(d.path(), "m.onnx", &TinyModel::default());
    (d, m)
}

/// The default colour model in `dir/m.onnx`, and `dir/<folder>/<colour>/*` with `n`
/// images per colour.
fn model_and_folders(dir: &Path, folder: &str, n: u32) -> (PathBuf, PathBuf) {
    let data = dir.join(folder);
    color_folders(&data, n);
    (color_model_file(dir, "m.onnx", &TinyModel::default()), data)
}

#[test]
fn info_shows_metadata_and_shapes() {
    let (_d, m) = with_model();
    fennec!("info", m).success().stdout(
        contains("blue, green, red")
            .and(contains("preprocess (metadata)"))
            .and(contains("probabilities")),
    );
    let v: Value = serde_json::from_str(&fennec!("info", m, "--json").ok()).unwrap();
    assert_eq!(v["model"]["layout"], "nchw");
    assert_eq!(v["model"]["num_classes"], 3);
    assert_eq!(v["model"]["parameters"], 12);
    assert_eq!(v["model"]["producer"], "fennec");
    assert_eq!(
        v["model"]["input_shape"],
        serde_json::json!(["N", "3", "8", "8"])
    );
    assert!(v["model"]["flops_per_image"].as_u64().unwrap() > 0);
    assert_eq!(v["preprocess"]["filter"], "bilinear");
}

#[test]
fn predict_files_dirs_and_globs() {
    let (d, m) = with_model();
    let imgs = d.path().join("imgs");
    save(&color_image(20, 12, RED, 1), &imgs.join("a_red.png"));
    save(&color_image(8, 8, BLUE, 2), &imgs.join("b_blue.jpg"));
    save(
        &color_image(33, 40, GREEN, 3),
        &imgs.join("sub/c_green.bmp"),
    );

    let table = fennec!(
        "predict",
        m,
        imgs.join("a_red.png"),
        imgs.join("b_blue.jpg")
    )
    .ok();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("file"), "{table}");
    assert!(
        lines[1].contains("a_red.png") && lines[1].contains("red"),
        "{table}"
    );
    assert!(
        lines[2].contains("b_blue.jpg") && lines[2].contains("blue"),
        "{table}"
    );

    // A directory is searched recursively, in sorted order; JSON lines, top 2.
    let out = fennec!("predict", m, imgs, "--json", "-k", "2").ok();
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<&str> = rows
        .iter()
        .map(|r| r["predictions"][0]["label"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["red", "blue", "green"]);
    assert_eq!(rows[0]["predictions"].as_array().unwrap().len(), 2);
    let p0 = rows[0]["predictions"][0]["probability"].as_f64().unwrap();
    let p1 = rows[0]["predictions"][1]["probability"].as_f64().unwrap();
    assert!(p0 > 0.9 && p1 < p0, "{out}");

    // A quoted glob pattern.
    let pattern = imgs.join("*.png");
    let out = fennec!("predict", m, pattern, "--json").ok();
    assert_eq!(out.lines().count(), 1, "{out}");
}

#[test]
fn nhwc_logits_and_fixed_batch_models_agree() {
    let d = tempdir();
    let imgs = d.path().join("imgs");
    one_of_each(&imgs, 8, 8, 0);
    let reference = fennec!(
        "predict",
        color_model_file(d.path(), "a.onnx", &TinyModel::default()),
        imgs,
        "--json"
    )
    .ok();
    let variants = [
        TinyModel::default().nhwc(),
        TinyModel::default().logits(),
        TinyModel::default().fixed_batch(1),
        TinyModel::default().fixed_batch(2),
    ];
    for (i, v) in variants.iter().enumerate() {
        let m = color_model_file(d.path(), &format!("v{i}.onnx"), v);
        let out = fennec!("predict", m, imgs, "--json", "--batch", "4").ok();
        let probs = |s: &str| -> Vec<f64> {
            s.lines()
                .map(|l| {
                    serde_json::from_str::<Value>(l).unwrap()["predictions"][0]["probability"]
                        .as_f64()
                        .unwrap()
                })
                .collect()
        };
        for (a, b) in probs(&reference).iter().zip(probs(&out)) {
            assert!((a - b).abs() < 1e-5, "variant {v:?}: {a} vs {b}");
        }
    }
}

#[test]
fn eval_reports_metrics_and_skips_bad_files() {
    let d = tempdir();
    let (m, data) = model_and_folders(d.path(), "test", 6);
    // A mislabelled image: a green picture in the red folder.
    save(
        &color_image(9, 9, GREEN, 99),
        &data.join("red/zz_wrong.png"),
    );
    // Bad files, each must be listed and skipped.
    fs::write(data.join("red/empty.jpg"), b"").unwrap();
    fs::write(data.join("red/text.jpg"), b"this is not a jpeg").unwrap();
    let jpg = fs::read(data.join("red/1.jpg")).unwrap();
    fs::write(data.join("blue/truncated.jpg"), &jpg[..jpg.len() / 2]).unwrap();
    fs::write(data.join("blue/notes.txt"), b"ignored").unwrap();

    let json_path = d.path().join("report.json");
    let csv_path = d.path().join("classes.csv");
    let miss_path = d.path().join("miss.csv");
    fennec!(
        "eval",
        m,
        data,
        "--json",
        json_path,
        "--csv",
        csv_path,
        "--misclassified",
        miss_path,
        "--batch",
        "4"
    )
    .success()
    .stdout(
        contains("accuracy: 0.9474 (18/19)")
            .and(contains("confusion matrix"))
            .and(contains("[truncated]"))
            .and(contains("[empty]"))
            .and(contains("[not_an_image]")),
    );

    let r: Value = serde_json::from_slice(&fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(r["scored"], 19);
    assert_eq!(r["files"], 22);
    let kinds: Vec<&str> = r["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    for k in ["not_an_image", "empty", "truncated"] {
        assert!(kinds.contains(&k), "{kinds:?}");
    }
    assert_eq!(r["confusion"][2], serde_json::json!([0, 1, 6]));
    let red = &r["per_class"][2];
    assert_eq!(red["support"], 7);
    assert!((red["recall"].as_f64().unwrap() - 6.0 / 7.0).abs() < 1e-9);
    assert!((r["per_class"][1]["precision"].as_f64().unwrap() - 6.0 / 7.0).abs() < 1e-9);

    let csv = fs::read_to_string(&csv_path).unwrap();
    assert!(
        csv.starts_with(
            "class,support,correct,predicted,accuracy,precision,recall,f1\nblue,6,6,6,"
        ),
        "{csv}"
    );
    let misses = fs::read_to_string(&miss_path).unwrap();
    assert_eq!(misses.lines().count(), 2, "{misses}");
    assert!(misses.contains("zz_wrong.png,red,green,"), "{misses}");

    // JSON on stdout instead of the table.
    let v: Value = serde_json::from_str(&fennec!("eval", m, data, "--json", "-q").ok()).unwrap();
    assert!((v["accuracy"].as_f64().unwrap() - 18.0 / 19.0).abs() < 1e-9);
    assert_eq!(v["top_k"], 3, "top-k is capped at the number of classes");
}

#[test]
fn awkward_but_valid_images_are_scored() {
    let (d, m) = with_model();
    let dir = d.path().join("imgs");
    // 1x1 image (`save` makes the folder).
    save(&color_image(1, 1, RED, 0), &dir.join("one.png"));
    // 16-bit PNG.
    let img16 = image::ImageBuffer::<image::Rgb<u16>, _>::from_fn(5, 4, |_, _| {
        image::Rgb([60000u16, 3000, 3000])
    });
    image::DynamicImage::ImageRgb16(img16)
        .save(dir.join("deep16.png"))
        .unwrap();
    // Animated GIF: first frame red, second blue.
    write_gif(&dir.join("anim.gif"));
    // Non-UTF-8 file name (Linux allows any bytes).
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let name = std::ffi::OsStr::from_bytes(b"caf\xe9.png");
        save(&color_image(6, 6, RED, 5), &dir.join(name));
    }
    let out = fennec!("predict", m, dir, "--json").ok();
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), if cfg!(unix) { 4 } else { 3 }, "{out}");
    for r in &rows {
        assert_eq!(r["predictions"][0]["label"], "red", "{r}");
    }
}

fn write_gif(path: &Path) {
    use image::codecs::gif::{GifEncoder, Repeat};
    use image::{Delay, Frame, RgbaImage};
    let file = fs::File::create(path).unwrap();
    let mut enc = GifEncoder::new(file);
    enc.set_repeat(Repeat::Infinite).unwrap();
    for c in [RED, BLUE] {
        let img = RgbaImage::from_pixel(8, 8, image::Rgba([c[0], c[1], c[2], 255]));
        enc.encode_frame(Frame::from_parts(
            img,
            0,
            0,
            Delay::from_numer_denom_ms(100, 1),
        ))
        .unwrap();
    }
}

#[test]
fn huge_and_unreadable_images_are_skipped_not_fatal() {
    let d = tempdir();
    let (m, data) = model_and_folders(d.path(), "data", 2);
    // 10000x10000: rejected from its header, nothing allocated.
    let big = image::GrayImage::new(10_000, 10_000);
    big.save(data.join("red/huge.png")).unwrap();
    drop(big);
    // Unreadable: a dangling symlink (root ignores file permissions, so also
    // try chmod 000 and accept either outcome for that one file).
    #[cfg(unix)]
    std::os::unix::fs::symlink(
        d.path().join("nowhere.png"),
        data.join("green/dangling.png"),
    )
    .unwrap();
    let json = d.path().join("r.json");
    fennec!("eval", m, data, "--json", json, "-q").ok();
    let r: Value = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
    let skipped = r["skipped"].as_array().unwrap();
    let find = |name: &str| {
        skipped
            .iter()
            .find(|s| s["path"].as_str().unwrap().ends_with(name))
            .cloned()
    };
    let huge = find("huge.png").expect("huge.png listed");
    assert_eq!(huge["kind"], "too_large");
    assert!(huge["reason"].as_str().unwrap().contains("10000x10000"));
    #[cfg(unix)]
    assert_eq!(
        find("dangling.png").expect("dangling listed")["kind"],
        "unreadable"
    );
    assert_eq!(r["scored"], 6);
}

#[test]
fn bad_models_fail_with_one_line_naming_the_file() {
    let d = tempdir();
    let img = d.path().join("x.png");
    save(&color_image(8, 8, RED, 0), &img);
    let good = color_model(&TinyModel::default());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage.onnx",
            (0..4000u32).map(|i| (i * 7919 % 251) as u8).collect(),
            "not a valid ONNX model",
        ),
        (
            "truncated.onnx",
            good[..good.len() * 2 / 3].to_vec(),
            "not a valid ONNX model",
        ),
        ("empty.onnx", vec![], "not a valid ONNX model"),
        ("vector.onnx", vector_model(), "not an image classifier"),
        // tract panics on it: caught, and nothing but the error line on stderr.
        (
            "stride0.onnx",
            stride0_model(),
            "tract hit an internal error",
        ),
    ];
    for (name, bytes, _) in &cases {
        fs::write(d.path().join(name), bytes).unwrap();
    }
    for (name, _, reason) in &cases {
        let path = d.path().join(name);
        let out = fennec!("predict", path, img);
        let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
        let line = out.fails(1, &[name, reason]);
        assert_eq!(
            stderr.trim_end(),
            line,
            "{name}: only the error line on stderr"
        );
    }
    fennec!("info", d.path().join("vector.onnx")).fails(1, &["vector.onnx", "rank 2"]);
    fennec!("info", d.path().join("missing.onnx")).fails(1, &["missing.onnx"]);
}

#[test]
fn bad_folders_fail_clearly() {
    let (d, m) = with_model();
    let empty = d.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    fennec!("eval", m, empty).fails(1, &["empty", "no class folders"]);
    let flat = d.path().join("flat");
    save(&color_image(8, 8, RED, 0), &flat.join("a.png"));
    fennec!("eval", m, flat).fails(1, &["flat", "no class folders"]);
    let wrong = d.path().join("wrong");
    save(&color_image(8, 8, RED, 0), &wrong.join("purple/a.png"));
    fennec!("eval", m, wrong).fails(1, &["purple", "blue, green, red"]);
    let hollow = d.path().join("hollow");
    fs::create_dir_all(hollow.join("red")).unwrap();
    fennec!("eval", m, hollow).fails(1, &["no image files"]);
    fennec!("eval", m, d.path().join("nope")).fails(1, &["nope"]);
}

#[test]
fn model_without_metadata_needs_and_takes_labels() {
    let d = tempdir();
    let m = color_model_file(d.path(), "bare.onnx", &TinyModel::default().bare());
    let img = d.path().join("x.png");
    save(&color_image(8, 8, GREEN, 0), &img);
    let out = fennec!("predict", m, img, "--json")
        .stderr(contains("no class names").and(contains("Keras defaults")))
        .ok();
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["predictions"][0]["label"],
        "1"
    );

    let labels = d.path().join("labels.txt");
    fs::write(&labels, "blue\ngreen\nred\n").unwrap();
    let out = fennec!("predict", m, img, "--labels", labels, "--json").ok();
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["predictions"][0]["label"],
        "green"
    );

    fs::write(&labels, "only\ntwo\n").unwrap();
    fennec!("predict", m, img, "--labels", labels).fails(1, &["2 labels", "3 classes"]);

    // Sorted class folders map to outputs when the model has no labels.
    let data = d.path().join("data");
    color_folders(&data, 2);
    fennec!("eval", m, data, "-q")
        .success()
        .stdout(contains("accuracy: 1.0000 (6/6)"));
}

#[test]
fn bench_reports_percentiles() {
    let (_d, m) = with_model();
    let v: Value = serde_json::from_str(
        &fennec!(
            "bench",
            m,
            "--batch",
            "1,4",
            "--threads",
            "1,2",
            "--runs",
            "5",
            "--warmup",
            "1",
            "--json"
        )
        .ok(),
    )
    .unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    for r in results {
        let (min, p50, max) = (
            r["min_ms"].as_f64().unwrap(),
            r["p50_ms"].as_f64().unwrap(),
            r["max_ms"].as_f64().unwrap(),
        );
        assert!(min <= p50 && p50 <= max && min > 0.0, "{r}");
    }
    fennec!("bench", m, "--runs", "3")
        .success()
        .stdout(contains("p50").and(contains("img/s")));
}

#[test]
fn usage_errors_exit_2() {
    fennec!("predict").code(2);
    fennec!("eval", "m.onnx", "dir", "--batch", "0").code(2);
    fennec!("frobnicate").code(2);
    fennec!("eval", "--help")
        .success()
        .stdout(contains("--misclassified").and(contains("--decode-threads")));
}
