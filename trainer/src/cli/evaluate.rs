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
use fennec_train::data::{LabelledFolder, Loader};
use fennec_train::loss_accuracy::measure;
use fennec_train::run_dir::{CLASSES_FILE, RunDir, Which};
use serde::Serialize;

use super::ComputeArgs;
use super::console::Console;

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

    #[command(flatten)]
    compute: ComputeArgs,

    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// What `evaluate` prints (as JSON with `--json`).
#[derive(Serialize)]
struct EvaluateReport<'a> {
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
    let device = args.compute.init()?;
    let started = Instant::now();

    let run = RunDir::open(&args.run_dir)?;
    let (net, record) = run.load_net(args.checkpoint, &device)?;
    let mut folder = LabelledFolder::scan("evaluate", &args.dir)?;
    folder.require_classes(&run.classes, &args.run_dir.join(CLASSES_FILE))?;
    let loader = Arc::new(Loader::new(run.config.preprocess.clone()));
    let stop = AtomicBool::new(false);
    let console = Console::new(args.json);
    console.start(folder.examples.len() as u64, "checking".into(), "files");
    let bad = folder
        .check(&loader, false, &|n| console.tick_by(n), &stop)
        .expect("not interrupted");
    for s in &bad {
        console.line(&format!("warning: skipped {}", s.reason));
    }
    if folder.examples.is_empty() {
        bail!(
            "{}: no usable image files in the class folders",
            args.dir.display()
        );
    }
    let batch = args
        .batch
        .map_or(run.config.training.batch_size, |b| b as usize);
    let folder = Arc::new(folder);
    console.start(folder.examples.len() as u64, "evaluating".into(), "img");
    let metrics =
        measure(&net, &folder, &loader, batch, &device, &stop, &console)?.expect("not interrupted");
    console.clear();

    let report = EvaluateReport {
        run_dir: &args.run_dir,
        checkpoint: args.checkpoint.to_string(),
        epoch: record.epoch,
        dir: &args.dir,
        images: metrics.count,
        loss: metrics.loss(),
        accuracy: metrics.accuracy(),
        binary_accuracy: metrics.binary_accuracy(),
        skipped: &folder.skipped,
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
