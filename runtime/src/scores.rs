//! Scores: what a classifier's raw output means, and turning it into one
//! probability per class (softmax, sigmoid), then ranking the classes (top-k).
//!
//! Pure arithmetic on rows of numbers, shared by the classifier (which converts
//! every output row) and the metrics (which rank them), so neither reaches into
//! the other.

use serde::{Deserialize, Serialize};

/// What the model's output means, and what fennec does to get probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// The graph ends in Softmax: used as is.
    Probabilities,
    /// Anything else with K > 1 outputs: softmax applied (unless a row already sums to 1).
    Logits,
    /// One output ending in Sigmoid: p(class 1), expanded to [1 - p, p].
    Sigmoid,
    /// One output without Sigmoid: sigmoid applied, then expanded.
    BinaryLogit,
}

impl OutputKind {
    pub fn describe(&self) -> &'static str {
        match self {
            OutputKind::Probabilities => "probabilities (model ends in Softmax)",
            OutputKind::Logits => "logits (fennec applies softmax)",
            OutputKind::Sigmoid => "one sigmoid probability (read as 2 classes)",
            OutputKind::BinaryLogit => "one logit (fennec applies sigmoid, read as 2 classes)",
        }
    }

    /// One raw output row → one probability per class.
    pub fn to_probabilities(&self, row: &[f32]) -> Vec<f32> {
        let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
        match self {
            OutputKind::Probabilities => row.to_vec(),
            OutputKind::Logits if is_distribution(row) => row.to_vec(),
            OutputKind::Logits => softmax(row),
            OutputKind::Sigmoid => vec![1.0 - row[0], row[0]],
            OutputKind::BinaryLogit => {
                let p = sigmoid(row[0]);
                vec![1.0 - p, p]
            }
        }
    }
}

/// The classes a `[batch, raw_outputs]` output stands for: one sigmoid unit is two.
pub fn class_count(raw_outputs: usize) -> usize {
    if raw_outputs == 1 { 2 } else { raw_outputs }
}

/// Whether a row already is a probability distribution (each in 0..=1, sum 1).
pub fn is_distribution(row: &[f32]) -> bool {
    row.iter().all(|&p| (0.0..=1.0).contains(&p)) && (row.iter().sum::<f32>() - 1.0).abs() < 1e-4
}

/// Numerically stable softmax.
pub fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = row.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Indices of the `k` largest values, largest first; ties keep the lower index first.
pub fn top_k(probs: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_and_top_k() {
        let p = softmax(&[1.0, 2.0, 3.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(top_k(&p, 2), vec![2, 1]);
        assert_eq!(top_k(&[0.5, 0.5, 0.0], 3), vec![0, 1, 2]);
        assert!(is_distribution(&[0.25, 0.75]));
        assert!(!is_distribution(&[2.0, -1.0]));
    }

    #[test]
    fn output_kinds_become_probabilities() {
        assert_eq!(
            OutputKind::Sigmoid.to_probabilities(&[0.25]),
            vec![0.75, 0.25]
        );
        assert_eq!(
            OutputKind::BinaryLogit.to_probabilities(&[0.0]),
            vec![0.5, 0.5]
        );
        assert_eq!(
            OutputKind::Logits.to_probabilities(&[0.5, 0.5]),
            vec![0.5, 0.5]
        );
        let p = OutputKind::Logits.to_probabilities(&[0.0, 3.0]);
        assert!(p[1] > 0.9 && (p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(class_count(1), 2);
        assert_eq!(class_count(5), 5);
    }
}
