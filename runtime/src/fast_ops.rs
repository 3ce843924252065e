//! Faster convolution layers swapped into a tract graph before it is optimised.
//!
//! tract runs the Keras tutorial's CNNs (3x3 convolutions, ReLU, 2x2 max pooling
//! at 224x224) about 4x slower than onnxruntime; profiling showed the time in the
//! convolutions and the pooling over their full-size outputs. This pass replaces
//! each `Conv` (f32, NCHW, one group, stride 1, dilation 1, constant weights),
//! together with a ReLU and a non-overlapping max pool that may follow it, by one
//! [`FusedConv`] node. That node runs the direct kernels of
//! [`crate::conv_kernels`] a few output rows at a time and pools them while they
//! are in cache, so the full-size convolution output never exists. Everything
//! else in the graph (and any convolution outside that pattern) stays with tract.
//!
//! The numbers are the same as tract's up to float rounding (sums in a different
//! order); ReLU and max are exact. Inference threads (`--threads`) split the
//! output channels between tract's executor threads.
//!
//! [`dense`] does the same for batch-1 dense layers, whose time is the reading
//! of their weights, so that every thread reads a share of them.

use std::sync::Arc;

use rayon::prelude::*;
use tract_nnef::tract_core::internal::*;
use tract_nnef::tract_core::ops::binary::TypedBinOp;
use tract_nnef::tract_core::ops::cnn::{Conv, KernelFormat, MaxPool, PoolSpec};
use tract_nnef::tract_core::ops::math::Max;
use tract_nnef::tract_core::ops::nn::DataFormat;
use tract_nnef::tract_core::tract_linalg::multithread::{Executor, current_tract_executor};

use crate::conv_kernels::{OCB, PackedConv};

pub mod dense;

/// Replaces every convolution (+ ReLU)(+ max pool) chain the kernels handle by a
/// [`FusedConv`], and every batch-1 dense layer by a [`dense::FusedDense`]; returns
/// how many nodes were put in. Needs concrete channel and spatial sizes (the batch
/// may stay symbolic).
pub fn rewrite(model: &mut TypedModel) -> TractResult<usize> {
    Ok(fuse(model, "fennec-fused-conv", plan_fusion)?
        + fuse(model, "fennec-fused-dense", dense::plan_fusion)?)
}

/// A run of nodes to replace by one op reading the first node's first input.
struct Fusion<O> {
    op: O,
    /// The replaced nodes, in order; the last one's output becomes the op's.
    nodes: Vec<usize>,
}

/// Applies `plan` to every node in evaluation order and puts in each fusion it
/// returns; returns how many.
fn fuse<O: TypedOp>(
    model: &mut TypedModel,
    patch_name: &str,
    plan: impl Fn(&TypedModel, usize) -> TractResult<Option<Fusion<O>>>,
) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let Some(fusion) = plan(model, id)? else {
            continue;
        };
        let mut patch = TypedModelPatch::new(patch_name);
        let x = patch.tap_model(model, model.node(id).inputs[0])?;
        let name = model.node(id).name.clone();
        let wire = patch.wire_node(name, fusion.op, &[x])?[0];
        patch.shunt_outside(model, OutletId::new(*fusion.nodes.last().unwrap(), 0), wire)?;
        for n in &fusion.nodes {
            patch.obliterate(*n)?;
        }
        patch.apply(model)?;
        replaced += 1;
    }
    if replaced > 0 {
        model.compact()?;
    }
    Ok(replaced)
}

/// The thread pool of tract's current executor when it has one (`--threads` > 1).
fn inference_pool() -> Option<Arc<rayon::ThreadPool>> {
    match current_tract_executor() {
        Executor::MultiThread(pool) => Some(pool),
        _ => None,
    }
}

/// Whether node `id` starts a chain [`FusedConv`] can run, and what it becomes.
fn plan_fusion(model: &TypedModel, id: usize) -> TractResult<Option<Fusion<FusedConv>>> {
    let node = model.node(id);
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    let spec = &conv.pool_spec;
    let x_fact = model.outlet_fact(node.inputs[0])?;
    if conv.q_params.is_some()
        || conv.group != 1
        || conv.kernel_fmt != KernelFormat::OIHW
        || spec.data_format != DataFormat::NCHW
        || spec.rank() != 2
        || x_fact.datum_type != f32::datum_type()
        || x_fact.rank() != 4
        || (0..2).any(|a| spec.stride(a) != 1 || spec.dilation(a) != 1)
    {
        return Ok(None);
    }
    let Some([ic, ih, iw]) = concrete(&x_fact.shape[1..]) else {
        return Ok(None);
    };
    let (oc, kh, kw) = (
        spec.output_channels,
        spec.kernel_shape[0],
        spec.kernel_shape[1],
    );
    let Some(kernel) = model.outlet_fact(node.inputs[1])?.konst.clone() else {
        return Ok(None);
    };
    let Some(bias) = model.outlet_fact(node.inputs[2])?.konst.clone() else {
        return Ok(None);
    };
    if kernel.datum_type() != f32::datum_type()
        || kernel.shape() != [oc, ic, kh, kw]
        || bias.datum_type() != f32::datum_type()
        || !(bias.len() == oc || bias.len() == 1)
    {
        return Ok(None);
    }
    let pads = spec.computed_padding(&[ih, iw]);
    let pad = [
        (pads[0].pad_before, pads[0].pad_after),
        (pads[1].pad_before, pads[1].pad_after),
    ];
    let (oh, ow) = (pads[0].convoluted, pads[1].convoluted);
    if oh != ih + pad[0].0 + pad[0].1 + 1 - kh || ow != iw + pad[1].0 + pad[1].1 + 1 - kw {
        return Ok(None); // not a plain stride-1 geometry after all
    }

    let mut nodes = vec![id];
    let mut relu = false;
    let mut pool = None;
    if let Some(next) = sole_successor(model, id)?
        && is_relu(model, next, OutletId::new(id, 0))?
    {
        relu = true;
        nodes.push(next.id);
    }
    if let Some(next) = sole_successor(model, *nodes.last().unwrap())?
        && let Some(p) = next.op_as::<MaxPool>()
        && let Some(window) =
            pool_window(&p.pool_spec, p.with_index_outputs.is_some(), oc, (oh, ow))
    {
        pool = Some(window);
        nodes.push(next.id);
    }

    let kernel = kernel.try_as_plain_ram()?;
    let bias = bias.try_as_plain_ram()?;
    let bias: Vec<f32> = match bias.as_slice::<f32>()? {
        [b] => vec![*b; oc],
        b => b.to_vec(),
    };
    let packed = PackedConv::new(
        kernel.as_slice::<f32>()?,
        Some(&bias),
        (oc, ic, kh, kw),
        relu,
    );
    let op = FusedConv {
        conv: Arc::new(packed),
        input_hw: (ih, iw),
        pad,
        pool,
    };
    Ok(Some(Fusion { op, nodes }))
}

fn concrete<const N: usize>(dims: &[TDim]) -> Option<[usize; N]> {
    let v: Vec<usize> = dims
        .iter()
        .map(|d| d.to_usize().ok())
        .collect::<Option<_>>()?;
    v.try_into().ok()
}

/// The node reading `id`'s output when it is the only reader and the output is
/// not a model output.
fn sole_successor(model: &TypedModel, id: usize) -> TractResult<Option<&TypedNode>> {
    if model.output_outlets()?.contains(&OutletId::new(id, 0)) {
        return Ok(None);
    }
    model.single_succ(id)
}

/// `max(x, 0)` with a constant zero, as tract declutters ONNX `Relu`.
fn is_relu(model: &TypedModel, node: &TypedNode, x: OutletId) -> TractResult<bool> {
    let Some(bin) = node.op_as::<TypedBinOp>() else {
        return Ok(false);
    };
    let other = match node.inputs[..] {
        [a, b] if a == x => b,
        [a, b] if b == x => a,
        _ => return Ok(false),
    };
    let is_zero = |t: &Tensor| {
        t.datum_type() == f32::datum_type()
            && t.len() == 1
            && t.try_as_plain_ram()
                .ok()
                .and_then(|p| p.as_slice::<f32>().ok().map(|s| s[0] == 0.0))
                == Some(true)
    };
    let same_shape = node.outputs[0].fact.shape == model.outlet_fact(x)?.shape;
    Ok(bin.0.is::<Max>()
        && same_shape
        && model
            .outlet_fact(other)?
            .konst
            .as_deref()
            .is_some_and(is_zero))
}

/// A max pool whose windows tile the input without overlap (kernel = stride), start
/// at the top-left corner, and may be cut short at the bottom/right edge (ONNX
/// `ceil_mode`, TF `SAME`): `(window_h, window_w, out_h, out_w)`.
fn pool_window(
    spec: &PoolSpec,
    with_indices: bool,
    channels: usize,
    (h, w): (usize, usize),
) -> Option<(usize, usize, usize, usize)> {
    if with_indices
        || spec.data_format != DataFormat::NCHW
        || spec.rank() != 2
        || spec.input_channels != channels
        || (0..2).any(|a| spec.dilation(a) != 1 || spec.stride(a) != spec.kernel_shape[a])
    {
        return None;
    }
    let pads = spec.computed_padding(&[h, w]);
    let (ph, pw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
    let (oh, ow) = (pads[0].convoluted, pads[1].convoluted);
    // Every window starts inside the input; a last one may be cut short.
    let fits = |out: usize, k: usize, len: usize| out >= 1 && (out - 1) * k < len;
    if pads.iter().any(|p| p.pad_before != 0) || !fits(oh, ph, h) || !fits(ow, pw, w) {
        return None;
    }
    Some((ph, pw, oh, ow))
}

/// Convolution (+ ReLU) (+ max pool) on NCHW f32 images, one op.
#[derive(Debug, Clone)]
pub struct FusedConv {
    conv: Arc<PackedConv>,
    input_hw: (usize, usize),
    /// `(before, after)` zero padding of the height and width axes.
    pad: [(usize, usize); 2],
    /// `(window_h, window_w, out_h, out_w)` of the fused max pool, if any.
    pool: Option<(usize, usize, usize, usize)>,
}

impl PartialEq for FusedConv {
    fn eq(&self, other: &Self) -> bool {
        // Same packed weights (by identity: comparing floats would make NaN
        // weights unequal to themselves) and same geometry.
        Arc::ptr_eq(&self.conv, &other.conv)
            && self.input_hw == other.input_hw
            && self.pad == other.pad
            && self.pool == other.pool
    }
}

impl Eq for FusedConv {}

impl FusedConv {
    fn padded_hw(&self) -> (usize, usize) {
        let (h, w) = self.input_hw;
        (
            h + self.pad[0].0 + self.pad[0].1,
            w + self.pad[1].0 + self.pad[1].1,
        )
    }

    fn conv_hw(&self) -> (usize, usize) {
        let (h, w) = self.padded_hw();
        (h + 1 - self.conv.kh, w + 1 - self.conv.kw)
    }

    fn output_hw(&self) -> (usize, usize) {
        self.pool
            .map_or_else(|| self.conv_hw(), |(_, _, oh, ow)| (oh, ow))
    }

    /// The image with its zero border, or the image itself when there is none.
    fn padded<'a>(&self, image: &'a [f32]) -> Cow<'a, [f32]> {
        if self.pad == [(0, 0); 2] {
            return Cow::Borrowed(image);
        }
        let (h, w) = self.input_hw;
        let (ph, pw) = self.padded_hw();
        let (top, left) = (self.pad[0].0, self.pad[1].0);
        let mut out = vec![0.0; self.conv.ic * ph * pw];
        for (c, channel) in image.chunks_exact(h * w).enumerate() {
            for (y, row) in channel.chunks_exact(w).enumerate() {
                let start = (c * ph + top + y) * pw + left;
                out[start..start + w].copy_from_slice(row);
            }
        }
        Cow::Owned(out)
    }

    /// Output channels `blocks` (of [`OCB`]) of one image into `out`, their
    /// channel planes.
    fn run_blocks(&self, input: &[f32], blocks: std::ops::Range<usize>, out: &mut [f32]) {
        let c = &*self.conv;
        let (ih, iw) = self.padded_hw();
        let (ch, cw) = self.conv_hw();
        let first = blocks.start * OCB;
        match self.pool {
            None => {
                let plane = ch * cw;
                for y in 0..ch {
                    for b in blocks.clone() {
                        let start = (b * OCB - first) * plane + y * cw;
                        c.row(input, (ih, iw), y, b, &mut out[start..], plane);
                    }
                }
            }
            Some((wh, ww, oh, ow)) => {
                let plane = oh * ow;
                let mut rows = vec![0.0f32; OCB * wh * cw];
                let mut colmax = vec![0.0f32; cw];
                for py in 0..oh {
                    let window = py * wh..((py + 1) * wh).min(ch);
                    for b in blocks.clone() {
                        for (r, y) in window.clone().enumerate() {
                            c.row(input, (ih, iw), y, b, &mut rows[r * cw..], wh * cw);
                        }
                        for (k, o) in c.block_channels(b).enumerate() {
                            let channel = &rows[k * wh * cw..][..window.len() * cw];
                            let dst = &mut out[(o - first) * plane + py * ow..][..ow];
                            pool_rows(channel, cw, ww, &mut colmax, dst);
                        }
                    }
                }
            }
        }
    }
}

/// Max over the rows of `rows` (each `w` wide), then over windows of `ww`
/// columns (the last one may be short) into `out`.
fn pool_rows(rows: &[f32], w: usize, ww: usize, colmax: &mut [f32], out: &mut [f32]) {
    let mut lines = rows.chunks_exact(w);
    colmax.copy_from_slice(lines.next().expect("at least one row"));
    for line in lines {
        for (m, &v) in colmax.iter_mut().zip(line) {
            *m = m.max(v);
        }
    }
    for (o, window) in out.iter_mut().zip(colmax.chunks(ww)) {
        *o = window.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    }
}

impl Op for FusedConv {
    fn name(&self) -> StaticName {
        "FennecConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let c = &self.conv;
        let mut s = format!(
            "{}x{} conv {}->{} channels, pad {:?}",
            c.kh, c.kw, c.ic, c.oc, self.pad
        );
        if c.relu {
            s += ", relu";
        }
        if let Some((wh, ww, _, _)) = self.pool {
            s += &format!(", {wh}x{ww} max pool");
        }
        Ok(vec![s])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for FusedConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let c = &*self.conv;
        let (h, w) = self.input_hw;
        ensure!(
            input.datum_type() == f32::datum_type()
                && input.rank() == 4
                && input.shape()[1..] == [c.ic, h, w],
            "FennecConv expects f32 [N, {}, {h}, {w}], got {:?} {:?}",
            c.ic,
            input.datum_type(),
            input.shape()
        );
        let n = input.shape()[0];
        let (oh, ow) = self.output_hw();
        let mut output = Tensor::zero::<f32>(&[n, c.oc, oh, ow])?;
        let input = input.try_as_plain_ram()?;
        let input = input.as_slice::<f32>()?;
        let mut out_view = output.try_as_plain_ram_mut()?;
        let out = out_view.as_slice_mut::<f32>()?;

        // Output channel blocks are split between the executor's threads; each
        // part writes its own run of channel planes.
        let threads = inference_pool();
        let parts = threads
            .as_ref()
            .map_or(1, |p| p.current_num_threads())
            .clamp(1, c.blocks());
        let per_part = c.blocks().div_ceil(parts);
        let plane = oh * ow;
        for (image, out_image) in input
            .chunks_exact(c.ic * h * w)
            .zip(out.chunks_mut(c.oc * plane))
        {
            let padded = self.padded(image);
            let job = |(p, chunk): (usize, &mut [f32])| {
                let blocks = p * per_part..((p + 1) * per_part).min(c.blocks());
                self.run_blocks(&padded, blocks, chunk)
            };
            let chunk = per_part * OCB * plane;
            match &threads {
                Some(pool) if parts > 1 => {
                    pool.install(|| out_image.par_chunks_mut(chunk).enumerate().for_each(job))
                }
                _ => out_image.chunks_mut(chunk).enumerate().for_each(job),
            }
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for FusedConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (oh, ow) = self.output_hw();
        let n = inputs[0].shape[0].clone();
        Ok(tvec!(f32::fact([
            n,
            self.conv.oc.into(),
            oh.into(),
            ow.into()
        ])))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let c = &*self.conv;
        let (ch, cw) = self.conv_hw();
        let per_image = c.oc * ch * cw * c.ic * c.kh * c.kw;
        Ok(tvec!((
            Cost::FMA(f32::datum_type()),
            inputs[0].shape[0].clone() * per_image
        )))
    }

    as_op!();
}

// The tests build their models as ONNX files.
#[cfg(all(test, feature = "onnx"))]
pub(crate) mod tests {
    use super::*;
    use crate::metadata::ModelMetadata;
    use crate::onnx_writer::{Attr, GraphBuilder};
    use tract_nnef::tract_core::tract_linalg::multithread::multithread_tract_scope;
    use tract_onnx::prelude::{Framework, InferenceModelExt};

    use crate::conv_kernels::tests::rnd;

    struct Case {
        /// Input `[n, c, h, w]`.
        input: [usize; 4],
        oc: usize,
        kernel: [usize; 2],
        pads: [i64; 4],
        strides: [i64; 2],
        relu: bool,
        /// `(kernel, stride, ceil_mode)` of a max pool after the conv.
        pool: Option<(i64, i64, i64)>,
    }

    /// An ONNX model `input -> Conv [-> Relu] [-> MaxPool] -> output`.
    fn model(case: &Case, seed: u64) -> Vec<u8> {
        let [_, c, h, w] = case.input;
        let [kh, kw] = case.kernel;
        let mut g = GraphBuilder::new("t");
        g.input("x", &[None, Some(c as i64), Some(h as i64), Some(w as i64)]);
        let k = g.weight(
            "k",
            &[case.oc as i64, c as i64, kh as i64, kw as i64],
            &rnd(case.oc * c * kh * kw, seed),
        );
        let b = g.weight("b", &[case.oc as i64], &rnd(case.oc, seed + 1));
        let attrs = vec![
            ("kernel_shape", Attr::Ints(vec![kh as i64, kw as i64])),
            ("pads", Attr::Ints(case.pads.to_vec())),
            ("strides", Attr::Ints(case.strides.to_vec())),
        ];
        let mut y = g.node("Conv", &["x", &k, &b], attrs, None);
        if case.relu {
            y = g.node("Relu", &[&y], vec![], None);
        }
        if let Some((k, s, ceil)) = case.pool {
            let attrs = vec![
                ("kernel_shape", Attr::Ints(vec![k, k])),
                ("strides", Attr::Ints(vec![s, s])),
                ("ceil_mode", Attr::Int(ceil)),
            ];
            y = g.node("MaxPool", &[&y], attrs, None);
        }
        g.node("Identity", &[&y], vec![], Some("y"));
        g.output("y", &[None, None, None, None]);
        g.finish(&ModelMetadata::default())
    }

    fn run_both(case: &Case, seed: u64, threads: usize) -> (Vec<f32>, Vec<f32>, usize) {
        run_onnx_both(&model(case, seed), &case.input, seed, threads)
    }

    /// Runs an ONNX model on a random `input` with tract alone and with the
    /// rewrite; returns both outputs and how many nodes the rewrite put in.
    pub(super) fn run_onnx_both(
        bytes: &[u8],
        input: &[usize],
        seed: u64,
        threads: usize,
    ) -> (Vec<f32>, Vec<f32>, usize) {
        let mut m = tract_onnx::onnx().model_for_read(&mut &bytes[..]).unwrap();
        m.set_input_fact(0, f32::fact(input).into()).unwrap();
        let typed = m.into_typed().unwrap().into_decluttered().unwrap();
        let x = Tensor::from_shape(input, &rnd(input.iter().product(), seed + 2)).unwrap();
        let run = |model: TypedModel| -> Vec<f32> {
            let plan = model.into_optimized().unwrap().into_runnable().unwrap();
            let exec = if threads > 1 {
                Executor::multithread(threads)
            } else {
                Executor::SingleThread
            };
            let out =
                multithread_tract_scope(exec, || plan.run(tvec!(x.clone().into_tvalue()))).unwrap();
            out[0]
                .try_as_plain_ram()
                .unwrap()
                .as_slice::<f32>()
                .unwrap()
                .to_vec()
        };
        let want = run(typed.clone());
        let mut fast = typed;
        let replaced = rewrite(&mut fast).unwrap();
        (want, run(fast), replaced)
    }

    fn check(case: Case, fused: usize) {
        for threads in [1, 2] {
            let (want, got, replaced) = run_both(&case, 7, threads);
            assert_eq!(replaced, fused, "replaced nodes");
            assert_eq!(want.len(), got.len());
            for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                assert!(
                    (w - g).abs() <= 1e-5 * (1.0 + w.abs()),
                    "threads {threads} at {i}: {g} vs tract {w}"
                );
            }
        }
    }

    #[test]
    fn conv_relu_pool_with_ceil_mode_and_batch() {
        let case = Case {
            input: [2, 3, 23, 70],
            oc: 10,
            kernel: [3, 3],
            pads: [0; 4],
            strides: [1, 1],
            relu: true,
            pool: Some((2, 2, 1)),
        };
        check(case, 1);
    }

    #[test]
    fn same_padding_pool_without_relu() {
        let case = Case {
            input: [1, 4, 9, 20],
            oc: 8,
            kernel: [3, 3],
            pads: [1, 1, 1, 1],
            strides: [1, 1],
            relu: false,
            pool: Some((3, 3, 0)),
        };
        check(case, 1);
    }

    #[test]
    fn conv_relu_output_and_uneven_padding() {
        let case = Case {
            input: [1, 2, 6, 40],
            oc: 5,
            kernel: [2, 5],
            pads: [0, 2, 1, 1],
            strides: [1, 1],
            relu: true,
            pool: None,
        };
        check(case, 1);
    }

    #[test]
    fn strided_conv_and_overlapping_pool_stay_with_tract() {
        let strided = Case {
            input: [1, 3, 16, 16],
            oc: 4,
            kernel: [3, 3],
            pads: [0; 4],
            strides: [2, 2],
            relu: true,
            pool: None,
        };
        check(strided, 0);
        // The conv is fused; the overlapping pool (stride < kernel) is left alone.
        let overlapping = Case {
            input: [1, 3, 16, 16],
            oc: 4,
            kernel: [3, 3],
            pads: [0; 4],
            strides: [1, 1],
            relu: true,
            pool: Some((3, 2, 0)),
        };
        check(overlapping, 1);
    }
}
