//! Command-line interface of `fennec-train`: one file per command, shared glue here.

mod evaluate;
mod export;
mod fit;
mod preview;
mod split;
mod summary;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
