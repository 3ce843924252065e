//! `fennec watch MODEL DIR`: score each new image of a folder once, as it arrives
//! (see `fennec_runtime::watch` for how "new" and "once" are kept across restarts).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use fennec_runtime::watch::{WatchOptions, Watcher};

use super::{ModelArgs, RunArgs, print_defaults_note};

/// One JSON line per image is appended to --out: {"file", "size", "mtime_ns",
/// "scored_at", "predictions": [{label, index, probability}]}, or "error" and "kind"
/// for a file that cannot be scored (logged on stderr, counted, not retried unless
/// the file changes). Files are taken once unchanged for --settle seconds; hidden
/// files (a camera's `.name.tmp` before its rename) are never taken. Stops on
/// Ctrl-C or SIGTERM after the poll in progress.
#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    model: ModelArgs,

    /// The folder to watch (its files only, not subfolders).
    dir: PathBuf,

    /// Results file (JSON lines, appended).
    #[arg(long, short, value_name = "FILE", default_value = "results.jsonl")]
    out: PathBuf,

    /// State file: which files are done [default: <OUT>.state.json]. Keep it to
    /// resume without scoring a file twice; delete it to start over.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,

    /// Move each file here once its line is written (failed files too).
    #[arg(long, value_name = "DIR")]
    move_done: Option<PathBuf>,

    /// Seconds a file must stay unchanged (size and modification time) before it
    /// is scored.
    #[arg(long, value_name = "SECS", default_value_t = 1.0, value_parser = non_negative)]
    settle: f64,

    /// Seconds between polls of the folder.
    #[arg(long, value_name = "SECS", default_value_t = 0.5, value_parser = non_negative)]
    interval: f64,

    /// Score every image present now (no settle wait), then exit: for a finished
    /// folder or a cron job.
    #[arg(long)]
    once: bool,

    /// How many classes per line, most likely first.
    #[arg(short = 'k', long = "top", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    top: u32,

    #[command(flatten)]
    run: RunArgs,
}

fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("'{s}' is not a number >= 0")),
    }
}

pub fn run(args: WatchArgs) -> Result<ExitCode> {
    let classifier = args.model.load()?;
    print_defaults_note(&classifier);
    let state = args.state.clone().unwrap_or_else(|| {
        let mut name = args.out.clone().into_os_string();
        name.push(".state.json");
        PathBuf::from(name)
    });
    let options = WatchOptions {
        settle: Duration::from_secs_f64(args.settle),
        top_k: args.top as usize,
        move_done: args.move_done.clone(),
        pipeline: args.run.pipeline(),
        ..WatchOptions::default()
    };
    let mut watcher = Watcher::open(&args.dir, &args.out, &state, options)?;
    let stop = Arc::new(AtomicBool::new(false));
    if !args.once {
        let flag = stop.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
            .context("cannot install the Ctrl-C/SIGTERM handler")?;
    }
    let (scored, failed) = watcher.totals();
    if !args.run.quiet {
        eprintln!(
            "watching {} -> {} (state {}; {scored} scored, {failed} failed before)",
            args.dir.display(),
            args.out.display(),
            state.display()
        );
    }
    let interval = Duration::from_secs_f64(args.interval);
    loop {
        let round = watcher.poll(&classifier, args.once)?;
        for (_, reason) in &round.failed {
            eprintln!("skipped: {reason}");
        }
        if round.scored > 0 && !args.run.quiet {
            let (total, failed) = watcher.totals();
            eprintln!(
                "scored {} ({total} scored, {failed} failed in all)",
                round.scored
            );
        }
        // With --once, the files over one poll's cap are left "waiting": go on.
        if args.once && round.waiting == 0 {
            break;
        }
        if args.once {
            continue;
        }
        let next = Instant::now() + interval;
        while Instant::now() < next && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20).min(interval));
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
    }
    let (scored, failed) = watcher.totals();
    eprintln!("stopped: {scored} scored, {failed} failed in all");
    Ok(ExitCode::SUCCESS)
}
