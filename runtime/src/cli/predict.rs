//! `fennec predict MODEL IMAGE...`: top-k classes per image, as a table or JSON lines.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use fennec_runtime::folder::expand_inputs;
use fennec_runtime::pipeline::classify_files;
use fennec_runtime::scores::top_k;
use fennec_runtime::shard::Shard;
use serde_json::json;

use super::scale_out::key_under;

use super::{ModelArgs, RunArgs, print_defaults_note};

/// Exit status: 1 when an image named on the command line could not be scored, or
/// when nothing was scored; bad files found inside directories or patterns are
/// reported and skipped.
#[derive(Debug, Args)]
pub struct PredictArgs {
    #[command(flatten)]
    model: ModelArgs,

    /// Image files, directories (searched recursively) or quoted glob patterns.
    #[arg(required = true, value_name = "IMAGE")]
    inputs: Vec<PathBuf>,

    /// How many classes to show per image, most likely first.
    #[arg(short = 'k', long = "top", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    top: u32,

    /// JSON lines on stdout (one object per image) instead of a table.
    #[arg(long)]
    json: bool,

    /// Score only shard INDEX of COUNT of the files (0-based), or auto/COUNT from
    /// $JOB_COMPLETION_INDEX or $SLURM_ARRAY_TASK_ID. A file's shard depends only on
    /// its path relative to the directory given (or its path as given).
    #[arg(long, value_name = "INDEX/COUNT")]
    shard: Option<Shard>,

    #[command(flatten)]
    run: RunArgs,
}

pub fn run(args: PredictArgs) -> Result<ExitCode> {
    let classifier = args.model.load()?;
    print_defaults_note(&classifier);
    let (mut files, skipped) = expand_inputs(&args.inputs)?;
    if let Some(shard) = args.shard {
        let roots: Vec<&std::path::Path> = args
            .inputs
            .iter()
            .filter(|p| p.is_dir())
            .map(|p| p.as_path())
            .collect();
        files.retain(|f| shard.contains(&key_under(f, &roots)));
    }
    for s in &skipped {
        eprintln!("skipped: {}", s.reason);
    }
    let explicit: HashSet<&PathBuf> = args.inputs.iter().filter(|p| !p.is_dir()).collect();
    let k = (args.top as usize).min(classifier.labels.len());
    let labels = &classifier.labels;

    let mut out = std::io::stdout().lock();
    let name_width = files
        .iter()
        .map(|f| f.display().to_string().chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 60);
    if !args.json {
        let mut header = format!("{:<name_width$}", "file");
        for r in 1..=k {
            let (l, p) = if k == 1 {
                ("class".into(), "prob".into())
            } else {
                (format!("top-{r}"), format!("p{r}"))
            };
            header += &format!("  {l:<12}  {p:>6}");
        }
        writeln!(out, "{}", header.trim_end())?;
    }

    let bar = args.run.progress(files.len() as u64, "predict");
    let (mut scored, mut failed_explicit) = (0usize, 0usize);
    let mut io_result: std::io::Result<()> = Ok(());
    classify_files(&classifier, &files, &args.run.pipeline(), |ix, outcome| {
        bar.inc(1);
        let file = &files[ix];
        let line = match outcome {
            Ok(probs) => {
                scored += 1;
                let ranked = top_k(&probs, k);
                if args.json {
                    let preds: Vec<_> = ranked
                        .iter()
                        .map(|&c| json!({"label": labels[c], "index": c, "probability": probs[c]}))
                        .collect();
                    json!({"file": file.display().to_string(), "predictions": preds}).to_string()
                } else {
                    let mut line = format!("{:<name_width$}", file.display().to_string());
                    for &c in &ranked {
                        line += &format!("  {:<12}  {:>6.4}", labels[c], probs[c]);
                    }
                    line
                }
            }
            Err(e) => {
                if explicit.contains(file) {
                    failed_explicit += 1;
                }
                bar.suspend(|| eprintln!("skipped: {e}"));
                if args.json {
                    json!({"file": file.display().to_string(), "error": e.to_string(), "kind": e.kind()}).to_string()
                } else {
                    format!(
                        "{:<name_width$}  error: {}",
                        file.display().to_string(),
                        e.kind()
                    )
                }
            }
        };
        if io_result.is_ok() {
            io_result = bar.suspend(|| writeln!(out, "{}", line.trim_end()));
        }
    })?;
    bar.finish_and_clear();
    io_result?;
    if scored == 0 {
        anyhow::bail!(
            "no image could be scored ({} given, all skipped)",
            files.len()
        );
    }
    Ok(if failed_explicit > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
