//! The YAML training config: input, layers, training settings, and the checks
//! that turn a typo or an impossible shape into an error naming the key or layer.
//!
//! [`Config::resolve`] walks the layer list once, computing every layer's output
//! shape, parameter count and padding. The model builder, the exporter and
//! `fennec-train summary` all read that one [`Plan`], so they cannot disagree.

use std::path::Path;

use fennec_runtime::preprocess::{ColorMode, Preprocess, ResizeFilter, ResizeMode};
use serde::{Deserialize, Serialize};

/// Errors in a config file. Each message names the key or the layer.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// A whole config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Model name, written into the ONNX metadata (e.g. `model_3`).
    pub name: String,
    pub input: Input,
    /// Preprocessing beyond the input size (resize mode, filter, scale, mean, std).
    #[serde(default)]
    pub preprocess: PreprocessConfig,
    /// YAML enums are written as one-key maps (`- conv2d: {...}`), not `!tags`.
    #[serde(with = "serde_yaml::with::singleton_map_recursive")]
    pub layers: Vec<LayerSpec>,
    #[serde(default)]
    pub training: Training,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub height: usize,
    pub width: usize,
    /// 3 (RGB) or 1 (grayscale).
    pub channels: usize,
}

/// Optional preprocessing settings; defaults are Keras' `flow_from_directory`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessConfig {
    #[serde(default)]
    pub resize: ResizeMode,
    #[serde(default)]
    pub filter: ResizeFilter,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mean: Vec<f32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub std: Vec<f32>,
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

/// A tensor shape between layers, batch excluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Shape {
    /// `[channels, height, width]`.
    Map([usize; 3]),
    /// `[features]`.
    Flat(usize),
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shape::Map([c, h, w]) => write!(f, "{h}x{w}x{c}"),
            Shape::Flat(n) => write!(f, "{n}"),
        }
    }
}

/// Spatial padding `[top, left, bottom, right]` (ONNX order is top, left, bottom, right).
pub type Pads = [usize; 4];

/// One layer after shape inference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedLayer {
    /// Position in the config's `layers:` list (0-based).
    pub index: usize,
    pub spec: LayerSpec,
    pub input: Shape,
    pub output: Shape,
    /// Trainable parameters (BatchNorm's running statistics excluded).
    pub params: usize,
    /// Explicit padding for conv and pool layers.
    pub pads: Option<Pads>,
}

/// The resolved network: layers with shapes, for a given number of classes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub input: Shape,
    pub layers: Vec<PlannedLayer>,
    pub num_classes: usize,
}

impl Plan {
    pub fn total_params(&self) -> usize {
        self.layers.iter().map(|l| l.params).sum()
    }
}

impl Config {
    /// Reads and validates a config file (shape checks need the class count and
    /// happen in [`Config::resolve`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: p.clone(),
            source,
        })?;
        Self::parse(&text, &p)
    }

    /// Parses YAML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
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
        let i = &self.input;
        if i.height == 0 || i.width == 0 {
            return bad(format!(
                "input: height and width must be positive, got {}x{}",
                i.height, i.width
            ));
        }
        if i.channels != 1 && i.channels != 3 {
            return bad(format!(
                "input.channels must be 1 (grayscale) or 3 (rgb), got {}",
                i.channels
            ));
        }
        if let Err(e) = self.preprocess().validate() {
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

    /// The preprocessing contract this config trains with (NCHW, as burn).
    pub fn preprocess(&self) -> Preprocess {
        let color = if self.input.channels == 1 {
            ColorMode::Grayscale
        } else {
            ColorMode::Rgb
        };
        let mut p = Preprocess::keras(self.input.height as u32, self.input.width as u32, color);
        let c = &self.preprocess;
        p.resize = c.resize;
        p.filter = c.filter;
        if let Some(s) = c.scale {
            p.scale = s;
        }
        p.mean = c.mean.clone();
        p.std = c.std.clone();
        p
    }

    /// Shape inference for `num_classes` outputs. Fails naming the layer when a
    /// shape becomes impossible or a layer cannot follow the previous one.
    pub fn resolve(&self, num_classes: usize) -> Result<Plan, String> {
        let input = Shape::Map([self.input.channels, self.input.height, self.input.width]);
        let mut shape = input;
        let mut layers = Vec::with_capacity(self.layers.len());
        let last = self.layers.len() - 1;
        for (index, spec) in self.layers.iter().enumerate() {
            let name = format!("layers[{index}] ({})", spec.kind());
            let err = |m: String| format!("{name}: {m}");
            let (output, params, pads) = match (spec, shape) {
                (LayerSpec::Conv2d(c), Shape::Map([ch, h, w])) => {
                    if c.filters == 0 || c.kernel == 0 || c.stride == 0 {
                        return Err(err("filters, kernel and stride must be positive".into()));
                    }
                    if c.activation == Activation::Softmax {
                        return Err(err("softmax is only allowed on the last dense layer".into()));
                    }
                    let (oh, pt, pb) = window(h, c.kernel, c.stride, c.padding)
                        .map_err(|m| err(format!("height {m}")))?;
                    let (ow, pl, pr) = window(w, c.kernel, c.stride, c.padding)
                        .map_err(|m| err(format!("width {m}")))?;
                    let params = c.filters * ch * c.kernel * c.kernel + c.filters;
                    (
                        Shape::Map([c.filters, oh, ow]),
                        params,
                        Some([pt, pl, pb, pr]),
                    )
                }
                (LayerSpec::Maxpool2d(p) | LayerSpec::Avgpool2d(p), Shape::Map([ch, h, w])) => {
                    let stride = p.stride.unwrap_or(p.size);
                    if p.size == 0 || stride == 0 {
                        return Err(err("size and stride must be positive".into()));
                    }
                    let (oh, pt, pb) = window(h, p.size, stride, p.padding)
                        .map_err(|m| err(format!("height {m}")))?;
                    let (ow, pl, pr) = window(w, p.size, stride, p.padding)
                        .map_err(|m| err(format!("width {m}")))?;
                    (Shape::Map([ch, oh, ow]), 0, Some([pt, pl, pb, pr]))
                }
                (LayerSpec::Batchnorm(b), s) => {
                    if !(0.0..1.0).contains(&b.momentum) || b.epsilon <= 0.0 {
                        return Err(err("momentum must be in [0, 1) and epsilon positive".into()));
                    }
                    let features = match s {
                        Shape::Map([c, _, _]) => c,
                        Shape::Flat(n) => n,
                    };
                    (s, 2 * features, None)
                }
                (LayerSpec::Dropout(d), s) => {
                    if !(0.0..1.0).contains(&d.rate) {
                        return Err(err(format!("rate must be in [0, 1), got {}", d.rate)));
                    }
                    (s, 0, None)
                }
                (LayerSpec::Flatten, Shape::Map([c, h, w])) => (Shape::Flat(c * h * w), 0, None),
                (LayerSpec::GlobalAveragePool, Shape::Map([c, _, _])) => (Shape::Flat(c), 0, None),
                (LayerSpec::Dense(d), Shape::Flat(n)) => {
                    let units = match (d.units, index == last) {
                        (Some(u), true) if u != num_classes => {
                            return Err(err(format!(
                                "units is {u} but the data has {num_classes} classes (leave units out on the last layer)"
                            )));
                        }
                        (Some(0), _) => return Err(err("units must be positive".into())),
                        (Some(u), _) => u,
                        (None, true) => num_classes,
                        (None, false) => {
                            return Err(err(
                                "units is required (only the last dense layer may leave it out)"
                                    .into(),
                            ));
                        }
                    };
                    if d.activation == Activation::Softmax && index != last {
                        return Err(err("softmax is only allowed on the last dense layer".into()));
                    }
                    (Shape::Flat(units), n * units + units, None)
                }
                (LayerSpec::Dense(_), Shape::Map(_)) => {
                    return Err(err(format!(
                        "input is {shape}, a feature map: add flatten or global_average_pool first"
                    )));
                }
                (_, Shape::Flat(_)) => {
                    return Err(err(format!(
                        "needs a feature map but gets a flat vector of {shape}"
                    )));
                }
            };
            layers.push(PlannedLayer {
                index,
                spec: spec.clone(),
                input: shape,
                output,
                params,
                pads,
            });
            shape = output;
        }
        match self.layers.last() {
            Some(LayerSpec::Dense(d))
                if matches!(d.activation, Activation::Softmax | Activation::None) => {}
            _ => {
                return Err(format!(
                    "layers[{last}]: the last layer must be dense with activation softmax (or none), \
                     giving one score per class"
                ));
            }
        }
        Ok(Plan {
            input,
            layers,
            num_classes,
        })
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

/// Output size and (begin, end) padding of a sliding window, TensorFlow rules.
fn window(
    size: usize,
    k: usize,
    stride: usize,
    padding: Padding,
) -> Result<(usize, usize, usize), String> {
    match padding {
        Padding::Valid => {
            if size < k {
                return Err(format!(
                    "{size} is smaller than the window {k}: the output would be empty"
                ));
            }
            Ok(((size - k) / stride + 1, 0, 0))
        }
        Padding::Same => {
            let out = size.div_ceil(stride);
            let total = ((out - 1) * stride + k).saturating_sub(size);
            Ok((out, total / 2, total - total / 2))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL_3: &str = r#"
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
    fn model_3_shapes_and_params_match_keras() {
        let c = Config::parse(MODEL_3, "m3").unwrap();
        let plan = c.resolve(2).unwrap();
        let shapes: Vec<String> = plan.layers.iter().map(|l| l.output.to_string()).collect();
        assert_eq!(
            shapes,
            [
                "222x222x32",
                "111x111x32",
                "109x109x32",
                "55x55x32",
                "96800",
                "128",
                "2"
            ]
        );
        // Keras model.summary() for model_3 at 224x224x3, 2 classes: 12,400,930 params.
        assert_eq!(plan.total_params(), 896 + 9248 + 96800 * 128 + 128 + 258);
        assert_eq!(
            plan.layers[3].pads,
            Some([0, 0, 1, 1]),
            "109 -> 55 pads at the end"
        );
        assert_eq!(c.training.batch_size, 64);
        assert_eq!(c.training.epochs, 10);
        assert_eq!(c.training.seed, 42);
        let Optimizer::Adam(a) = &c.training.optimizer;
        assert_eq!(
            (a.learning_rate, a.beta_1, a.beta_2, a.epsilon),
            (1e-3, 0.9, 0.999, 1e-7)
        );
    }

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

    #[test]
    fn impossible_shapes_name_the_layer() {
        let tiny = MODEL_3.replace("height: 224, width: 224", "height: 4, width: 4");
        let e = Config::parse(&tiny, "s").unwrap().resolve(2).unwrap_err();
        assert!(
            e.starts_with("layers[2] (conv2d): height 1 is smaller than the window 3"),
            "{e}"
        );
        let no_flatten = MODEL_3.replace("  - flatten\n", "");
        let e = Config::parse(&no_flatten, "s")
            .unwrap()
            .resolve(2)
            .unwrap_err();
        assert!(
            e.contains("layers[4] (dense)") && e.contains("flatten"),
            "{e}"
        );
        let fixed = MODEL_3.replace(
            "dense: {activation: softmax}",
            "dense: {units: 5, activation: softmax}",
        );
        let e = Config::parse(&fixed, "s").unwrap().resolve(2).unwrap_err();
        assert!(e.contains("units is 5 but the data has 2 classes"), "{e}");
    }

    #[test]
    fn same_padding_follows_tensorflow() {
        assert_eq!(window(109, 2, 2, Padding::Same), Ok((55, 0, 1)));
        assert_eq!(window(110, 2, 2, Padding::Same), Ok((55, 0, 0)));
        assert_eq!(window(28, 3, 1, Padding::Same), Ok((28, 1, 1)));
        assert_eq!(window(28, 3, 1, Padding::Valid), Ok((26, 0, 0)));
        assert_eq!(window(5, 2, 2, Padding::Valid), Ok((2, 0, 0)));
    }
}
