//! This core's multiply-add peak, measured, so that `fennec bench --profile` can
//! show how far each kernel is from what the hardware allows.
//!
//! The peak depends on the CPU (how many FMA units, how wide, at what clock) and
//! on the instruction set fennec's kernels use on it, so it is measured rather
//! than looked up: a loop of independent multiply-adds on registers of the width
//! [`isa`] selects, enough of them in flight to hide the instruction latency, the
//! best of a few short runs.

use std::time::Instant;

#[cfg(target_arch = "x86_64")]
use super::simd::Isa;
use super::simd::isa;

/// Multiply-adds in flight: independent accumulators (registers).
const ACC: usize = 12;
/// Loop iterations per timed run (~10 ms on a 3 GHz AVX2 core).
const ITERS: usize = 1 << 21;

/// This core's peak in GFLOP/s (a multiply-add is two FLOPs) at the instruction
/// set the kernels use; takes about 50 ms.
pub fn core_peak_gflops() -> f64 {
    (0..5).map(|_| timed_run()).fold(0.0, f64::max)
}

fn timed_run() -> f64 {
    let start = Instant::now();
    let lanes = run(ITERS);
    let seconds = start.elapsed().as_secs_f64();
    (ITERS * ACC * lanes * 2) as f64 / seconds / 1e9
}

/// Runs `iters` iterations of [`ACC`] vector multiply-adds and returns the vector
/// width in f32 lanes.
fn run(iters: usize) -> usize {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` says the CPU has the features these functions use.
        Isa::Avx512 => unsafe { x86::avx512(iters) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { x86::avx2(iters) },
        _ => portable(iters),
    }
}

/// Four-lane multiply-adds in plain Rust: NEON's `fmla` on aarch64, which has a
/// fused multiply-add in its baseline; a multiply and an add elsewhere (baseline
/// x86-64 and armv7 have no fused one), counted as the two FLOPs they are.
fn portable(iters: usize) -> usize {
    let mut acc = std::hint::black_box([[0.5f32; 4]; ACC]);
    let (a, b) = std::hint::black_box(([0.999f32; 4], [1e-3f32; 4]));
    for _ in 0..iters {
        for v in &mut acc {
            #[allow(clippy::needless_range_loop)] // indexes several slices at once
            for l in 0..4 {
                #[cfg(target_arch = "aarch64")]
                {
                    v[l] = v[l].mul_add(a[l], b[l]);
                }
                #[cfg(not(target_arch = "aarch64"))]
                {
                    v[l] = v[l] * a[l] + b[l];
                }
            }
        }
    }
    std::hint::black_box(acc);
    4
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::ACC;

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn avx2(iters: usize) -> usize {
        let mut acc = [_mm256_set1_ps(0.5); ACC];
        let a = _mm256_set1_ps(std::hint::black_box(0.999));
        let b = _mm256_set1_ps(std::hint::black_box(1e-3));
        for _ in 0..iters {
            for v in &mut acc {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        std::hint::black_box(acc);
        8
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn avx512(iters: usize) -> usize {
        let mut acc = [_mm512_set1_ps(0.5); ACC];
        let a = _mm512_set1_ps(std::hint::black_box(0.999));
        let b = _mm512_set1_ps(std::hint::black_box(1e-3));
        for _ in 0..iters {
            for v in &mut acc {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        std::hint::black_box(acc);
        16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_runs_and_reports_its_width() {
        // A few iterations only: the peak itself is a measurement, not a test.
        let lanes = run(16);
        assert!([4, 8, 16].contains(&lanes));
        assert!(timed_run() > 0.0);
    }
}
