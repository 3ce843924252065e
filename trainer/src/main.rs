//! `fennec-train`: fit CNN image classifiers from YAML configs with burn and export
//! them as ONNX. Exit codes: 0 success, 1 failure (one error line naming the file),
//! 2 usage error, 130 interrupted (Ctrl-C; the last checkpoint is intact).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    fennec_train::memory::keep_freed_memory();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
