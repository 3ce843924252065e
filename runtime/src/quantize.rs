//! Post-training static int8 quantization of an ONNX classifier (`fennec quantize`,
//! `fennec-train export --precision int8`), written in the QDQ format.
//!
//! Why QDQ: onnxruntime and `onnx.checker` accept it, the file stays a plain
//! standard-opset ONNX graph, and fennec's integer kernels match exactly the op
//! layout onnxruntime's own `quantize_static` writes. What is written, per
//! Conv / Gemm / MatMul with constant weights:
//!
//! - weights: int8, per output channel, symmetric (zero point 0, range ±127),
//!   behind a `DequantizeLinear` with `axis`;
//! - bias: int32 with scale `input scale x weight scale` (zero point 0);
//! - activations (the input, and the output unless only float ops read it):
//!   uint8 `QuantizeLinear → DequantizeLinear` pairs with scales calibrated on
//!   images run through the model's own preprocessing. uint8 activations with
//!   int8 weights (U8S8) are what onnxruntime's x86 kernels (`vpmaddubsw`,
//!   `vpdpbusd`: unsigned x signed) take natively, and what its quantizer writes
//!   with `QUInt8` activations.
//! - A `Relu` right after a Conv/Gemm is folded into the output's quantization
//!   (zero point 0 clamps at 0, exactly like the Relu), as onnxruntime does;
//!   shape-only ops and MaxPool between quantized tensors keep their input's
//!   scale, so integer values flow through them.
//!
//! Everything else (Softmax, Add, BatchNormalization, ...) is left in float and
//! listed in the [`Report`]. The graph output stays float.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use prost::Message;
use serde::Serialize;
use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::prelude::*;

use crate::decode::DecodeLimits;
use crate::error::{Error, Result, chain};
use crate::folder::{Skipped, scan_class_folders};
use crate::metadata::keys;
use crate::preprocess::Preprocess;

/// Ops whose weights are quantized (their second input must be an initializer).
const QUANTIZABLE: [&str; 3] = ["Conv", "Gemm", "MatMul"];

/// Ops that move or select values without computing new ones: their output keeps
/// the input's scale and zero point.
const KEEPS_SCALE: [&str; 7] = [
    "MaxPool",
    "Flatten",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "Identity",
];

/// Ops that only appear in quantized graphs.
const QUANTIZED_OPS: [&str; 9] = [
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
    "QGemm",
    "QLinearSoftmax",
];

/// How activation ranges are taken from the calibration images.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Calibration {
    /// The smallest and largest value seen.
    MinMax,
    /// The given percentile of the values seen at both ends (e.g. 99.99: the
    /// 0.01 % and 99.99 % points), which ignores rare outliers.
    Percentile(f64),
}

/// What to quantize with.
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    /// Images used at most, spread evenly over the classes.
    pub images: usize,
    pub calibration: Calibration,
    pub limits: DecodeLimits,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions {
            images: 300,
            calibration: Calibration::MinMax,
            limits: DecodeLimits::default(),
        }
    }
}

/// The calibration set, summarised in the written file's metadata.
#[derive(Debug, Clone, Serialize)]
pub struct CalibrationSummary {
    pub dir: String,
    pub method: Calibration,
    /// Images whose activations were measured.
    pub images: usize,
    /// Per class folder: images used.
    pub per_class: BTreeMap<String, usize>,
    /// Corrupt or unreadable images among those picked (skipped, not replaced).
    pub skipped: usize,
}

/// One node left in float, and why.
#[derive(Debug, Clone, Serialize)]
pub struct FloatNode {
    pub name: String,
    pub op: String,
    pub reason: String,
}

/// What [`quantize`] did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub calibration: CalibrationSummary,
    /// Names of the Conv/Gemm/MatMul nodes now running on int8 weights.
    pub quantized: Vec<String>,
    /// Nodes with weights, or computing ops, that stay float.
    pub left_in_float: Vec<FloatNode>,
    /// Activation tensors with a calibrated or inherited scale.
    pub activations: usize,
    /// Corrupt images that were skipped, with the reason.
    pub skipped: Vec<Skipped>,
    pub input_bytes: usize,
    pub output_bytes: usize,
}

/// Quantizes the float ONNX model `bytes` (read from `path`), calibrating on
/// images of the labelled folder `dir` preprocessed with `preprocess`; returns the
/// new file's bytes and a report. Refuses models that are already quantized,
/// folders with no images or one class, and calibration sets where no image decodes.
pub fn quantize(
    bytes: &[u8],
    path: &Path,
    preprocess: &Preprocess,
    dir: &Path,
    options: &QuantizeOptions,
) -> Result<(Vec<u8>, Report)> {
    let onnx = tract_onnx::onnx();
    let mut proto = onnx.proto_model_for_read(&mut &bytes[..]).map_err(|e| {
        Error::invalid_model(path, format!("protobuf does not decode ({})", chain(&e)))
    })?;
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| Error::invalid_model(path, "no graph in the file"))?;
    if let Some(n) = graph
        .node
        .iter()
        .find(|n| QUANTIZED_OPS.contains(&n.op_type.as_str()))
    {
        return Err(Error::input(
            path,
            format!(
                "already quantized (has a {} node); quantize the float model instead",
                n.op_type
            ),
        ));
    }
    let opset = proto
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(0, |o| o.version);
    if opset < 13 {
        return Err(Error::input(
            path,
            format!(
                "opset {opset}: per-channel quantization needs opset 13 or later (re-export \
                 the model with opset >= 13)"
            ),
        ));
    }

    let plan = Plan::new(graph);
    if plan.targets.is_empty() {
        return Err(Error::input(
            path,
            "no Conv, Gemm or MatMul with constant float32 weights: nothing to quantize",
        ));
    }
    let (images, calibration, skipped) = pick_images(dir, preprocess, options)?;
    let ranges = measure(&onnx, &proto, path, preprocess, &images, &plan.calibrated)?;
    let mut summary = calibration;
    summary.images = images.len();
    summary.method = options.calibration;
    summary.skipped = skipped.len();

    let graph = proto.graph.as_mut().expect("checked above");
    let (quantized, left_in_float, activations) = plan.apply(graph, &ranges, options.calibration);
    write_metadata(&mut proto, &summary);
    let out = proto.encode_to_vec();
    let report = Report {
        calibration: summary,
        quantized,
        left_in_float,
        activations,
        skipped,
        input_bytes: bytes.len(),
        output_bytes: out.len(),
    };
    Ok((out, report))
}

/// Adds `fennec.precision` and `fennec.calibration`; drops the weights hash, which
/// described the float weights.
fn write_metadata(proto: &mut pb::ModelProto, summary: &CalibrationSummary) {
    proto.metadata_props.retain(|p| {
        p.key != keys::WEIGHTS_HASH && p.key != keys::PRECISION && p.key != keys::CALIBRATION
    });
    proto.metadata_props.push(pb::StringStringEntryProto {
        key: keys::PRECISION.into(),
        value: "int8".into(),
    });
    proto.metadata_props.push(pb::StringStringEntryProto {
        key: keys::CALIBRATION.into(),
        value: serde_json::to_string(summary).expect("plain data"),
    });
    proto.metadata_props.sort_by(|a, b| a.key.cmp(&b.key));
}

/// Up to `options.images` files of `dir`, the same number from each class (evenly
/// spaced within the class), decoded and preprocessed; corrupt ones are skipped.
fn pick_images(
    dir: &Path,
    preprocess: &Preprocess,
    options: &QuantizeOptions,
) -> Result<(Vec<Vec<f32>>, CalibrationSummary, Vec<Skipped>)> {
    let folders = scan_class_folders(dir)?;
    let counts = folders.counts();
    let nonempty: Vec<usize> = (0..counts.len()).filter(|&c| counts[c] > 0).collect();
    match nonempty[..] {
        [] => return Err(Error::input(dir, "no image files in the class folders")),
        [only] => {
            return Err(Error::input(
                dir,
                format!(
                    "only one class folder has images ({}); calibrate on images of every class \
                     the model scores",
                    folders.classes[only]
                ),
            ));
        }
        _ => {}
    }
    let per_class = options.images.div_ceil(nonempty.len()).max(1);
    let mut picked: Vec<(PathBuf, usize)> = Vec::new();
    for &c in &nonempty {
        let files: Vec<&PathBuf> = folders
            .files
            .iter()
            .filter(|(_, k)| *k == c)
            .map(|(p, _)| p)
            .collect();
        let take = per_class.min(files.len());
        for i in 0..take {
            picked.push((files[i * files.len() / take].clone(), c));
        }
    }
    picked.truncate(options.images.max(1));
    // Decoding is the slow part at large sizes: in parallel, order kept.
    use rayon::prelude::*;
    let loaded: Vec<_> = picked
        .par_iter()
        .map(|(p, _)| preprocess.load(p, &options.limits))
        .collect();
    let mut images = Vec::new();
    let mut skipped = Vec::new();
    let mut used = BTreeMap::new();
    for ((path, class), result) in picked.iter().zip(loaded) {
        match result {
            Ok(t) => {
                images.push(t);
                *used.entry(folders.classes[*class].clone()).or_insert(0) += 1;
            }
            Err(e) => skipped.push(Skipped {
                path: path.clone(),
                kind: e.kind().into(),
                reason: e.to_string(),
            }),
        }
    }
    if images.is_empty() {
        return Err(Error::input(
            dir,
            format!(
                "none of the {} calibration images could be read (first: {})",
                picked.len(),
                skipped.first().map_or("?".into(), |s| s.reason.clone())
            ),
        ));
    }
    let summary = CalibrationSummary {
        dir: dir
            .file_name()
            .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into()),
        method: options.calibration,
        images: images.len(),
        per_class: used,
        skipped: skipped.len(),
    };
    Ok((images, summary, skipped))
}

/// Values kept per tensor and image for the percentile method (evenly strided).
const SAMPLES_PER_IMAGE: usize = 4096;

/// What the calibration run saw of one tensor.
#[derive(Debug, Clone, Default)]
struct Seen {
    min: f32,
    max: f32,
    samples: Vec<f32>,
}

impl Seen {
    /// The range to quantize, by `method`.
    fn range(&self, method: Calibration) -> (f32, f32) {
        match method {
            Calibration::MinMax => (self.min, self.max),
            Calibration::Percentile(p) => {
                let mut s = self.samples.clone();
                if s.is_empty() {
                    return (self.min, self.max);
                }
                s.sort_by(f32::total_cmp);
                let at = |q: f64| s[((q / 100.0) * (s.len() - 1) as f64).round() as usize];
                (at(100.0 - p), at(p))
            }
        }
    }
}

/// Runs the images through the float model with every tensor of `names` made an
/// output, and records their ranges.
fn measure(
    onnx: &tract_onnx::model::Onnx,
    proto: &pb::ModelProto,
    path: &Path,
    preprocess: &Preprocess,
    images: &[Vec<f32>],
    names: &[String],
) -> Result<HashMap<String, Seen>> {
    let tract = |e: TractError| Error::tract(path, &e);
    let mut probe = proto.clone();
    let graph = probe.graph.as_mut().expect("checked by the caller");
    // A graph with a fixed batch size gets each image repeated to fill it.
    let batch = input_batch(graph).unwrap_or(1);
    graph.output = names
        .iter()
        .map(|n| pb::ValueInfoProto {
            name: n.clone(),
            ..Default::default()
        })
        .collect();
    let dir = path.parent().and_then(|d| d.to_str());
    let mut model = onnx.parse(&probe, dir).map_err(tract)?.model;
    let shape = preprocess.batch_shape(batch);
    let dims: Vec<TDim> = shape.iter().map(|&d| d.into()).collect();
    model
        .set_input_fact(0, f32::fact(&dims).into())
        .map_err(tract)?;
    let plan = model
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(tract)?;
    let mut seen: HashMap<String, Seen> = names
        .iter()
        .map(|n| {
            let s = Seen {
                min: f32::INFINITY,
                max: f32::NEG_INFINITY,
                samples: Vec::new(),
            };
            (n.clone(), s)
        })
        .collect();
    for image in images {
        let input: Vec<f32> = image
            .iter()
            .copied()
            .cycle()
            .take(image.len() * batch)
            .collect();
        let tensor = Tensor::from_shape(&shape, &input).map_err(tract)?;
        let outputs = plan.run(tvec!(tensor.into_tvalue())).map_err(tract)?;
        for (name, out) in names.iter().zip(outputs) {
            let out = out.cast_to::<f32>().map_err(tract)?;
            let plain = out.try_as_plain_ram().map_err(tract)?;
            let values = plain.as_slice::<f32>().map_err(tract)?;
            let s = seen.get_mut(name).expect("one entry per name");
            for &v in values {
                s.min = s.min.min(v);
                s.max = s.max.max(v);
            }
            let step = values.len().div_ceil(SAMPLES_PER_IMAGE).max(1);
            s.samples.extend(values.iter().step_by(step));
        }
    }
    Ok(seen)
}

/// The fixed batch size of the graph's image input, if any.
fn input_batch(graph: &pb::GraphProto) -> Option<usize> {
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let input = graph
        .input
        .iter()
        .find(|i| !initializers.contains(i.name.as_str()))?;
    let pb::type_proto::Value::TensorType(t) = input.r#type.as_ref()?.value.as_ref()?;
    match t.shape.as_ref()?.dim.first()?.value {
        Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => Some(v as usize),
        _ => None,
    }
}

/// One quantizable node: which input is the activation, which the weight, and
/// along which weight axis the output channels lie.
#[derive(Debug, Clone)]
struct Target {
    node: usize,
    /// Weight axis of the output channels (per-channel scales).
    axis: usize,
    /// The tensor whose range is the node's output range (the Relu's output when
    /// a Relu is folded in), if the output is quantized.
    output: Option<String>,
    /// Index of a Relu node folded into this one.
    relu: Option<usize>,
}

/// Which nodes get int8 weights and which tensors need calibrating.
struct Plan {
    targets: Vec<Target>,
    left_in_float: Vec<FloatNode>,
    /// Tensors to measure: inputs of targets, and their quantized outputs.
    calibrated: Vec<String>,
}

impl Plan {
    fn new(graph: &pb::GraphProto) -> Plan {
        let inits: HashMap<&str, &pb::TensorProto> = graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
        let readers = |name: &str| -> Vec<usize> {
            (0..graph.node.len())
                .filter(|&i| graph.node[i].input.iter().any(|x| x == name))
                .collect()
        };
        let mut targets = Vec::new();
        let mut left_in_float = Vec::new();
        for (ix, node) in graph.node.iter().enumerate() {
            let op = node.op_type.as_str();
            let float = |reason: &str| FloatNode {
                name: node_name(node, ix),
                op: op.into(),
                reason: reason.into(),
            };
            if !QUANTIZABLE.contains(&op) {
                if !KEEPS_SCALE.contains(&op) && op != "Relu" {
                    left_in_float.push(float("no int8 form in fennec's quantizer"));
                }
                continue;
            }
            match weight_axis(node, &inits) {
                Ok(axis) => {
                    let mut target = Target {
                        node: ix,
                        axis,
                        output: None,
                        relu: None,
                    };
                    let out = node.output[0].as_str();
                    let r = readers(out);
                    if let [relu] = r[..]
                        && graph.node[relu].op_type == "Relu"
                        && !outputs.contains(out)
                    {
                        target.relu = Some(relu);
                        target.output = Some(graph.node[relu].output[0].clone());
                    } else {
                        target.output = Some(out.to_string());
                    }
                    targets.push(target);
                }
                Err(reason) => left_in_float.push(float(&reason)),
            }
        }
        // An output read only by float ops (e.g. the logits before Softmax) stays float.
        let target_inputs: HashSet<&str> = targets
            .iter()
            .map(|t| graph.node[t.node].input[0].as_str())
            .collect();
        for t in &mut targets {
            let out = t.output.clone().expect("set above");
            if outputs.contains(out.as_str())
                || !feeds_quantized(graph, &out, &target_inputs, &readers)
            {
                // The folded Relu stays a node then.
                t.output = None;
                t.relu = None;
            }
        }
        let mut calibrated: Vec<String> = Vec::new();
        for t in &targets {
            for name in [Some(graph.node[t.node].input[0].clone()), t.output.clone()]
                .into_iter()
                .flatten()
            {
                if !calibrated.contains(&name) {
                    calibrated.push(name);
                }
            }
        }
        Plan {
            targets,
            left_in_float,
            calibrated,
        }
    }

    /// Rewrites `graph`: int8 weights, int32 biases, Q/DQ pairs on activations.
    /// Returns the quantized node names, the float ones, and the number of
    /// quantized activation tensors.
    fn apply(
        &self,
        graph: &mut pb::GraphProto,
        seen: &HashMap<String, Seen>,
        method: Calibration,
    ) -> (Vec<String>, Vec<FloatNode>, usize) {
        let outputs: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
        // Activation parameters: measured ones first.
        let mut params: HashMap<String, (f32, u8)> = self
            .calibrated
            .iter()
            .map(|n| (n.clone(), uint8_params(seen[n].range(method))))
            .collect();
        // Folded Relus: the Conv/Gemm writes the Relu's output name directly.
        let mut folded = HashSet::new();
        for t in &self.targets {
            if let (Some(relu), Some(out)) = (t.relu, &t.output) {
                graph.node[t.node].output[0] = out.clone();
                folded.insert(relu);
            }
        }
        // Scale-keeping ops pass their input's parameters on, in graph order.
        for node in &graph.node {
            if KEEPS_SCALE.contains(&node.op_type.as_str())
                && let Some(p) = node.input.first().and_then(|i| params.get(i)).copied()
                && !outputs.contains(&node.output[0])
            {
                params.entry(node.output[0].clone()).or_insert(p);
            }
        }

        let mut inits = Vec::new();
        let mut weight_nodes = Vec::new();
        let mut quantized = Vec::new();
        for t in &self.targets {
            let node = &graph.node[t.node];
            quantized.push(node_name(node, t.node));
            let input_scale = params[&node.input[0]].0;
            let (w_name, w_dims, w) = {
                let w = graph
                    .initializer
                    .iter()
                    .find(|i| i.name == node.input[1])
                    .expect("checked by weight_axis");
                (w.name.clone(), w.dims.clone(), floats(w).expect("checked"))
            };
            let (q, scales) = per_channel_int8(&w, &w_dims, t.axis);
            let wq = format!("{w_name}_quantized");
            inits.push(tensor(
                &wq,
                &w_dims,
                DataType::Int8,
                q.iter().map(|&v| v as u8).collect(),
            ));
            inits.push(float_tensor(&format!("{w_name}_scale"), &scales));
            inits.push(tensor(
                &format!("{w_name}_zero_point"),
                &[scales.len() as i64],
                DataType::Int8,
                vec![0; scales.len()],
            ));
            weight_nodes.push(dequantize(
                &wq,
                &format!("{w_name}_scale"),
                &format!("{w_name}_zero_point"),
                &format!("{w_name}_dequantized"),
                Some(t.axis as i64),
            ));
            let mut renames = vec![(1, format!("{w_name}_dequantized"))];
            // The bias, when it is a 1-D initializer with one value per channel.
            if let Some(b_name) = node.input.get(2).filter(|b| !b.is_empty())
                && let Some(b) = graph.initializer.iter().find(|i| &i.name == b_name)
                && let Some(bias) = floats(b)
                && bias.len() == scales.len()
            {
                let bias_scales: Vec<f32> = scales.iter().map(|s| s * input_scale).collect();
                let qb: Vec<u8> = bias
                    .iter()
                    .zip(&bias_scales)
                    .flat_map(|(v, s)| ((v / s).round() as i32).to_le_bytes())
                    .collect();
                let bq = format!("{b_name}_quantized");
                inits.push(tensor(&bq, &[bias.len() as i64], DataType::Int32, qb));
                inits.push(float_tensor(&format!("{b_name}_scale"), &bias_scales));
                inits.push(tensor(
                    &format!("{b_name}_zero_point"),
                    &[bias.len() as i64],
                    DataType::Int32,
                    vec![0; 4 * bias.len()],
                ));
                weight_nodes.push(dequantize(
                    &bq,
                    &format!("{b_name}_scale"),
                    &format!("{b_name}_zero_point"),
                    &format!("{b_name}_dequantized"),
                    Some(0),
                ));
                renames.push((2, format!("{b_name}_dequantized")));
            }
            let node = &mut graph.node[t.node];
            for (i, name) in renames {
                node.input[i] = name;
            }
        }

        // Activation Q/DQ pairs, right after the tensor is made; readers switch
        // to the dequantized name.
        let quantize_after = |name: &str, inits: &mut Vec<pb::TensorProto>| {
            let (scale, zp) = params[name];
            inits.push(float_tensor(&format!("{name}_scale"), &[scale]));
            let mut zpt = tensor(
                &format!("{name}_zero_point"),
                &[],
                DataType::Uint8,
                vec![zp],
            );
            zpt.dims.clear();
            inits.push(zpt);
            let s = format!("{name}_scale");
            let z = format!("{name}_zero_point");
            vec![
                pb::NodeProto {
                    name: format!("{name}_QuantizeLinear"),
                    op_type: "QuantizeLinear".into(),
                    input: vec![name.into(), s.clone(), z.clone()],
                    output: vec![format!("{name}_quantized")],
                    ..Default::default()
                },
                dequantize(
                    &format!("{name}_quantized"),
                    &s,
                    &z,
                    &format!("{name}_dequantized"),
                    None,
                ),
            ]
        };
        let mut nodes = weight_nodes;
        let graph_inputs: Vec<String> = graph.input.iter().map(|i| i.name.clone()).collect();
        for name in graph_inputs.iter().filter(|n| params.contains_key(*n)) {
            nodes.extend(quantize_after(name, &mut inits));
        }
        for (ix, node) in std::mem::take(&mut graph.node).into_iter().enumerate() {
            if folded.contains(&ix) {
                continue;
            }
            let made: Vec<String> = node
                .output
                .iter()
                .filter(|o| params.contains_key(*o))
                .cloned()
                .collect();
            nodes.push(node);
            for name in made {
                nodes.extend(quantize_after(&name, &mut inits));
            }
        }
        for node in &mut nodes {
            if node.op_type == "QuantizeLinear" {
                continue;
            }
            for input in &mut node.input {
                if params.contains_key(input.as_str()) {
                    *input = format!("{input}_dequantized");
                }
            }
        }
        graph.node = nodes;
        // Float weights now unused go (also from the inputs, where older files
        // list them); new ones come in.
        let used: HashSet<String> = graph.node.iter().flat_map(|n| n.input.clone()).collect();
        let unused: HashSet<String> = graph
            .initializer
            .iter()
            .filter(|i| !used.contains(&i.name))
            .map(|i| i.name.clone())
            .collect();
        graph.initializer.retain(|i| !unused.contains(&i.name));
        graph.input.retain(|i| !unused.contains(&i.name));
        graph.initializer.extend(inits);
        graph.value_info.clear();
        (quantized, self.left_in_float.clone(), params.len())
    }
}

/// Whether `name` reaches the input of a quantized node through scale-keeping ops.
fn feeds_quantized(
    graph: &pb::GraphProto,
    name: &str,
    target_inputs: &HashSet<&str>,
    readers: &dyn Fn(&str) -> Vec<usize>,
) -> bool {
    let mut frontier = vec![name.to_string()];
    let mut steps = 0;
    while let Some(n) = frontier.pop() {
        steps += 1;
        if target_inputs.contains(n.as_str()) {
            return true;
        }
        if steps > 64 {
            break;
        }
        for r in readers(&n) {
            let node = &graph.node[r];
            if KEEPS_SCALE.contains(&node.op_type.as_str()) && node.input[0] == n {
                frontier.push(node.output[0].clone());
            }
        }
    }
    false
}

/// The output-channel axis of a quantizable node's weight, or why it stays float.
fn weight_axis(
    node: &pb::NodeProto,
    inits: &HashMap<&str, &pb::TensorProto>,
) -> std::result::Result<usize, String> {
    let weight = node
        .input
        .get(1)
        .and_then(|w| inits.get(w.as_str()))
        .ok_or("weights are not a constant of the file")?;
    if floats(weight).is_none() {
        return Err("weights are not float32".into());
    }
    let int = |name: &str, default: i64| {
        node.attribute
            .iter()
            .find(|a| a.name == name)
            .map_or(default, |a| a.i)
    };
    let float = |name: &str| {
        node.attribute
            .iter()
            .find(|a| a.name == name)
            .map_or(1.0, |a| a.f)
    };
    let rank = weight.dims.len();
    match node.op_type.as_str() {
        "Conv" if rank >= 3 => Ok(0),
        "Gemm" if rank == 2 => {
            if int("transA", 0) != 0 || float("alpha") != 1.0 || float("beta") != 1.0 {
                Err("Gemm with transA, alpha or beta".into())
            } else if int("transB", 0) != 0 {
                Ok(0)
            } else {
                Ok(1)
            }
        }
        "MatMul" if rank == 2 => Ok(1),
        _ => Err(format!("weights of rank {rank}")),
    }
}

fn node_name(node: &pb::NodeProto, ix: usize) -> String {
    if node.name.is_empty() {
        format!("{}#{ix}", node.op_type)
    } else {
        node.name.clone()
    }
}

/// The float32 values of an initializer (raw or typed storage).
fn floats(t: &pb::TensorProto) -> Option<Vec<f32>> {
    if t.data_type != DataType::Float as i32 {
        return None;
    }
    if !t.raw_data.is_empty() {
        return Some(
            t.raw_data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        );
    }
    let len = t.dims.iter().product::<i64>().max(0) as usize;
    (t.float_data.len() == len).then(|| t.float_data.clone())
}

/// Symmetric int8 values in [-127, 127] with one scale per index of `axis`.
fn per_channel_int8(w: &[f32], dims: &[i64], axis: usize) -> (Vec<i8>, Vec<f32>) {
    let dims: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
    let channels = dims[axis];
    let inner: usize = dims[axis + 1..].iter().product();
    let channel = |i: usize| (i / inner) % channels;
    let mut max = vec![0f32; channels];
    for (i, v) in w.iter().enumerate() {
        let c = channel(i);
        max[c] = max[c].max(v.abs());
    }
    let scales: Vec<f32> = max
        .iter()
        .map(|m| if *m > 0.0 { m / 127.0 } else { 1.0 })
        .collect();
    let q = w
        .iter()
        .enumerate()
        .map(|(i, v)| (v / scales[channel(i)]).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (q, scales)
}

/// uint8 scale and zero point covering `(lo, hi)` and 0 (so that zero padding
/// is exact).
fn uint8_params((lo, hi): (f32, f32)) -> (f32, u8) {
    let lo = lo.min(0.0);
    let hi = hi.max(0.0);
    if !(hi - lo).is_finite() || hi - lo <= f32::EPSILON {
        return (1.0, 0);
    }
    let scale = (hi - lo) / 255.0;
    let zp = (-lo / scale).round().clamp(0.0, 255.0) as u8;
    (scale, zp)
}

fn tensor(name: &str, dims: &[i64], t: DataType, raw: Vec<u8>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: t as i32,
        raw_data: raw,
        ..Default::default()
    }
}

/// A float32 tensor: a scalar for one value, else 1-D.
fn float_tensor(name: &str, values: &[f32]) -> pb::TensorProto {
    let dims = if values.len() == 1 {
        vec![]
    } else {
        vec![values.len() as i64]
    };
    let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    tensor(name, &dims, DataType::Float, raw)
}

fn dequantize(x: &str, scale: &str, zp: &str, out: &str, axis: Option<i64>) -> pb::NodeProto {
    pb::NodeProto {
        name: format!("{out}_DequantizeLinear"),
        op_type: "DequantizeLinear".into(),
        input: vec![x.into(), scale.into(), zp.into()],
        output: vec![out.into()],
        attribute: axis
            .map(|a| pb::AttributeProto {
                name: "axis".into(),
                r#type: pb::attribute_proto::AttributeType::Int as i32,
                i: a,
                ..Default::default()
            })
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uint8_params_keep_zero_exact() {
        let (s, z) = uint8_params((-1.0, 3.0));
        assert!((s - 4.0 / 255.0).abs() < 1e-7);
        assert_eq!(z, 64);
        // A range above zero is widened to include it: zero point 0.
        assert_eq!(uint8_params((0.5, 2.0)).1, 0);
        // Constant zero: any scale works; no division by zero.
        assert_eq!(uint8_params((0.0, 0.0)), (1.0, 0));
    }

    #[test]
    fn per_channel_weights_are_symmetric() {
        // Two output channels (axis 0) of two values each.
        // Values chosen away from rounding ties (x.5 codes depend on float error).
        let (q, s) = per_channel_int8(&[0.52, -1.0, 0.011, 0.02], &[2, 2], 0);
        assert_eq!(q, [66, -127, 70, 127]);
        assert!((s[0] - 1.0 / 127.0).abs() < 1e-7 && (s[1] - 0.02 / 127.0).abs() < 1e-9);
        // Axis 1: the columns.
        let (q, s) = per_channel_int8(&[1.0, 0.11, -0.52, 0.2], &[2, 2], 1);
        assert_eq!(q, [127, 70, -66, 127]);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn percentile_ignores_outliers() {
        let mut samples: Vec<f32> = (0..10_000).map(|i| i as f32 / 10_000.0).collect();
        samples.push(1000.0);
        let seen = Seen {
            min: 0.0,
            max: 1000.0,
            samples,
        };
        assert_eq!(seen.range(Calibration::MinMax), (0.0, 1000.0));
        let (lo, hi) = seen.range(Calibration::Percentile(99.9));
        assert!(lo < 0.01 && hi < 1.0, "{lo} {hi}");
    }
}
