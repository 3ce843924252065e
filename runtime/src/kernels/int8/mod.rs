//! Integer kernels for QDQ-quantized models (the format onnxruntime's
//! `quantize_static` writes and `fennec quantize` makes).
//!
//! tract 0.23.9 runs a QDQ model in float: it keeps every `QuantizeLinear` /
//! `DequantizeLinear` pair on the activations as two passes over the tensor,
//! runs each convolution and matrix product on dequantized f32 weights, and
//! recomputes the f32 copy of big weight matrices (model_3's 96,800 x 128 dense
//! layer) from the int8 codes on every run. This pass replaces the patterns
//!
//! - `[Q →] DQ → Conv [→ Relu] → Q [→ DQ → MaxPool → Q]` by a [`QConv`] (with
//!   the first `Q` when its input is a float tensor: the model's input)
//!   (`conv.rs`: the tract op; `packed.rs`: weights and row driver;
//!   `portable.rs`, `avx2.rs`: the kernels), and
//! - `DQ → MatMul/Gemm [→ + bias] [→ Relu] → Q` by a [`QDense`] (`dense.rs`),
//!
//! whose inputs and outputs are the quantized tensors themselves (u8 or i8):
//! sums of integer products in i32, exact, then one float multiply per value
//! to requantize (round half to even, saturate), as onnxruntime does. Weights
//! must be per-channel (or per-tensor) symmetric int8 codes: `qdq.rs` finds
//! them in the constants and checks that `code * scale` gives back every f32
//! weight bit for bit; anything else stays with tract (correctness first).
//!
//! Results equal tract's float path up to one quantization step where a value
//! sits on a rounding edge (the float path rounds its sums differently).

#[cfg(target_arch = "x86_64")]
mod avx2;
mod conv;
mod dense;
mod packed;
mod portable;
mod qdq;

pub use conv::QConv;
pub(super) use conv::plan_fusion as plan_conv;
pub use dense::QDense;
pub(super) use dense::plan_fusion as plan_dense;

// The tests build QDQ models as ONNX files, as onnxruntime's quantizer writes them.
#[cfg(all(test, feature = "onnx"))]
mod tests {
    use crate::kernels::testing::{rnd, run_onnx_both};
    use crate::metadata::ModelMetadata;
    use crate::onnx_writer::pb::tensor_proto::DataType;
    use crate::onnx_writer::{Attr, GraphBuilder};

    /// `x -> Q -> DQ -> Conv(DQ(int8 kernel)) -> Relu -> Q -> DQ -> MaxPool -> Q
    /// -> DQ -> Flatten -> Q -> DQ -> Gemm(DQ(int8 weights)) -> Q -> DQ -> y`,
    /// per-channel weight scales, u8 activations; without the last `Q -> DQ` when
    /// `!codes_out` (a float output, as `fennec quantize` leaves the last layer).
    fn model(input: [usize; 4], oc: usize, pads: i64, units: usize, codes_out: bool) -> Vec<u8> {
        let seed = 11;
        let [_, c, h, w] = input;
        let mut g = GraphBuilder::new("qdq");
        g.input("x", &[None, Some(c as i64), Some(h as i64), Some(w as i64)]);
        let mut n = 0;
        let mut qdq = |g: &mut GraphBuilder, x: &str, scale: f32, zp: i64| {
            n += 1;
            let s = g.weight(&format!("s{n}"), &[], &[scale]);
            let z = g.int_tensor(&format!("z{n}"), &[], DataType::Uint8, &[zp]);
            let q = g.node("QuantizeLinear", &[x, &s, &z], vec![], None);
            g.node("DequantizeLinear", &[&q, &s, &z], vec![], None)
        };
        // Per-channel symmetric int8 weights, as `DequantizeLinear` on axis 0.
        let weights = |g: &mut GraphBuilder, name: &str, dims: &[i64], seed: u64| {
            let rows = dims[0] as usize;
            let len = dims.iter().product::<i64>() as usize;
            let mut codes: Vec<i64> = rnd(len, seed)
                .iter()
                .map(|v| (v * 254.0).round() as i64)
                .collect();
            // Symmetric codes reach ±127 in every channel, as quantize_static's do.
            for row in codes.chunks_mut(len / rows) {
                row[0] = 127;
            }
            let scales: Vec<f32> = (0..rows).map(|r| 0.002 + 0.0007 * r as f32).collect();
            let q = g.int_tensor(&format!("{name}_q"), dims, DataType::Int8, &codes);
            let s = g.weight(&format!("{name}_s"), &[rows as i64], &scales);
            let z = g.int_tensor(
                &format!("{name}_z"),
                &[rows as i64],
                DataType::Int8,
                &vec![0; rows],
            );
            g.node(
                "DequantizeLinear",
                &[&q, &s, &z],
                vec![("axis", Attr::Int(0))],
                None,
            )
        };
        let x = qdq(&mut g, "x", 0.004, 128);
        let k = weights(&mut g, "k", &[oc as i64, c as i64, 3, 3], seed);
        let b = g.weight("b", &[oc as i64], &rnd(oc, seed + 1));
        let attrs = vec![
            ("kernel_shape", Attr::Ints(vec![3, 3])),
            ("pads", Attr::Ints(vec![pads; 4])),
        ];
        let y = g.node("Conv", &[&x, &k, &b], attrs, None);
        let y = g.node("Relu", &[&y], vec![], None);
        let y = qdq(&mut g, &y, 0.01, 0);
        let attrs = vec![
            ("kernel_shape", Attr::Ints(vec![2, 2])),
            ("strides", Attr::Ints(vec![2, 2])),
        ];
        let y = g.node("MaxPool", &[&y], attrs, None);
        let y = qdq(&mut g, &y, 0.01, 0);
        let y = g.node("Flatten", &[&y], vec![], None);
        let y = qdq(&mut g, &y, 0.01, 0);
        let (oh, ow) = (h + 2 * pads as usize - 2, w + 2 * pads as usize - 2);
        let k_dense = (oc * (oh / 2) * (ow / 2)) as i64;
        let wd = weights(&mut g, "w", &[units as i64, k_dense], seed + 2);
        let bd = g.weight("bd", &[units as i64], &rnd(units, seed + 3));
        let y = g.node(
            "Gemm",
            &[&y, &wd, &bd],
            vec![("transB", Attr::Int(1))],
            None,
        );
        let y = if codes_out {
            qdq(&mut g, &y, 0.05, 128)
        } else {
            y
        };
        g.node("Identity", &[&y], vec![], Some("y"));
        g.output("y", &[None, None]);
        g.finish(&ModelMetadata::default())
    }

    /// The rewrite puts in both int8 ops, and its answers equal tract's float
    /// path but where a value sits on a rounding edge: one output step at most.
    fn check(input: [usize; 4], oc: usize, pads: i64, units: usize, codes_out: bool) {
        for threads in [1, 2] {
            let bytes = model(input, oc, pads, units, codes_out);
            let (want, got, replaced) = run_onnx_both(&bytes, &input, 5, threads);
            assert_eq!(replaced, 2, "int8 ops put in");
            assert_eq!(want.len(), input[0] * units);
            let mut differ = 0;
            for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                // One output step, or float rounding for a float output.
                let tolerance = if codes_out {
                    0.05 * 1.001
                } else {
                    1e-4 * (1.0 + w.abs())
                };
                assert!((w - g).abs() <= tolerance, "at {i}: {g} vs tract {w}");
                differ += (w != g && codes_out) as usize;
            }
            assert!(
                differ * 10 <= want.len(),
                "{differ} of {} differ",
                want.len()
            );
            assert!(
                want.iter().any(|&w| w != want[0]),
                "degenerate model: one value everywhere"
            );
        }
    }

    #[test]
    fn qdq_conv_pool_dense_runs_on_integer_kernels() {
        check([1, 3, 12, 17], 20, 1, 10, true);
    }

    #[test]
    fn qdq_one_channel_valid_padding_batch_of_three() {
        check([3, 1, 9, 8], 5, 0, 33, true);
    }

    #[test]
    fn qdq_dense_with_a_float_output() {
        check([2, 4, 7, 7], 16, 1, 3, false);
    }
}
