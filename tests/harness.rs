//! Shared helpers for fennec's end-to-end tests: locate (and build) the real
//! binaries, run them with `assert_cmd`, and make tiny inputs (images, class
//! folders, small ONNX classifiers whose right answers are known, YAML configs).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use assert_cmd::assert::Assert;
use predicates::prelude::*;

// The crate root is tests/harness.rs, so its modules are named by path.
#[path = "harness/fixtures.rs"]
mod fixtures;
#[path = "harness/http.rs"]
pub mod http;
#[path = "harness/images.rs"]
mod images;
#[path = "harness/models.rs"]
mod models;

pub use fixtures::{config, fixture, fixture_with, repo_root};
pub use images::{BLUE, COLORS, GREEN, RED, color_folders, color_image, one_of_each, save};
pub use models::{
    TinyModel, color_model, color_model_file, pool_and_flatten, stride0_model, vector_model,
};

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
///
/// Not `assert_cmd`'s `cargo_bin`: the binaries belong to other packages of the
/// workspace, and this build must resolve features as `cargo test --workspace` does.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = profile_dir();
    BUILT.get_or_init(|| {
        let profile = match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_string(),
            Some(other) => other.to_string(),
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // `--workspace --tests` resolves features as `cargo test --workspace` does
        // (dev-dependencies included), so the binaries reuse the test build's
        // dependencies instead of building burn and tract a second time.
        assert_cmd::Command::new(cargo)
            .args(["build", "--quiet", "--workspace", "--bins", "--tests"])
            .args(["--profile", &profile])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .assert()
            .success();
    });
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Runs `bin(name)` with `args`; the `Assert` prints the command, its exit code,
/// stdout and stderr when an expectation fails.
pub fn run(name: &str, args: &[&dyn AsRef<OsStr>]) -> Assert {
    assert_cmd::Command::new(bin(name))
        .args(args.iter().map(|a| a.as_ref()))
        .assert()
}

/// Runs `fennec` with the given arguments (anything `AsRef<OsStr>`, borrowed).
#[macro_export]
macro_rules! fennec {
    ($($arg:expr),* $(,)?) => { $crate::run("fennec", &[$(&$arg),*]) };
}

/// Runs `fennec-train` with the given arguments (anything `AsRef<OsStr>`, borrowed).
#[macro_export]
macro_rules! fennec_train {
    ($($arg:expr),* $(,)?) => { $crate::run("fennec-train", &[$(&$arg),*]) };
}

/// The two outcomes the tests expect of a command.
pub trait Outcome {
    /// Asserts exit 0; returns stdout.
    fn ok(self) -> String;
    /// Asserts the exit code, no panic, and that the first `error` line on stderr
    /// mentions every `needle`; returns that line.
    fn fails(self, code: i32, needles: &[&str]) -> String;
}

/// The first line of `stderr` that starts with `error`.
fn error_line(stderr: &str) -> Option<&str> {
    stderr.lines().find(|l| l.starts_with("error"))
}

impl Outcome for Assert {
    fn ok(self) -> String {
        text(&self.success().get_output().stdout)
    }

    fn fails(self, code: i32, needles: &[&str]) -> String {
        let wanted: Vec<String> = needles.iter().map(|n| n.to_string()).collect();
        let names_all = predicate::function(move |err: &str| {
            error_line(err).is_some_and(|l| wanted.iter().all(|n| l.contains(n.as_str())))
        })
        .fn_name("first `error` line names every needle");
        let done = self
            .code(code)
            .stderr(predicate::str::contains("panicked").not())
            .stderr(names_all);
        error_line(&text(&done.get_output().stderr))
            .expect("checked above")
            .to_string()
    }
}

/// Process output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fresh temporary folder, removed on drop.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("fennec-e2e-")
        .tempdir()
        .unwrap()
}

/// Sends SIGTERM to `pid` (what systemd and Kubernetes send to stop a service).
pub fn sigterm(pid: u32) {
    let pid = pid.to_string();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM {pid}");
}
