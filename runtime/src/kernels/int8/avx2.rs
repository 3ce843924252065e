//! The int8 kernels for x86-64 with AVX2: `vpmaddwd` multiplies i16 pairs and
//! adds each pair into an i32 lane (exact for 8-bit codes; see `packed.rs`),
//! and the requantization runs 8 lanes at a time.

use std::arch::x86_64::*;

use super::packed::{NV, OCT, PX, QTile};

/// [`OCT`] channels x [`PX`] pixels at column `x`, requantized: channel `j` to
/// `out[j * stride + x..][..PX]`; the same codes as `portable::tile`.
///
/// `OCT x NV` accumulators of 8 pixels stay in registers over all pairs; each
/// pair loads the `NV` vectors of input pairs once and broadcasts each channel's
/// weight pair. Requantization is the scalar one, 8 lanes at a time: `sum as
/// f32 * scale` rounded half to even (the default rounding mode of
/// `vcvtps2dq`), clamped to the output range before rounding (the same as after,
/// the bounds being integers; and it keeps large values off `vcvtps2dq`'s
/// out-of-range answer).
#[target_feature(enable = "avx2")]
pub(super) fn tile(t: &QTile, x: usize, out: &mut [i16], stride: usize) {
    assert!(x + PX <= t.cols && t.weights.len() == t.offsets.len() * OCT * 2);
    assert!(out.len() >= (OCT - 1) * stride + x + PX, "output too short");
    let mut acc = [[_mm256_setzero_si256(); NV]; OCT];
    let base = t.data.as_ptr();
    let weights = t.weights.as_ptr() as *const i32;
    for (p, &off) in t.offsets.iter().enumerate() {
        // SAFETY: `off + x + PX <= off + cols` pairs lie inside `data` (a
        // `QTile` invariant) and `weights` holds `OCT` pairs per offset (checked
        // above).
        unsafe {
            let src = base.add(2 * (off + x));
            let v: [__m256i; NV] =
                std::array::from_fn(|i| _mm256_loadu_si256(src.add(16 * i) as *const __m256i));
            for (j, acc) in acc.iter_mut().enumerate() {
                let w = _mm256_set1_epi32(weights.add(p * OCT + j).read_unaligned());
                for (a, &v) in acc.iter_mut().zip(&v) {
                    *a = _mm256_add_epi32(*a, _mm256_madd_epi16(v, w));
                }
            }
        }
    }
    let r = t.requant;
    let lo = _mm256_set1_ps((r.lo - r.zero_point) as f32);
    let hi = _mm256_set1_ps((r.hi - r.zero_point) as f32);
    let zero_point = _mm256_set1_epi32(r.zero_point);
    for (j, acc) in acc.iter().enumerate() {
        let bias = _mm256_set1_epi32(t.bias[j]);
        let scale = _mm256_set1_ps(t.scale[j]);
        let codes: [__m256i; NV] = std::array::from_fn(|i| {
            let sum = _mm256_cvtepi32_ps(_mm256_add_epi32(acc[i], bias));
            let v = _mm256_max_ps(_mm256_min_ps(_mm256_mul_ps(sum, scale), hi), lo);
            _mm256_add_epi32(_mm256_cvtps_epi32(v), zero_point)
        });
        let dst = &mut out[j * stride + x..][..PX];
        for (i, d) in dst.chunks_exact_mut(16).enumerate() {
            // Codes fit i16: the pack does not saturate; the permute puts the
            // two vectors' halves back in order.
            let packed = _mm256_packs_epi32(codes[2 * i], codes[2 * i + 1]);
            let v = _mm256_permute4x64_epi64::<0b11_01_10_00>(packed);
            // SAFETY: `d` holds 16 i16.
            unsafe { _mm256_storeu_si256(d.as_mut_ptr() as *mut __m256i, v) };
        }
        if NV % 2 == 1 {
            let last = codes[NV - 1];
            let v = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(last, last));
            let d = &mut dst[PX - 8..];
            // SAFETY: `d` holds 8 i16.
            unsafe { _mm_storeu_si128(d.as_mut_ptr() as *mut __m128i, _mm256_castsi256_si128(v)) };
        }
    }
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
