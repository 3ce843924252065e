//! The training loop behind `fennec-train fit`: data check, epochs of Adam on
//! categorical cross-entropy, validation, checkpoints, early stopping and resume.
//!
//! Reproducibility: everything random is a function of the config's seed and the
//! epoch — the weight initialisation (burn's RNG seeded for "epoch 0"), each
//! epoch's shuffle ([`epoch_order`]), each image's augmentation ([`image_seed`]) and
//! dropout masks (burn's RNG re-seeded at the start of every epoch). A run resumed
//! from the checkpoint of epoch k therefore trains epoch k+1 exactly as the
//! uninterrupted run did; on the CPU, with the same thread count, the weights are
//! bit-identical.
//!
//! The loop reports through an [`Observer`] (progress bars and console lines are the
//! binary's business) and stops between batches when asked to (Ctrl-C).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use fennec_runtime::folder::Skipped;
use serde::Serialize;

use crate::augment::Augmenter;
use crate::checkpoint::{
    self, BEST_FILE, Best, CLASSES_FILE, CONFIG_FILE, CheckpointError, Run, SUMMARY_FILE,
    TrainState,
};
use crate::config::{Config, Optimizer};
use crate::data::{
    Augment, AugmentPlan, BatchStream, DataError, DataSet, Loader, Split, SplitSummary, burn_seed,
    cache_budget, epoch_order,
};
use crate::history::{EpochRecord, write_history};
use crate::model::Net;

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
    Checkpoint(#[from] CheckpointError),
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{run}: cannot resume: {message}")]
    Resume { run: PathBuf, message: String },
}

/// Progress reports from [`fit`] and [`evaluate`]. `Advance` may come from
/// several threads at once.
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

/// Data counts and skipped files, for `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct DataReport {
    pub root: PathBuf,
    pub classes: Vec<String>,
    pub train: SplitSummary,
    pub validation: SplitSummary,
    /// Counts from the folder scan only (fit does not read the test split).
    pub test: Option<SplitSummary>,
    /// Every file left out, with the reason.
    pub skipped: Vec<Skipped>,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize)]
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

/// Trains `opts.config` on `opts.data_dir` into `opts.run_dir`.
pub fn fit(opts: &FitOptions, obs: &dyn Observer) -> Result<FitReport, TrainError> {
    let started = Instant::now();
    let config = &opts.config;
    let t = &config.training;
    let run_dir = &opts.run_dir;
    let threads = rayon::current_num_threads();

    let mut data = DataSet::scan(&opts.data_dir)?;
    let classes = data.classes.clone();
    let plan = config
        .resolve(classes.len())
        .map_err(|message| TrainError::Config {
            path: opts.config_path.clone(),
            message,
        })?;

    // What to continue from.
    let mut resumed: Option<(Run, usize)> = None;
    let mut previous_seconds = 0.0;
    if opts.resume {
        let run = Run::open(run_dir)?;
        if run.classes != classes {
            return Err(DataError::ClassMismatch {
                a: run_dir.join(CLASSES_FILE),
                a_classes: run.classes.join(", "),
                b: data.train.root.clone(),
                b_classes: classes.join(", "),
            }
            .into());
        }
        if let Some(&last) = run.epochs()?.last() {
            resumed = Some((run, last));
        }
        previous_seconds = read_total_seconds(run_dir);
    }

    write_file(
        &run_dir.join(CONFIG_FILE),
        serde_yaml::to_string(config)
            .expect("config serialises")
            .as_bytes(),
    )?;
    checkpoint::write_json(&run_dir.join(CLASSES_FILE), &classes)?;

    // Check every image once; cache the decoded pixels when they fit.
    let loader = Arc::new(Loader::new(config.preprocess()));
    let (train_bytes, val_bytes) = (
        data.train.cache_bytes(&loader),
        data.validation.cache_bytes(&loader),
    );
    let (cache_train, cache_val) = match t.cache {
        Some(c) => (c, c),
        None => {
            let budget = cache_budget();
            (train_bytes <= budget, train_bytes + val_bytes <= budget)
        }
    };
    let mut failed = 0;
    for (split, cache) in [
        (&mut data.train, cache_train),
        (&mut data.validation, cache_val),
    ] {
        obs.event(Event::Checking {
            split: &split.name,
            total: split.examples.len(),
        });
        let Some(bad) = split.check(
            &loader,
            cache,
            &|n| obs.event(Event::Advance(n)),
            &opts.stop,
        ) else {
            return Ok(interrupted(0, None, started, resumed.as_ref().map(|r| r.1)));
        };
        for s in &bad {
            obs.event(Event::Skipped(s));
        }
        failed += bad.len();
        if opts.strict && failed > 0 {
            return Err(DataError::Strict {
                count: failed,
                first: bad[0].reason.clone(),
            }
            .into());
        }
        if split.examples.is_empty() {
            return Err(DataError::NoImages {
                path: split.root.clone(),
            }
            .into());
        }
    }
    data.train.require_no_empty_class()?;
    let report = DataReport {
        root: opts.data_dir.clone(),
        classes: classes.clone(),
        train: data.train.summary(),
        validation: data.validation.summary(),
        test: data.test.as_ref().map(Split::summary),
        skipped: [&data.train, &data.validation]
            .into_iter()
            .chain(data.test.as_ref())
            .flat_map(|s| s.skipped.iter().cloned())
            .collect(),
    };
    obs.event(Event::DataReady(&report));

    // The network, the optimizer and the state after the last finished epoch.
    let Optimizer::Adam(a) = &t.optimizer;
    let adam = AdamConfig::new()
        .with_beta_1(a.beta_1)
        .with_beta_2(a.beta_2)
        .with_epsilon(a.epsilon);
    let train_device = opts.device.clone().autodiff();
    let (mut net, mut optim, mut state) = match &resumed {
        Some((run, last)) => {
            let (net, optim, state) = run.load_training(*last, &train_device, adam.init())?;
            obs.event(Event::Resumed { epoch: *last });
            (net, optim, state)
        }
        None => {
            train_device.seed(burn_seed(t.seed, 0));
            let net = Net::new(&plan, &train_device);
            materialize(&net);
            let state = TrainState {
                epoch: 0,
                history: vec![],
                best: None,
                wait: 0,
                stopped_early: false,
                weights_sha256: String::new(),
                seed: t.seed,
                threads,
                device: opts.device_name.clone(),
                data_dir: PathBuf::new(),
                fennec_version: fennec_runtime::VERSION.into(),
            };
            (net, adam.init(), state)
        }
    };
    if resumed.is_some() && (state.threads != threads || state.device != opts.device_name) {
        obs.event(Event::Warning(format!(
            "the run trained with {} threads on {} so far, now {threads} on {}: results will differ from \
             an uninterrupted run in the last bits",
            state.threads, state.device, opts.device_name
        )));
    }
    state.threads = threads;
    state.device = opts.device_name.clone();
    // Absolute, so that `--resume` works from another working directory.
    state.data_dir =
        std::fs::canonicalize(&opts.data_dir).unwrap_or_else(|_| opts.data_dir.clone());

    let summary = |state: &TrainState, outcome: Outcome| RunSummary {
        config: &config.name,
        data: &report,
        device: &opts.device_name,
        threads,
        seed: t.seed,
        batch_size: t.batch_size,
        epochs: t.epochs,
        epochs_done: state.epoch,
        best: state.best,
        stopped_early: state.stopped_early,
        outcome,
        resumed_from_epoch: resumed.as_ref().map(|r| r.1),
        seconds: started.elapsed().as_secs_f64(),
        total_seconds: previous_seconds + started.elapsed().as_secs_f64(),
        fennec_version: fennec_runtime::VERSION,
    };
    checkpoint::write_json(
        &run_dir.join(SUMMARY_FILE),
        &summary(&state, Outcome::Finished),
    )?;

    let restore_best = t.early_stopping.as_ref().is_some_and(|e| e.restore_best);
    let result_epoch = |state: &TrainState| {
        if state.epoch == 0 {
            None
        } else if restore_best {
            state.best.map(|b| b.epoch).or(Some(state.epoch))
        } else {
            Some(state.epoch)
        }
    };
    let finish = |state: &TrainState, epochs_this_run: usize| FitReport {
        outcome: Outcome::Finished,
        last_epoch: (state.epoch > 0).then_some(state.epoch),
        best: state.best,
        stopped_early: state.stopped_early,
        epochs_this_run,
        result_epoch: result_epoch(state),
        seconds: started.elapsed().as_secs_f64(),
    };
    // Ctrl-C: the summary says where the run stopped (best effort: the checkpoints
    // are intact either way).
    let stop = |state: &TrainState, epoch: usize| {
        let _ = checkpoint::write_json(
            &run_dir.join(SUMMARY_FILE),
            &summary(state, Outcome::Interrupted { epoch }),
        );
        interrupted(
            epoch,
            result_epoch(state),
            started,
            (state.epoch > 0).then_some(state.epoch),
        )
    };
    if state.stopped_early {
        return Ok(finish(&state, 0));
    }

    let [_, channels, height, width] = loader.preprocess.batch_shape(1);
    let augmenter = Augmenter::new(&t.augmentation);
    let augment: Option<Arc<Augment>> = (!augmenter.is_identity()).then(|| {
        let f: Arc<Augment> = Arc::new(move |px: &mut [u8], seed: u64| {
            augmenter.apply(px, height, width, channels, seed)
        });
        f
    });
    let train = Arc::new(data.train);
    let validation = Arc::new(data.validation);
    let loss_fn = CrossEntropyLossConfig::new().init(&train_device);
    let lr = a.learning_rate;
    let mut epochs_this_run = 0;

    for epoch in state.epoch + 1..=t.epochs {
        train_device.seed(burn_seed(t.seed, epoch));
        let order = epoch_order(train.examples.len(), t.seed, epoch, t.shuffle);
        let plan_aug = augment.clone().map(|augment| AugmentPlan {
            augment,
            seed: t.seed,
            epoch,
        });
        let stream = BatchStream::start(
            train.clone(),
            loader.clone(),
            order,
            t.batch_size,
            t.drop_last,
            plan_aug,
        )?;
        obs.event(Event::EpochStart {
            epoch,
            epochs: t.epochs,
            images: train.examples.len(),
        });
        let epoch_start = Instant::now();
        let mut metrics = Metrics::new(classes.len());
        for batch in stream {
            if opts.stop.load(Ordering::Relaxed) {
                return Ok(stop(&state, epoch));
            }
            let batch = batch?;
            let n = batch.len;
            let x = Tensor::<4>::from_data(
                TensorData::new(batch.images, [n, channels, height, width]),
                &train_device,
            );
            let y = Tensor::<1, Int>::from_data(
                TensorData::new(batch.labels.clone(), [n]),
                &train_device,
            );
            let logits = net.forward(x);
            let loss = loss_fn.forward(logits.clone(), y);
            let host: Vec<f32> = logits.try_into_vec_as::<f32>().expect("logits read as f32");
            metrics.add(&host, &batch.labels);
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optim.step(lr, net, grads);
            obs.event(Event::Batch {
                images: metrics.count,
                loss: metrics.loss(),
                accuracy: metrics.accuracy(),
            });
            obs.event(Event::Advance(n as u64));
        }
        let train_seconds = epoch_start.elapsed().as_secs_f64();

        let eval = net.valid();
        obs.event(Event::Validating {
            images: validation.examples.len(),
        });
        let Some(val) = evaluate(
            &eval,
            &validation,
            &loader,
            t.batch_size,
            &opts.device,
            &opts.stop,
            obs,
        )?
        else {
            return Ok(stop(&state, epoch));
        };
        let record = EpochRecord {
            epoch,
            train_loss: metrics.loss(),
            train_accuracy: metrics.accuracy(),
            val_loss: val.loss(),
            val_accuracy: val.accuracy(),
            val_binary_accuracy: val.binary_accuracy(),
            train_seconds,
            images_per_second: metrics.count as f64 / train_seconds.max(1e-9),
            learning_rate: lr,
        };

        let min_delta = t.early_stopping.as_ref().map_or(0.0, |e| e.min_delta);
        let improved = record.val_loss.is_finite()
            && state
                .best
                .is_none_or(|b| record.val_loss < b.val_loss - min_delta);
        if improved {
            state.best = Some(Best {
                epoch,
                val_loss: record.val_loss,
            });
            state.wait = 0;
        } else {
            state.wait += 1;
        }
        state.stopped_early = t
            .early_stopping
            .as_ref()
            .is_some_and(|e| state.wait >= e.patience)
            && epoch < t.epochs;
        state.epoch = epoch;
        state.history.push(record.clone());
        state.weights_sha256 = checkpoint::weights_sha256(&eval);

        let saved = checkpoint::save_checkpoint(run_dir, &state, &eval, &optim)?;
        epochs_this_run += 1;
        write_history(run_dir, &state.history).map_err(|source| TrainError::Write {
            path: run_dir.join("history.json"),
            source,
        })?;
        if improved {
            checkpoint::write_json(&run_dir.join(BEST_FILE), &state.best)?;
        }
        let mut keep = vec![epoch];
        keep.extend(state.best.map(|b| b.epoch));
        checkpoint::prune_checkpoints(run_dir, &keep)?;
        if let Err(e) = crate::plot::plot_history(run_dir, &state.history) {
            // A plot is a convenience: report it, keep training.
            obs.event(Event::Warning(format!(
                "{}: cannot draw the history plot: {e}",
                run_dir.join("history.png").display()
            )));
        }
        checkpoint::write_json(
            &run_dir.join(SUMMARY_FILE),
            &summary(&state, Outcome::Finished),
        )?;
        obs.event(Event::EpochEnd {
            record: &record,
            best: improved,
            checkpoint: &saved,
        });
        if state.stopped_early {
            let best = state
                .best
                .expect("early stopping follows a first finite epoch");
            obs.event(Event::EarlyStop { epoch, best });
            break;
        }
    }
    checkpoint::write_json(
        &run_dir.join(SUMMARY_FILE),
        &summary(&state, Outcome::Finished),
    )?;
    Ok(finish(&state, epochs_this_run))
}

fn interrupted(
    epoch: usize,
    result_epoch: Option<usize>,
    started: Instant,
    last: Option<usize>,
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

fn read_total_seconds(run_dir: &Path) -> f64 {
    std::fs::read(run_dir.join(SUMMARY_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("total_seconds")?.as_f64())
        .unwrap_or(0.0)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    fennec_runtime::atomic::write_bytes_atomic(path, bytes).map_err(|source| TrainError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Draws every lazily initialised parameter now, so the initial weights depend only
/// on the RNG seed set just before (not on when the first forward pass happens).
fn materialize(net: &Net) {
    struct Touch;
    impl ModuleVisitor for Touch {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            let _ = p.val();
        }
    }
    net.visit(&mut Touch);
}

/// Loss, accuracy and binary accuracy of `net` (an evaluation copy, `net.valid()`)
/// over `split` in file order. `None` when stopped by request.
pub fn evaluate(
    net: &Net,
    split: &Arc<Split>,
    loader: &Arc<Loader>,
    batch: usize,
    device: &Device,
    stop: &AtomicBool,
    obs: &dyn Observer,
) -> Result<Option<Metrics>, TrainError> {
    let [_, c, h, w] = loader.preprocess.batch_shape(1);
    let order: Vec<usize> = (0..split.examples.len()).collect();
    let classes = split.classes.len();
    let mut metrics = Metrics::new(classes);
    for b in BatchStream::start(split.clone(), loader.clone(), order, batch, false, None)? {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let b = b?;
        let x = Tensor::<4>::from_data(TensorData::new(b.images, [b.len, c, h, w]), device);
        let logits: Vec<f32> = net
            .forward(x)
            .try_into_vec_as::<f32>()
            .expect("logits read as f32");
        metrics.add(&logits, &b.labels);
        obs.event(Event::Advance(b.len as u64));
    }
    Ok(Some(metrics))
}

/// Running classification metrics computed from logits on the host, in f64:
/// categorical cross-entropy (`logsumexp(z) - z[label]`, the mean over images),
/// categorical accuracy (arg-max equals the label, first maximum on ties), and
/// Keras' `BinaryAccuracy` on one-hot targets (each of the `classes` outputs counts:
/// `softmax > 0.5` equals the one-hot bit).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Metrics {
    pub classes: usize,
    pub count: u64,
    pub loss_sum: f64,
    pub correct: u64,
    pub binary_correct: u64,
}

impl Metrics {
    pub fn new(classes: usize) -> Metrics {
        Metrics {
            classes,
            ..Default::default()
        }
    }

    /// Adds a batch: `logits` is `[labels.len(), classes]`, row-major.
    pub fn add(&mut self, logits: &[f32], labels: &[i64]) {
        let k = self.classes;
        assert_eq!(
            logits.len(),
            labels.len() * k,
            "logits do not match the labels"
        );
        for (row, &label) in logits.chunks_exact(k).zip(labels) {
            let label = label as usize;
            let (argmax, max) =
                row.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                        if v > bv { (i, v) } else { (bi, bv) }
                    });
            let max = max as f64;
            let sum: f64 = row.iter().map(|&z| (z as f64 - max).exp()).sum();
            self.loss_sum += max + sum.ln() - row[label] as f64;
            self.correct += (argmax == label) as u64;
            self.binary_correct += row
                .iter()
                .enumerate()
                .filter(|&(i, &z)| (((z as f64 - max).exp() / sum) > 0.5) == (i == label))
                .count() as u64;
            self.count += 1;
        }
    }

    pub fn loss(&self) -> f64 {
        self.loss_sum / self.count.max(1) as f64
    }
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.count.max(1) as f64
    }
    pub fn binary_accuracy(&self) -> f64 {
        self.binary_correct as f64 / (self.count * self.classes as u64).max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_hand_computation() {
        let mut m = Metrics::new(2);
        // Row 1: logits (0, ln 3): p = (0.25, 0.75), label 1 → loss -ln 0.75, correct,
        // binary: 0.25 > .5 false == (label != 0) ok; 0.75 > .5 true == true ok.
        // Row 2: equal logits, label 1: p = (.5, .5), argmax 0 (first) → wrong; binary:
        // .5 > .5 false == false ok; false == true wrong.
        m.add(&[0.0, 3f32.ln(), 1.0, 1.0], &[1, 1]);
        assert_eq!(m.count, 2);
        let want = (-(0.75f64).ln() - (0.5f64).ln()) / 2.0;
        assert!((m.loss() - want).abs() < 1e-6, "{} vs {want}", m.loss());
        assert_eq!(m.accuracy(), 0.5);
        assert_eq!(m.binary_accuracy(), 0.75);
    }

    #[test]
    fn loss_is_stable_for_large_logits() {
        let mut m = Metrics::new(3);
        m.add(&[1000.0, 0.0, -1000.0], &[0]);
        assert!(m.loss().abs() < 1e-9);
        m.add(&[1000.0, 0.0, -1000.0], &[2]);
        assert!((m.loss() - 1000.0).abs() < 1e-6);
    }
}
