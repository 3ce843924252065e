//! `summary.json`: what a run trained on and how far it got. `fit` writes it through
//! one [`SummaryWriter`] (at the start, after every epoch, at the end, on Ctrl-C);
//! `export` and `fit --resume` read it back here.

use std::path::{Path, PathBuf};
use std::time::Instant;

use fennec_runtime::folder::Skipped;
use serde::Serialize;
use serde_json::Value;

use super::{Best, RunDirError, SUMMARY_FILE, TrainState, read_json};
use crate::data::FolderSummary;
use crate::output::{WriteError, write_json};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// All epochs done, or early stopping.
    Finished,
    /// Stopped by request during `epoch` (0: during the data check); the checkpoint
    /// of the epoch before is intact.
    Interrupted { epoch: usize },
}

/// Data counts and skipped files.
#[derive(Debug, Clone, Serialize)]
pub struct DataReport {
    pub root: PathBuf,
    pub classes: Vec<String>,
    pub train: FolderSummary,
    pub validation: FolderSummary,
    /// Counts from the folder scan only (fit does not read the test split).
    pub test: Option<FolderSummary>,
    /// Every file left out, with the reason.
    pub skipped: Vec<Skipped>,
}

/// What does not change while one invocation of `fit` runs.
#[derive(Debug, Clone)]
pub struct RunFacts {
    pub config_name: String,
    pub data: DataReport,
    pub device: String,
    pub threads: usize,
    pub seed: u64,
    pub batch_size: usize,
    pub epochs: usize,
    /// The epoch this invocation continued after (`--resume`).
    pub resumed_from_epoch: Option<usize>,
}

/// Writes `summary.json` of one `fit` invocation.
#[derive(Debug)]
pub struct SummaryWriter {
    path: PathBuf,
    facts: RunFacts,
    started: Instant,
    /// Wall time of the invocations before this one (from the old summary).
    previous_seconds: f64,
}

/// `summary.json`, in its field order.
#[derive(Serialize)]
struct RunSummary<'a> {
    config: &'a str,
    data: &'a DataReport,
    device: &'a str,
    threads: usize,
    seed: u64,
    batch_size: usize,
    epochs: usize,
    epochs_done: usize,
    best: Option<Best>,
    stopped_early: bool,
    outcome: Outcome,
    resumed_from_epoch: Option<usize>,
    /// Wall time of this invocation of `fit`.
    seconds: f64,
    /// Wall time of all invocations that trained this run.
    total_seconds: f64,
    fennec_version: &'a str,
}

impl SummaryWriter {
    /// For the run in `dir`, whose invocation began at `started`; when `resuming`,
    /// the time of earlier invocations is read from the summary they left.
    pub fn new(dir: &Path, facts: RunFacts, started: Instant, resuming: bool) -> SummaryWriter {
        let previous_seconds = if resuming {
            read_summary(dir)
                .ok()
                .flatten()
                .and_then(|v| v.get("total_seconds")?.as_f64())
                .unwrap_or(0.0)
        } else {
            0.0
        };
        SummaryWriter {
            path: dir.join(SUMMARY_FILE),
            facts,
            started,
            previous_seconds,
        }
    }

    pub fn facts(&self) -> &RunFacts {
        &self.facts
    }

    /// When this invocation of `fit` began.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The summary after `state.epoch`, ended (so far) as `outcome`.
    pub fn write(&self, state: &TrainState, outcome: Outcome) -> Result<(), WriteError> {
        let f = &self.facts;
        let seconds = self.started.elapsed().as_secs_f64();
        write_json(
            &self.path,
            &RunSummary {
                config: &f.config_name,
                data: &f.data,
                device: &f.device,
                threads: f.threads,
                seed: f.seed,
                batch_size: f.batch_size,
                epochs: f.epochs,
                epochs_done: state.epoch,
                best: state.best,
                stopped_early: state.stopped_early,
                outcome,
                resumed_from_epoch: f.resumed_from_epoch,
                seconds,
                total_seconds: self.previous_seconds + seconds,
                fennec_version: fennec_runtime::VERSION,
            },
        )
    }
}

/// The run's `summary.json` as JSON, if `fit` has written one.
pub fn read_summary(dir: &Path) -> Result<Option<Value>, RunDirError> {
    let path = dir.join(SUMMARY_FILE);
    if !path.exists() {
        return Ok(None);
    }
    read_json(&path, "").map(Some)
}
