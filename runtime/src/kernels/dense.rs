//! A batch-1 dense layer that streams its weights once, on every inference thread.
//!
//! At batch 1 a dense layer is a matrix-vector product: model_3's first one reads
//! a 96,800 x 128 weight matrix (49.6 MB) per image, so its time is memory
//! bandwidth. tract runs it on one thread whatever `--threads` says (its
//! threading gate counts panels, and 128 outputs make too few) and reads the
//! weights row by row, re-reading the input vector for every few rows. This pass
//! replaces such a product (an `EinSum` of the image's features with constant
//! weights, batch axis 1), with the bias `Add` and ReLU that may follow it, by one
//! [`FusedDense`] node.
//!
//! The weights are packed once, when the plan is made, in panels of [`PANEL`]
//! units: for each input value, the panel's 16 weights sit side by side, so one
//! sequential pass over the matrix feeds all of a panel's accumulators and every
//! cache line fetched is used whole. Each panel is cut into chunks of [`CHUNK`]
//! input values; the (panel, chunk) pieces are shared between the executor's
//! threads and their partial sums added in a fixed order, so results do not
//! depend on the thread count.
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

/// Units per panel of packed weights (a multiple of every SIMD width in use: one
/// AVX-512 register, two AVX2 ones, four NEON ones).
pub const PANEL: usize = 16;
/// Input values per piece of work: 256 KB of weights, enough to amortise handing
/// a piece to a thread, small enough to balance two or four threads on 8 panels.
pub const CHUNK: usize = 4096;
/// Independent accumulator sets per panel, so that consecutive multiply-adds do
/// not wait on each other.
const SETS: usize = 4;
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
        weights: Arc::new(pack(&rows, units, k)),
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

/// Row-major weights (`units` rows of `k`) as panels of [`PANEL`] units,
/// `[panel][k][PANEL]`, the units past the last one zero.
fn pack(rows: &[f32], units: usize, k: usize) -> Vec<f32> {
    let panels = units.div_ceil(PANEL);
    let mut packed = vec![0.0; panels * k * PANEL];
    for (u, row) in rows.chunks_exact(k).enumerate() {
        let panel = &mut packed[u / PANEL * k * PANEL..][..k * PANEL];
        for (slot, &w) in panel.iter_mut().skip(u % PANEL).step_by(PANEL).zip(row) {
            *slot = w;
        }
    }
    packed
}

/// `relu(W x + b)` for one input vector, `W` packed by [`pack`].
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
    /// Pieces of work per panel: chunks of [`CHUNK`] input values.
    fn chunks(&self) -> usize {
        self.k.div_ceil(CHUNK).max(1)
    }

    /// The partial sums of piece `piece` (panel-major) for input `x`.
    fn piece(&self, x: &[f32], piece: usize) -> [f32; PANEL] {
        let (panel, chunk) = (piece / self.chunks(), piece % self.chunks());
        let inputs = chunk * CHUNK..((chunk + 1) * CHUNK).min(self.k);
        let w = &self.weights[(panel * self.k + inputs.start) * PANEL..][..inputs.len() * PANEL];
        panel_dot(w, &x[inputs])
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
        let pieces = self.units.div_ceil(PANEL) * self.chunks();
        let pool = inference_pool().filter(|_| self.weights.len() >= MIN_PARALLEL_WEIGHTS);
        let partials: Vec<[f32; PANEL]> = match pool {
            // Consecutive pieces are consecutive weights: rayon hands each thread
            // runs of them, so each thread streams its own stretch of the matrix.
            Some(pool) => pool.install(|| {
                (0..pieces)
                    .into_par_iter()
                    .map(|p| self.piece(x, p))
                    .collect()
            }),
            None => (0..pieces).map(|p| self.piece(x, p)).collect(),
        };
        for (panel, parts) in partials.chunks_exact(self.chunks()).enumerate() {
            let units = panel * PANEL..((panel + 1) * PANEL).min(self.units);
            for (l, unit) in units.enumerate() {
                let sum: f32 = parts.iter().map(|p| p[l]).sum();
                let v = sum + self.bias.as_ref().map_or(0.0, |b| b[unit]);
                out[unit] = if self.relu { v.max(0.0) } else { v };
            }
        }
        Ok(output)
    }
}

simd_fn! {
    /// The [`PANEL`] dot products of a run of packed weights (`x.len()` groups of
    /// [`PANEL`], one per input value) with `x`.
    ///
    /// Plain loops over fixed-size lane arrays, which LLVM turns into SIMD code for
    /// whatever the version is compiled for (the slices are cut to whole blocks
    /// first so that no bounds check is left in the loop). Multiplies and adds stay
    /// separate (no fused multiply-add, which the baseline lacks): the loop waits
    /// on memory, not arithmetic, and every version rounds the same way.
    fn panel_dot(w: &[f32], x: &[f32]) -> [f32; PANEL] {
        let xs = x.as_chunks::<SETS>().0;
        let full = xs.len() * SETS;
        let ws = w[..full * PANEL].as_chunks::<PANEL>().0.as_chunks::<SETS>().0;
        let ws = &ws[..xs.len()];
        let mut acc = [[0.0f32; PANEL]; SETS];
        // Indexed loops on purpose: written with iterators (zips), LLVM kept the
        // accumulators in memory in an earlier version of this kernel.
        #[allow(clippy::needless_range_loop)]
        for i in 0..xs.len() {
            for s in 0..SETS {
                let xv = xs[i][s];
                let wv = ws[i][s];
                for l in 0..PANEL {
                    acc[s][l] += wv[l] * xv;
                }
            }
        }
        for (i, &xv) in x.iter().enumerate().skip(full) {
            for l in 0..PANEL {
                acc[0][l] += w[i * PANEL + l] * xv;
            }
        }
        std::array::from_fn(|l| acc.iter().map(|a| a[l]).sum())
    }
}

fused_op!(FusedDense, "FennecDense");

impl TypedOp for FusedDense {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&self.output_shape)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        // The weights are read once per inference: `fennec bench --profile` shows
        // the node's GB/s from this.
        Ok(tvec!(
            (Cost::FMA(f32::datum_type()), (self.k * self.units).into()),
            (
                Cost::Params(f32::datum_type()),
                (self.k * self.units).into()
            )
        ))
    }

    as_op!();
}

#[cfg(all(test, feature = "onnx"))]
mod tests {
    use super::{CHUNK, PANEL, pack, panel_dot};
    use crate::kernels::testing::{assert_rewrite_matches_tract, rnd};
    use crate::metadata::ModelMetadata;
    use crate::onnx_writer::{Attr, GraphBuilder};

    /// `x [n, c, h, w] -> Flatten -> Gemm (transB, bias) [-> Relu] -> Gemm [2 units]`:
    /// a PyTorch-style classifier head.
    fn torch_head(relu: bool, units: usize, [c, h, w]: [i64; 3]) -> Vec<u8> {
        let k = (c * h * w) as usize;
        let mut g = GraphBuilder::new("t");
        g.input("x", &[None, Some(c), Some(h), Some(w)]);
        let w1 = g.weight("w", &[units as i64, k as i64], &rnd(units * k, 1));
        let b = g.weight("b", &[units as i64], &rnd(units, 2));
        let w2 = g.weight("w2", &[2, units as i64], &rnd(2 * units, 3));
        let flat = g.node("Flatten", &["x"], vec![("axis", Attr::Int(1))], None);
        let mut y = g.node(
            "Gemm",
            &[&flat, &w1, &b],
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
        // 37 units: panels with a short last one; 120 inputs: one chunk, no full
        // accumulator block at the end.
        check(&torch_head(true, 37, [4, 5, 6]), &[1, 4, 5, 6], 2);
        check(&torch_head(false, 8, [4, 5, 6]), &[1, 4, 5, 6], 2);
        // 9,246 inputs: two full chunks and a short one, split between threads.
        let k = 6 * 23 * 67;
        assert!(k > 2 * CHUNK && k % CHUNK != 0);
        check(&torch_head(true, 21, [6, 23, 67]), &[1, 6, 23, 67], 2);
    }

    #[test]
    fn contracted_axes_in_another_order() {
        check(&permuted_einsum(), &[1, 3, 7, 5], 1);
    }

    #[test]
    fn packing_puts_each_panel_in_input_order() {
        // 3 units of 2 inputs: one panel, units side by side per input, zeros after.
        let packed = pack(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3, 2);
        assert_eq!(packed.len(), 2 * PANEL);
        assert_eq!(packed[..3], [1.0, 3.0, 5.0]);
        assert_eq!(packed[PANEL..PANEL + 3], [2.0, 4.0, 6.0]);
        assert!(
            packed[3..PANEL]
                .iter()
                .chain(&packed[PANEL + 3..])
                .all(|&w| w == 0.0)
        );
    }

    #[test]
    fn portable_and_simd_panel_products_agree_with_a_plain_sum() {
        // Both code paths on every CPU: the portable body is what ARM runs.
        for k in [1, 3, 4, 5, 17, 100, 1000] {
            let rows = rnd(PANEL * k, k as u64);
            let x = rnd(k, 99);
            let want: Vec<f64> = rows
                .chunks_exact(k)
                .map(|r| r.iter().zip(&x).map(|(a, b)| (a * b) as f64).sum())
                .collect();
            let w = pack(&rows, PANEL, k);
            for got in [panel_dot::portable(&w, &x), panel_dot(&w, &x)] {
                for (l, (g, want)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (*g as f64 - want).abs() < 1e-4,
                        "k {k} unit {l}: {g} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn bigger_batches_stay_with_tract() {
        check(&torch_head(true, 37, [4, 5, 6]), &[3, 4, 5, 6], 0);
    }
}
