//! `fennec serve MODEL`: the model loaded once, behind HTTP (see `fennec_runtime::serve`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use fennec_runtime::DecodeLimits;
use fennec_runtime::serve::{ServeOptions, Server, read_token, shutdown_signal};
use serde_json::json;

use super::{ModelArgs, print_defaults_note};

/// Endpoints: POST /v1/predict (a raw image body, or multipart/form-data with one
/// image per part; ?k=N classes per image), GET /v1/model (as `fennec info --json`),
/// GET /healthz, GET /metrics (Prometheus). Stops on Ctrl-C or SIGTERM after
/// finishing the requests in flight.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,

    /// Address and port to listen on. The default takes local clients only; to
    /// serve the network use e.g. 0.0.0.0:8080 with --token-file. Port 0 picks a
    /// free port (printed at start).
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: SocketAddr,

    /// File whose first line is a secret every request (but /healthz) must send as
    /// `Authorization: Bearer <secret>`.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// How long a request waits for others to share its inference call, in
    /// milliseconds; it waits only while other requests are still being decoded.
    /// 0 turns batching off.
    #[arg(long, value_name = "MS", default_value_t = 2.0, value_parser = non_negative)]
    batch_window: f64,

    /// Most images in one inference call. A plan is made at start for each power of
    /// two up to it (more memory for a larger value).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    max_batch: u32,

    /// Prediction requests handled at once (decoding, waiting or inferring); beyond
    /// it clients get 503 with Retry-After.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    max_requests: u32,

    /// Largest request body, in MiB (413 beyond it).
    #[arg(long, value_name = "MIB", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    max_body: u32,

    /// Most images in one multipart request.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    max_images: u32,

    /// Images above this many megapixels are refused (checked from the header,
    /// before decoding).
    #[arg(long, default_value_t = fennec_runtime::decode::DEFAULT_MAX_MEGAPIXELS)]
    max_megapixels: f64,

    /// Seconds a client has to send its request headers (slow clients are cut off).
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = positive)]
    header_timeout: f64,

    /// Seconds a client has to send its request body (408 beyond it).
    #[arg(long, value_name = "SECS", default_value_t = 30.0, value_parser = positive)]
    read_timeout: f64,

    /// Seconds to score a request once its body is in (503 beyond it).
    #[arg(long, value_name = "SECS", default_value_t = 30.0, value_parser = positive)]
    request_timeout: f64,

    /// Threads for inference [default: number of CPUs].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    threads: Option<u32>,

    /// Threads decoding and resizing images [default: number of CPUs].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    decode_threads: Option<u32>,

    /// Print the start line (address, model) as JSON.
    #[arg(long)]
    json: bool,
}

fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("'{s}' is not a number >= 0")),
    }
}

fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("'{s}' is not a number > 0")),
    }
}

pub fn run(args: ServeArgs) -> Result<ExitCode> {
    let classifier = args.model.load()?;
    print_defaults_note(&classifier);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    fennec_runtime::classifier::set_inference_threads(args.threads.map_or(cpus, |n| n as usize));
    let token = match &args.token_file {
        Some(path) => Some(read_token(path)?),
        None => None,
    };
    if token.is_none() && !args.bind.ip().is_loopback() {
        eprintln!(
            "warning: listening on {} without --token-file: anyone who can reach this port can use the model",
            args.bind
        );
    }
    let options = ServeOptions {
        bind: args.bind,
        batch_window: Duration::from_secs_f64(args.batch_window / 1000.0),
        max_batch: args.max_batch as usize,
        max_body_bytes: (args.max_body as usize) << 20,
        max_images: args.max_images as usize,
        limits: DecodeLimits {
            max_megapixels: args.max_megapixels,
        },
        max_requests: args.max_requests as usize,
        header_timeout: Duration::from_secs_f64(args.header_timeout),
        read_timeout: Duration::from_secs_f64(args.read_timeout),
        request_timeout: Duration::from_secs_f64(args.request_timeout),
        shutdown_grace: Duration::from_secs_f64(args.request_timeout + args.read_timeout),
        decode_threads: args.decode_threads.map_or(cpus, |n| n as usize),
        token,
    };
    let classifier = Arc::new(classifier);
    let server = Server::bind(classifier.clone(), options)?;
    let addr = server.local_addr().context("listening socket")?;
    let model = classifier.info.path.display().to_string();
    if args.json {
        println!(
            "{}",
            json!({"listening": format!("http://{addr}"), "model": model})
        );
    } else {
        println!(
            "listening on http://{addr} ({model}, {} classes); Ctrl-C to stop",
            classifier.labels.len()
        );
    }
    let summary = server.run_until(shutdown_signal())?;
    eprintln!(
        "stopped after {} connections{}",
        summary.connections,
        if summary.cut_off {
            " (some requests were cut off at the end of the shutdown grace)"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}
