//! `fennec-train evaluate` (being written).

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;

#[derive(Debug, Args)]
pub struct EvaluateArgs {}

pub fn run(_args: EvaluateArgs) -> Result<ExitCode> {
    bail!("fennec-train evaluate is not available yet")
}
