//! `fennec-train export RUN_DIR [--checkpoint best|last|N] [-o model.onnx] [--precision f32|f16]`:
//! one checkpoint of a run → one self-describing ONNX file for the `fennec` runtime.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use fennec_train::export::{Precision, export_run};
use fennec_train::run_dir::{ONNX_FILE, Which};

use super::enum_parser;

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

    /// Weight storage: f32 (exactly what burn computes) or f16 (half the size;
    /// probabilities change by about 1e-4). Input and output stay float32.
    #[arg(long, value_parser = enum_parser::<Precision>(), default_value_t = Precision::F32)]
    precision: Precision,

    /// Print the export report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ExportArgs) -> Result<ExitCode> {
    let out = args
        .output
        .clone()
        .unwrap_or_else(|| args.run_dir.join(ONNX_FILE));
    let report = export_run(&args.run_dir, args.checkpoint, &out, args.precision)?;
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
