//! A batch-1 dense layer that uses every inference thread.
//!
//! At batch 1 a dense layer is a matrix-vector product: model_3's first one reads
//! a 96,800 x 128 weight matrix (49.6 MB) per image, so its time is memory
//! bandwidth. tract runs it on one thread whatever `--threads` says (its
//! threading gate counts panels, and 128 outputs make too few), while one core
//! here streams ~25 GB/s and two ~48 GB/s. This pass replaces such a product
//! (an `EinSum` of the image's features with constant weights, batch axis 1),
//! with the bias `Add` and ReLU that may follow it, by one [`FusedDense`] node
//! whose output rows are split between the executor's threads.
//!
//! Plans are made per batch size (see `Classifier::plan`), so only batch-1 plans
//! get this node; bigger batches stay with tract's matrix product, which reuses
//! each weight it loads across the batch.

use std::sync::Arc;

use rayon::prelude::*;
use tract_nnef::tract_core::internal::*;
use tract_nnef::tract_core::ops::binary::TypedBinOp;
use tract_nnef::tract_core::ops::einsum::EinSum;
use tract_nnef::tract_core::ops::math::Add;

use super::rewrite::{Fusion, fused_op, inference_pool, is_relu, other_input, sole_successor};
use super::simd::simd_fn;

/// Weight rows computed together: each load of the input vector serves this many rows.
const ROWS: usize = 4;
/// Accumulator lanes per row (a multiple of every SIMD width in use).
const LANES: usize = 16;
/// Smallest weight matrix worth threading: below it, waking a thread costs more
/// than the rows it would take.
const MIN_PARALLEL_WEIGHTS: usize = 1 << 16;

/// Whether node `id` is a batch-1 matrix-vector product [`FusedDense`] runs, and
/// the op with the nodes it replaces (the product, then the bias add and ReLU if fused).
pub(super) fn plan_fusion(
    model: &TypedModel,
    id: usize,
) -> TractResult<Option<Fusion<FusedDense>>> {
    let node = model.node(id);
    let Some(einsum) = node.op_as::<EinSum>() else {
        return Ok(None);
    };
    if einsum.q_params.is_some()
        || einsum.operating_dt != f32::datum_type()
        || node.inputs.len() != 2
    {
        return Ok(None);
    }
    let x_fact = model.outlet_fact(node.inputs[0])?;
    let Some(weights) = model.outlet_fact(node.inputs[1])?.konst.clone() else {
        return Ok(None);
    };
    let out_fact = &node.outputs[0].fact;
    if x_fact.datum_type != f32::datum_type() || weights.datum_type() != f32::datum_type() {
        return Ok(None);
    }
    let Some(output_shape) = out_fact
        .shape
        .iter()
        .map(|d| d.to_usize().ok())
        .collect::<Option<Vec<usize>>>()
    else {
        return Ok(None);
    };
    // Axes: the units `n` (in the weights and the output), the contracted ones (in
    // both inputs), and batch axes of size 1 (in the input, the output or both;
    // tract drops them once the batch is known to be 1).
    let is_one = |dims: &[usize], shape: &ShapeFact| dims.iter().all(|&a| shape[a] == 1.to_dim());
    let (mut n, mut contracted) = (None, vec![]);
    for axis in einsum.axes.iter_all_axes() {
        match (
            &axis.inputs[0][..],
            &axis.inputs[1][..],
            &axis.outputs[0][..],
        ) {
            ([], [w], [_]) if n.is_none() => n = Some(*w),
            ([x], [w], []) => contracted.push((*x, *w)),
            (x, [], o)
                if x.len() <= 1
                    && o.len() <= 1
                    && is_one(x, &x_fact.shape)
                    && is_one(o, &out_fact.shape) => {}
            _ => return Ok(None),
        }
    }
    let Some(n) = n else {
        return Ok(None);
    };
    if contracted.is_empty() || output_shape.iter().product::<usize>() != weights.shape()[n] {
        return Ok(None);
    }
    // The input's memory is its contracted axes in its own order (the batch axis
    // has size 1): lay the weights out as [units, those axes in that order].
    contracted.sort();
    let mut order = vec![n];
    order.extend(contracted.iter().map(|&(_, w)| w));
    let units = weights.shape()[n];
    let k = weights.len() / units;
    let rows = (*weights).clone().permute_axes(&order)?;
    let rows = rows.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();

    let mut nodes = vec![id];
    let (bias, relu) = bias_and_relu(model, &mut nodes, units, true)?;
    let op = FusedDense {
        weights: Arc::new(rows),
        bias: bias.map(Arc::new),
        k,
        units,
        relu,
        output_shape,
    };
    Ok(Some(Fusion { op, nodes }))
}

/// The `+ bias` and ReLU nodes (each optional, in that order) after the matrix
/// product that `nodes` ends with, shared with the int8 dense op: appends the ones
/// found to `nodes`; a bias only when `bias_allowed`.
pub(in crate::kernels) fn bias_and_relu(
    model: &TypedModel,
    nodes: &mut Vec<usize>,
    units: usize,
    bias_allowed: bool,
) -> TractResult<(Option<Vec<f32>>, bool)> {
    let product = *nodes.last().unwrap();
    let mut bias = None;
    if bias_allowed
        && let Some(next) = sole_successor(model, product)?
        && let Some(b) = bias_of(model, next, OutletId::new(product, 0), units)?
    {
        bias = Some(b);
        nodes.push(next.id);
    }
    let mut relu = false;
    let last = *nodes.last().unwrap();
    if let Some(next) = sole_successor(model, last)?
        && is_relu(model, next, OutletId::new(last, 0))?
    {
        relu = true;
        nodes.push(next.id);
    }
    Ok((bias, relu))
}

/// The bias when `node` adds a constant with one value per unit to `x`, in the
/// shape of `x`, the units along its last axis.
fn bias_of(
    model: &TypedModel,
    node: &TypedNode,
    x: OutletId,
    units: usize,
) -> TractResult<Option<Vec<f32>>> {
    let (Some(bin), Some(other)) = (node.op_as::<TypedBinOp>(), other_input(node, x)) else {
        return Ok(None);
    };
    let x_fact = model.outlet_fact(x)?;
    let Some(b) = model.outlet_fact(other)?.konst.clone() else {
        return Ok(None);
    };
    if !bin.0.is::<Add>()
        || node.outputs[0].fact.shape != x_fact.shape
        || b.datum_type() != f32::datum_type()
        || b.len() != units
        || b.rank() > x_fact.rank()
        || b.shape().last() != Some(&units)
    {
        return Ok(None);
    }
    Ok(Some(b.try_as_plain_ram()?.as_slice::<f32>()?.to_vec()))
}

/// `relu(W x + b)` for one input vector, `W` in rows of `k` weights.
///
/// The rows stay as they are: reading `ROWS` rows side by side (four streams)
/// measured faster than interleaving them into one stream, and faster than 2 or
/// 8 rows at a time.
#[derive(Debug, Clone)]
pub struct FusedDense {
    weights: Arc<Vec<f32>>,
    bias: Option<Arc<Vec<f32>>>,
    k: usize,
    units: usize,
    relu: bool,
    output_shape: Vec<usize>,
}

impl PartialEq for FusedDense {
    fn eq(&self, other: &Self) -> bool {
        // Same weights by identity (comparing floats would make NaN weights unequal).
        Arc::ptr_eq(&self.weights, &other.weights)
            && match (&self.bias, &other.bias) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (a, b) => a.is_none() && b.is_none(),
            }
            && self.relu == other.relu
            && self.output_shape == other.output_shape
    }
}

impl Eq for FusedDense {}

impl FusedDense {
    /// Units `first..first + out.len()` into `out`.
    fn run_rows(&self, x: &[f32], first: usize, out: &mut [f32]) {
        let k = self.k;
        for (i, chunk) in out.chunks_mut(ROWS).enumerate() {
            let row = first + i * ROWS;
            let w = &self.weights[row * k..(row + chunk.len()) * k];
            let mut sums = [0.0f32; ROWS];
            if chunk.len() == ROWS {
                sums = dot_rows::<ROWS>(w, k, x);
            } else {
                for (s, w) in sums.iter_mut().zip(w.chunks_exact(k)) {
                    *s = dot_rows::<1>(w, k, x)[0];
                }
            }
            for (j, (o, sum)) in chunk.iter_mut().zip(sums).enumerate() {
                let v = sum + self.bias.as_ref().map_or(0.0, |b| b[row + j]);
                *o = if self.relu { v.max(0.0) } else { v };
            }
        }
    }

    /// The one line `fennec bench --profile` shows for the node.
    fn describe(&self) -> String {
        let mut s = format!("{} -> {} units, batch 1", self.k, self.units);
        if self.bias.is_some() {
            s += ", bias";
        }
        if self.relu {
            s += ", relu";
        }
        s
    }

    /// The op on one input vector of `k` values.
    fn run(&self, input: &Tensor) -> TractResult<Tensor> {
        ensure!(
            input.datum_type() == f32::datum_type() && input.len() == self.k,
            "FennecDense expects {} f32 values, got {:?} {:?}",
            self.k,
            input.datum_type(),
            input.shape()
        );
        let input = input.try_as_plain_ram()?;
        let x = input.as_slice::<f32>()?;
        let mut output = Tensor::zero::<f32>(&self.output_shape)?;
        let mut view = output.try_as_plain_ram_mut()?;
        let out = view.as_slice_mut::<f32>()?;
        let pool = inference_pool().filter(|_| self.weights.len() >= MIN_PARALLEL_WEIGHTS);
        match pool {
            Some(pool) => {
                // Whole blocks of ROWS per part, one part per thread.
                let threads = pool.current_num_threads().max(1);
                let per_part = self.units.div_ceil(ROWS).div_ceil(threads) * ROWS;
                pool.install(|| {
                    out.par_chunks_mut(per_part)
                        .enumerate()
                        .for_each(|(p, chunk)| self.run_rows(x, p * per_part, chunk))
                })
            }
            None => self.run_rows(x, 0, out),
        }
        Ok(output)
    }
}

simd_fn! {
    /// Dot products of the `R` rows of `w` (each `k` long) with `x`.
    ///
    /// Plain loops over fixed-size lane arrays, which LLVM turns into SIMD code for
    /// whatever the version is compiled for (the slices are cut to one length first
    /// so that no bounds check is left in the loop). Sums run in a fixed order, so
    /// results do not depend on the thread count.
    fn dot_rows<const R: usize>(w: &[f32], k: usize, x: &[f32]) -> [f32; R] {
        let full = k / LANES * LANES;
        let xs = x[..full].as_chunks::<LANES>().0;
        let rows: [&[[f32; LANES]]; R] =
            std::array::from_fn(|j| &w[j * k..j * k + full].as_chunks::<LANES>().0[..xs.len()]);
        let mut acc = [[0.0f32; LANES]; R];
        // Indexed loops on purpose: written with iterators (zip over the rows), LLVM
        // keeps the accumulators in memory and the product runs 2x slower.
        #[allow(clippy::needless_range_loop)]
        for i in 0..xs.len() {
            let xv = xs[i];
            for j in 0..R {
                let wv = rows[j][i];
                for l in 0..LANES {
                    acc[j][l] += wv[l] * xv[l];
                }
            }
        }
        std::array::from_fn(|j| {
            let tail: f32 = (full..k).map(|i| w[j * k + i] * x[i]).sum();
            acc[j].iter().sum::<f32>() + tail
        })
    }
}

fused_op!(FusedDense, "FennecDense");

impl TypedOp for FusedDense {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&self.output_shape)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        Ok(tvec!((
            Cost::FMA(f32::datum_type()),
            (self.k * self.units).into()
        )))
    }

    as_op!();
}

#[cfg(all(test, feature = "onnx"))]
mod tests {
    use super::{ROWS, dot_rows};
    use crate::kernels::testing::{assert_rewrite_matches_tract, rnd};
    use crate::metadata::ModelMetadata;
    use crate::onnx_writer::{Attr, GraphBuilder};

    /// `x [n, 4, 5, 6] -> Flatten -> Gemm (transB, bias) [-> Relu] -> Gemm [2 units]`:
    /// a PyTorch-style classifier head.
    fn torch_head(relu: bool, units: usize) -> Vec<u8> {
        let mut g = GraphBuilder::new("t");
        g.input("x", &[None, Some(4), Some(5), Some(6)]);
        let w = g.weight("w", &[units as i64, 120], &rnd(units * 120, 1));
        let b = g.weight("b", &[units as i64], &rnd(units, 2));
        let w2 = g.weight("w2", &[2, units as i64], &rnd(2 * units, 3));
        let flat = g.node("Flatten", &["x"], vec![("axis", Attr::Int(1))], None);
        let mut y = g.node(
            "Gemm",
            &[&flat, &w, &b],
            vec![("transB", Attr::Int(1))],
            None,
        );
        if relu {
            y = g.node("Relu", &[&y], vec![], None);
        }
        g.node(
            "Gemm",
            &[&y, &w2],
            vec![("transB", Attr::Int(1))],
            Some("y"),
        );
        g.output("y", &[None, Some(2)]);
        g.finish(&ModelMetadata::default())
    }

    /// An `Einsum` whose weights hold the contracted axes in another order than
    /// the input (`x [1, h, w, c]`, weights `[c, n, h, w]`), plus a bias.
    fn permuted_einsum() -> Vec<u8> {
        let mut g = GraphBuilder::new("t");
        g.input("x", &[Some(1), Some(3), Some(7), Some(5)]);
        let w = g.weight("w", &[5, 9, 3, 7], &rnd(5 * 9 * 3 * 7, 4));
        let b = g.weight("b", &[9], &rnd(9, 5));
        let e = g.node(
            "Einsum",
            &["x", &w],
            vec![("equation", Attr::Str("bhwc,cnhw->bn".into()))],
            None,
        );
        g.node("Add", &[&e, &b], vec![], Some("y"));
        g.output("y", &[Some(1), Some(9)]);
        g.finish(&ModelMetadata::default())
    }

    fn check(bytes: &[u8], input: &[usize], fused: usize) {
        assert_rewrite_matches_tract(bytes, input, 11, &[1, 2, 3], fused);
    }

    #[test]
    fn batch_one_heads_match_tract() {
        // 37 units: blocks of ROWS with a short last one, split unevenly between threads.
        check(&torch_head(true, 37), &[1, 4, 5, 6], 2);
        check(&torch_head(false, 8), &[1, 4, 5, 6], 2);
    }

    #[test]
    fn contracted_axes_in_another_order() {
        check(&permuted_einsum(), &[1, 3, 7, 5], 1);
    }

    #[test]
    fn portable_and_simd_dot_products_agree_with_a_plain_sum() {
        // Both code paths on every CPU: the portable body is what ARM runs.
        for k in [1, 15, 16, 17, 100, 1000] {
            let w = rnd(ROWS * k, k as u64);
            let x = rnd(k, 99);
            let want: Vec<f64> = w
                .chunks_exact(k)
                .map(|r| r.iter().zip(&x).map(|(a, b)| (a * b) as f64).sum())
                .collect();
            let four = dot_rows::portable::<ROWS>(&w, k, &x);
            let one: Vec<f32> = w
                .chunks_exact(k)
                .map(|r| dot_rows::portable::<1>(r, k, &x)[0])
                .collect();
            let simd = dot_rows::<ROWS>(&w, k, &x);
            for j in 0..ROWS {
                for got in [four[j], one[j], simd[j]] {
                    assert!(
                        (got as f64 - want[j]).abs() < 1e-4,
                        "k {k} row {j}: {got} vs {}",
                        want[j]
                    );
                }
            }
        }
    }

    #[test]
    fn bigger_batches_stay_with_tract() {
        check(&torch_head(true, 37), &[3, 4, 5, 6], 0);
    }
}
