//! The convolution kernels in plain Rust: the baseline on x86-64 and armv7, and
//! the last few pixels of narrow rows everywhere.

use super::packed::{OCB, Tile};

/// `OCB` channels x `N` pixels at column `x`, one value at a time: only for
/// the last few pixels of rows narrower than the narrow tile.
pub(super) fn tile_scalar<const N: usize>(t: &Tile, x: usize, out: &mut [f32]) {
    let mut acc = [[0.0f32; N]; OCB];
    for (o, row) in acc.iter_mut().enumerate() {
        *row = [t.bias_of(o); N];
    }
    let mut tap = 0;
    for i in 0..t.ic {
        for ky in 0..t.kh {
            let src = t.source(i, ky, x, N);
            for kx in 0..t.kw {
                let w = t.taps(tap);
                tap += 1;
                for (row, &wo) in acc.iter_mut().zip(w) {
                    for (a, &v) in row.iter_mut().zip(&src[kx..kx + N]) {
                        *a += v * wo;
                    }
                }
            }
        }
    }
    for (o, row) in acc.iter().enumerate().take(t.bias.len()) {
        let dst = &mut out[o * t.stride + x..][..N];
        for (d, &a) in dst.iter_mut().zip(row) {
            *d = if t.relu { a.max(0.0) } else { a };
        }
    }
}

/// Four f32 lanes in plain Rust: each operation is four independent scalar
/// operations the compiler turns into one vector instruction.
#[cfg(not(target_arch = "aarch64"))]
#[derive(Clone, Copy)]
struct F4([f32; 4]);

#[cfg(not(target_arch = "aarch64"))]
impl F4 {
    #[inline(always)]
    fn load(s: &[f32]) -> F4 {
        F4(s[..4].try_into().unwrap())
    }

    /// `self + v * w`, rounded twice (a single FMA is not in baseline x86-64).
    #[inline(always)]
    fn madd(self, v: F4, w: f32) -> F4 {
        let (a, v) = (self.0, v.0);
        F4([
            a[0] + v[0] * w,
            a[1] + v[1] * w,
            a[2] + v[2] * w,
            a[3] + v[3] * w,
        ])
    }
}

/// `OCB` channels x `NV` x 4 pixels at column `x`, in 4-lane blocks (aarch64 has
/// NEON intrinsics instead, in `neon.rs`).
#[cfg(not(target_arch = "aarch64"))]
#[inline(always)]
pub(super) fn tile_lanes<const NV: usize>(t: &Tile, x: usize, out: &mut [f32]) {
    let n = NV * 4;
    let mut acc = [[F4([0.0; 4]); NV]; OCB];
    for (o, row) in acc.iter_mut().enumerate() {
        *row = [F4([t.bias_of(o); 4]); NV];
    }
    let mut tap = 0;
    for i in 0..t.ic {
        for ky in 0..t.kh {
            let src = t.source(i, ky, x, n);
            for kx in 0..t.kw {
                let w = t.taps(tap);
                tap += 1;
                let mut v = [F4([0.0; 4]); NV];
                for (j, v) in v.iter_mut().enumerate() {
                    *v = F4::load(&src[kx + j * 4..]);
                }
                for (row, &wo) in acc.iter_mut().zip(w) {
                    for (a, &vj) in row.iter_mut().zip(&v) {
                        *a = a.madd(vj, wo);
                    }
                }
            }
        }
    }
    for (o, row) in acc.iter().enumerate().take(t.bias.len()) {
        let dst = &mut out[o * t.stride + x..][..n];
        for (d, a) in dst.chunks_exact_mut(4).zip(row) {
            for (d, &a) in d.iter_mut().zip(&a.0) {
                *d = if t.relu { a.max(0.0) } else { a };
            }
        }
    }
}
