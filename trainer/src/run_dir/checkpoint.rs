//! Epoch checkpoints: how `fit` saves an epoch so that a kill loses nothing, and
//! how `fit --resume`, `evaluate` and `export` load one back.
//!
//! A checkpoint is written into a hidden temporary folder and renamed into place,
//! so `checkpoints/epoch-NNN/` is either whole or absent. Only the last and the best
//! epoch are kept (older ones are deleted once a newer checkpoint is in place): the
//! last to resume from, the best to export. `state.json` holds everything besides
//! the weights and the optimizer that resume needs (history, early-stopping
//! counters).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::ModuleOptimizer;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    CHECKPOINTS_DIR, CONFIG_FILE, MODEL_FILE, OPTIM_FILE, RunDir, RunDirError, STATE_FILE,
    read_best, read_json, record_of,
};
use crate::history::EpochRecord;
use crate::model::Net;
use crate::output::write_json;

/// Which checkpoint of a run: `best`, `last`, or an epoch number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Best,
    Last,
    Epoch(usize),
}

/// A `--checkpoint` value that is none of `best`, `last` or an epoch number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a checkpoint: use best, last, or an epoch number (1, 2, ...)")]
pub struct NotACheckpoint(String);

impl FromStr for Which {
    type Err = NotACheckpoint;
    fn from_str(s: &str) -> Result<Which, NotACheckpoint> {
        match s {
            "best" => Ok(Which::Best),
            "last" => Ok(Which::Last),
            n => match n.parse::<usize>() {
                Ok(e) if e >= 1 => Ok(Which::Epoch(e)),
                _ => Err(NotACheckpoint(s.to_string())),
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
    /// Before the first epoch of a new run.
    pub fn new(seed: u64) -> TrainState {
        TrainState {
            epoch: 0,
            history: vec![],
            best: None,
            wait: 0,
            stopped_early: false,
            weights_sha256: String::new(),
            seed,
            threads: 0,
            device: String::new(),
            data_dir: PathBuf::new(),
            fennec_version: fennec_runtime::VERSION.into(),
        }
    }

    /// The record of the epoch this checkpoint holds.
    pub fn record(&self) -> Option<&EpochRecord> {
        self.history.iter().find(|r| r.epoch == self.epoch)
    }
}

impl RunDir {
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.dir.join(CHECKPOINTS_DIR)
    }

    /// Epochs with a complete checkpoint, ascending.
    pub fn epochs(&self) -> Result<Vec<usize>, RunDirError> {
        list_checkpoints(&self.checkpoints_dir())
    }

    /// The epoch `which` names, checked to exist.
    pub fn resolve(&self, which: Which) -> Result<usize, RunDirError> {
        let epochs = self.epochs()?;
        let last = *epochs.last().ok_or_else(|| RunDirError::NoCheckpoint {
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
            return Err(RunDirError::NoSuchEpoch {
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
    pub fn state(&self, epoch: usize) -> Result<TrainState, RunDirError> {
        read_json(&self.checkpoint_dir(epoch).join(STATE_FILE), "")
    }

    /// The network of a checkpoint on `device` (an autodiff device gives a trainable
    /// network), and that epoch's history record.
    pub fn load_net(
        &self,
        which: Which,
        device: &Device,
    ) -> Result<(Net, EpochRecord), RunDirError> {
        let epoch = self.resolve(which)?;
        let state = self.state(epoch)?;
        let net = self.load_weights(epoch, device)?;
        let record = record_of(&state, self.checkpoint_dir(epoch).join(STATE_FILE))?;
        Ok((net, record))
    }

    /// Weights of an epoch's checkpoint, into a network built from the run's plan.
    pub fn load_weights(&self, epoch: usize, device: &Device) -> Result<Net, RunDirError> {
        let path = self.checkpoint_dir(epoch).join(MODEL_FILE);
        if !path.is_file() {
            return Err(RunDirError::Invalid {
                path,
                message: "missing model file".into(),
            });
        }
        Net::new(&self.plan, device)
            .try_load_file(&path)
            .map_err(|e| self.mismatch(path, e))
    }

    /// Everything to continue training after `epoch`: the trainable network on
    /// `device` (autodiff), the optimizer with its moments, and the state.
    pub fn load_training(
        &self,
        epoch: usize,
        device: &Device,
        optim: ModuleOptimizer,
    ) -> Result<(Net, ModuleOptimizer, TrainState), RunDirError> {
        let state = self.state(epoch)?;
        let net = self.load_weights(epoch, device)?;
        let path = self.checkpoint_dir(epoch).join(OPTIM_FILE);
        let optim = optim.load(&path).map_err(|e| self.mismatch(path, e))?;
        Ok((net, optim, state))
    }

    /// A checkpoint file that does not fit the run's config.
    fn mismatch(&self, path: PathBuf, e: impl std::fmt::Display) -> RunDirError {
        RunDirError::Mismatch {
            path,
            config: self.dir.join(CONFIG_FILE),
            message: e.to_string().replace('\n', " "),
        }
    }
}

/// `epoch-007`.
pub fn epoch_dir_name(epoch: usize) -> String {
    format!("epoch-{epoch:03}")
}

fn list_checkpoints(dir: &Path) -> Result<Vec<usize>, RunDirError> {
    let entries = match fs_err::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e.into()),
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

/// Writes the checkpoint of `state.epoch`: `net` must be the evaluation copy
/// (`net.valid()`, whose BatchNorm statistics are synced). Written to a temporary
/// folder and renamed, so the checkpoint is whole or absent; on error nothing new
/// is left behind and earlier checkpoints are untouched.
pub fn save(
    run_dir: &Path,
    state: &TrainState,
    net: &Net,
    optim: &ModuleOptimizer,
) -> Result<PathBuf, RunDirError> {
    let root = run_dir.join(CHECKPOINTS_DIR);
    let target = root.join(epoch_dir_name(state.epoch));
    let tmp = root.join(format!(
        ".{}.tmp-{}",
        epoch_dir_name(state.epoch),
        std::process::id()
    ));
    let fail = |path: &Path, message: String| RunDirError::CheckpointWrite {
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
            .map_err(|e| fail(&target.join(STATE_FILE), e.error.to_string()))?;
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
pub fn prune(run_dir: &Path, keep: &[usize]) -> Result<(), RunDirError> {
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
            fs_err::remove_dir_all(e.path())?;
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
    format!("sha256:{:x}", h.0.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run_dir::{BEST_FILE, CLASSES_FILE};

    #[test]
    fn which_parses() {
        assert_eq!("best".parse::<Which>(), Ok(Which::Best));
        assert_eq!("last".parse::<Which>(), Ok(Which::Last));
        assert_eq!("12".parse::<Which>(), Ok(Which::Epoch(12)));
        assert!("0".parse::<Which>().is_err());
        let e = "first".parse::<Which>().unwrap_err().to_string();
        assert!(e.contains("'first'") && e.contains("best, last"), "{e}");
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

    fn run_dir(dir: &Path, yaml: &str) -> RunDir {
        std::fs::write(dir.join(CONFIG_FILE), yaml).unwrap();
        std::fs::write(dir.join(CLASSES_FILE), r#"["a", "b"]"#).unwrap();
        RunDir::open(dir).unwrap()
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
            Err(RunDirError::NoCheckpoint { .. })
        ));
        let net = Net::new(&run.plan, &device);
        let hash = weights_sha256(&net);
        let optim = burn::optim::AdamConfig::new().init();
        for e in 1..=3 {
            save(dir.path(), &state(e, hash.clone()), &net, &optim).unwrap();
        }
        write_json(
            &dir.path().join(BEST_FILE),
            &Best {
                epoch: 2,
                val_loss: 0.5,
            },
        )
        .unwrap();
        prune(dir.path(), &[2, 3]).unwrap();
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
