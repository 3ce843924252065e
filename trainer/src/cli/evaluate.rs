//! `fennec-train evaluate RUN_DIR DIR`: loss and accuracy of a run's checkpoint on a
//! labelled folder, computed with burn exactly as during validation (the runtime's
//! `fennec eval` gives the per-class report of the exported model).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;
use fennec_runtime::folder::Skipped;
use fennec_train::checkpoint::{CLASSES_FILE, Run, Which};
use fennec_train::data::{Loader, Split};
use fennec_train::device::Kind;
use fennec_train::train::{Event, Observer, evaluate};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// Run directory written by `fennec-train fit`.
    run_dir: PathBuf,

    /// Labelled folder, DIR/<class>/* with the run's class names (e.g. data/test).
    #[arg(value_name = "DIR")]
    dir: PathBuf,

    /// Checkpoint: `best` (lowest validation loss), `last`, or an epoch number.
    #[arg(long, default_value = "best", value_name = "best|last|N")]
    checkpoint: Which,

    /// Images per forward pass [default: the config's batch size].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    batch: Option<u32>,

    /// Compute device (GPUs need a build with their cargo feature).
    #[arg(long, value_enum, default_value_t = Kind::Cpu)]
    device: Kind,

    /// CPU threads [default: all cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    threads: Option<u32>,

    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report<'a> {
    run_dir: &'a PathBuf,
    checkpoint: String,
    epoch: usize,
    dir: &'a PathBuf,
    images: u64,
    loss: f64,
    accuracy: f64,
    /// Keras' BinaryAccuracy on one-hot targets (the tutorial's metric).
    binary_accuracy: f64,
    skipped: &'a [Skipped],
    seconds: f64,
}

pub fn run(args: EvaluateArgs) -> Result<ExitCode> {
    // SAFETY: before any thread is started; see `fit`.
    unsafe { std::env::set_var("BURN_DEVICE", args.device.burn_env()) };
    fennec_train::device::init_threads(args.threads.map(|n| n as usize))?;
    let device = args.device.device()?;
    let started = Instant::now();

    let run = Run::open(&args.run_dir)?;
    let (net, record) = run.load_net(args.checkpoint, &device)?;
    let mut split = Split::scan("evaluate", &args.dir)?;
    split.require_classes(&run.classes, &args.run_dir.join(CLASSES_FILE))?;
    let loader = Arc::new(Loader::new(run.config.preprocess()));
    let stop = AtomicBool::new(false);
    let bar = Bar::new(!args.json);
    bar.start(split.examples.len() as u64, "checking");
    let bad = split
        .check(&loader, false, &|n| bar.0.inc(n), &stop)
        .expect("not interrupted");
    for s in &bad {
        bar.0.suspend(|| eprintln!("warning: skipped {}", s.reason));
    }
    if split.examples.is_empty() {
        bail!(
            "{}: no usable image files in the class folders",
            args.dir.display()
        );
    }
    let batch = args
        .batch
        .map_or(run.config.training.batch_size, |b| b as usize);
    let split = Arc::new(split);
    bar.start(split.examples.len() as u64, "evaluating");
    let metrics =
        evaluate(&net, &split, &loader, batch, &device, &stop, &bar)?.expect("not interrupted");
    bar.0.finish_and_clear();

    let report = Report {
        run_dir: &args.run_dir,
        checkpoint: args.checkpoint.to_string(),
        epoch: record.epoch,
        dir: &args.dir,
        images: metrics.count,
        loss: metrics.loss(),
        accuracy: metrics.accuracy(),
        binary_accuracy: metrics.binary_accuracy(),
        skipped: &split.skipped,
        seconds: started.elapsed().as_secs_f64(),
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{} epoch {} ({}) on {}: {} images, {} skipped",
        args.run_dir.display(),
        report.epoch,
        report.checkpoint,
        args.dir.display(),
        report.images,
        report.skipped.len()
    )?;
    writeln!(
        out,
        "  loss             {:.4}  (categorical cross-entropy)",
        report.loss
    )?;
    writeln!(
        out,
        "  accuracy         {:.4}  (categorical: arg-max = label)",
        report.accuracy
    )?;
    writeln!(
        out,
        "  binary accuracy  {:.4}  (Keras BinaryAccuracy on one-hot labels)",
        report.binary_accuracy
    )?;
    writeln!(
        out,
        "  per-class report of the exported model: fennec eval {}/model.onnx {}",
        args.run_dir.display(),
        args.dir.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

struct Bar(ProgressBar, bool);

impl Bar {
    fn new(show: bool) -> Bar {
        Bar(ProgressBar::hidden(), show)
    }
    fn start(&self, len: u64, what: &str) {
        if self.1 {
            self.0
                .set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        self.0.reset();
        self.0.set_length(len);
        self.0.set_style(
            ProgressStyle::with_template(&format!(
                "{what} [{{wide_bar}}] {{pos}}/{{len}} {{per_sec}} ETA {{eta}}"
            ))
            .expect("valid template")
            .progress_chars("=> "),
        );
    }
}

impl Observer for Bar {
    fn event(&self, event: Event<'_>) {
        if let Event::Advance(n) = event {
            self.0.inc(n);
        }
    }
}
