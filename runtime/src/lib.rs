//! fennec-runtime: score images with an ONNX image classifier, in pure Rust.
//!
//! The library behind the `fennec` binary, and the home of the preprocessing
//! contract the trainer shares. Reading order for a newcomer:
//!
//! - [`decode`]: image file → pixels, safely (bad files become typed errors).
//! - [`preprocess`]: the [`Preprocess`] spec and pixels → input tensor.
//! - [`metadata`]: the keys a fennec ONNX file carries (labels, preprocessing).
//! - [`classifier`]: load an ONNX model with tract, run batches, get probabilities
//!   (the readers: `classifier/onnx.rs`, `classifier/nnef.rs`).
//! - [`scores`]: raw outputs → probabilities (softmax, sigmoid), top-k.
//! - [`kernels`]: fennec's own convolution + ReLU + max-pool and batch-1 dense
//!   ops, swapped into tract's graph where they apply (see bench/README.md), and
//!   the run-time SIMD dispatch the trainer shares ([`kernels::simd`]).
//! - [`folder`]: `<root>/<class>/<images>` folders and command-line file lists.
//! - [`pipeline`]: parallel decoding overlapped with batched inference.
//! - [`metrics`]: accuracy, precision, recall, F1, confusion matrix.
//! - [`shard`], [`part`], [`predictions`]: scoring a folder in shards, merging
//!   their partial reports, resuming a killed run; [`report`]: the HTML report
//!   (feature `report`). How to run them on a scheduler: docs/scale-out.md.
//! - [`atomic`]: files written whole or not at all.
//! - [`progress`]: the one progress-bar look of both binaries.
//! - [`serve`]: `fennec serve`, the classifier behind HTTP (feature `serve`).
//! - [`watch`]: `fennec watch`, scoring the new images of a folder exactly once.
//! - [`onnx_writer`]: writing ONNX files (used by the trainer's exporter and test
//!   fixtures; feature `onnx`, on by default).
//! - [`quantize`]: int8 post-training quantization of an ONNX classifier (QDQ).
//!
//! Errors ([`error`]) are typed (thiserror) and name the file; the `fennec` binary
//! (feature `cli`) adds clap and anyhow, which the library does not use.

pub mod atomic;
pub mod classifier;
pub mod decode;
pub mod error;
pub mod folder;
pub mod kernels;
pub mod metadata;
pub mod metrics;
#[cfg(feature = "onnx")]
pub mod onnx_writer;
pub mod part;
pub mod pipeline;
pub mod predictions;
pub mod preprocess;
pub mod progress;
#[cfg(feature = "onnx")]
pub mod quantize;
#[cfg(feature = "report")]
pub mod report;
pub mod scores;
#[cfg(feature = "serve")]
pub mod serve;
pub mod shard;
pub mod watch;

pub use classifier::{Classifier, LoadOptions, ModelInfo, Source};
pub use decode::DecodeLimits;
pub use error::{Error, ImageError, Result};
pub use metadata::ModelMetadata;
pub use preprocess::{ColorMode, Layout, Preprocess, PreprocessChanges, ResizeFilter, ResizeMode};
pub use scores::OutputKind;

/// fennec's version, written into exported models.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
