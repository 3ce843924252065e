//! `fennec quantize MODEL.onnx --calibrate DIR -o OUT.onnx`: int8 post-training
//! quantization of any float ONNX classifier (the library's [`fennec_runtime::quantize`]).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use fennec_runtime::atomic::write_bytes_atomic;
use fennec_runtime::quantize::{Calibration, QuantizeOptions, Report, quantize};
use fennec_runtime::{Classifier, LoadOptions};
use indicatif::HumanBytes;
use serde_json::json;

use super::{ModelArgs, print_defaults_note};

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    #[command(flatten)]
    model: ModelArgs,

    /// Labelled calibration images DIR/<class>/<images> (e.g. the training or
    /// validation folder), preprocessed as the model's metadata (or the flags) say.
    #[arg(long, value_name = "DIR")]
    calibrate: PathBuf,

    /// Where to write the int8 model (written whole or not at all).
    #[arg(short, long, value_name = "OUT.onnx")]
    output: PathBuf,

    /// Calibration images used at most, spread evenly over the classes.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    images: u32,

    /// How activation ranges are taken from the calibration images.
    #[arg(long, value_enum, default_value_t = Method::MinMax)]
    method: Method,

    /// With --method percentile: the percentile kept at each end of the range.
    #[arg(long, default_value_t = 99.99)]
    percentile: f64,

    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Method {
    /// The smallest and largest activation seen.
    MinMax,
    /// Ignore the rarest values at both ends (see --percentile).
    Percentile,
}

pub fn run(args: QuantizeArgs) -> Result<ExitCode> {
    if !(50.0..100.0).contains(&args.percentile) {
        bail!(
            "--percentile {}: expected a value in [50, 100)",
            args.percentile
        );
    }
    let classifier = args.model.load()?;
    print_defaults_note(&classifier);
    let path = &args.model.model;
    let bytes = fs_err::read(path)?;
    let options = QuantizeOptions {
        images: args.images as usize,
        calibration: match args.method {
            Method::MinMax => Calibration::MinMax,
            Method::Percentile => Calibration::Percentile(args.percentile),
        },
        ..Default::default()
    };
    let (out, report) = quantize(
        &bytes,
        path,
        &classifier.preprocess,
        &args.calibrate,
        &options,
    )?;
    write_bytes_atomic(&args.output, &out)
        .with_context(|| format!("{}: cannot write", args.output.display()))?;
    // The written file must load: a check, not a formality (tract parses it all).
    Classifier::load(&args.output, &LoadOptions::default()).with_context(|| {
        format!(
            "{}: written, but fennec cannot load it back",
            args.output.display()
        )
    })?;
    if args.json {
        let value = json!({ "output": args.output, "report": report });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_report(&args.output, &report);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(out: &std::path::Path, r: &Report) {
    let c = &r.calibration;
    println!(
        "wrote {} ({}, {:.1} % of the float file's {})",
        out.display(),
        HumanBytes(r.output_bytes as u64),
        100.0 * r.output_bytes as f64 / r.input_bytes.max(1) as f64,
        HumanBytes(r.input_bytes as u64)
    );
    let classes: Vec<String> = c
        .per_class
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!(
        "calibration: {} images of {} ({}), method {:?}; {} skipped",
        c.images,
        c.dir,
        classes.join(", "),
        c.method,
        c.skipped
    );
    for s in &r.skipped {
        println!("  skipped [{}] {}", s.kind, s.reason);
    }
    println!(
        "int8: {} nodes ({}), {} activation tensors",
        r.quantized.len(),
        r.quantized.join(", "),
        r.activations
    );
    if !r.left_in_float.is_empty() {
        println!("left in float: {}", r.left_in_float.len());
        for f in &r.left_in_float {
            println!("  {} ({}): {}", f.name, f.op, f.reason);
        }
    }
}
