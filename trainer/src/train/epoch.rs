//! Step two of `fit`: the epochs. Each one trains on the shuffled (and augmented)
//! training images, validates on the validation images, and is recorded in the run
//! directory before the next begins; early stopping and Ctrl-C end the loop.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::{Event, FitOptions, FitReport, Observer, Outcome, TrainError, result_epoch};
use crate::augment::Augmenter;
use crate::config::{Optimizer, Plan};
use crate::data::{Augment, AugmentPlan, BatchStream, DataError, DataSet, LabelledFolder, Loader};
use crate::history::EpochRecord;
use crate::loss_accuracy::{LossAccuracy, measure};
use crate::model::Net;
use crate::run_dir::summary::SummaryWriter;
use crate::run_dir::{Best, RunDir, TrainState, checkpoint};
use crate::seeds::{burn_seed, epoch_order};

/// Everything the epochs of one `fit` share, and the training state they advance.
pub(super) struct Epochs<'a> {
    opts: &'a FitOptions,
    obs: &'a dyn Observer,
    loader: Arc<Loader>,
    train: Arc<LabelledFolder>,
    validation: Arc<LabelledFolder>,
    augment: Option<Arc<Augment>>,
    /// The autodiff device that trains.
    device: Device,
    loss: CrossEntropyLoss,
    net: Option<Net>,
    optim: ModuleOptimizer,
    pub(super) state: TrainState,
    pub(super) summary: SummaryWriter,
    started: Instant,
    epochs_this_run: usize,
}

/// The training half of an epoch.
struct Trained {
    metrics: LossAccuracy,
    seconds: f64,
}

impl<'a> Epochs<'a> {
    /// The network, the optimizer and the state after the last finished epoch: the
    /// checkpoint of `resumed`, or a new network drawn from the seed.
    pub(super) fn start(
        opts: &'a FitOptions,
        obs: &'a dyn Observer,
        plan: &Plan,
        resumed: Option<(RunDir, usize)>,
        data: DataSet,
        loader: Arc<Loader>,
        summary: SummaryWriter,
    ) -> Result<Epochs<'a>, TrainError> {
        let t = &opts.config.training;
        let Optimizer::Adam(a) = &t.optimizer;
        let adam = AdamConfig::new()
            .with_beta_1(a.beta_1)
            .with_beta_2(a.beta_2)
            .with_epsilon(a.epsilon);
        let device = opts.device.clone().autodiff();
        let threads = summary.facts().threads;
        let (net, optim, mut state) = match &resumed {
            Some((run, last)) => {
                let (net, optim, state) = run.load_training(*last, &device, adam.init())?;
                obs.event(Event::Resumed { epoch: *last });
                if state.threads != threads || state.device != opts.device_name {
                    obs.event(Event::Warning(format!(
                        "the run trained with {} threads on {} so far, now {threads} on {}: results will differ from \
                         an uninterrupted run in the last bits",
                        state.threads, state.device, opts.device_name
                    )));
                }
                (net, optim, state)
            }
            None => {
                device.seed(burn_seed(t.seed, 0));
                let net = Net::new(plan, &device);
                materialize(&net);
                (net, adam.init(), TrainState::new(t.seed))
            }
        };
        state.threads = threads;
        state.device = opts.device_name.clone();
        // Absolute, so that `--resume` works from another working directory.
        state.data_dir =
            std::fs::canonicalize(&opts.data_dir).unwrap_or_else(|_| opts.data_dir.clone());

        let [_, channels, height, width] = loader.preprocess.batch_shape(1);
        let augmenter = Augmenter::new(&t.augmentation);
        let augment: Option<Arc<Augment>> = (!augmenter.is_identity()).then(|| {
            let f: Arc<Augment> = Arc::new(move |px: &mut [u8], seed: u64| {
                augmenter.apply(px, height, width, channels, seed)
            });
            f
        });
        Ok(Epochs {
            opts,
            obs,
            loader,
            train: Arc::new(data.train),
            validation: Arc::new(data.validation),
            augment,
            loss: CrossEntropyLossConfig::new().init(&device),
            device,
            net: Some(net),
            optim,
            state,
            started: summary.started(),
            summary,
            epochs_this_run: 0,
        })
    }

    /// Epochs after the state's last one up to the config's, each trained, validated
    /// and recorded; then the final summary.
    pub(super) fn run(mut self) -> Result<FitReport, TrainError> {
        for epoch in self.state.epoch + 1..=self.opts.config.training.epochs {
            let Some(trained) = self.train_one(epoch)? else {
                return Ok(self.stopped(epoch));
            };
            let eval = self.net().valid();
            self.obs.event(Event::Validating {
                images: self.validation.examples.len(),
            });
            let batch = self.opts.config.training.batch_size;
            let Some(val) = measure(
                &eval,
                &self.validation,
                &self.loader,
                batch,
                &self.opts.device,
                &self.opts.stop,
                self.obs,
            )?
            else {
                return Ok(self.stopped(epoch));
            };
            if self.record(epoch, trained, val, &eval)? {
                break;
            }
        }
        self.summary.write(&self.state, Outcome::Finished)?;
        Ok(self.finished(self.epochs_this_run))
    }

    /// Trains `epoch` on the shuffled training images; `None` when stopped.
    fn train_one(&mut self, epoch: usize) -> Result<Option<Trained>, TrainError> {
        let t = &self.opts.config.training;
        self.device.seed(burn_seed(t.seed, epoch));
        let order = epoch_order(self.train.examples.len(), t.seed, epoch, t.shuffle);
        let augment = self.augment.clone().map(|augment| AugmentPlan {
            augment,
            seed: t.seed,
            epoch,
        });
        let stream = BatchStream::start(
            self.train.clone(),
            self.loader.clone(),
            order,
            t.batch_size,
            t.drop_last,
            augment,
        )?;
        self.obs.event(Event::EpochStart {
            epoch,
            epochs: t.epochs,
            images: self.train.examples.len(),
        });
        let learning_rate = t.optimizer.learning_rate();
        let [_, c, h, w] = self.loader.preprocess.batch_shape(1);
        let started = Instant::now();
        let mut metrics = LossAccuracy::new(self.train.classes.len());
        for batch in stream {
            if self.opts.stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let batch = batch?;
            let n = batch.len;
            let x =
                Tensor::<4>::from_data(TensorData::new(batch.images, [n, c, h, w]), &self.device);
            let y = Tensor::<1, Int>::from_data(
                TensorData::new(batch.labels.clone(), [n]),
                &self.device,
            );
            let net = self
                .net
                .take()
                .expect("the network is in place between steps");
            let logits = net.forward(x);
            let loss = self.loss.forward(logits.clone(), y);
            let host: Vec<f32> = logits
                .try_into_vec_as::<f32>()
                .map_err(|e| DataError::Compute(crate::device::failure_line(&e)))?;
            metrics.add(&host, &batch.labels);
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            self.net = Some(self.optim.step(learning_rate, net, grads));
            self.obs.event(Event::Batch {
                images: metrics.count,
                loss: metrics.loss(),
                accuracy: metrics.accuracy(),
            });
            self.obs.event(Event::Advance(n as u64));
        }
        Ok(Some(Trained {
            metrics,
            seconds: started.elapsed().as_secs_f64(),
        }))
    }

    /// Early stopping's bookkeeping and the run directory's files after `epoch`;
    /// true when early stopping ends the run here.
    fn record(
        &mut self,
        epoch: usize,
        trained: Trained,
        val: LossAccuracy,
        eval: &Net,
    ) -> Result<bool, TrainError> {
        let t = &self.opts.config.training;
        let record = EpochRecord {
            epoch,
            train_loss: trained.metrics.loss(),
            train_accuracy: trained.metrics.accuracy(),
            val_loss: val.loss(),
            val_accuracy: val.accuracy(),
            val_binary_accuracy: val.binary_accuracy(),
            train_seconds: trained.seconds,
            images_per_second: trained.metrics.count as f64 / trained.seconds.max(1e-9),
            learning_rate: t.optimizer.learning_rate(),
        };
        let state = &mut self.state;
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
        state.weights_sha256 = checkpoint::weights_sha256(eval);

        let (saved, plot) =
            RunDir::record_epoch(&self.opts.run_dir, state, eval, &self.optim, improved)?;
        self.epochs_this_run += 1;
        if let Some(e) = plot {
            // A plot is a convenience: report it, keep training.
            self.obs
                .event(Event::Warning(format!("cannot draw the history plot: {e}")));
        }
        self.summary.write(&self.state, Outcome::Finished)?;
        self.obs.event(Event::EpochEnd {
            record: &record,
            best: improved,
            checkpoint: &saved,
        });
        if self.state.stopped_early {
            let best = self
                .state
                .best
                .expect("early stopping follows a first finite epoch");
            self.obs.event(Event::EarlyStop { epoch, best });
        }
        Ok(self.state.stopped_early)
    }

    fn net(&self) -> &Net {
        self.net
            .as_ref()
            .expect("the network is in place between steps")
    }

    /// The report of a run that ended normally.
    pub(super) fn finished(&self, epochs_this_run: usize) -> FitReport {
        FitReport {
            outcome: Outcome::Finished,
            last_epoch: (self.state.epoch > 0).then_some(self.state.epoch),
            best: self.state.best,
            stopped_early: self.state.stopped_early,
            epochs_this_run,
            result_epoch: result_epoch(&self.state, &self.opts.config),
            seconds: self.started.elapsed().as_secs_f64(),
        }
    }

    /// Ctrl-C during `epoch`: the summary says where the run stopped (best effort:
    /// the checkpoints are intact either way).
    fn stopped(&self, epoch: usize) -> FitReport {
        let _ = self
            .summary
            .write(&self.state, Outcome::Interrupted { epoch });
        FitReport::interrupted(
            epoch,
            result_epoch(&self.state, &self.opts.config),
            (self.state.epoch > 0).then_some(self.state.epoch),
            self.started,
        )
    }
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
