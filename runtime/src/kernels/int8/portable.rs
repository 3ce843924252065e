//! The int8 kernels in plain Rust: the baseline everywhere (NEON on ARM, where
//! the compiler turns the i16 x i16 → i32 loops into widening multiply-adds),
//! and the reference the AVX2 kernels are tested against.

use super::packed::{OCT, PX, QTile};
use super::qdq::Requant;

/// [`OCT`] channels x [`PX`] pixels at column `x`: channel `j`'s i32 sums to
/// `out[j * stride + x..][..PX]`.
#[inline(always)]
pub(super) fn tile(t: &QTile, x: usize, out: &mut [i32], stride: usize) {
    assert!(x + PX <= t.cols && t.weights.len() == t.offsets.len() * OCT * 2);
    let mut acc = [[0i32; PX]; OCT];
    for (&off, w) in t.offsets.iter().zip(t.weights.chunks_exact(OCT * 2)) {
        let src = &t.data[2 * (off + x)..][..2 * PX];
        for (acc, w) in acc.iter_mut().zip(w.chunks_exact(2)) {
            let (w0, w1) = (w[0] as i32, w[1] as i32);
            for (s, pair) in acc.iter_mut().zip(src.chunks_exact(2)) {
                *s = s.wrapping_add(pair[0] as i32 * w0 + pair[1] as i32 * w1);
            }
        }
    }
    for (j, acc) in acc.iter().enumerate() {
        out[j * stride + x..][..PX].copy_from_slice(acc);
    }
}

/// The codes of one channel's `sums` (bias not yet added) as bytes.
pub(super) fn requant_row(r: &Requant, bias: i32, scale: f32, sums: &[i32], out: &mut [u8]) {
    for (o, &s) in out.iter_mut().zip(sums) {
        *o = r.code(s.wrapping_add(bias), scale) as u8;
    }
}

/// Lanes of the dense dot products (a multiple of every SIMD width in use).
const LANES: usize = 16;

/// Dot products of the `R` rows of `w` (int8 codes, each `k` long) with `x`.
#[inline(always)]
pub(super) fn dot_rows<const R: usize>(w: &[i8], k: usize, x: &[i16]) -> [i32; R] {
    let full = k / LANES * LANES;
    let xs = x[..full].as_chunks::<LANES>().0;
    let rows: [&[[i8; LANES]]; R] =
        std::array::from_fn(|j| &w[j * k..j * k + full].as_chunks::<LANES>().0[..xs.len()]);
    let mut acc = [[0i32; LANES]; R];
    // Indexed loops, as in the f32 dense kernel: LLVM keeps the sums in registers.
    #[allow(clippy::needless_range_loop)]
    for i in 0..xs.len() {
        let xv = xs[i];
        for j in 0..R {
            let wv = rows[j][i];
            for l in 0..LANES {
                acc[j][l] = acc[j][l].wrapping_add(xv[l] as i32 * wv[l] as i32);
            }
        }
    }
    std::array::from_fn(|j| {
        let tail: i32 = (full..k).map(|i| w[j * k + i] as i32 * x[i] as i32).sum();
        acc[j].iter().sum::<i32>() + tail
    })
}
