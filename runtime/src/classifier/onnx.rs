//! The ONNX reader: an ONNX file's bytes → a [`Classifier`] (feature `onnx`).
//!
//! In order: decode the protobuf and read fennec's metadata; find the image input
//! and guess its layout from where the channel axis is; settle the preprocessing
//! ([`super::resolve`]) and check it makes the tensor the input takes; hand the
//! graph to tract with that input fact; read the output's shape and guess what its
//! scores are (probabilities, logits, sigmoid); settle the labels.

use std::collections::HashSet;
use std::path::Path;

use tract_onnx::model::Onnx;
use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::DimLike;

use super::{Classifier, Found, GraphFacts, LoadOptions, Source, quantized, resolve};
use crate::error::{Error, Result, chain};
use crate::metadata::ModelMetadata;
use crate::preprocess::{ColorMode, Layout, Preprocess, PreprocessChanges};
use crate::scores::OutputKind;

/// Loads the ONNX model in `bytes` (read from `path`) as a classifier.
pub(super) fn load(bytes: &[u8], path: &Path, options: &LoadOptions) -> Result<Classifier> {
    let onnx = tract_onnx::onnx();
    let mut proto = onnx.proto_model_for_read(&mut &bytes[..]).map_err(|e| {
        Error::invalid_model(path, format!("protobuf does not decode ({})", chain(&e)))
    })?;
    if let Some(graph) = proto.graph.as_mut() {
        quantized::work_around_tract(graph);
    }
    let graph = graph_of(&proto, path)?;
    let metadata = read_metadata(&proto, path)?;

    let input = sole_image_input(graph, path)?;
    let [output] = &graph.output[..] else {
        return Err(Error::not_a_classifier(
            path,
            format!("expected one output, found {}", graph.output.len()),
        ));
    };
    // An explicit spec's layout settles inputs that could be either.
    let hint = options
        .preprocess
        .as_ref()
        .or(metadata.preprocess.as_ref())
        .map(|p| p.layout);
    let image = ImageInput::read(input, path, hint)?;

    let (preprocess, preprocess_source) =
        resolve::preprocess(path, options, || match &metadata.preprocess {
            Some(p) => Ok((p.clone(), Source::Metadata)),
            None => Ok((image.default_spec(path, &options.changes)?, Source::Default)),
        })?;
    image.check(path, &preprocess, preprocess_source)?;

    let typed = typed_model(&onnx, &proto, path, &preprocess, image.fixed_batch())?;
    let scores = ClassOutput::read(&typed, graph, output, path)?;
    let found = Found {
        graph: graph_facts(&proto, graph, &image, output, scores.shape),
        file_labels: metadata.labels.clone().map(|l| (l, Source::Metadata)),
        metadata,
        output_kind: scores.kind,
        raw_classes: scores.raw_classes,
        preprocess: (preprocess, preprocess_source),
        typed,
    };
    Classifier::assemble(path, bytes.len(), options, found)
}

/// The model's graph, refusing files without one or with an empty one.
fn graph_of<'a>(proto: &'a pb::ModelProto, path: &Path) -> Result<&'a pb::GraphProto> {
    match &proto.graph {
        None => Err(Error::invalid_model(path, "no graph in the file")),
        Some(g) if g.node.is_empty() => Err(Error::invalid_model(
            path,
            "the graph has no nodes (truncated file?)",
        )),
        Some(g) => Ok(g),
    }
}

/// fennec's keys of the file's `metadata_props` (any other keys are ignored).
fn read_metadata(proto: &pb::ModelProto, path: &Path) -> Result<ModelMetadata> {
    let props = proto
        .metadata_props
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()));
    ModelMetadata::from_props(props).map_err(|(key, reason)| Error::Metadata {
        path: path.into(),
        key,
        reason,
    })
}

/// The image input: the one graph input that is not an initializer.
fn sole_image_input<'a>(graph: &'a pb::GraphProto, path: &Path) -> Result<&'a pb::ValueInfoProto> {
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&pb::ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(i.name.as_str()))
        .collect();
    match inputs[..] {
        [input] => Ok(input),
        _ => Err(Error::not_a_classifier(
            path,
            format!(
                "expected one image input, found {} ({})",
                inputs.len(),
                inputs
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// The image input as the file declares it: float32, `[N, C, H, W]` or `[N, H, W, C]`.
struct ImageInput<'a> {
    name: &'a str,
    dims: Vec<Dim>,
    layout: Layout,
    channels: usize,
}

impl<'a> ImageInput<'a> {
    /// Reads the input's type and finds its channel axis (size 1 or 3, at position 1
    /// for NCHW or 3 for NHWC); where both could be, `hint` decides, else NCHW.
    fn read(input: &'a pb::ValueInfoProto, path: &Path, hint: Option<Layout>) -> Result<Self> {
        let name = input.name.as_str();
        let (elem_type, dims) = tensor_type(input).ok_or_else(|| {
            Error::not_a_classifier(path, format!("input '{name}' has no tensor type"))
        })?;
        if elem_type != pb::tensor_proto::DataType::Float as i32 {
            return Err(Error::not_a_classifier(
                path,
                format!(
                    "input '{name}' is of ONNX type {} ; fennec feeds float32 images",
                    data_type_name(elem_type)
                ),
            ));
        }
        let shape = join(&dims);
        if dims.len() != 4 {
            return Err(Error::not_a_classifier(
                path,
                format!(
                    "input '{name}' has shape [{shape}] (rank {}); an image input has rank 4, \
                     NCHW or NHWC",
                    dims.len()
                ),
            ));
        }
        let chan = |d: &Dim| matches!(d, Dim::Fixed(1 | 3));
        let layout = match (chan(&dims[1]), chan(&dims[3])) {
            (true, true) => hint.unwrap_or(Layout::Nchw),
            (true, false) => Layout::Nchw,
            (false, true) => Layout::Nhwc,
            (false, false) => {
                return Err(Error::not_a_classifier(
                    path,
                    format!(
                        "input '{name}' has shape [{shape}]: no channel axis of size 1 or 3 at \
                         position 1 (NCHW) or 3 (NHWC)"
                    ),
                ));
            }
        };
        let channels = dims[axes(layout).0].fixed().expect("found fixed above");
        Ok(ImageInput {
            name,
            dims,
            layout,
            channels,
        })
    }

    fn axes(&self) -> (usize, usize, usize) {
        axes(self.layout)
    }

    fn fixed_batch(&self) -> Option<usize> {
        self.dims[0].fixed()
    }

    /// Keras' defaults at the input's size, for a file without a spec. A size the
    /// graph leaves open must come from the user's changes (`--size`).
    fn default_spec(&self, path: &Path, changes: &PreprocessChanges) -> Result<Preprocess> {
        let (_, h, w) = self.axes();
        let size = |ix: usize| self.dims[ix].fixed().map_or(0, |d| d as u32);
        let color = if self.channels == 3 {
            ColorMode::Rgb
        } else {
            ColorMode::Grayscale
        };
        let mut spec = Preprocess::keras(size(h), size(w), color);
        spec.layout = self.layout;
        let changed = changes
            .apply(&spec)
            .map_err(|e| Error::not_a_classifier(path, e.to_string()))?;
        if changed.height == 0 || changed.width == 0 {
            return Err(Error::not_a_classifier(
                path,
                format!(
                    "input '{}' has shape [{}] with no fixed height/width and the file has no \
                     fennec.preprocess metadata; give --preprocess FILE.yaml or --size",
                    self.name,
                    join(&self.dims)
                ),
            ));
        }
        Ok(spec)
    }

    /// Refuses a spec whose tensor is not the one this input takes.
    fn check(&self, path: &Path, spec: &Preprocess, source: Source) -> Result<()> {
        let mismatch = |what: &str, says: String, needs: String| {
            Err(Error::not_a_classifier(
                path,
                format!(
                    "preprocessing ({source:?}) says {what} {says} but input '{}' [{}] needs \
                     {needs}",
                    self.name,
                    join(&self.dims)
                ),
            ))
        };
        if spec.channels() != self.channels {
            return mismatch(
                "channels",
                spec.channels().to_string(),
                self.channels.to_string(),
            );
        }
        if spec.layout != self.layout {
            let (says, needs) = (format!("{:?}", spec.layout), format!("{:?}", self.layout));
            return mismatch("layout", says, needs);
        }
        let (_, h, w) = self.axes();
        for (ix, want, what) in [(h, spec.height, "height"), (w, spec.width, "width")] {
            if let Some(d) = self.dims[ix].fixed()
                && d != want as usize
            {
                return mismatch(what, want.to_string(), d.to_string());
            }
        }
        Ok(())
    }
}

/// Positions of the channel, height and width axes.
fn axes(layout: Layout) -> (usize, usize, usize) {
    match layout {
        Layout::Nchw => (1, 2, 3),
        Layout::Nhwc => (3, 1, 2),
    }
}

/// tract's typed, decluttered model with the input fact set to the spec's tensor;
/// the batch dimension stays symbolic (`N`) unless the graph fixes it.
fn typed_model(
    onnx: &Onnx,
    proto: &pb::ModelProto,
    path: &Path,
    spec: &Preprocess,
    fixed_batch: Option<usize>,
) -> Result<TypedModel> {
    let tract = |e: TractError| Error::tract(path, &e);
    let dir = path.parent().and_then(|d| d.to_str());
    let parsed = onnx.parse(proto, dir).map_err(tract)?;
    if !parsed.unresolved_inputs.is_empty() {
        return Err(Error::invalid_model(
            path,
            format!("unresolved inputs {:?}", parsed.unresolved_inputs),
        ));
    }
    let mut model = parsed.model;
    let batch_dim: TDim = match fixed_batch {
        Some(b) => b.into(),
        None => model.symbols.sym("N").into(),
    };
    let mut shape: Vec<TDim> = spec.batch_shape(1).iter().map(|&d| d.into()).collect();
    shape[0] = batch_dim;
    model
        .set_input_fact(0, f32::fact(&shape).into())
        .map_err(tract)?;
    model
        .into_typed()
        .and_then(|m| m.into_decluttered())
        .map_err(tract)
}

/// The graph's output: float scores shaped `[N, K]` (trailing unit axes allowed).
struct ClassOutput {
    shape: Vec<String>,
    /// K: the raw outputs per image (1 for a sigmoid unit).
    raw_classes: usize,
    kind: OutputKind,
}

impl ClassOutput {
    fn read(
        typed: &TypedModel,
        graph: &pb::GraphProto,
        output: &pb::ValueInfoProto,
        path: &Path,
    ) -> Result<Self> {
        let fact = typed.output_fact(0).map_err(|e| Error::tract(path, &e))?;
        let shape: Vec<String> = fact.shape.iter().map(|d| d.to_string()).collect();
        let per_image = fact
            .shape
            .iter()
            .skip(1)
            .try_fold(1usize, |acc, d| d.to_usize().ok().map(|v| acc * v));
        let raw_classes = match per_image {
            Some(k) if fact.shape.rank() >= 2 && k >= 1 => k,
            _ => {
                return Err(Error::not_a_classifier(
                    path,
                    format!(
                        "output '{}' has shape [{}]; a classifier outputs [batch, classes]",
                        output.name,
                        shape.join(", ")
                    ),
                ));
            }
        };
        if fact.datum_type != f32::datum_type() && fact.datum_type != f16::datum_type() {
            return Err(Error::not_a_classifier(
                path,
                format!(
                    "output '{}' is {:?}, expected float scores",
                    output.name, fact.datum_type
                ),
            ));
        }
        Ok(ClassOutput {
            shape,
            raw_classes,
            kind: output_kind(graph, &output.name, raw_classes),
        })
    }
}

/// What the scores are, from the op that produces `output` (looking through
/// shape-only ops and quantize/dequantize pairs): a Softmax gives probabilities, a Sigmoid on one unit a
/// probability of class 1; anything else is logits.
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
            "Identity"
                | "Reshape"
                | "Flatten"
                | "Squeeze"
                | "Unsqueeze"
                | "QuantizeLinear"
                | "DequantizeLinear"
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

/// What `fennec info` shows about the file's graph.
fn graph_facts(
    proto: &pb::ModelProto,
    graph: &pb::GraphProto,
    image: &ImageInput,
    output: &pb::ValueInfoProto,
    output_shape: Vec<String>,
) -> GraphFacts {
    GraphFacts {
        producer: proto.producer_name.clone(),
        producer_version: proto.producer_version.clone(),
        opset: proto
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map_or(0, |o| o.version),
        ir_version: proto.ir_version,
        input_name: image.name.into(),
        input_shape: image.dims.iter().map(Dim::to_string).collect(),
        output_name: output.name.clone(),
        output_shape,
        layout: image.layout,
        parameters: graph
            .initializer
            .iter()
            .map(|t| t.dims.iter().product::<i64>().max(0) as u64)
            .sum(),
        precision: quantized::precision(graph),
    }
}

/// One ONNX dimension, as declared in the file.
#[derive(Debug, Clone, PartialEq)]
enum Dim {
    Fixed(usize),
    Named(String),
}

impl Dim {
    fn fixed(&self) -> Option<usize> {
        match self {
            Dim::Fixed(v) => Some(*v),
            Dim::Named(_) => None,
        }
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(v) => write!(f, "{v}"),
            Dim::Named(n) => f.write_str(n),
        }
    }
}

/// `N, 3, 224, 224`: a shape as error messages show it.
fn join(dims: &[Dim]) -> String {
    dims.iter()
        .map(Dim::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

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

fn data_type_name(t: i32) -> String {
    pb::tensor_proto::DataType::try_from(t)
        .map(|d| d.as_str_name().to_lowercase())
        .unwrap_or_else(|_| format!("#{t}"))
}
