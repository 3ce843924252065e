//! The convolution kernel for x86-64 with AVX-512F, with explicit intrinsics:
//! accumulators for `OCB` channels x `NV` vectors of 16 pixels stay in registers
//! while the taps stream past. (Left to the auto-vectoriser, the same loops came
//! out as scalar code with accumulators spilled to the stack in the LTO build.)

use std::arch::x86_64::*;

use super::packed::{OCB, Tile};

/// `OCB` channels x `NV` x 16 pixels at column `x`.
#[target_feature(enable = "avx512f")]
pub(super) fn tile<const NV: usize>(t: &Tile, x: usize, out: &mut [f32]) {
    const L: usize = 16;
    let n = NV * L;
    let mut acc = [[_mm512_setzero_ps(); NV]; OCB];
    for (o, row) in acc.iter_mut().enumerate() {
        *row = [_mm512_set1_ps(t.bias_of(o)); NV];
    }
    let mut tap = 0;
    for i in 0..t.ic {
        for ky in 0..t.kh {
            let src = t.source(i, ky, x, n);
            for kx in 0..t.kw {
                let w = t.taps(tap);
                tap += 1;
                let mut v = [_mm512_setzero_ps(); NV];
                for (j, v) in v.iter_mut().enumerate() {
                    let s = &src[kx + j * L..kx + j * L + L];
                    // SAFETY: `s` holds the 16 values the unaligned load reads.
                    *v = unsafe { _mm512_loadu_ps(s.as_ptr()) };
                }
                for (row, &wo) in acc.iter_mut().zip(w) {
                    let wv = _mm512_set1_ps(wo);
                    for (a, &vj) in row.iter_mut().zip(&v) {
                        *a = _mm512_fmadd_ps(vj, wv, *a);
                    }
                }
            }
        }
    }
    let zero = _mm512_setzero_ps();
    for (o, row) in acc.iter().enumerate().take(t.bias.len()) {
        let dst = &mut out[o * t.stride + x..][..n];
        for (j, &a) in row.iter().enumerate() {
            let a = if t.relu { _mm512_max_ps(a, zero) } else { a };
            let d = &mut dst[j * L..j * L + L];
            // SAFETY: `d` has room for the 16 values the unaligned store writes.
            unsafe { _mm512_storeu_ps(d.as_mut_ptr(), a) };
        }
    }
}
