//! fennec-train: fit CNN image classifiers from YAML configs with burn, and export
//! them as self-describing ONNX files for the `fennec` runtime.
//!
//! Reading order: [`config`] (the YAML and shape inference) → [`model`] (the burn
//! network) → [`history`] (per-epoch records).
pub mod augment;
pub mod checkpoint;
pub mod config;
pub mod conv;
pub mod data;
pub mod device;
pub mod export;
pub mod history;
pub mod memory;
pub mod model;
pub mod plot;
pub mod preview;
pub mod split;
pub mod train;
