//! `fennec compare A.onnx B.onnx DIR`: two models on one labelled folder, side by
//! side: how often they agree, each one's accuracy per class, and the images whose
//! answer changed. Made to check an int8 file against the float one it came from.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use fennec_runtime::folder::{Skipped, scan_class_folders};
use fennec_runtime::pipeline::classify_files;
use fennec_runtime::scores::top_k;
use fennec_runtime::{Classifier, LoadOptions};
use serde::Serialize;

use super::table::Table;
use super::{RunArgs, f4};

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The reference model (e.g. the float file).
    #[arg(value_name = "A.onnx")]
    a: PathBuf,

    /// The model compared with it (e.g. its int8 file); same classes.
    #[arg(value_name = "B.onnx")]
    b: PathBuf,

    /// Folder with one sub-folder per class (names as the models' labels).
    #[arg(value_name = "DIR")]
    dir: PathBuf,

    /// Print the report as JSON instead of tables.
    #[arg(long)]
    json: bool,

    /// Images whose answer changed listed at most in the table (all in --json).
    #[arg(long, default_value_t = 20)]
    show: usize,

    #[command(flatten)]
    run: RunArgs,
}

/// One image the two models answer differently.
#[derive(Debug, Serialize)]
struct Changed {
    file: PathBuf,
    truth: String,
    a: String,
    a_confidence: f32,
    b: String,
    b_confidence: f32,
}

#[derive(Debug, Serialize)]
struct ClassRow {
    class: String,
    support: u64,
    a_accuracy: f64,
    b_accuracy: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    a: PathBuf,
    b: PathBuf,
    dir: PathBuf,
    images: u64,
    agreement: f64,
    a_accuracy: f64,
    b_accuracy: f64,
    /// Largest difference of one class probability over all images.
    max_probability_difference: f32,
    per_class: Vec<ClassRow>,
    changed: Vec<Changed>,
    skipped: Vec<Skipped>,
}

pub fn run(args: CompareArgs) -> Result<ExitCode> {
    let a = Classifier::load(&args.a, &LoadOptions::default())?;
    let b = Classifier::load(&args.b, &LoadOptions::default())?;
    if a.labels != b.labels {
        bail!(
            "{} and {}: the models' labels differ ([{}] vs [{}])",
            args.a.display(),
            args.b.display(),
            a.labels.join(", "),
            b.labels.join(", ")
        );
    }
    let folders = scan_class_folders(&args.dir)?;
    let to_label: Vec<usize> = folders
        .classes
        .iter()
        .map(|f| a.labels.iter().position(|l| l == f))
        .collect::<Option<_>>()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{}: class folders [{}] do not match the models' labels [{}]",
                args.dir.display(),
                folders.classes.join(", "),
                a.labels.join(", ")
            )
        })?;
    if folders.files.is_empty() {
        bail!(
            "{}: no image files in the class folders",
            args.dir.display()
        );
    }
    let files: Vec<PathBuf> = folders.files.iter().map(|(p, _)| p.clone()).collect();
    let options = args.run.pipeline();
    let mut skipped = folders.skipped.clone();
    let mut score = |c: &Classifier, name: &str| -> Result<Vec<Option<Vec<f32>>>> {
        let mut rows = vec![None; files.len()];
        let bar = args.run.progress(files.len() as u64, name);
        classify_files(c, &files, &options, |ix, outcome| {
            bar.inc(1);
            match outcome {
                Ok(p) => rows[ix] = Some(p),
                Err(e) => skipped.push(Skipped {
                    path: files[ix].clone(),
                    kind: e.kind().into(),
                    reason: e.to_string(),
                }),
            }
        })?;
        bar.finish_and_clear();
        Ok(rows)
    };
    let pa = score(&a, "A")?;
    let pb = score(&b, "B")?;
    // An image skipped by A is skipped by B too (same decoding): listed once.
    skipped.sort_by(|x, y| x.path.cmp(&y.path));
    skipped.dedup_by(|x, y| x.path == y.path);

    let n = a.labels.len();
    let (mut support, mut right_a, mut right_b) = (vec![0u64; n], vec![0u64; n], vec![0u64; n]);
    let (mut images, mut agree, mut max_diff) = (0u64, 0u64, 0f32);
    let mut changed = Vec::new();
    for (ix, (ra, rb)) in pa.iter().zip(&pb).enumerate() {
        let (Some(ra), Some(rb)) = (ra, rb) else {
            continue;
        };
        let truth = to_label[folders.files[ix].1];
        let (ta, tb) = (top_k(ra, 1)[0], top_k(rb, 1)[0]);
        images += 1;
        support[truth] += 1;
        right_a[truth] += u64::from(ta == truth);
        right_b[truth] += u64::from(tb == truth);
        for (x, y) in ra.iter().zip(rb) {
            max_diff = max_diff.max((x - y).abs());
        }
        if ta == tb {
            agree += 1;
        } else {
            changed.push(Changed {
                file: files[ix].clone(),
                truth: a.labels[truth].clone(),
                a: a.labels[ta].clone(),
                a_confidence: ra[ta],
                b: a.labels[tb].clone(),
                b_confidence: rb[tb],
            });
        }
    }
    if images == 0 {
        bail!(
            "{}: none of the {} images could be scored",
            args.dir.display(),
            files.len()
        );
    }
    let ratio = |x: u64, of: u64| x as f64 / of.max(1) as f64;
    let report = Report {
        a: args.a.clone(),
        b: args.b.clone(),
        dir: args.dir.clone(),
        images,
        agreement: ratio(agree, images),
        a_accuracy: ratio(right_a.iter().sum(), images),
        b_accuracy: ratio(right_b.iter().sum(), images),
        max_probability_difference: max_diff,
        per_class: (0..n)
            .map(|c| ClassRow {
                class: a.labels[c].clone(),
                support: support[c],
                a_accuracy: ratio(right_a[c], support[c]),
                b_accuracy: ratio(right_b[c], support[c]),
            })
            .collect(),
        changed,
        skipped,
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write_tables(&mut out, &report, args.show)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn write_tables(out: &mut dyn Write, r: &Report, show: usize) -> std::io::Result<()> {
    let name = |p: &Path| p.display().to_string();
    writeln!(
        out,
        "{}: {} images scored by both; A = {}, B = {}\n",
        r.dir.display(),
        r.images,
        name(&r.a),
        name(&r.b)
    )?;
    let mut t = Table::new(["class", "support", "accuracy A", "accuracy B", "B - A"]);
    for c in &r.per_class {
        t.row([
            c.class.clone(),
            c.support.to_string(),
            f4(c.a_accuracy),
            f4(c.b_accuracy),
            format!("{:+.4}", c.b_accuracy - c.a_accuracy),
        ]);
    }
    t.row([
        "all".to_string(),
        r.images.to_string(),
        f4(r.a_accuracy),
        f4(r.b_accuracy),
        format!("{:+.4}", r.b_accuracy - r.a_accuracy),
    ]);
    t.write(out)?;
    writeln!(
        out,
        "\nagreement (same top-1): {} ({} of {} images changed); largest probability difference {:.4}",
        f4(r.agreement),
        r.changed.len(),
        r.images,
        r.max_probability_difference
    )?;
    if !r.changed.is_empty() {
        writeln!(
            out,
            "\nchanged answers (first {}):",
            show.min(r.changed.len())
        )?;
        let mut t = Table::new(["file", "true", "A", "B"]).left_aligned();
        for c in r.changed.iter().take(show) {
            t.row([
                c.file.display().to_string(),
                c.truth.clone(),
                format!("{} ({:.3})", c.a, c.a_confidence),
                format!("{} ({:.3})", c.b, c.b_confidence),
            ]);
        }
        t.write(out)?;
    }
    if !r.skipped.is_empty() {
        writeln!(out, "\nskipped ({}):", r.skipped.len())?;
        for s in &r.skipped {
            writeln!(out, "  [{}] {}", s.kind, s.reason)?;
        }
    }
    Ok(())
}
