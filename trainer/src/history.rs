//! Per-epoch training history: what `fit` records and writes into the run
//! directory as `history.json` and `history.csv` (and plots as `history.png`).

use std::io::Write;
use std::path::Path;

use fennec_runtime::atomic::write_atomic;
use serde::{Deserialize, Serialize};

/// One finished epoch. Accuracies are categorical (argmax equals the label);
/// `val_binary_accuracy` is Keras' `BinaryAccuracy` on one-hot targets, reported
/// because the reference tutorial uses it (near 1 - 1/classes for a useless model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub val_binary_accuracy: f64,
    /// Wall time of the training phase of the epoch (validation excluded).
    pub train_seconds: f64,
    /// Training images per second (decoding included).
    pub images_per_second: f64,
    pub learning_rate: f64,
}

const CSV_HEADER: &str = "epoch,train_loss,train_accuracy,val_loss,val_accuracy,val_binary_accuracy,train_seconds,images_per_second,learning_rate";

/// Writes `history.json` and `history.csv` in `dir`, each atomically.
pub fn write_history(dir: &Path, history: &[EpochRecord]) -> std::io::Result<()> {
    write_atomic(&dir.join("history.json"), |w| {
        serde_json::to_writer_pretty(&mut *w, history)?;
        writeln!(w)
    })?;
    write_atomic(&dir.join("history.csv"), |w| {
        writeln!(w, "{CSV_HEADER}")?;
        for r in history {
            writeln!(
                w,
                "{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.3},{:.2},{}",
                r.epoch,
                r.train_loss,
                r.train_accuracy,
                r.val_loss,
                r.val_accuracy,
                r.val_binary_accuracy,
                r.train_seconds,
                r.images_per_second,
                r.learning_rate
            )?;
        }
        Ok(())
    })
}

/// Reads `history.json` from a run directory.
pub fn read_history(dir: &Path) -> std::io::Result<Vec<EpochRecord>> {
    let bytes = std::fs::read(dir.join("history.json"))?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_csv() {
        let dir = tempfile::tempdir().unwrap();
        let h = vec![EpochRecord {
            epoch: 1,
            train_loss: 0.5,
            train_accuracy: 0.75,
            val_loss: 0.25,
            val_accuracy: 0.875,
            val_binary_accuracy: 0.9,
            train_seconds: 1.5,
            images_per_second: 42.0,
            learning_rate: 0.001,
        }];
        write_history(dir.path(), &h).unwrap();
        assert_eq!(read_history(dir.path()).unwrap(), h);
        let csv = std::fs::read_to_string(dir.path().join("history.csv")).unwrap();
        assert_eq!(csv.lines().next().unwrap(), CSV_HEADER);
        assert!(
            csv.lines()
                .nth(1)
                .unwrap()
                .starts_with("1,0.500000,0.750000,0.250000,0.875000,")
        );
    }
}
