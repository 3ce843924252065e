//! Every file the trainer writes (run directories, exported models, split reports,
//! previews) goes through [`write_file`]: whole or not at all (the runtime's atomic
//! write), and a failure names the file.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// A file that could not be written; the previous version, if any, is intact. The
/// reason is part of the one-line message (not a separate cause, which would print
/// it twice).
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot write: {error}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    pub error: std::io::Error,
}

impl WriteError {
    pub fn new(path: &Path, error: impl Into<std::io::Error>) -> WriteError {
        WriteError {
            path: path.to_path_buf(),
            error: error.into(),
        }
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    fennec_runtime::atomic::write_bytes_atomic(path, bytes).map_err(|e| WriteError::new(path, e))
}

/// Writes `value` as pretty JSON with a final newline, atomically.
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), WriteError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| WriteError::new(path, e))?;
    bytes.push(b'\n');
    write_file(path, &bytes)
}
