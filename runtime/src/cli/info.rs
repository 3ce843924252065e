//! `fennec info MODEL`: what a model takes, gives and costs.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
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
        format!("{} ({})", i.path.display(), human_bytes(i.file_size)),
    ]);
    t.row([
        "producer".to_string(),
        format!("{} {}", i.producer, i.producer_version)
            .trim()
            .to_string(),
    ]);
    t.row([
        "opset".to_string(),
        format!("{} (ir_version {})", i.opset, i.ir_version),
    ]);
    t.row([
        "input".to_string(),
        format!(
            "{} [{}] {:?}",
            i.input_name,
            i.input_shape.join(", "),
            i.layout
        )
        .to_string(),
    ]);
    t.row([
        "output".to_string(),
        format!(
            "{} [{}]: {}",
            i.output_name,
            i.output_shape.join(", "),
            i.output_kind.describe()
        ),
    ]);
    t.row([
        "batch".to_string(),
        i.fixed_batch
            .map_or("dynamic".to_string(), |b| format!("fixed at {b}")),
    ]);
    t.row(["parameters".to_string(), group_digits(i.parameters)]);
    t.row([
        "FLOPs/image".to_string(),
        i.flops_per_image.map_or("unknown".into(), |f| {
            format!("{} ({:.3} GFLOP)", group_digits(f), f as f64 / 1e9)
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

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn digits() {
        assert_eq!(super::group_digits(1234567), "1,234,567");
        assert_eq!(super::group_digits(12), "12");
        assert_eq!(super::human_bytes(2048), "2.0 KiB");
    }
}
