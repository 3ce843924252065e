//! Reading the QDQ pattern out of a decluttered tract graph: the parameters of
//! its `QuantizeLinear` / `DequantizeLinear` nodes, integer codes of weights, and
//! the requantization of i32 sums.

use tract_nnef::tract_core::internal::*;
use tract_nnef::tract_core::ops::element_wise::ElementWiseOp;
use tract_nnef::tract_core::ops::quant::{DequantizeLinearF32, QuantizeLinearI8, QuantizeLinearU8};

/// The integer type of a quantized activation tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Act {
    U8,
    I8,
}

impl Act {
    fn of(dt: DatumType) -> Option<Act> {
        match dt {
            DatumType::U8 => Some(Act::U8),
            DatumType::I8 => Some(Act::I8),
            _ => None,
        }
    }

    pub fn datum_type(self) -> DatumType {
        match self {
            Act::U8 => u8::datum_type(),
            Act::I8 => i8::datum_type(),
        }
    }

    /// The smallest and largest code.
    pub fn range(self) -> (i32, i32) {
        match self {
            Act::U8 => (0, 255),
            Act::I8 => (-128, 127),
        }
    }

    /// The codes of `t` (of this type) minus `zero_point`, as i16 (exact: the
    /// difference of two 8-bit codes fits).
    pub fn centred(self, t: &Tensor, zero_point: i32) -> TractResult<Vec<i16>> {
        let view = t.try_as_plain_ram()?;
        Ok(match self {
            Act::U8 => view
                .as_slice::<u8>()?
                .iter()
                .map(|&v| (v as i32 - zero_point) as i16)
                .collect(),
            Act::I8 => view
                .as_slice::<i8>()?
                .iter()
                .map(|&v| (v as i32 - zero_point) as i16)
                .collect(),
        })
    }

    /// A tensor of this type from codes already in its range.
    pub fn tensor(self, shape: &[usize], codes: &[i16]) -> TractResult<Tensor> {
        match self {
            Act::U8 => {
                let v: Vec<u8> = codes.iter().map(|&c| c as u8).collect();
                Tensor::from_shape(shape, &v)
            }
            Act::I8 => {
                let v: Vec<i8> = codes.iter().map(|&c| c as i8).collect();
                Tensor::from_shape(shape, &v)
            }
        }
    }
}

/// `real = (code - zero_point) * scale` for a per-tensor quantized activation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QParams {
    pub act: Act,
    /// Real value of one step; for a `QuantizeLinear`, the reciprocal tract stores
    /// (it multiplies by it) is kept in `inv_scale`.
    pub scale: f32,
    pub inv_scale: f32,
    pub zero_point: i32,
}

impl QParams {
    /// Whether quantizing a value dequantized with `self` by `q` gives the code
    /// back (same step and zero point).
    pub fn round_trips_to(&self, q: &QParams) -> bool {
        self.act == q.act
            && self.zero_point == q.zero_point
            && self.scale > 0.0
            && (self.scale * q.inv_scale - 1.0).abs() < 1e-5
    }
}

/// The parameters of a `DequantizeLinear` node of an 8-bit tensor.
pub fn dequantize_params(model: &TypedModel, node: &TypedNode) -> TractResult<Option<QParams>> {
    let Some(dq) = node.op_as::<DequantizeLinearF32>() else {
        return Ok(None);
    };
    let Some(act) = Act::of(model.outlet_fact(node.inputs[0])?.datum_type) else {
        return Ok(None);
    };
    Ok((dq.scale.is_finite() && dq.scale > 0.0).then_some(QParams {
        act,
        scale: dq.scale,
        inv_scale: dq.scale.recip(),
        zero_point: dq.zero_point,
    }))
}

/// The parameters of a per-tensor `QuantizeLinear` node to u8 or i8.
pub fn quantize_params(node: &TypedNode) -> Option<QParams> {
    let ew = node.op_as::<ElementWiseOp>()?;
    let (act, inv_scale, zero_point) = if let Some(q) = ew.0.downcast_ref::<QuantizeLinearU8>() {
        (Act::U8, q.scale, q.zero_point as i32)
    } else {
        let q = ew.0.downcast_ref::<QuantizeLinearI8>()?;
        (Act::I8, q.scale, q.zero_point as i32)
    };
    (inv_scale.is_finite() && inv_scale > 0.0).then_some(QParams {
        act,
        scale: inv_scale.recip(),
        inv_scale,
        zero_point,
    })
}

/// The value of `outlet` when it is a constant, or computed from constants only
/// (tract leaves the dequantization of big int8 weights, `Cast` then `Mul`, in
/// the graph to run on every inference).
pub fn constant(model: &TypedModel, outlet: OutletId) -> TractResult<Option<Arc<Tensor>>> {
    constant_at_depth(model, outlet, 4)
}

fn constant_at_depth(
    model: &TypedModel,
    outlet: OutletId,
    depth: usize,
) -> TractResult<Option<Arc<Tensor>>> {
    let fact = model.outlet_fact(outlet)?;
    if let Some(k) = &fact.konst {
        return Ok(Some(k.clone()));
    }
    let node = model.node(outlet.node);
    if depth == 0 || node.inputs.is_empty() {
        return Ok(None);
    }
    let mut inputs = tvec![];
    for &i in &node.inputs {
        match constant_at_depth(model, i, depth - 1)? {
            Some(t) => inputs.push((*t).clone().into_tvalue()),
            None => return Ok(None),
        }
    }
    let Some(mut out) = node.op.eval_out_of_plan(inputs)? else {
        return Ok(None);
    };
    Ok(Some(out.remove(outlet.slot).into_arc_tensor()))
}

/// Symmetric int8 codes of f32 weights, one scale per row of `row_len` values:
/// `weights[r * row_len + i] == codes[..] as f32 * scales[r]` exactly, or `None`
/// when the weights are not such codes (then the layer stays in float).
pub fn int8_codes(weights: &[f32], row_len: usize) -> Option<(Vec<i8>, Vec<f32>)> {
    let mut codes = Vec::with_capacity(weights.len());
    let mut scales = Vec::with_capacity(weights.len() / row_len.max(1));
    for row in weights.chunks(row_len) {
        let amax = row.iter().fold(0.0f32, |m, w| m.max(w.abs()));
        if !amax.is_finite() {
            return None;
        }
        if amax == 0.0 {
            // Any scale gives zeros; 1 keeps the bias's step finite.
            codes.extend(std::iter::repeat_n(0i8, row.len()));
            scales.push(1.0);
            continue;
        }
        // quantize_static's symmetric codes reach 127 (or -128) in every
        // channel; the scale is then amax / 127 (or / 128), up to an ulp.
        let start = codes.len();
        let found = [127.0f32, 128.0].into_iter().find_map(|top| {
            let guess = amax / top;
            [0i32, 1, -1, 2, -2].into_iter().find_map(|ulps| {
                let s = f32::from_bits((guess.to_bits() as i32 + ulps) as u32);
                codes.truncate(start);
                for &w in row {
                    let q = (w / s).round_ties_even();
                    if !(-128.0..=127.0).contains(&q) || q * s != w {
                        return None;
                    }
                    codes.push(q as i8);
                }
                Some(s)
            })
        });
        scales.push(found?);
    }
    Some((codes, scales))
}

/// From an i32 sum (bias included) to an output code: `round_half_even(sum *
/// scale) + zero_point`, clamped to `[lo, hi]` (a fused ReLU raises `lo` to the
/// zero point).
#[derive(Debug, Clone, PartialEq)]
pub struct Requant {
    /// Integer bias per output channel, in units of the sum.
    pub bias: Vec<i32>,
    /// `input_scale * weight_scale / output_scale` per output channel.
    pub scale: Vec<f32>,
    pub zero_point: i32,
    pub lo: i32,
    pub hi: i32,
}

impl Requant {
    /// For sums of `(x - x_zero_point) * code` with `x` quantized as `input`, the
    /// weight codes' `weight_scales`, a float `bias` per channel, and the output
    /// quantized as `output` (its scale as tract applies it, `inv_scale`).
    pub fn new(
        input: &QParams,
        weight_scales: &[f32],
        bias: Option<&[f32]>,
        relu: bool,
        output: &QParams,
    ) -> Requant {
        let sum_scales: Vec<f32> = weight_scales.iter().map(|w| input.scale * w).collect();
        let bias = match bias {
            Some(b) => b
                .iter()
                .zip(&sum_scales)
                .map(|(&b, &s)| {
                    // A float `as` saturates at the i32 range.
                    (b / s).round_ties_even() as i32
                })
                .collect(),
            None => vec![0; weight_scales.len()],
        };
        let (lo, hi) = output.act.range();
        Requant {
            bias,
            scale: sum_scales.iter().map(|s| s * output.inv_scale).collect(),
            zero_point: output.zero_point,
            lo: if relu { lo.max(output.zero_point) } else { lo },
            hi,
        }
    }

    /// The output code of channel `o` for the sum `acc` (bias not yet added).
    #[inline(always)]
    pub fn apply(&self, o: usize, acc: i32) -> i16 {
        self.code(acc.wrapping_add(self.bias[o]), self.scale[o])
    }

    /// The output code of a sum with its bias added, with its channel's `scale`.
    #[inline(always)]
    pub fn code(&self, sum: i32, scale: f32) -> i16 {
        let v = (sum as f32 * scale).round_ties_even();
        (v as i32)
            .saturating_add(self.zero_point)
            .clamp(self.lo, self.hi) as i16
    }

    /// Whether every scale is finite, as the vector kernels need (they clamp in
    /// float before rounding, which a NaN would pass through differently).
    pub fn is_finite(&self) -> bool {
        self.scale.iter().all(|s| s.is_finite())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_of_quantized_weights_are_found_exactly() {
        let scales = [0.0123f32, 3.5e-4, 0.0];
        let codes: Vec<i8> = (0..30).map(|i| ((i * 37) % 255 - 127) as i8).collect();
        let mut w = vec![];
        for (r, s) in scales.iter().enumerate() {
            let mut row: Vec<i8> = codes[r * 10..r * 10 + 10].to_vec();
            row[3] = if r == 1 { -127 } else { 127 }; // every channel reaches 127
            w.extend(row.iter().map(|&q| q as f32 * s));
        }
        let (got, got_scales) = int8_codes(&w, 10).unwrap();
        for (i, (&q, &wv)) in got.iter().zip(&w).enumerate() {
            assert_eq!(q as f32 * got_scales[i / 10], wv, "weight {i}");
        }
        assert_eq!(got_scales[2], 1.0);
        // Weights that are not codes times a scale are refused.
        assert!(int8_codes(&[0.3, 0.1, -0.2, 0.123_456_7], 4).is_none());
    }

    #[test]
    fn requantization_rounds_half_to_even_and_saturates() {
        let q = |scale: f32, zp: i32| QParams {
            act: Act::U8,
            scale,
            inv_scale: scale.recip(),
            zero_point: zp,
        };
        let r = Requant::new(&q(0.5, 0), &[1.0], Some(&[1.0]), false, &q(1.0, 10));
        assert_eq!(r.bias, [2]);
        // (acc + 2) * 0.5: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, then + 10.
        assert_eq!(r.apply(0, -1), 10);
        assert_eq!(r.apply(0, 1), 12);
        assert_eq!(r.apply(0, 3), 12);
        assert_eq!(r.apply(0, 1000), 255);
        assert_eq!(r.apply(0, -1000), 0);
        let relu = Requant::new(&q(0.5, 0), &[1.0], None, true, &q(1.0, 10));
        assert_eq!(relu.apply(0, -40), 10);
    }
}
