//! Batching requests from several clients into one inference call.
//!
//! One thread owns inference. Requests decode their images elsewhere (the decode
//! pool) and send the tensors here as a [`Job`]. After the first job of a batch
//! arrives the thread waits up to the batching window for more, but only while
//! other requests are still decoding (a lone client pays no wait), and never past
//! `max_batch` images. A window of zero turns batching off: each request is
//! inferred on its own. Jobs whose client has gone (timed out) are dropped unrun.
//!
//! tract makes (and keeps) one optimised plan per batch size, and a plan holds its
//! own packed copy of the weights. So a batch runs as chunks of power-of-two sizes
//! (13 images: 8 + 4 + 1), and at most log2(`max_batch`) + 1 plans ever exist, all
//! made at start: memory stays flat under any mix of load.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::metrics::Metrics;
use crate::classifier::Classifier;

/// Probability rows for a job's images, or the inference error as text.
pub type Reply = Result<Vec<Vec<f32>>, String>;

/// `n` preprocessed images of one request, and where to send their rows.
pub struct Job {
    pub input: Vec<f32>,
    pub n: usize,
    pub reply: oneshot::Sender<Reply>,
}

/// The sending side, shared by all requests.
pub struct Batcher {
    jobs: mpsc::Sender<Job>,
    /// Requests admitted and still decoding: the batcher waits for them only.
    decoding: Arc<AtomicUsize>,
}

impl Batcher {
    /// Starts the inference thread; it ends when the `Batcher` is dropped.
    pub fn start(
        classifier: Arc<Classifier>,
        window: Duration,
        max_batch: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Batcher, JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel::<Job>();
        let decoding = Arc::new(AtomicUsize::new(0));
        let waiting_for = decoding.clone();
        for size in plan_sizes(max_batch) {
            classifier.prepare(size).map_err(std::io::Error::other)?;
        }
        let handle = std::thread::Builder::new()
            .name("fennec-infer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let jobs = gather(first, &rx, window, max_batch, &waiting_for);
                    run(&classifier, jobs, max_batch, &metrics);
                }
            })?;
        Ok((Batcher { jobs: tx, decoding }, handle))
    }

    /// Marks one request as decoding until the guard is dropped (or [`Decoding::submit`]).
    pub fn decoding(&self) -> Decoding<'_> {
        self.decoding.fetch_add(1, Ordering::SeqCst);
        Decoding {
            batcher: self,
            done: false,
        }
    }
}

/// A request between admission and the hand-over of its tensors.
pub struct Decoding<'a> {
    batcher: &'a Batcher,
    done: bool,
}

impl Decoding<'_> {
    /// Hands the tensors over; the answer arrives on the returned receiver.
    pub fn submit(mut self, input: Vec<f32>, n: usize) -> oneshot::Receiver<Reply> {
        let (reply, rx) = oneshot::channel();
        // The thread only stops when the Batcher is dropped, after the server.
        let _ = self.batcher.jobs.send(Job { input, n, reply });
        self.finish();
        rx
    }

    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            self.batcher.decoding.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Decoding<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The jobs of one inference call, starting with `first`.
fn gather(
    first: Job,
    rx: &mpsc::Receiver<Job>,
    window: Duration,
    max_batch: usize,
    decoding: &AtomicUsize,
) -> Vec<Job> {
    let mut images = first.n;
    let mut jobs = vec![first];
    if window.is_zero() {
        return jobs;
    }
    let deadline = Instant::now() + window;
    while images < max_batch {
        let job = match rx.try_recv() {
            Ok(job) => job,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                let now = Instant::now();
                if decoding.load(Ordering::SeqCst) == 0 || now >= deadline {
                    break;
                }
                // Short naps so that the end of the last decode is seen quickly.
                let nap = (deadline - now).min(Duration::from_micros(200));
                match rx.recv_timeout(nap) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        };
        images += job.n;
        jobs.push(job);
    }
    jobs
}

/// Runs the jobs still wanted as one batch and sends each its rows.
fn run(classifier: &Classifier, jobs: Vec<Job>, max_batch: usize, metrics: &Metrics) {
    let jobs: Vec<Job> = jobs.into_iter().filter(|j| !j.reply.is_closed()).collect();
    let n: usize = jobs.iter().map(|j| j.n).sum();
    if n == 0 {
        return;
    }
    let mut input = Vec::with_capacity(jobs.iter().map(|j| j.input.len()).sum());
    for j in &jobs {
        input.extend_from_slice(&j.input);
    }
    metrics.batch(n);
    let len = input.len() / n;
    let mut rows = Vec::with_capacity(n);
    let mut at = 0;
    let outcome = chunks(n, max_batch).into_iter().try_for_each(|size| {
        rows.extend(classifier.classify(&input[at * len..(at + size) * len], size)?);
        at += size;
        Ok::<(), crate::error::Error>(())
    });
    match outcome.map(|()| rows) {
        Ok(rows) => {
            let mut rows = rows.into_iter();
            for j in jobs {
                let _ = j.reply.send(Ok(rows.by_ref().take(j.n).collect()));
            }
        }
        Err(e) => {
            let reason = e.to_string();
            for j in jobs {
                let _ = j.reply.send(Err(reason.clone()));
            }
        }
    }
}

/// The batch sizes plans are made for: powers of two up to `max_batch`.
fn plan_sizes(max_batch: usize) -> Vec<usize> {
    (0..usize::BITS)
        .map(|i| 1usize << i)
        .take_while(|&s| s <= max_batch.max(1))
        .collect()
}

/// `n` images as chunks of plan sizes, largest first (13 -> 8, 4, 1).
fn chunks(n: usize, max_batch: usize) -> Vec<usize> {
    let sizes = plan_sizes(max_batch);
    let mut left = n;
    let mut out = vec![];
    for &size in sizes.iter().rev() {
        while left >= size {
            out.push(size);
            left -= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: usize) -> (Job, oneshot::Receiver<Reply>) {
        let (reply, rx) = oneshot::channel();
        (
            Job {
                input: vec![],
                n,
                reply,
            },
            rx,
        )
    }

    #[test]
    fn window_zero_runs_each_job_alone() {
        let (tx, rx) = mpsc::channel();
        let (a, _ra) = job(1);
        let (b, _rb) = job(1);
        tx.send(b).unwrap();
        let busy = AtomicUsize::new(1);
        let jobs = gather(a, &rx, Duration::ZERO, 64, &busy);
        assert_eq!(jobs.len(), 1);
    }

    #[test]
    fn queued_jobs_join_up_to_max_batch() {
        let (tx, rx) = mpsc::channel();
        let mut keep = vec![];
        for _ in 0..5 {
            let (j, r) = job(2);
            tx.send(j).unwrap();
            keep.push(r);
        }
        let (first, _r) = job(2);
        let busy = AtomicUsize::new(3);
        let jobs = gather(first, &rx, Duration::from_secs(5), 6, &busy);
        // 2 + 2 + 2 = 6 images: full, without waiting for the window.
        assert_eq!(jobs.len(), 3);
    }

    #[test]
    fn no_wait_when_nobody_else_is_decoding() {
        let (_tx, rx) = mpsc::channel();
        let (first, _r) = job(1);
        let idle = AtomicUsize::new(0);
        let jobs = gather(first, &rx, Duration::from_secs(3600), 64, &idle);
        assert_eq!(jobs.len(), 1, "returned at once, not after an hour");
    }

    #[test]
    fn batches_run_as_power_of_two_chunks() {
        assert_eq!(plan_sizes(32), [1, 2, 4, 8, 16, 32]);
        assert_eq!(plan_sizes(12), [1, 2, 4, 8]);
        assert_eq!(plan_sizes(0), [1]);
        assert_eq!(chunks(13, 32), [8, 4, 1]);
        assert_eq!(chunks(70, 32), [32, 32, 4, 2]);
        assert_eq!(chunks(7, 4), [4, 2, 1]);
        assert_eq!(chunks(1, 1), [1]);
        for n in 1..100 {
            assert_eq!(chunks(n, 16).iter().sum::<usize>(), n);
        }
    }
}
