//! `fennec convert MODEL.onnx OUT.nnef.tgz`: writes a classifier in tract's NNEF
//! format for the `lite` build (docs/deploy-pi.md), which has no ONNX parser.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use fennec_runtime::atomic::write_bytes_atomic;

use super::{ModelArgs, print_defaults_note};

#[derive(Debug, Args)]
pub struct ConvertArgs {
    #[command(flatten)]
    model: ModelArgs,

    /// Where to write the NNEF archive (conventionally MODEL.nnef.tgz).
    #[arg(value_name = "OUT.nnef.tgz")]
    out: PathBuf,
}

pub fn run(args: ConvertArgs) -> Result<ExitCode> {
    let classifier = args.model.load()?;
    print_defaults_note(&classifier);
    let bytes = classifier.to_nnef()?;
    write_bytes_atomic(&args.out, &bytes)
        .with_context(|| format!("{}: cannot write", args.out.display()))?;
    println!(
        "wrote {} ({} bytes): {} classes, input {:?}, preprocessing: {}",
        args.out.display(),
        bytes.len(),
        classifier.labels.len(),
        classifier.preprocess.batch_shape(1),
        classifier.preprocess.describe()
    );
    Ok(ExitCode::SUCCESS)
}
