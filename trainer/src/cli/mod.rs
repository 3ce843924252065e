//! Command-line interface of `fennec-train`: one file per command, shared glue here
//! (the compute device flags, the library enums as flag values) and in [`console`]
//! (progress bars and lines on stderr).

mod console;
mod evaluate;
mod export;
mod fit;
mod preview;
mod split;
mod summary;

use std::process::ExitCode;

use std::str::FromStr;

use anyhow::Result;
use burn::tensor::Device;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use fennec_train::device::Kind;
use strum::VariantNames;

/// Train CNN image classifiers on folders of labelled pictures, then export them as
/// one self-describing ONNX file for the `fennec` runtime.
///
/// Data layout, as Keras' flow_from_directory: DATA/train/<class>/*,
/// DATA/validation/<class>/*, optionally DATA/test/<class>/*.
#[derive(Debug, Parser)]
#[command(
    name = "fennec-train",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a model from a YAML config; writes history, plots, checkpoints and model.onnx.
    Fit(fit::FitArgs),
    /// Report loss and accuracy of a trained run on a labelled folder (with burn).
    Evaluate(evaluate::EvaluateArgs),
    /// Export a run's checkpoint as an ONNX file carrying labels and preprocessing.
    Export(export::ExportArgs),
    /// Print the layer table of a config: output shapes and parameter counts.
    Summary(summary::SummaryArgs),
    /// Split a RAW_DIR/<class>/* folder into stratified train/validation/test folders.
    Split(split::SplitArgs),
    /// Write a PNG grid of one training batch (augmentation applied) with its labels.
    Preview(preview::PreviewArgs),
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Fit(a) => fit::run(a),
        Command::Evaluate(a) => evaluate::run(a),
        Command::Export(a) => export::run(a),
        Command::Summary(a) => summary::run(a),
        Command::Split(a) => split::run(a),
        Command::Preview(a) => preview::run(a),
    }
}

/// `--device` and `--threads`, for the commands that compute with burn.
#[derive(Debug, Args)]
struct ComputeArgs {
    /// Compute device. GPUs need a build with `--features cuda` or `--features wgpu`.
    #[arg(long, value_parser = enum_parser::<Kind>(), default_value_t = Kind::Cpu)]
    device: Kind,

    /// CPU threads for computing and decoding [default: all cores]. On the CPU a run
    /// is reproducible for a fixed seed and thread count.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    threads: Option<u32>,
}

impl ComputeArgs {
    /// Sets up the device and the compute threads; call first, before any thread
    /// is started.
    fn init(&self) -> Result<Device> {
        // SAFETY: called first thing by the command, before any thread is started.
        // burn's default device (used internally, e.g. when loading optimizer state)
        // must be the one we compute on, also in GPU-enabled builds.
        unsafe { std::env::set_var("BURN_DEVICE", self.device.burn_env()) };
        fennec_train::device::init_threads(self.threads.map(|n| n as usize))?;
        Ok(self.device.device()?)
    }
}

/// The value parser of a flag whose values are a library enum: `--help` lists its
/// names, and a value parses through the enum's `FromStr` (strum), so the library
/// needs no clap.
fn enum_parser<T>() -> impl TypedValueParser<Value = T>
where
    T: VariantNames + FromStr + Clone + Send + Sync + 'static,
{
    PossibleValuesParser::new(T::VARIANTS).map(|s| {
        s.parse::<T>()
            .unwrap_or_else(|_| unreachable!("'{s}' is one of the listed names"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
