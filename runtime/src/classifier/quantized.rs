//! Quantized ONNX graphs (QDQ, QOperator, dynamic): what fennec must know about
//! them before tract sees them, and what it reports about them.
//!
//! - [`work_around_tract`]: tract 0.23.9 folds `DequantizeLinear → Softmax →
//!   QuantizeLinear` into a 256-entry lookup table, as if Softmax worked on each
//!   value alone (its axes mapping is "natural", which tract's fold reads as
//!   element-wise). Every probability then comes out the same: the silent 10 %
//!   of issue 9. onnxruntime's `quantize_static` writes exactly that chain at
//!   the end of every QDQ classifier. fennec rewrites the `DequantizeLinear`
//!   before such an op as the float ops it stands for (`Cast`, `Sub`, `Mul`:
//!   bit-for-bit the same values), which tract does not fold. Reproducer and
//!   upstream status: docs/int8.md.
//! - [`precision`]: what a file's weights are stored as, and how many bytes
//!   they take, for `fennec info`.

use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType;

use super::Precision;

/// Ops that mix the values along an axis but keep the shape: tract's fold takes
/// them for element-wise ops.
const AXIS_MIXING: [&str; 3] = ["Softmax", "LogSoftmax", "Hardmax"];

/// Ops that only move values around: looked through between a
/// `DequantizeLinear` and an [`AXIS_MIXING`] op (tract removes the trivial ones).
const SHAPE_ONLY: [&str; 5] = ["Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"];

/// Rewrites every per-tensor `DequantizeLinear` whose value flows (through
/// shape-only ops) into a Softmax, LogSoftmax or Hardmax as
/// `Mul(Sub(Cast(x), Cast(zero_point)), scale)`; returns how many were rewritten.
pub fn work_around_tract(graph: &mut pb::GraphProto) -> usize {
    let mut rewritten = 0;
    let mut ix = 0;
    while ix < graph.node.len() {
        let node = &graph.node[ix];
        if is_default_domain(node)
            && node.op_type == "DequantizeLinear"
            && per_tensor(graph, node)
            && feeds_axis_mixing(graph, &node.output[0])
        {
            let float_ops = dequantize_as_float_ops(node);
            let added = float_ops.len();
            graph.node.splice(ix..=ix, float_ops);
            ix += added;
            rewritten += 1;
        } else {
            ix += 1;
        }
    }
    rewritten
}

fn is_default_domain(node: &pb::NodeProto) -> bool {
    node.domain.is_empty() || node.domain == "ai.onnx"
}

/// The nodes reading `name`.
fn consumers<'a>(
    graph: &'a pb::GraphProto,
    name: &'a str,
) -> impl Iterator<Item = &'a pb::NodeProto> {
    graph
        .node
        .iter()
        .filter(move |n| n.input.iter().any(|i| i == name))
}

/// Whether `name` is read by one node only, an [`AXIS_MIXING`] op, possibly after
/// a chain of single-reader shape-only ops; never when it is a graph output.
fn feeds_axis_mixing(graph: &pb::GraphProto, name: &str) -> bool {
    let mut name = name.to_string();
    for _ in 0..8 {
        if graph.output.iter().any(|o| o.name == name) {
            return false;
        }
        let readers: Vec<&pb::NodeProto> = consumers(graph, &name).collect();
        let [reader] = readers[..] else {
            return false;
        };
        if !is_default_domain(reader) {
            return false;
        }
        if AXIS_MIXING.contains(&reader.op_type.as_str()) {
            return true;
        }
        if !SHAPE_ONLY.contains(&reader.op_type.as_str()) || reader.input[0] != name {
            return false;
        }
        name = reader.output[0].clone();
    }
    false
}

/// Whether the scale (and zero point) of a `DequantizeLinear` are single values
/// held in initializers: the only case where plain broadcasting matches its `axis`.
fn per_tensor(graph: &pb::GraphProto, node: &pb::NodeProto) -> bool {
    let single = |name: &String| {
        graph
            .initializer
            .iter()
            .find(|t| &t.name == name)
            .is_some_and(|t| t.dims.iter().product::<i64>() == 1)
    };
    node.input.len() >= 2 && node.input[1..].iter().filter(|n| !n.is_empty()).all(single)
}

/// `(x - zero_point) * scale` in float ops, writing the node's output name.
fn dequantize_as_float_ops(node: &pb::NodeProto) -> Vec<pb::NodeProto> {
    let out = &node.output[0];
    let base = if node.name.is_empty() {
        out.clone()
    } else {
        node.name.clone()
    };
    let make = |suffix: &str, op: &str, inputs: Vec<String>, output: String, to_float: bool| {
        let attribute = if to_float {
            vec![pb::AttributeProto {
                name: "to".into(),
                r#type: pb::attribute_proto::AttributeType::Int as i32,
                i: DataType::Float as i64,
                ..Default::default()
            }]
        } else {
            vec![]
        };
        pb::NodeProto {
            name: format!("{base}.{suffix}"),
            op_type: op.into(),
            input: inputs,
            output: vec![output],
            attribute,
            ..Default::default()
        }
    };
    let x = format!("{out}.fennec_float");
    let scale = node.input[1].clone();
    let mut nodes = vec![make(
        "cast",
        "Cast",
        vec![node.input[0].clone()],
        x.clone(),
        true,
    )];
    match node.input.get(2).filter(|z| !z.is_empty()) {
        Some(zero_point) => {
            let zp = format!("{out}.fennec_zero_point");
            let centred = format!("{out}.fennec_centred");
            nodes.push(make(
                "cast_zp",
                "Cast",
                vec![zero_point.clone()],
                zp.clone(),
                true,
            ));
            nodes.push(make("sub", "Sub", vec![x, zp], centred.clone(), false));
            nodes.push(make("mul", "Mul", vec![centred, scale], out.clone(), false));
        }
        None => nodes.push(make("mul", "Mul", vec![x, scale], out.clone(), false)),
    }
    nodes
}

/// How the weights of `graph` are stored, from its operators and initializers.
pub(super) fn precision(graph: &pb::GraphProto) -> Precision {
    let has = |ops: &[&str]| graph.node.iter().any(|n| ops.contains(&n.op_type.as_str()));
    let weights_of = |t: DataType| {
        graph
            .initializer
            .iter()
            .any(|i| i.data_type == t as i32 && i.dims.iter().product::<i64>() > 1)
    };
    let kind = if has(&["QLinearConv", "QLinearMatMul", "QGemm"]) {
        "int8 (QOperator)"
    } else if has(&["ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"]) {
        "int8 (dynamic)"
    } else if has(&["DequantizeLinear"])
        && (weights_of(DataType::Int8) || weights_of(DataType::Uint8))
    {
        "int8 (QDQ)"
    } else if weights_of(DataType::Float16) {
        "f16"
    } else {
        "f32"
    };
    Precision {
        kind: kind.into(),
        weight_bytes: graph.initializer.iter().map(tensor_bytes).sum(),
    }
}

/// Stored size of one initializer's values.
fn tensor_bytes(t: &pb::TensorProto) -> u64 {
    if !t.raw_data.is_empty() {
        return t.raw_data.len() as u64;
    }
    let count = t.dims.iter().product::<i64>().max(0) as u64;
    let width = match DataType::try_from(t.data_type) {
        Ok(DataType::Int8 | DataType::Uint8 | DataType::Bool) => 1,
        Ok(DataType::Float16 | DataType::Bfloat16 | DataType::Int16 | DataType::Uint16) => 2,
        Ok(DataType::Double | DataType::Int64 | DataType::Uint64) => 8,
        _ => 4,
    };
    count * width
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
        pb::NodeProto {
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        }
    }

    fn scalar(name: &str, data_type: DataType) -> pb::TensorProto {
        pb::TensorProto {
            name: name.into(),
            dims: vec![],
            data_type: data_type as i32,
            raw_data: vec![0; 4],
            ..Default::default()
        }
    }

    /// `... Q → DQ → [Flatten] → Softmax → Q → DQ`: the DQ before the Softmax
    /// becomes float ops, the final pair stays.
    fn tail(with_flatten: bool) -> pb::GraphProto {
        let mut nodes = vec![
            node("QuantizeLinear", &["logits", "s", "z"], "q"),
            node("DequantizeLinear", &["q", "s", "z"], "dq"),
        ];
        let mut x = "dq";
        if with_flatten {
            nodes.push(node("Flatten", &["dq"], "flat"));
            x = "flat";
        }
        nodes.extend([
            node("Softmax", &[x], "p"),
            node("QuantizeLinear", &["p", "s", "z"], "pq"),
            node("DequantizeLinear", &["pq", "s", "z"], "out"),
        ]);
        pb::GraphProto {
            node: nodes,
            initializer: vec![scalar("s", DataType::Float), scalar("z", DataType::Uint8)],
            output: vec![pb::ValueInfoProto {
                name: "out".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn dequantize_before_softmax_becomes_float_ops() {
        for with_flatten in [false, true] {
            let mut g = tail(with_flatten);
            assert_eq!(work_around_tract(&mut g), 1);
            let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
            let mut want = vec!["QuantizeLinear", "Cast", "Cast", "Sub", "Mul"];
            if with_flatten {
                want.push("Flatten");
            }
            want.extend(["Softmax", "QuantizeLinear", "DequantizeLinear"]);
            assert_eq!(ops, want);
            let mul = g.node.iter().find(|n| n.op_type == "Mul").unwrap();
            assert_eq!(mul.output, ["dq"]);
            assert_eq!(mul.input[1], "s");
            // Nothing left to rewrite: idempotent.
            assert_eq!(work_around_tract(&mut g), 0);
        }
    }

    #[test]
    fn leaves_other_dequantize_nodes_alone() {
        let mut g = tail(false);
        // Per-axis scale: broadcasting would not follow `axis`.
        g.initializer[0].dims = vec![10];
        assert_eq!(work_around_tract(&mut g), 0);
        // A second reader of the DequantizeLinear output.
        let mut g = tail(false);
        g.node.push(node("Relu", &["dq"], "r"));
        assert_eq!(work_around_tract(&mut g), 0);
    }

    #[test]
    fn precision_from_ops_and_initializers() {
        let mut g = tail(false);
        g.initializer.push(pb::TensorProto {
            name: "w".into(),
            dims: vec![3, 4],
            data_type: DataType::Int8 as i32,
            raw_data: vec![0; 12],
            ..Default::default()
        });
        let p = precision(&g);
        assert_eq!(p.kind, "int8 (QDQ)");
        assert_eq!(p.weight_bytes, 4 + 4 + 12);
        g.initializer[2].data_type = DataType::Float as i32;
        g.initializer[2].raw_data = vec![0; 48];
        assert_eq!(precision(&g).kind, "f32");
        g.node.push(node("QLinearConv", &["a"], "b"));
        assert_eq!(precision(&g).kind, "int8 (QOperator)");
    }
}
