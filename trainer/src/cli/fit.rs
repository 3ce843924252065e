//! `fennec-train fit` (being written).

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;

#[derive(Debug, Args)]
pub struct FitArgs {}

pub fn run(_args: FitArgs) -> Result<ExitCode> {
    bail!("fennec-train fit is not available yet")
}
