//! The training loop behind `fennec-train fit`: check the data, then epochs of Adam
//! on categorical cross-entropy (train one epoch, validate, record it), then finish.
//! [`fit`] reads as those three steps; [`data_check`] and [`epoch`] hold them, and
//! the run directory's files are written by [`crate::run_dir`].
//!
//! Reproducibility: everything random is a function of the config's seed and the
//! epoch ([`crate::seeds`]) — the weight initialisation (burn's RNG seeded for
//! "epoch 0"), each epoch's shuffle, each image's augmentation and dropout masks
//! (burn's RNG re-seeded at the start of every epoch). A run resumed from the
//! checkpoint of epoch k therefore trains epoch k+1 exactly as the uninterrupted run
//! did; on the CPU, with the same thread count, the weights are bit-identical.
//!
//! Why a loop of our own: burn's examples train with burn-train's `Learner`, which
//! owns the epoch loop, its checkpointer and its metrics. fennec needs what that loop
//! does not promise: a resume that is bit-exact (the shuffle, augmentation and
//! dropout seeds are pure functions of seed and epoch, and the optimizer state is
//! saved with the weights), the metrics of the Keras tutorial it reproduces
//! (categorical cross-entropy from logits in f64, accuracy, and Keras'
//! `BinaryAccuracy` on one-hot labels, see [`crate::loss_accuracy`]), checkpoints
//! written whole or not at all with only the last and the best kept, and Ctrl-C that
//! stops between batches with the last checkpoint intact (exit 130). Each is a few
//! lines here; the forward and backward passes are still burn's.
//!
//! The loop reports through an [`Observer`] (progress bars and console lines are the
//! binary's business) and stops between batches when asked to (Ctrl-C).

mod data_check;
mod epoch;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use burn::tensor::Device;
use fennec_runtime::folder::Skipped;
use serde::Serialize;

use crate::config::{Config, PlanError};
use crate::data::{DataError, DataSet};
use crate::history::EpochRecord;
use crate::output::WriteError;
use crate::run_dir::summary::{RunFacts, SummaryWriter};
use crate::run_dir::{Best, CLASSES_FILE, RunDir, RunDirError, TrainState};

pub use crate::run_dir::summary::{DataReport, Outcome};

/// What `fit` needs besides the config.
#[derive(Debug, Clone)]
pub struct FitOptions {
    /// The config to train (CLI overrides applied); on resume, the run's own.
    pub config: Config,
    /// Where the config came from, for error messages.
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    /// An existing, writable directory (`fit` fills it).
    pub run_dir: PathBuf,
    /// Continue after the last complete checkpoint in `run_dir`.
    pub resume: bool,
    /// The plain (non-autodiff) device to train on.
    pub device: Device,
    /// How the device is named in summaries (`cpu`, `cuda`, `wgpu`).
    pub device_name: String,
    /// Turn unreadable images into an error instead of skipping them.
    pub strict: bool,
    /// Raised (by Ctrl-C) to stop at the next batch.
    pub stop: Arc<AtomicBool>,
}

/// Errors of a training run; each names the file or folder concerned.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("{path}: {error}")]
    Plan { path: PathBuf, error: PlanError },
}

/// Progress reports from [`fit`] and [`crate::loss_accuracy::measure`]. `Advance`
/// may come from several threads at once.
#[derive(Debug)]
pub enum Event<'a> {
    /// Starting to decode-check the `total` files of a split.
    Checking {
        split: &'a str,
        total: usize,
    },
    /// `n` more units done in the current phase (files checked, images trained or
    /// validated).
    Advance(u64),
    /// A file that will not be used, and why.
    Skipped(&'a Skipped),
    /// Data checked: per-split counts.
    DataReady(&'a DataReport),
    /// Continuing after the checkpoint of `epoch`.
    Resumed {
        epoch: usize,
    },
    EpochStart {
        epoch: usize,
        epochs: usize,
        images: usize,
    },
    /// Running training metrics after a batch.
    Batch {
        images: u64,
        loss: f64,
        accuracy: f64,
    },
    Validating {
        images: usize,
    },
    EpochEnd {
        record: &'a EpochRecord,
        best: bool,
        checkpoint: &'a Path,
    },
    /// Early stopping ended the run after `epoch`.
    EarlyStop {
        epoch: usize,
        best: Best,
    },
    /// Something the user should know that does not stop the run.
    Warning(String),
}

/// Receives [`Event`]s.
pub trait Observer: Sync {
    fn event(&self, event: Event<'_>);
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {
    fn event(&self, _: Event<'_>) {}
}

/// Result of [`fit`].
#[derive(Debug, Clone, Serialize)]
pub struct FitReport {
    pub outcome: Outcome,
    /// Last epoch with a checkpoint, if any.
    pub last_epoch: Option<usize>,
    pub best: Option<Best>,
    pub stopped_early: bool,
    /// Epochs trained by this invocation.
    pub epochs_this_run: usize,
    /// The epoch whose weights are the run's result: the best one when early
    /// stopping restores it, else the last.
    pub result_epoch: Option<usize>,
    pub seconds: f64,
}

/// Trains `opts.config` on `opts.data_dir` into `opts.run_dir`: check the data,
/// train and validate epoch after epoch, finish.
pub fn fit(opts: &FitOptions, obs: &dyn Observer) -> Result<FitReport, TrainError> {
    let started = Instant::now();
    let t = &opts.config.training;
    let mut data = DataSet::scan(&opts.data_dir)?;
    let plan = opts
        .config
        .resolve(data.classes.len())
        .map_err(|error| TrainError::Plan {
            path: opts.config_path.clone(),
            error,
        })?;
    let resumed = resume_point(opts, &data)?;
    let resumed_epoch = resumed.as_ref().map(|r| r.1);
    RunDir::write_setup(&opts.run_dir, &opts.config, &data.classes)?;

    let Some((loader, report)) = data_check::check(opts, &mut data, obs)? else {
        return Ok(FitReport::interrupted(0, None, resumed_epoch, started));
    };
    obs.event(Event::DataReady(&report));
    let summary = SummaryWriter::new(
        &opts.run_dir,
        RunFacts {
            config_name: opts.config.name.clone(),
            data: report,
            device: opts.device_name.clone(),
            threads: rayon::current_num_threads(),
            seed: t.seed,
            batch_size: t.batch_size,
            epochs: t.epochs,
            resumed_from_epoch: resumed_epoch,
        },
        started,
        opts.resume,
    );
    let epochs = epoch::Epochs::start(opts, obs, &plan, resumed, data, loader, summary)?;
    epochs.summary.write(&epochs.state, Outcome::Finished)?;
    if epochs.state.stopped_early {
        return Ok(epochs.finished(0));
    }
    epochs.run()
}

/// The run to continue and its last complete epoch, with `--resume` (none when the
/// run stopped before its first checkpoint).
fn resume_point(opts: &FitOptions, data: &DataSet) -> Result<Option<(RunDir, usize)>, TrainError> {
    if !opts.resume {
        return Ok(None);
    }
    let run = RunDir::open(&opts.run_dir)?;
    if run.classes != data.classes {
        return Err(DataError::ClassMismatch {
            a: opts.run_dir.join(CLASSES_FILE),
            a_classes: run.classes.join(", "),
            b: data.train.root.clone(),
            b_classes: data.classes.join(", "),
        }
        .into());
    }
    Ok(run.epochs()?.last().map(|&last| (run, last)))
}

impl FitReport {
    /// Stopped by request during `epoch` (0: the data check), after `last` epochs.
    fn interrupted(
        epoch: usize,
        result_epoch: Option<usize>,
        last: Option<usize>,
        started: Instant,
    ) -> FitReport {
        FitReport {
            outcome: Outcome::Interrupted { epoch },
            last_epoch: last,
            best: None,
            stopped_early: false,
            epochs_this_run: 0,
            result_epoch,
            seconds: started.elapsed().as_secs_f64(),
        }
    }
}

/// The epoch whose weights are the run's result after `state`: the best one when
/// early stopping restores it, else the last; none before the first epoch.
fn result_epoch(state: &TrainState, config: &Config) -> Option<usize> {
    let restore_best = config
        .training
        .early_stopping
        .as_ref()
        .is_some_and(|e| e.restore_best);
    if state.epoch == 0 {
        None
    } else if restore_best {
        state.best.map(|b| b.epoch).or(Some(state.epoch))
    } else {
        Some(state.epoch)
    }
}
