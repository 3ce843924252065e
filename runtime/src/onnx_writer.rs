//! Writing ONNX files: a small builder over the protobuf types tract itself reads.
//!
//! The trainer's exporter and the tests' fixture models both build graphs with it,
//! so there is one way to spell a node, an initializer or the fennec metadata.
//! Opset 13 operators, IR version 8; graph inputs and outputs are float32, weights
//! float32 or float16 (followed by a `Cast`, see [`GraphBuilder::weight_f16`]).

use prost::Message;

use pb::attribute_proto::AttributeType;
use pb::tensor_proto::DataType;
pub use tract_onnx::pb;

use crate::metadata::{ModelMetadata, PRODUCER};

/// ONNX element type code of float32, for `Cast`'s `to` attribute.
pub const FLOAT: i64 = DataType::Float as i64;

/// The default-domain opset written by [`GraphBuilder::finish`].
pub const OPSET: i64 = 13;
const IR_VERSION: i64 = 8;

/// One attribute value of a node.
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Str(String),
}

/// Accumulates nodes and weights; [`GraphBuilder::finish`] makes the model.
#[derive(Default)]
pub struct GraphBuilder {
    graph: pb::GraphProto,
    counter: usize,
}

impl GraphBuilder {
    pub fn new(name: &str) -> Self {
        GraphBuilder {
            graph: pb::GraphProto {
                name: name.into(),
                ..Default::default()
            },
            counter: 0,
        }
    }

    /// Declares a float32 graph input; `None` dims are symbolic (named `N` for the
    /// batch, `d<i>` elsewhere).
    pub fn input(&mut self, name: &str, dims: &[Option<i64>]) {
        self.graph.input.push(value_info(name, dims));
    }

    /// Declares a float32 graph output.
    pub fn output(&mut self, name: &str, dims: &[Option<i64>]) {
        self.graph.output.push(value_info(name, dims));
    }

    /// Adds a float32 weight tensor; returns its name.
    pub fn weight(&mut self, name: &str, dims: &[i64], values: &[f32]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.float_initializer(name, dims, values.len(), DataType::Float, raw)
    }

    /// Adds a weight tensor stored as float16 (IEEE half, round-to-nearest-even) and
    /// returns its name. ONNX operators take one element type for all inputs, so the
    /// caller converts it back with a `Cast` node (`to` = [`FLOAT`]); tract and
    /// onnxruntime fold that cast into a float32 constant when they load the file.
    pub fn weight_f16(&mut self, name: &str, dims: &[i64], values: &[f32]) -> String {
        use tract_onnx::prelude::f16;
        let raw = values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_bits().to_le_bytes())
            .collect();
        self.float_initializer(name, dims, values.len(), DataType::Float16, raw)
    }

    /// Adds `len` floating-point values, already encoded little-endian in `raw`.
    fn float_initializer(
        &mut self,
        name: &str,
        dims: &[i64],
        len: usize,
        data_type: DataType,
        raw: Vec<u8>,
    ) -> String {
        assert_eq!(
            dims.iter().product::<i64>() as usize,
            len,
            "{name}: dims vs values"
        );
        self.graph.initializer.push(pb::TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: data_type as i32,
            raw_data: raw,
            ..Default::default()
        });
        name.into()
    }

    /// Adds an int64 constant tensor (shapes for Reshape, pads, axes); returns its name.
    pub fn int_weight(&mut self, name: &str, values: &[i64]) -> String {
        self.graph.initializer.push(pb::TensorProto {
            name: name.into(),
            dims: vec![values.len() as i64],
            data_type: DataType::Int64 as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name.into()
    }

    /// Adds an 8- or 32-bit integer tensor (`Int8`, `Uint8`, `Int32`: the codes,
    /// zero points and biases of a QDQ model); returns its name.
    pub fn int_tensor(
        &mut self,
        name: &str,
        dims: &[i64],
        data_type: DataType,
        values: &[i64],
    ) -> String {
        assert_eq!(
            dims.iter().product::<i64>() as usize,
            values.len(),
            "{name}: dims vs values"
        );
        let raw = match data_type {
            DataType::Int8 => values.iter().map(|&v| v as i8 as u8).collect(),
            DataType::Uint8 => values.iter().map(|&v| v as u8).collect(),
            DataType::Int32 => values
                .iter()
                .flat_map(|&v| (v as i32).to_le_bytes())
                .collect(),
            other => panic!("{name}: int_tensor of {other:?}"),
        };
        self.graph.initializer.push(pb::TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: data_type as i32,
            raw_data: raw,
            ..Default::default()
        });
        name.into()
    }

    /// Adds a node with one output and returns that output's name. `output` names
    /// it explicitly (for graph outputs); otherwise a unique name is made.
    pub fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<(&str, Attr)>,
        output: Option<&str>,
    ) -> String {
        self.counter += 1;
        let out = output.map_or_else(
            || format!("{}_{}", op.to_lowercase(), self.counter),
            str::to_string,
        );
        self.graph.node.push(pb::NodeProto {
            name: format!("{op}_{}", self.counter),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            attribute: attrs.into_iter().map(|(n, a)| attribute(n, a)).collect(),
            ..Default::default()
        });
        out
    }

    /// The raw bytes of every initializer (weights and constants) in graph order, for hashing.
    pub fn weights(&self) -> impl Iterator<Item = &[u8]> {
        self.graph.initializer.iter().map(|t| t.raw_data.as_slice())
    }

    /// The model with fennec's producer name and metadata, serialised.
    pub fn finish(self, metadata: &ModelMetadata) -> Vec<u8> {
        let model = pb::ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: PRODUCER.into(),
            producer_version: crate::VERSION.into(),
            graph: Some(self.graph),
            metadata_props: metadata
                .to_props()
                .into_iter()
                .map(|(key, value)| pb::StringStringEntryProto { key, value })
                .collect(),
            ..Default::default()
        };
        model.encode_to_vec()
    }
}

fn value_info(name: &str, dims: &[Option<i64>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    let dim = dims
        .iter()
        .enumerate()
        .map(|(i, d)| Dimension {
            value: Some(match d {
                Some(v) => Value::DimValue(*v),
                None if i == 0 => Value::DimParam("N".into()),
                None => Value::DimParam(format!("d{i}")),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn attribute(name: &str, a: Attr) -> pb::AttributeProto {
    let mut p = pb::AttributeProto {
        name: name.into(),
        ..Default::default()
    };
    match a {
        Attr::Int(i) => {
            p.i = i;
            p.r#type = AttributeType::Int as i32;
        }
        Attr::Ints(v) => {
            p.ints = v;
            p.r#type = AttributeType::Ints as i32;
        }
        Attr::Float(f) => {
            p.f = f;
            p.r#type = AttributeType::Float as i32;
        }
        Attr::Str(s) => {
            p.s = s.into_bytes();
            p.r#type = AttributeType::String as i32;
        }
    }
    p
}
