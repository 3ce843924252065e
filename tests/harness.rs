//! Shared helpers for fennec's end-to-end tests: locate (and build) the real
//! binaries, run them, and make tiny inputs: images, class folders and small ONNX
//! classifiers whose right answers are known.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use fennec_runtime::metadata::ModelMetadata;
use fennec_runtime::onnx_writer::{Attr, GraphBuilder};
use fennec_runtime::{ColorMode, Layout, Preprocess};
use image::{ImageFormat, Rgb, RgbImage};

/// `target/<profile>` of the running test executable (`.../deps/<test>-<hash>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .to_path_buf()
}

/// Path of a workspace binary (`fennec`, `fennec-train`), built with the same profile
/// as the tests on first use, so a stale binary is never tested.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = profile_dir();
    BUILT.get_or_init(|| {
        let profile = match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_string(),
            Some(other) => other.to_string(),
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            // `--workspace --tests` resolves features as `cargo test --workspace` does
            // (dev-dependencies included), so the binaries reuse the test build's
            // dependencies instead of building burn and tract a second time.
            .args([
                "build",
                "--quiet",
                "--workspace",
                "--bins",
                "--tests",
                "--profile",
            ])
            .arg(&profile)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build for the binaries");
        assert!(status.success(), "building the fennec binaries failed");
    });
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Result of running a binary, with helpers that print everything on failure.
pub struct Run {
    pub cmd: String,
    pub out: Output,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    fn dump(&self) -> String {
        format!(
            "$ {}\nexit {}\n--- stdout\n{}--- stderr\n{}",
            self.cmd,
            self.code(),
            self.stdout(),
            self.stderr()
        )
    }
    /// Asserts exit 0 and returns stdout.
    pub fn ok(&self) -> String {
        assert_eq!(self.code(), 0, "command failed:\n{}", self.dump());
        self.stdout()
    }
    /// Asserts the exit code and that stderr's `error:` line is one line mentioning
    /// every `needle`; returns that line.
    pub fn fails(&self, code: i32, needles: &[&str]) -> String {
        assert_eq!(self.code(), code, "unexpected exit code:\n{}", self.dump());
        let err = self.stderr();
        let line = err
            .lines()
            .find(|l| l.starts_with("error"))
            .unwrap_or_else(|| panic!("no error line:\n{}", self.dump()))
            .to_string();
        assert!(!err.contains("panicked"), "panic:\n{}", self.dump());
        for n in needles {
            assert!(line.contains(n), "error line lacks {n:?}:\n{}", self.dump());
        }
        line
    }
}

/// Runs `bin(name)` with `args`.
pub fn run(name: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Run {
    let mut cmd = Command::new(bin(name));
    for a in args {
        cmd.arg(a);
    }
    let text = format!(
        "{name} {}",
        args.iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    Run {
        cmd: text,
        out: cmd.output().expect("spawn binary"),
    }
}

/// Runs `fennec` with the given arguments.
#[macro_export]
macro_rules! fennec {
    ($($arg:expr),* $(,)?) => { $crate::run("fennec", &[$(&$arg),*]) };
}

/// Runs `fennec-train` with the given arguments.
#[macro_export]
macro_rules! fennec_train {
    ($($arg:expr),* $(,)?) => { $crate::run("fennec-train", &[$(&$arg),*]) };
}

pub const RED: [u8; 3] = [220, 30, 30];
pub const GREEN: [u8; 3] = [30, 200, 40];
pub const BLUE: [u8; 3] = [20, 40, 230];
pub const COLORS: [(&str, [u8; 3]); 3] = [("blue", BLUE), ("green", GREEN), ("red", RED)];

/// A `w x h` image of `color` with a little deterministic noise.
pub fn color_image(w: u32, h: u32, color: [u8; 3], seed: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let n = ((x * 31 + y * 17 + seed * 7) % 23) as i32 - 11;
        Rgb(color.map(|c| (c as i32 + n).clamp(0, 255) as u8))
    })
}

/// Saves an image in the format its extension says.
pub fn save(img: &RgbImage, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let format = ImageFormat::from_path(path).unwrap();
    img.save_with_format(path, format).unwrap();
}

/// `root/<colour>/<i>.png|jpg` for blue, green, red: `n` images each, sizes vary.
pub fn color_folders(root: &Path, n: u32) {
    for (name, rgb) in COLORS {
        for i in 0..n {
            let ext = if i % 2 == 0 { "png" } else { "jpg" };
            save(
                &color_image(10 + i % 7, 9 + i % 5, rgb, i),
                &root.join(name).join(format!("{i}.{ext}")),
            );
        }
    }
}

/// Options for [`color_model`].
#[derive(Debug, Clone)]
pub struct TinyModel {
    pub layout: Layout,
    /// End in Softmax (else raw logits).
    pub softmax: bool,
    /// Write fennec metadata (labels, preprocessing).
    pub metadata: bool,
    /// Fixed batch size, `None` = dynamic.
    pub batch: Option<i64>,
    pub size: i64,
}

impl Default for TinyModel {
    fn default() -> Self {
        TinyModel {
            layout: Layout::Nchw,
            softmax: true,
            metadata: true,
            batch: None,
            size: 8,
        }
    }
}

/// A 3-class "which colour dominates" classifier (labels blue, green, red, the
/// sorted folder names): global average pool → Gemm → (Softmax). Its answers on
/// [`color_image`]s are known, so end-to-end tests can check real predictions.
pub fn color_model(o: &TinyModel) -> Vec<u8> {
    let s = o.size;
    let mut g = GraphBuilder::new("color");
    let nchw = [o.batch, Some(3), Some(s), Some(s)];
    let nhwc = [o.batch, Some(s), Some(s), Some(3)];
    let mut x = "image".to_string();
    match o.layout {
        Layout::Nchw => g.input("image", &nchw),
        Layout::Nhwc => {
            g.input("image", &nhwc);
            x = g.node(
                "Transpose",
                &["image"],
                vec![("perm", Attr::Ints(vec![0, 3, 1, 2]))],
                None,
            );
        }
    }
    let pooled = g.node("GlobalAveragePool", &[&x], vec![], None);
    let flat = g.node("Flatten", &[&pooled], vec![("axis", Attr::Int(1))], None);
    // Class order blue, green, red: logits = 20 * (channel mean) - 10 * (sum of means).
    let w = g.weight(
        "w",
        &[3, 3],
        &[-10.0, -10.0, 10.0, -10.0, 10.0, -10.0, 10.0, -10.0, -10.0],
    );
    let b = g.weight("b", &[3], &[0.0, 0.0, 0.0]);
    let out_name = "scores";
    let logits = g.node(
        "Gemm",
        &[&flat, &w, &b],
        vec![],
        (!o.softmax).then_some(out_name),
    );
    if o.softmax {
        g.node(
            "Softmax",
            &[&logits],
            vec![("axis", Attr::Int(1))],
            Some(out_name),
        );
    }
    g.output(out_name, &[o.batch, Some(3)]);
    let md = if o.metadata {
        let mut p = Preprocess::keras(s as u32, s as u32, ColorMode::Rgb);
        p.layout = o.layout;
        p.filter = fennec_runtime::ResizeFilter::Bilinear;
        ModelMetadata {
            labels: Some(COLORS.iter().map(|(n, _)| n.to_string()).collect()),
            preprocess: Some(p),
            model_name: Some("tiny-color".into()),
            ..Default::default()
        }
    } else {
        ModelMetadata::default()
    };
    g.finish(&md)
}

/// A model whose input is not an image (rank 2).
pub fn vector_model() -> Vec<u8> {
    let mut g = GraphBuilder::new("vector");
    g.input("x", &[None, Some(10)]);
    let w = g.weight("w", &[10, 2], &[0.1; 20]);
    let b = g.weight("b", &[2], &[0.0; 2]);
    g.node("Gemm", &["x", &w, &b], vec![], Some("y"));
    g.output("y", &[None, Some(2)]);
    g.finish(&ModelMetadata::default())
}

/// A fresh temporary folder, removed on drop.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("fennec-e2e-")
        .tempdir()
        .unwrap()
}
