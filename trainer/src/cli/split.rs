//! `fennec-train split RAW_DIR OUT_DIR`: stratified train/validation/test folders
//! from a raw `<class>/*` folder, corrupt files quarantined with a report.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use fennec_train::split::{SplitOptions, SplitReport, split};

use super::console::Console;

#[derive(Debug, Args)]
pub struct SplitArgs {
    /// Raw folder with one sub-folder per class, e.g. PetImages (Cat/, Dog/). Only read.
    raw_dir: PathBuf,

    /// Output folder: gets train/, validation/, test/ (each with the class folders),
    /// quarantine/ for files that fail to decode, quarantine.csv and split.json.
    /// Must be empty or missing, and outside RAW_DIR.
    out_dir: PathBuf,

    /// Fraction of each class for validation/.
    #[arg(long, default_value_t = 0.1, value_name = "FRACTION")]
    val: f64,

    /// Fraction of each class for test/.
    #[arg(long, default_value_t = 0.1, value_name = "FRACTION")]
    test: f64,

    /// Seed of the shuffle: the same seed and files give the same split.
    #[arg(long, default_value_t = 42)]
    seed: u64,

    /// Hard-link files instead of copying them (no extra disk space). Falls back
    /// to copying where links are impossible, e.g. across filesystems.
    #[arg(long)]
    link: bool,

    /// Use a non-empty OUT_DIR: its train/, validation/, test/, quarantine/,
    /// quarantine.csv and split.json are removed first; nothing else is touched.
    #[arg(long)]
    force: bool,

    /// Print the report as JSON (as OUT_DIR/split.json).
    #[arg(long)]
    json: bool,

    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(args: SplitArgs) -> Result<ExitCode> {
    let opts = SplitOptions {
        val: args.val,
        test: args.test,
        seed: args.seed,
        link: args.link,
        force: args.force,
    };
    let console = Console::new(args.quiet);
    let report = split(&args.raw_dir, &args.out_dir, &opts, &console);
    console.clear();
    let report = report?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        print_table(&mut out, &report)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(out: &mut impl Write, r: &SplitReport) -> std::io::Result<()> {
    let header = ["class", "train", "validation", "test", "quarantined"];
    let mut rows: Vec<[String; 5]> = r
        .classes
        .iter()
        .chain(std::iter::once(&r.totals()))
        .map(|c| {
            [
                c.class.clone(),
                c.train.to_string(),
                c.validation.to_string(),
                c.test.to_string(),
                c.quarantined.to_string(),
            ]
        })
        .collect();
    let total = rows.pop().expect("totals row");
    let widths: Vec<usize> = (0..5)
        .map(|i| {
            rows.iter()
                .chain([&total])
                .map(|row| row[i].chars().count())
                .max()
                .unwrap_or(0)
                .max(header[i].len())
        })
        .collect();
    let line = |row: &[String; 5]| {
        let mut s = format!("{:<w$}", row[0], w = widths[0]);
        for i in 1..5 {
            s += &format!("  {:>w$}", row[i], w = widths[i]);
        }
        s
    };
    let rule = "-".repeat(widths.iter().sum::<usize>() + 8);
    writeln!(out, "{}", line(&header.map(String::from)))?;
    writeln!(out, "{rule}")?;
    for row in &rows {
        writeln!(out, "{}", line(row))?;
    }
    writeln!(out, "{rule}")?;
    writeln!(out, "{}", line(&total))?;
    writeln!(out)?;
    let how = match (r.linked, r.copied) {
        (0, c) => format!("copied {}", files(c)),
        (l, 0) => format!("hard-linked {}", files(l)),
        (l, c) => format!("hard-linked {}, copied {c}", files(l)),
    };
    writeln!(
        out,
        "{how} into {} (seed {}, val {}, test {})",
        r.out_dir.display(),
        r.seed,
        r.val,
        r.test
    )?;
    if let Some(why) = &r.link_fallback {
        writeln!(out, "hard links were not possible, copied instead: {why}")?;
    }
    if !r.quarantined.is_empty() {
        writeln!(
            out,
            "quarantined {} that do not decode (in {}, reasons in {}):",
            files(r.quarantined.len()),
            r.out_dir.join("quarantine").display(),
            r.out_dir.join("quarantine.csv").display()
        )?;
        for q in r.quarantined.iter().take(10) {
            writeln!(out, "  {}", q.reason)?;
        }
        if r.quarantined.len() > 10 {
            writeln!(
                out,
                "  ... and {} more (see quarantine.csv)",
                r.quarantined.len() - 10
            )?;
        }
    }
    if !r.ignored.is_empty() {
        let n = r.ignored.len();
        writeln!(
            out,
            "ignored {n} {} not images in class folders:",
            if n == 1 {
                "path that is"
            } else {
                "paths that are"
            }
        )?;
        for i in r.ignored.iter().take(10) {
            writeln!(out, "  {}", i.reason)?;
        }
        if r.ignored.len() > 10 {
            writeln!(
                out,
                "  ... and {} more (see split.json)",
                r.ignored.len() - 10
            )?;
        }
    }
    for c in &r.classes {
        if c.train + c.validation + c.test == 0 {
            writeln!(out, "warning: class '{}' has no usable image", c.class)?;
        }
    }
    Ok(())
}

fn files(n: usize) -> String {
    format!("{n} file{}", if n == 1 { "" } else { "s" })
}
