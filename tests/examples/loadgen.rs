//! A closed-loop HTTP load generator for `bench/serve.sh` (fennec serve vs the Python
//! peer): `--concurrency` clients, each on its own keep-alive connection, send
//! images as raw `POST /v1/predict` bodies back to back, for `--requests` in all or
//! `--seconds`, whichever ends first. Prints one JSON line: requests/s, latency
//! percentiles, and how many answers were right.
//!
//! With `--expect FILE` (the `--json` lines of `fennec predict` on the same
//! images) every answer's top label is checked. With `--bad F`, a fraction F of the
//! requests are bad ones on their own connection, in turn: a truncated image, a
//! wrong Content-Type, a body over `--max-body` bytes (declared, not sent) and a
//! slow client that stops in the middle of its body; each must get a 4xx (or, for
//! the slow one, be cut off) while the good ones keep being answered right.
//!
//! ```text
//! loadgen --addr 127.0.0.1:8080 --images DIR [--concurrency 8] [--seconds 10]
//!         [--requests N] [--expect predict.jsonl] [--bad 0.05 --max-body BYTES]
//! ```
//!
//! Not a test: it lives with the tests for their HTTP client (`fennec_e2e::http`).

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fennec_e2e::http::Client;
use serde_json::{Value, json};

struct Args {
    addr: SocketAddr,
    images: PathBuf,
    concurrency: usize,
    seconds: f64,
    requests: u64,
    expect: Option<PathBuf>,
    bad: f64,
    max_body: usize,
    slow_secs: f64,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        addr: "127.0.0.1:8080".parse().unwrap(),
        images: PathBuf::new(),
        concurrency: 1,
        seconds: 10.0,
        requests: u64::MAX,
        expect: None,
        bad: 0.0,
        max_body: 16 << 20,
        slow_secs: 3.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let bad = |e: String| format!("{flag}: {e}");
        match flag.as_str() {
            "--addr" => a.addr = value()?.parse().map_err(|e| bad(format!("{e}")))?,
            "--images" => a.images = value()?.into(),
            "--concurrency" => a.concurrency = value()?.parse().map_err(|e| bad(format!("{e}")))?,
            "--seconds" => a.seconds = value()?.parse().map_err(|e| bad(format!("{e}")))?,
            "--requests" => a.requests = value()?.parse().map_err(|e| bad(format!("{e}")))?,
            "--expect" => a.expect = Some(value()?.into()),
            "--bad" => a.bad = value()?.parse().map_err(|e| bad(format!("{e}")))?,
            "--max-body" => a.max_body = value()?.parse().map_err(|e| bad(format!("{e}")))?,
            "--slow-secs" => a.slow_secs = value()?.parse().map_err(|e| bad(format!("{e}")))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.images.as_os_str().is_empty() {
        return Err("--images DIR is required".into());
    }
    Ok(a)
}

/// An image's bytes and its expected label (with `--expect`).
type Image = (Vec<u8>, Option<String>);

/// Up to 256 images of the folder (recursive), with their expected labels.
fn load_images(a: &Args) -> Result<Vec<Image>, String> {
    let mut expected: HashMap<String, String> = HashMap::new();
    if let Some(p) = &a.expect {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        for line in text.lines() {
            let v: Value =
                serde_json::from_str(line).map_err(|e| format!("{}: {e}", p.display()))?;
            if let (Some(f), Some(l)) = (v["file"].as_str(), v["predictions"][0]["label"].as_str())
            {
                expected.insert(f.to_string(), l.to_string());
            }
        }
    }
    let mut files = vec![];
    let mut stack = vec![a.images.clone()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(
                p.extension().and_then(|x| x.to_str()),
                Some("jpg" | "jpeg" | "png")
            ) {
                files.push(p);
            }
        }
    }
    files.sort();
    files.truncate(256);
    if files.is_empty() {
        return Err(format!("{}: no .jpg/.png images", a.images.display()));
    }
    files
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?;
            let label = expected.get(&f.display().to_string()).cloned();
            if a.expect.is_some() && label.is_none() {
                return Err(format!("{}: not in the --expect file", f.display()));
            }
            Ok((bytes, label))
        })
        .collect()
}

#[derive(Default)]
struct Counts {
    good: AtomicU64,
    right: AtomicU64,
    wrong: AtomicU64,
    failed: AtomicU64,
    bad_sent: AtomicU64,
    bad_refused: AtomicU64,
    bad_accepted: AtomicU64,
}

/// A bad request of kind `n % 4` on a fresh connection: true when refused as it
/// should be (a 4xx, or the connection cut for the slow client).
fn bad_request(a: &Args, n: u64, image: &[u8]) -> bool {
    let Ok(mut c) = Client::connect(a.addr) else {
        return false;
    };
    let answer = match n % 4 {
        0 => c.send("POST", "/v1/predict", &[], &image[..image.len() / 2]),
        1 => c.send("POST", "/v1/predict", &["Content-Type: text/plain"], image),
        2 => {
            let head = format!(
                "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                a.max_body + 1
            );
            c.stream()
                .write_all(head.as_bytes())
                .and_then(|()| c.read_answer())
        }
        _ => {
            let head = format!(
                "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                image.len()
            );
            let sent = c
                .stream()
                .write_all(head.as_bytes())
                .and_then(|()| c.stream().write_all(&image[..image.len() / 3]));
            if sent.is_err() {
                return false;
            }
            std::thread::sleep(Duration::from_secs_f64(a.slow_secs));
            c.read_answer()
        }
    };
    match answer {
        Ok(r) => (400..500).contains(&r.status),
        // The slow client may simply be disconnected.
        Err(_) => n % 4 == 3,
    }
}

fn client(
    a: &Args,
    id: usize,
    images: &[Image],
    counts: &Counts,
    end: Instant,
    issued: &AtomicU64,
) -> Vec<f64> {
    let mut latencies = vec![];
    let mut conn: Option<Client> = None;
    let mut i = id * 7919;
    let bad_every = if a.bad > 0.0 {
        (1.0 / a.bad).round() as u64
    } else {
        0
    };
    loop {
        let n = issued.fetch_add(1, Ordering::Relaxed);
        if n >= a.requests || Instant::now() >= end {
            break;
        }
        i += 1;
        let (bytes, label) = &images[i % images.len()];
        if bad_every > 0 && n % bad_every == bad_every - 1 {
            counts.bad_sent.fetch_add(1, Ordering::Relaxed);
            if bad_request(a, n / bad_every, bytes) {
                counts.bad_refused.fetch_add(1, Ordering::Relaxed);
            } else {
                counts.bad_accepted.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        counts.good.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let answer = (|| {
            if conn.is_none() {
                conn = Some(Client::connect(a.addr)?);
            }
            conn.as_mut().unwrap().send(
                "POST",
                "/v1/predict",
                &["Content-Type: application/octet-stream"],
                bytes,
            )
        })();
        let elapsed = start.elapsed().as_secs_f64();
        match answer {
            Ok(r) if r.status == 200 => {
                latencies.push(elapsed);
                let top = serde_json::from_slice::<Value>(&r.body).ok().and_then(|v| {
                    v["results"][0]["predictions"][0]["label"]
                        .as_str()
                        .map(str::to_string)
                });
                let ok = match (label, top) {
                    (Some(want), Some(got)) => *want == got,
                    (None, Some(_)) => true,
                    _ => false,
                };
                if ok {
                    counts.right.fetch_add(1, Ordering::Relaxed);
                } else {
                    counts.wrong.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
        }
    }
    latencies
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let images = match load_images(&a) {
        Ok(i) => Arc::new(i),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let counts = Counts::default();
    let issued = AtomicU64::new(0);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.seconds);
    let mut latencies: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..a.concurrency.max(1))
            .map(|id| {
                let (a, images, counts, issued) = (&a, &images, &counts, &issued);
                s.spawn(move || client(a, id, images, counts, end, issued))
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let out = json!({
        "concurrency": a.concurrency,
        "seconds": seconds,
        "good": g(&counts.good),
        "right": g(&counts.right),
        "wrong": g(&counts.wrong),
        "failed": g(&counts.failed),
        "bad_sent": g(&counts.bad_sent),
        "bad_refused": g(&counts.bad_refused),
        "bad_accepted": g(&counts.bad_accepted),
        "rps": latencies.len() as f64 / seconds,
        "p50_ms": percentile(&latencies, 50.0) * 1e3,
        "p90_ms": percentile(&latencies, 90.0) * 1e3,
        "p99_ms": percentile(&latencies, 99.0) * 1e3,
    });
    println!("{out}");
}
