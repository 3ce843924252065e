//! The int8 kernels for x86-64 with AVX2: `vpmaddwd` multiplies i16 pairs and
//! adds each pair into an i32 lane (exact for 8-bit codes; see `packed.rs`);
//! the requantization runs 8 lanes at a time.

use std::arch::x86_64::*;

use super::packed::{NV, OCT, PX, QTile};
use super::qdq::Requant;

/// [`OCT`] channels x [`PX`] pixels at column `x`: channel `j`'s i32 sums to
/// `out[j * stride + x..][..PX]`; the same sums as `portable::tile`.
///
/// `OCT x NV` accumulators of 8 pixels stay in registers over all pairs; each
/// pair loads the `NV` vectors of input pairs once and broadcasts each channel's
/// weight pair.
#[target_feature(enable = "avx2")]
pub(super) fn tile(t: &QTile, x: usize, out: &mut [i32], stride: usize) {
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
    for (j, acc) in acc.iter().enumerate() {
        let dst = &mut out[j * stride + x..][..PX];
        for (d, a) in dst.chunks_exact_mut(8).zip(acc) {
            // SAFETY: `d` holds 8 i32.
            unsafe { _mm256_storeu_si256(d.as_mut_ptr() as *mut __m256i, *a) };
        }
    }
}

/// The codes of one channel's `sums` (bias not yet added) as bytes; the same as
/// [`Requant::code`], 8 lanes at a time: `sum as f32 * scale` rounded half to
/// even (the default rounding mode of `vcvtps2dq`), clamped to the output range
/// before rounding (the same as after, the bounds being integers; and it keeps
/// large values off `vcvtps2dq`'s out-of-range answer).
#[target_feature(enable = "avx2")]
pub(super) fn requant_row(r: &Requant, bias: i32, scale: f32, sums: &[i32], out: &mut [u8]) {
    let n = sums.len().min(out.len());
    let lo = _mm256_set1_ps((r.lo - r.zero_point) as f32);
    let hi = _mm256_set1_ps((r.hi - r.zero_point) as f32);
    let zero_point = _mm256_set1_epi32(r.zero_point);
    let (bias_v, scale_v) = (_mm256_set1_epi32(bias), _mm256_set1_ps(scale));
    let code = |s: __m256i| {
        let sum = _mm256_cvtepi32_ps(_mm256_add_epi32(s, bias_v));
        let v = _mm256_max_ps(_mm256_min_ps(_mm256_mul_ps(sum, scale_v), hi), lo);
        _mm256_add_epi32(_mm256_cvtps_epi32(v), zero_point)
    };
    let full = n / 16 * 16;
    for (s, o) in sums[..full]
        .chunks_exact(16)
        .zip(out[..full].chunks_exact_mut(16))
    {
        // SAFETY: `s` holds 16 i32 and `o` 16 bytes.
        unsafe {
            let a = code(_mm256_loadu_si256(s.as_ptr() as *const __m256i));
            let b = code(_mm256_loadu_si256(s.as_ptr().add(8) as *const __m256i));
            // Codes fit 8 bits (u8, or i8 as bytes): the packs keep them (i16,
            // then the low byte), the permute puts the halves back in order.
            let w = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(a, b));
            let lo_bytes = _mm256_castsi256_si128(w);
            let hi_bytes = _mm256_extracti128_si256::<1>(w);
            let mask = _mm_set1_epi16(0xff);
            let bytes =
                _mm_packus_epi16(_mm_and_si128(lo_bytes, mask), _mm_and_si128(hi_bytes, mask));
            _mm_storeu_si128(o.as_mut_ptr() as *mut __m128i, bytes);
        }
    }
    for (s, o) in sums[full..n].iter().zip(&mut out[full..n]) {
        *o = r.code(s.wrapping_add(bias), scale) as u8;
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
