//! The convolution as matrix products: im2col tiles of the input, their adjoint
//! (col2im), and the single-threaded `gemm` call both passes use.

use fennec_runtime::kernels::simd::simd_fn;

use super::geometry::Geometry;

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
    pub(super) fn col2im_add(dcols: &[f32], g: &Geometry, y0: usize, y1: usize, dx: &mut [f32]) {
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
pub(super) unsafe fn matmul(
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
pub(super) fn cols_of<'a>(
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
