//! Typed errors of the runtime library.
//!
//! One policy: the library returns these (thiserror), the binary wraps them in
//! `anyhow`. An error about a file names it, so that a caller can print one line
//! (`{error}`) with the file and the cause.

use std::path::{Path, PathBuf};

use tract_nnef::prelude::TractError;

/// Why one image could not be turned into a tensor. Kept separate from [`Error`]
/// because a folder scan reports and skips these instead of failing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: cannot read file: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("{path}: empty file (0 bytes)")]
    Empty { path: PathBuf },
    #[error("{path}: not an image (no JPEG, PNG, BMP, GIF, WebP or TIFF signature)")]
    NotAnImage { path: PathBuf },
    #[error("{path}: truncated {format} data: {reason}")]
    Truncated {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    #[error("{path}: corrupt {format} data: {reason}")]
    Corrupt {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    #[error("{path}: image is {width}x{height}, over the limit of {limit} megapixels")]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
        limit: f64,
    },
    #[error("{path}: unsupported {format} image: {reason}")]
    Unsupported {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
}

impl ImageError {
    /// A short machine-friendly category, used as the "reason" column of skip reports.
    pub fn kind(&self) -> &'static str {
        match self {
            ImageError::Unreadable { .. } => "unreadable",
            ImageError::Empty { .. } => "empty",
            ImageError::NotAnImage { .. } => "not_an_image",
            ImageError::Truncated { .. } => "truncated",
            ImageError::Corrupt { .. } => "corrupt",
            ImageError::TooLarge { .. } => "too_large",
            ImageError::Unsupported { .. } => "unsupported",
        }
    }

    /// The file the error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            ImageError::Unreadable { path, .. }
            | ImageError::Empty { path }
            | ImageError::NotAnImage { path }
            | ImageError::Truncated { path, .. }
            | ImageError::Corrupt { path, .. }
            | ImageError::TooLarge { path, .. }
            | ImageError::Unsupported { path, .. } => path,
        }
    }
}

/// Everything else the library can fail at: models, specs, folders.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A file that cannot be read: from `fs-err`, whose message names the file.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{path}: not a valid ONNX model: {reason}")]
    InvalidModel { path: PathBuf, reason: String },
    #[error("{path}: not an image classifier: {reason}")]
    NotAClassifier { path: PathBuf, reason: String },
    #[error("{path}: tract cannot run this model: {reason}")]
    Tract { path: PathBuf, reason: String },
    #[error("{path}: invalid fennec metadata key '{key}': {reason}")]
    Metadata {
        path: PathBuf,
        key: String,
        reason: String,
    },
    /// A spec that cannot make a tensor; callers add the file it came from.
    #[error("invalid preprocessing spec: {0}")]
    Preprocess(String),
    /// A folder, file list, pattern or labels file named by the user that cannot be used.
    #[error("{path}: {reason}")]
    Input { path: PathBuf, reason: String },
    #[error("cannot start decode threads: {0}")]
    DecodeThreads(#[from] rayon::ThreadPoolBuildError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn input(path: &Path, reason: impl Into<String>) -> Error {
        Error::Input {
            path: path.into(),
            reason: reason.into(),
        }
    }

    #[cfg(feature = "onnx")]
    pub(crate) fn invalid_model(path: &Path, reason: impl Into<String>) -> Error {
        Error::InvalidModel {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn not_a_classifier(path: &Path, reason: impl Into<String>) -> Error {
        Error::NotAClassifier {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// tract's error about the model at `path`.
    pub(crate) fn tract(path: &Path, e: &TractError) -> Error {
        Error::Tract {
            path: path.into(),
            reason: chain(e),
        }
    }
}

/// tract's errors are `anyhow` chains; keep the whole chain on one line.
pub(crate) fn chain(e: &TractError) -> String {
    let mut parts: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    parts.dedup();
    parts.join(": ").replace('\n', " ")
}
