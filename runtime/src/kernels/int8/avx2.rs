//! The int8 kernels for x86-64 with AVX2: `vpmaddwd` multiplies i16 pairs and
//! adds each pair into an i32 lane (exact for 8-bit codes; see `packed.rs`).

use std::arch::x86_64::*;

use super::packed::{QOCB, QTile};

/// [`QOCB`] channels x `P` pixels at column `x`; the same sums as
/// `portable::tile`.
#[target_feature(enable = "avx2")]
pub(super) fn tile<const P: usize>(t: &QTile, x: usize) -> [[i32; QOCB]; P] {
    let mut acc = [[_mm256_setzero_si256(); 2]; P];
    for ky in 0..t.kh {
        let w = t.row_weights(ky);
        // Bounds checked once per kernel row: every pixel's source run.
        let src: [&[i16]; P] = std::array::from_fn(|p| t.source(ky, x + p));
        assert!(w.len() == t.steps * 2 * QOCB);
        for j in 0..t.steps {
            // SAFETY: `w` holds `steps` runs of 2 x QOCB = 32 i16 (checked above),
            // and each source run holds `2 * steps` i16 (from `source`).
            unsafe {
                let wp = w.as_ptr().add(j * 2 * QOCB);
                let w0 = _mm256_loadu_si256(wp as *const __m256i);
                let w1 = _mm256_loadu_si256(wp.add(QOCB) as *const __m256i);
                for (acc, src) in acc.iter_mut().zip(&src) {
                    let pair = (src.as_ptr().add(2 * j) as *const i32).read_unaligned();
                    let v = _mm256_set1_epi32(pair);
                    acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(v, w0));
                    acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(v, w1));
                }
            }
        }
    }
    let mut out = [[0i32; QOCB]; P];
    for (o, a) in out.iter_mut().zip(&acc) {
        // SAFETY: `o` holds 16 i32, two 8-lane stores.
        unsafe {
            _mm256_storeu_si256(o.as_mut_ptr() as *mut __m256i, a[0]);
            _mm256_storeu_si256(o.as_mut_ptr().add(8) as *mut __m256i, a[1]);
        }
    }
    out
}

/// Dot products of the `R` rows of `w` (int8 codes, each `k` long) with `x`;
/// the same sums as `portable::dot_rows`.
#[target_feature(enable = "avx2")]
pub(super) fn dot_rows<const R: usize>(w: &[i8], k: usize, x: &[i16]) -> [i32; R] {
    assert!(w.len() >= R * k && x.len() >= k);
    let full = k / 16 * 16;
    let mut acc = [_mm256_setzero_si256(); R];
    let mut i = 0;
    while i < full {
        // SAFETY: `i + 16 <= k`, within `x` and within each row of `w` (checked above).
        unsafe {
            let xv = _mm256_loadu_si256(x.as_ptr().add(i) as *const __m256i);
            for (j, a) in acc.iter_mut().enumerate() {
                let wb = _mm_loadu_si128(w.as_ptr().add(j * k + i) as *const __m128i);
                *a = _mm256_add_epi32(*a, _mm256_madd_epi16(xv, _mm256_cvtepi8_epi16(wb)));
            }
        }
        i += 16;
    }
    std::array::from_fn(|j| {
        let mut lanes = [0i32; 8];
        // SAFETY: `lanes` holds 8 i32.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc[j]) };
        let tail: i32 = (full..k).map(|i| w[j * k + i] as i32 * x[i] as i32).sum();
        lanes.iter().sum::<i32>() + tail
    })
}
