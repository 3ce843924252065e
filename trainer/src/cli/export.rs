//! `fennec-train export RUN_DIR [--checkpoint best|last|N] [-o model.onnx]
//! [--precision f32|f16|int8 [--calibrate DIR]]`: one checkpoint of a run → one
//! self-describing ONNX file for the `fennec` runtime. int8 is the float export
//! quantized by the runtime's `fennec quantize` code (docs/int8.md).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use fennec_runtime::atomic::write_bytes_atomic;
use fennec_runtime::quantize::{QuantizeOptions, quantize};
use fennec_train::export::{Precision, export_run};
use fennec_train::run_dir::{ONNX_FILE, Which};

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Run directory written by `fennec-train fit`.
    run_dir: PathBuf,

    /// Checkpoint to export: `best` (lowest validation loss), `last`, or an epoch number.
    #[arg(long, default_value = "best", value_name = "best|last|N")]
    checkpoint: Which,

    /// Output file [default: RUN_DIR/model.onnx]. Written whole or not at all.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,

    /// Weight storage. Input and output stay float32.
    #[arg(long, value_enum, default_value_t = Storage::F32)]
    precision: Storage,

    /// With --precision int8: labelled calibration images DIR/<class>/<images>
    /// (e.g. the run's training folder), preprocessed as the model says.
    #[arg(long, value_name = "DIR")]
    calibrate: Option<PathBuf>,

    /// With --precision int8: calibration images used at most, spread evenly over
    /// the classes.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    calibration_images: u32,

    /// Print the export report as JSON.
    #[arg(long)]
    json: bool,
}

/// `--precision`: the library's float precisions, and int8.
#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
enum Storage {
    /// float32 weights: exactly what burn computes.
    F32,
    /// float16 weights: half the size; probabilities change by about 1e-4.
    F16,
    /// int8 weights per channel and uint8 activations (QDQ), calibrated on
    /// --calibrate DIR: about a quarter of the size.
    Int8,
}

pub fn run(args: ExportArgs) -> Result<ExitCode> {
    let out = args
        .output
        .clone()
        .unwrap_or_else(|| args.run_dir.join(ONNX_FILE));
    let precision = match args.precision {
        Storage::F16 => Precision::F16,
        Storage::F32 | Storage::Int8 => Precision::F32,
    };
    match (args.precision, &args.calibrate) {
        (Storage::Int8, None) => {
            bail!("--precision int8 needs --calibrate DIR (labelled images, e.g. DATA/train)")
        }
        (Storage::F32 | Storage::F16, Some(_)) => {
            bail!("--calibrate is only used with --precision int8")
        }
        _ => {}
    }
    let Some(dir) = &args.calibrate else {
        let report = export_run(&args.run_dir, args.checkpoint, &out, precision)?;
        return print_report(&args, &out, &report);
    };
    // The float file goes to a hidden scratch file beside OUT, removed after;
    // OUT only ever holds the int8 file.
    let name = out
        .file_name()
        .map_or("model".into(), |n| n.to_string_lossy());
    let scratch = out.with_file_name(format!(".{name}.f32.tmp"));
    let report = export_run(&args.run_dir, args.checkpoint, &scratch, precision);
    let bytes = report.as_ref().ok().map(|_| fs_err::read(&scratch));
    let _ = std::fs::remove_file(&scratch);
    let (mut report, bytes) = (report?, bytes.expect("read when exported")?);
    let spec = report
        .metadata
        .preprocess
        .as_ref()
        .context("the export has no preprocessing metadata")?;
    let options = QuantizeOptions {
        images: args.calibration_images as usize,
        ..Default::default()
    };
    let (int8, q) = quantize(&bytes, &out, spec, dir, &options)?;
    write_bytes_atomic(&out, &int8).with_context(|| format!("{}: cannot write", out.display()))?;
    (report.path, report.bytes) = (out.clone(), int8.len());
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let value = serde_json::json!({ "export": report, "int8": q });
        writeln!(stdout, "{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        writeln!(
            stdout,
            "exported {} -> {} (int8: {} of {} float bytes; {} layers on int8 weights, \
             {} calibration images, {} skipped)",
            args.run_dir.display(),
            out.display(),
            q.output_bytes,
            q.input_bytes,
            q.quantized.len(),
            q.calibration.images,
            q.calibration.skipped
        )?;
        writeln!(stdout, "  try it: fennec predict {} IMAGE", out.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(
    args: &ExportArgs,
    out: &std::path::Path,
    report: &fennec_train::export::ExportReport,
) -> Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    if args.json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let md = &report.metadata;
    let training = md.training.as_ref();
    let val = training.and_then(|t| t["val_accuracy"].as_f64());
    let epoch = report
        .epoch
        .map_or_else(String::new, |e| format!(" epoch {e} ({})", args.checkpoint));
    writeln!(
        stdout,
        "exported {}{epoch} -> {}",
        args.run_dir.display(),
        out.display()
    )?;
    writeln!(
        stdout,
        "  {} bytes, {} weights, {} precision, {}",
        report.bytes, report.parameters, report.precision, report.weights_hash
    )?;
    if let Some(v) = val {
        writeln!(
            stdout,
            "  validation accuracy at that epoch: {:.2} %",
            v * 100.0
        )?;
    }
    if let Some(labels) = &md.labels {
        writeln!(stdout, "  labels ({}): {}", labels.len(), labels.join(", "))?;
    }
    if let Some(p) = &md.preprocess {
        writeln!(stdout, "  preprocessing: {}", p.describe())?;
    }
    writeln!(stdout, "  try it: fennec predict {} IMAGE", out.display())?;
    Ok(ExitCode::SUCCESS)
}
