//! Export: a trained burn [`Net`] and its [`Plan`] → one self-describing ONNX file
//! (opset 13, NCHW float32 input `image` with a dynamic batch `N`, float32 output
//! `probabilities` ending in Softmax, fennec metadata in `metadata_props`).
//!
//! The graph is written layer by layer with the runtime's [`GraphBuilder`], walking
//! the same [`Plan`] the network was built from, so every layer of the YAML
//! vocabulary has exactly one, explicit ONNX spelling:
//!
//! | config layer          | ONNX                                                         |
//! |-----------------------|--------------------------------------------------------------|
//! | conv2d                | `Conv`, explicit `pads` from the plan (asymmetric for `same`) |
//! | maxpool2d / avgpool2d | `MaxPool` / `AveragePool` with explicit `pads`; average pools use `count_include_pad=0` like burn |
//! | batchnorm             | `BatchNormalization` (inference form, running statistics)    |
//! | dropout               | nothing (identity at inference)                              |
//! | flatten               | `Flatten(axis=1)`: C, H, W order, as burn's `flatten(1, 3)`  |
//! | global_average_pool   | `GlobalAveragePool` + `Flatten`                              |
//! | dense                 | `Gemm` with `transB=0` (burn's Linear weight is `[d_in, d_out]`) |
//! | activations           | `Relu` / `Sigmoid` / `Tanh`; the last layer's softmax is the final `Softmax(axis=1)` |
//!
//! Why by hand rather than burn-onnx's tracing exporter: that one cannot export
//! softmax, writes a `Pad` tract rejects and has no metadata API; a direct mapping
//! of eight layer kinds is short and keeps full control of every attribute.
//!
//! Why BatchNormalization is exported as such rather than folded into the previous
//! layer: a config may put batchnorm after an activation, a pool or dropout, where
//! no folding is possible; the ONNX operator is burn's inference formula exactly, and
//! tract and onnxruntime fold it themselves when they optimise the graph.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use fennec_runtime::metadata::ModelMetadata;
use fennec_runtime::onnx_writer::{Attr, FLOAT, GraphBuilder};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::{Activation, Config, LayerSpec, Plan, Shape};
use crate::model::{Layer, Net};
use crate::output::{WriteError, write_file};
use crate::run_dir::summary::read_summary;
use crate::run_dir::{RunDir, RunDirError, Which};

/// Name of the model's image input, `[N, C, H, W]` float32.
pub const INPUT: &str = "image";
/// Name of the model's output, `[N, classes]` float32 probabilities.
pub const OUTPUT: &str = "probabilities";

/// Storage precision of the exported weights. Inputs, outputs and arithmetic stay float32.
/// Spelled `f32` / `f16` in JSON, on the command line and in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
#[derive(strum::Display, strum::EnumString, strum::VariantNames)]
#[strum(serialize_all = "lowercase")]
pub enum Precision {
    /// Weights as float32: the exported model computes what burn computes.
    #[default]
    F32,
    /// Weights rounded to float16 (half the file size), cast back to float32 on load.
    F16,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The network does not have the layers or weight shapes the plan says.
    #[error("the network does not match its config: {0}")]
    Mismatch(String),
    /// Metadata that contradicts the plan (label count, input size).
    #[error("metadata does not match the model: {0}")]
    Metadata(String),
    #[error("cannot read the weights of {layer}: {reason}")]
    Weights { layer: String, reason: String },
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    RunDir(#[from] RunDirError),
}

/// What an export wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub path: PathBuf,
    pub bytes: usize,
    pub precision: Precision,
    /// Exported weight values (BatchNorm running statistics included).
    pub parameters: usize,
    /// `sha256:<hex>`, as stored in the file's metadata.
    pub weights_hash: String,
    /// The exported checkpoint's epoch, when exported from a run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<usize>,
    pub metadata: ModelMetadata,
}

/// Metadata for a model trained from `config` on `labels`: labels, the full
/// preprocessing spec, model name, fennec version and a training summary.
/// [`to_onnx`] adds the weights hash and the output kind.
pub fn metadata(config: &Config, labels: &[String], training: serde_json::Value) -> ModelMetadata {
    ModelMetadata {
        labels: Some(labels.to_vec()),
        preprocess: Some(config.preprocess.clone()),
        model_name: Some(config.name.clone()),
        training: Some(training),
        fennec_version: Some(fennec_runtime::VERSION.into()),
        weights_hash: None,
        output: None,
    }
}

/// Writes the ONNX model of `net` (built from `plan`) and returns its bytes.
/// `metadata` is stored as given, plus `fennec.weights_sha256` and
/// `fennec.output = probabilities`. Deterministic: the same weights and metadata
/// give the same bytes.
pub fn to_onnx(
    plan: &Plan,
    net: &Net,
    metadata: &ModelMetadata,
    precision: Precision,
) -> Result<Vec<u8>, ExportError> {
    encode(plan, net, metadata, precision).map(|(bytes, _, _)| bytes)
}

/// The serialised model, its number of weight values and its final metadata.
fn encode(
    plan: &Plan,
    net: &Net,
    metadata: &ModelMetadata,
    precision: Precision,
) -> Result<(Vec<u8>, usize, ModelMetadata), ExportError> {
    let (g, parameters) = build_graph(plan, net, metadata, precision)?;
    let mut md = metadata.clone();
    md.weights_hash = Some(weights_hash(&g));
    md.output = Some(OUTPUT.into());
    Ok((g.finish(&md), parameters, md))
}

/// `sha256:<hex>` of every initializer's bytes, in graph order.
fn weights_hash(g: &GraphBuilder) -> String {
    let mut h = Sha256::new();
    for w in g.weights() {
        h.update(w);
    }
    format!("sha256:{:x}", h.finalize())
}

/// Adds float weights in the chosen precision; f16 weights get a `Cast` back to float.
struct Weights<'a> {
    g: &'a mut GraphBuilder,
    precision: Precision,
    count: usize,
}

impl Weights<'_> {
    fn add(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        self.count += values.len();
        let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
        match self.precision {
            Precision::F32 => self.g.weight(name, &dims, values),
            Precision::F16 => {
                let half = self.g.weight_f16(&format!("{name}.f16"), &dims, values);
                self.g
                    .node("Cast", &[&half], vec![("to", Attr::Int(FLOAT))], Some(name))
            }
        }
    }
}

/// Reads a parameter tensor, checking its shape.
fn values<const D: usize>(
    t: Tensor<D>,
    want: [usize; D],
    layer: &str,
) -> Result<Vec<f32>, ExportError> {
    let got = t.dims();
    if got != want {
        return Err(ExportError::Mismatch(format!(
            "{layer}: weight shape {got:?}, the config needs {want:?}"
        )));
    }
    t.try_into_vec_as::<f32>()
        .map_err(|e| ExportError::Weights {
            layer: layer.into(),
            reason: e.to_string(),
        })
}

fn module_kind(layer: &Layer) -> &'static str {
    match layer {
        Layer::Conv(_) => "Conv2d",
        Layer::MaxPool(_) => "MaxPool2d",
        Layer::AvgPool(_) => "AvgPool2d",
        Layer::BatchNorm(_) => "BatchNorm",
        Layer::Dropout(_) => "Dropout",
        Layer::Flatten(_) => "Flatten",
        Layer::GlobalAvgPool(_) => "AdaptiveAvgPool2d",
        Layer::Dense(_) => "Linear",
    }
}

fn ints(v: impl IntoIterator<Item = usize>) -> Attr {
    Attr::Ints(v.into_iter().map(|x| x as i64).collect())
}

/// Builds the graph; returns the builder and the number of exported weight values.
fn build_graph(
    plan: &Plan,
    net: &Net,
    metadata: &ModelMetadata,
    precision: Precision,
) -> Result<(GraphBuilder, usize), ExportError> {
    let Shape::Map([c, h, w]) = plan.input else {
        return Err(ExportError::Mismatch("the input must be an image".into()));
    };
    if let Some(labels) = &metadata.labels
        && labels.len() != plan.num_classes
    {
        return Err(ExportError::Metadata(format!(
            "{} labels for a model with {} outputs",
            labels.len(),
            plan.num_classes
        )));
    }
    if let Some(p) = &metadata.preprocess
        && (p.channels(), p.height as usize, p.width as usize, p.layout)
            != (c, h, w, fennec_runtime::Layout::Nchw)
    {
        return Err(ExportError::Metadata(format!(
            "preprocessing gives {}x{}x{} {:?} images, the model takes {h}x{w}x{c} NCHW",
            p.height,
            p.width,
            p.channels(),
            p.layout
        )));
    }
    // valid(): plain tensors, and BatchNorm running statistics synced (a clone of a
    // training model may lag one update behind otherwise).
    let net = net.valid();
    if net.blocks.len() != plan.layers.len() {
        return Err(ExportError::Mismatch(format!(
            "{} blocks for {} config layers",
            net.blocks.len(),
            plan.layers.len()
        )));
    }

    let mut g = GraphBuilder::new(metadata.model_name.as_deref().unwrap_or("fennec"));
    g.input(
        INPUT,
        &[None, Some(c as i64), Some(h as i64), Some(w as i64)],
    );
    let mut wts = Weights {
        g: &mut g,
        precision,
        count: 0,
    };
    let mut x = INPUT.to_string();
    for (l, block) in plan.layers.iter().zip(&net.blocks) {
        let name = format!("layers.{}.{}", l.index, l.spec.kind());
        let mismatch = || {
            ExportError::Mismatch(format!(
                "{name} is a {} module in the network",
                module_kind(&block.layer)
            ))
        };
        x = match (&l.spec, &block.layer) {
            (LayerSpec::Conv2d(spec), Layer::Conv(conv)) => {
                let (Shape::Map([cin, ..]), Some(pads)) = (l.input, l.pads) else {
                    return Err(mismatch());
                };
                let k = spec.kernel;
                let wv = values(conv.weight.val(), [spec.filters, cin, k, k], &name)?;
                let wn = wts.add(&format!("{name}.weight"), &[spec.filters, cin, k, k], &wv);
                let mut inputs = vec![x.clone(), wn];
                if let Some(b) = &conv.bias {
                    let bv = values(b.val(), [spec.filters], &name)?;
                    inputs.push(wts.add(&format!("{name}.bias"), &[spec.filters], &bv));
                }
                let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                wts.g.node(
                    "Conv",
                    &inputs,
                    vec![
                        ("kernel_shape", ints([k, k])),
                        ("strides", ints([spec.stride, spec.stride])),
                        ("pads", ints(pads)),
                    ],
                    None,
                )
            }
            (LayerSpec::Maxpool2d(p), Layer::MaxPool(_))
            | (LayerSpec::Avgpool2d(p), Layer::AvgPool(_)) => {
                let Some(pads) = l.pads else {
                    return Err(mismatch());
                };
                let s = p.stride.unwrap_or(p.size);
                let mut attrs = vec![
                    ("kernel_shape", ints([p.size, p.size])),
                    ("strides", ints([s, s])),
                    ("pads", ints(pads)),
                ];
                let op = if matches!(l.spec, LayerSpec::Maxpool2d(_)) {
                    "MaxPool"
                } else {
                    // burn's AvgPool2d is built with count_include_pad(false) (Keras' mean
                    // over the valid window); ONNX's default is the same, written out anyway.
                    attrs.push(("count_include_pad", Attr::Int(0)));
                    "AveragePool"
                };
                wts.g.node(op, &[&x], attrs, None)
            }
            (LayerSpec::Batchnorm(_), Layer::BatchNorm(bn)) => {
                let n = match l.input {
                    Shape::Map([c, _, _]) => c,
                    Shape::Flat(n) => n,
                };
                let mut names = vec![x.clone()];
                for (part, t) in [
                    ("gamma", bn.gamma.val()),
                    ("beta", bn.beta.val()),
                    ("running_mean", bn.running_mean.value()),
                    ("running_var", bn.running_var.value()),
                ] {
                    let v = values(t, [n], &name)?;
                    names.push(wts.add(&format!("{name}.{part}"), &[n], &v));
                }
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                wts.g.node(
                    "BatchNormalization",
                    &names,
                    vec![("epsilon", Attr::Float(bn.epsilon as f32))],
                    None,
                )
            }
            (LayerSpec::Dropout(_), Layer::Dropout(_)) => x,
            (LayerSpec::Flatten, Layer::Flatten(_)) => {
                wts.g
                    .node("Flatten", &[&x], vec![("axis", Attr::Int(1))], None)
            }
            (LayerSpec::GlobalAveragePool, Layer::GlobalAvgPool(_)) => {
                let pooled = wts.g.node("GlobalAveragePool", &[&x], vec![], None);
                wts.g
                    .node("Flatten", &[&pooled], vec![("axis", Attr::Int(1))], None)
            }
            (LayerSpec::Dense(_), Layer::Dense(dense)) => {
                let (Shape::Flat(d_in), Shape::Flat(d_out)) = (l.input, l.output) else {
                    return Err(mismatch());
                };
                let wv = values(dense.weight.val(), [d_in, d_out], &name)?;
                let wn = wts.add(&format!("{name}.weight"), &[d_in, d_out], &wv);
                let mut inputs = vec![x.clone(), wn];
                if let Some(b) = &dense.bias {
                    let bv = values(b.val(), [d_out], &name)?;
                    inputs.push(wts.add(&format!("{name}.bias"), &[d_out], &bv));
                }
                let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                // B = W [d_in, d_out] as stored: y = x W + b, so transB = 0.
                wts.g
                    .node("Gemm", &inputs, vec![("transB", Attr::Int(0))], None)
            }
            _ => return Err(mismatch()),
        };
        x = match block.activation {
            Activation::Relu => wts.g.node("Relu", &[&x], vec![], None),
            Activation::Sigmoid => wts.g.node("Sigmoid", &[&x], vec![], None),
            Activation::Tanh => wts.g.node("Tanh", &[&x], vec![], None),
            // The last layer's softmax (or none: logits) becomes the final Softmax below.
            Activation::Softmax | Activation::None => x,
        };
    }
    let count = wts.count;
    g.node("Softmax", &[&x], vec![("axis", Attr::Int(1))], Some(OUTPUT));
    g.output(OUTPUT, &[None, Some(plan.num_classes as i64)]);
    Ok((g, count))
}

/// Exports `net` to `out`, written atomically; returns what was written.
pub fn write_onnx(
    plan: &Plan,
    net: &Net,
    metadata: &ModelMetadata,
    precision: Precision,
    out: &Path,
) -> Result<ExportReport, ExportError> {
    let (bytes, parameters, metadata) = encode(plan, net, metadata, precision)?;
    write_file(out, &bytes)?;
    let weights_hash = metadata.weights_hash.clone().unwrap_or_default();
    Ok(ExportReport {
        path: out.into(),
        bytes: bytes.len(),
        precision,
        parameters,
        weights_hash,
        epoch: None,
        metadata,
    })
}

/// Exports checkpoint `which` of the run in `run_dir` to `out` (written atomically),
/// with the run's labels, preprocessing and a training summary in the metadata.
pub fn export_run(
    run_dir: &Path,
    which: Which,
    out: &Path,
    precision: Precision,
) -> Result<ExportReport, ExportError> {
    let run = RunDir::open(run_dir)?;
    let (net, record) = run.load_net(which, &export_device())?;
    let training = training_summary(&run, which, record.epoch)?;
    let md = metadata(&run.config, &run.classes, training);
    let mut report = write_onnx(&run.plan, &net, &md, precision, out)?;
    report.epoch = Some(record.epoch);
    Ok(report)
}

/// The `fennec.training` JSON of a run's checkpoint: which epoch, its metrics, how
/// long the run trained, the data it saw and how.
fn training_summary(
    run: &RunDir,
    which: Which,
    epoch: usize,
) -> Result<serde_json::Value, ExportError> {
    use serde_json::{Value, json};
    let state = run.state(epoch)?;
    let record = state.record();
    let last = run.epochs()?.last().copied().unwrap_or(epoch);
    // Through text so f32 settings read as written (0.9, not 0.8999999761581421).
    let optimizer = serde_json::to_string(&run.config.training.optimizer)
        .and_then(|s| serde_json::from_str(&s))
        .unwrap_or(Value::Null);
    let mut t = json!({
        "checkpoint": which.to_string(),
        "epoch": epoch,
        "epochs_trained": last,
        "train_loss": record.map(|r| r.train_loss),
        "train_accuracy": record.map(|r| r.train_accuracy),
        "val_loss": record.map(|r| r.val_loss),
        "val_accuracy": record.map(|r| r.val_accuracy),
        "batch_size": run.config.training.batch_size,
        "optimizer": optimizer,
        "seed": state.seed,
        "device": state.device,
        "threads": state.threads,
        "trained_with": state.fennec_version,
    });
    // Dataset sizes from summary.json, when fit has written it.
    if let Some(summary) = read_summary(&run.dir)? {
        let images = |split: &str| summary["data"][split]["images"].as_u64();
        t["dataset"] = json!({
            "train": images("train"),
            "validation": images("validation"),
            "test": images("test"),
            "skipped": summary["data"]["skipped"].as_array().map(Vec::len),
        });
        t["stopped_early"] = summary["stopped_early"].clone();
    }
    Ok(t)
}

/// A plain (non-autodiff) CPU device for exporting.
pub fn export_device() -> Device {
    Device::flex()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EVERY_LAYER_YAML;
    use fennec_runtime::onnx_writer::pb;
    use prost::Message;

    fn model(precision: Precision) -> (Plan, Vec<u8>) {
        let config = Config::parse(EVERY_LAYER_YAML, "every_layer").unwrap();
        let plan = config.resolve(3).unwrap();
        let net = Net::new(&plan, &export_device());
        let labels = ["a", "b", "c"].map(String::from);
        let md = metadata(&config, &labels, serde_json::json!({"epochs": 0}));
        let bytes = to_onnx(&plan, &net, &md, precision).unwrap();
        (plan, bytes)
    }

    #[test]
    fn graph_has_the_layers_and_metadata() {
        let (_, bytes) = model(Precision::F32);
        let m = pb::ModelProto::decode(&bytes[..]).unwrap();
        assert_eq!(m.producer_name, "fennec");
        assert_eq!(m.opset_import[0].version, 13);
        let g = m.graph.unwrap();
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(
            ops,
            [
                "Conv",
                "Relu",
                "BatchNormalization",
                "MaxPool",
                "AveragePool",
                "Conv",
                "Tanh",
                "GlobalAveragePool",
                "Flatten",
                "Gemm",
                "Sigmoid",
                "BatchNormalization",
                "Gemm",
                "Softmax"
            ]
        );
        assert_eq!(g.input[0].name, INPUT);
        assert_eq!(g.output[0].name, OUTPUT);
        let keys: Vec<&str> = m.metadata_props.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "fennec.labels",
            "fennec.preprocess",
            "fennec.weights_sha256",
            "fennec.output",
            "fennec.version",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        // 9 -> same maxpool 2 -> 5 (pad at the end), same avgpool on 5 -> 3.
        let pads = |i: usize| {
            g.node[i]
                .attribute
                .iter()
                .find(|a| a.name == "pads")
                .unwrap()
                .ints
                .clone()
        };
        assert_eq!(pads(3), [0, 0, 1, 1]);
        assert_eq!(pads(4), [0, 0, 1, 1]);
        assert_eq!(pads(0), [1, 1, 1, 1]);
    }

    #[test]
    fn precision_names_are_the_cli_spelling() {
        use strum::VariantNames;
        assert_eq!(Precision::VARIANTS, ["f32", "f16"]);
        assert_eq!("f16".parse::<Precision>(), Ok(Precision::F16));
        assert_eq!(Precision::F32.to_string(), "f32");
        assert_eq!(serde_json::json!(Precision::F16), "f16");
    }

    #[test]
    fn deterministic_and_f16_halves_the_weights() {
        let config = Config::parse(EVERY_LAYER_YAML, "every_layer").unwrap();
        let plan = config.resolve(3).unwrap();
        let net = Net::new(&plan, &export_device());
        let md = metadata(
            &config,
            &["a", "b", "c"].map(String::from),
            serde_json::json!({}),
        );
        let a = to_onnx(&plan, &net, &md, Precision::F32).unwrap();
        assert_eq!(a, to_onnx(&plan, &net, &md, Precision::F32).unwrap());
        let h = to_onnx(&plan, &net, &md, Precision::F16).unwrap();
        let g = pb::ModelProto::decode(&h[..]).unwrap().graph.unwrap();
        let f16 = g
            .initializer
            .iter()
            .filter(|t| t.data_type == pb::tensor_proto::DataType::Float16 as i32);
        assert_eq!(
            f16.count(),
            g.initializer.len(),
            "every weight stored as f16"
        );
        assert_eq!(
            g.node.iter().filter(|n| n.op_type == "Cast").count(),
            g.initializer.len()
        );
    }

    #[test]
    fn mismatches_are_errors() {
        let config = Config::parse(EVERY_LAYER_YAML, "every_layer").unwrap();
        let plan = config.resolve(3).unwrap();
        let net = Net::new(&plan, &export_device());
        let md = metadata(
            &config,
            &["a", "b"].map(String::from),
            serde_json::json!({}),
        );
        let e = to_onnx(&plan, &net, &md, Precision::F32)
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 labels for a model with 3 outputs"), "{e}");
        let other = config.resolve(4).unwrap();
        let md = metadata(
            &config,
            &["a", "b", "c", "d"].map(String::from),
            serde_json::json!({}),
        );
        let e = to_onnx(&other, &net, &md, Precision::F32)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("layers.8.batchnorm") || e.contains("layers.9.dense"),
            "{e}"
        );
    }
}
