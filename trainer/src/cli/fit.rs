//! `fennec-train fit CONFIG`: train a model on `DATA/{train,validation}/<class>/*`,
//! writing a run directory (config, classes, history, checkpoints, model.onnx), with
//! progress bars, Ctrl-C handling and `--resume`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use fennec_train::config::Config;
use fennec_train::export::{Precision, export_run};
use fennec_train::run_dir::checkpoint::epoch_dir_name;
use fennec_train::run_dir::{CHECKPOINTS_DIR, CONFIG_FILE, ONNX_FILE, RunDir, Which};
use fennec_train::train::{FitOptions, Outcome, fit};

use super::ComputeArgs;
use super::console::Console;

#[derive(Debug, Args)]
pub struct FitArgs {
    /// YAML config (e.g. configs/model_3.yaml). Optional with --resume, which uses
    /// the run's own config.
    #[arg(value_name = "CONFIG", required_unless_present = "resume")]
    config: Option<PathBuf>,

    /// Data folder holding train/<class>/* and validation/<class>/* (test/ optional)
    /// [default: data, or the run's data folder with --resume].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,

    /// Run directory to create [default: runs/<config name>, or runs/<name>-2, -3, ...
    /// when taken]. An existing directory must be empty.
    #[arg(long, value_name = "RUN_DIR")]
    out: Option<PathBuf>,

    /// Train for this many epochs instead of the config's training.epochs (with
    /// --resume: continue up to this epoch).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    epochs: Option<u32>,

    #[command(flatten)]
    compute: ComputeArgs,

    /// Continue an interrupted run after its last complete checkpoint; gives the same
    /// weights and history as an uninterrupted run (same device and --threads).
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,

    /// Stop with an error when an image cannot be read, instead of skipping it.
    #[arg(long)]
    strict: bool,

    /// No progress bars or per-epoch lines; only warnings, errors and the result.
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(args: FitArgs) -> Result<ExitCode> {
    let device = args.compute.init()?;

    let (config, config_path, run_dir, data_dir) = match &args.resume {
        Some(dir) => resume_target(&args, dir)?,
        None => {
            let path = args
                .config
                .clone()
                .expect("clap requires CONFIG without --resume");
            let mut config = Config::load(&path)?;
            if let Some(n) = args.epochs {
                config.training.epochs = n as usize;
            }
            let run_dir = create_run_dir(args.out.as_deref(), &config.name)?;
            (
                config,
                path,
                run_dir,
                args.data.clone().unwrap_or_else(|| PathBuf::from("data")),
            )
        }
    };

    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            // Second Ctrl-C: leave now; checkpoints are written atomically.
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: stopping after the current batch (Ctrl-C again to quit at once)");
    })
    .context("cannot install the Ctrl-C handler")?;

    let opts = FitOptions {
        config,
        config_path,
        data_dir,
        run_dir: run_dir.clone(),
        resume: args.resume.is_some(),
        device,
        device_name: args.compute.device.name().to_string(),
        strict: args.strict,
        stop,
    };
    if !args.quiet {
        eprintln!(
            "fit: {} on {} ({} device, {} threads) -> {}",
            opts.config.name,
            opts.data_dir.display(),
            opts.device_name,
            rayon::current_num_threads(),
            run_dir.display()
        );
    }
    let console = Console::new(args.quiet);
    let report = fit(&opts, &console)?;
    console.clear();

    let resume_hint = format!("fennec-train fit --resume {}", run_dir.display());
    match report.outcome {
        Outcome::Interrupted { epoch } => {
            match report.last_epoch {
                Some(last) => eprintln!(
                    "interrupted during epoch {epoch}; the checkpoint of epoch {last} is intact \
                     ({}); continue with: {resume_hint}",
                    run_dir
                        .join(CHECKPOINTS_DIR)
                        .join(epoch_dir_name(last))
                        .display()
                ),
                None => eprintln!(
                    "interrupted before the first epoch ended; no checkpoint yet; start again with: {resume_hint}"
                ),
            }
            return Ok(ExitCode::from(130));
        }
        Outcome::Finished => {}
    }
    let Some(epoch) = report.result_epoch else {
        bail!("{}: no epoch was trained", run_dir.display());
    };
    // The best epoch when early stopping restores it, else the last.
    let onnx = run_dir.join(ONNX_FILE);
    let exported =
        export_run(&run_dir, Which::Epoch(epoch), &onnx, Precision::F32).with_context(|| {
            format!(
                "{}: training finished but the export failed",
                run_dir.display()
            )
        })?;
    if report.stopped_early && !args.quiet {
        eprintln!(
            "early stopping after epoch {}",
            report.last_epoch.unwrap_or(0)
        );
    }
    let best = report.best.map_or(String::new(), |b| {
        format!(", best epoch {} (val_loss {:.4})", b.epoch, b.val_loss)
    });
    println!(
        "trained {} epoch(s) in {:.1} s{best}; model.onnx from epoch {epoch}: {} ({} bytes)",
        report.epochs_this_run,
        report.seconds,
        exported.path.display(),
        exported.bytes
    );
    println!("run directory: {}", run_dir.display());
    Ok(ExitCode::SUCCESS)
}

/// Config, config path, run directory and data directory for `--resume DIR`.
fn resume_target(args: &FitArgs, dir: &Path) -> Result<(Config, PathBuf, PathBuf, PathBuf)> {
    if let Some(out) = &args.out
        && out != dir
    {
        bail!(
            "--out {} and --resume {} name different runs; give only --resume",
            out.display(),
            dir.display()
        );
    }
    let run = RunDir::open(dir)?;
    let mut config = run.config.clone();
    let config_path = dir.join(CONFIG_FILE);
    if let Some(path) = &args.config {
        let given = Config::load(path)?;
        let mut a = given.clone();
        a.training.epochs = config.training.epochs;
        if a != config {
            bail!(
                "{}: differs from the run's {}; leave CONFIG out to resume with the run's config",
                path.display(),
                config_path.display()
            );
        }
        config.training.epochs = given.training.epochs;
    }
    if let Some(n) = args.epochs {
        config.training.epochs = n as usize;
    }
    let epochs = run.epochs()?;
    let data = match (&args.data, epochs.last()) {
        (Some(d), _) => d.clone(),
        (None, Some(&last)) => run.state(last)?.data_dir,
        (None, None) => PathBuf::from("data"),
    };
    Ok((config, config_path, dir.to_path_buf(), data))
}

/// Creates the run directory: `out` (which must not hold anything yet), or
/// `runs/<name>`, `runs/<name>-2`, ... (the first that does not exist).
fn create_run_dir(out: Option<&Path>, name: &str) -> Result<PathBuf> {
    let cannot = |p: &Path, e: std::io::Error| {
        anyhow!("{}: cannot create the run directory: {e}", p.display())
    };
    if let Some(out) = out {
        if out.is_dir() {
            let mut entries = std::fs::read_dir(out).map_err(|e| cannot(out, e))?;
            if entries.next().is_some() {
                let what = if out.join(CONFIG_FILE).exists() {
                    "holds another run"
                } else {
                    "is not empty"
                };
                bail!(
                    "{}: {what}; continue it with --resume {}, or choose another --out",
                    out.display(),
                    out.display()
                );
            }
        }
        std::fs::create_dir_all(out).map_err(|e| cannot(out, e))?;
        return Ok(out.to_path_buf());
    }
    let runs = Path::new("runs");
    std::fs::create_dir_all(runs).map_err(|e| cannot(runs, e))?;
    for n in 1.. {
        let dir = if n == 1 {
            runs.join(name)
        } else {
            runs.join(format!("{name}-{n}"))
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(cannot(&dir, e)),
        }
    }
    unreachable!("some runs/<name>-N is free")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_dirs_are_numbered_and_out_must_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let prev = std::env::current_dir().unwrap();
        let out = dir.path().join("x");
        assert_eq!(create_run_dir(Some(&out), "m").unwrap(), out);
        std::fs::write(out.join("config.yaml"), "").unwrap();
        let e = create_run_dir(Some(&out), "m").unwrap_err().to_string();
        assert!(
            e.contains("holds another run") && e.contains("--resume"),
            "{e}"
        );
        let under_file = out.join("config.yaml").join("run");
        assert!(
            create_run_dir(Some(&under_file), "m")
                .unwrap_err()
                .to_string()
                .contains("cannot create")
        );
        std::env::set_current_dir(dir.path()).unwrap();
        let a = create_run_dir(None, "m");
        let b = create_run_dir(None, "m");
        std::env::set_current_dir(prev).unwrap();
        assert_eq!(a.unwrap(), Path::new("runs/m"));
        assert_eq!(b.unwrap(), Path::new("runs/m-2"));
    }
}
