//! Turning a raw `<class>/*` folder (Kaggle's `PetImages/{Cat,Dog}` layout) into the
//! stratified `train/validation/test` folders that `fit` reads, without the manual
//! clean-up the tutorial asks for.
//!
//! Every image is decode-checked first (in parallel). Files that fail go to
//! `OUT/quarantine/<class>/` and are listed with the reason in `OUT/quarantine.csv`;
//! they never reach a split. The good files of each class are shuffled with a seed
//! derived from the global seed and the class name (so one class's split does not
//! depend on the others) and cut into test, validation and train, in that order.
//! Files are copied (each atomically) or hard-linked; the originals are only read.
//! `OUT/split.json` records what was done.

use std::path::{Component, Path, PathBuf};

use fennec_runtime::decode::{DecodeLimits, decode_file};
use fennec_runtime::folder::scan_class_folders;
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::Serialize;

use crate::data::Subset;
use crate::output::{WriteError, write_file, write_json};

/// Where files that fail the decode check go, and the report listing them.
pub const QUARANTINE_DIR: &str = "quarantine";
pub const QUARANTINE_CSV: &str = "quarantine.csv";
/// The report of a split.
pub const SPLIT_JSON: &str = "split.json";

#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error("invalid fractions: {0}")]
    Fractions(String),
    #[error(transparent)]
    Folder(#[from] fennec_runtime::Error),
    #[error("{out}: {reason}")]
    Overlap { out: PathBuf, reason: String },
    #[error(
        "{path}: output folder is not empty (use --force to replace its train/validation/test/quarantine folders)"
    )]
    NotEmpty { path: PathBuf },
    /// A file-system operation failed (fs-err: the message names the path).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// What to do.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitOptions {
    /// Fraction of each class for validation.
    pub val: f64,
    /// Fraction of each class for test.
    pub test: f64,
    pub seed: u64,
    /// Hard-link instead of copying (falls back to a copy where linking fails).
    pub link: bool,
    /// Replace the split folders of a non-empty output folder.
    pub force: bool,
}

impl SplitOptions {
    /// `0 <= val`, `0 <= test`, `val + test < 1`, all finite.
    pub fn validate(&self) -> Result<(), SplitError> {
        let (v, t) = (self.val, self.test);
        if !(v.is_finite() && v >= 0.0) {
            return Err(SplitError::Fractions(format!(
                "--val must be a number >= 0, got {v}"
            )));
        }
        if !(t.is_finite() && t >= 0.0) {
            return Err(SplitError::Fractions(format!(
                "--test must be a number >= 0, got {t}"
            )));
        }
        if v + t >= 1.0 {
            return Err(SplitError::Fractions(format!(
                "--val + --test must be below 1 so train keeps some images, got {v} + {t} = {}",
                v + t
            )));
        }
        Ok(())
    }
}

/// Per-class outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassCounts {
    pub class: String,
    pub train: usize,
    pub validation: usize,
    pub test: usize,
    pub quarantined: usize,
}

/// A file that failed the decode check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quarantined {
    /// Relative to the raw folder, e.g. `Dog/11702.jpg`.
    pub file: PathBuf,
    /// Short category (`empty`, `truncated`, `corrupt`, `unreadable`, ...).
    pub kind: String,
    /// One line naming the problem.
    pub reason: String,
    /// Whether a copy sits in `quarantine/<class>/` (not for unreadable files).
    pub copied: bool,
}

/// A path the scan did not consider an image (no image extension, a file outside
/// the class folders, an unreadable sub-folder); left alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ignored {
    pub path: PathBuf,
    pub kind: String,
    pub reason: String,
}

/// Everything `split` did; also written as `OUT/split.json`.
#[derive(Debug, Clone, Serialize)]
pub struct SplitReport {
    pub raw_dir: PathBuf,
    pub out_dir: PathBuf,
    pub seed: u64,
    pub val: f64,
    pub test: f64,
    /// `copy` or `link`.
    pub mode: &'static str,
    pub classes: Vec<ClassCounts>,
    pub quarantined: Vec<Quarantined>,
    pub ignored: Vec<Ignored>,
    /// Files hard-linked and files copied (quarantined copies included).
    pub linked: usize,
    pub copied: usize,
    /// Why the first hard link failed, when `--link` had to copy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_fallback: Option<String>,
}

impl SplitReport {
    pub fn totals(&self) -> ClassCounts {
        let mut t = ClassCounts {
            class: "total".into(),
            train: 0,
            validation: 0,
            test: 0,
            quarantined: 0,
        };
        for c in &self.classes {
            t.train += c.train;
            t.validation += c.validation;
            t.test += c.test;
            t.quarantined += c.quarantined;
        }
        t
    }
}

/// Progress hooks: called with the number of files to check, then once per file
/// checked, then once per file placed. Must be cheap and thread-safe.
pub trait Progress: Sync {
    fn start(&self, _phase: &'static str, _len: usize) {}
    fn tick(&self) {}
}

/// No progress reporting.
pub struct Quiet;
impl Progress for Quiet {}

/// How many of `n` files go to (validation, test): rounded, and together never
/// more than `round(n * (val + test))`, so train keeps the rest.
pub fn counts_for(n: usize, val: f64, test: f64) -> (usize, usize) {
    let held_out = ((n as f64) * (val + test)).round() as usize;
    let n_test = (((n as f64) * test).round() as usize).min(held_out);
    (held_out - n_test, n_test)
}

/// Splits `raw/<class>/*` into `out/{train,validation,test}/<class>/`.
pub fn split(
    raw: &Path,
    out: &Path,
    opts: &SplitOptions,
    progress: &dyn Progress,
) -> Result<SplitReport, SplitError> {
    opts.validate()?;
    let folders = scan_class_folders(raw)?;
    check_no_overlap(raw, out)?;
    prepare_out_dir(out, opts.force)?;

    // 1. Decode-check every file, in parallel; order is kept.
    progress.start("checking", folders.files.len());
    let limits = DecodeLimits::default();
    let checks: Vec<Result<(), fennec_runtime::ImageError>> = folders
        .files
        .par_iter()
        .map(|(path, _)| {
            let r = decode_file(path, &limits).map(drop);
            progress.tick();
            r
        })
        .collect();

    let rel = |p: &Path| p.strip_prefix(raw).unwrap_or(p).to_path_buf();
    let mut good: Vec<Vec<PathBuf>> = vec![Vec::new(); folders.classes.len()];
    let mut bad: Vec<(PathBuf, usize, fennec_runtime::ImageError)> = Vec::new();
    for ((path, class), check) in folders.files.iter().zip(checks) {
        match check {
            Ok(()) => good[*class].push(path.clone()),
            Err(e) => bad.push((path.clone(), *class, e)),
        }
    }

    // 2. Decide the split: per class, a seeded shuffle of the sorted good files.
    let mut jobs: Vec<(PathBuf, PathBuf)> = Vec::new(); // (source, destination)
    let mut classes = Vec::new();
    for (ix, name) in folders.classes.iter().enumerate() {
        let mut files = std::mem::take(&mut good[ix]);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(class_seed(opts.seed, name));
        files.shuffle(&mut rng);
        let (n_val, n_test) = counts_for(files.len(), opts.val, opts.test);
        let n_train = files.len() - n_val - n_test;
        for (i, f) in files.iter().enumerate() {
            let subset = if i < n_test {
                Subset::Test
            } else if i < n_test + n_val {
                Subset::Validation
            } else {
                Subset::Train
            };
            jobs.push((f.clone(), out.join(subset.dir_name()).join(rel(f))));
        }
        let quarantined = bad.iter().filter(|(_, c, _)| *c == ix).count();
        classes.push(ClassCounts {
            class: name.clone(),
            train: n_train,
            validation: n_val,
            test: n_test,
            quarantined,
        });
    }
    let mut quarantined = Vec::new();
    for (path, _, e) in &bad {
        let r = rel(path);
        // An unreadable file cannot be copied; an empty or corrupt one can.
        let copied = e.kind() != "unreadable";
        if copied {
            jobs.push((path.clone(), out.join(QUARANTINE_DIR).join(&r)));
        }
        quarantined.push(Quarantined {
            file: r,
            kind: e.kind().into(),
            reason: e.to_string(),
            copied,
        });
    }

    // 3. Place the files.
    progress.start("placing", jobs.len());
    let mut linker = Linker {
        enabled: opts.link,
        fallback: None,
        linked: 0,
        copied: 0,
    };
    for (src, dst) in &jobs {
        linker.place(src, dst)?;
        progress.tick();
    }

    let report = SplitReport {
        raw_dir: raw.to_path_buf(),
        out_dir: out.to_path_buf(),
        seed: opts.seed,
        val: opts.val,
        test: opts.test,
        mode: if opts.link { "link" } else { "copy" },
        classes,
        quarantined,
        ignored: folders
            .skipped
            .into_iter()
            .map(|s| Ignored {
                path: s.path,
                kind: s.kind,
                reason: s.reason,
            })
            .collect(),
        linked: linker.linked,
        copied: linker.copied,
        link_fallback: linker.fallback,
    };
    write_reports(out, &report)?;
    Ok(report)
}

/// FNV-1a of the class name mixed into the seed: each class gets its own stream.
fn class_seed(seed: u64, class: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in class.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    seed ^ h
}

struct Linker {
    enabled: bool,
    fallback: Option<String>,
    linked: usize,
    copied: usize,
}

impl Linker {
    fn place(&mut self, src: &Path, dst: &Path) -> Result<(), SplitError> {
        let parent = dst.parent().expect("destination has a parent");
        fs_err::create_dir_all(parent)?;
        if self.enabled && self.fallback.is_none() {
            match std::fs::hard_link(src, dst) {
                Ok(()) => {
                    self.linked += 1;
                    return Ok(());
                }
                // Another filesystem, or one without hard links: copy from now on.
                Err(e) => self.fallback = Some(format!("{}: {e}", dst.display())),
            }
        }
        write_file(dst, &fs_err::read(src)?)?;
        self.copied += 1;
        Ok(())
    }
}

fn write_reports(out: &Path, report: &SplitReport) -> Result<(), SplitError> {
    let path = out.join(QUARANTINE_CSV);
    let csv = quarantine_csv(&report.quarantined).map_err(|e| WriteError::new(&path, e))?;
    write_file(&path, &csv)?;
    Ok(write_json(&out.join(SPLIT_JSON), report)?)
}

/// `quarantine.csv`: `file,kind,reason`, one row per quarantined file.
fn quarantine_csv(quarantined: &[Quarantined]) -> std::io::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["file", "kind", "reason"])?;
    for q in quarantined {
        w.write_record([
            &*q.file.to_string_lossy(),
            q.kind.as_str(),
            q.reason.as_str(),
        ])?;
    }
    w.into_inner().map_err(|e| e.into_error())
}

/// Absolute, with `.`/`..` resolved and symlinks followed as far as the path exists.
fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    let mut p = PathBuf::new();
    let mut exists = true;
    let absolute = std::path::absolute(path).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("{}: cannot resolve path: {e}", path.display()),
        )
    })?;
    for comp in absolute.components() {
        match comp {
            Component::CurDir => {}
            Component::ParentDir => {
                p.pop();
            }
            other => {
                p.push(other);
                if exists {
                    match p.canonicalize() {
                        Ok(real) => p = real,
                        Err(_) => exists = false,
                    }
                }
            }
        }
    }
    Ok(p)
}

fn check_no_overlap(raw: &Path, out: &Path) -> Result<(), SplitError> {
    let r = resolve(raw)?;
    let o = resolve(out)?;
    let bad = |reason: String| {
        Err(SplitError::Overlap {
            out: out.to_path_buf(),
            reason,
        })
    };
    if o == r {
        return bad("the output folder is the raw folder".into());
    }
    if o.starts_with(&r) {
        return bad(format!(
            "the output folder is inside the raw folder {}",
            raw.display()
        ));
    }
    if r.starts_with(&o) {
        return bad(format!(
            "the raw folder {} is inside the output folder",
            raw.display()
        ));
    }
    Ok(())
}

/// Creates `out` if needed. A non-empty `out` is refused unless `force`, which
/// removes only what a split writes there.
fn prepare_out_dir(out: &Path, force: bool) -> Result<(), SplitError> {
    match fs_err::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                if !force {
                    return Err(SplitError::NotEmpty {
                        path: out.to_path_buf(),
                    });
                }
                let dirs = Subset::ALL.map(Subset::dir_name);
                for name in dirs.iter().chain(&[QUARANTINE_DIR]) {
                    let d = out.join(name);
                    if d.exists() {
                        fs_err::remove_dir_all(&d)?;
                    }
                }
                for name in [QUARANTINE_CSV, SPLIT_JSON] {
                    let f = out.join(name);
                    if f.exists() {
                        fs_err::remove_file(&f)?;
                    }
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(fs_err::create_dir_all(out)?),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_round_and_leave_train_the_rest() {
        assert_eq!(counts_for(100, 0.1, 0.1), (10, 10));
        assert_eq!(counts_for(12500, 0.1, 0.1), (1250, 1250));
        assert_eq!(counts_for(7, 0.1, 0.2), (1, 1));
        assert_eq!(counts_for(0, 0.1, 0.1), (0, 0));
        assert_eq!(counts_for(2, 0.25, 0.25), (0, 1));
        assert_eq!(counts_for(10, 0.0, 0.0), (0, 0));
        for n in 0..60 {
            for (v, t) in [(0.1, 0.1), (0.33, 0.33), (0.45, 0.5), (0.0, 0.9)] {
                let (a, b) = counts_for(n, v, t);
                assert!(a + b <= n, "{n} {v} {t}");
            }
        }
    }

    #[test]
    fn fractions_are_checked() {
        let o = |val, test| SplitOptions {
            val,
            test,
            seed: 1,
            link: false,
            force: false,
        };
        assert!(o(0.1, 0.1).validate().is_ok());
        assert!(o(0.0, 0.0).validate().is_ok());
        assert!(
            o(-0.1, 0.1)
                .validate()
                .unwrap_err()
                .to_string()
                .contains("--val")
        );
        assert!(
            o(0.1, f64::NAN)
                .validate()
                .unwrap_err()
                .to_string()
                .contains("--test")
        );
        assert!(
            o(0.5, 0.5)
                .validate()
                .unwrap_err()
                .to_string()
                .contains("below 1")
        );
    }

    #[test]
    fn class_seeds_differ_and_are_stable() {
        assert_ne!(class_seed(42, "Cat"), class_seed(42, "Dog"));
        assert_eq!(class_seed(42, "Cat"), class_seed(42, "Cat"));
        assert_ne!(class_seed(42, "Cat"), class_seed(43, "Cat"));
    }

    #[test]
    fn overlap_is_detected() {
        let d = tempfile::tempdir().unwrap();
        let raw = d.path().join("raw");
        std::fs::create_dir_all(&raw).unwrap();
        assert!(check_no_overlap(&raw, &raw.join("out")).is_err());
        assert!(check_no_overlap(&raw, &raw.join("x/../.")).is_err());
        assert!(check_no_overlap(&raw, d.path()).is_err());
        assert!(check_no_overlap(&raw, &d.path().join("out")).is_ok());
        assert!(check_no_overlap(&raw, &d.path().join("raw2")).is_ok());
    }

    #[test]
    fn csv_quoting() {
        let q = |file: &str, reason: &str| Quarantined {
            file: file.into(),
            kind: "corrupt".into(),
            reason: reason.into(),
            copied: true,
        };
        let csv = quarantine_csv(&[q("a.jpg", "bad"), q("a, \"b\".jpg", "x: y, z")]).unwrap();
        assert_eq!(
            String::from_utf8(csv).unwrap(),
            "file,kind,reason\na.jpg,corrupt,bad\n\"a, \"\"b\"\".jpg\",corrupt,\"x: y, z\"\n"
        );
    }
}
