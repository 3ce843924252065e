//! `fennec-train preview` (being written).

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;

#[derive(Debug, Args)]
pub struct PreviewArgs {}

pub fn run(_args: PreviewArgs) -> Result<ExitCode> {
    bail!("fennec-train preview is not available yet")
}
