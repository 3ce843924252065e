//! Command-line interface of `fennec`: flag definitions and the glue shared by the
//! commands. Each command lives in its own file and writes human tables by default,
//! JSON with `--json`.

mod bench;
mod compare;
#[cfg(feature = "onnx")]
mod convert;
mod eval;
mod info;
mod merge;
mod model;
mod predict;
#[cfg(feature = "onnx")]
mod quantize;
mod scale_out;
#[cfg(feature = "serve")]
mod serve;
mod table;
mod watch;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser};
use fennec_runtime::DecodeLimits;
use indicatif::ProgressBar;

pub use model::{ModelArgs, print_defaults_note};

/// Score images with an ONNX image classifier: pure Rust, no Python, no GPU.
///
/// A model exported by fennec-train carries its class names and preprocessing;
/// for any other ONNX classifier give --labels and, if needed, --preprocess or
/// the preprocessing flags (--size, --filter, ...).
#[derive(Debug, Parser)]
#[command(
    name = "fennec",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub enum Cli {
    /// Show a model's inputs, outputs, classes, preprocessing, size and cost.
    Info(info::InfoArgs),
    /// Classify images: files, directories (searched recursively) or glob patterns.
    Predict(predict::PredictArgs),
    /// Score a labelled folder DIR/<class>/<images>: accuracy, per-class metrics,
    /// confusion matrix. Unreadable or corrupt images are listed and skipped.
    Eval(eval::EvalArgs),
    /// Measure load time, latency percentiles and throughput on random inputs.
    Bench(bench::BenchArgs),
    /// Add up the partial reports of `eval --shard i/n --part PATH` into the report
    /// of the whole folder, exactly as one `eval` would print it.
    Merge(merge::MergeArgs),
    /// Write an ONNX classifier as a tract NNEF archive (.nnef.tgz) for the lite
    /// build, with its labels and preprocessing.
    #[cfg(feature = "onnx")]
    Convert(convert::ConvertArgs),
    /// Serve the model over HTTP: POST /v1/predict, GET /v1/model, /healthz, /metrics.
    #[cfg(feature = "serve")]
    Serve(serve::ServeArgs),
    /// Score each new image of a folder once, as it arrives, into a JSON-lines file.
    Watch(watch::WatchArgs),
    /// Write an int8 copy of a float ONNX classifier (QDQ format: int8 weights per
    /// channel, uint8 activations calibrated on labelled images of DIR).
    #[cfg(feature = "onnx")]
    Quantize(quantize::QuantizeArgs),
    /// Score one labelled folder with two models (e.g. float and int8): agreement,
    /// accuracy per class of both, the images whose answer changed.
    Compare(compare::CompareArgs),
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli {
        Cli::Info(a) => info::run(a),
        Cli::Predict(a) => predict::run(a),
        Cli::Eval(a) => eval::run(a),
        Cli::Bench(a) => bench::run(a),
        Cli::Merge(a) => merge::run(a),
        #[cfg(feature = "onnx")]
        Cli::Convert(a) => convert::run(a),
        #[cfg(feature = "serve")]
        Cli::Serve(a) => serve::run(a),
        Cli::Watch(a) => watch::run(a),
        #[cfg(feature = "onnx")]
        Cli::Quantize(a) => quantize::run(a),
        Cli::Compare(a) => compare::run(a),
    }
}

/// Decoding and threading options of commands that read many images.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Images per inference call.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch: u32,

    /// Threads for inference (tract's matrix products and fennec's convolutions)
    /// [default: number of CPUs]. Decoding runs alongside on its own threads; on a
    /// 2-core machine both defaults together score ~1.5x faster than `--threads 1`.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: Option<u32>,

    /// Threads decoding and resizing images [default: number of CPUs].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub decode_threads: Option<u32>,

    /// Images above this many megapixels are skipped (guards memory).
    #[arg(long, default_value_t = fennec_runtime::decode::DEFAULT_MAX_MEGAPIXELS)]
    pub max_megapixels: f64,

    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

impl RunArgs {
    pub fn pipeline(&self) -> fennec_runtime::pipeline::PipelineOptions {
        let defaults = fennec_runtime::pipeline::PipelineOptions::default();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        fennec_runtime::classifier::set_inference_threads(
            self.threads.map_or(cpus, |n| n as usize),
        );
        fennec_runtime::pipeline::PipelineOptions {
            batch: self.batch as usize,
            decode_threads: self
                .decode_threads
                .map_or(defaults.decode_threads, |n| n as usize),
            limits: DecodeLimits {
                max_megapixels: self.max_megapixels,
            },
        }
    }

    /// A progress bar on stderr with rate and ETA; hidden when stderr is not a
    /// terminal or with --quiet.
    pub fn progress(&self, len: u64, what: &str) -> ProgressBar {
        fennec_runtime::progress::bar(len, what.to_string(), "img", !self.quiet)
    }
}

/// `{:.4}` for ratios in tables.
pub fn f4(x: f64) -> String {
    format!("{x:.4}")
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
