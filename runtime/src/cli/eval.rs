//! `fennec eval MODEL DIR`: score a labelled folder and report per-class metrics.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use fennec_runtime::atomic::write_atomic;
use fennec_runtime::folder::{Skipped, scan_class_folders};
use fennec_runtime::metrics::{Evaluation, Summary};
use fennec_runtime::pipeline::{PipelineTimes, classify_files};
use fennec_runtime::{Classifier, Source};
use serde::Serialize;

use super::table::Table;
use super::{ModelArgs, RunArgs, f4, print_defaults_note};

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,

    /// Folder with one sub-folder per class (names as the model's labels).
    #[arg(value_name = "DIR")]
    dir: PathBuf,

    /// Also report top-K accuracy.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    top_k: u32,

    /// Write the full report as JSON to PATH; `--json` alone or `--json -` prints it
    /// on stdout instead of the table.
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "-")]
    json: Option<PathBuf>,

    /// Write per-class metrics as CSV.
    #[arg(long, value_name = "PATH")]
    csv: Option<PathBuf>,

    /// Write misclassified files as CSV: file, true label, predicted label, confidence.
    #[arg(long, value_name = "PATH")]
    misclassified: Option<PathBuf>,

    /// Also print where the wall time went: decoding, resizing, inference, and
    /// each side waiting for the other (which one is the bottleneck).
    #[arg(long)]
    profile: bool,

    #[command(flatten)]
    run: RunArgs,
}

/// The JSON report.
#[derive(Serialize)]
struct Report<'a> {
    model: &'a Path,
    dir: &'a Path,
    files: usize,
    scored: u64,
    skipped: &'a [Skipped],
    seconds: f64,
    images_per_second: f64,
    #[serde(flatten)]
    summary: &'a Summary,
    /// With `--profile`.
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<PipelineTimes>,
}

struct Miss {
    file: PathBuf,
    truth: usize,
    predicted: usize,
    confidence: f32,
}

pub fn run(args: EvalArgs) -> Result<ExitCode> {
    let classifier = args.model.load()?;
    print_defaults_note(&classifier);
    let folders = scan_class_folders(&args.dir)?;
    let to_label = map_classes(&args.dir, &folders.classes, &classifier)?;
    if folders.files.is_empty() {
        bail!(
            "{}: no image files in the class folders",
            args.dir.display()
        );
    }
    let files: Vec<PathBuf> = folders.files.iter().map(|(p, _)| p.clone()).collect();
    let mut skipped = folders.skipped.clone();
    let mut eval = Evaluation::new(classifier.labels.clone(), args.top_k as usize);
    let mut misses = Vec::new();

    let bar = args.run.progress(files.len() as u64, "eval");
    let start = Instant::now();
    let pipeline = args.run.pipeline();
    let times = classify_files(&classifier, &files, &pipeline, |ix, outcome| {
        bar.inc(1);
        let truth = to_label[folders.files[ix].1];
        match outcome {
            Ok(probs) => {
                let predicted = eval.add(truth, &probs);
                if predicted != truth {
                    misses.push(Miss {
                        file: files[ix].clone(),
                        truth,
                        predicted,
                        confidence: probs[predicted],
                    });
                }
            }
            Err(e) => skipped.push(Skipped {
                path: files[ix].clone(),
                kind: e.kind().into(),
                reason: e.to_string(),
            }),
        }
    })?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let summary = eval.summary();
    if summary.images == 0 {
        bail!(
            "{}: none of the {} images could be scored (first: {})",
            args.dir.display(),
            files.len(),
            skipped.first().map_or("?".into(), |s| s.reason.clone())
        );
    }
    let report = Report {
        model: &classifier.info.path,
        dir: &args.dir,
        files: files.len(),
        scored: summary.images,
        skipped: &skipped,
        seconds,
        images_per_second: summary.images as f64 / seconds.max(1e-9),
        summary: &summary,
        profile: args.profile.then_some(times),
    };

    let json_to_stdout = args.json.as_deref() == Some(Path::new("-"));
    if let Some(path) = args.json.as_deref().filter(|_| !json_to_stdout) {
        write_atomic(path, |w| {
            serde_json::to_writer_pretty(&mut *w, &report).map_err(Into::into)
        })
        .with_context(|| format!("{}: cannot write JSON report", path.display()))?;
    }
    if let Some(path) = &args.csv {
        write_atomic(path, |w| write_class_csv(w, &summary))
            .with_context(|| format!("{}: cannot write CSV", path.display()))?;
    }
    if let Some(path) = &args.misclassified {
        write_atomic(path, |w| write_misses(w, &misses, &classifier.labels))
            .with_context(|| format!("{}: cannot write misclassified list", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    if json_to_stdout {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write_tables(&mut out, &report)?;
        if let Some(times) = &report.profile {
            write_profile(&mut out, times)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Folder class names → label indices. By name when every folder is a label; when
/// the model has no labels, sorted folders map to outputs in order (Keras'
/// `flow_from_directory` convention) if the counts agree.
fn map_classes(dir: &Path, folders: &[String], c: &Classifier) -> Result<Vec<usize>> {
    let by_name: Option<Vec<usize>> = folders
        .iter()
        .map(|f| c.labels.iter().position(|l| l == f))
        .collect();
    if let Some(m) = by_name {
        return Ok(m);
    }
    if c.info.labels_source == Source::Default && folders.len() == c.labels.len() {
        eprintln!(
            "note: mapping the {} sorted class folders of {} to model outputs 0..{} in order",
            folders.len(),
            dir.display(),
            folders.len() - 1
        );
        return Ok((0..folders.len()).collect());
    }
    let unknown: Vec<&str> = folders
        .iter()
        .filter(|f| !c.labels.contains(f))
        .map(String::as_str)
        .collect();
    bail!(
        "{}: class folders [{}] do not match the model's labels [{}] (not a label: {}); \
         rename the folders or give --labels FILE",
        dir.display(),
        folders.join(", "),
        c.labels.join(", "),
        unknown.join(", ")
    )
}

/// `--profile`: the pipeline's time, and what each side of it waited for.
fn write_profile(out: &mut dyn Write, t: &PipelineTimes) -> std::io::Result<()> {
    let threads = fennec_runtime::classifier::inference_threads();
    writeln!(
        out,
        "\nwhere the {:.2} s went ({} decode threads, {threads} inference threads):",
        t.wall_s, t.decode_threads
    )?;
    let share = |s: f64| format!("{:.0} %", 100.0 * s / t.wall_s.max(1e-9));
    let mut table = Table::new(["stage", "seconds", "of wall time"]);
    for (stage, s) in [
        ("decode (thread-seconds)", t.decode_s),
        ("resize + normalise (thread-seconds)", t.resize_s),
        ("inference", t.infer_s),
        ("inference waiting for images", t.infer_waiting_s),
        ("decoders waiting for inference", t.decode_waiting_s),
    ] {
        table.row([stage.to_string(), format!("{s:.2}"), share(s)]);
    }
    table.write(out)?;
    let bottleneck = if t.infer_waiting_s > t.decode_waiting_s {
        "decoding: add decode threads or give inference fewer"
    } else {
        "inference: decoding keeps up"
    };
    writeln!(out, "bottleneck: {bottleneck}")
}

fn write_tables(out: &mut dyn Write, r: &Report) -> std::io::Result<()> {
    let s = r.summary;
    writeln!(
        out,
        "{}: {} images, {} scored, {} skipped in {:.2} s ({:.1} images/s)\n",
        r.dir.display(),
        r.files,
        r.scored,
        r.skipped.len(),
        r.seconds,
        r.images_per_second
    )?;
    let mut t = Table::new([
        "class",
        "support",
        "correct",
        "accuracy",
        "precision",
        "recall",
        "f1",
    ]);
    for m in &s.per_class {
        t.row([
            m.label.clone(),
            m.support.to_string(),
            m.correct.to_string(),
            f4(m.accuracy),
            f4(m.precision),
            f4(m.recall),
            f4(m.f1),
        ]);
    }
    t.row(["", "", "", "", "", "", ""]);
    for (name, a) in [
        ("macro avg", &s.macro_avg),
        ("weighted avg", &s.weighted_avg),
    ] {
        t.row([
            name.to_string(),
            s.images.to_string(),
            String::new(),
            String::new(),
            f4(a.precision),
            f4(a.recall),
            f4(a.f1),
        ]);
    }
    t.write(out)?;
    writeln!(
        out,
        "\naccuracy: {} ({}/{})   top-{} accuracy: {}",
        f4(s.accuracy),
        s.correct,
        s.images,
        s.top_k,
        f4(s.top_k_accuracy)
    )?;

    writeln!(
        out,
        "\nconfusion matrix (rows: true class, columns: predicted class index)"
    )?;
    let n = s.labels.len();
    let mut cm = Table::new(
        std::iter::once("true \\ predicted".to_string()).chain((0..n).map(|i| i.to_string())),
    );
    for (i, row) in s.confusion.iter().enumerate() {
        cm.row(
            std::iter::once(format!("{i} {}", s.labels[i]))
                .chain(row.iter().map(|v| v.to_string())),
        );
    }
    cm.write(out)?;

    if !r.skipped.is_empty() {
        writeln!(out, "\nskipped ({}):", r.skipped.len())?;
        for sk in r.skipped {
            writeln!(out, "  [{}] {}", sk.kind, sk.reason)?;
        }
    }
    Ok(())
}

/// One row of `--csv`: a class's metrics.
#[derive(Serialize)]
struct ClassRow<'a> {
    class: &'a str,
    support: u64,
    correct: u64,
    predicted: u64,
    #[serde(serialize_with = "six_places")]
    accuracy: f64,
    #[serde(serialize_with = "six_places")]
    precision: f64,
    #[serde(serialize_with = "six_places")]
    recall: f64,
    #[serde(serialize_with = "six_places")]
    f1: f64,
}

/// One row of `--misclassified`.
#[derive(Serialize)]
struct MissRow<'a> {
    file: String,
    true_label: &'a str,
    predicted_label: &'a str,
    #[serde(serialize_with = "six_places")]
    confidence: f32,
}

fn write_class_csv(w: &mut dyn Write, s: &Summary) -> std::io::Result<()> {
    let rows = s.per_class.iter().map(|m| ClassRow {
        class: &m.label,
        support: m.support,
        correct: m.correct,
        predicted: m.predicted,
        accuracy: m.accuracy,
        precision: m.precision,
        recall: m.recall,
        f1: m.f1,
    });
    write_csv(w, rows)
}

fn write_misses(w: &mut dyn Write, misses: &[Miss], labels: &[String]) -> std::io::Result<()> {
    let rows = misses.iter().map(|m| MissRow {
        file: m.file.display().to_string(),
        true_label: &labels[m.truth],
        predicted_label: &labels[m.predicted],
        confidence: m.confidence,
    });
    write_csv(w, rows)
}

/// A header from the row type's fields, then the rows, quoted where needed (RFC 4180).
fn write_csv<R: Serialize>(
    w: &mut dyn Write,
    rows: impl Iterator<Item = R>,
) -> std::io::Result<()> {
    let mut csv = csv::Writer::from_writer(w);
    for row in rows {
        csv.serialize(row)?;
    }
    csv.flush()
}

/// Ratios in CSV files with six decimals, as `{:.6}` writes them.
fn six_places<T: std::fmt::Display, S: serde::Serializer>(x: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{x:.6}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_are_quoted_where_needed() {
        let misses = [Miss {
            file: PathBuf::from("a,b.png"),
            truth: 0,
            predicted: 1,
            confidence: 0.5,
        }];
        let labels = ["say \"hi\"".to_string(), "plain".to_string()];
        let mut out = Vec::new();
        write_misses(&mut out, &misses, &labels).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "file,true_label,predicted_label,confidence\n\"a,b.png\",\"say \"\"hi\"\"\",plain,0.500000\n"
        );
    }
}
