//! Convolution (+ ReLU) (+ max pool) as one tract op, on fennec's own kernels.
//!
//! tract runs the Keras tutorial's CNNs (3x3 convolutions, ReLU, 2x2 max pooling
//! at 224x224) about 4x slower than onnxruntime; profiling showed the time in the
//! convolutions and the pooling over their full-size outputs. The rewrite replaces
//! each `Conv` (f32, NCHW, one group, stride 1, dilation 1, constant weights),
//! together with a ReLU and a non-overlapping max pool that may follow it, by one
//! [`FusedConv`] node. That node runs the direct kernels of [`PackedConv`] a few
//! output rows at a time and pools them while they are in cache, so the full-size
//! convolution output never exists. Everything else in the graph (and any
//! convolution outside that pattern) stays with tract.
//!
//! The numbers are the same as tract's up to float rounding (sums in a different
//! order); ReLU and max are exact. Inference threads (`--threads`) split the
//! output channels between tract's executor threads.
//!
//! Files: this one is the tract op; `packed.rs` the packed weights and the row
//! driver that picks a kernel per instruction set; `portable.rs`, `avx2.rs`,
//! `avx512.rs` and `neon.rs` the kernels.

use std::sync::Arc;

use rayon::prelude::*;
use tract_nnef::tract_core::internal::*;
use tract_nnef::tract_core::ops::cnn::{Conv, KernelFormat, MaxPool, PoolSpec};
use tract_nnef::tract_core::ops::nn::DataFormat;

use super::rewrite::{Fusion, fused_op, inference_pool, is_relu, sole_successor};
use super::simd::simd_fn;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
mod neon;
mod packed;
mod portable;

pub use packed::{OCB, PackedConv};

/// Whether node `id` starts a chain [`FusedConv`] can run, and what it becomes.
pub(super) fn plan_fusion(model: &TypedModel, id: usize) -> TractResult<Option<Fusion<FusedConv>>> {
    let node = model.node(id);
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    let spec = &conv.pool_spec;
    let x_fact = model.outlet_fact(node.inputs[0])?;
    if x_fact.datum_type != f32::datum_type() {
        return Ok(None);
    }
    let Some(([ic, ih, iw], [oc, kh, kw])) = plain_conv(conv, x_fact) else {
        return Ok(None);
    };
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
        geo: Geometry {
            input_hw: (ih, iw),
            kernel_hw: (kh, kw),
            pad,
            pool,
        },
    };
    Ok(Some(Fusion { op, nodes }))
}

/// The sizes of a convolution the fused kernels (f32 and int8) can run:
/// `([ic, ih, iw], [oc, kh, kw])` when it is 2-D, NCHW with an OIHW kernel, one
/// group, stride and dilation 1, not quantized by tract, on an input of known size.
pub(in crate::kernels) fn plain_conv(
    conv: &Conv,
    x_fact: &TypedFact,
) -> Option<([usize; 3], [usize; 3])> {
    let spec = &conv.pool_spec;
    if conv.q_params.is_some()
        || conv.group != 1
        || conv.kernel_fmt != KernelFormat::OIHW
        || spec.data_format != DataFormat::NCHW
        || spec.rank() != 2
        || x_fact.rank() != 4
        || (0..2).any(|a| spec.stride(a) != 1 || spec.dilation(a) != 1)
    {
        return None;
    }
    let input = concrete(&x_fact.shape[1..])?;
    let kernel = [
        spec.output_channels,
        spec.kernel_shape[0],
        spec.kernel_shape[1],
    ];
    Some((input, kernel))
}

pub(in crate::kernels) fn concrete<const N: usize>(dims: &[TDim]) -> Option<[usize; N]> {
    let v: Vec<usize> = dims
        .iter()
        .map(|d| d.to_usize().ok())
        .collect::<Option<_>>()?;
    v.try_into().ok()
}

/// A max pool whose windows tile the input without overlap (kernel = stride), start
/// at the top-left corner, and may be cut short at the bottom/right edge (ONNX
/// `ceil_mode`, TF `SAME`): `(window_h, window_w, out_h, out_w)`.
pub(in crate::kernels) fn pool_window(
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
    geo: Geometry,
}

/// The spatial sizes of a fused convolution (+ max pool), shared by the f32 op
/// here and the int8 one (`kernels/int8/conv.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::kernels) struct Geometry {
    /// Height and width of the input image, before padding.
    pub input_hw: (usize, usize),
    /// Height and width of the convolution kernel.
    pub kernel_hw: (usize, usize),
    /// `(before, after)` zero padding of the height and width axes.
    pub pad: [(usize, usize); 2],
    /// `(window_h, window_w, out_h, out_w)` of the fused max pool, if any.
    pub pool: Option<(usize, usize, usize, usize)>,
}

impl Geometry {
    pub fn padded_hw(&self) -> (usize, usize) {
        let (h, w) = self.input_hw;
        (
            h + self.pad[0].0 + self.pad[0].1,
            w + self.pad[1].0 + self.pad[1].1,
        )
    }

    /// Height and width of the convolution's output, before the pool.
    pub fn conv_hw(&self) -> (usize, usize) {
        let (h, w) = self.padded_hw();
        (h + 1 - self.kernel_hw.0, w + 1 - self.kernel_hw.1)
    }

    /// Height and width of the op's output (after the pool, if any).
    pub fn output_hw(&self) -> (usize, usize) {
        self.pool
            .map_or_else(|| self.conv_hw(), |(_, _, oh, ow)| (oh, ow))
    }

    /// The op's NCHW output shape for a batch of `n` and `oc` output channels.
    pub fn output_shape(&self, n: &TDim, oc: usize) -> [TDim; 4] {
        let (oh, ow) = self.output_hw();
        [n.clone(), oc.into(), oh.into(), ow.into()]
    }

    /// Multiply-adds per image with `ic` input and `oc` output channels.
    pub fn macs_per_image(&self, ic: usize, oc: usize) -> usize {
        let (ch, cw) = self.conv_hw();
        oc * ch * cw * ic * self.kernel_hw.0 * self.kernel_hw.1
    }
}

impl PartialEq for FusedConv {
    fn eq(&self, other: &Self) -> bool {
        // Same packed weights (by identity: comparing floats would make NaN
        // weights unequal to themselves) and same geometry.
        Arc::ptr_eq(&self.conv, &other.conv) && self.geo == other.geo
    }
}

impl Eq for FusedConv {}

impl FusedConv {
    /// The image with its zero border, or the image itself when there is none.
    fn padded<'a>(&self, image: &'a [f32]) -> Cow<'a, [f32]> {
        if self.geo.pad == [(0, 0); 2] {
            return Cow::Borrowed(image);
        }
        let (h, w) = self.geo.input_hw;
        let (ph, pw) = self.geo.padded_hw();
        let (top, left) = (self.geo.pad[0].0, self.geo.pad[1].0);
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
        let (ih, iw) = self.geo.padded_hw();
        let (ch, cw) = self.geo.conv_hw();
        let first = blocks.start * OCB;
        match self.geo.pool {
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

    /// The one line `fennec bench --profile` shows for the node.
    fn describe(&self) -> String {
        let c = &self.conv;
        let mut s = format!(
            "{}x{} conv {}->{} channels, pad {:?}",
            c.kh, c.kw, c.ic, c.oc, self.geo.pad
        );
        if c.relu {
            s += ", relu";
        }
        if let Some((wh, ww, _, _)) = self.geo.pool {
            s += &format!(", {wh}x{ww} max pool");
        }
        s
    }

    /// The op on a batch `[n, ic, h, w]`.
    fn run(&self, input: &Tensor) -> TractResult<Tensor> {
        let c = &*self.conv;
        let (h, w) = self.geo.input_hw;
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
        let (oh, ow) = self.geo.output_hw();
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
        Ok(output)
    }
}

simd_fn! {
    /// Max over the rows of `rows` (each `w` wide), then over windows of `ww`
    /// columns (the last one may be short) into `out`.
    ///
    /// A `simd_fn` with a branch of its own for the common 2-wide window: the
    /// generic fold over each window ran one value at a time and was a quarter of
    /// the first convolution's time (222 x 222 x 32 values to pool per image).
    fn pool_rows(rows: &[f32], w: usize, ww: usize, colmax: &mut [f32], out: &mut [f32]) {
        let mut lines = rows.chunks_exact(w);
        colmax.copy_from_slice(lines.next().expect("at least one row"));
        for line in lines {
            for (m, &v) in colmax.iter_mut().zip(line) {
                *m = m.max(v);
            }
        }
        if ww == 2 {
            let (pairs, rest) = colmax.as_chunks::<2>();
            let (whole, last) = out.split_at_mut(pairs.len().min(out.len()));
            for (o, p) in whole.iter_mut().zip(pairs) {
                *o = p[0].max(p[1]);
            }
            if let (Some(o), Some(&v)) = (last.first_mut(), rest.first()) {
                *o = f32::NEG_INFINITY.max(v);
            }
            return;
        }
        for (o, window) in out.iter_mut().zip(colmax.chunks(ww)) {
            *o = window.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        }
    }
}

fused_op!(FusedConv, "FennecConv");

impl TypedOp for FusedConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = self.geo.output_shape(&inputs[0].shape[0], self.conv.oc);
        Ok(tvec!(f32::fact(shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let per_image = self.geo.macs_per_image(self.conv.ic, self.conv.oc);
        Ok(tvec!((
            Cost::FMA(f32::datum_type()),
            inputs[0].shape[0].clone() * per_image
        )))
    }

    as_op!();
}

// The tests build their models as ONNX files.
#[cfg(all(test, feature = "onnx"))]
mod tests {
    use crate::kernels::testing::{assert_rewrite_matches_tract, rnd};
    use crate::metadata::ModelMetadata;
    use crate::onnx_writer::{Attr, GraphBuilder};

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

    fn check(case: Case, fused: usize) {
        assert_rewrite_matches_tract(&model(&case, 7), &case.input, 7, &[1, 2], fused);
    }

    /// A conv of `input` with `kernel` and ReLU; no padding, stride 1, no pool.
    fn conv(input: [usize; 4], oc: usize, kernel: [usize; 2]) -> Case {
        Case {
            input,
            oc,
            kernel,
            pads: [0; 4],
            strides: [1, 1],
            relu: true,
            pool: None,
        }
    }

    impl Case {
        fn pads(self, pads: [i64; 4]) -> Case {
            Case { pads, ..self }
        }
        fn stride(self, s: i64) -> Case {
            Case {
                strides: [s, s],
                ..self
            }
        }
        fn without_relu(self) -> Case {
            Case {
                relu: false,
                ..self
            }
        }
        /// A max pool after the conv.
        fn pool(self, kernel: i64, stride: i64, ceil_mode: i64) -> Case {
            Case {
                pool: Some((kernel, stride, ceil_mode)),
                ..self
            }
        }
    }

    #[test]
    fn conv_relu_pool_with_ceil_mode_and_batch() {
        check(conv([2, 3, 23, 70], 10, [3, 3]).pool(2, 2, 1), 1);
    }

    #[test]
    fn every_version_of_the_pooling_agrees_with_a_plain_max() {
        use super::pool_rows;
        for (w, ww) in [(23, 2), (22, 2), (17, 3), (5, 1), (1, 2)] {
            let rows = rnd(2 * w, w as u64);
            let out_w = w.div_ceil(ww);
            let want: Vec<f32> = (0..out_w)
                .map(|o| {
                    (o * ww..((o + 1) * ww).min(w))
                        .flat_map(|x| [rows[x], rows[w + x]])
                        .fold(f32::NEG_INFINITY, f32::max)
                })
                .collect();
            let mut colmax = vec![0.0; w];
            let mut got = vec![f32::NAN; out_w];
            pool_rows(&rows, w, ww, &mut colmax, &mut got);
            assert_eq!(got, want, "width {w} window {ww}");
            let mut got = vec![f32::NAN; out_w];
            pool_rows::portable(&rows, w, ww, &mut colmax, &mut got);
            assert_eq!(got, want, "portable, width {w} window {ww}");
        }
    }

    #[test]
    fn more_channels_odd_sizes_and_pools_match_tract() {
        // Same padding with a ceil-mode pool on odd sizes (batch 2), valid
        // padding without a pool, and a floor-mode pool.
        let case = conv([2, 16, 15, 21], 12, [3, 3]).pads([1, 1, 1, 1]);
        check(case.pool(2, 2, 1), 1);
        check(conv([1, 8, 9, 14], 5, [3, 3]).without_relu(), 1);
        check(conv([1, 9, 12, 11], 8, [3, 3]).pool(2, 2, 0), 1);
    }

    #[test]
    fn same_padding_pool_without_relu() {
        let case = conv([1, 4, 9, 20], 8, [3, 3]).pads([1, 1, 1, 1]);
        check(case.without_relu().pool(3, 3, 0), 1);
    }

    #[test]
    fn conv_relu_output_and_uneven_padding() {
        check(conv([1, 2, 6, 40], 5, [2, 5]).pads([0, 2, 1, 1]), 1);
    }

    #[test]
    fn strided_conv_and_overlapping_pool_stay_with_tract() {
        check(conv([1, 3, 16, 16], 4, [3, 3]).stride(2), 0);
        // The conv is fused; the overlapping pool (stride < kernel) is left alone.
        check(conv([1, 3, 16, 16], 4, [3, 3]).pool(3, 2, 0), 1);
    }
}
