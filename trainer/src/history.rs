//! Per-epoch training history: what `fit` records after every epoch, kept in the
//! checkpoint state and written by the run directory as `history.json` and
//! `history.csv` (and plotted as `history.png`).

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

/// `history.csv`: a header of the field names, then one row per epoch.
pub fn to_csv(history: &[EpochRecord]) -> std::io::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in history {
        w.serialize(r)?;
    }
    w.into_inner().map_err(|e| e.into_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_a_header_and_reads_back() {
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
        let csv = to_csv(&h).unwrap();
        let text = String::from_utf8(csv.clone()).unwrap();
        assert_eq!(
            text.lines().next().unwrap(),
            "epoch,train_loss,train_accuracy,val_loss,val_accuracy,val_binary_accuracy,\
             train_seconds,images_per_second,learning_rate"
        );
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .starts_with("1,0.5,0.75,0.25,0.875,")
        );
        let back: Vec<EpochRecord> = csv::Reader::from_reader(&csv[..])
            .deserialize()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back, h);
    }
}
