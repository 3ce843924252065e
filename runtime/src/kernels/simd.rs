//! The one way fennec picks SIMD code at run time, in both crates.
//!
//! Release binaries are built for the baseline of their target (SSE2 on x86-64,
//! NEON on aarch64) so that they run on any CPU of that architecture; the hot
//! loops are compiled again for wider instruction sets and the best one the CPU
//! has is chosen at run time. The level is detected once per process ([`isa`]),
//! and code reaches it in one of two ways:
//!
//! - [`simd_fn!`]: a plain-Rust body (loops over fixed-size arrays that LLVM
//!   vectorises) compiled for the baseline and for AVX2+FMA; calls run the best
//!   one. Used by the runtime's dense op and the trainer's convolution, whose
//!   element-wise loops are memory- or shuffle-bound: the x86-64 baseline (SSE2)
//!   leaves most of the width unused.
//! - hand-written intrinsics per instruction set (the runtime's convolution
//!   kernels, `kernels/conv/`), chosen by matching on an [`Isa`] from [`isa`].

use std::sync::OnceLock;

/// An instruction-set level, from the baseline up; every level includes the ones
/// below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// The target's baseline: NEON on aarch64, SSE2 on x86-64, whatever the
    /// target enables elsewhere (NEON on the armv7 Pi target).
    Portable,
    /// x86-64 with AVX2 and FMA.
    Avx2Fma,
    /// x86-64 with AVX-512F (and AVX2 and FMA).
    Avx512,
}

/// The best level this CPU runs, detected on the first call.
#[inline]
pub fn isa() -> Isa {
    static LEVEL: OnceLock<Isa> = OnceLock::new();
    *LEVEL.get_or_init(detect)
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") {
            return if has!("avx512f") {
                Isa::Avx512
            } else {
                Isa::Avx2Fma
            };
        }
    }
    Isa::Portable
}

impl Isa {
    /// The level's name for people (bench output).
    pub fn describe(self) -> &'static str {
        match self {
            Isa::Portable if cfg!(target_arch = "aarch64") => "NEON",
            Isa::Portable => "baseline SIMD",
            Isa::Avx2Fma => "AVX2+FMA",
            Isa::Avx512 => "AVX-512",
        }
    }

    /// Whether this CPU runs code compiled for this level.
    pub fn supported(self) -> bool {
        self <= isa()
    }

    /// The levels this CPU runs, from the baseline up (for tests that check
    /// every version of a kernel).
    pub fn all_supported() -> Vec<Isa> {
        [Isa::Portable, Isa::Avx2Fma, Isa::Avx512]
            .into_iter()
            .filter(|i| i.supported())
            .collect()
    }
}

/// Defines `fn NAME` whose body is compiled for the baseline and, on x86-64, for
/// AVX2+FMA; a call runs the AVX2+FMA version when [`isa`] allows it. The
/// versions are also callable one by one, for tests: `NAME::portable(..)` and
/// (x86-64 only, `unsafe` where the CPU may lack the features) `NAME::avx2(..)`.
///
/// Helpers called from the body must be `#[inline(always)]` to be compiled with
/// it. Const generics are allowed (`fn dot<const R: usize>(..) -> [f32; R]`);
/// arguments are plain names.
///
/// ```
/// fennec_runtime::kernels::simd::simd_fn! {
///     /// `y += a * x`.
///     fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
///         for (y, x) in y.iter_mut().zip(x) {
///             *y += a * x;
///         }
///     }
/// }
/// let mut y = [1.0, 2.0];
/// axpy(2.0, &[1.0, 1.0], &mut y);
/// assert_eq!(y, [3.0, 4.0]);
/// axpy::portable(1.0, &[1.0, 1.0], &mut y);
/// assert_eq!(y, [4.0, 5.0]);
/// ```
#[macro_export]
macro_rules! simd_fn {
    (
        $(#[$attr:meta])*
        $vis:vis fn $name:ident $(<$(const $g:ident: $gt:ty),+>)?
            ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$attr])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name $(<$(const $g: $gt),+>)? ($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            if $crate::kernels::simd::isa() >= $crate::kernels::simd::Isa::Avx2Fma {
                // SAFETY: the CPU has AVX2 and FMA, which `avx2` is compiled for.
                return unsafe { $name::avx2 $(::<$($g),+>)? ($($arg),*) };
            }
            $name::portable $(::<$($g),+>)? ($($arg),*)
        }

        /// The versions of the function of the same name, one per instruction set.
        #[allow(unused_imports, clippy::too_many_arguments)]
        $vis mod $name {
            use super::*;

            #[inline(always)]
            pub fn portable $(<$(const $g: $gt),+>)? ($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            pub fn avx2 $(<$(const $g: $gt),+>)? ($($arg: $ty),*) $(-> $ret)? {
                portable $(::<$($g),+>)? ($($arg),*)
            }
        }
    };
}

pub use crate::simd_fn;

#[cfg(test)]
mod tests {
    use super::*;

    simd_fn! {
        /// Sums of `R` lanes.
        fn lane_sums<const R: usize>(x: &[f32]) -> [f32; R] {
            let mut acc = [0.0; R];
            for chunk in x.chunks_exact(R) {
                for (a, v) in acc.iter_mut().zip(chunk) {
                    *a += v;
                }
            }
            acc
        }
    }

    #[test]
    fn levels_are_ordered_and_detected_once() {
        assert!(Isa::Portable < Isa::Avx2Fma && Isa::Avx2Fma < Isa::Avx512);
        assert_eq!(isa(), detect());
        let all = Isa::all_supported();
        assert_eq!(all.first(), Some(&Isa::Portable));
        assert_eq!(all.last(), Some(&isa()));
    }

    #[test]
    fn every_version_of_a_simd_fn_gives_the_same_result() {
        let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
        let want = [480.0, 496.0, 512.0, 528.0];
        assert_eq!(lane_sums::<4>(&x), want);
        assert_eq!(lane_sums::portable::<4>(&x), want);
        #[cfg(target_arch = "x86_64")]
        if Isa::Avx2Fma.supported() {
            // SAFETY: the CPU has AVX2 and FMA.
            assert_eq!(unsafe { lane_sums::avx2::<4>(&x) }, want);
        }
    }
}
