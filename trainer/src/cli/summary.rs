//! `fennec-train summary CONFIG`: the layer table, like Keras' `model.summary()`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use fennec_train::config::{Config, Shape};

#[derive(Debug, Args)]
pub struct SummaryArgs {
    /// YAML config file.
    config: PathBuf,

    /// Number of classes for the last layer (normally the number of class folders).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    classes: u32,

    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: SummaryArgs) -> Result<ExitCode> {
    let config = Config::load(&args.config)?;
    let plan = config
        .resolve(args.classes as usize)
        .with_context(|| args.config.display().to_string())?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&plan)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "Model: \"{}\"  (input {}, {} classes)",
        config.name, plan.input, plan.num_classes
    )?;
    let rows: Vec<[String; 3]> = plan
        .layers
        .iter()
        .map(|l| {
            let shape = match l.output {
                Shape::Map([c, h, w]) => format!("(None, {h}, {w}, {c})"),
                Shape::Flat(n) => format!("(None, {n})"),
            };
            [
                format!("{} (layers[{}])", l.spec.kind(), l.index),
                shape,
                l.params.to_string(),
            ]
        })
        .collect();
    // A column's width: its widest cell or its header.
    let width = |col: usize, header: &str| {
        rows.iter()
            .map(|r| r[col].len())
            .max()
            .unwrap_or(0)
            .max(header.len())
    };
    let (w0, w1) = (width(0, "Layer (type)"), width(1, "Output Shape"));
    let rule = "=".repeat(w0 + w1 + 16);
    writeln!(
        out,
        "{rule}\n{:<w0$}  {:<w1$}  {:>12}\n{rule}",
        "Layer (type)", "Output Shape", "Param #"
    )?;
    for r in &rows {
        writeln!(out, "{:<w0$}  {:<w1$}  {:>12}", r[0], r[1], r[2])?;
    }
    writeln!(out, "{rule}\nTotal params: {}", plan.total_params())?;
    Ok(ExitCode::SUCCESS)
}
