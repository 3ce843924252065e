//! `fennec merge PART...`: add up the partial reports of `fennec eval --shard i/n
//! --part PATH` and print the report a single `fennec eval` of the whole folder
//! would have printed (same table, same JSON, same CSV and HTML report).
//!
//! Every part is read and checked before anything is written: parts of another
//! model, preprocessing, k, folder listing or shard count, a missing or repeated
//! shard, a truncated part are one error naming the part, and no file is written.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use fennec_runtime::part::{EvalPart, merge};

use super::eval::{OutputArgs, write_outputs};

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The --part files of all shards of one run (any order).
    #[arg(required = true, value_name = "PART")]
    parts: Vec<PathBuf>,

    #[command(flatten)]
    out: OutputArgs,
}

pub fn run(args: MergeArgs) -> Result<ExitCode> {
    let parts = args
        .parts
        .iter()
        .map(|p| Ok((p.clone(), EvalPart::read(p)?)))
        .collect::<Result<Vec<_>>>()?;
    let merged = merge(parts)?;
    if merged.scored() == 0 {
        bail!(
            "{}: none of the {} images could be scored (first: {})",
            merged.dir.display(),
            merged.files,
            merged
                .skipped
                .first()
                .map_or("?".into(), |s| s.reason.clone())
        );
    }
    write_outputs(&args.out, &merged, None)?;
    Ok(ExitCode::SUCCESS)
}
