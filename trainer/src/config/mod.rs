//! The YAML training config: input, layers, training settings, and the checks
//! that turn a typo or an impossible shape into an error naming the key or layer.
//!
//! The model input is the runtime's [`Preprocess`], the one spelling of the
//! preprocessing contract; [`yaml`] maps it to and from the config's `input:` and
//! `preprocess:` keys. [`plan`] turns the layer list into shapes ([`Config::resolve`]).

mod plan;
mod yaml;

use std::path::Path;

use fennec_runtime::preprocess::Preprocess;
use serde::{Deserialize, Serialize};

pub use plan::{Pads, Plan, PlanError, PlannedLayer, Shape};

/// Errors in a config file. Each message names the file, and the key or the layer.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Names the file (fs-err).
    #[error(transparent)]
    Read(#[from] std::io::Error),
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// A whole config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "yaml::ConfigFile", into = "yaml::ConfigFile")]
pub struct Config {
    /// Model name, written into the ONNX metadata (e.g. `model_3`).
    pub name: String,
    /// The model input and how an image file becomes it: size and colour from the
    /// YAML's `input:`, resize mode, filter, scale, mean and std from `preprocess:`
    /// (Keras' `flow_from_directory` defaults); always NCHW, as burn trains.
    pub preprocess: Preprocess,
    pub layers: Vec<LayerSpec>,
    pub training: Training,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    #[default]
    Valid,
    /// TensorFlow/Keras `same`: output = ceil(input / stride); odd padding goes
    /// at the end (bottom/right), e.g. pool 2 on 109 gives 55.
    Same,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    #[default]
    None,
    Relu,
    Sigmoid,
    Tanh,
    /// Only on the last dense layer: the class distribution.
    Softmax,
}

/// One entry of `layers:`. YAML: `- conv2d: {filters: 32, kernel: 3, activation: relu}`,
/// `- flatten`, ...
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerSpec {
    Conv2d(Conv2dSpec),
    Maxpool2d(PoolSpec),
    Avgpool2d(PoolSpec),
    Batchnorm(BatchNormSpec),
    Dropout(DropoutSpec),
    Flatten,
    GlobalAveragePool,
    Dense(DenseSpec),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv2dSpec {
    pub filters: usize,
    pub kernel: usize,
    #[serde(default = "one")]
    pub stride: usize,
    #[serde(default)]
    pub padding: Padding,
    #[serde(default)]
    pub activation: Activation,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    pub size: usize,
    /// Defaults to `size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stride: Option<usize>,
    #[serde(default)]
    pub padding: Padding,
}

/// Keras conventions: `momentum` is the running average's decay (0.99).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchNormSpec {
    #[serde(default = "bn_momentum")]
    pub momentum: f64,
    #[serde(default = "bn_epsilon")]
    pub epsilon: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropoutSpec {
    pub rate: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenseSpec {
    /// Output size; on the last layer it defaults to the number of classes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<usize>,
    #[serde(default)]
    pub activation: Activation,
}

/// `training:` settings. Defaults are the tutorial's: Adam(1e-3, 0.9, 0.999, 1e-7),
/// categorical cross-entropy, batch 64, 10 epochs, seed 42.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Training {
    #[serde(default = "batch_size")]
    pub batch_size: usize,
    #[serde(default = "epochs")]
    pub epochs: usize,
    #[serde(default = "seed")]
    pub seed: u64,
    #[serde(default = "yes")]
    pub shuffle: bool,
    #[serde(default)]
    pub drop_last: bool,
    #[serde(default, with = "serde_yaml::with::singleton_map_recursive")]
    pub optimizer: Optimizer,
    #[serde(default)]
    pub loss: Loss,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
    #[serde(default)]
    pub augmentation: Augmentation,
    /// Keep decoded training images in memory: `true`, `false`, or left out to
    /// cache when they fit in a memory budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
}

impl Default for Training {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("all training keys have defaults")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Optimizer {
    Adam(AdamSpec),
}

impl Default for Optimizer {
    fn default() -> Self {
        Optimizer::Adam(AdamSpec::default())
    }
}

impl Optimizer {
    pub fn learning_rate(&self) -> f64 {
        let Optimizer::Adam(a) = self;
        a.learning_rate
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamSpec {
    #[serde(default = "learning_rate")]
    pub learning_rate: f64,
    #[serde(default = "beta_1")]
    pub beta_1: f32,
    #[serde(default = "beta_2")]
    pub beta_2: f32,
    #[serde(default = "adam_epsilon")]
    pub epsilon: f32,
}

impl Default for AdamSpec {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("all adam keys have defaults")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    #[default]
    CategoricalCrossentropy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    /// Epochs without an improvement of the validation loss before stopping.
    pub patience: usize,
    /// Smallest decrease of the validation loss that counts as an improvement.
    #[serde(default)]
    pub min_delta: f64,
    /// Export / keep the best epoch's weights rather than the last ones.
    #[serde(default = "yes")]
    pub restore_best: bool,
}

/// On-the-fly augmentation of training images (Keras `ImageDataGenerator` names).
/// All off by default.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Augmentation {
    #[serde(default)]
    pub horizontal_flip: bool,
    /// Maximum rotation in degrees, either way.
    #[serde(default)]
    pub rotation: f32,
    /// Zoom range: scale drawn from [1 - zoom, 1 + zoom].
    #[serde(default)]
    pub zoom: f32,
    /// Maximum horizontal shift as a fraction of the width.
    #[serde(default)]
    pub width_shift: f32,
    /// Maximum vertical shift as a fraction of the height.
    #[serde(default)]
    pub height_shift: f32,
    /// Brightness factor range `[min, max]`, e.g. `[0.8, 1.2]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brightness: Option<[f32; 2]>,
}

impl Augmentation {
    pub fn is_off(&self) -> bool {
        *self == Augmentation::default()
    }
}

fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn bn_momentum() -> f64 {
    0.99
}
fn bn_epsilon() -> f64 {
    1e-3
}
fn batch_size() -> usize {
    64
}
fn epochs() -> usize {
    10
}
fn seed() -> u64 {
    42
}
fn learning_rate() -> f64 {
    1e-3
}
fn beta_1() -> f32 {
    0.9
}
fn beta_2() -> f32 {
    0.999
}
fn adam_epsilon() -> f32 {
    1e-7
}

impl Config {
    /// Reads and validates a config file (shape checks need the class count and
    /// happen in [`Config::resolve`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = fs_err::read_to_string(path)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses YAML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = serde_yaml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: origin.into(),
            message: e.to_string(),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |message: String| {
            Err(ConfigError::Invalid {
                path: origin.into(),
                message,
            })
        };
        let p = &self.preprocess;
        if p.height == 0 || p.width == 0 {
            return bad(format!(
                "input: height and width must be positive, got {}x{}",
                p.height, p.width
            ));
        }
        if let Err(e) = p.validate() {
            return bad(format!("preprocess: {e}"));
        }
        let t = &self.training;
        if t.batch_size == 0 {
            return bad("training.batch_size must be at least 1".into());
        }
        if t.epochs == 0 {
            return bad("training.epochs must be at least 1".into());
        }
        let Optimizer::Adam(a) = &t.optimizer;
        if !(a.learning_rate > 0.0 && a.learning_rate.is_finite()) {
            return bad(format!(
                "training.optimizer.adam.learning_rate must be positive, got {}",
                a.learning_rate
            ));
        }
        if !(0.0..1.0).contains(&a.beta_1) || !(0.0..1.0).contains(&a.beta_2) || a.epsilon <= 0.0 {
            return bad(
                "training.optimizer.adam: beta_1 and beta_2 must be in [0, 1), epsilon positive"
                    .into(),
            );
        }
        let aug = &t.augmentation;
        for (key, v, max) in [
            ("rotation", aug.rotation, 180.0),
            ("zoom", aug.zoom, 0.9),
            ("width_shift", aug.width_shift, 1.0),
            ("height_shift", aug.height_shift, 1.0),
        ] {
            if !(0.0..=max).contains(&v) {
                return bad(format!(
                    "training.augmentation.{key} must be in [0, {max}], got {v}"
                ));
            }
        }
        if let Some([lo, hi]) = aug.brightness
            && !(lo > 0.0 && lo <= hi)
        {
            return bad(format!(
                "training.augmentation.brightness must be [min, max] with 0 < min <= max, got [{lo}, {hi}]"
            ));
        }
        if let Some(es) = &t.early_stopping
            && (es.patience == 0 || es.min_delta < 0.0)
        {
            return bad(
                "training.early_stopping: patience must be at least 1 and min_delta >= 0".into(),
            );
        }
        if self.layers.is_empty() {
            return bad("layers: the list is empty".into());
        }
        Ok(())
    }
}

impl LayerSpec {
    /// The YAML key of this layer kind.
    pub fn kind(&self) -> &'static str {
        match self {
            LayerSpec::Conv2d(_) => "conv2d",
            LayerSpec::Maxpool2d(_) => "maxpool2d",
            LayerSpec::Avgpool2d(_) => "avgpool2d",
            LayerSpec::Batchnorm(_) => "batchnorm",
            LayerSpec::Dropout(_) => "dropout",
            LayerSpec::Flatten => "flatten",
            LayerSpec::GlobalAveragePool => "global_average_pool",
            LayerSpec::Dense(_) => "dense",
        }
    }
}

/// A config with every layer type, for the unit tests of the model and the exporter.
#[cfg(test)]
pub(crate) const EVERY_LAYER_YAML: &str = r#"
name: every_layer
input: {height: 9, width: 9, channels: 3}
layers:
  - conv2d: {filters: 4, kernel: 3, padding: same, activation: relu}
  - batchnorm: {}
  - maxpool2d: {size: 2, padding: same}
  - avgpool2d: {size: 2, padding: same}
  - dropout: {rate: 0.25}
  - conv2d: {filters: 5, kernel: 1, activation: tanh}
  - global_average_pool
  - dense: {units: 6, activation: sigmoid}
  - batchnorm: {}
  - dense: {activation: softmax}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const MODEL_3: &str = r#"
name: model_3
input: {height: 224, width: 224, channels: 3}
layers:
  - conv2d: {filters: 32, kernel: 3, activation: relu}
  - maxpool2d: {size: 2, padding: same}
  - conv2d: {filters: 32, kernel: 3, activation: relu}
  - maxpool2d: {size: 2, padding: same}
  - flatten
  - dense: {units: 128, activation: relu}
  - dense: {activation: softmax}
"#;

    #[test]
    fn typos_and_bad_values_name_the_key() {
        let typo = MODEL_3.replace("filters: 32, kernel", "fliters: 32, kernel");
        let e = Config::parse(&typo, "t.yaml").unwrap_err().to_string();
        assert!(e.contains("t.yaml") && e.contains("fliters"), "{e}");
        let e = Config::parse(&MODEL_3.replace("channels: 3", "channels: 4"), "c.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("input.channels"), "{e}");
        let neg = MODEL_3.replace("height: 224", "height: -224");
        assert!(Config::parse(&neg, "n.yaml").is_err());
        let extra = format!("{MODEL_3}\nlearning_rate: 0.1\n");
        let e = Config::parse(&extra, "x.yaml").unwrap_err().to_string();
        assert!(e.contains("learning_rate"), "{e}");
    }
}
