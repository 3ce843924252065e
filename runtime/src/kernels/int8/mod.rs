//! Integer kernels for QDQ-quantized models (the format onnxruntime's
//! `quantize_static` writes and `fennec quantize` makes).
//!
//! tract 0.23.9 runs a QDQ model in float: it keeps every `QuantizeLinear` /
//! `DequantizeLinear` pair on the activations as two passes over the tensor,
//! runs each convolution and matrix product on dequantized f32 weights, and
//! recomputes the f32 copy of big weight matrices (model_3's 96,800 x 128 dense
//! layer) from the int8 codes on every run. This pass replaces the patterns
//!
//! - `DQ → Conv [→ Relu] → Q [→ DQ → MaxPool → Q]` by a [`QConv`]
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
