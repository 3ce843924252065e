//! The run directory: the one module that knows its layout, writes its files for
//! `fit` and reads them back for `fit --resume`, `evaluate` and `export`.
//!
//! ```text
//! RUN_DIR/config.yaml        resolved config (CLI overrides applied)
//! RUN_DIR/classes.json       ["cat", "dog"]: output index → class name
//! RUN_DIR/history.json|.csv  per-epoch metrics; history.png, their plot
//! RUN_DIR/summary.json       data counts, skipped files, device, threads, seed, times
//! RUN_DIR/best.json          {"epoch": N, "val_loss": ...}: best epoch by validation loss
//! RUN_DIR/checkpoints/epoch-NNN/{model.bpk, optim.bpk, state.json}
//! RUN_DIR/model.onnx         exported at the end of fit
//! ```
//!
//! Every file is written whole or not at all ([`crate::output`]); checkpoints are
//! folders written aside and renamed into place ([`checkpoint`]). [`summary`] owns
//! `summary.json`.

pub mod checkpoint;
pub mod summary;

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::config::{Config, Plan};
use crate::history::{self, EpochRecord};
use crate::model::Net;
use crate::output::{WriteError, write_file, write_json};
use crate::plot::{PlotError, plot_history};

pub use checkpoint::{Best, TrainState, Which};

pub const CONFIG_FILE: &str = "config.yaml";
pub const CLASSES_FILE: &str = "classes.json";
pub const HISTORY_JSON: &str = "history.json";
pub const HISTORY_CSV: &str = "history.csv";
pub const HISTORY_PNG: &str = "history.png";
pub const SUMMARY_FILE: &str = "summary.json";
pub const BEST_FILE: &str = "best.json";
pub const CHECKPOINTS_DIR: &str = "checkpoints";
pub const MODEL_FILE: &str = "model.bpk";
pub const OPTIM_FILE: &str = "optim.bpk";
pub const STATE_FILE: &str = "state.json";
/// The model `fit` exports, and `export`'s default output.
pub const ONNX_FILE: &str = "model.onnx";

/// Errors reading or writing a run directory; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error(
        "{path}: not a fennec run directory (no config.yaml); train one with `fennec-train fit`"
    )]
    NotARun { path: PathBuf },
    /// Reading a file or folder (fs-err: the message names it).
    #[error(transparent)]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: no complete checkpoint yet (the run stopped before its first epoch ended)")]
    NoCheckpoint { path: PathBuf },
    #[error("{path}: no checkpoint for epoch {epoch}; kept: {kept}")]
    NoSuchEpoch {
        path: PathBuf,
        epoch: usize,
        kept: String,
    },
    #[error("{path}: does not fit the run's config ({config}): {message}")]
    Mismatch {
        path: PathBuf,
        config: PathBuf,
        message: String,
    },
    #[error("{path}: cannot write checkpoint: {message}; earlier checkpoints are intact")]
    CheckpointWrite { path: PathBuf, message: String },
}

/// A trained (or training) run directory: its config, classes and network plan.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub dir: PathBuf,
    pub config: Config,
    pub classes: Vec<String>,
    pub plan: Plan,
}

impl RunDir {
    /// Reads `config.yaml` and `classes.json` and resolves the plan.
    pub fn open(dir: &Path) -> Result<RunDir, RunDirError> {
        let config_path = dir.join(CONFIG_FILE);
        if !config_path.is_file() {
            return Err(RunDirError::NotARun {
                path: dir.to_path_buf(),
            });
        }
        let invalid = |message: String| RunDirError::Invalid {
            path: config_path.clone(),
            message,
        };
        let config = Config::load(&config_path).map_err(|e| {
            let message = e.to_string();
            let prefix = format!("{}: ", config_path.display());
            invalid(
                message
                    .strip_prefix(&prefix)
                    .unwrap_or(&message)
                    .to_string(),
            )
        })?;
        let classes = read_classes(&dir.join(CLASSES_FILE))?;
        let plan = config
            .resolve(classes.len())
            .map_err(|e| invalid(e.to_string()))?;
        Ok(RunDir {
            dir: dir.to_path_buf(),
            config,
            classes,
            plan,
        })
    }

    /// The resolved config and the class names, at the start of `fit` (again on
    /// resume: `--epochs` may have changed the config).
    pub fn write_setup(dir: &Path, config: &Config, classes: &[String]) -> Result<(), WriteError> {
        let path = dir.join(CONFIG_FILE);
        let yaml = serde_yaml::to_string(config)
            .map_err(|e| WriteError::new(&path, std::io::Error::other(e)))?;
        write_file(&path, yaml.as_bytes())?;
        write_json(&dir.join(CLASSES_FILE), classes)
    }

    /// Everything an epoch leaves behind: its checkpoint (returned), the history
    /// files, `best.json` when it `improved`, the pruned checkpoints (the last and the
    /// best are kept) and the history plot. `net` is the evaluation copy. A plot that
    /// cannot be drawn does not fail the epoch: its error comes back with the path.
    pub fn record_epoch(
        dir: &Path,
        state: &TrainState,
        net: &Net,
        optim: &burn::optim::ModuleOptimizer,
        improved: bool,
    ) -> Result<(PathBuf, Option<PlotError>), RunDirError> {
        let saved = checkpoint::save(dir, state, net, optim)?;
        write_json(&dir.join(HISTORY_JSON), &state.history)?;
        let csv_path = dir.join(HISTORY_CSV);
        let csv = history::to_csv(&state.history).map_err(|e| WriteError::new(&csv_path, e))?;
        write_file(&csv_path, &csv)?;
        if improved {
            write_json(&dir.join(BEST_FILE), &state.best)?;
        }
        let mut keep = vec![state.epoch];
        keep.extend(state.best.map(|b| b.epoch));
        checkpoint::prune(dir, &keep)?;
        let plot = plot_history(&dir.join(HISTORY_PNG), &state.history).err();
        Ok((saved, plot))
    }
}

/// Reads `classes.json` (a JSON array of at least two class names).
pub fn read_classes(path: &Path) -> Result<Vec<String>, RunDirError> {
    let classes: Vec<String> = read_json(path, "expected a list of class names: ")?;
    if classes.len() < 2 {
        return Err(RunDirError::Invalid {
            path: path.to_path_buf(),
            message: "fewer than 2 classes".into(),
        });
    }
    Ok(classes)
}

/// Reads `best.json`, if present.
pub fn read_best(dir: &Path) -> Result<Option<Best>, RunDirError> {
    let path = dir.join(BEST_FILE);
    if !path.exists() {
        return Ok(None);
    }
    read_json(&path, "").map(Some)
}

/// Reads and parses a JSON file; `what` prefixes the parse error.
fn read_json<T: DeserializeOwned>(path: &Path, what: &str) -> Result<T, RunDirError> {
    let bytes = fs_err::read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| RunDirError::Invalid {
        path: path.to_path_buf(),
        message: format!("{what}{e}"),
    })
}

/// The record of `epoch`, for the per-epoch files (used by the checkpoint loaders).
fn record_of(state: &TrainState, path: PathBuf) -> Result<EpochRecord, RunDirError> {
    state.record().cloned().ok_or_else(|| RunDirError::Invalid {
        path,
        message: format!("no history record for epoch {}", state.epoch),
    })
}
