//! Convolution, ReLU and max-pooling fused into one autodiff operation with
//! hand-written forward and backward kernels for burn's flex CPU backend, because
//! burn's own path is the trainer's bottleneck there.
//!
//! Flex computes a conv's weight gradient as a generic convolution with batch and
//! channels swapped: a skinny GEMM (N = kh·kw) that re-reads the whole output
//! gradient once per input channel and runs in parallel only over input channels
//! (notes: burn-0.22 §6). Around it, the ReLU and the max-pool each read and write
//! the full-resolution map again, forward and backward (at 224x224 and batch 64 the
//! first conv's output alone is 400 MB). Here every image is one task on rayon's
//! pool, processed in tiles of output rows that stay in cache:
//!
//! - forward: im2col of the tile, `conv = W · cols` with the `gemm` crate (the one
//!   flex uses), bias and ReLU, then (when a max-pool follows) the pool, keeping the
//!   arg-max of each window; the full-resolution map is never stored;
//! - backward: the output gradient is routed back through the pool's arg-max and
//!   masked by the ReLU, and the same im2col tiles give `dW += g · colsᵀ` (a
//!   well-shaped GEMM), `db += Σ g` and, when the input needs a gradient (not for the
//!   first layer), `dcols = Wᵀ · g` scattered back with col2im.
//!
//! Per-image partial weight/bias gradients are summed in image order and each GEMM
//! is single-threaded, so results do not depend on the thread count.
//!
//! The functions take burn's [`Conv2d`] and [`MaxPool2d`] modules as they are (same
//! parameters, names and layout: `[out, in, kh, kw]` and `[out]`), so checkpoints and
//! the ONNX exporter are unaffected. What is not covered here (other backends, f16,
//! groups, dilation, a conv without bias, overlapping or dilated pools, gradient
//! checkpointing) goes through burn's own modules.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, BackendTypes, Flex};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::tensor::activation::relu;
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

/// Defines `fn $name` whose body is compiled twice, for the baseline target and for
/// AVX2+FMA, the latter chosen at run time when the CPU has it: the element-wise
/// loops here are memory- or shuffle-bound and the x86-64 baseline (SSE2) leaves
/// most of the width unused. Helpers called from the body must be `#[inline(always)]`
/// to get the same treatment.
macro_rules! simd_fn {
    ($(#[$attr:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$attr])*
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `avx2` is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

type AutodiffFlexTensor = <Autodiff<Flex> as BackendTypes>::FloatTensorPrimitive;

/// `relu(conv(x))` when `relu_after`, else `conv(x)`, for `x: [batch, in, h, w]`.
pub fn conv2d(x: Tensor<4>, conv: &Conv2d, relu_after: bool) -> Tensor<4> {
    if let Some(y) = flex_op(&x, conv, relu_after, None) {
        return y;
    }
    let y = conv.forward(x);
    if relu_after { relu(y) } else { y }
}

/// `pool(relu(conv(x)))` when `relu_after`, else `pool(conv(x))`.
pub fn conv2d_maxpool(
    x: Tensor<4>,
    conv: &Conv2d,
    relu_after: bool,
    pool: &MaxPool2d,
) -> Tensor<4> {
    if let Some(y) = flex_op(&x, conv, relu_after, Some(pool)) {
        return y;
    }
    pool.forward(conv2d(x, conv, relu_after))
}

/// The flex path; `None` when the case is not covered here.
fn flex_op(
    x: &Tensor<4>,
    conv: &Conv2d,
    relu_after: bool,
    pool: Option<&MaxPool2d>,
) -> Option<Tensor<4>> {
    if std::env::var_os("FENNEC_BURN_CONV").is_some() {
        return None;
    }
    if std::env::var_os("FENNEC_NO_POOL_FUSION").is_some() && pool.is_some() {
        return None;
    }
    if conv.groups != 1 || conv.dilation != [1, 1] || x.dtype() != DType::F32 {
        return None;
    }
    let bias = conv.bias.as_ref()?;
    let [batch, cin, h, w] = x.dims();
    let [cout, wcin, kh, kw] = conv.weight.dims();
    if wcin != cin || [kh, kw] != conv.kernel_size {
        return None;
    }
    let g = Geometry::new(
        [batch, cin, h, w],
        [cout, kh, kw],
        conv.stride,
        &conv.padding,
    )?;
    let pool = match pool {
        Some(p) => {
            if p.dilation != [1, 1] || p.ceil_mode || p.stride != p.kernel_size {
                return None;
            }
            Some(Pool::new([g.ho, g.wo], p.kernel_size, &p.padding)?)
        }
        None => None,
    };
    let op = Op {
        g,
        pool,
        relu: relu_after,
    };
    let (weight, bias) = (conv.weight.val(), bias.val());
    if weight.dtype() != DType::F32 || bias.dtype() != DType::F32 {
        return None;
    }
    if x.device().is_autodiff() {
        let xa = x.clone().try_into_primitive::<Autodiff<Flex>>().ok()?;
        let wa = weight.try_into_primitive::<Autodiff<Flex>>().ok()?;
        let ba = bias.try_into_primitive::<Autodiff<Flex>>().ok()?;
        Some(Tensor::from_primitive::<Autodiff<Flex>>(autodiff_op(
            xa, wa, ba, op,
        )))
    } else {
        let xp = contiguous(x.clone().try_into_primitive::<Flex>().ok()?);
        let wp = contiguous(weight.try_into_primitive::<Flex>().ok()?);
        let bp = contiguous(bias.try_into_primitive::<Flex>().ok()?);
        let y = forward(f32s(&xp), f32s(&wp), f32s(&bp), &op);
        Some(Tensor::from_primitive::<Flex>(flex_tensor(
            y.out,
            op.out_shape(),
        )))
    }
}

/// Records the operation as one autodiff node with [`OpBackward`] as its backward step.
fn autodiff_op(
    x: AutodiffFlexTensor,
    w: AutodiffFlexTensor,
    b: AutodiffFlexTensor,
    op: Op,
) -> AutodiffFlexTensor {
    let (xp, xg) = x.into_parts();
    let (wp, wg) = w.into_parts();
    let (bp, bg) = b.into_parts();
    let (xp, wp, bp) = (contiguous(xp), contiguous(wp), contiguous(bp));
    let y = forward(f32s(&xp), f32s(&wp), f32s(&bp), &op);
    let out = flex_tensor(y.out, op.out_shape());
    match OpBackward
        .prepare::<NoCheckpointing>([xg, wg, bg])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let state = OpState {
                x: xp,
                w: wp,
                out: op.relu.then(|| out.clone()),
                argmax: Arc::new(y.argmax),
                op,
            };
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// What the backward step needs: the input, the weights, the output when a ReLU
/// is fused (its mask), the pool's arg-max, and the shapes. Tensors are shared, not
/// copied.
#[derive(Debug, Clone)]
struct OpState {
    x: FlexTensor,
    w: FlexTensor,
    out: Option<FlexTensor>,
    argmax: Arc<Vec<u8>>,
    op: Op,
}

#[derive(Debug)]
struct OpBackward;

impl Backward<Flex, 3> for OpBackward {
    type State = OpState;

    fn backward(self, ops: Ops<OpState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        let s = ops.state;
        let g = &s.op.g;
        let out = backward(
            f32s(&s.x),
            f32s(&s.w),
            s.out.as_ref().map(f32s),
            &s.argmax,
            f32s(&dy),
            &s.op,
            node_x.is_some(),
        );
        if let (Some(node), Some(dx)) = (node_x, out.dx) {
            grads.register::<Flex>(node.id, flex_tensor(dx, [g.batch, g.cin, g.h, g.w]));
        }
        if let Some(node) = node_w {
            grads.register::<Flex>(node.id, flex_tensor(out.dw, [g.cout, g.cin, g.kh, g.kw]));
        }
        if let Some(node) = node_b {
            grads.register::<Flex>(node.id, flex_tensor(out.db, [g.cout]));
        }
    }
}

fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32 tensor")
}

fn flex_tensor<const D: usize>(v: Vec<f32>, shape: [usize; D]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape))
}

/// Padding `(begin, end)` of one dimension, as burn (and Keras) compute it.
fn padding_1d(
    padding: &PaddingConfig2d,
    dim: usize,
    kernel: usize,
    stride: usize,
    size: usize,
) -> (usize, usize) {
    match *padding {
        PaddingConfig2d::Valid => (0, 0),
        PaddingConfig2d::Same => {
            let out = size.div_ceil(stride);
            let total = ((out.max(1) - 1) * stride + kernel).saturating_sub(size);
            (total / 2, total - total / 2)
        }
        PaddingConfig2d::Explicit(top, left, bottom, right) => {
            if dim == 0 {
                (top, bottom)
            } else {
                (left, right)
            }
        }
    }
}

/// Shapes of one convolution: input `[batch, cin, h, w]`, kernel `[cout, cin, kh, kw]`,
/// stride, top/left padding (bottom/right padding is implied by the output size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub batch: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Geometry {
    /// `None` when the kernel does not fit the padded input or a size is zero.
    pub fn new(
        [batch, cin, h, w]: [usize; 4],
        [cout, kh, kw]: [usize; 3],
        [sh, sw]: [usize; 2],
        padding: &PaddingConfig2d,
    ) -> Option<Geometry> {
        if [batch, cin, h, w, cout, kh, kw, sh, sw].contains(&0) {
            return None;
        }
        let (pt, pb) = padding_1d(padding, 0, kh, sh, h);
        let (pl, pr) = padding_1d(padding, 1, kw, sw, w);
        if h + pt + pb < kh || w + pl + pr < kw {
            return None;
        }
        let ho = (h + pt + pb - kh) / sh + 1;
        let wo = (w + pl + pr - kw) / sw + 1;
        Some(Geometry {
            batch,
            cin,
            h,
            w,
            cout,
            kh,
            kw,
            sh,
            sw,
            pad_top: pt,
            pad_left: pl,
            ho,
            wo,
        })
    }

    /// Rows of the im2col matrix: `cin * kh * kw`.
    fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }
    /// Output pixels per channel.
    fn n(&self) -> usize {
        self.ho * self.wo
    }
    fn in_len(&self) -> usize {
        self.cin * self.h * self.w
    }
    /// A 1x1, stride-1, unpadded conv: the input planes are the im2col matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.sh == 1
            && self.sw == 1
            && self.pad_top == 0
            && self.pad_left == 0
    }
    /// Output rows per tile: about `TILE_ELEMS` im2col values, at least one row.
    fn tile_rows(&self) -> usize {
        let te = std::env::var("FENNEC_TILE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(TILE_ELEMS);
        (te / (self.k() * self.wo).max(1)).clamp(1, self.ho)
    }
}

/// A max-pool whose stride equals its kernel (windows do not overlap) on a conv's
/// output map `[.., h, w]`; padding positions never win.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub kh: usize,
    pub kw: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Pool {
    /// `None` when a window would hold padding only, or has more than 256 positions.
    pub fn new(
        [h, w]: [usize; 2],
        [kh, kw]: [usize; 2],
        padding: &PaddingConfig2d,
    ) -> Option<Pool> {
        if kh == 0 || kw == 0 || kh * kw > 256 {
            return None;
        }
        let (pt, pb) = padding_1d(padding, 0, kh, kh, h);
        let (pl, pr) = padding_1d(padding, 1, kw, kw, w);
        if pt >= kh || pl >= kw || h + pt + pb < kh || w + pl + pr < kw {
            return None;
        }
        let ho = (h + pt + pb - kh) / kh + 1;
        let wo = (w + pl + pr - kw) / kw + 1;
        // The last window must reach into the map.
        if (ho - 1) * kh >= h + pt || (wo - 1) * kw >= w + pl {
            return None;
        }
        Some(Pool {
            kh,
            kw,
            pad_top: pt,
            pad_left: pl,
            ho,
            wo,
        })
    }
}

/// The fused operation: conv, then optionally ReLU, then optionally a max-pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    pub g: Geometry,
    pub pool: Option<Pool>,
    pub relu: bool,
}

/// Rows of one tile: conv output rows `cy0..cy1` and, with a pool, the pooled rows
/// `py0..py1` whose windows they hold.
#[derive(Debug, Clone, Copy)]
struct Tile {
    cy0: usize,
    cy1: usize,
    py0: usize,
    py1: usize,
}

impl Tile {
    fn nt(&self, g: &Geometry) -> usize {
        (self.cy1 - self.cy0) * g.wo
    }
}

impl Op {
    /// `[batch, channels, height, width]` of the result.
    fn out_shape(&self) -> [usize; 4] {
        let (h, w) = self.out_hw();
        [self.g.batch, self.g.cout, h, w]
    }
    fn out_hw(&self) -> (usize, usize) {
        match self.pool {
            Some(p) => (p.ho, p.wo),
            None => (self.g.ho, self.g.wo),
        }
    }
    /// Values of the result per image.
    fn out_len(&self) -> usize {
        let (h, w) = self.out_hw();
        self.g.cout * h * w
    }
    fn tiles(&self) -> Vec<Tile> {
        let g = &self.g;
        let rows = g.tile_rows();
        match self.pool {
            None => (0..g.ho)
                .step_by(rows)
                .map(|y0| {
                    let y1 = (y0 + rows).min(g.ho);
                    Tile {
                        cy0: y0,
                        cy1: y1,
                        py0: y0,
                        py1: y1,
                    }
                })
                .collect(),
            Some(p) => {
                let prows = (rows / p.kh).max(1);
                (0..p.ho)
                    .step_by(prows)
                    .map(|py0| {
                        let py1 = (py0 + prows).min(p.ho);
                        let cy0 = (py0 * p.kh).saturating_sub(p.pad_top);
                        let cy1 = (py1 * p.kh - p.pad_top).min(g.ho);
                        Tile { cy0, cy1, py0, py1 }
                    })
                    .collect()
            }
        }
    }
}

/// Target size of one im2col tile (f32 values): small enough to stay in L2.
const TILE_ELEMS: usize = 64 * 1024;

/// Writes the im2col matrix of output rows `y0..y1` of one image `x` (`cin x h x w`)
/// into `cols` (`k x nt`, row `(c*kh + i)*kw + j`, column `(oy - y0)*wo + ox`).
fn im2col(x: &[f32], g: &Geometry, y0: usize, y1: usize, cols: &mut [f32]) {
    let nt = (y1 - y0) * g.wo;
    let (h, w, wo) = (g.h, g.w, g.wo);
    for c in 0..g.cin {
        let plane = &x[c * h * w..(c + 1) * h * w];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &mut cols[((c * g.kh + i) * g.kw + j) * nt..][..nt];
                // Output columns ox whose input column ox*sw + j - pad_left is inside.
                let lo = g.pad_left.saturating_sub(j).div_ceil(g.sw).min(wo);
                let hi = (w + g.pad_left)
                    .saturating_sub(j)
                    .div_ceil(g.sw)
                    .clamp(lo, wo);
                for oy in y0..y1 {
                    let dst = &mut row[(oy - y0) * wo..][..wo];
                    let iy = (oy * g.sh + i).wrapping_sub(g.pad_top);
                    if iy >= h {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy * w..(iy + 1) * w];
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    let x0 = lo * g.sw + j - g.pad_left;
                    if g.sw == 1 {
                        dst[lo..hi].copy_from_slice(&src[x0..x0 + (hi - lo)]);
                    } else {
                        for (d, s) in dst[lo..hi].iter_mut().zip(src[x0..].iter().step_by(g.sw)) {
                            *d = *s;
                        }
                    }
                }
            }
        }
    }
}

simd_fn! {
/// The adjoint of [`im2col`]: adds `dcols` (`k x nt` of rows `y0..y1`) into the
/// image gradient `dx` (`cin x h x w`).
fn col2im_add(dcols: &[f32], g: &Geometry, y0: usize, y1: usize, dx: &mut [f32]) {
    let nt = (y1 - y0) * g.wo;
    let (h, w, wo) = (g.h, g.w, g.wo);
    for c in 0..g.cin {
        let plane = &mut dx[c * h * w..(c + 1) * h * w];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &dcols[((c * g.kh + i) * g.kw + j) * nt..][..nt];
                let lo = g.pad_left.saturating_sub(j).div_ceil(g.sw).min(wo);
                let hi = (w + g.pad_left).saturating_sub(j).div_ceil(g.sw).clamp(lo, wo);
                for oy in y0..y1 {
                    let iy = (oy * g.sh + i).wrapping_sub(g.pad_top);
                    if iy >= h {
                        continue;
                    }
                    let src = &row[(oy - y0) * wo..][lo..hi];
                    let dst = &mut plane[iy * w..(iy + 1) * w];
                    let x0 = lo * g.sw + j - g.pad_left;
                    if g.sw == 1 {
                        for (d, s) in dst[x0..x0 + src.len()].iter_mut().zip(src) {
                            *d += *s;
                        }
                    } else {
                        for (d, s) in dst[x0..].iter_mut().step_by(g.sw).zip(src) {
                            *d += *s;
                        }
                    }
                }
            }
        }
    }
}
}

/// `dst (m x n, row stride dst_rs) = [dst +] lhs (m x k) · rhs (k x n)`, matrices
/// given by pointer and (row, column) strides; single-threaded.
///
/// # Safety
/// Every addressed element must be inside its buffer; `dst` must not alias the inputs.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    [m, n, k]: [usize; 3],
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const f32,
    [lhs_rs, lhs_cs]: [usize; 2],
    rhs: *const f32,
    [rhs_rs, rhs_cs]: [usize; 2],
) {
    // SAFETY: forwarded to the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// The im2col matrix of conv rows `y0..y1` of image `xb` as (pointer, row stride):
/// the input itself for a pointwise conv, else built in `cols`.
fn cols_of<'a>(
    xb: &'a [f32],
    g: &Geometry,
    y0: usize,
    y1: usize,
    cols: &'a mut Vec<f32>,
) -> (&'a [f32], usize) {
    if g.pointwise() {
        (&xb[y0 * g.wo..], g.n())
    } else {
        let nt = (y1 - y0) * g.wo;
        cols.resize(g.k() * nt, 0.0);
        im2col(xb, g, y0, y1, cols);
        (&cols[..], nt)
    }
}

/// Result of [`forward`].
pub struct Forward {
    /// `batch x cout x out_h x out_w`.
    pub out: Vec<f32>,
    /// With a pool: the winning position (`dy * kw + dx`) of each output value.
    pub argmax: Vec<u8>,
}

/// Forward pass on contiguous NCHW data: `x` is `batch x cin x h x w`, `w` is
/// `cout x (cin*kh*kw)`, `b` is `cout`.
pub fn forward(x: &[f32], w: &[f32], b: &[f32], op: &Op) -> Forward {
    let g = &op.g;
    assert_eq!(
        (x.len(), w.len(), b.len()),
        (g.batch * g.in_len(), g.cout * g.k(), g.cout)
    );
    let (k, n, out_len) = (g.k(), g.n(), op.out_len());
    let tiles = op.tiles();
    let mut out = vec![0f32; g.batch * out_len];
    let mut argmax = vec![
        0u8;
        if op.pool.is_some() {
            g.batch * out_len
        } else {
            0
        }
    ];
    let mut argmax_images: Vec<&mut [u8]> = if op.pool.is_some() {
        argmax.chunks_mut(out_len).collect()
    } else {
        (0..g.batch).map(|_| &mut [][..]).collect()
    };
    let scratch = || {
        (
            Vec::new(),
            Vec::new(),
            vec![0i32; op.pool.map_or(0, |p| p.wo)],
        )
    };
    out.par_chunks_mut(out_len)
        .zip(argmax_images.par_iter_mut())
        .zip(x.par_chunks(g.in_len()))
        .for_each_init(scratch, |(cols, conv, pool_at), ((o, am), xb)| {
            for t in &tiles {
                let nt = t.nt(g);
                // The conv rows of the tile: straight into the output without a pool.
                let (dst, dst_rs) = match op.pool {
                    None => (&mut o[t.cy0 * g.wo..], n),
                    Some(_) => {
                        conv.resize(g.cout * nt, 0.0);
                        (&mut conv[..], nt)
                    }
                };
                let (rhs, rhs_rs) = cols_of(xb, g, t.cy0, t.cy1, cols);
                // SAFETY: dst holds cout rows of dst_rs ≥ nt values (the last row
                // exactly nt); w is cout x k; rhs holds k rows of rhs_rs ≥ nt values.
                unsafe {
                    matmul(
                        [g.cout, nt, k],
                        dst.as_mut_ptr(),
                        dst_rs,
                        false,
                        w.as_ptr(),
                        [k, 1],
                        rhs.as_ptr(),
                        [rhs_rs, 1],
                    );
                }
                match op.pool {
                    None => bias_act(dst, dst_rs, nt, b, op.relu),
                    Some(p) => {
                        // max(relu(c + b)) = relu(max(c) + b): bias and ReLU on the pooled
                        // values only (exactly, as rounding is monotonic).
                        pool_tile(conv, g, &p, t, o, am, pool_at);
                        let (plane, rows) = (p.ho * p.wo, (t.py1 - t.py0) * p.wo);
                        bias_act(&mut o[t.py0 * p.wo..], plane, rows, b, op.relu);
                    }
                }
            }
        });
    drop(argmax_images);
    Forward { out, argmax }
}

simd_fn! {
    /// Adds `bias[c]` to the `len` values of row `c` (rows `stride` apart) of `rows`,
    /// then applies the ReLU when `relu`.
    fn bias_act(rows: &mut [f32], stride: usize, len: usize, bias: &[f32], relu: bool) {
        for (c, &b) in bias.iter().enumerate() {
            let row = &mut rows[c * stride..][..len];
            if relu {
                row.iter_mut().for_each(|v| *v = (*v + b).max(0.0));
            } else {
                row.iter_mut().for_each(|v| *v += b);
            }
        }
    }
}

simd_fn! {
    /// Max-pools the conv tile `conv` (`cout x nt`) into pooled rows `t.py0..t.py1` of
    /// one image's output `o` and arg-max `am` (the first maximum in row-major order
    /// wins). `at` is scratch of `p.wo` values.
    fn pool_tile(conv: &[f32], g: &Geometry, p: &Pool, t: &Tile, o: &mut [f32], am: &mut [u8], at: &mut [i32]) {
        let nt = t.nt(g);
        for co in 0..g.cout {
            let plane = &conv[co * nt..(co + 1) * nt];
            for py in t.py0..t.py1 {
                let i0 = (co * p.ho + py) * p.wo;
                let best = &mut o[i0..i0 + p.wo];
                // The window's rows that lie inside the map (padding never wins).
                let top = (py * p.kh) as isize - p.pad_top as isize;
                let rows = (top.max(0) as usize)..((top + p.kh as isize) as usize).min(g.ho);
                for (r, cy) in rows.enumerate() {
                    let dy = (cy as isize - top) as usize;
                    let row = &plane[(cy - t.cy0) * g.wo..][..g.wo];
                    pool_row(row, p, dy, r == 0, best, at);
                }
                for (a, &v) in am[i0..i0 + p.wo].iter_mut().zip(at.iter()) {
                    *a = v as u8;
                }
            }
        }
    }
}

/// Folds one conv row (window row `dy`) into the running maxima `best` and arg-max
/// `at` of a pooled row; `first` starts them.
#[inline(always)]
fn pool_row(row: &[f32], p: &Pool, dy: usize, first: bool, best: &mut [f32], at: &mut [i32]) {
    let base = (dy * p.kw) as i32;
    if p.kw == 2 && p.pad_left == 0 {
        // The common 2x2 case: pairs (branch-free, so that it vectorises), then an
        // odd last column.
        let pairs = row.len() / 2;
        let lanes = best.iter_mut().zip(at.iter_mut()).zip(row.chunks_exact(2));
        if first {
            for ((b, a), pair) in lanes {
                let right = pair[1] > pair[0];
                *b = if right { pair[1] } else { pair[0] };
                *a = base + right as i32;
            }
        } else {
            for ((b, a), pair) in lanes {
                let right = pair[1] > pair[0];
                let v = if right { pair[1] } else { pair[0] };
                let take = v > *b;
                *b = if take { v } else { *b };
                *a = if take { base + right as i32 } else { *a };
            }
        }
        if pairs < best.len() {
            let v = row[2 * pairs];
            if first || v > best[pairs] {
                (best[pairs], at[pairs]) = (v, base);
            }
        }
        return;
    }
    for (px, (b, a)) in best.iter_mut().zip(at.iter_mut()).enumerate() {
        let left = (px * p.kw) as isize - p.pad_left as isize;
        let cols = (left.max(0) as usize)..((left + p.kw as isize) as usize).min(row.len());
        for (c, cx) in cols.enumerate() {
            let v = row[cx];
            if (first && c == 0) || v > *b {
                (*b, *a) = (v, base + (cx as isize - left) as i32);
            }
        }
    }
}

/// Gradients of one operation.
pub struct Grads {
    /// `batch x cin x h x w`, when asked for.
    pub dx: Option<Vec<f32>>,
    /// `cout x (cin*kh*kw)` (= `[cout, cin, kh, kw]`).
    pub dw: Vec<f32>,
    /// `cout`.
    pub db: Vec<f32>,
}

/// Backward pass. `dy` is the gradient of the result; `out` is the result itself,
/// needed when a ReLU is fused (its gradient is `dy` where `out > 0`, else 0);
/// `argmax` is [`Forward::argmax`] when a pool is fused.
pub fn backward(
    x: &[f32],
    w: &[f32],
    out: Option<&[f32]>,
    argmax: &[u8],
    dy: &[f32],
    op: &Op,
    want_dx: bool,
) -> Grads {
    let g = &op.g;
    let (k, n, in_len, out_len) = (g.k(), g.n(), g.in_len(), op.out_len());
    assert_eq!(
        (x.len(), w.len(), dy.len()),
        (g.batch * in_len, g.cout * k, g.batch * out_len)
    );
    assert!(
        !op.relu || out.is_some_and(|o| o.len() == dy.len()),
        "a fused ReLU needs the output"
    );
    assert!(
        op.pool.is_none() || argmax.len() == dy.len(),
        "a fused pool needs the arg-max"
    );
    let tiles = op.tiles();
    let mut dw_parts = vec![0f32; g.batch * g.cout * k];
    let mut db_parts = vec![0f32; g.batch * g.cout];
    let mut dx = if want_dx {
        vec![0f32; g.batch * in_len]
    } else {
        Vec::new()
    };
    let mut dx_images: Vec<Option<&mut [f32]>> = if want_dx {
        dx.chunks_mut(in_len).map(Some).collect()
    } else {
        (0..g.batch).map(|_| None).collect()
    };

    struct Scratch {
        cols: Vec<f32>,
        grad: Vec<f32>,
        dcols: Vec<f32>,
    }
    let scratch = || Scratch {
        cols: Vec::new(),
        grad: Vec::new(),
        dcols: Vec::new(),
    };
    dw_parts
        .par_chunks_mut(g.cout * k)
        .zip(db_parts.par_chunks_mut(g.cout))
        .zip(dx_images.par_iter_mut())
        .enumerate()
        .for_each_init(scratch, |s, (img, ((dw, db), dx))| {
            let xb = &x[img * in_len..(img + 1) * in_len];
            let dyb = &dy[img * out_len..(img + 1) * out_len];
            let ob = out.map(|o| &o[img * out_len..(img + 1) * out_len]);
            let ab = op.pool.map(|_| &argmax[img * out_len..(img + 1) * out_len]);
            for (ti, t) in tiles.iter().enumerate() {
                let nt = t.nt(g);
                // The gradient of the conv rows of this tile (after the ReLU mask), `cout x nt`.
                s.grad.resize(g.cout * nt, 0.0);
                match (op.pool, ab) {
                    (Some(p), Some(ab)) => unpool_tile(dyb, ob, ab, g, &p, t, &mut s.grad),
                    _ => conv_grad_tile(dyb, ob, g, t, &mut s.grad),
                }
                add_row_sums(&s.grad, nt, db);
                let (cols, cols_rs) = cols_of(xb, g, t.cy0, t.cy1, &mut s.cols);
                // dW (cout x k) += grad (cout x nt) · colsᵀ (nt x k).
                // SAFETY: sizes as documented on each buffer above.
                unsafe {
                    matmul(
                        [g.cout, k, nt],
                        dw.as_mut_ptr(),
                        k,
                        ti > 0,
                        s.grad.as_ptr(),
                        [nt, 1],
                        cols.as_ptr(),
                        [1, cols_rs],
                    );
                }
                let Some(dx) = dx else { continue };
                // dcols (k x nt) = Wᵀ (k x cout) · grad (cout x nt), then col2im.
                if g.pointwise() {
                    // SAFETY: dx holds k (= cin) rows of n ≥ cy0*wo + nt values.
                    unsafe {
                        let dst = dx.as_mut_ptr().add(t.cy0 * g.wo);
                        matmul(
                            [k, nt, g.cout],
                            dst,
                            n,
                            false,
                            w.as_ptr(),
                            [1, k],
                            s.grad.as_ptr(),
                            [nt, 1],
                        );
                    }
                } else {
                    s.dcols.resize(k * nt, 0.0);
                    // SAFETY: dcols is k x nt.
                    unsafe {
                        matmul(
                            [k, nt, g.cout],
                            s.dcols.as_mut_ptr(),
                            nt,
                            false,
                            w.as_ptr(),
                            [1, k],
                            s.grad.as_ptr(),
                            [nt, 1],
                        );
                    }
                    col2im_add(&s.dcols, g, t.cy0, t.cy1, dx);
                }
            }
        });
    drop(dx_images);

    // Sum the per-image parts in image order: the same result for any thread count.
    let sum = |parts: &[f32], len: usize| {
        let mut chunks = parts.chunks_exact(len);
        let mut total = chunks.next().expect("batch ≥ 1").to_vec();
        for p in chunks {
            total.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        total
    };
    Grads {
        dx: want_dx.then_some(dx),
        dw: sum(&dw_parts, g.cout * k),
        db: sum(&db_parts, g.cout),
    }
}

simd_fn! {
    /// The gradient of conv rows `t.cy0..t.cy1` (`cout x nt`) from the output's
    /// gradient `dyb`, masked by `ob > 0` (the output) when a ReLU is fused.
    fn conv_grad_tile(dyb: &[f32], ob: Option<&[f32]>, g: &Geometry, t: &Tile, grad: &mut [f32]) {
        let (n, nt) = (g.n(), t.nt(g));
        for co in 0..g.cout {
            let src = &dyb[co * n + t.cy0 * g.wo..][..nt];
            let dst = &mut grad[co * nt..(co + 1) * nt];
            match ob {
                Some(ob) => {
                    let mask = &ob[co * n + t.cy0 * g.wo..][..nt];
                    for ((d, &v), &m) in dst.iter_mut().zip(src).zip(mask) {
                        *d = if m > 0.0 { v } else { 0.0 };
                    }
                }
                None => dst.copy_from_slice(src),
            }
        }
    }
}

simd_fn! {
    /// `sums[c] += Σ rows[c]` for rows of `len` values.
    fn add_row_sums(rows: &[f32], len: usize, sums: &mut [f32]) {
        for (sum, row) in sums.iter_mut().zip(rows.chunks_exact(len)) {
            // Eight partial sums: vectorisable, and a fixed order (deterministic).
            let mut acc = [0f32; 8];
            let chunks = row.chunks_exact(8);
            let tail: f32 = chunks.remainder().iter().sum();
            for c in chunks {
                for (a, v) in acc.iter_mut().zip(c) {
                    *a += v;
                }
            }
            *sum += acc.iter().sum::<f32>() + tail;
        }
    }
}

simd_fn! {
    /// Routes the pooled gradient `dyb` of rows `t.py0..t.py1` back to the arg-max
    /// positions of the conv tile `grad` (`cout x nt`, zero elsewhere); with a fused
    /// ReLU (`ob`, the pooled output), windows whose maximum is not positive pass
    /// nothing.
    fn unpool_tile(dyb: &[f32], ob: Option<&[f32]>, ab: &[u8], g: &Geometry, p: &Pool, t: &Tile, grad: &mut [f32]) {
        let nt = t.nt(g);
        grad.fill(0.0);
        let pairs = p.kw == 2 && p.pad_left == 0;
        // Offset of each window position from the window's top-left corner in the tile.
        let offsets: Vec<isize> = (0..p.kh * p.kw).map(|a| ((a / p.kw) * g.wo + a % p.kw) as isize).collect();
        for co in 0..g.cout {
            let plane = &mut grad[co * nt..(co + 1) * nt];
            for py in t.py0..t.py1 {
                let i0 = (co * p.ho + py) * p.wo;
                let (d, a) = (&dyb[i0..i0 + p.wo], &ab[i0..i0 + p.wo]);
                let mask = ob.map(|o| &o[i0..i0 + p.wo]);
                let top = (py * p.kh) as isize - p.pad_top as isize;
                if pairs {
                    // 2-wide windows: write each covered conv row densely.
                    let rows = (top.max(0) as usize)..((top + p.kh as isize) as usize).min(g.ho);
                    for cy in rows {
                        let base = ((cy as isize - top) * 2) as u8;
                        let row = &mut plane[(cy - t.cy0) * g.wo..][..g.wo];
                        unpool_row(row, d, a, mask, base);
                    }
                    continue;
                }
                let row_base = (top - t.cy0 as isize) * g.wo as isize - p.pad_left as isize;
                for px in 0..p.wo {
                    if mask.is_some_and(|m| m[px] <= 0.0) {
                        continue;
                    }
                    let pos = row_base + (px * p.kw) as isize + offsets[a[px] as usize];
                    plane[pos as usize] = d[px];
                }
            }
        }
    }
}

/// One conv row under 2-wide windows: each pair gets the window's gradient at the
/// arg-max (`base` or `base + 1`, the row's positions), masked by `mask > 0`.
#[inline(always)]
fn unpool_row(row: &mut [f32], d: &[f32], a: &[u8], mask: Option<&[f32]>, base: u8) {
    let pairs = row.len() / 2;
    match mask {
        Some(m) => {
            for ((pair, (&d, &a)), &m) in row.chunks_exact_mut(2).zip(d.iter().zip(a)).zip(m) {
                let d = if m > 0.0 { d } else { 0.0 };
                pair[0] = if a == base { d } else { 0.0 };
                pair[1] = if a == base + 1 { d } else { 0.0 };
            }
        }
        None => {
            for (pair, (&d, &a)) in row.chunks_exact_mut(2).zip(d.iter().zip(a)) {
                pair[0] = if a == base { d } else { 0.0 };
                pair[1] = if a == base + 1 { d } else { 0.0 };
            }
        }
    }
    if pairs < d.len() && 2 * pairs < row.len() {
        let keep = a[pairs] == base && mask.is_none_or(|m| m[pairs] > 0.0);
        row[2 * pairs] = if keep { d[pairs] } else { 0.0 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::{Module, Param};
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::pool::MaxPool2dConfig;
    use burn::tensor::{Device, Distribution};

    /// Max |a - b| within 2e-5 of the largest |b| (at least 1).
    fn assert_close<const D: usize>(a: &Tensor<D>, b: &Tensor<D>, what: &str) {
        let a: Vec<f32> = a.clone().try_into_vec_as::<f32>().unwrap();
        let b: Vec<f32> = b.clone().try_into_vec_as::<f32>().unwrap();
        assert_eq!(a.len(), b.len(), "{what}: sizes");
        let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
        let err = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            err <= 2e-5 * scale,
            "{what}: max error {err} (scale {scale})"
        );
    }

    struct Case {
        input: [usize; 4],
        cout: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: PaddingConfig2d,
        relu: bool,
        pool: Option<([usize; 2], PaddingConfig2d)>,
    }

    /// Forward and all three gradients equal burn's modules on random data.
    fn check(c: Case) {
        let device = Device::flex().autodiff();
        device.seed(7);
        let conv = Conv2dConfig::new([c.input[1], c.cout], c.kernel)
            .with_stride(c.stride)
            .with_padding(c.padding.clone())
            .init(&device);
        // A non-zero bias, so that its gradient and the ReLU mask both matter.
        let bias = Tensor::random([c.cout], Distribution::Uniform(-0.5, 0.5), &device);
        let conv = Conv2d {
            bias: Some(Param::from_tensor(bias)),
            ..conv
        };
        let pool = c.pool.clone().map(|(k, pad)| {
            MaxPool2dConfig::new(k)
                .with_strides(k)
                .with_padding(pad)
                .init()
        });
        let what = format!(
            "{:?} -> {} k{:?} s{:?} {:?} relu={} pool={:?}",
            c.input, c.cout, c.kernel, c.stride, c.padding, c.relu, c.pool
        );
        let ours_fn = |x: Tensor<4>, conv: &Conv2d| match &pool {
            Some(p) => conv2d_maxpool(x, conv, c.relu, p),
            None => conv2d(x, conv, c.relu),
        };
        let burn_fn = |x: Tensor<4>, conv: &Conv2d| {
            let mut y = conv.forward(x);
            if c.relu {
                y = relu(y);
            }
            match &pool {
                Some(p) => p.forward(y),
                None => y,
            }
        };
        let x0 = Tensor::<4>::random(c.input, Distribution::Normal(0.0, 1.0), &device);

        let x = x0.clone().require_grad();
        let ours = ours_fn(x.clone(), &conv);
        let dy = Tensor::<4>::random(ours.dims(), Distribution::Normal(0.0, 1.0), &device);
        let grads = (ours.clone() * dy.clone()).sum().backward();
        let (dx, dw, db) = (
            x.grad(&grads).unwrap(),
            conv.weight.grad(&grads).unwrap(),
            conv.bias.as_ref().unwrap().grad(&grads).unwrap(),
        );

        let x = x0.clone().require_grad();
        let theirs = burn_fn(x.clone(), &conv);
        let grads = (theirs.clone() * dy).sum().backward();
        assert_close(&ours, &theirs, &format!("{what}: forward"));
        assert_close(&dx, &x.grad(&grads).unwrap(), &format!("{what}: dx"));
        assert_close(
            &dw,
            &conv.weight.grad(&grads).unwrap(),
            &format!("{what}: dw"),
        );
        assert_close(
            &db,
            &conv.bias.as_ref().unwrap().grad(&grads).unwrap(),
            &format!("{what}: db"),
        );

        // Inference (no autodiff) takes the same kernels.
        let plain = conv.valid();
        let x = x0.inner();
        assert_close(
            &ours_fn(x.clone(), &plain),
            &burn_fn(x, &plain),
            &format!("{what}: inference"),
        );
    }

    #[test]
    fn conv_matches_burn() {
        use PaddingConfig2d::{Explicit, Same, Valid};
        let case = |input, cout, kernel, stride, padding, relu| Case {
            input,
            cout,
            kernel,
            stride,
            padding,
            relu,
            pool: None,
        };
        check(case([2, 3, 9, 11], 4, [3, 3], [1, 1], Valid, true));
        check(case([3, 5, 8, 7], 6, [3, 3], [1, 1], Same, false));
        check(case([2, 4, 9, 9], 5, [3, 3], [2, 2], Same, true));
        check(case([2, 4, 10, 9], 3, [2, 2], [2, 2], Valid, false));
        check(case(
            [2, 3, 7, 8],
            4,
            [5, 3],
            [2, 1],
            Explicit(2, 1, 0, 3),
            true,
        ));
        check(case([2, 6, 5, 5], 3, [1, 1], [1, 1], Valid, true));
        check(case([1, 2, 6, 6], 2, [4, 4], [1, 1], Same, false));
        // Tall enough for several row tiles per image.
        check(case([2, 32, 40, 40], 8, [3, 3], [1, 1], Valid, true));
    }

    #[test]
    fn conv_relu_maxpool_matches_burn() {
        use PaddingConfig2d::{Same, Valid};
        let case = |input, kernel, padding, relu, pool| Case {
            input,
            cout: 4,
            kernel,
            stride: [1, 1],
            padding,
            relu,
            pool: Some(pool),
        };
        // model_3's pattern: valid 3x3 conv + relu, then pool 2 'same' on an odd (11 -> 6) and even map.
        check(case([2, 3, 13, 13], [3, 3], Valid, true, ([2, 2], Same)));
        check(case([2, 3, 12, 14], [3, 3], Valid, true, ([2, 2], Same)));
        // Valid pool dropping the last row/column, no ReLU (negative maxima pass).
        check(case([2, 3, 12, 12], [3, 3], Valid, false, ([2, 2], Valid)));
        check(case([3, 2, 11, 10], [3, 3], Same, true, ([3, 3], Same)));
        check(case([2, 3, 9, 9], [1, 1], Valid, false, ([2, 2], Same)));
        // Several pooled-row tiles per image.
        check(case([2, 32, 41, 41], [3, 3], Valid, true, ([2, 2], Same)));
    }

    #[test]
    fn first_layer_input_gets_no_gradient_and_results_are_deterministic() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let conv = Conv2dConfig::new([3, 4], [3, 3]).init(&device);
        let pool = MaxPool2dConfig::new([2, 2])
            .with_padding(PaddingConfig2d::Same)
            .init();
        let x = Tensor::<4>::random([4, 3, 12, 12], Distribution::Uniform(0.0, 1.0), &device);
        let run = || {
            let y = conv2d_maxpool(x.clone(), &conv, true, &pool);
            let grads = y.sum().backward();
            assert!(x.grad(&grads).is_none());
            conv.weight
                .grad(&grads)
                .unwrap()
                .try_into_vec_as::<f32>()
                .unwrap()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn geometry_follows_keras_same_and_valid() {
        let g =
            Geometry::new([1, 1, 109, 109], [1, 3, 3], [1, 1], &PaddingConfig2d::Valid).unwrap();
        assert_eq!((g.ho, g.wo), (107, 107));
        let g = Geometry::new([1, 1, 5, 5], [1, 3, 3], [1, 1], &PaddingConfig2d::Same).unwrap();
        assert_eq!((g.ho, g.wo, g.pad_top, g.pad_left), (5, 5, 1, 1));
        assert!(Geometry::new([1, 1, 2, 2], [1, 3, 3], [1, 1], &PaddingConfig2d::Valid).is_none());
        let p = Pool::new([109, 110], [2, 2], &PaddingConfig2d::Same).unwrap();
        assert_eq!((p.ho, p.wo, p.pad_top, p.pad_left), (55, 55, 0, 0));
        let p = Pool::new([5, 5], [4, 4], &PaddingConfig2d::Same).unwrap();
        assert_eq!((p.ho, p.pad_top), (2, 1));
        assert!(Pool::new([5, 5], [2, 2], &PaddingConfig2d::Explicit(0, 0, 3, 0)).is_none());
    }
}
