//! `fennec-train export` (being written).

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;

#[derive(Debug, Args)]
pub struct ExportArgs {}

pub fn run(_args: ExportArgs) -> Result<ExitCode> {
    bail!("fennec-train export is not available yet")
}
