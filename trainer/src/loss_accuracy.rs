//! Loss and accuracy of a network on labelled images, computed as Keras reports
//! them: during training (per batch), for validation after every epoch, and for
//! `fennec-train evaluate`. (The runtime's `metrics` are the per-class report of an
//! exported model; these are the training-time numbers.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;

use crate::data::{BatchStream, DataError, LabelledFolder, Loader};
use crate::model::Net;
use crate::train::{Event, Observer};

/// Running metrics computed from logits on the host, in f64: categorical
/// cross-entropy (`logsumexp(z) - z[label]`, the mean over images), categorical
/// accuracy (arg-max equals the label, first maximum on ties), and Keras'
/// `BinaryAccuracy` on one-hot targets (each of the `classes` outputs counts:
/// `softmax > 0.5` equals the one-hot bit).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LossAccuracy {
    pub classes: usize,
    pub count: u64,
    pub loss_sum: f64,
    pub correct: u64,
    pub binary_correct: u64,
}

impl LossAccuracy {
    pub fn new(classes: usize) -> LossAccuracy {
        LossAccuracy {
            classes,
            ..Default::default()
        }
    }

    /// Adds a batch: `logits` is `[labels.len(), classes]`, row-major.
    pub fn add(&mut self, logits: &[f32], labels: &[i64]) {
        let k = self.classes;
        assert_eq!(
            logits.len(),
            labels.len() * k,
            "logits do not match the labels"
        );
        for (row, &label) in logits.chunks_exact(k).zip(labels) {
            let label = label as usize;
            let (argmax, max) =
                row.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                        if v > bv { (i, v) } else { (bi, bv) }
                    });
            let max = max as f64;
            let sum: f64 = row.iter().map(|&z| (z as f64 - max).exp()).sum();
            self.loss_sum += max + sum.ln() - row[label] as f64;
            self.correct += (argmax == label) as u64;
            self.binary_correct += row
                .iter()
                .enumerate()
                .filter(|&(i, &z)| (((z as f64 - max).exp() / sum) > 0.5) == (i == label))
                .count() as u64;
            self.count += 1;
        }
    }

    pub fn loss(&self) -> f64 {
        self.loss_sum / self.count.max(1) as f64
    }
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.count.max(1) as f64
    }
    pub fn binary_accuracy(&self) -> f64 {
        self.binary_correct as f64 / (self.count * self.classes as u64).max(1) as f64
    }
}

/// Loss, accuracy and binary accuracy of `net` (an evaluation copy, `net.valid()`)
/// over `folder` in file order, `batch` images at a time. `None` when stopped by
/// request.
pub fn measure(
    net: &Net,
    folder: &Arc<LabelledFolder>,
    loader: &Arc<Loader>,
    batch: usize,
    device: &Device,
    stop: &AtomicBool,
    obs: &dyn Observer,
) -> Result<Option<LossAccuracy>, DataError> {
    let [_, c, h, w] = loader.preprocess.batch_shape(1);
    let order: Vec<usize> = (0..folder.examples.len()).collect();
    let mut metrics = LossAccuracy::new(folder.classes.len());
    for b in BatchStream::start(folder.clone(), loader.clone(), order, batch, false, None)? {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let b = b?;
        let x = Tensor::<4>::from_data(TensorData::new(b.images, [b.len, c, h, w]), device);
        let logits: Vec<f32> = net
            .forward(x)
            .try_into_vec_as::<f32>()
            .map_err(|e| DataError::Compute(crate::device::failure_line(&e)))?;
        metrics.add(&logits, &b.labels);
        obs.event(Event::Advance(b.len as u64));
    }
    Ok(Some(metrics))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_hand_computation() {
        let mut m = LossAccuracy::new(2);
        // Row 1: logits (0, ln 3): p = (0.25, 0.75), label 1 → loss -ln 0.75, correct,
        // binary: 0.25 > .5 false == (label != 0) ok; 0.75 > .5 true == true ok.
        // Row 2: equal logits, label 1: p = (.5, .5), argmax 0 (first) → wrong; binary:
        // .5 > .5 false == false ok; false == true wrong.
        m.add(&[0.0, 3f32.ln(), 1.0, 1.0], &[1, 1]);
        assert_eq!(m.count, 2);
        let want = (-(0.75f64).ln() - (0.5f64).ln()) / 2.0;
        assert!((m.loss() - want).abs() < 1e-6, "{} vs {want}", m.loss());
        assert_eq!(m.accuracy(), 0.5);
        assert_eq!(m.binary_accuracy(), 0.75);
    }

    #[test]
    fn loss_is_stable_for_large_logits() {
        let mut m = LossAccuracy::new(3);
        m.add(&[1000.0, 0.0, -1000.0], &[0]);
        assert!(m.loss().abs() < 1e-9);
        m.add(&[1000.0, 0.0, -1000.0], &[2]);
        assert!((m.loss() - 1000.0).abs() < 1e-6);
    }
}
