//! A quantized convolution (+ ReLU) (+ max pool) as one tract op on 8-bit
//! tensors.
//!
//! Matches `[QuantizeLinear →] DequantizeLinear → Conv [→ Relu] → QuantizeLinear`
//! (the first `QuantizeLinear` when the input is a float tensor), optionally
//! followed by `DequantizeLinear → MaxPool → QuantizeLinear` with the same step
//! and zero point (onnxruntime's QDQ form of conv + ReLU + pool: the ReLU is
//! folded into the output's zero point), with the same geometry limits as the f32
//! [`FusedConv`](crate::kernels::conv::FusedConv): stride 1, dilation 1, one
//! group, NCHW, and a non-overlapping pool. The requantization is non-decreasing
//! (unless a scale is negative or a bias can wrap a sum), so the pool takes the
//! max of the i32 sums and requantizes one value per window; otherwise it takes
//! the max of the codes. Threads take bands of output rows.

use std::sync::Arc;

use rayon::prelude::*;
use tract_nnef::tract_core::internal::*;
use tract_nnef::tract_core::ops::cnn::{Conv, MaxPool};

use super::packed::{OCT, PackedInput, PackedQConv, RowScratch, Source};
use super::qdq::{Act, QParams, Requant, constant, dequantize_params, int8_codes, quantize_params};
use crate::kernels::conv::{Geometry, plain_conv, pool_window};
use crate::kernels::rewrite::{Fusion, fused_op, inference_pool, is_relu, sole_successor};
use crate::kernels::simd::simd_fn;

/// Whether node `id` starts a chain [`QConv`] runs: a `DequantizeLinear`, or the
/// `QuantizeLinear` of a float tensor before one (the model's input, for the
/// first layer: quantized as the rows are packed, one pass less).
pub(in crate::kernels) fn plan_fusion(
    model: &TypedModel,
    id: usize,
) -> TractResult<Option<Fusion<QConv>>> {
    let node = model.node(id);
    if let Some(quantize) = quantize_params(node)
        && model.outlet_fact(node.inputs[0])?.datum_type == f32::datum_type()
        && let Some(dq) = sole_successor(model, id)?
        && let Some(mut fusion) = plan_from_dequantize(model, dq.id)?
    {
        fusion.op.quantize = Some(quantize);
        fusion.nodes.insert(0, id);
        return Ok(Some(fusion));
    }
    plan_from_dequantize(model, id)
}

/// Whether `DequantizeLinear` node `id` starts a chain [`QConv`] runs.
fn plan_from_dequantize(model: &TypedModel, id: usize) -> TractResult<Option<Fusion<QConv>>> {
    let Some(input_q) = dequantize_params(model, model.node(id))? else {
        return Ok(None);
    };
    let Some(node) = sole_successor(model, id)? else {
        return Ok(None);
    };
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    let spec = &conv.pool_spec;
    let x_fact = model.outlet_fact(node.inputs[0])?;
    if node.inputs[0] != OutletId::new(id, 0) {
        return Ok(None);
    }
    let Some(([ic, ih, iw], [oc, kh, kw])) = plain_conv(conv, x_fact) else {
        return Ok(None);
    };
    let Some(kernel) = constant(model, node.inputs[1])? else {
        return Ok(None);
    };
    let bias = match node.inputs.get(2) {
        Some(&b) => match constant(model, b)? {
            Some(b) => Some(b),
            None => return Ok(None),
        },
        None => None,
    };
    if kernel.datum_type() != f32::datum_type()
        || kernel.shape() != [oc, ic, kh, kw]
        || bias.as_ref().is_some_and(|b| {
            b.datum_type() != f32::datum_type() || !(b.len() == oc || b.len() == 1)
        })
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
        return Ok(None);
    }

    // [ReLU], then the output's QuantizeLinear.
    let mut nodes = vec![id, node.id];
    let mut relu = false;
    if let Some(next) = sole_successor(model, node.id)?
        && is_relu(model, next, OutletId::new(node.id, 0))?
    {
        relu = true;
        nodes.push(next.id);
    }
    let Some(q_node) = sole_successor(model, *nodes.last().unwrap())? else {
        return Ok(None);
    };
    let Some(output_q) = quantize_params(q_node) else {
        return Ok(None);
    };
    nodes.push(q_node.id);

    // DequantizeLinear → MaxPool → QuantizeLinear that gives the codes back.
    let mut pool = None;
    if let Some(dq) = sole_successor(model, q_node.id)?
        && let Some(dq_params) = dequantize_params(model, dq)?
        && let Some(p_node) = sole_successor(model, dq.id)?
        && let Some(p) = p_node.op_as::<MaxPool>()
        && let Some(window) =
            pool_window(&p.pool_spec, p.with_index_outputs.is_some(), oc, (oh, ow))
        && let Some(q2) = sole_successor(model, p_node.id)?
        && let Some(q2_params) = quantize_params(q2)
        && dq_params.round_trips_to(&q2_params)
        && q2_params.act == output_q.act
    {
        pool = Some(window);
        nodes.extend([dq.id, p_node.id, q2.id]);
    }

    let kernel = kernel.try_as_plain_ram()?;
    let Some((codes, scales)) = int8_codes(kernel.as_slice::<f32>()?, ic * kh * kw) else {
        return Ok(None);
    };
    let bias: Option<Vec<f32>> = match &bias {
        Some(b) => Some(match b.try_as_plain_ram()?.as_slice::<f32>()? {
            [b] => vec![*b; oc],
            b => b.to_vec(),
        }),
        None => None,
    };
    let requant = Requant::new(&input_q, &scales, bias.as_deref(), relu, &output_q);
    if !requant.is_finite() {
        return Ok(None);
    }
    let op = QConv {
        conv: Arc::new(PackedQConv::new(&codes, (oc, ic, kh, kw), requant)),
        quantize: None,
        input: input_q,
        output: output_q.act,
        geo: Geometry {
            input_hw: (ih, iw),
            kernel_hw: (kh, kw),
            pad,
            pool,
        },
    };
    Ok(Some(Fusion { op, nodes }))
}

/// Quantized convolution (+ ReLU) (+ max pool) on NCHW 8-bit codes, one op.
#[derive(Debug, Clone)]
pub struct QConv {
    conv: Arc<PackedQConv>,
    /// The `QuantizeLinear` of a float input, when the op starts there.
    quantize: Option<QParams>,
    /// How the input is quantized.
    input: QParams,
    output: Act,
    geo: Geometry,
}

impl PartialEq for QConv {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.conv, &other.conv)
            && self.quantize == other.quantize
            && self.input == other.input
            && self.output == other.output
            && self.geo == other.geo
    }
}

impl Eq for QConv {}

impl QConv {
    /// Output rows `rows` (after the pool, if any) of every channel of one packed
    /// image into `out`, `[oc][rows.len()][ow]` codes (`u8`, or `i8` as bytes).
    fn run_rows(&self, input: &PackedInput, rows: std::ops::Range<usize>, out: &mut [u8]) {
        let c = &*self.conv;
        let (ch, cw, cols) = (input.oh, input.ow, input.cols);
        let (wh, ww) = self.geo.pool.map_or((1, 1), |(wh, ww, _, _)| (wh, ww));
        let (n, ow) = (rows.len(), self.geo.output_hw().1);
        let on_sums = c.pools_on_sums();
        // The pair rows of each conv row of a pool window, and the block's sums
        // for them: [row][OCT][cols].
        let mut scratch: Vec<RowScratch> = (0..wh).map(|_| RowScratch::default()).collect();
        let mut sums = vec![0i32; wh * OCT * cols];
        let (mut max, mut pooled) = (vec![0i32; cw], vec![0i32; ow]);
        for (r, py) in rows.enumerate() {
            let window = py * wh..((py + 1) * wh).min(ch);
            let pairs: Vec<_> = window
                .zip(scratch.iter_mut())
                .map(|(y, s)| c.pair_rows(input, y, s))
                .collect();
            for b in 0..c.blocks() {
                for (k, p) in pairs.iter().enumerate() {
                    c.block_row(p, b, &mut sums[k * OCT * cols..]);
                }
                for (j, o) in c.block_channels(b).enumerate() {
                    let dst = &mut out[(o * n + r) * ow..][..ow];
                    let window = (j * cols, OCT * cols, pairs.len());
                    if self.geo.pool.is_none() {
                        c.requant_row(o, &sums[j * cols..][..cw], dst);
                    } else if on_sums {
                        // The max sum of each window, then one code per window.
                        pool_row(&sums, window, (cw, ww), &mut max, &mut pooled);
                        c.requant_row(o, &pooled, dst);
                    } else {
                        // Codes first, then their max.
                        for k in 0..pairs.len() {
                            for s in &mut sums[(k * OCT + j) * cols..][..cw] {
                                *s = c.requant.apply(o, *s) as i32;
                            }
                        }
                        pool_row(&sums, window, (cw, ww), &mut max, &mut pooled);
                        narrow(&pooled, dst);
                    }
                }
            }
        }
    }

    /// The one line `fennec bench --profile` shows for the node.
    fn describe(&self) -> String {
        let c = &self.conv;
        let mut s = format!(
            "int8 {}x{} conv {}->{} channels, pad {:?}",
            c.kh, c.kw, c.ic, c.oc, self.geo.pad
        );
        if self.quantize.is_some() {
            s = format!("quantize f32, {s}");
        }
        if let Some((wh, ww, _, _)) = self.geo.pool {
            s += &format!(", {wh}x{ww} max pool");
        }
        s
    }

    /// The op on a batch `[n, ic, h, w]` of codes.
    fn run(&self, input: &Tensor) -> TractResult<Tensor> {
        let c = &*self.conv;
        let (h, w) = self.geo.input_hw;
        let want = match self.quantize {
            Some(_) => f32::datum_type(),
            None => self.input.act.datum_type(),
        };
        ensure!(
            input.datum_type() == want && input.rank() == 4 && input.shape()[1..] == [c.ic, h, w],
            "FennecQConv expects {want:?} [N, {}, {h}, {w}], got {:?} {:?}",
            c.ic,
            input.datum_type(),
            input.shape()
        );
        let n = input.shape()[0];
        let (oh, ow) = self.geo.output_hw();
        let plane = oh * ow;
        let view = input.try_as_plain_ram()?;
        let image_len = c.ic * h * w;
        let zero_point = self.input.zero_point;
        let image = |i: usize| -> TractResult<Source> {
            Ok(match self.quantize {
                Some(quantize) => Source::Floats {
                    values: &view.as_slice::<f32>()?[i * image_len..][..image_len],
                    quantize,
                    zero_point,
                },
                None => Source::Codes {
                    codes: &view.as_bytes()[i * image_len..][..image_len],
                    signed: self.input.act == Act::I8,
                    zero_point,
                },
            })
        };
        let mut output = Tensor::zero_dt(self.output.datum_type(), &[n, c.oc, oh, ow])?;
        let mut out_view = output.try_as_plain_ram_mut()?;
        // Threads take bands of output rows, each into its own buffer.
        let threads = inference_pool();
        let parts = threads
            .as_ref()
            .map_or(1, |p| p.current_num_threads())
            .clamp(1, oh);
        let band = |p: usize| p * oh / parts..(p + 1) * oh / parts;
        for (i, out_image) in out_view.as_bytes_mut().chunks_mut(c.oc * plane).enumerate() {
            let image = image(i)?;
            match &threads {
                Some(pool) if parts > 1 => {
                    let bands: Vec<Vec<u8>> = pool.install(|| {
                        let packed = c.pack_input(&image, (h, w), self.geo.pad, true);
                        (0..parts)
                            .into_par_iter()
                            .map(|p| {
                                let mut out = vec![0; c.oc * band(p).len() * ow];
                                self.run_rows(&packed, band(p), &mut out);
                                out
                            })
                            .collect()
                    });
                    for (p, out) in bands.iter().enumerate() {
                        let rows = band(p);
                        for (o, src) in out.chunks_exact(rows.len() * ow).enumerate() {
                            out_image[(o * oh + rows.start) * ow..][..src.len()]
                                .copy_from_slice(src);
                        }
                    }
                }
                _ => {
                    let packed = c.pack_input(&image, (h, w), self.geo.pad, false);
                    self.run_rows(&packed, 0..oh, out_image)
                }
            }
        }
        Ok(output)
    }
}

simd_fn! {
    /// Codes (in range) to their bytes.
    fn narrow(codes: &[i32], out: &mut [u8]) {
        for (o, &c) in out.iter_mut().zip(codes) {
            *o = c as u8;
        }
    }
}

simd_fn! {
    /// One pooled row: the max over `n` rows of `w` values
    /// (`rows[start + r * stride..][..w]`, `window = (start, stride, n)`), then over
    /// windows of `ww` columns (the last one may be short), into `out`; `max` is
    /// room for `w` values.
    fn pool_row(
        rows: &[i32],
        window: (usize, usize, usize),
        width: (usize, usize),
        max: &mut [i32],
        out: &mut [i32],
    ) {
        let ((start, stride, n), (w, ww)) = (window, width);
        let max = &mut max[..w];
        max.copy_from_slice(&rows[start..][..w]);
        for r in 1..n {
            for (m, &v) in max.iter_mut().zip(&rows[start + r * stride..][..w]) {
                *m = (*m).max(v);
            }
        }
        if ww == 2 {
            for (o, pair) in out.iter_mut().zip(max.chunks_exact(2)) {
                *o = pair[0].max(pair[1]);
            }
            if w % 2 == 1 && out.len() > w / 2 {
                out[w / 2] = max[w - 1];
            }
        } else {
            for (o, cols) in out.iter_mut().zip(max.chunks(ww)) {
                *o = cols.iter().copied().max().unwrap_or(0);
            }
        }
    }
}

fused_op!(QConv, "FennecQConv");

impl TypedOp for QConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = self.geo.output_shape(&inputs[0].shape[0], self.conv.oc);
        Ok(tvec!(self.output.datum_type().fact(shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let per_image = self.geo.macs_per_image(self.conv.ic, self.conv.oc);
        Ok(tvec!((
            Cost::FMA(i32::datum_type()),
            inputs[0].shape[0].clone() * per_image
        )))
    }

    as_op!();
}
