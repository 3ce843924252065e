//! What the commands show on stderr while they work: one progress bar per phase
//! (the runtime's one bar look, [`fennec_runtime::progress`]) and lines above it.
//! [`Console`] is the [`Observer`] of `fit` and `evaluate` and the [`Progress`] of
//! `split`.

use std::sync::{Mutex, MutexGuard};

use fennec_train::data::FolderSummary;
use fennec_train::split::Progress;
use fennec_train::train::{Event, Observer};
use indicatif::ProgressBar;

/// Progress bars and lines on stderr; only warnings with `quiet`.
pub struct Console {
    quiet: bool,
    bar: Mutex<ProgressBar>,
}

impl Console {
    pub fn new(quiet: bool) -> Console {
        Console {
            quiet,
            bar: Mutex::new(ProgressBar::hidden()),
        }
    }

    fn bar(&self) -> MutexGuard<'_, ProgressBar> {
        self.bar.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the current bar and starts one for `len` units of the next phase.
    pub fn start(&self, len: u64, phase: String, unit: &str) {
        let bar = fennec_runtime::progress::bar(len, phase, unit, !self.quiet);
        std::mem::replace(&mut *self.bar(), bar).finish_and_clear();
    }

    /// `n` more units done.
    pub fn tick_by(&self, n: u64) {
        self.bar().inc(n);
    }

    /// A line above the bar (or plain, when the bar is hidden).
    pub fn line(&self, text: &str) {
        self.bar().suspend(|| eprintln!("{text}"));
    }

    /// A line unless quiet.
    fn info(&self, text: &str) {
        if !self.quiet {
            self.line(text);
        }
    }

    pub fn clear(&self) {
        self.bar().finish_and_clear();
    }
}

impl Progress for Console {
    fn start(&self, phase: &'static str, len: usize) {
        Console::start(self, len as u64, phase.into(), "files");
    }

    fn tick(&self) {
        self.tick_by(1);
    }
}

impl Observer for Console {
    fn event(&self, event: Event<'_>) {
        match event {
            Event::Checking { split, total } => {
                self.start(total as u64, format!("checking {split}"), "files")
            }
            Event::Advance(n) => self.tick_by(n),
            Event::Skipped(s) => self.line(&format!("warning: skipped {}", s.reason)),
            Event::Warning(w) => self.line(&format!("warning: {w}")),
            Event::DataReady(d) => {
                self.clear();
                let folder = |name: &str, s: &FolderSummary| {
                    let per: Vec<String> = s
                        .per_class
                        .iter()
                        .map(|(c, n)| format!("{c} {n}"))
                        .collect();
                    format!(
                        "{name} {} ({}){}",
                        s.images,
                        per.join(", "),
                        if s.cached { ", cached" } else { "" }
                    )
                };
                self.info(&format!(
                    "data: {}; {}; {} file(s) skipped",
                    folder("train", &d.train),
                    folder("validation", &d.validation),
                    d.skipped.len()
                ));
            }
            Event::Resumed { epoch } => {
                self.info(&format!("resuming after the checkpoint of epoch {epoch}"))
            }
            Event::EpochStart {
                epoch,
                epochs,
                images,
            } => self.start(images as u64, format!("epoch {epoch}/{epochs}"), "img"),
            Event::Batch { loss, accuracy, .. } => self
                .bar()
                .set_message(format!("loss {loss:.4} acc {accuracy:.4}")),
            Event::Validating { images } => self.start(images as u64, "validating".into(), "img"),
            Event::EpochEnd {
                record: r, best, ..
            } => {
                self.clear();
                self.info(&format!(
                    "epoch {:>3}  loss {:.4}  acc {:.4} | val_loss {:.4}  val_acc {:.4}  val_binary_acc {:.4} | \
                     {:.1} s, {:.1} img/s{}",
                    r.epoch,
                    r.train_loss,
                    r.train_accuracy,
                    r.val_loss,
                    r.val_accuracy,
                    r.val_binary_accuracy,
                    r.train_seconds,
                    r.images_per_second,
                    if best { "  (best)" } else { "" }
                ));
            }
            Event::EarlyStop { epoch, best } => self.info(&format!(
                "early stopping after epoch {epoch}: no improvement since epoch {} (val_loss {:.4})",
                best.epoch, best.val_loss
            )),
        }
    }
}
