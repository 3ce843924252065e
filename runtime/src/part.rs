//! The partial report of one shard of `fennec eval --shard i/n --part PATH`, and
//! `fennec merge`: what a single eval computes its report from, so that merged
//! shards print exactly the report of one uninterrupted run.
//!
//! A part holds raw counts only (confusion matrix, top-k hits, files, skipped
//! files with reasons) plus the few most confident mistakes per class with their
//! thumbnails, and what identifies the run: the model's SHA-256, labels,
//! preprocessing, k, the folder and the shard. The JSON format is versioned
//! ([`FORMAT`], [`VERSION`]). Every eval builds one (a plain run is shard `0/1`),
//! and its printed report is rendered from it, the same way `merge` renders the
//! sum of the parts; lists are kept in a canonical order (skipped files by path,
//! mistakes by confidence then path) so the sum does not depend on which shard
//! saw what.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::ImageFormat;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::decode::{DecodeLimits, decode_file};
use crate::error::{Error, Result};
use crate::folder::Skipped;
use crate::metrics::{Evaluation, Summary};
use crate::preprocess::Preprocess;
use crate::shard::Shard;

/// The `format` field of every part.
pub const FORMAT: &str = "fennec-eval-part";
/// The `version` field this build writes and reads.
pub const VERSION: u32 = 1;
/// Mistakes kept per true class (for the report's thumbnail grid).
pub const MISTAKES_PER_CLASS: usize = 12;
/// Largest side of a mistake's thumbnail, in pixels.
pub const THUMBNAIL_SIZE: u32 = 64;

/// One shard's raw results (or the merge of all of them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalPart {
    pub format: String,
    pub version: u32,
    /// The model file as given on the command line.
    pub model: PathBuf,
    pub model_sha256: String,
    /// `fennec info`'s facts about the model, shown in the HTML report.
    pub model_info: serde_json::Value,
    pub labels: Vec<String>,
    pub preprocess: Preprocess,
    pub top_k: usize,
    /// The scored folder as given on the command line.
    pub dir: PathBuf,
    pub shard: Shard,
    /// Image files listed in the whole folder (all shards).
    pub listed: u64,
    /// Image files of this shard.
    pub files: u64,
    /// `confusion[truth][predicted]`.
    pub confusion: Vec<Vec<u64>>,
    pub top_k_hits: u64,
    /// Sorted by path.
    pub skipped: Vec<Skipped>,
    /// At most [`MISTAKES_PER_CLASS`] per true class: by true class, most confident first.
    pub mistakes: Vec<Mistake>,
    /// Time spent scoring (summed over shards when merged).
    pub seconds: f64,
}

/// A misclassified image, for the report's grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mistake {
    /// Path relative to the scored folder (`/`-separated).
    pub file: String,
    pub truth: usize,
    pub predicted: usize,
    pub confidence: f32,
    /// PNG bytes, hex-encoded; empty when the image could not be read again.
    pub thumbnail: String,
}

/// What identifies a run; parts merge only when they agree on all of it.
#[derive(Debug, Clone)]
pub struct RunIdentity {
    pub model: PathBuf,
    pub model_sha256: String,
    pub model_info: serde_json::Value,
    pub labels: Vec<String>,
    pub preprocess: Preprocess,
    pub top_k: usize,
    pub dir: PathBuf,
    pub shard: Shard,
    pub listed: u64,
}

/// Hex SHA-256 of a file's bytes.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut file = fs_err::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Accumulates one run's results into a part; memory is O(classes²) plus the
/// skipped files and [`MISTAKES_PER_CLASS`] candidates per class.
pub struct Tally {
    id: RunIdentity,
    eval: Evaluation,
    files: u64,
    skipped: Vec<Skipped>,
    /// Per true class: `(relative file, path on disk, predicted, confidence)`.
    candidates: Vec<Vec<(String, PathBuf, usize, f32)>>,
}

impl Tally {
    pub fn new(id: RunIdentity) -> Tally {
        let n = id.labels.len();
        Tally {
            eval: Evaluation::new(id.labels.clone(), id.top_k),
            id,
            files: 0,
            skipped: Vec::new(),
            candidates: vec![Vec::new(); n],
        }
    }

    /// The k in use (the requested k capped at the number of classes).
    pub fn k(&self) -> usize {
        self.eval.k
    }

    /// Counts an image file of this shard (scored or not).
    pub fn count_file(&mut self) {
        self.files += 1;
    }

    /// Records a scored image. `file` is relative to the folder, `path` where to
    /// read it again for a thumbnail.
    pub fn scored(
        &mut self,
        file: &str,
        path: &Path,
        truth: usize,
        predicted: usize,
        confidence: f32,
        top_k_hit: bool,
    ) {
        self.eval.record(truth, predicted, top_k_hit);
        if predicted == truth {
            return;
        }
        let kept = &mut self.candidates[truth];
        let ranks_in = kept.len() < MISTAKES_PER_CLASS
            || kept
                .last()
                .is_some_and(|last| first_is_worse((last.3, &last.0), (confidence, file)));
        if ranks_in {
            kept.push((file.to_string(), path.to_path_buf(), predicted, confidence));
            sort_mistakes(kept, |c| (c.3, c.0.as_str()));
            kept.truncate(MISTAKES_PER_CLASS);
        }
    }

    /// Records a file that was not scored.
    pub fn skip(&mut self, skipped: Skipped) {
        self.skipped.push(skipped);
    }

    /// The part, with thumbnails of the kept mistakes read again from disk.
    pub fn finish(self, seconds: f64, limits: &DecodeLimits) -> EvalPart {
        let mistakes = self
            .candidates
            .into_iter()
            .enumerate()
            .flat_map(|(truth, kept)| {
                kept.into_iter()
                    .map(move |(file, path, predicted, confidence)| Mistake {
                        thumbnail: thumbnail(&path, limits),
                        file,
                        truth,
                        predicted,
                        confidence,
                    })
            })
            .collect();
        let id = self.id;
        let mut part = EvalPart {
            format: FORMAT.into(),
            version: VERSION,
            model: id.model,
            model_sha256: id.model_sha256,
            model_info: id.model_info,
            labels: id.labels,
            preprocess: id.preprocess,
            top_k: self.eval.k,
            dir: id.dir,
            shard: id.shard,
            listed: id.listed,
            files: self.files,
            top_k_hits: self.eval.top_k_hits(),
            confusion: self.eval.confusion,
            skipped: self.skipped,
            mistakes,
            seconds,
        };
        part.canonical_order();
        part
    }
}

/// Most confident first; ties by file name, so the order never depends on arrival.
fn sort_mistakes<T>(items: &mut [T], key: impl Fn(&T) -> (f32, &str)) {
    items.sort_by(|a, b| mistake_order(key(a), key(b)));
}

fn mistake_order(a: (f32, &str), b: (f32, &str)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1))
}

/// Whether mistake `a` comes after `b` in the report's order.
fn first_is_worse(a: (f32, &str), b: (f32, &str)) -> bool {
    mistake_order(a, b) == std::cmp::Ordering::Greater
}

/// A PNG thumbnail (hex) of the image at `path`, at most [`THUMBNAIL_SIZE`] a side;
/// empty if it cannot be read again.
fn thumbnail(path: &Path, limits: &DecodeLimits) -> String {
    let Ok(img) = decode_file(path, limits) else {
        return String::new();
    };
    let img = if img.width().max(img.height()) > THUMBNAIL_SIZE {
        img.thumbnail(THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    } else {
        img
    };
    let mut png = Cursor::new(Vec::new());
    match img.to_rgb8().write_to(&mut png, ImageFormat::Png) {
        Ok(()) => hex::encode(png.into_inner()),
        Err(_) => String::new(),
    }
}

impl EvalPart {
    /// Reads a part written by `fennec eval --part`; any problem (missing,
    /// truncated, another format or version) is one error naming the file.
    pub fn read(path: &Path) -> Result<EvalPart> {
        let bad = |reason: String| Error::input(path, reason);
        let bytes = fs_err::read(path)?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("not a complete fennec eval part ({e})")))?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(bad(format!(
                "not a fennec eval part (no \"format\": \"{FORMAT}\")"
            )));
        }
        let version = value.get("version").and_then(|v| v.as_u64());
        if version != Some(u64::from(VERSION)) {
            return Err(bad(format!(
                "part format version {} but this fennec reads version {VERSION}",
                version.map_or("?".into(), |v| v.to_string())
            )));
        }
        let part: EvalPart = serde_json::from_value(value)
            .map_err(|e| bad(format!("malformed fennec eval part: {e}")))?;
        part.check_shape().map_err(bad)?;
        Ok(part)
    }

    /// Counts and lists consistent with the labels and the shard.
    fn check_shape(&self) -> std::result::Result<(), String> {
        let n = self.labels.len();
        if self.shard.count == 0 || self.shard.index >= self.shard.count {
            return Err(format!(
                "shard index {} out of range for {} shards",
                self.shard.index, self.shard.count
            ));
        }
        if self.confusion.len() != n || self.confusion.iter().any(|r| r.len() != n) {
            return Err(format!("confusion matrix is not {n}x{n}"));
        }
        if let Some(m) = self
            .mistakes
            .iter()
            .find(|m| m.truth >= n || m.predicted >= n)
        {
            return Err(format!("mistake {} names a class beyond {n}", m.file));
        }
        if self.scored() > self.files || self.files > self.listed {
            return Err(format!(
                "counts do not add up ({} scored, {} files, {} listed)",
                self.scored(),
                self.files,
                self.listed
            ));
        }
        Ok(())
    }

    /// Images scored.
    pub fn scored(&self) -> u64 {
        self.confusion.iter().flatten().sum()
    }

    /// The metrics of this part.
    pub fn summary(&self) -> Summary {
        let mut e = Evaluation::new(self.labels.clone(), self.top_k);
        e.absorb(&self.confusion, self.top_k_hits);
        e.summary()
    }

    /// Skipped files by path, mistakes per class by confidence, at most
    /// [`MISTAKES_PER_CLASS`] each.
    fn canonical_order(&mut self) {
        self.skipped.sort_by(|a, b| a.path.cmp(&b.path));
        self.mistakes.sort_by_key(|m| m.truth);
        let mut kept = Vec::with_capacity(self.mistakes.len());
        for class in self.mistakes.chunk_by(|a, b| a.truth == b.truth) {
            let mut class = class.to_vec();
            sort_mistakes(&mut class, |m| (m.confidence, m.file.as_str()));
            class.truncate(MISTAKES_PER_CLASS);
            kept.extend(class);
        }
        self.mistakes = kept;
    }
}

/// Merges the parts of every shard of one run into the part of the whole folder
/// (shard `0/1`), after checking they belong together: same model file (SHA-256),
/// labels, preprocessing, k, folder listing and shard count, each shard exactly
/// once. Errors name the offending part.
pub fn merge(parts: Vec<(PathBuf, EvalPart)>) -> Result<EvalPart> {
    let Some((first_path, first)) = parts.first() else {
        return Err(Error::input(Path::new("merge"), "no parts given"));
    };
    let count = first.shard.count;
    let mut owner: Vec<Option<&Path>> = vec![None; count as usize];
    for (path, p) in &parts {
        let differs = |what: &str, mine: String, theirs: String| {
            Error::input(
                path,
                format!(
                    "{what} {mine} differs from {theirs} in {}",
                    first_path.display()
                ),
            )
        };
        if p.shard.count != count {
            return Err(differs(
                "shard count",
                p.shard.count.to_string(),
                count.to_string(),
            ));
        }
        if p.model_sha256 != first.model_sha256 {
            return Err(differs(
                "model (sha256",
                format!("{})", &p.model_sha256),
                first.model_sha256.clone(),
            ));
        }
        if p.labels != first.labels {
            return Err(differs(
                "labels",
                p.labels.join(","),
                first.labels.join(","),
            ));
        }
        if p.preprocess != first.preprocess {
            return Err(differs(
                "preprocessing",
                p.preprocess.describe(),
                first.preprocess.describe(),
            ));
        }
        if p.top_k != first.top_k {
            return Err(differs(
                "top-k",
                p.top_k.to_string(),
                first.top_k.to_string(),
            ));
        }
        if p.listed != first.listed {
            return Err(differs(
                "folder listing of",
                format!("{} files", p.listed),
                format!("{} files", first.listed),
            ));
        }
        let slot = &mut owner[p.shard.index as usize];
        if let Some(other) = slot {
            return Err(Error::input(
                path,
                format!("shard {} given twice (also {})", p.shard, other.display()),
            ));
        }
        *slot = Some(path);
    }
    let missing: Vec<String> = (0..count)
        .filter(|&i| owner[i as usize].is_none())
        .map(|i| format!("{i}/{count}"))
        .collect();
    if !missing.is_empty() {
        return Err(Error::input(
            first_path,
            format!(
                "shard {} missing: give the parts of all {count} shards",
                missing.join(", ")
            ),
        ));
    }

    let mut merged = first.clone();
    merged.shard = Shard::ALL;
    let mut eval = Evaluation::new(first.labels.clone(), first.top_k);
    merged.files = 0;
    merged.seconds = 0.0;
    merged.skipped.clear();
    merged.mistakes.clear();
    for (_, p) in &parts {
        eval.absorb(&p.confusion, p.top_k_hits);
        merged.files += p.files;
        merged.seconds += p.seconds;
        merged.skipped.extend_from_slice(&p.skipped);
        merged.mistakes.extend_from_slice(&p.mistakes);
    }
    merged.confusion = eval.confusion.clone();
    merged.top_k_hits = eval.top_k_hits();
    if merged.files != merged.listed {
        return Err(Error::input(
            first_path,
            format!(
                "the parts hold {} files but the folder listed {}",
                merged.files, merged.listed
            ),
        ));
    }
    merged.canonical_order();
    Ok(merged)
}
