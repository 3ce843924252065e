//! `fennec eval --predictions out.jsonl [--resume]`: one JSON line per file, kept
//! on disk as the run goes, so a killed run (even `kill -9`) resumes where it
//! stopped and ends with the report of an uninterrupted run.
//!
//! The first line is a [`Header`] naming the model (SHA-256), labels, k and shard;
//! each next line is one file's [`Prediction`]. Lines are appended with one
//! `write` call each on a file opened for appending, so a kill leaves at most the
//! last line torn, never a line mixed with another; `--resume` drops a torn last
//! line, replays the complete ones and scores only the files not in them. (Lines
//! reach the OS at once but are not synced to disk: a power cut can lose the
//! last ones, which a resume then scores again.)

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::shard::Shard;

/// The `format` field of the header line.
pub const FORMAT: &str = "fennec-predictions";
pub const VERSION: u32 = 1;

/// The first line: what the file's predictions were made with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub model_sha256: String,
    pub labels: Vec<String>,
    pub top_k: usize,
    pub shard: Shard,
}

impl Header {
    pub fn new(model_sha256: String, labels: Vec<String>, top_k: usize, shard: Shard) -> Header {
        Header {
            format: FORMAT.into(),
            version: VERSION,
            model_sha256,
            labels,
            top_k,
            shard,
        }
    }
}

/// One file's line: its prediction, or why it was skipped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Path relative to the scored folder, `/`-separated.
    pub file: String,
    /// The true label (the class folder).
    #[serde(rename = "true")]
    pub truth: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f32>,
    /// The k most likely labels, most likely first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<Vec<String>>,
    /// Why the file was not scored: kind (`truncated`, `corrupt`, ...) and reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// An open predictions file, appended to line by line.
pub struct PredictionsFile {
    path: PathBuf,
    file: std::fs::File,
}

impl PredictionsFile {
    /// Starts `path` with `header`; with `resume`, continues it instead when it
    /// exists, returning its complete lines by file (a torn last line is cut off).
    /// Without `resume` an existing non-empty file is an error, so a finished
    /// run is never overwritten by accident.
    pub fn open(
        path: &Path,
        header: &Header,
        resume: bool,
    ) -> Result<(PredictionsFile, HashMap<String, Prediction>)> {
        let bad = |reason: String| Error::input(path, reason);
        let exists_with_data = fs_err::metadata(path).is_ok_and(|m| m.len() > 0);
        if exists_with_data && !resume {
            return Err(bad(
                "already exists: add --resume to continue it, or remove it".into(),
            ));
        }
        let mut file = fs_err::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        // Keep whole lines only: cut a torn tail (a kill in the middle of a write).
        let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if whole < bytes.len() {
            file.file().set_len(whole as u64)?;
            file.seek(SeekFrom::End(0))?;
        }
        let mut lines = bytes[..whole].split(|&b| b == b'\n');
        let mut done = HashMap::new();
        match lines.next().filter(|l| !l.is_empty()) {
            None => {
                let mut out = PredictionsFile {
                    path: path.to_path_buf(),
                    file: file.into_parts().0,
                };
                out.write_line(header)?;
                return Ok((out, done));
            }
            Some(first) => {
                let found: Header = serde_json::from_slice(first)
                    .map_err(|e| bad(format!("line 1 is not a fennec predictions header ({e})")))?;
                if let Some(what) = header_mismatch(&found, header) {
                    return Err(bad(format!(
                        "was written with {what}; remove it or give another --predictions file"
                    )));
                }
            }
        }
        for (n, line) in lines.enumerate().filter(|(_, l)| !l.is_empty()) {
            let p: Prediction = serde_json::from_slice(line)
                .map_err(|e| bad(format!("line {} is not a prediction ({e})", n + 2)))?;
            done.insert(p.file.clone(), p);
        }
        Ok((
            PredictionsFile {
                path: path.to_path_buf(),
                file: file.into_parts().0,
            },
            done,
        ))
    }

    /// Appends one prediction as a whole line (one `write` call).
    pub fn append(&mut self, p: &Prediction) -> Result<()> {
        self.write_line(p)
    }

    fn write_line(&mut self, value: &impl Serialize) -> Result<()> {
        let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(|e| Error::input(&self.path, format!("cannot append: {e}")))
    }
}

/// What differs between a file's header and this run's, in words.
fn header_mismatch(found: &Header, wanted: &Header) -> Option<String> {
    if found.format != FORMAT || found.version != VERSION {
        Some(format!("format {} version {}", found.format, found.version))
    } else if found.model_sha256 != wanted.model_sha256 {
        Some(format!("another model (sha256 {})", found.model_sha256))
    } else if found.labels != wanted.labels {
        Some(format!("other labels ({})", found.labels.join(",")))
    } else if found.top_k != wanted.top_k {
        Some(format!("top-k {}", found.top_k))
    } else if found.shard != wanted.shard {
        Some(format!("shard {}", found.shard))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header::new("abc".into(), vec!["a".into(), "b".into()], 2, Shard::ALL)
    }

    fn scored(file: &str) -> Prediction {
        Prediction {
            file: file.into(),
            truth: "a".into(),
            predicted: Some("b".into()),
            confidence: Some(0.75),
            top_k: Some(vec!["b".into(), "a".into()]),
            skipped: None,
            reason: None,
        }
    }

    #[test]
    fn resume_cuts_a_torn_line_and_replays_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        let (mut f, done) = PredictionsFile::open(&path, &header(), false).unwrap();
        assert!(done.is_empty());
        f.append(&scored("a/1.png")).unwrap();
        f.append(&scored("a/2.png")).unwrap();
        drop(f);
        // A kill in the middle of the third line.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(br#"{"file":"a/3.png","tr"#);
        std::fs::write(&path, &bytes).unwrap();

        assert!(PredictionsFile::open(&path, &header(), false).is_err());
        let (mut f, done) = PredictionsFile::open(&path, &header(), true).unwrap();
        assert_eq!(done.len(), 2);
        assert_eq!(done["a/2.png"], scored("a/2.png"));
        f.append(&scored("a/3.png")).unwrap();
        drop(f);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(text.ends_with("}\n") && !text.contains("\"tr{"), "{text}");
    }

    #[test]
    fn resume_refuses_another_model_or_shard() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        PredictionsFile::open(&path, &header(), false).unwrap();
        let mut other = header();
        other.model_sha256 = "def".into();
        let e = PredictionsFile::open(&path, &other, true)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("p.jsonl") && e.contains("another model"), "{e}");
        let mut other = header();
        other.shard = Shard::new(1, 2).unwrap();
        let e = PredictionsFile::open(&path, &other, true)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("shard 0/1"), "{e}");
    }

    #[test]
    fn a_torn_header_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        std::fs::write(&path, br#"{"format":"fenn"#).unwrap();
        let (_f, done) = PredictionsFile::open(&path, &header(), true).unwrap();
        assert!(done.is_empty());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with(r#"{"format":"fennec-predictions""#),
            "{text}"
        );
        assert_eq!(text.lines().count(), 1);
    }
}
