//! A quantized dense layer (+ bias) (+ ReLU) as one tract op on 8-bit tensors.
//!
//! Matches `DequantizeLinear → MatMul/Gemm [→ + bias] [→ Relu] → QuantizeLinear`
//! (after tract's declutter: an `EinSum` of the dequantized input with constant
//! weights). At batch 1 a dense layer is memory-bound: model_3's 96,800 x 128
//! layer is 12.4 MB as int8 codes against 49.6 MB in f32, and its rows are split
//! between every inference thread. At batch N each group of rows is read once
//! for all images.

use std::sync::Arc;

use rayon::prelude::*;
use tract_nnef::tract_core::internal::*;
use tract_nnef::tract_core::ops::einsum::EinSum;

#[cfg(target_arch = "x86_64")]
use super::avx2;
use super::portable;
use super::qdq::{Act, QParams, Requant, constant, dequantize_params, int8_codes, quantize_params};
use crate::kernels::dense::bias_and_relu;
use crate::kernels::rewrite::{Fusion, fused_op, inference_pool, sole_successor};
#[cfg(target_arch = "x86_64")]
use crate::kernels::simd::{Isa, isa};

/// Weight rows computed together: each load of the input serves this many rows.
const ROWS: usize = 4;
/// Smallest weight matrix worth threading.
const MIN_PARALLEL_WEIGHTS: usize = 1 << 16;

/// Whether node `id` (a `DequantizeLinear`) starts a chain [`QDense`] runs.
pub(in crate::kernels) fn plan_fusion(
    model: &TypedModel,
    id: usize,
) -> TractResult<Option<Fusion<QDense>>> {
    let Some(input_q) = dequantize_params(model, model.node(id))? else {
        return Ok(None);
    };
    let Some(node) = sole_successor(model, id)? else {
        return Ok(None);
    };
    let Some(einsum) = node.op_as::<EinSum>() else {
        return Ok(None);
    };
    if einsum.q_params.is_some()
        || einsum.operating_dt != f32::datum_type()
        || node.inputs.len() != 2
        || node.inputs[0] != OutletId::new(id, 0)
    {
        return Ok(None);
    }
    let Some(weights) = constant(model, node.inputs[1])? else {
        return Ok(None);
    };
    let dims = |shape: &ShapeFact| -> Option<Vec<usize>> {
        shape.iter().map(|d| d.to_usize().ok()).collect()
    };
    let (Some(x_shape), Some(out_shape)) = (
        dims(&model.outlet_fact(node.inputs[0])?.shape),
        dims(&node.outputs[0].fact.shape),
    ) else {
        return Ok(None);
    };
    if weights.datum_type() != f32::datum_type() {
        return Ok(None);
    }
    // Axes: the units `n` (weights and output), the contracted ones (input and
    // weights), at most one batch axis (input and output), and output axes of
    // size 1. The input must be `[batch?, contracted...]` in memory and the
    // units must come after the batch in the output.
    let (mut n, mut contracted, mut batch) = (None, vec![], None);
    for axis in einsum.axes.iter_all_axes() {
        match (
            &axis.inputs[0][..],
            &axis.inputs[1][..],
            &axis.outputs[0][..],
        ) {
            ([], [w], [o]) if n.is_none() => n = Some((*w, *o)),
            ([x], [w], []) => contracted.push((*x, *w)),
            ([x], [], [o]) if batch.is_none() => batch = Some((*x, *o)),
            ([], [], [o]) if out_shape[*o] == 1 => {}
            _ => return Ok(None),
        }
    }
    let Some((n_w, n_o)) = n else {
        return Ok(None);
    };
    if contracted.is_empty()
        || weights.rank() != contracted.len() + 1
        || x_shape.len() != contracted.len() + batch.is_some() as usize
        || batch.is_some_and(|(x, o)| x != 0 || o > n_o)
    {
        return Ok(None);
    }
    let images = batch.map_or(1, |(x, _)| x_shape[x]);
    let units = weights.shape()[n_w];
    if out_shape.iter().product::<usize>() != images * units {
        return Ok(None);
    }
    contracted.sort();
    let mut order = vec![n_w];
    order.extend(contracted.iter().map(|&(_, w)| w));
    let k = weights.len() / units;
    let rows = (*weights).clone().permute_axes(&order)?;
    let rows = rows.try_as_plain_ram()?;
    let Some((codes, scales)) = int8_codes(rows.as_slice::<f32>()?, k) else {
        return Ok(None);
    };

    let mut nodes = vec![id, node.id];
    // A bias only when the units are the product's last axis.
    let units_last = n_o + 1 == model.outlet_fact(OutletId::new(node.id, 0))?.rank();
    let (bias, relu) = bias_and_relu(model, &mut nodes, units, units_last)?;
    // Codes out when a QuantizeLinear follows, else floats (a last layer that
    // feeds a Softmax unquantized, as `fennec quantize` writes it).
    let last = *nodes.last().unwrap();
    let output_q = match sole_successor(model, last)? {
        Some(q_node) => quantize_params(q_node).map(|q| (q, q_node.id)),
        None => None,
    };
    let output = match output_q {
        Some((q, q_id)) => {
            nodes.push(q_id);
            Output::Codes(
                q.act,
                Requant::new(&input_q, &scales, bias.as_deref(), relu, &q),
            )
        }
        None => Output::Float {
            scale: scales.iter().map(|s| s * input_q.scale).collect(),
            bias: bias.unwrap_or_else(|| vec![0.0; units]),
            relu,
        },
    };
    let op = QDense {
        weights: Arc::new(codes),
        output: Arc::new(output),
        input: input_q,
        k,
        units,
        images,
        output_shape: out_shape,
    };
    Ok(Some(Fusion { op, nodes }))
}

/// What a [`QDense`] makes of its i32 sums.
#[derive(Debug, Clone, PartialEq)]
enum Output {
    /// Requantized codes of this type.
    Codes(Act, Requant),
    /// `relu(sum * scale + bias)` per unit, in f32.
    Float {
        scale: Vec<f32>,
        bias: Vec<f32>,
        relu: bool,
    },
}

/// `Q(relu(W DQ(x) + b))` (or the float before `Q`) on 8-bit codes, `W` as int8 codes in rows of `k`.
#[derive(Debug, Clone)]
pub struct QDense {
    /// `[units][k]` int8 codes.
    weights: Arc<Vec<i8>>,
    output: Arc<Output>,
    input: QParams,
    k: usize,
    units: usize,
    images: usize,
    output_shape: Vec<usize>,
}

impl PartialEq for QDense {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.weights, &other.weights)
            && Arc::ptr_eq(&self.output, &other.output)
            && self.input == other.input
            && self.output_shape == other.output_shape
    }
}

impl Eq for QDense {}

impl QDense {
    /// The sums of units `first..first + out.len() / images` for every image of
    /// `x` (centred codes, `[images][k]`) into `out`, `[unit][image]`.
    fn run_rows(&self, x: &[i16], first: usize, out: &mut [i32]) {
        let (k, n) = (self.k, self.images);
        for (i, chunk) in out.chunks_mut(ROWS * n).enumerate() {
            let row = first + i * ROWS;
            let rows = chunk.len() / n;
            let w = &self.weights[row * k..(row + rows) * k];
            for (image, x) in x.chunks_exact(k).enumerate() {
                let mut sums = [0i32; ROWS];
                if rows == ROWS {
                    sums = dot_rows::<ROWS>(w, k, x);
                } else {
                    for (s, w) in sums.iter_mut().zip(w.chunks_exact(k)) {
                        *s = dot_rows::<1>(w, k, x)[0];
                    }
                }
                for (j, s) in sums.iter().take(rows).enumerate() {
                    chunk[j * n + image] = *s;
                }
            }
        }
    }

    fn describe(&self) -> String {
        format!(
            "int8 dense {} -> {} units, batch {}, {} out",
            self.k,
            self.units,
            self.images,
            match &*self.output {
                Output::Codes(act, _) => format!("{:?}", act.datum_type()),
                Output::Float { .. } => "f32".into(),
            }
        )
    }

    /// The op on `images` input vectors of `k` codes.
    fn run(&self, input: &Tensor) -> TractResult<Tensor> {
        ensure!(
            input.datum_type() == self.input.act.datum_type()
                && input.len() == self.images * self.k,
            "FennecQDense expects {} x {} {:?} codes, got {:?} {:?}",
            self.images,
            self.k,
            self.input.act.datum_type(),
            input.datum_type(),
            input.shape()
        );
        let x = self.input.act.centred(input, self.input.zero_point)?;
        let n = self.images;
        let mut by_unit = vec![0i32; self.units * n];
        let pool = inference_pool().filter(|_| self.weights.len() >= MIN_PARALLEL_WEIGHTS);
        match pool {
            Some(pool) => {
                let threads = pool.current_num_threads().max(1);
                let per_part = self.units.div_ceil(ROWS).div_ceil(threads) * ROWS;
                pool.install(|| {
                    by_unit
                        .par_chunks_mut(per_part * n)
                        .enumerate()
                        .for_each(|(p, chunk)| self.run_rows(&x, p * per_part, chunk))
                })
            }
            None => self.run_rows(&x, 0, &mut by_unit),
        }
        // [unit][image] sums to [image][unit] outputs.
        let at = |i: usize| by_unit[(i % self.units) * n + i / self.units];
        let len = self.units * n;
        match &*self.output {
            Output::Codes(act, requant) => {
                let codes: Vec<i16> = (0..len)
                    .map(|i| requant.apply(i % self.units, at(i)))
                    .collect();
                act.tensor(&self.output_shape, &codes)
            }
            Output::Float { scale, bias, relu } => {
                let v: Vec<f32> = (0..len)
                    .map(|i| {
                        let u = i % self.units;
                        let v = at(i) as f32 * scale[u] + bias[u];
                        if *relu { v.max(0.0) } else { v }
                    })
                    .collect();
                Tensor::from_shape(&self.output_shape, &v)
            }
        }
    }
}

/// Dot products of the `R` rows of `w` with `x`, on the best kernel this CPU runs.
#[inline]
fn dot_rows<const R: usize>(w: &[i8], k: usize, x: &[i16]) -> [i32; R] {
    #[cfg(target_arch = "x86_64")]
    if isa() >= Isa::Avx2Fma {
        // SAFETY: the CPU has AVX2.
        return unsafe { avx2::dot_rows::<R>(w, k, x) };
    }
    portable::dot_rows::<R>(w, k, x)
}

fused_op!(QDense, "FennecQDense");

impl TypedOp for QDense {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let dt = match &*self.output {
            Output::Codes(act, _) => act.datum_type(),
            Output::Float { .. } => f32::datum_type(),
        };
        Ok(tvec!(dt.fact(&self.output_shape)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        Ok(tvec!((
            Cost::FMA(i32::datum_type()),
            (self.images * self.k * self.units).into()
        )))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dot_kernel_gives_the_exact_integer_sums() {
        for (seed, &k) in [1usize, 15, 16, 33, 1000].iter().enumerate() {
            let w: Vec<i8> = crate::kernels::testing::rnd(3 * k, seed as u64)
                .iter()
                .map(|v| (v * 255.0).round().clamp(-128.0, 127.0) as i8)
                .collect();
            let x: Vec<i16> = crate::kernels::testing::rnd(k, seed as u64 + 9)
                .iter()
                .map(|v| (v * 510.0).round() as i16)
                .collect();
            let want: Vec<i32> = w
                .chunks_exact(k)
                .map(|r| r.iter().zip(&x).map(|(&a, &b)| a as i32 * b as i32).sum())
                .collect();
            assert_eq!(portable::dot_rows::<3>(&w, k, &x).to_vec(), want, "k {k}");
            #[cfg(target_arch = "x86_64")]
            if Isa::Avx2Fma.supported() {
                // SAFETY: the CPU has AVX2.
                let got = unsafe { avx2::dot_rows::<3>(&w, k, &x) };
                assert_eq!(got.to_vec(), want, "avx2 k {k}");
            }
        }
    }
}
