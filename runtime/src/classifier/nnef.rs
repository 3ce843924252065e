//! Classifiers in tract's NNEF format, the embedded route: `fennec convert` writes
//! a loaded ONNX classifier as a `.nnef.tgz` (the decluttered tract graph, batch
//! still symbolic, plus everything fennec knows about it as a model property), and
//! this loader reads it back with tract-nnef + tract-core only. The `lite` build
//! (no `onnx` feature, so no ONNX parser) reads nothing else.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tract_nnef::prelude::*;

use super::{Classifier, Found, GraphFacts, LoadOptions, Source, resolve};
use crate::error::{Error, Result, chain};
use crate::metadata::ModelMetadata;
use crate::preprocess::Preprocess;
use crate::scores::OutputKind;

/// The model property holding [`Stored`]: its JSON, hex-encoded, as a string. NNEF
/// string literals do not round-trip every character (an apostrophe fails to
/// parse), and a tensor big enough to be written as a separate file cannot be
/// read back as a property.
pub const PROPERTY: &str = "fennec.classifier";
/// Version of the [`Stored`] layout; bumped on incompatible changes.
const FORMAT: u32 = 1;

/// What the ONNX loader found out, saved with the graph so loading needs no ONNX.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    format: u32,
    #[serde(flatten)]
    graph: GraphFacts,
    output_kind: OutputKind,
    raw_classes: usize,
    labels: Vec<String>,
    labels_source: Source,
    preprocess: Preprocess,
    preprocess_source: Source,
    metadata: ModelMetadata,
}

/// A gzip stream or a plain tar archive: what `fennec convert` (or `tract dump
/// --nnef-tar`) writes. ONNX files are protobuf and start otherwise.
pub(super) fn is_nnef(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b]) || bytes.get(257..262) == Some(b"ustar")
}

#[cfg(not(feature = "onnx"))]
pub(super) fn lite_cannot_read_onnx(path: &Path) -> Error {
    Error::Tract {
        path: path.into(),
        reason: "this lite build of fennec reads only models converted to NNEF; convert it with \
                 the full build: fennec convert MODEL.onnx MODEL.nnef.tgz"
            .into(),
    }
}

impl Classifier {
    /// The model as a gzipped NNEF archive (`.nnef.tgz`) that [`Classifier::load`]
    /// reads back, in any build, with the same labels and preprocessing (changes
    /// given at load time included). Only tract-core operators are written, so what
    /// converts also loads in the lite build; the archive is byte-for-byte
    /// reproducible.
    #[cfg(feature = "onnx")]
    pub fn to_nnef(&self) -> Result<Vec<u8>> {
        let i = &self.info;
        let stored = Stored {
            format: FORMAT,
            graph: i.graph.clone(),
            output_kind: i.output_kind,
            raw_classes: self.raw_classes,
            labels: self.labels.clone(),
            labels_source: i.labels_source,
            preprocess: self.preprocess.clone(),
            preprocess_source: i.preprocess_source,
            metadata: i.metadata.clone(),
        };
        let json = serde_json::to_vec(&stored).expect("plain data serialises");
        let tract_err = |e: TractError| Error::Tract {
            path: i.path.clone(),
            reason: format!("cannot be written as NNEF: {}", chain(&e)),
        };
        let mut model = self.typed.clone();
        // tract's copies of the ONNX metadata (`onnx.*`) are in `stored` already and
        // may hold characters NNEF strings cannot carry.
        model.properties.retain(|k, _| !k.starts_with("onnx."));
        model
            .properties
            .insert(PROPERTY.into(), rctensor0(hex::encode(json)));
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let gz = tract_nnef::nnef()
            .write_to_tar_with_config(&model, gz, false, true)
            .map_err(tract_err)?;
        gz.finish().map_err(|e| Error::Tract {
            path: i.path.clone(),
            reason: e.to_string(),
        })
    }
}

/// Loads the NNEF archive in `bytes` (read from `path`) as a classifier.
pub(super) fn load(bytes: &[u8], path: &Path, options: &LoadOptions) -> Result<Classifier> {
    let tract = |e: TractError| Error::tract(path, &e);
    let nnef = tract_nnef::nnef();
    let proto = nnef.proto_model_for_read(&mut &bytes[..]).map_err(tract)?;
    let typed = nnef.model_for_proto_model(&proto).map_err(tract)?;
    let stored = read_stored(&typed, path)?;

    let (preprocess, preprocess_source) = resolve::preprocess(path, options, || {
        Ok((stored.preprocess, stored.preprocess_source))
    })?;

    // The input fact was fixed at conversion: the spec must make that tensor.
    let dims = typed.input_fact(0).map_err(tract)?.shape.to_tvec();
    let want = preprocess.batch_shape(1);
    let same = dims.len() == want.len()
        && dims
            .iter()
            .zip(&want)
            .skip(1)
            .all(|(d, &w)| *d == TDim::from(w));
    if !same || preprocess.layout != stored.graph.layout {
        let shown: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
        return Err(Error::not_a_classifier(
            path,
            format!(
                "preprocessing ({preprocess_source:?}) makes {:?} {want:?} but the converted model \
                 takes {:?} [{}]; convert again with the new preprocessing",
                preprocess.layout,
                stored.graph.layout,
                shown.join(", ")
            ),
        ));
    }
    let found = Found {
        graph: stored.graph,
        metadata: stored.metadata,
        output_kind: stored.output_kind,
        raw_classes: stored.raw_classes,
        file_labels: Some((stored.labels, stored.labels_source)),
        preprocess: (preprocess, preprocess_source),
        typed,
    };
    Classifier::assemble(path, bytes.len(), options, found)
}

/// What `fennec convert` stored in the archive's [`PROPERTY`].
fn read_stored(typed: &TypedModel, path: &Path) -> Result<Stored> {
    let bad_property = |reason: String| Error::Metadata {
        path: path.into(),
        key: PROPERTY.into(),
        reason,
    };
    let property = typed.properties.get(PROPERTY).ok_or_else(|| {
        bad_property(
            "missing: not written by `fennec convert` (convert the ONNX file with it)".into(),
        )
    })?;
    let text = property
        .try_as_plain_ram()
        .and_then(|v| v.to_scalar::<String>().cloned())
        .map_err(|e| bad_property(chain(&e)))?;
    let json = hex::decode(text).map_err(|_| bad_property("not a hex string".into()))?;
    let stored: Stored = serde_json::from_slice(&json).map_err(|e| bad_property(e.to_string()))?;
    if stored.format != FORMAT {
        return Err(bad_property(format!(
            "format {} but this fennec reads format {FORMAT}: convert the model again",
            stored.format
        )));
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nnef_sniffing() {
        assert!(is_nnef(&[0x1f, 0x8b, 8, 0]));
        assert!(!is_nnef(&[0x08, 0x08, 0x12]));
    }
}
