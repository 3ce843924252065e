//! `fennec info MODEL`: what a model takes, gives and costs.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use indicatif::{HumanBytes, HumanCount};
use serde_json::json;

use super::ModelArgs;
use super::table::Table;

#[derive(Debug, Args)]
pub struct InfoArgs {
    #[command(flatten)]
    model: ModelArgs,

    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InfoArgs) -> Result<ExitCode> {
    let c = args.model.load()?;
    let i = &c.info;
    let mut out = std::io::stdout().lock();
    if args.json {
        let value = json!({
            "model": i,
            "labels": c.labels,
            "preprocess": c.preprocess,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let source = |s| format!("{s:?}").to_lowercase();
    let mut t = Table::new(["field", "value"]).left_aligned();
    t.row([
        "file".to_string(),
        format!("{} ({})", i.path.display(), HumanBytes(i.file_size)),
    ]);
    t.row([
        "producer".to_string(),
        format!("{} {}", i.graph.producer, i.graph.producer_version)
            .trim()
            .to_string(),
    ]);
    t.row([
        "opset".to_string(),
        format!("{} (ir_version {})", i.graph.opset, i.graph.ir_version),
    ]);
    t.row([
        "input".to_string(),
        format!(
            "{} [{}] {:?}",
            i.graph.input_name,
            i.graph.input_shape.join(", "),
            i.graph.layout
        )
        .to_string(),
    ]);
    t.row([
        "output".to_string(),
        format!(
            "{} [{}]: {}",
            i.graph.output_name,
            i.graph.output_shape.join(", "),
            i.output_kind.describe()
        ),
    ]);
    t.row([
        "batch".to_string(),
        i.fixed_batch
            .map_or("dynamic".to_string(), |b| format!("fixed at {b}")),
    ]);
    t.row([
        "parameters".to_string(),
        HumanCount(i.graph.parameters).to_string(),
    ]);
    t.row([
        "precision".to_string(),
        format!(
            "{}, weights {}",
            i.graph.precision.kind,
            HumanBytes(i.graph.precision.weight_bytes)
        ),
    ]);
    t.row([
        "FLOPs/image".to_string(),
        i.flops_per_image.map_or("unknown".into(), |f| {
            format!("{} ({:.3} GFLOP)", HumanCount(f), f as f64 / 1e9)
        }),
    ]);
    t.row([
        format!("classes ({})", source(i.labels_source)),
        format!("{}: {}", c.labels.len(), c.labels.join(", ")),
    ]);
    t.row([
        format!("preprocess ({})", source(i.preprocess_source)),
        c.preprocess.describe(),
    ]);
    if let Some(name) = &i.metadata.model_name {
        t.row(["model name", name]);
    }
    if let Some(v) = &i.metadata.fennec_version {
        t.row(["fennec version", v]);
    }
    if let Some(h) = &i.metadata.weights_hash {
        t.row(["weights", h]);
    }
    if let Some(tr) = &i.metadata.training {
        t.row(["training".to_string(), describe_training(tr)]);
    }
    t.write(&mut out)?;
    Ok(ExitCode::SUCCESS)
}

/// One line from the training summary a fennec export carries (the whole of it is in
/// `--json`): epochs, seed, batch, validation accuracy and dataset sizes, when present.
fn describe_training(tr: &serde_json::Value) -> String {
    let num = |k: &str| tr.get(k).and_then(serde_json::Value::as_f64);
    let mut parts = vec![];
    if let Some(e) = num("epochs_trained") {
        parts.push(format!("{e} epochs"));
    }
    if let Some(b) = num("batch_size") {
        parts.push(format!("batch {b}"));
    }
    if let Some(s) = num("seed") {
        parts.push(format!("seed {s}"));
    }
    if let Some(a) = num("val_accuracy") {
        parts.push(format!("val_accuracy {a:.4}"));
    }
    if let Some(d) = tr.get("dataset").and_then(serde_json::Value::as_object) {
        let sizes: Vec<String> = d
            .iter()
            .filter(|(k, _)| *k != "skipped")
            .filter_map(|(k, v)| v.as_u64().map(|n| format!("{k} {n}")))
            .collect();
        if !sizes.is_empty() {
            parts.push(format!("images: {}", sizes.join(", ")));
        }
    }
    if parts.is_empty() {
        tr.to_string()
    } else {
        parts.join(", ")
    }
}
