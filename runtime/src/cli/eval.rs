//! `fennec eval MODEL DIR`: score a labelled folder and report per-class metrics.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use fennec_runtime::atomic::write_atomic;
use fennec_runtime::folder::{Skipped, scan_class_folders};
use fennec_runtime::metrics::Summary;
use fennec_runtime::part::{EvalPart, RunIdentity, Tally, file_sha256};
use fennec_runtime::pipeline::{PipelineTimes, classify_files};
use fennec_runtime::predictions::{Header, Prediction, PredictionsFile};
use fennec_runtime::scores::top_k;
use fennec_runtime::{Classifier, Source};
use serde::Serialize;

use super::scale_out::{ScaleArgs, key_under};
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

    #[command(flatten)]
    out: OutputArgs,

    /// Write misclassified files as CSV: file, true label, predicted label, confidence.
    #[arg(long, value_name = "PATH")]
    misclassified: Option<PathBuf>,

    /// Also print where the wall time went: decoding, resizing, inference, and
    /// each side waiting for the other (which one is the bottleneck).
    #[arg(long)]
    profile: bool,

    #[command(flatten)]
    scale: ScaleArgs,

    #[command(flatten)]
    run: RunArgs,
}

/// The report's outputs, shared by `eval` and `merge`.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Write the full report as JSON to PATH; `--json` alone or `--json -` prints it
    /// on stdout instead of the table.
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "-")]
    json: Option<PathBuf>,

    /// Write per-class metrics as CSV.
    #[arg(long, value_name = "PATH")]
    csv: Option<PathBuf>,

    /// Write an HTML report into folder DIR: index.html (self-contained, no
    /// network), the confusion matrix as a heat map, per-class bars and the most
    /// confident mistakes of each class as thumbnails.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
}

/// The JSON report.
#[derive(Serialize)]
struct Report<'a> {
    model: &'a Path,
    model_sha256: &'a str,
    dir: &'a Path,
    files: u64,
    scored: u64,
    skipped: &'a [Skipped],
    seconds: f64,
    images_per_second: f64,
    #[serde(flatten)]
    summary: &'a Summary,
    /// With `eval --profile`.
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<&'a PipelineTimes>,
}

struct Miss {
    file: PathBuf,
    truth: usize,
    predicted: usize,
    confidence: f32,
}

pub fn run(args: EvalArgs) -> Result<ExitCode> {
    let shard = args.scale.shard();
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
    let labels = &classifier.labels;
    let model = &classifier.info.path;
    let id = RunIdentity {
        model: model.clone(),
        model_sha256: file_sha256(model)?,
        model_info: serde_json::to_value(&classifier.info)?,
        labels: labels.clone(),
        preprocess: classifier.preprocess.clone(),
        top_k: args.top_k as usize,
        dir: args.dir.clone(),
        shard,
        listed: folders.files.len() as u64,
    };
    let mut predictions = match &args.scale.predictions {
        Some(path) => {
            let k = (args.top_k as usize).clamp(1, labels.len().max(1));
            let header = Header::new(id.model_sha256.clone(), labels.clone(), k, shard);
            Some(PredictionsFile::open(path, &header, args.scale.resume)?)
        }
        None => None,
    };
    let mut tally = Tally::new(id);
    let root = [args.dir.as_path()];
    for s in folders.skipped {
        if shard.contains(&key_under(&s.path, &root)) {
            tally.skip(s);
        }
    }

    // This shard's files: replayed from the predictions file, or to score.
    let mut misses = Vec::new();
    // Files to score, and beside each its shard key and true class.
    let mut files: Vec<PathBuf> = Vec::new();
    let mut todo: Vec<(String, usize)> = Vec::new();
    let label_ix: HashMap<&str, usize> = labels
        .iter()
        .enumerate()
        .rev()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    for (path, class) in folders.files {
        let key = key_under(&path, &root);
        if !shard.contains(&key) {
            continue;
        }
        tally.count_file();
        let truth = to_label[class];
        let done = predictions.as_mut().and_then(|(_, done)| done.remove(&key));
        match done {
            Some(p) => {
                replay(&mut tally, &mut misses, p, path, truth, &label_ix).with_context(|| {
                    let file = args.scale.predictions.as_deref().unwrap_or(Path::new("?"));
                    format!("{}: cannot resume", file.display())
                })?
            }
            None => {
                files.push(path);
                todo.push((key, truth));
            }
        }
    }
    let (mut predictions, stale) = match predictions {
        Some((file, done)) => (Some(file), done.len()),
        None => (None, 0),
    };
    if stale > 0 {
        eprintln!(
            "note: {stale} lines of the predictions file name files not in this shard of {}; ignored",
            args.dir.display()
        );
    }

    let k = tally.k();
    let bar = args.run.progress(files.len() as u64, "eval");
    let start = Instant::now();
    let mut append_result = Ok(());
    let times = classify_files(&classifier, &files, &args.run.pipeline(), |ix, outcome| {
        bar.inc(1);
        let (path, (key, truth)) = (&files[ix], &todo[ix]);
        let line = match outcome {
            Ok(probs) => {
                let ranked = top_k(&probs, k);
                let predicted = ranked[0];
                let confidence = probs[predicted];
                tally.scored(
                    key,
                    path,
                    *truth,
                    predicted,
                    confidence,
                    ranked.contains(truth),
                );
                if predicted != *truth {
                    misses.push(Miss {
                        file: path.clone(),
                        truth: *truth,
                        predicted,
                        confidence,
                    });
                }
                Prediction {
                    file: key.clone(),
                    truth: labels[*truth].clone(),
                    predicted: Some(labels[predicted].clone()),
                    confidence: Some(confidence),
                    top_k: Some(ranked.iter().map(|&c| labels[c].clone()).collect()),
                    skipped: None,
                    reason: None,
                }
            }
            Err(e) => {
                let skipped = Skipped {
                    path: path.clone(),
                    kind: e.kind().into(),
                    reason: e.to_string(),
                };
                let line = Prediction {
                    file: key.clone(),
                    truth: labels[*truth].clone(),
                    predicted: None,
                    confidence: None,
                    top_k: None,
                    skipped: Some(skipped.kind.clone()),
                    reason: Some(skipped.reason.clone()),
                };
                tally.skip(skipped);
                line
            }
        };
        if let (Some(out), Ok(())) = (predictions.as_mut(), &append_result) {
            append_result = out.append(&line);
        }
    })?;
    append_result?;
    bar.finish_and_clear();
    let part = tally.finish(start.elapsed().as_secs_f64(), &args.run.pipeline().limits);
    if part.scored() == 0 && shard.count == 1 {
        bail!(
            "{}: none of the {} images could be scored (first: {})",
            args.dir.display(),
            part.files,
            part.skipped
                .first()
                .map_or("?".into(), |s| s.reason.clone())
        );
    }
    if let Some(path) = &args.scale.part {
        write_atomic(path, |w| {
            serde_json::to_writer(&mut *w, &part).map_err(Into::into)
        })
        .with_context(|| format!("{}: cannot write the partial report", path.display()))?;
    }
    if let Some(path) = &args.misclassified {
        write_atomic(path, |w| write_misses(w, &misses, labels))
            .with_context(|| format!("{}: cannot write misclassified list", path.display()))?;
    }
    write_outputs(&args.out, &part, args.profile.then_some(&times))?;
    Ok(ExitCode::SUCCESS)
}

/// Counts a file already scored by an earlier run, from its predictions line.
fn replay(
    tally: &mut Tally,
    misses: &mut Vec<Miss>,
    p: Prediction,
    path: PathBuf,
    truth: usize,
    label_ix: &HashMap<&str, usize>,
) -> Result<()> {
    if let (Some(kind), Some(reason)) = (p.skipped, p.reason) {
        tally.skip(Skipped { path, kind, reason });
        return Ok(());
    }
    let (Some(predicted), Some(confidence), Some(ranked)) = (p.predicted, p.confidence, p.top_k)
    else {
        bail!("line for {} has neither a prediction nor a reason", p.file);
    };
    let Some(&predicted) = label_ix.get(predicted.as_str()) else {
        bail!("line for {} predicts unknown label '{predicted}'", p.file);
    };
    let hit = ranked
        .iter()
        .any(|l| label_ix.get(l.as_str()) == Some(&truth));
    tally.scored(&p.file, &path, truth, predicted, confidence, hit);
    if predicted != truth {
        misses.push(Miss {
            file: path,
            truth,
            predicted,
            confidence,
        });
    }
    Ok(())
}

/// Prints the report of `part` (a table, or JSON with `--json`) and writes the
/// files `out` asks for: what `eval` and `merge` both end with (`profile`: eval's
/// `--profile`).
pub fn write_outputs(
    out_args: &OutputArgs,
    part: &EvalPart,
    profile: Option<&PipelineTimes>,
) -> Result<()> {
    let summary = part.summary();
    let report = Report {
        model: &part.model,
        model_sha256: &part.model_sha256,
        dir: &part.dir,
        files: part.files,
        scored: summary.images,
        skipped: &part.skipped,
        seconds: part.seconds,
        images_per_second: summary.images as f64 / part.seconds.max(1e-9),
        summary: &summary,
        profile,
    };
    let json_to_stdout = out_args.json.as_deref() == Some(Path::new("-"));
    if let Some(path) = out_args.json.as_deref().filter(|_| !json_to_stdout) {
        write_atomic(path, |w| {
            serde_json::to_writer_pretty(&mut *w, &report).map_err(Into::into)
        })
        .with_context(|| format!("{}: cannot write JSON report", path.display()))?;
    }
    if let Some(path) = &out_args.csv {
        write_atomic(path, |w| write_class_csv(w, &summary))
            .with_context(|| format!("{}: cannot write CSV", path.display()))?;
    }
    if let Some(dir) = &out_args.report {
        write_report(dir, part)?;
    }
    let mut out = std::io::stdout().lock();
    if json_to_stdout {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write_tables(&mut out, &report)?;
        if let Some(times) = profile {
            write_profile(&mut out, times)?;
        }
    }
    Ok(())
}

#[cfg(feature = "report")]
fn write_report(dir: &Path, part: &EvalPart) -> Result<()> {
    Ok(fennec_runtime::report::write_report(dir, part)?)
}

#[cfg(not(feature = "report"))]
fn write_report(dir: &Path, _part: &EvalPart) -> Result<()> {
    bail!(
        "{}: this fennec was built without the `report` feature (the lite build); \
         write a --part and run `fennec merge PART --report DIR` with a full build",
        dir.display()
    )
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
