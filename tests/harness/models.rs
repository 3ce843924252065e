//! Tiny ONNX classifiers built in code, whose answers on the generated images are
//! known: a "which colour dominates" model in every layout and output variant the
//! runtime supports, and a model that is not an image classifier at all.

use std::path::{Path, PathBuf};

use fennec_runtime::metadata::ModelMetadata;
use fennec_runtime::onnx_writer::{Attr, GraphBuilder};
use fennec_runtime::{ColorMode, Layout, Preprocess};

use crate::images::COLORS;

/// Options for [`color_model`].
#[derive(Debug, Clone)]
pub struct TinyModel {
    pub layout: Layout,
    /// End in Softmax (else raw logits).
    pub softmax: bool,
    /// Write fennec metadata (labels, preprocessing).
    pub metadata: bool,
    /// Fixed batch size, `None` = dynamic.
    pub batch: Option<i64>,
    pub size: i64,
}

impl TinyModel {
    /// NHWC input (the graph transposes it first).
    pub fn nhwc(self) -> Self {
        TinyModel {
            layout: Layout::Nhwc,
            ..self
        }
    }
    /// Raw logits: no final Softmax.
    pub fn logits(self) -> Self {
        TinyModel {
            softmax: false,
            ..self
        }
    }
    /// A fixed batch size instead of a dynamic one.
    pub fn fixed_batch(self, n: i64) -> Self {
        TinyModel {
            batch: Some(n),
            ..self
        }
    }
    /// No fennec metadata (labels, preprocessing).
    pub fn bare(self) -> Self {
        TinyModel {
            metadata: false,
            ..self
        }
    }
}

impl Default for TinyModel {
    fn default() -> Self {
        TinyModel {
            layout: Layout::Nchw,
            softmax: true,
            metadata: true,
            batch: None,
            size: 8,
        }
    }
}

/// A 3-class "which colour dominates" classifier (labels blue, green, red, the
/// sorted folder names): global average pool → Gemm → (Softmax). Its answers on
/// [`color_image`]s are known, so end-to-end tests can check real predictions.
pub fn color_model(o: &TinyModel) -> Vec<u8> {
    let s = o.size;
    let mut g = GraphBuilder::new("color");
    let nchw = [o.batch, Some(3), Some(s), Some(s)];
    let nhwc = [o.batch, Some(s), Some(s), Some(3)];
    let mut x = "image".to_string();
    match o.layout {
        Layout::Nchw => g.input("image", &nchw),
        Layout::Nhwc => {
            g.input("image", &nhwc);
            x = g.node(
                "Transpose",
                &["image"],
                vec![("perm", Attr::Ints(vec![0, 3, 1, 2]))],
                None,
            );
        }
    }
    let flat = pool_and_flatten(&mut g, &x, None);
    // Class order blue, green, red: logits = 20 * (channel mean) - 10 * (sum of means).
    let w = g.weight(
        "w",
        &[3, 3],
        &[-10.0, -10.0, 10.0, -10.0, 10.0, -10.0, 10.0, -10.0, -10.0],
    );
    let b = g.weight("b", &[3], &[0.0, 0.0, 0.0]);
    let out_name = "scores";
    let logits = g.node(
        "Gemm",
        &[&flat, &w, &b],
        vec![],
        (!o.softmax).then_some(out_name),
    );
    if o.softmax {
        g.node(
            "Softmax",
            &[&logits],
            vec![("axis", Attr::Int(1))],
            Some(out_name),
        );
    }
    g.output(out_name, &[o.batch, Some(3)]);
    let md = if o.metadata {
        let mut p = Preprocess::keras(s as u32, s as u32, ColorMode::Rgb);
        p.layout = o.layout;
        p.filter = fennec_runtime::ResizeFilter::Bilinear;
        ModelMetadata {
            labels: Some(COLORS.iter().map(|(n, _)| n.to_string()).collect()),
            preprocess: Some(p),
            model_name: Some("tiny-color".into()),
            ..Default::default()
        }
    } else {
        ModelMetadata::default()
    };
    g.finish(&md)
}

/// A model whose input is not an image (rank 2).
pub fn vector_model() -> Vec<u8> {
    let mut g = GraphBuilder::new("vector");
    g.input("x", &[None, Some(10)]);
    let w = g.weight("w", &[10, 2], &[0.1; 20]);
    let b = g.weight("b", &[2], &[0.0; 2]);
    g.node("Gemm", &["x", &w, &b], vec![], Some("y"));
    g.output("y", &[None, Some(2)]);
    g.finish(&ModelMetadata::default())
}

/// A valid ONNX file that tract panics on while loading: a convolution with
/// strides [0, 0] (tract divides by the stride when it infers the output shape).
/// fennec must still answer with one error line naming the file, and exit 1.
pub fn stride0_model() -> Vec<u8> {
    let mut g = GraphBuilder::new("stride0");
    g.input("image", &[None, Some(3), Some(8), Some(8)]);
    let w = g.weight("w", &[2, 3, 3, 3], &[0.1; 54]);
    let attrs = vec![
        ("kernel_shape", Attr::Ints(vec![3, 3])),
        ("strides", Attr::Ints(vec![0, 0])),
    ];
    let y = g.node("Conv", &["image", &w], attrs, None);
    let y = g.node("Flatten", &[&y], vec![], None);
    g.node(
        "Softmax",
        &[&y],
        vec![("axis", Attr::Int(1))],
        Some("probs"),
    );
    g.output("probs", &[None, Some(2)]);
    g.finish(&ModelMetadata::default())
}

/// Writes [`color_model`]`(o)` to `dir/name` and returns its path.
pub fn color_model_file(dir: &Path, name: &str, o: &TinyModel) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, color_model(o)).unwrap();
    path
}

/// GlobalAveragePool then Flatten (axis 1) of `x`: the head of a classifier;
/// the Flatten's output is named `out` if given. Returns its name.
pub fn pool_and_flatten(g: &mut GraphBuilder, x: &str, out: Option<&str>) -> String {
    let pooled = g.node("GlobalAveragePool", &[x], vec![], None);
    g.node("Flatten", &[&pooled], vec![("axis", Attr::Int(1))], out)
}
