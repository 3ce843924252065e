//! fennec-train: fit CNN image classifiers from YAML configs with burn, and export
//! them as self-describing ONNX files for the `fennec` runtime.
//!
//! Reading order: [`config`] (the YAML and shape inference) → [`model`] (the burn
//! network) → [`data`] (folders to batches) → [`train`] (the loop of `fit`, with
//! [`loss_accuracy`] and [`seeds`]) → [`run_dir`] (what a run leaves on disk) →
//! [`export`] (checkpoint to ONNX).
pub mod augment;
pub mod config;
pub mod conv;
pub mod data;
pub mod device;
pub mod export;
pub mod history;
pub mod loss_accuracy;
pub mod memory;
pub mod model;
pub mod output;
pub mod plot;
pub mod preview;
pub mod run_dir;
pub mod seeds;
pub mod split;
pub mod train;
