//! Shape inference: [`Config::resolve`] walks the layer list once, computing every
//! layer's output shape, parameter count and padding. The model builder, the exporter
//! and `fennec-train summary` all read that one [`Plan`], so they cannot disagree.

use serde::Serialize;

use super::{Activation, Config, LayerSpec, Padding};

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

/// A layer list that cannot give one score per class; the message names the layer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("layers[{index}] ({kind}): {message}")]
    Layer {
        index: usize,
        kind: &'static str,
        message: String,
    },
    #[error(
        "layers[{index}]: the last layer must be dense with activation softmax (or none), \
         giving one score per class"
    )]
    LastLayer { index: usize },
}

/// What one layer makes of its input: output shape, parameters, padding.
type Step = (Shape, usize, Option<Pads>);

impl Config {
    /// Shape inference for `num_classes` outputs. Fails naming the layer when a
    /// shape becomes impossible or a layer cannot follow the previous one.
    pub fn resolve(&self, num_classes: usize) -> Result<Plan, PlanError> {
        let p = &self.preprocess;
        let input = Shape::Map([p.channels(), p.height as usize, p.width as usize]);
        let mut shape = input;
        let mut layers = Vec::with_capacity(self.layers.len());
        let last = self.layers.len() - 1;
        for (index, spec) in self.layers.iter().enumerate() {
            let (output, params, pads) = step(index, spec, shape, index == last, num_classes)?;
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
            _ => return Err(PlanError::LastLayer { index: last }),
        }
        Ok(Plan {
            input,
            layers,
            num_classes,
        })
    }
}

/// Shape inference of layer `index`.
fn step(
    index: usize,
    spec: &LayerSpec,
    shape: Shape,
    is_last: bool,
    num_classes: usize,
) -> Result<Step, PlanError> {
    const SOFTMAX_LAST: &str = "softmax is only allowed on the last dense layer";
    let err = |message: String| PlanError::Layer {
        index,
        kind: spec.kind(),
        message,
    };
    let window_2d = |h, w, k, stride, padding| {
        window_2d(h, w, k, stride, padding).map_err(|(side, size)| {
            err(format!(
                "{side} {size} is smaller than the window {k}: the output would be empty"
            ))
        })
    };
    Ok(match (spec, shape) {
        (LayerSpec::Conv2d(c), Shape::Map([ch, h, w])) => {
            if c.filters == 0 || c.kernel == 0 || c.stride == 0 {
                return Err(err("filters, kernel and stride must be positive".into()));
            }
            if c.activation == Activation::Softmax {
                return Err(err(SOFTMAX_LAST.into()));
            }
            let (oh, ow, pads) = window_2d(h, w, c.kernel, c.stride, c.padding)?;
            let params = c.filters * ch * c.kernel * c.kernel + c.filters;
            (Shape::Map([c.filters, oh, ow]), params, Some(pads))
        }
        (LayerSpec::Maxpool2d(p) | LayerSpec::Avgpool2d(p), Shape::Map([ch, h, w])) => {
            let stride = p.stride.unwrap_or(p.size);
            if p.size == 0 || stride == 0 {
                return Err(err("size and stride must be positive".into()));
            }
            let (oh, ow, pads) = window_2d(h, w, p.size, stride, p.padding)?;
            (Shape::Map([ch, oh, ow]), 0, Some(pads))
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
            let units = match (d.units, is_last) {
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
                        "units is required (only the last dense layer may leave it out)".into(),
                    ));
                }
            };
            if d.activation == Activation::Softmax && !is_last {
                return Err(err(SOFTMAX_LAST.into()));
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
    })
}

/// Output height, width and pads `[top, left, bottom, right]` of a square window;
/// the side (`height` or `width`) and its size when the window does not fit.
fn window_2d(
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    padding: Padding,
) -> Result<(usize, usize, Pads), (&'static str, usize)> {
    let (oh, pt, pb) = window(h, k, stride, padding).ok_or(("height", h))?;
    let (ow, pl, pr) = window(w, k, stride, padding).ok_or(("width", w))?;
    Ok((oh, ow, [pt, pl, pb, pr]))
}

/// Output size and (begin, end) padding of a sliding window, TensorFlow rules;
/// `None` when a `valid` window is larger than the input.
fn window(size: usize, k: usize, stride: usize, padding: Padding) -> Option<(usize, usize, usize)> {
    match padding {
        Padding::Valid => (size >= k).then(|| ((size - k) / stride + 1, 0, 0)),
        Padding::Same => {
            let out = size.div_ceil(stride);
            let total = ((out - 1) * stride + k).saturating_sub(size);
            Some((out, total / 2, total - total / 2))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Optimizer;
    use crate::config::tests::MODEL_3;

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

    /// The plan error of `yaml` for 2 classes.
    fn plan_error(yaml: &str) -> String {
        Config::parse(yaml, "s")
            .unwrap()
            .resolve(2)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn impossible_shapes_name_the_layer() {
        let tiny = MODEL_3.replace("height: 224, width: 224", "height: 4, width: 4");
        let e = plan_error(&tiny);
        assert!(
            e.starts_with("layers[2] (conv2d): height 1 is smaller than the window 3"),
            "{e}"
        );
        let no_flatten = MODEL_3.replace("  - flatten\n", "");
        let e = plan_error(&no_flatten);
        assert!(
            e.contains("layers[4] (dense)") && e.contains("flatten"),
            "{e}"
        );
        let fixed = MODEL_3.replace(
            "dense: {activation: softmax}",
            "dense: {units: 5, activation: softmax}",
        );
        let e = plan_error(&fixed);
        assert!(e.contains("units is 5 but the data has 2 classes"), "{e}");
    }

    #[test]
    fn same_padding_follows_tensorflow() {
        assert_eq!(window(109, 2, 2, Padding::Same), Some((55, 0, 1)));
        assert_eq!(window(110, 2, 2, Padding::Same), Some((55, 0, 0)));
        assert_eq!(window(28, 3, 1, Padding::Same), Some((28, 1, 1)));
        assert_eq!(window(28, 3, 1, Padding::Valid), Some((26, 0, 0)));
        assert_eq!(window(5, 2, 2, Padding::Valid), Some((2, 0, 0)));
    }
}
