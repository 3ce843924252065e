//! The metadata a fennec ONNX file carries, and its keys: defined once, here.
//!
//! The trainer's exporter writes these as ONNX `metadata_props`; the runtime reads
//! them back, so a model file is self-describing: class names, preprocessing and
//! provenance travel with the weights.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::preprocess::Preprocess;

/// `metadata_props` keys. Values are JSON where noted, plain strings otherwise.
pub mod keys {
    /// JSON array of class names, index = output position.
    pub const LABELS: &str = "fennec.labels";
    /// JSON [`crate::preprocess::Preprocess`].
    pub const PREPROCESS: &str = "fennec.preprocess";
    /// Model / config name, e.g. `model_3`.
    pub const MODEL_NAME: &str = "fennec.model";
    /// JSON object: epochs, final validation accuracy, dataset sizes, ...
    pub const TRAINING: &str = "fennec.training";
    /// Version of fennec that wrote the file.
    pub const VERSION: &str = "fennec.version";
    /// `sha256:<hex>` of the exported weights, in graph initializer order.
    pub const WEIGHTS_HASH: &str = "fennec.weights_sha256";
    /// What the model's output is: `probabilities` or `logits`.
    pub const OUTPUT: &str = "fennec.output";
    /// `int8` in files written by `fennec quantize` (absent: float weights).
    pub const PRECISION: &str = "fennec.precision";
    /// JSON summary of the images `fennec quantize` calibrated on.
    pub const CALIBRATION: &str = "fennec.calibration";
}

/// `producer_name` written by the exporter.
pub const PRODUCER: &str = "fennec";

/// Parsed fennec metadata; every field is optional because any ONNX file may be loaded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preprocess: Option<Preprocess>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fennec_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// A metadata value that is present but unusable: `(key, reason)`.
pub type BadKey = (String, String);

impl ModelMetadata {
    /// The `(key, value)` pairs to store in `metadata_props`, sorted by key.
    pub fn to_props(&self) -> Vec<(String, String)> {
        let mut m = BTreeMap::new();
        if let Some(l) = &self.labels {
            m.insert(keys::LABELS, json(l));
        }
        if let Some(p) = &self.preprocess {
            m.insert(keys::PREPROCESS, json(p));
        }
        if let Some(t) = &self.training {
            m.insert(keys::TRAINING, t.to_string());
        }
        for (k, v) in [
            (keys::MODEL_NAME, &self.model_name),
            (keys::VERSION, &self.fennec_version),
            (keys::WEIGHTS_HASH, &self.weights_hash),
            (keys::OUTPUT, &self.output),
        ] {
            if let Some(v) = v {
                m.insert(k, v.clone());
            }
        }
        m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// Reads fennec keys from `metadata_props`; other keys are ignored. A fennec key
    /// whose value does not parse is an error naming the key.
    pub fn from_props<'a>(
        props: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, BadKey> {
        let mut md = ModelMetadata::default();
        for (k, v) in props {
            let bad = |e: serde_json::Error| (k.to_string(), e.to_string());
            match k {
                keys::LABELS => {
                    let labels: Vec<String> = serde_json::from_str(v).map_err(bad)?;
                    if labels.is_empty() {
                        return Err((k.into(), "empty label list".into()));
                    }
                    md.labels = Some(labels);
                }
                keys::PREPROCESS => {
                    let p: Preprocess = serde_json::from_str(v).map_err(bad)?;
                    p.validate().map_err(|e| (k.to_string(), e.to_string()))?;
                    md.preprocess = Some(p);
                }
                keys::TRAINING => md.training = Some(serde_json::from_str(v).map_err(bad)?),
                keys::MODEL_NAME => md.model_name = Some(v.into()),
                keys::VERSION => md.fennec_version = Some(v.into()),
                keys::WEIGHTS_HASH => md.weights_hash = Some(v.into()),
                keys::OUTPUT => md.output = Some(v.into()),
                _ => {}
            }
        }
        Ok(md)
    }
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::ColorMode;

    #[test]
    fn round_trip() {
        let md = ModelMetadata {
            labels: Some(vec!["cat".into(), "dog".into()]),
            preprocess: Some(Preprocess::keras(28, 28, ColorMode::Grayscale)),
            model_name: Some("model_3".into()),
            training: Some(serde_json::json!({"epochs": 5})),
            fennec_version: Some("0.1.0".into()),
            weights_hash: Some("sha256:00".into()),
            output: Some("probabilities".into()),
        };
        let props = md.to_props();
        let back =
            ModelMetadata::from_props(props.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        assert_eq!(back, md);
    }

    #[test]
    fn bad_value_names_the_key() {
        let err = ModelMetadata::from_props([(keys::LABELS, "[1, 2")]).unwrap_err();
        assert_eq!(err.0, keys::LABELS);
        let err = ModelMetadata::from_props([(keys::PREPROCESS, r#"{"height":0,"width":2}"#)])
            .unwrap_err();
        assert_eq!(err.0, keys::PREPROCESS);
        assert!(ModelMetadata::from_props([("other", "x")]).unwrap() == ModelMetadata::default());
    }
}
