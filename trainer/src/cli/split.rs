//! `fennec-train split` (being written).

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;

#[derive(Debug, Args)]
pub struct SplitArgs {}

pub fn run(_args: SplitArgs) -> Result<ExitCode> {
    bail!("fennec-train split is not available yet")
}
