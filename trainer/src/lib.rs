//! fennec-train: fit CNN image classifiers from YAML configs with burn, and export
//! them as self-describing ONNX files for the `fennec` runtime.
//!
//! Reading order: [`config`] (the YAML and shape inference) → [`model`] (the burn
//! network) → [`history`] (per-epoch records).
pub mod config;
pub mod model;
pub mod conv;
pub mod memory;
pub mod history;
pub mod augment;
pub mod plot;
pub mod split;
pub mod preview;
pub mod export;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod train;
