//! Run directories and their checkpoints: how `fit` saves an epoch so that a kill
//! loses nothing, and how `fit --resume`, `evaluate` and `export` read it back.
//!
//! Layout of a run directory:
//!
//! ```text
//! RUN_DIR/config.yaml        resolved config (CLI overrides applied)
//! RUN_DIR/classes.json       ["cat", "dog"]: output index → class name
//! RUN_DIR/history.json|.csv  per-epoch metrics (history.png when plotted)
//! RUN_DIR/summary.json       data counts, skipped files, device, threads, seed, times
//! RUN_DIR/best.json          {"epoch": N, "val_loss": ...}: best epoch by validation loss
//! RUN_DIR/checkpoints/epoch-NNN/{model.bpk, optim.bpk, state.json}
//! RUN_DIR/model.onnx         exported at the end of fit
//! ```
//!
//! A checkpoint is written into a hidden temporary folder and renamed into place,
//! so `epoch-NNN/` is either whole or absent. Only the last and the best epoch are
//! kept (older ones are deleted once a newer checkpoint is in place): the last to
//! resume from, the best to export. `state.json` holds everything besides the
//! weights and the optimizer that resume needs (history, early-stopping counters).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use fennec_runtime::atomic::write_atomic;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Config, Plan};
use crate::history::EpochRecord;
use crate::model::Net;

pub const CONFIG_FILE: &str = "config.yaml";
pub const CLASSES_FILE: &str = "classes.json";
pub const BEST_FILE: &str = "best.json";
pub const SUMMARY_FILE: &str = "summary.json";
pub const CHECKPOINTS_DIR: &str = "checkpoints";
pub const MODEL_FILE: &str = "model.bpk";
pub const OPTIM_FILE: &str = "optim.bpk";
pub const STATE_FILE: &str = "state.json";

/// Errors reading or writing a run directory; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(
        "{path}: not a fennec run directory (no config.yaml); train one with `fennec-train fit`"
    )]
    NotARun { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
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
    #[error("{path}: cannot write: {message}")]
    Write { path: PathBuf, message: String },
    #[error("{path}: cannot write checkpoint: {message}; earlier checkpoints are intact")]
    CheckpointWrite { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Which checkpoint of a run: `best`, `last`, or an epoch number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Best,
    Last,
    Epoch(usize),
}

impl FromStr for Which {
    type Err = String;
    fn from_str(s: &str) -> Result<Which, String> {
        match s {
            "best" => Ok(Which::Best),
            "last" => Ok(Which::Last),
            n => match n.parse::<usize>() {
                Ok(e) if e >= 1 => Ok(Which::Epoch(e)),
                _ => Err(format!(
                    "'{s}' is not a checkpoint: use best, last, or an epoch number (1, 2, ...)"
                )),
            },
        }
    }
}

impl std::fmt::Display for Which {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Which::Best => f.write_str("best"),
            Which::Last => f.write_str("last"),
            Which::Epoch(n) => write!(f, "{n}"),
        }
    }
}

/// The best epoch so far by validation loss (`best.json`, and inside `state.json`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub epoch: usize,
    pub val_loss: f64,
}

/// Everything besides weights and optimizer that continuing a run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Last finished epoch (1-based); this checkpoint holds the weights after it.
    pub epoch: usize,
    /// One record per finished epoch, `history[i].epoch == i + 1`.
    pub history: Vec<EpochRecord>,
    /// Best epoch by validation loss (an improvement must beat the previous best by
    /// more than early stopping's `min_delta`).
    pub best: Option<Best>,
    /// Epochs since the last improvement (early stopping's counter).
    pub wait: usize,
    /// True when early stopping ended the run after this epoch.
    pub stopped_early: bool,
    /// `sha256:<hex>` of the float parameters (BatchNorm statistics included), in
    /// module order, as little-endian f32: equal hashes mean bit-identical weights.
    pub weights_sha256: String,
    pub seed: u64,
    /// Compute threads the run used (CPU results are reproducible for a fixed count).
    pub threads: usize,
    pub device: String,
    /// Data directory, as given to `fit` (the default for `--resume`).
    pub data_dir: PathBuf,
    pub fennec_version: String,
}

impl TrainState {
    /// The record of the epoch this checkpoint holds.
    pub fn record(&self) -> Option<&EpochRecord> {
        self.history.iter().find(|r| r.epoch == self.epoch)
    }
}

/// A trained (or training) run directory.
#[derive(Debug, Clone)]
pub struct Run {
    pub dir: PathBuf,
    pub config: Config,
    pub classes: Vec<String>,
    pub plan: Plan,
}

impl Run {
    /// Reads `config.yaml` and `classes.json` and resolves the plan.
    pub fn open(dir: &Path) -> Result<Run, CheckpointError> {
        let config_path = dir.join(CONFIG_FILE);
        if !config_path.is_file() {
            return Err(CheckpointError::NotARun {
                path: dir.to_path_buf(),
            });
        }
        let config = Config::load(&config_path).map_err(|e| CheckpointError::Invalid {
            path: config_path.clone(),
            message: strip(&e.to_string(), &config_path),
        })?;
        let classes = read_classes(&dir.join(CLASSES_FILE))?;
        let plan = config
            .resolve(classes.len())
            .map_err(|message| CheckpointError::Invalid {
                path: config_path,
                message,
            })?;
        Ok(Run {
            dir: dir.to_path_buf(),
            config,
            classes,
            plan,
        })
    }

    pub fn checkpoints_dir(&self) -> PathBuf {
        self.dir.join(CHECKPOINTS_DIR)
    }

    /// Epochs with a complete checkpoint, ascending.
    pub fn epochs(&self) -> Result<Vec<usize>, CheckpointError> {
        list_checkpoints(&self.checkpoints_dir())
    }

    /// The epoch `which` names, checked to exist.
    pub fn resolve(&self, which: Which) -> Result<usize, CheckpointError> {
        let epochs = self.epochs()?;
        let last = *epochs.last().ok_or_else(|| CheckpointError::NoCheckpoint {
            path: self.dir.clone(),
        })?;
        let epoch = match which {
            Which::Last => last,
            Which::Epoch(n) => n,
            Which::Best => match read_best(&self.dir)? {
                Some(b) => b.epoch,
                None => self.state(last)?.best.map_or(last, |b| b.epoch),
            },
        };
        if !epochs.contains(&epoch) {
            let kept = epochs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(CheckpointError::NoSuchEpoch {
                path: self.checkpoints_dir(),
                epoch,
                kept,
            });
        }
        Ok(epoch)
    }

    /// `checkpoints/epoch-NNN`.
    pub fn checkpoint_dir(&self, epoch: usize) -> PathBuf {
        self.checkpoints_dir().join(epoch_dir_name(epoch))
    }

    /// The `state.json` of an epoch's checkpoint.
    pub fn state(&self, epoch: usize) -> Result<TrainState, CheckpointError> {
        let path = self.checkpoint_dir(epoch).join(STATE_FILE);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Invalid {
            path,
            message: e.to_string(),
        })
    }

    /// The network of a checkpoint on `device` (an autodiff device gives a trainable
    /// network), and that epoch's history record.
    pub fn load_net(
        &self,
        which: Which,
        device: &Device,
    ) -> Result<(Net, EpochRecord), CheckpointError> {
        let epoch = self.resolve(which)?;
        let state = self.state(epoch)?;
        let net = self.load_weights(epoch, device)?;
        let record = state
            .record()
            .cloned()
            .ok_or_else(|| CheckpointError::Invalid {
                path: self.checkpoint_dir(epoch).join(STATE_FILE),
                message: format!("no history record for epoch {epoch}"),
            })?;
        Ok((net, record))
    }

    /// Weights of an epoch's checkpoint, into a network built from the run's plan.
    pub fn load_weights(&self, epoch: usize, device: &Device) -> Result<Net, CheckpointError> {
        let path = self.checkpoint_dir(epoch).join(MODEL_FILE);
        if !path.is_file() {
            return Err(CheckpointError::Io {
                path,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "missing model file"),
            });
        }
        Net::new(&self.plan, device)
            .try_load_file(&path)
            .map_err(|e| CheckpointError::Mismatch {
                path,
                config: self.dir.join(CONFIG_FILE),
                message: e.to_string().replace('\n', " "),
            })
    }

    /// Everything to continue training after `epoch`: the trainable network on
    /// `device` (autodiff), the optimizer with its moments, and the state.
    pub fn load_training(
        &self,
        epoch: usize,
        device: &Device,
        optim: burn::optim::ModuleOptimizer,
    ) -> Result<(Net, burn::optim::ModuleOptimizer, TrainState), CheckpointError> {
        let state = self.state(epoch)?;
        let net = self.load_weights(epoch, device)?;
        let path = self.checkpoint_dir(epoch).join(OPTIM_FILE);
        let optim = optim.load(&path).map_err(|e| CheckpointError::Mismatch {
            path,
            config: self.dir.join(CONFIG_FILE),
            message: e.to_string().replace('\n', " "),
        })?;
        Ok((net, optim, state))
    }
}

/// `epoch-007`.
pub fn epoch_dir_name(epoch: usize) -> String {
    format!("epoch-{epoch:03}")
}

fn list_checkpoints(dir: &Path) -> Result<Vec<usize>, CheckpointError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut epochs: Vec<usize> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix("epoch-")?.parse::<usize>().ok()?;
            e.path().join(STATE_FILE).is_file().then_some(n)
        })
        .collect();
    epochs.sort_unstable();
    Ok(epochs)
}

/// Reads `classes.json` (a JSON array of class names).
pub fn read_classes(path: &Path) -> Result<Vec<String>, CheckpointError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let classes: Vec<String> =
        serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Invalid {
            path: path.to_path_buf(),
            message: format!("expected a list of class names: {e}"),
        })?;
    if classes.len() < 2 {
        return Err(CheckpointError::Invalid {
            path: path.to_path_buf(),
            message: "fewer than 2 classes".into(),
        });
    }
    Ok(classes)
}

/// Reads `best.json`, if present.
pub fn read_best(dir: &Path) -> Result<Option<Best>, CheckpointError> {
    let path = dir.join(BEST_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| CheckpointError::Invalid {
                    path,
                    message: e.to_string(),
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&path)(e)),
    }
}

/// Writes `value` as pretty JSON, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), CheckpointError> {
    write_atomic(path, |w| {
        serde_json::to_writer_pretty(&mut *w, value)?;
        std::io::Write::write_all(w, b"\n")
    })
    .map_err(|e| CheckpointError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Writes the checkpoint of `state.epoch`: `net` must be the evaluation copy
/// (`net.valid()`, whose BatchNorm statistics are synced). Written to a temporary
/// folder and renamed, so the checkpoint is whole or absent; on error nothing new
/// is left behind and earlier checkpoints are untouched.
pub fn save_checkpoint(
    run_dir: &Path,
    state: &TrainState,
    net: &Net,
    optim: &burn::optim::ModuleOptimizer,
) -> Result<PathBuf, CheckpointError> {
    let root = run_dir.join(CHECKPOINTS_DIR);
    let target = root.join(epoch_dir_name(state.epoch));
    let tmp = root.join(format!(
        ".{}.tmp-{}",
        epoch_dir_name(state.epoch),
        std::process::id()
    ));
    let fail = |path: &Path, message: String| CheckpointError::CheckpointWrite {
        path: path.to_path_buf(),
        message,
    };
    let result = (|| {
        std::fs::create_dir_all(&root).map_err(|e| fail(&root, e.to_string()))?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| fail(&tmp, e.to_string()))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| fail(&tmp, e.to_string()))?;
        let model = tmp.join(MODEL_FILE);
        net.clone()
            .save_file(&model)
            .map_err(|e| fail(&target.join(MODEL_FILE), e.to_string()))?;
        let opt = tmp.join(OPTIM_FILE);
        optim
            .save(&opt)
            .map_err(|e| fail(&target.join(OPTIM_FILE), e.to_string()))?;
        write_json(&tmp.join(STATE_FILE), state)
            .map_err(|e| fail(&target.join(STATE_FILE), strip_write(&e)))?;
        if target.exists() {
            // A stale copy of this epoch (a run resumed from an earlier one): replace it.
            std::fs::remove_dir_all(&target).map_err(|e| fail(&target, e.to_string()))?;
        }
        std::fs::rename(&tmp, &target).map_err(|e| fail(&target, e.to_string()))?;
        if let Ok(d) = std::fs::File::open(&root) {
            let _ = d.sync_all();
        }
        Ok(target.clone())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Deletes checkpoints other than `keep` (and leftover temporary folders).
pub fn prune_checkpoints(run_dir: &Path, keep: &[usize]) -> Result<(), CheckpointError> {
    let root = run_dir.join(CHECKPOINTS_DIR);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Ok(());
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let stale_tmp = name.starts_with(".epoch-") && name.contains(".tmp-");
        let old = name
            .strip_prefix("epoch-")
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| !keep.contains(&n));
        if stale_tmp || old {
            std::fs::remove_dir_all(e.path()).map_err(io(&e.path()))?;
        }
    }
    Ok(())
}

/// `sha256:<hex>` of all float parameters of `net` in module order (little-endian
/// f32 values; BatchNorm running statistics included). Call on `net.valid()`.
pub fn weights_sha256(net: &Net) -> String {
    struct Hasher(Sha256);
    impl ModuleVisitor for Hasher {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let values: Vec<f32> = p
                .val()
                .try_into_vec_as::<f32>()
                .expect("float parameters read as f32");
            for v in values {
                self.0.update(v.to_le_bytes());
            }
        }
    }
    let mut h = Hasher(Sha256::new());
    net.visit(&mut h);
    let digest = h.0.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn strip(message: &str, path: &Path) -> String {
    message
        .strip_prefix(&format!("{}: ", path.display()))
        .unwrap_or(message)
        .to_string()
}

fn strip_write(e: &CheckpointError) -> String {
    match e {
        CheckpointError::Write { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_parses() {
        assert_eq!("best".parse::<Which>(), Ok(Which::Best));
        assert_eq!("last".parse::<Which>(), Ok(Which::Last));
        assert_eq!("12".parse::<Which>(), Ok(Which::Epoch(12)));
        assert!("0".parse::<Which>().is_err());
        assert!("first".parse::<Which>().unwrap_err().contains("best, last"));
    }

    const TINY: &str = r#"
name: tiny
input: {height: 6, width: 6, channels: 3}
layers:
  - conv2d: {filters: 2, kernel: 3, activation: relu}
  - batchnorm: {}
  - flatten
  - dense: {activation: softmax}
"#;

    fn run_dir(dir: &Path, yaml: &str) -> Run {
        std::fs::write(dir.join(CONFIG_FILE), yaml).unwrap();
        std::fs::write(dir.join(CLASSES_FILE), r#"["a", "b"]"#).unwrap();
        Run::open(dir).unwrap()
    }

    fn state(epoch: usize, hash: String) -> TrainState {
        TrainState {
            epoch,
            history: (1..=epoch)
                .map(|e| EpochRecord {
                    epoch: e,
                    train_loss: 1.0,
                    train_accuracy: 0.5,
                    val_loss: 1.0 / e as f64,
                    val_accuracy: 0.5,
                    val_binary_accuracy: 0.5,
                    train_seconds: 1.0,
                    images_per_second: 1.0,
                    learning_rate: 1e-3,
                })
                .collect(),
            best: Some(Best {
                epoch,
                val_loss: 1.0 / epoch as f64,
            }),
            wait: 0,
            stopped_early: false,
            weights_sha256: hash,
            seed: 42,
            threads: 1,
            device: "cpu".into(),
            data_dir: "data".into(),
            fennec_version: "test".into(),
        }
    }

    #[test]
    fn save_load_prune_and_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let run = run_dir(dir.path(), TINY);
        let device = Device::flex();
        assert!(matches!(
            run.resolve(Which::Last),
            Err(CheckpointError::NoCheckpoint { .. })
        ));
        let net = Net::new(&run.plan, &device);
        let hash = weights_sha256(&net);
        let optim = burn::optim::AdamConfig::new().init();
        for e in 1..=3 {
            save_checkpoint(dir.path(), &state(e, hash.clone()), &net, &optim).unwrap();
        }
        write_json(
            &dir.path().join(BEST_FILE),
            &Best {
                epoch: 2,
                val_loss: 0.5,
            },
        )
        .unwrap();
        prune_checkpoints(dir.path(), &[2, 3]).unwrap();
        assert_eq!(run.epochs().unwrap(), vec![2, 3]);
        assert_eq!(run.resolve(Which::Best).unwrap(), 2);
        assert_eq!(run.resolve(Which::Last).unwrap(), 3);
        let e = run.resolve(Which::Epoch(1)).unwrap_err().to_string();
        assert!(e.contains("no checkpoint for epoch 1; kept: 2, 3"), "{e}");

        let (loaded, record) = run.load_net(Which::Best, &device).unwrap();
        assert_eq!(record.epoch, 2);
        assert_eq!(
            weights_sha256(&loaded),
            hash,
            "weights round-trip bit-exactly"
        );

        // The same checkpoint under a config with another layer list: clear error.
        let other = TINY.replace("filters: 2", "filters: 3");
        let run = run_dir(dir.path(), &other);
        let e = run.load_net(Which::Last, &device).unwrap_err().to_string();
        assert!(
            e.contains("epoch-003/model.bpk") && e.contains("does not fit the run's config"),
            "{e}"
        );
    }
}
