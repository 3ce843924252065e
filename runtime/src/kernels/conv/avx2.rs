//! The convolution kernel for x86-64 with AVX2 and FMA, with explicit intrinsics
//! (see `avx512.rs` for why): `OCB` channels x `NV` vectors of 8 pixels.

use std::arch::x86_64::*;

use super::packed::{OCB, Tile};

/// `OCB` channels x `NV` x 8 pixels at column `x`.
#[target_feature(enable = "avx2,fma")]
pub(super) fn tile<const NV: usize>(t: &Tile, x: usize, out: &mut [f32]) {
    const L: usize = 8;
    let n = NV * L;
    let mut acc = [[_mm256_setzero_ps(); NV]; OCB];
    for (o, row) in acc.iter_mut().enumerate() {
        *row = [_mm256_set1_ps(t.bias_of(o)); NV];
    }
    let mut tap = 0;
    for i in 0..t.ic {
        for ky in 0..t.kh {
            let src = t.source(i, ky, x, n);
            for kx in 0..t.kw {
                let w = t.taps(tap);
                tap += 1;
                let mut v = [_mm256_setzero_ps(); NV];
                for (j, v) in v.iter_mut().enumerate() {
                    let s = &src[kx + j * L..kx + j * L + L];
                    // SAFETY: `s` holds the 8 values the unaligned load reads.
                    *v = unsafe { _mm256_loadu_ps(s.as_ptr()) };
                }
                for (row, &wo) in acc.iter_mut().zip(w) {
                    let wv = _mm256_set1_ps(wo);
                    for (a, &vj) in row.iter_mut().zip(&v) {
                        *a = _mm256_fmadd_ps(vj, wv, *a);
                    }
                }
            }
        }
    }
    let zero = _mm256_setzero_ps();
    for (o, row) in acc.iter().enumerate().take(t.bias.len()) {
        let dst = &mut out[o * t.stride + x..][..n];
        for (j, &a) in row.iter().enumerate() {
            let a = if t.relu { _mm256_max_ps(a, zero) } else { a };
            let d = &mut dst[j * L..j * L + L];
            // SAFETY: `d` has room for the 8 values the unaligned store writes.
            unsafe { _mm256_storeu_ps(d.as_mut_ptr(), a) };
        }
    }
}
