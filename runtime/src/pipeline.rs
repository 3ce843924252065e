//! Scoring many files: parallel decoding overlapped with batched inference.
//!
//! A producer thread decodes the file list chunk by chunk on a pool of decode
//! threads and hands each chunk over a bounded channel (capacity one chunk), so at
//! most three chunks of tensors exist at once whatever the number of files. The
//! calling thread groups decoded images into batches for the classifier. Results
//! reach the callback in file order; bad images arrive as [`ImageError`]s and never
//! stop the run. The run returns [`PipelineTimes`]: where the wall time went
//! (decoding, resizing, inference, and each side waiting for the other), which
//! `fennec eval --profile` prints.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::Serialize;

use crate::classifier::Classifier;
use crate::decode::{DecodeLimits, decode_file};
use crate::error::{Error, ImageError, Result};

/// How to run a folder through a classifier.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Images per inference call (ignored for graphs with a fixed batch size).
    pub batch: usize,
    /// Threads decoding and preprocessing images.
    pub decode_threads: usize,
    pub limits: DecodeLimits,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            batch: 16,
            decode_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            limits: DecodeLimits::default(),
        }
    }
}

/// One file's outcome: class probabilities, or why the image was skipped.
pub type Scored = std::result::Result<Vec<f32>, ImageError>;

/// Where the wall time of [`classify_files`] went. Decoding and resizing are
/// thread-seconds summed over the decode threads; the rest is time on one
/// thread. When inference waits for images, decoding is the bottleneck; when
/// the decoders wait for the inference thread, inference is.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PipelineTimes {
    /// Seconds from start to the last result.
    pub wall_s: f64,
    /// Thread-seconds reading and decoding files.
    pub decode_s: f64,
    /// Thread-seconds converting colours, resizing and normalising.
    pub resize_s: f64,
    /// Seconds in inference calls (which use the inference threads).
    pub infer_s: f64,
    /// Seconds the inference thread waited for decoded images.
    pub infer_waiting_s: f64,
    /// Seconds the decoders waited for the inference thread to take their images
    /// (the queue between them full).
    pub decode_waiting_s: f64,
    pub decode_threads: usize,
}

/// Adds the time `work` takes to `total` (nanoseconds), from any thread.
fn timed<T>(total: &AtomicU64, work: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = work();
    total.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    out
}

fn seconds(nanos: &AtomicU64) -> f64 {
    Duration::from_nanos(nanos.load(Ordering::Relaxed)).as_secs_f64()
}

/// Runs `files` through `classifier`, calling `on_result(index, outcome)` once per
/// file, in index order, and returns where the time went. Fails only when
/// inference itself fails.
pub fn classify_files(
    classifier: &Classifier,
    files: &[PathBuf],
    options: &PipelineOptions,
    mut on_result: impl FnMut(usize, Scored),
) -> Result<PipelineTimes> {
    let start = Instant::now();
    let [
        decode_ns,
        resize_ns,
        infer_ns,
        infer_wait_ns,
        decode_wait_ns,
    ] = std::array::from_fn(|_| AtomicU64::new(0));
    let batch = classifier.fixed_batch().unwrap_or(options.batch.max(1));
    let chunk = batch.max(16);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(options.decode_threads.max(1))
        .thread_name(|i| format!("fennec-decode-{i}"))
        .build()?;
    let preprocess = &classifier.preprocess;
    let limits = options.limits;
    let len = preprocess.tensor_len();

    let decode_threads = pool.current_num_threads();
    let load = |path: &PathBuf| -> Scored {
        let img = timed(&decode_ns, || decode_file(path, &limits))?;
        let mut out = vec![0.0; len];
        timed(&resize_ns, || preprocess.apply(&img, &mut out));
        Ok(out)
    };

    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel::<(usize, Vec<Scored>)>(1);
        let decode_wait_ns = &decode_wait_ns;
        scope.spawn(move || {
            for (n, paths) in files.chunks(chunk).enumerate() {
                let decoded: Vec<Scored> = pool.install(|| paths.par_iter().map(load).collect());
                if timed(decode_wait_ns, || tx.send((n * chunk, decoded))).is_err() {
                    return; // consumer stopped (inference error)
                }
            }
        });

        let mut emitter = OrderedEmitter::new(&mut on_result);
        let mut pending: Vec<usize> = Vec::with_capacity(batch);
        let mut input: Vec<f32> = Vec::with_capacity(batch * len);
        let run =
            |pending: &mut Vec<usize>, input: &mut Vec<f32>, emitter: &mut OrderedEmitter<_>| {
                let probs = timed(&infer_ns, || classifier.classify(input, pending.len()))?;
                for (ix, p) in pending.drain(..).zip(probs) {
                    emitter.push(ix, Ok(p));
                }
                input.clear();
                Ok::<(), Error>(())
            };
        while let Ok((start, decoded)) = timed(&infer_wait_ns, || rx.recv()) {
            for (offset, scored) in decoded.into_iter().enumerate() {
                let ix = start + offset;
                match scored {
                    Ok(t) => {
                        input.extend_from_slice(&t);
                        pending.push(ix);
                        if pending.len() == batch {
                            run(&mut pending, &mut input, &mut emitter)?;
                        }
                    }
                    Err(e) => emitter.push(ix, Err(e)),
                }
            }
        }
        if !pending.is_empty() {
            // A graph with a fixed batch never gets here: `batch` is that size and
            // every full batch has already run, so a remainder is only possible
            // for dynamic batch graphs.
            run(&mut pending, &mut input, &mut emitter)?;
        }
        Ok::<(), Error>(())
    })?;
    Ok(PipelineTimes {
        wall_s: start.elapsed().as_secs_f64(),
        decode_s: seconds(&decode_ns),
        resize_s: seconds(&resize_ns),
        infer_s: seconds(&infer_ns),
        infer_waiting_s: seconds(&infer_wait_ns),
        decode_waiting_s: seconds(&decode_wait_ns),
        decode_threads,
    })
}

/// Re-establishes file order: results are buffered until all earlier ones arrived.
struct OrderedEmitter<'a, F: FnMut(usize, Scored)> {
    next: usize,
    ready: BTreeMap<usize, Scored>,
    sink: &'a mut F,
}

impl<'a, F: FnMut(usize, Scored)> OrderedEmitter<'a, F> {
    fn new(sink: &'a mut F) -> Self {
        OrderedEmitter {
            next: 0,
            ready: BTreeMap::new(),
            sink,
        }
    }

    fn push(&mut self, ix: usize, scored: Scored) {
        self.ready.insert(ix, scored);
        while let Some(s) = self.ready.remove(&self.next) {
            (self.sink)(self.next, s);
            self.next += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emitter_orders_results() {
        let mut seen = Vec::new();
        let mut sink = |i: usize, _s: Scored| seen.push(i);
        let mut e = OrderedEmitter::new(&mut sink);
        let err = || Err(ImageError::Empty { path: "x".into() });
        e.push(2, err());
        e.push(0, err());
        e.push(1, err());
        e.push(3, err());
        assert_eq!(seen, vec![0, 1, 2, 3]);
    }
}
