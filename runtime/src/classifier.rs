//! Loading an ONNX image classifier with tract and running batches through it.
//!
//! Loading happens once: bytes → ONNX protobuf (for facts and metadata) → tract
//! model with the input fact fixed (batch left symbolic) → decluttered typed model.
//! Optimised runnable plans are made per batch size on first use and cached.
//! Any panic inside tract is caught and turned into an error naming the model file.
//! Models converted to tract's NNEF format by `fennec convert` load through
//! [`nnef`]; the `lite` build (no `onnx` feature) reads only those.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tract_nnef::prelude::*;
#[cfg(feature = "onnx")]
use tract_nnef::tract_core::internal::DimLike;
use tract_nnef::tract_core::ops::Cost;
#[cfg(feature = "onnx")]
use tract_onnx::pb;
#[cfg(feature = "onnx")]
use tract_onnx::prelude::*;

use crate::error::{Error, Result, chain};
use crate::metadata::ModelMetadata;
#[cfg(feature = "onnx")]
use crate::preprocess::ColorMode;
use crate::preprocess::{Layout, Overrides, Preprocess};

mod nnef;

/// Where a piece of model configuration came from, reported by `info` and `predict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The model file's fennec metadata.
    Metadata,
    /// Given by the user (a file or flags).
    User,
    /// Nothing given: derived from the input shape (preprocessing) or class indices (labels).
    Default,
}

/// What the model's output means, and what fennec does to get probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// The graph ends in Softmax: used as is.
    Probabilities,
    /// Anything else with K > 1 outputs: softmax applied (unless a row already sums to 1).
    Logits,
    /// One output ending in Sigmoid: p(class 1), expanded to [1 - p, p].
    Sigmoid,
    /// One output without Sigmoid: sigmoid applied, then expanded.
    BinaryLogit,
}

impl OutputKind {
    pub fn describe(&self) -> &'static str {
        match self {
            OutputKind::Probabilities => "probabilities (model ends in Softmax)",
            OutputKind::Logits => "logits (fennec applies softmax)",
            OutputKind::Sigmoid => "one sigmoid probability (read as 2 classes)",
            OutputKind::BinaryLogit => "one logit (fennec applies sigmoid, read as 2 classes)",
        }
    }
}

/// User overrides for what the model file does not say (or says wrongly).
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub labels: Option<Vec<String>>,
    /// A whole spec replacing the file's (e.g. from `--preprocess FILE.yaml`).
    pub preprocess: Option<Preprocess>,
    /// Field-by-field changes applied last (e.g. `--size`, `--filter`).
    pub overrides: Overrides,
}

/// Static facts about a loaded model, for `fennec info` and reports.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub file_size: u64,
    pub producer: String,
    pub producer_version: String,
    pub opset: i64,
    pub ir_version: i64,
    pub input_name: String,
    /// ONNX input shape, symbolic dims by name (e.g. `["N", 3, 224, 224]`).
    pub input_shape: Vec<String>,
    pub output_name: String,
    pub output_shape: Vec<String>,
    pub layout: Layout,
    pub channels: usize,
    /// Fixed batch size of the graph, `None` when dynamic.
    pub fixed_batch: Option<usize>,
    pub num_classes: usize,
    pub output_kind: OutputKind,
    pub parameters: u64,
    /// Multiply-adds x 2 per image, from tract's cost model.
    pub flops_per_image: Option<u64>,
    pub labels_source: Source,
    pub preprocess_source: Source,
    pub metadata: ModelMetadata,
}

type Plan = Arc<TypedRunnableModel>;

/// A loaded classifier: labels, preprocessing and a runnable model.
pub struct Classifier {
    pub info: ModelInfo,
    pub labels: Vec<String>,
    pub preprocess: Preprocess,
    typed: TypedModel,
    batch_symbol: Option<Symbol>,
    /// Raw outputs per image of the graph (1 for sigmoid models, else == labels).
    raw_classes: usize,
    plans: Mutex<HashMap<usize, Plan>>,
}

impl Classifier {
    /// Loads and prepares `path`. Fails with a one-line error naming the file.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Classifier> {
        let bytes = std::fs::read(path).map_err(|e| Error::Io {
            path: path.into(),
            source: e,
        })?;
        let load = || {
            if nnef::is_nnef(&bytes) {
                return Self::from_nnef(&bytes, path, options);
            }
            #[cfg(feature = "onnx")]
            return Self::from_bytes(&bytes, path, options);
            #[cfg(not(feature = "onnx"))]
            return Err(nnef::lite_cannot_read_onnx(path));
        };
        match catch_unwind(AssertUnwindSafe(load)) {
            Ok(r) => r,
            Err(panic) => Err(Error::Tract {
                path: path.into(),
                reason: panic_message(panic),
            }),
        }
    }

    #[cfg(feature = "onnx")]
    fn from_bytes(bytes: &[u8], path: &Path, options: &LoadOptions) -> Result<Classifier> {
        let invalid = |reason: String| Error::InvalidModel {
            path: path.into(),
            reason,
        };
        let not_classifier = |reason: String| Error::NotAClassifier {
            path: path.into(),
            reason,
        };
        let tract_err = |e: anyhow::Error| Error::Tract {
            path: path.into(),
            reason: chain(&e),
        };

        let onnx = tract_onnx::onnx();
        let proto = onnx
            .proto_model_for_read(&mut &bytes[..])
            .map_err(|e| invalid(format!("protobuf does not decode ({})", chain(&e))))?;
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| invalid("no graph in the file".into()))?;
        if graph.node.is_empty() {
            return Err(invalid("the graph has no nodes (truncated file?)".into()));
        }
        let metadata = ModelMetadata::from_props(
            proto
                .metadata_props
                .iter()
                .map(|e| (e.key.as_str(), e.value.as_str())),
        )
        .map_err(|(key, reason)| Error::Metadata {
            path: path.into(),
            key,
            reason,
        })?;

        // The image input: the one graph input that is not an initializer.
        let initializers: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs: Vec<&pb::ValueInfoProto> = graph
            .input
            .iter()
            .filter(|i| !initializers.contains(i.name.as_str()))
            .collect();
        let [input] = inputs[..] else {
            return Err(not_classifier(format!(
                "expected one image input, found {} ({})",
                inputs.len(),
                inputs
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let [output] = &graph.output[..] else {
            return Err(not_classifier(format!(
                "expected one output, found {}",
                graph.output.len()
            )));
        };
        let (elem_type, in_dims) = tensor_type(input)
            .ok_or_else(|| not_classifier(format!("input '{}' has no tensor type", input.name)))?;
        if elem_type != pb::tensor_proto::DataType::Float as i32 {
            return Err(not_classifier(format!(
                "input '{}' is of ONNX type {} ; fennec feeds float32 images",
                input.name,
                data_type_name(elem_type)
            )));
        }
        let shape_text: Vec<String> = in_dims.iter().map(Dim::to_string).collect();
        if in_dims.len() != 4 {
            return Err(not_classifier(format!(
                "input '{}' has shape [{}] (rank {}); an image input has rank 4, NCHW or NHWC",
                input.name,
                shape_text.join(", "),
                in_dims.len()
            )));
        }

        // Layout from the channel position; an explicit spec settles ambiguity.
        let hint = options
            .preprocess
            .as_ref()
            .or(metadata.preprocess.as_ref())
            .map(|p| p.layout);
        let chan = |d: &Dim| matches!(d, Dim::Fixed(1 | 3));
        let layout = match (chan(&in_dims[1]), chan(&in_dims[3])) {
            (true, true) => hint.unwrap_or(Layout::Nchw),
            (true, false) => Layout::Nchw,
            (false, true) => Layout::Nhwc,
            (false, false) => {
                return Err(not_classifier(format!(
                    "input '{}' has shape [{}]: no channel axis of size 1 or 3 at position 1 \
                     (NCHW) or 3 (NHWC)",
                    input.name,
                    shape_text.join(", ")
                )));
            }
        };
        let (c_ix, h_ix, w_ix) = match layout {
            Layout::Nchw => (1, 2, 3),
            Layout::Nhwc => (3, 1, 2),
        };
        let channels = in_dims[c_ix].fixed().expect("checked above");
        let model_color = if channels == 3 {
            ColorMode::Rgb
        } else {
            ColorMode::Grayscale
        };

        // Preprocessing: user file > metadata > Keras defaults from the input shape;
        // then the user's field overrides.
        let (mut preprocess, mut preprocess_source) = match (
            &options.preprocess,
            &metadata.preprocess,
        ) {
            (Some(p), _) => (p.clone(), Source::User),
            (None, Some(p)) => (p.clone(), Source::Metadata),
            (None, None) => {
                let size = match (in_dims[h_ix].fixed(), in_dims[w_ix].fixed()) {
                    (Some(h), Some(w)) => Some((h as u32, w as u32)),
                    _ => options.overrides.size,
                };
                let Some((h, w)) = size else {
                    return Err(not_classifier(format!(
                        "input '{}' has shape [{}] with no fixed height/width and the file \
                             has no fennec.preprocess metadata; give --preprocess FILE.yaml or --size",
                        input.name,
                        shape_text.join(", ")
                    )));
                };
                let mut p = Preprocess::keras(h, w, model_color);
                p.layout = layout;
                (p, Source::Default)
            }
        };
        if !options.overrides.is_empty() {
            options.overrides.apply(&mut preprocess);
            preprocess_source = Source::User;
        }
        preprocess
            .validate()
            .map_err(|e| not_classifier(e.to_string()))?;
        let mismatch = |what: &str, spec: String, model: String| {
            not_classifier(format!(
                "preprocessing ({preprocess_source:?}) says {what} {spec} but input '{}' [{}] \
                 needs {model}",
                input.name,
                shape_text.join(", ")
            ))
        };
        if preprocess.channels() != channels {
            return Err(mismatch(
                "channels",
                preprocess.channels().to_string(),
                channels.to_string(),
            ));
        }
        if preprocess.layout != layout {
            return Err(mismatch(
                "layout",
                format!("{:?}", preprocess.layout),
                format!("{layout:?}"),
            ));
        }
        for (ix, want, what) in [
            (h_ix, preprocess.height, "height"),
            (w_ix, preprocess.width, "width"),
        ] {
            if let Some(d) = in_dims[ix].fixed()
                && d != want as usize
            {
                return Err(mismatch(what, want.to_string(), d.to_string()));
            }
        }

        // tract model: fix the input fact, batch symbolic unless the graph fixes it.
        let dir = path.parent().and_then(|d| d.to_str());
        let parsed = onnx.parse(&proto, dir).map_err(tract_err)?;
        if !parsed.unresolved_inputs.is_empty() {
            return Err(invalid(format!(
                "unresolved inputs {:?}",
                parsed.unresolved_inputs
            )));
        }
        let mut model = parsed.model;
        let fixed_batch = in_dims[0].fixed();
        let batch_symbol = if fixed_batch.is_none() {
            Some(model.symbols.sym("N"))
        } else {
            None
        };
        let batch_dim: TDim = match &batch_symbol {
            Some(s) => s.clone().into(),
            None => fixed_batch.unwrap().into(),
        };
        let mut shape: Vec<TDim> = preprocess
            .batch_shape(1)
            .iter()
            .map(|&d| d.into())
            .collect();
        shape[0] = batch_dim;
        model
            .set_input_fact(0, f32::fact(&shape).into())
            .map_err(tract_err)?;
        let typed = model
            .into_typed()
            .and_then(|m| m.into_decluttered())
            .map_err(tract_err)?;

        // Output: [N, K] (trailing unit axes allowed); K from the typed facts.
        let out_fact = typed.output_fact(0).map_err(tract_err)?.clone();
        let out_shape: Vec<String> = out_fact.shape.iter().map(|d| d.to_string()).collect();
        let raw_classes = out_fact
            .shape
            .iter()
            .skip(1)
            .try_fold(1usize, |acc, d| d.to_usize().ok().map(|v| acc * v));
        let raw_classes = match raw_classes {
            Some(k) if out_fact.shape.rank() >= 2 && k >= 1 => k,
            _ => {
                return Err(not_classifier(format!(
                    "output '{}' has shape [{}]; a classifier outputs [batch, classes]",
                    output.name,
                    out_shape.join(", ")
                )));
            }
        };
        if out_fact.datum_type != f32::datum_type() && out_fact.datum_type != f16::datum_type() {
            return Err(not_classifier(format!(
                "output '{}' is {:?}, expected float scores",
                output.name, out_fact.datum_type
            )));
        }
        let output_kind = output_kind(graph, &output.name, raw_classes);
        let num_classes = class_count(raw_classes);

        let (labels, labels_source) = match (&options.labels, &metadata.labels) {
            (Some(l), _) => (l.clone(), Source::User),
            (None, Some(l)) => (l.clone(), Source::Metadata),
            (None, None) => (
                (0..num_classes).map(|i| i.to_string()).collect(),
                Source::Default,
            ),
        };
        check_labels(&labels, labels_source, num_classes).map_err(not_classifier)?;

        let info = ModelInfo {
            path: path.into(),
            file_size: bytes.len() as u64,
            producer: proto.producer_name.clone(),
            producer_version: proto.producer_version.clone(),
            opset: proto
                .opset_import
                .iter()
                .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
                .map(|o| o.version)
                .unwrap_or(0),
            ir_version: proto.ir_version,
            input_name: input.name.clone(),
            input_shape: shape_text,
            output_name: output.name.clone(),
            output_shape: out_shape,
            layout,
            channels,
            fixed_batch,
            num_classes,
            output_kind,
            parameters: graph
                .initializer
                .iter()
                .map(|t| t.dims.iter().product::<i64>().max(0) as u64)
                .sum(),
            flops_per_image: None,
            labels_source,
            preprocess_source,
            metadata,
        };
        Ok(Classifier::assemble(
            info,
            labels,
            preprocess,
            typed,
            batch_symbol,
            raw_classes,
        ))
    }

    /// The classifier of a loaded model (ONNX or NNEF), with its FLOPs counted.
    fn assemble(
        info: ModelInfo,
        labels: Vec<String>,
        preprocess: Preprocess,
        typed: TypedModel,
        batch_symbol: Option<Symbol>,
        raw_classes: usize,
    ) -> Classifier {
        let mut classifier = Classifier {
            info,
            labels,
            preprocess,
            typed,
            batch_symbol,
            raw_classes,
            plans: Mutex::new(HashMap::new()),
        };
        classifier.info.flops_per_image = classifier.flops_per_image();
        classifier
    }

    /// Batch sizes this model accepts: `None` = any.
    pub fn fixed_batch(&self) -> Option<usize> {
        self.info.fixed_batch
    }

    /// The optimised plan for `n` images, made on first use.
    fn plan(&self, n: usize) -> Result<Plan> {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = plans.get(&n) {
            return Ok(p.clone());
        }
        let path = &self.info.path;
        let make = || -> TractResult<Plan> {
            let mut model = match &self.batch_symbol {
                Some(s) => {
                    let subs = HashMap::from([(s.clone(), TDim::from(n as i64))]);
                    self.typed.set_symbols(&subs)?
                }
                None => self.typed.clone(),
            };
            // fennec's own kernels for the conv/ReLU/max-pool chains tract is slow at.
            crate::kernels::rewrite(&mut model)?;
            model.into_optimized()?.into_runnable()
        };
        let plan = guard_tract(path, make)?;
        plans.insert(n, plan.clone());
        Ok(plan)
    }

    /// Makes the plan for batch size `n` now, so timing excludes it.
    pub fn prepare(&self, n: usize) -> Result<()> {
        self.plan(self.fixed_batch().unwrap_or(n)).map(|_| ())
    }

    /// Runs `n` preprocessed images (`n * preprocess.tensor_len()` values, in the
    /// spec's layout) and returns one probability row per image. Graphs with a fixed
    /// batch size get the images in slices of that size, the last one zero-padded.
    pub fn classify(&self, input: &[f32], n: usize) -> Result<Vec<Vec<f32>>> {
        let len = self.preprocess.tensor_len();
        assert_eq!(input.len(), n * len, "input length");
        let Some(b) = self.fixed_batch() else {
            return self.run(input, n);
        };
        let mut rows = Vec::with_capacity(n);
        for slice in input.chunks(b * len) {
            let real = slice.len() / len;
            if real == b {
                rows.extend(self.run(slice, b)?);
            } else {
                let mut padded = slice.to_vec();
                padded.resize(b * len, 0.0);
                rows.extend(self.run(&padded, b)?.into_iter().take(real));
            }
        }
        Ok(rows)
    }

    fn run(&self, input: &[f32], n: usize) -> Result<Vec<Vec<f32>>> {
        let path = &self.info.path;
        let plan = self.plan(n)?;
        let run = || -> TractResult<Vec<f32>> {
            let tensor = Tensor::from_shape(&self.preprocess.batch_shape(n), input)?;
            let out = plan.run(tvec!(tensor.into_tvalue()))?;
            let out = out[0].cast_to::<f32>()?;
            Ok(out.try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
        };
        let raw = guard_tract(path, run)?;
        Ok(raw
            .chunks_exact(self.raw_classes)
            .map(|row| self.to_probabilities(row))
            .collect())
    }

    fn to_probabilities(&self, row: &[f32]) -> Vec<f32> {
        let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
        match self.info.output_kind {
            OutputKind::Probabilities => row.to_vec(),
            OutputKind::Logits if is_distribution(row) => row.to_vec(),
            OutputKind::Logits => softmax(row),
            OutputKind::Sigmoid => vec![1.0 - row[0], row[0]],
            OutputKind::BinaryLogit => {
                let p = sigmoid(row[0]);
                vec![1.0 - p, p]
            }
        }
    }

    /// 2 x multiply-adds per image from tract's cost model, on a batch-1 copy.
    fn flops_per_image(&self) -> Option<u64> {
        let model = match &self.batch_symbol {
            Some(s) => self
                .typed
                .set_symbols(&HashMap::from([(s.clone(), TDim::from(1))]))
                .ok()?,
            None => self.typed.clone(),
        };
        let mut fma: u64 = 0;
        for node in model.nodes() {
            let inputs = model.node_input_facts(node.id).ok()?;
            for (cost, n) in node.op.cost(&inputs).ok()? {
                if matches!(cost, Cost::FMA(_)) {
                    fma += n.to_i64().ok()?.max(0) as u64;
                }
            }
        }
        let per_image = fma / self.fixed_batch().unwrap_or(1) as u64;
        Some(2 * per_image)
    }

    /// Wall time of each node of the optimised plan for `n` images (a fixed-batch
    /// graph's own batch size), averaged over `runs` inferences of `input` after
    /// one untimed run; slowest first. For `fennec bench --profile`.
    pub fn profile(&self, input: &[f32], n: usize, runs: usize) -> Result<Vec<NodeTime>> {
        let path = &self.info.path;
        let n = self.fixed_batch().unwrap_or(n);
        assert_eq!(
            input.len(),
            n * self.preprocess.tensor_len(),
            "input length"
        );
        let plan = self.plan(n)?;
        let profile = || -> TractResult<Vec<NodeTime>> {
            let tensor = Tensor::from_shape(&self.preprocess.batch_shape(n), input)?;
            let mut state = plan.spawn()?;
            let mut seconds = vec![0.0f64; plan.model().nodes().len()];
            for run in 0..=runs {
                state.run_plan_with_eval(
                    tvec!(tensor.clone().into_tvalue()),
                    |ctx, op_state, node, inputs| {
                        let start = std::time::Instant::now();
                        let out = tract_nnef::tract_core::plan::eval(ctx, op_state, node, inputs);
                        if run > 0 {
                            seconds[node.id] += start.elapsed().as_secs_f64();
                        }
                        out
                    },
                )?;
            }
            let mut nodes: Vec<NodeTime> = plan
                .model()
                .nodes()
                .iter()
                .filter(|node| seconds[node.id] > 0.0)
                .map(|node| NodeTime {
                    node: node.name.clone(),
                    op: node.op.name().to_string(),
                    ms: seconds[node.id] * 1000.0 / runs.max(1) as f64,
                })
                .collect();
            nodes.sort_by(|a, b| b.ms.total_cmp(&a.ms));
            Ok(nodes)
        };
        guard_tract(path, profile)
    }
}

/// Runs tract work on the model at `path`: its errors and its panics (tract asserts
/// on some malformed graphs) both become one [`Error::Tract`] naming the file.
fn guard_tract<T>(path: &Path, work: impl FnOnce() -> TractResult<T>) -> Result<T> {
    let reason = match catch_unwind(AssertUnwindSafe(work)) {
        Ok(Ok(value)) => return Ok(value),
        Ok(Err(e)) => chain(&e),
        Err(panic) => panic_message(panic),
    };
    Err(Error::Tract {
        path: path.into(),
        reason,
    })
}

/// Time spent in one node of a plan, from [`Classifier::profile`].
#[derive(Debug, Clone, Serialize)]
pub struct NodeTime {
    /// The node's name (from the ONNX graph, with tract's suffixes).
    pub node: String,
    /// The operator that ran it (tract's, or fennec's `FennecConv`).
    pub op: String,
    /// Milliseconds per inference.
    pub ms: f64,
}

/// One ONNX dimension, as declared in the file.
#[cfg(feature = "onnx")]
#[derive(Debug, Clone, PartialEq)]
enum Dim {
    Fixed(usize),
    Named(String),
}

#[cfg(feature = "onnx")]
impl Dim {
    fn fixed(&self) -> Option<usize> {
        match self {
            Dim::Fixed(v) => Some(*v),
            Dim::Named(_) => None,
        }
    }
}

#[cfg(feature = "onnx")]
impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(v) => write!(f, "{v}"),
            Dim::Named(n) => f.write_str(n),
        }
    }
}

#[cfg(feature = "onnx")]
fn tensor_type(v: &pb::ValueInfoProto) -> Option<(i32, Vec<Dim>)> {
    let pb::type_proto::Value::TensorType(t) = v.r#type.as_ref()?.value.as_ref()?;
    let dims = t
        .shape
        .as_ref()?
        .dim
        .iter()
        .map(|d| match &d.value {
            Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if *v > 0 => {
                Dim::Fixed(*v as usize)
            }
            Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) if !p.is_empty() => {
                Dim::Named(p.clone())
            }
            _ => Dim::Named("?".into()),
        })
        .collect();
    Some((t.elem_type, dims))
}

#[cfg(feature = "onnx")]
fn data_type_name(t: i32) -> String {
    pb::tensor_proto::DataType::try_from(t)
        .map(|d| d.as_str_name().to_lowercase())
        .unwrap_or_else(|_| format!("#{t}"))
}

/// Finds the op that produces `output`, looking through shape-only ops.
#[cfg(feature = "onnx")]
fn output_kind(graph: &pb::GraphProto, output: &str, raw_classes: usize) -> OutputKind {
    let producer = |name: &str| {
        graph
            .node
            .iter()
            .find(|n| n.output.iter().any(|o| o == name))
    };
    let mut name = output.to_string();
    let mut last_op = String::new();
    for _ in 0..16 {
        let Some(node) = producer(&name) else { break };
        last_op = node.op_type.clone();
        let shape_only = matches!(
            node.op_type.as_str(),
            "Identity" | "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze"
        );
        match node.input.first() {
            Some(first) if shape_only => name = first.clone(),
            _ => break,
        }
    }
    match (raw_classes, last_op.as_str()) {
        (1, "Sigmoid") => OutputKind::Sigmoid,
        (1, _) => OutputKind::BinaryLogit,
        (_, "Softmax") => OutputKind::Probabilities,
        _ => OutputKind::Logits,
    }
}

fn is_distribution(row: &[f32]) -> bool {
    row.iter().all(|&p| (0.0..=1.0).contains(&p)) && (row.iter().sum::<f32>() - 1.0).abs() < 1e-4
}

/// Numerically stable softmax.
pub fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = row.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Indices of the `k` largest values, largest first; ties keep the lower index first.
pub fn top_k(probs: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Sets how many threads tract uses for one inference (matrix products and
/// element-wise ops). 1 = single-threaded, the default. Without the `multithread`
/// feature inference is always single-threaded.
pub fn set_inference_threads(n: usize) {
    use tract_nnef::tract_core::tract_linalg::multithread::{Executor, set_default_executor};
    #[cfg(feature = "multithread")]
    if n > 1 {
        set_default_executor(Executor::multithread(n));
        return;
    }
    let _ = n;
    set_default_executor(Executor::SingleThread);
}

/// The classes a `[batch, raw_classes]` output stands for: one sigmoid unit is two.
fn class_count(raw_classes: usize) -> usize {
    if raw_classes == 1 { 2 } else { raw_classes }
}

/// Whether there is one label per class; the reason when not.
fn check_labels(
    labels: &[String],
    source: Source,
    num_classes: usize,
) -> std::result::Result<(), String> {
    if labels.len() == num_classes {
        return Ok(());
    }
    Err(format!(
        "{} labels ({source:?}) but the model outputs {num_classes} classes",
        labels.len()
    ))
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("tract panicked: {}", msg.replace('\n', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_and_top_k() {
        let p = softmax(&[1.0, 2.0, 3.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(top_k(&p, 2), vec![2, 1]);
        assert_eq!(top_k(&[0.5, 0.5, 0.0], 3), vec![0, 1, 2]);
        assert!(is_distribution(&[0.25, 0.75]));
        assert!(!is_distribution(&[2.0, -1.0]));
    }
}
