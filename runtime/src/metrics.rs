//! Classification metrics for `fennec eval`: accuracy, per-class precision / recall /
//! F1, macro and weighted averages, top-k accuracy and the confusion matrix.
//!
//! Pure bookkeeping over `(true class, probabilities)` pairs, so it is unit-tested
//! on hand-made cases and knows nothing about files or models.

use serde::Serialize;

use crate::scores::top_k;

/// Accumulates predictions; memory is O(classes²) whatever the number of images.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub labels: Vec<String>,
    /// `confusion[truth][predicted]`.
    pub confusion: Vec<Vec<u64>>,
    pub k: usize,
    top_k_hits: u64,
}

/// Metrics of one class. `accuracy` is the per-class accuracy of Keras tutorials,
/// i.e. recall: correct / images of that class.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClassMetrics {
    pub label: String,
    pub support: u64,
    pub correct: u64,
    pub predicted: u64,
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// Averages over classes.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Averages {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// The finished report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub images: u64,
    pub correct: u64,
    pub accuracy: f64,
    pub top_k: usize,
    pub top_k_accuracy: f64,
    pub per_class: Vec<ClassMetrics>,
    /// Unweighted mean over classes that have images.
    pub macro_avg: Averages,
    /// Mean weighted by support.
    pub weighted_avg: Averages,
    pub labels: Vec<String>,
    pub confusion: Vec<Vec<u64>>,
}

impl Evaluation {
    pub fn new(labels: Vec<String>, k: usize) -> Self {
        let n = labels.len();
        Evaluation {
            k: k.clamp(1, n.max(1)),
            labels,
            confusion: vec![vec![0; n]; n],
            top_k_hits: 0,
        }
    }

    /// Records one image; returns the predicted class.
    pub fn add(&mut self, truth: usize, probs: &[f32]) -> usize {
        let ranked = top_k(probs, self.k);
        self.record(truth, ranked[0], ranked.contains(&truth));
        ranked[0]
    }

    /// Records one image ranked elsewhere (e.g. read back from a predictions file):
    /// its predicted class, and whether the truth was among the top k.
    pub fn record(&mut self, truth: usize, predicted: usize, top_k_hit: bool) {
        self.confusion[truth][predicted] += 1;
        self.top_k_hits += u64::from(top_k_hit);
    }

    /// Images whose true class was among the top k.
    pub fn top_k_hits(&self) -> u64 {
        self.top_k_hits
    }

    /// Adds raw counts of the same labels and k (a shard's) to this evaluation.
    /// The caller checks the shapes; a mismatch panics.
    pub fn absorb(&mut self, confusion: &[Vec<u64>], top_k_hits: u64) {
        assert_eq!(confusion.len(), self.confusion.len(), "same classes");
        for (mine, theirs) in self.confusion.iter_mut().zip(confusion) {
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += b;
            }
        }
        self.top_k_hits += top_k_hits;
    }

    pub fn summary(&self) -> Summary {
        let n = self.labels.len();
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let images: u64 = self.confusion.iter().flatten().sum();
        let correct: u64 = (0..n).map(|i| self.confusion[i][i]).sum();
        let per_class: Vec<ClassMetrics> = (0..n)
            .map(|c| {
                let support: u64 = self.confusion[c].iter().sum();
                let predicted: u64 = self.confusion.iter().map(|row| row[c]).sum();
                let tp = self.confusion[c][c];
                let precision = ratio(tp, predicted);
                let recall = ratio(tp, support);
                let f1 = if precision + recall == 0.0 {
                    0.0
                } else {
                    2.0 * precision * recall / (precision + recall)
                };
                ClassMetrics {
                    label: self.labels[c].clone(),
                    support,
                    correct: tp,
                    predicted,
                    accuracy: recall,
                    precision,
                    recall,
                    f1,
                }
            })
            .collect();
        let present: Vec<&ClassMetrics> = per_class.iter().filter(|m| m.support > 0).collect();
        let mean = |f: fn(&ClassMetrics) -> f64| {
            if present.is_empty() {
                0.0
            } else {
                present.iter().map(|m| f(m)).sum::<f64>() / present.len() as f64
            }
        };
        let weighted = |f: fn(&ClassMetrics) -> f64| {
            if images == 0 {
                0.0
            } else {
                present.iter().map(|m| f(m) * m.support as f64).sum::<f64>() / images as f64
            }
        };
        Summary {
            images,
            correct,
            accuracy: ratio(correct, images),
            top_k: self.k,
            top_k_accuracy: ratio(self.top_k_hits, images),
            macro_avg: Averages {
                precision: mean(|m| m.precision),
                recall: mean(|m| m.recall),
                f1: mean(|m| m.f1),
            },
            weighted_avg: Averages {
                precision: weighted(|m| m.precision),
                recall: weighted(|m| m.recall),
                f1: weighted(|m| m.f1),
            },
            per_class,
            labels: self.labels.clone(),
            confusion: self.confusion.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn onehot(c: usize, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| if i == c { 0.9 } else { 0.1 / (n - 1) as f32 })
            .collect()
    }

    #[test]
    fn hand_computed_case() {
        // truth a: predicted a, a, b ; truth b: predicted b ; truth c: predicted a
        let mut e = Evaluation::new(vec!["a".into(), "b".into(), "c".into()], 2);
        for (t, p) in [(0, 0), (0, 0), (0, 1), (1, 1), (2, 0)] {
            e.add(t, &onehot(p, 3));
        }
        let s = e.summary();
        assert_eq!((s.images, s.correct), (5, 3));
        assert!((s.accuracy - 0.6).abs() < 1e-12);
        let a = &s.per_class[0];
        assert_eq!((a.support, a.correct, a.predicted), (3, 2, 3));
        assert!((a.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((a.recall - 2.0 / 3.0).abs() < 1e-12);
        let b = &s.per_class[1];
        assert!((b.precision - 0.5).abs() < 1e-12 && (b.recall - 1.0).abs() < 1e-12);
        assert!((b.f1 - 2.0 / 3.0).abs() < 1e-12);
        let c = &s.per_class[2];
        assert_eq!((c.precision, c.recall, c.f1), (0.0, 0.0, 0.0));
        assert!((s.macro_avg.recall - (2.0 / 3.0 + 1.0 + 0.0) / 3.0).abs() < 1e-12);
        assert!(
            (s.weighted_avg.recall - 0.6).abs() < 1e-12,
            "weighted recall = accuracy"
        );
        assert_eq!(
            s.confusion,
            vec![vec![2, 1, 0], vec![0, 1, 0], vec![1, 0, 0]]
        );
    }

    #[test]
    fn top_k_counts_second_choice() {
        let mut e = Evaluation::new(vec!["a".into(), "b".into(), "c".into()], 2);
        e.add(1, &[0.6, 0.3, 0.1]);
        e.add(2, &[0.6, 0.3, 0.1]);
        let s = e.summary();
        assert_eq!(s.accuracy, 0.0);
        assert_eq!(s.top_k_accuracy, 0.5);
    }

    #[test]
    fn classes_without_images_do_not_drag_macro_average() {
        let mut e = Evaluation::new(vec!["a".into(), "b".into()], 1);
        e.add(0, &[0.9, 0.1]);
        let s = e.summary();
        assert_eq!(s.macro_avg.recall, 1.0);
        assert_eq!(s.per_class[1].support, 0);
    }
}
