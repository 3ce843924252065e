//! The scale-out flags of `fennec eval` (and `--shard` of `predict`): scoring a
//! shard of the folder, keeping predictions on disk to resume a killed run, and
//! writing the partial report that `fennec merge` adds up. How to run them on
//! Kubernetes, Slurm or GNU parallel: docs/scale-out.md.

use std::path::{Path, PathBuf};

use clap::Args;
use fennec_runtime::shard::{Shard, relative_key};

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Score only shard INDEX of COUNT (0-based: 0/4 .. 3/4), e.g. one job of a
    /// scheduler's array. `auto/COUNT` takes INDEX from $JOB_COMPLETION_INDEX
    /// (Kubernetes indexed Job) or $SLURM_ARRAY_TASK_ID (Slurm array). A file's
    /// shard depends only on its path relative to DIR, so every file is in exactly
    /// one shard; merge the shards' --part files with `fennec merge`.
    #[arg(long, value_name = "INDEX/COUNT")]
    pub shard: Option<Shard>,

    /// Write this run's partial report (raw counts, skipped files, top mistakes
    /// with thumbnails) to PATH, for `fennec merge`.
    #[arg(long, value_name = "PATH")]
    pub part: Option<PathBuf>,

    /// Append one JSON line per file to PATH as it is scored (file, true label,
    /// predicted label, confidence, top-k; or why it was skipped), after a header
    /// line naming the model and shard.
    #[arg(long, value_name = "PATH")]
    pub predictions: Option<PathBuf>,

    /// Continue the --predictions file of a killed run: score only the files not in
    /// it, then report on all of them as an uninterrupted run would. Starts the file
    /// if it does not exist yet, so a retried job can always pass it.
    #[arg(long, requires = "predictions")]
    pub resume: bool,
}

impl ScaleArgs {
    pub fn shard(&self) -> Shard {
        self.shard.unwrap_or(Shard::ALL)
    }
}

/// A file's shard key: its path relative to the first of `roots` it is under, or
/// the path as given.
pub fn key_under(file: &Path, roots: &[&Path]) -> String {
    let relative = roots
        .iter()
        .find_map(|r| file.strip_prefix(r).ok())
        .unwrap_or(file);
    relative_key(relative)
}
