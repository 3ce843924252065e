//! Command-line interface of `fennec`: flag definitions and the glue shared by the
//! commands. Each command lives in its own file and writes human tables by default,
//! JSON with `--json`.

mod bench;
#[cfg(feature = "onnx")]
mod convert;
mod eval;
mod info;
mod predict;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use fennec_runtime::preprocess::Overrides;
use fennec_runtime::{
    Classifier, ColorMode, DecodeLimits, LoadOptions, Preprocess, ResizeFilter, ResizeMode, Source,
};
use indicatif::ProgressBar;

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
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show a model's inputs, outputs, classes, preprocessing, size and cost.
    Info(info::InfoArgs),
    /// Classify images: files, directories (searched recursively) or glob patterns.
    Predict(predict::PredictArgs),
    /// Score a labelled folder DIR/<class>/<images>: accuracy, per-class metrics,
    /// confusion matrix. Unreadable or corrupt images are listed and skipped.
    Eval(eval::EvalArgs),
    /// Measure load time, latency percentiles and throughput on random inputs.
    Bench(bench::BenchArgs),
    /// Write an ONNX classifier as a tract NNEF archive (.nnef.tgz) for the lite
    /// build, with its labels and preprocessing.
    #[cfg(feature = "onnx")]
    Convert(convert::ConvertArgs),
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Info(a) => info::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Bench(a) => bench::run(a),
        #[cfg(feature = "onnx")]
        Command::Convert(a) => convert::run(a),
    }
}

/// The model and everything that can stand in for missing metadata.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// ONNX model file (or a .nnef.tgz written by `fennec convert`).
    pub model: PathBuf,

    /// Class names, one per line, in output order (replaces the model's labels).
    #[arg(long, value_name = "FILE", help_heading = "Model")]
    pub labels: Option<PathBuf>,

    /// Preprocessing spec as YAML (keys: height, width, color, resize, filter, scale,
    /// mean, std, layout), replacing the model's own.
    #[arg(long, value_name = "FILE.yaml", help_heading = "Preprocessing")]
    pub preprocess: Option<PathBuf>,

    /// Input size HxW (e.g. 224x224) when the model does not fix it.
    #[arg(long, value_name = "HxW", value_parser = parse_size, help_heading = "Preprocessing")]
    pub size: Option<(u32, u32)>,

    /// Colour mode.
    #[arg(long, value_enum, help_heading = "Preprocessing")]
    pub color: Option<ColorMode>,

    /// How images are fitted to the input size.
    #[arg(long, value_enum, help_heading = "Preprocessing")]
    pub resize: Option<ResizeMode>,

    /// Resampling filter.
    #[arg(long, value_enum, help_heading = "Preprocessing")]
    pub filter: Option<ResizeFilter>,

    /// Multiplier for 0-255 pixel values (default 1/255 = 0.00392...).
    #[arg(long, help_heading = "Preprocessing")]
    pub scale: Option<f32>,

    /// Per-channel mean subtracted after scaling, comma-separated (e.g. 0.485,0.456,0.406).
    #[arg(long, value_delimiter = ',', num_args = 1.., allow_negative_numbers = true, help_heading = "Preprocessing")]
    pub mean: Option<Vec<f32>>,

    /// Per-channel std divided after the mean, comma-separated.
    #[arg(long, value_delimiter = ',', num_args = 1.., help_heading = "Preprocessing")]
    pub std: Option<Vec<f32>>,
}

impl ModelArgs {
    /// Loads the model with the user's overrides, or fails naming the file.
    pub fn load(&self) -> Result<Classifier> {
        let labels = match &self.labels {
            Some(p) => Some(fennec_runtime::folder::read_labels(p)?),
            None => None,
        };
        let preprocess = match &self.preprocess {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("{}: cannot read", p.display()))?;
                let spec: Preprocess = serde_yaml::from_str(&text).map_err(|e| {
                    anyhow::anyhow!("{}: invalid preprocessing spec: {e}", p.display())
                })?;
                Some(spec)
            }
            None => None,
        };
        let overrides = Overrides {
            size: self.size,
            color: self.color,
            resize: self.resize,
            filter: self.filter,
            scale: self.scale,
            mean: self.mean.clone(),
            std: self.std.clone(),
        };
        Ok(Classifier::load(
            &self.model,
            &LoadOptions {
                labels,
                preprocess,
                overrides,
            },
        )?)
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

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (h, w) = s.split_once(['x', 'X']).unwrap_or((s, s));
    let parse = |v: &str| v.trim().parse::<u32>().ok().filter(|&v| v > 0);
    match (parse(h), parse(w)) {
        (Some(h), Some(w)) => Ok((h, w)),
        _ => Err(format!("'{s}' is not a size like 224x224 or 224")),
    }
}

/// Notes on stderr about anything fennec had to guess, so a default is never silent.
pub fn print_defaults_note(c: &Classifier) {
    if c.info.labels_source == Source::Default {
        eprintln!(
            "note: {} has no class names; showing output indices 0..{} (give --labels FILE)",
            c.info.path.display(),
            c.labels.len() - 1
        );
    }
    if c.info.preprocess_source == Source::Default {
        eprintln!(
            "note: {} has no preprocessing metadata; using Keras defaults from its input shape: {}",
            c.info.path.display(),
            c.preprocess.describe()
        );
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

    #[test]
    fn sizes() {
        assert_eq!(parse_size("224x200"), Ok((224, 200)));
        assert_eq!(parse_size("28"), Ok((28, 28)));
        assert!(parse_size("0x5").is_err());
        assert!(parse_size("abc").is_err());
    }
}
