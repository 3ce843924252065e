//! The convolution kernel for aarch64, with NEON intrinsics (NEON is part of the
//! aarch64 baseline, so there is no run-time choice to make).

use std::arch::aarch64::*;

use super::packed::{OCB, Tile};

/// `OCB` channels x `NV` x 4 pixels at column `x`.
#[target_feature(enable = "neon")]
pub(super) fn tile<const NV: usize>(t: &Tile, x: usize, out: &mut [f32]) {
    const L: usize = 4;
    let n = NV * L;
    let mut acc = [[vdupq_n_f32(0.0); NV]; OCB];
    for (o, row) in acc.iter_mut().enumerate() {
        *row = [vdupq_n_f32(t.bias_of(o)); NV];
    }
    let mut tap = 0;
    for i in 0..t.ic {
        for ky in 0..t.kh {
            let src = t.source(i, ky, x, n);
            for kx in 0..t.kw {
                let w = t.taps(tap);
                tap += 1;
                let mut v = [vdupq_n_f32(0.0); NV];
                for (j, v) in v.iter_mut().enumerate() {
                    let s = &src[kx + j * L..kx + j * L + L];
                    // SAFETY: `s` holds the 4 values the load reads.
                    *v = unsafe { vld1q_f32(s.as_ptr()) };
                }
                for (row, &wo) in acc.iter_mut().zip(w) {
                    for (a, &vj) in row.iter_mut().zip(&v) {
                        *a = vfmaq_n_f32(*a, vj, wo);
                    }
                }
            }
        }
    }
    let zero = vdupq_n_f32(0.0);
    for (o, row) in acc.iter().enumerate().take(t.bias.len()) {
        let dst = &mut out[o * t.stride + x..][..n];
        for (j, &a) in row.iter().enumerate() {
            let a = if t.relu { vmaxq_f32(a, zero) } else { a };
            let d = &mut dst[j * L..j * L + L];
            // SAFETY: `d` has room for the 4 values the store writes.
            unsafe { vst1q_f32(d.as_mut_ptr(), a) };
        }
    }
}
