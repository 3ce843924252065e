//! Typed errors of the runtime library.
//!
//! Every variant carries the file it is about, so that a caller can print one line
//! (`{error}`) that names the file and the cause. Binaries wrap these in `anyhow`.

use std::path::PathBuf;

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
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
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
    #[error("invalid preprocessing spec: {0}")]
    Preprocess(String),
    #[error("{path}: {reason}")]
    Folder { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Labels { path: PathBuf, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `tract`'s errors are `anyhow` chains; keep the whole chain on one line.
pub(crate) fn chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    parts.dedup();
    parts.join(": ").replace('\n', " ")
}
