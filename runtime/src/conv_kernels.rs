//! Direct 2-D convolution kernels for the small CNNs fennec mostly runs.
//!
//! tract lowers a 3x3 convolution over a 224x224 image to im2col plus a matrix
//! product (or a four-channel direct loop), which on x86-64 runs at a quarter of
//! the speed of onnxruntime's MLAS kernels. This module computes the same
//! convolution directly on NCHW data: one output row at a time, a tile of
//! `OCB` output channels x `XW` neighbouring pixels kept in registers while the
//! input channels and kernel taps are accumulated. Written as plain Rust loops
//! over fixed-size arrays, which LLVM turns into SIMD code; the same code is
//! compiled for AVX-512, AVX2+FMA and the portable baseline, and the widest one
//! the CPU supports is picked at run time, so the binary still runs on any
//! x86-64 (and on ARM, where NEON is the baseline).
//!
//! Only what [`crate::fast_ops`] needs: stride 1, dilation 1, no padding (the
//! caller pads the input), one group, f32. Sums run in a fixed order per output
//! point, so results do not depend on the thread count.

/// Output channels computed together (the weights are packed in blocks of this many).
pub const OCB: usize = 4;

/// The instruction set the kernels were compiled for, chosen once per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// x86-64 with AVX-512F: tiles of 4 channels x 64 pixels (16 zmm accumulators).
    Avx512,
    /// x86-64 with AVX2 and FMA: 4 channels x 16 pixels (8 ymm accumulators; 24
    /// pixels would need all 16 registers and spill).
    Avx2Fma,
    /// Anything else: NEON on aarch64 (4 channels x 16 pixels, 16 q-register
    /// accumulators), else 4-lane blocks in plain Rust that the compiler maps to
    /// whatever vector unit the target has (SSE2 on baseline x86-64).
    Portable,
}

impl Isa {
    /// The best kernel set this CPU runs.
    pub fn detect() -> Isa {
        [Isa::Avx512, Isa::Avx2Fma]
            .into_iter()
            .find(|i| i.supported())
            .unwrap_or(Isa::Portable)
    }

    /// Whether this CPU has what the kernel set needs.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                Isa::Avx512 => has!("avx512f") && has!("avx2") && has!("fma"),
                Isa::Avx2Fma => has!("avx2") && has!("fma"),
                Isa::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Portable
        }
    }
}

/// A convolution's weights in the layout the row kernel reads, plus its bias and
/// whether a ReLU follows.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedConv {
    /// Output channels.
    pub oc: usize,
    /// Input channels.
    pub ic: usize,
    pub kh: usize,
    pub kw: usize,
    pub relu: bool,
    /// `ceil(oc / OCB)` blocks of `[ic][kh][kw][OCB]`, zero-padded past `oc`.
    weights: Vec<f32>,
    /// One per output channel (zeros when the model has no bias).
    bias: Vec<f32>,
    isa: Isa,
}

impl PackedConv {
    /// `kernel` in OIHW order (`oc * ic * kh * kw` values), `bias` of `oc` values.
    pub fn new(
        kernel: &[f32],
        bias: Option<&[f32]>,
        (oc, ic, kh, kw): (usize, usize, usize, usize),
        relu: bool,
    ) -> PackedConv {
        Self::with_isa(kernel, bias, (oc, ic, kh, kw), relu, Isa::detect())
    }

    /// As [`PackedConv::new`] with a given kernel set; `isa` must be one the CPU
    /// runs (what [`Isa::detect`] returns, or [`Isa::Portable`]).
    pub fn with_isa(
        kernel: &[f32],
        bias: Option<&[f32]>,
        (oc, ic, kh, kw): (usize, usize, usize, usize),
        relu: bool,
        isa: Isa,
    ) -> PackedConv {
        let taps = ic * kh * kw;
        assert_eq!(kernel.len(), oc * taps, "kernel length");
        let mut weights = vec![0.0; oc.div_ceil(OCB) * taps * OCB];
        for o in 0..oc {
            for t in 0..taps {
                weights[((o / OCB) * taps + t) * OCB + o % OCB] = kernel[o * taps + t];
            }
        }
        let bias = bias.map_or_else(|| vec![0.0; oc], <[f32]>::to_vec);
        assert_eq!(bias.len(), oc, "bias length");
        let isa = if isa.supported() { isa } else { Isa::Portable };
        PackedConv {
            oc,
            ic,
            kh,
            kw,
            relu,
            weights,
            bias,
            isa,
        }
    }

    /// Number of blocks of [`OCB`] output channels.
    pub fn blocks(&self) -> usize {
        self.oc.div_ceil(OCB)
    }

    /// Output channels of block `b` (the last block may be partial).
    pub fn block_channels(&self, b: usize) -> std::ops::Range<usize> {
        b * OCB..((b + 1) * OCB).min(self.oc)
    }

    /// Computes output row `y` of the output channels in `block`, from one image
    /// `input` (`[ic][ih][iw]`, already padded). Channel `o` of the row goes to
    /// `out[(o - first) * stride..][..ow]`, `first` being the block's first
    /// channel, with `ow = iw - kw + 1`.
    pub fn row(
        &self,
        input: &[f32],
        (ih, iw): (usize, usize),
        y: usize,
        block: usize,
        out: &mut [f32],
        stride: usize,
    ) {
        assert!(
            ih >= self.kh && iw >= self.kw && y + self.kh <= ih,
            "row outside the image"
        );
        assert_eq!(input.len(), self.ic * ih * iw, "input length");
        assert!(block < self.blocks(), "no such channel block");
        let taps = self.ic * self.kh * self.kw;
        let channels = self.block_channels(block);
        let ow = iw - self.kw + 1;
        assert!(
            out.len() >= (channels.len() - 1) * stride + ow,
            "output too short"
        );
        let t = Tile {
            input,
            weights: &self.weights[block * taps * OCB..][..taps * OCB],
            bias: &self.bias[channels],
            relu: self.relu,
            ih,
            iw,
            y,
            ic: self.ic,
            kh: self.kh,
            kw: self.kw,
            stride,
        };
        // Tiles of `wide` pixels, then of `narrow` pixels for the rest (the last
        // one shifted left to end at the row's end, recomputing a few pixels
        // rather than reading past the row), or single pixels for rows narrower
        // than that.
        let (wide, narrow) = self.isa.tile_widths();
        let mut x = 0;
        while x + wide <= ow {
            self.tile(&t, x, wide, out);
            x += wide;
        }
        if ow >= narrow {
            while x < ow {
                let start = x.min(ow - narrow);
                self.tile(&t, start, narrow, out);
                x = start + narrow;
            }
        }
        while x < ow {
            tile_portable::<1>(&t, x, out);
            x += 1;
        }
    }

    /// One tile of `n` pixels (one of [`Isa::tile_widths`]) at column `x`.
    fn tile(&self, t: &Tile, x: usize, n: usize, out: &mut [f32]) {
        match (self.isa, n) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx512` and `Isa::Avx2Fma` are only stored (see
            // `with_isa`) when `Isa::detect` found the CPU features that these
            // `target_feature` functions are compiled for.
            (Isa::Avx512, 64) => unsafe { x86::tile_avx512::<4>(t, x, out) },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, _) => unsafe { x86::tile_avx512::<1>(t, x, out) },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2Fma, 16) => unsafe { x86::tile_avx2::<2>(t, x, out) },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2Fma, _) => unsafe { x86::tile_avx2::<1>(t, x, out) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: NEON is part of the aarch64 baseline: every aarch64 CPU and
            // Rust target has it.
            (_, 16) => unsafe { neon::tile::<4>(t, x, out) },
            #[cfg(target_arch = "aarch64")]
            _ => unsafe { neon::tile::<1>(t, x, out) },
            #[cfg(not(target_arch = "aarch64"))]
            (_, 16) => tile_lanes::<4>(t, x, out),
            #[cfg(not(target_arch = "aarch64"))]
            _ => tile_lanes::<1>(t, x, out),
        }
    }
}

impl Isa {
    /// `(wide, narrow)` tile widths in pixels.
    fn tile_widths(self) -> (usize, usize) {
        match self {
            Isa::Avx512 => (64, 16),
            Isa::Avx2Fma => (16, 8),
            Isa::Portable => (16, 4),
        }
    }
}

/// What a tile reads and where it writes, for one output row of one channel block.
struct Tile<'a> {
    /// One padded image, `[ic][ih][iw]`.
    input: &'a [f32],
    /// The block's packed weights, `[ic][kh][kw][OCB]`.
    weights: &'a [f32],
    /// The block's real channels (1..=OCB).
    bias: &'a [f32],
    relu: bool,
    ih: usize,
    iw: usize,
    y: usize,
    ic: usize,
    kh: usize,
    kw: usize,
    /// Distance between two channels' rows in the output.
    stride: usize,
}

impl Tile<'_> {
    /// The `n + kw - 1` input values under a tile of `n` pixels at `x`, for input
    /// channel `i` and kernel row `ky`.
    #[inline(always)]
    fn source(&self, i: usize, ky: usize, x: usize, n: usize) -> &[f32] {
        let start = (i * self.ih + self.y + ky) * self.iw + x;
        &self.input[start..start + n + self.kw - 1]
    }

    /// The `OCB` weights of tap number `t` (in `[ic][kh][kw]` order).
    #[inline(always)]
    fn taps(&self, t: usize) -> &[f32; OCB] {
        self.weights[t * OCB..t * OCB + OCB].try_into().unwrap()
    }
}

/// `OCB` channels x `N` pixels at column `x`, one value at a time: only for
/// the last few pixels of rows narrower than the narrow tile.
fn tile_portable<const N: usize>(t: &Tile, x: usize, out: &mut [f32]) {
    let mut acc = [[0.0f32; N]; OCB];
    for (o, row) in acc.iter_mut().enumerate() {
        *row = [t.bias.get(o).copied().unwrap_or(0.0); N];
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

/// `OCB` channels x `NV` x 4 pixels at column `x`, in 4-lane blocks.
#[cfg(not(target_arch = "aarch64"))]
#[inline(always)]
fn tile_lanes<const NV: usize>(t: &Tile, x: usize, out: &mut [f32]) {
    let n = NV * 4;
    let mut acc = [[F4([0.0; 4]); NV]; OCB];
    for (o, row) in acc.iter_mut().enumerate() {
        *row = [F4([t.bias.get(o).copied().unwrap_or(0.0); 4]); NV];
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

/// The aarch64 kernel, with NEON (always present there) intrinsics.
#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    use super::{OCB, Tile};

    /// `OCB` channels x `NV` x 4 pixels at column `x`.
    #[target_feature(enable = "neon")]
    pub(super) fn tile<const NV: usize>(t: &Tile, x: usize, out: &mut [f32]) {
        const L: usize = 4;
        let n = NV * L;
        let mut acc = [[vdupq_n_f32(0.0); NV]; OCB];
        for (o, row) in acc.iter_mut().enumerate() {
            *row = [vdupq_n_f32(t.bias.get(o).copied().unwrap_or(0.0)); NV];
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
}

/// The x86-64 kernels, with explicit SIMD: accumulators for `OCB` channels x
/// `NV` vectors of pixels stay in registers while the taps stream past. (Left
/// to the auto-vectoriser, the same loops came out as scalar code with
/// accumulators spilled to the stack in the LTO build.)
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{OCB, Tile};

    /// `OCB` channels x `NV` x 16 pixels at column `x`.
    #[target_feature(enable = "avx512f")]
    pub(super) fn tile_avx512<const NV: usize>(t: &Tile, x: usize, out: &mut [f32]) {
        const L: usize = 16;
        let n = NV * L;
        let mut acc = [[_mm512_setzero_ps(); NV]; OCB];
        for (o, row) in acc.iter_mut().enumerate() {
            *row = [_mm512_set1_ps(t.bias.get(o).copied().unwrap_or(0.0)); NV];
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

    /// `OCB` channels x `NV` x 8 pixels at column `x`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn tile_avx2<const NV: usize>(t: &Tile, x: usize, out: &mut [f32]) {
        const L: usize = 8;
        let n = NV * L;
        let mut acc = [[_mm256_setzero_ps(); NV]; OCB];
        for (o, row) in acc.iter_mut().enumerate() {
            *row = [_mm256_set1_ps(t.bias.get(o).copied().unwrap_or(0.0)); NV];
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
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `n` deterministic pseudo-random values in [-0.5, 0.5) (xorshift), for the
    /// kernel tests here and in `fast_ops`.
    pub(crate) fn rnd(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// Straightforward f64 convolution: out[o][y][x].
    fn reference(
        input: &[f32],
        k: &[f32],
        bias: &[f32],
        dims: (usize, usize, usize, usize),
        ih: usize,
        iw: usize,
        relu: bool,
    ) -> Vec<f32> {
        let (oc, ic, kh, kw) = dims;
        let (oh, ow) = (ih - kh + 1, iw - kw + 1);
        let mut out = vec![0.0; oc * oh * ow];
        for o in 0..oc {
            for y in 0..oh {
                for x in 0..ow {
                    let mut s = bias[o] as f64;
                    for i in 0..ic {
                        for dy in 0..kh {
                            for dx in 0..kw {
                                s += input[(i * ih + y + dy) * iw + x + dx] as f64
                                    * k[((o * ic + i) * kh + dy) * kw + dx] as f64;
                            }
                        }
                    }
                    let s = s as f32;
                    out[(o * oh + y) * ow + x] = if relu { s.max(0.0) } else { s };
                }
            }
        }
        out
    }

    fn isas() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma");
            if avx2 {
                v.push(Isa::Avx2Fma);
            }
            if avx2 && std::arch::is_x86_feature_detected!("avx512f") {
                v.push(Isa::Avx512);
            }
        }
        v
    }

    #[test]
    fn matches_reference_on_awkward_shapes() {
        // Widths around every tile size, channel counts that leave partial blocks,
        // non-square kernels, with and without ReLU.
        let cases = [
            (5, 3, 3, 3, 9, 227, true),
            (32, 8, 3, 3, 7, 109, false),
            (1, 2, 1, 1, 3, 5, true),
            (6, 1, 5, 2, 8, 19, false),
            (4, 4, 3, 3, 5, 66, true),
            (3, 2, 2, 3, 4, 3, false),
        ];
        for (seed, &(oc, ic, kh, kw, ih, iw, relu)) in cases.iter().enumerate() {
            let input = rnd(ic * ih * iw, seed as u64 + 1);
            let k = rnd(oc * ic * kh * kw, seed as u64 + 100);
            let bias = rnd(oc, seed as u64 + 200);
            let want = reference(&input, &k, &bias, (oc, ic, kh, kw), ih, iw, relu);
            let (oh, ow) = (ih - kh + 1, iw - kw + 1);
            for isa in isas() {
                let p = PackedConv::with_isa(&k, Some(&bias), (oc, ic, kh, kw), relu, isa);
                let mut got = vec![f32::NAN; oc * oh * ow];
                for y in 0..oh {
                    for b in 0..p.blocks() {
                        let first = p.block_channels(b).start;
                        p.row(
                            &input,
                            (ih, iw),
                            y,
                            b,
                            &mut got[(first * oh + y) * ow..],
                            oh * ow,
                        );
                    }
                }
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                        "{isa:?} case {seed} at {i}: {g} vs {w}"
                    );
                }
            }
        }
    }
}
