//! The int8 kernels in plain Rust: the baseline everywhere (NEON on ARM, where
//! the compiler turns the i16 x i16 → i32 loops into widening multiply-adds),
//! and the last few pixels of narrow rows.

use super::packed::{QOCB, QTile};

/// [`QOCB`] channels x `P` pixels at column `x`: i32 sums of the tile.
#[inline(always)]
pub(super) fn tile<const P: usize>(t: &QTile, x: usize) -> [[i32; QOCB]; P] {
    let mut acc = [[0i32; QOCB]; P];
    for ky in 0..t.kh {
        let w = t.row_weights(ky);
        for (p, acc) in acc.iter_mut().enumerate() {
            let src = t.source(ky, x + p);
            for (pair, w) in src.chunks_exact(2).zip(w.chunks_exact(2 * QOCB)) {
                let (a, b) = (pair[0] as i32, pair[1] as i32);
                for (s, w) in acc.iter_mut().zip(w.chunks_exact(2)) {
                    *s += a * w[0] as i32 + b * w[1] as i32;
                }
            }
        }
    }
    acc
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
