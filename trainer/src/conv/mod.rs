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
//!
//! Files: this one decides which calls the op takes; `autodiff.rs` records it in
//! burn's autodiff graph; `geometry.rs` has the shapes and row tiles;
//! `im2col.rs` the lowering to matrix products; `forward.rs` and `backward.rs` the
//! two passes. The element-wise loops are compiled per instruction set with
//! [`fennec_runtime::kernels::simd::simd_fn!`], the workspace's one SIMD dispatch.

use burn::backend::{Autodiff, Flex};
use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::tensor::activation::relu;
use burn::tensor::{DType, Tensor};

mod autodiff;
mod backward;
mod forward;
mod geometry;
mod im2col;
#[cfg(test)]
mod tests;

use autodiff::{autodiff_op, contiguous, f32s, flex_tensor};
pub use backward::{Grads, backward};
pub use forward::{Forward, forward};
pub use geometry::{Geometry, Op, Pool};

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
