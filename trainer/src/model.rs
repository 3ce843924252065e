//! The burn network built from a resolved config [`Plan`]: one [`Block`] per
//! config layer (a layer plus its activation), initialised like Keras
//! (Glorot-uniform kernels, zero biases, BatchNorm momentum in Keras' convention).
//!
//! `forward` returns logits; the softmax of the last layer is applied by the loss
//! in training, by [`Net::probabilities`] in evaluation, and by the exported graph.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{
    AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, AvgPool2d, AvgPool2dConfig, MaxPool2d,
    MaxPool2dConfig,
};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Initializer, Linear, LinearConfig,
    PaddingConfig2d,
};
use burn::tensor::activation::{relu, sigmoid, softmax, tanh};
use burn::tensor::{Device, Tensor};

use crate::config::{Activation, LayerSpec, Padding, Plan, Shape};

/// Flattens `[batch, c, h, w]` to `[batch, c*h*w]` in C, H, W order (ONNX Flatten's order).
#[derive(Module, Debug, Default)]
pub struct Flatten;

/// The module of one config layer.
#[derive(Module, Debug)]
pub enum Layer {
    Conv(Conv2d),
    MaxPool(MaxPool2d),
    AvgPool(AvgPool2d),
    BatchNorm(BatchNorm),
    Dropout(Dropout),
    Flatten(Flatten),
    GlobalAvgPool(AdaptiveAvgPool2d),
    Dense(Linear),
}

/// A config layer and the activation that follows it.
#[derive(Module, Debug)]
pub struct Block {
    pub layer: Layer,
    #[module(skip)]
    pub activation: Activation,
}

/// The whole network, `blocks[i]` being `plan.layers[i]`.
#[derive(Module, Debug)]
pub struct Net {
    pub blocks: Vec<Block>,
}

/// A value flowing between layers: a feature map or a flat vector (batch first).
pub enum Features {
    Map(Tensor<4>),
    Flat(Tensor<2>),
}

impl Net {
    /// Builds the network for `plan` with fresh Keras-style weights on `device`
    /// (use an autodiff device to train).
    pub fn new(plan: &Plan, device: &Device) -> Net {
        let glorot = Initializer::XavierUniform { gain: 1.0 };
        let blocks = plan
            .layers
            .iter()
            .map(|l| {
                let (layer, activation) = match (&l.spec, l.input) {
                    (LayerSpec::Conv2d(c), Shape::Map([ch, _, _])) => {
                        let mut conv = Conv2dConfig::new([ch, c.filters], [c.kernel, c.kernel])
                            .with_stride([c.stride, c.stride])
                            .with_padding(padding(c.padding))
                            .with_initializer(glorot.clone())
                            .init(device);
                        conv.bias = Some(Initializer::Zeros.init([c.filters], device));
                        (Layer::Conv(conv), c.activation)
                    }
                    (LayerSpec::Maxpool2d(p), _) => {
                        let s = p.stride.unwrap_or(p.size);
                        let pool = MaxPool2dConfig::new([p.size, p.size])
                            .with_strides([s, s])
                            .with_padding(padding(p.padding))
                            .init();
                        (Layer::MaxPool(pool), Activation::None)
                    }
                    (LayerSpec::Avgpool2d(p), _) => {
                        let s = p.stride.unwrap_or(p.size);
                        let pool = AvgPool2dConfig::new([p.size, p.size])
                            .with_strides([s, s])
                            .with_padding(padding(p.padding))
                            .with_count_include_pad(false)
                            .init();
                        (Layer::AvgPool(pool), Activation::None)
                    }
                    (LayerSpec::Batchnorm(b), shape) => {
                        let features = match shape {
                            Shape::Map([c, _, _]) => c,
                            Shape::Flat(n) => n,
                        };
                        let bn = BatchNormConfig::new(features)
                            .with_epsilon(b.epsilon)
                            .with_momentum(1.0 - b.momentum)
                            .init(device);
                        (Layer::BatchNorm(bn), Activation::None)
                    }
                    (LayerSpec::Dropout(d), _) => (
                        Layer::Dropout(DropoutConfig::new(d.rate).init()),
                        Activation::None,
                    ),
                    (LayerSpec::Flatten, _) => (Layer::Flatten(Flatten), Activation::None),
                    (LayerSpec::GlobalAveragePool, _) => (
                        Layer::GlobalAvgPool(AdaptiveAvgPool2dConfig::new([1, 1]).init()),
                        Activation::None,
                    ),
                    (LayerSpec::Dense(d), Shape::Flat(n)) => {
                        let Shape::Flat(units) = l.output else {
                            unreachable!("dense gives a vector")
                        };
                        let mut dense = LinearConfig::new(n, units)
                            .with_initializer(glorot.clone())
                            .init(device);
                        dense.bias = Some(Initializer::Zeros.init([units], device));
                        (Layer::Dense(dense), d.activation)
                    }
                    (spec, shape) => unreachable!("resolve() rejects {} on {shape}", spec.kind()),
                };
                Block { layer, activation }
            })
            .collect();
        Net { blocks }
    }

    /// Logits `[batch, classes]` for images `[batch, channels, height, width]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x = Features::Map(images);
        let mut i = 0;
        while i < self.blocks.len() {
            let block = &self.blocks[i];
            // A conv (ReLU or no activation) followed by a max-pool is one fused
            // operation: the full-resolution map in between is never stored.
            if let (
                Layer::Conv(conv),
                Some(Block {
                    layer: Layer::MaxPool(pool),
                    ..
                }),
                Features::Map(_),
            ) = (&block.layer, self.blocks.get(i + 1), &x)
                && matches!(block.activation, Activation::Relu | Activation::None)
            {
                let Features::Map(t) = x else {
                    unreachable!("matched above")
                };
                let relu = block.activation == Activation::Relu;
                x = Features::Map(crate::conv::conv2d_maxpool(t, conv, relu, pool));
                i += 2;
                continue;
            }
            x = block.forward(x);
            i += 1;
        }
        match x {
            Features::Flat(logits) => logits,
            Features::Map(_) => unreachable!("resolve() ends every plan with a dense layer"),
        }
    }

    /// Class probabilities (softmax of the logits).
    pub fn probabilities(&self, images: Tensor<4>) -> Tensor<2> {
        softmax(self.forward(images), 1)
    }
}

impl Block {
    fn forward(&self, x: Features) -> Features {
        use Features::{Flat, Map};
        let y = match (&self.layer, x) {
            // The ReLU is fused into the convolution (one pass less over the map).
            (Layer::Conv(c), Map(t)) if self.activation == Activation::Relu => {
                return Map(crate::conv::conv2d(t, c, true));
            }
            (Layer::Conv(c), Map(t)) => Map(crate::conv::conv2d(t, c, false)),
            (Layer::MaxPool(p), Map(t)) => Map(p.forward(t)),
            (Layer::AvgPool(p), Map(t)) => Map(p.forward(t)),
            (Layer::BatchNorm(b), Map(t)) => Map(b.forward(t)),
            (Layer::BatchNorm(b), Flat(t)) => Flat(b.forward(t)),
            (Layer::Dropout(d), Map(t)) => Map(d.forward(t)),
            (Layer::Dropout(d), Flat(t)) => Flat(d.forward(t)),
            (Layer::Flatten(_), Map(t)) => Flat(t.flatten(1, 3)),
            (Layer::GlobalAvgPool(p), Map(t)) => Flat(p.forward(t).flatten(1, 3)),
            (Layer::Dense(d), Flat(t)) => Flat(d.forward(t)),
            _ => unreachable!("resolve() checks that every layer gets the rank it needs"),
        };
        match (self.activation, y) {
            (Activation::Relu, Map(t)) => Map(relu(t)),
            (Activation::Relu, Flat(t)) => Flat(relu(t)),
            (Activation::Sigmoid, Map(t)) => Map(sigmoid(t)),
            (Activation::Sigmoid, Flat(t)) => Flat(sigmoid(t)),
            (Activation::Tanh, Map(t)) => Map(tanh(t)),
            (Activation::Tanh, Flat(t)) => Flat(tanh(t)),
            // Softmax is the last layer's: applied by the loss / probabilities / export.
            (Activation::None | Activation::Softmax, y) => y,
        }
    }
}

fn padding(p: Padding) -> PaddingConfig2d {
    match p {
        Padding::Valid => PaddingConfig2d::Valid,
        Padding::Same => PaddingConfig2d::Same,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, EVERY_LAYER_YAML};
    use burn::tensor::Distribution;

    #[test]
    fn forward_shapes_follow_the_plan() {
        let config = Config::parse(EVERY_LAYER_YAML, "every_layer").unwrap();
        let plan = config.resolve(3).unwrap();
        let device = Device::flex();
        let net = Net::new(&plan, &device);
        assert_eq!(
            net.num_params(),
            plan.total_params() + 2 * (4 + 6),
            "BN running stats (4 + 6 features) counted by burn"
        );
        let x = Tensor::<4>::random([2, 3, 9, 9], Distribution::Uniform(0.0, 1.0), &device);
        let p = net.probabilities(x);
        assert_eq!(p.dims(), [2, 3]);
        let rows: Vec<f32> = p.sum_dim(1).try_into_vec_as::<f32>().unwrap();
        for r in rows {
            assert!((r - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn glorot_weights_and_zero_biases() {
        let config = Config::parse(EVERY_LAYER_YAML, "every_layer").unwrap();
        let net = Net::new(&config.resolve(3).unwrap(), &Device::flex());
        let Layer::Conv(conv) = &net.blocks[0].layer else {
            panic!()
        };
        let w: Vec<f32> = conv.weight.val().try_into_vec_as::<f32>().unwrap();
        let limit = (6.0f32 / (3.0 * 9.0 + 4.0 * 9.0)).sqrt();
        assert!(w.iter().all(|v| v.abs() <= limit) && w.iter().any(|v| v.abs() > limit / 4.0));
        let b: Vec<f32> = conv
            .bias
            .as_ref()
            .unwrap()
            .val()
            .try_into_vec_as::<f32>()
            .unwrap();
        assert!(b.iter().all(|&v| v == 0.0));
    }
}
