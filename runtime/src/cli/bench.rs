//! `fennec bench MODEL`: load time, latency percentiles and throughput.
//!
//! Inputs are fixed pseudo-random tensors (no image decoding: `fennec eval` measures
//! the whole pipeline). Each (threads, batch) pair gets its plan built and warmed
//! up before timing.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use fennec_runtime::classifier::{NodeTime, set_inference_threads};
use fennec_runtime::kernels::peak::core_peak_gflops;
use serde::Serialize;

use super::ModelArgs;
use super::table::Table;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,

    /// Batch sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1", value_parser = clap::value_parser!(u32).range(1..=4096))]
    batch: Vec<u32>,

    /// Inference thread counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1", value_parser = clap::value_parser!(u32).range(1..=256))]
    threads: Vec<u32>,

    /// Timed runs per configuration.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,

    /// Untimed runs first.
    #[arg(long, default_value_t = 10)]
    warmup: u32,

    /// Also time every node of the plan (after the latency runs, `--runs` more
    /// inferences) and list them slowest first: where the time goes, with each
    /// node's GFLOP/s, its share of this CPU's measured multiply-add peak (per
    /// core, times the threads), and the GB/s of weights it streams.
    #[arg(long)]
    profile: bool,

    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Measure {
    threads: u32,
    batch: u32,
    runs: u32,
    /// Building the optimised plan for this batch size.
    plan_ms: f64,
    min_ms: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    mean_ms: f64,
    images_per_second: f64,
    /// Per-node times with `--profile`.
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<Vec<NodeTime>>,
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    let start = Instant::now();
    let classifier = args.model.load()?;
    let load_ms = ms(start.elapsed());
    let len = classifier.preprocess.tensor_len();

    let mut results = Vec::new();
    for &threads in &args.threads {
        set_inference_threads(threads as usize);
        for &batch in &args.batch {
            let b = batch as usize;
            let input = pseudo_random(b * len);
            let t = Instant::now();
            classifier.prepare(b)?;
            let plan_ms = ms(t.elapsed());
            for _ in 0..args.warmup {
                classifier.classify(&input, b)?;
            }
            let mut times = Vec::with_capacity(args.runs as usize);
            for _ in 0..args.runs {
                let t = Instant::now();
                std::hint::black_box(classifier.classify(&input, b)?);
                times.push(ms(t.elapsed()));
            }
            times.sort_by(f64::total_cmp);
            let profile = if args.profile {
                Some(classifier.profile(&input, b, args.runs as usize)?)
            } else {
                None
            };
            let mean = times.iter().sum::<f64>() / times.len() as f64;
            results.push(Measure {
                threads,
                batch,
                runs: args.runs,
                plan_ms,
                min_ms: times[0],
                p50_ms: percentile(&times, 50.0),
                p90_ms: percentile(&times, 90.0),
                p99_ms: percentile(&times, 99.0),
                max_ms: times[times.len() - 1],
                mean_ms: mean,
                images_per_second: b as f64 * 1000.0 / mean,
                profile,
            });
        }
    }

    // Measured after the timed runs, so that it does not warm or cool them.
    let peak = args.profile.then(core_peak_gflops);
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut v = serde_json::json!({
            "model": classifier.info.path,
            "load_ms": load_ms,
            "input_shape": classifier.preprocess.batch_shape(1),
            "results": results,
        });
        if let Some(peak) = peak {
            v["core_peak_gflops"] = peak.into();
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{}: loaded in {:.1} ms; input {:?}; {} runs after {} warm-up\n",
        classifier.info.path.display(),
        load_ms,
        classifier.preprocess.batch_shape(1),
        args.runs,
        args.warmup
    )?;
    let mut t = Table::new([
        "threads", "batch", "plan ms", "min", "p50", "p90", "p99", "max", "mean", "img/s",
    ]);
    for r in &results {
        t.row([
            r.threads.to_string(),
            r.batch.to_string(),
            format!("{:.1}", r.plan_ms),
            format!("{:.3}", r.min_ms),
            format!("{:.3}", r.p50_ms),
            format!("{:.3}", r.p90_ms),
            format!("{:.3}", r.p99_ms),
            format!("{:.3}", r.max_ms),
            format!("{:.3}", r.mean_ms),
            format!("{:.1}", r.images_per_second),
        ]);
    }
    t.write(&mut out)?;
    writeln!(
        out,
        "\n(latencies in ms per inference call of `batch` images)"
    )?;
    if let Some(peak) = peak {
        writeln!(
            out,
            "\nthis CPU's multiply-add peak, measured: {peak:.1} GFLOP/s per core \
             ({}); % peak = GFLOP/s / (that x threads)",
            fennec_runtime::kernels::simd::isa().describe()
        )?;
    }
    for r in &results {
        let Some(nodes) = &r.profile else { continue };
        let total: f64 = nodes.iter().map(|n| n.ms).sum();
        writeln!(
            out,
            "\nprofile, threads {} batch {}: {total:.3} ms in the nodes",
            r.threads, r.batch
        )?;
        let mut t = Table::new(["ms", "%", "GFLOP/s", "% peak", "GB/s", "op", "node"]);
        let peak = peak.unwrap_or(f64::NAN) * f64::from(r.threads);
        for n in nodes {
            let share = 100.0 * n.ms / total.max(1e-12);
            let per_second = |amount: f64| amount / (n.ms * 1e-3) / 1e9;
            let gflops = per_second(n.flops);
            let (gflops_cell, peak_cell) = if n.flops > 0.0 {
                (
                    format!("{gflops:.1}"),
                    format!("{:.0}", 100.0 * gflops / peak),
                )
            } else {
                (String::new(), String::new())
            };
            let gbs = if n.param_bytes > 0.0 {
                format!("{:.1}", per_second(n.param_bytes))
            } else {
                String::new()
            };
            t.row([
                format!("{:.3}", n.ms),
                format!("{share:.1}"),
                gflops_cell,
                peak_cell,
                gbs,
                n.op.clone(),
                n.node.clone(),
            ]);
        }
        t.write(&mut out)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Deterministic values in [0, 1) (xorshift), like a rescaled image.
fn pseudo_random(n: usize) -> Vec<f32> {
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 90.0), 3.0);
        assert!(pseudo_random(1000).iter().all(|x| (0.0..1.0).contains(x)));
    }
}
