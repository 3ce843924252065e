//! Direct 2-D convolution on NCHW data, one output row at a time, with the kernel
//! for this CPU's instruction set.
//!
//! tract lowers a 3x3 convolution over a 224x224 image to im2col plus a matrix
//! product (or a four-channel direct loop), which on x86-64 runs at a quarter of
//! the speed of onnxruntime's MLAS kernels. Here a tile of [`OCB`] output channels
//! x a few neighbouring pixels stays in registers while the input channels and
//! kernel taps are accumulated. The kernels (one file per instruction set beside
//! this one) are chosen by [`Isa`]: AVX-512, AVX2+FMA or the portable baseline on
//! x86-64, NEON on aarch64, so the binary still runs on any CPU of its
//! architecture.
//!
//! Only what [`super::FusedConv`] needs: stride 1, dilation 1, no padding (the
//! caller pads the input), one group, f32. Sums run in a fixed order per output
//! point, so results do not depend on the thread count.

#[cfg(target_arch = "aarch64")]
use super::neon;
use super::portable;
#[cfg(target_arch = "x86_64")]
use super::{avx2, avx512};
use crate::kernels::simd::{Isa, isa};

/// Output channels computed together (the weights are packed in blocks of this many).
pub const OCB: usize = 4;

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
        Self::with_isa(kernel, bias, (oc, ic, kh, kw), relu, isa())
    }

    /// As [`PackedConv::new`] with a given kernel set; one the CPU does not run
    /// falls back to [`Isa::Portable`].
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
        let (wide, narrow) = tile_widths(self.isa);
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
            portable::tile_scalar::<1>(&t, x, out);
            x += 1;
        }
    }

    /// One tile of `n` pixels (one of [`tile_widths`]) at column `x`.
    fn tile(&self, t: &Tile, x: usize, n: usize, out: &mut [f32]) {
        match (self.isa, n) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx512` and `Isa::Avx2Fma` are only stored (see
            // `with_isa`) when the CPU has the features that these
            // `target_feature` functions are compiled for.
            (Isa::Avx512, 64) => unsafe { avx512::tile::<4>(t, x, out) },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, _) => unsafe { avx512::tile::<1>(t, x, out) },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2Fma, 16) => unsafe { avx2::tile::<2>(t, x, out) },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2Fma, _) => unsafe { avx2::tile::<1>(t, x, out) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: NEON is part of the aarch64 baseline: every aarch64 CPU and
            // Rust target has it.
            (_, 16) => unsafe { neon::tile::<4>(t, x, out) },
            #[cfg(target_arch = "aarch64")]
            _ => unsafe { neon::tile::<1>(t, x, out) },
            #[cfg(not(target_arch = "aarch64"))]
            (_, 16) => portable::tile_lanes::<4>(t, x, out),
            #[cfg(not(target_arch = "aarch64"))]
            _ => portable::tile_lanes::<1>(t, x, out),
        }
    }
}

/// `(wide, narrow)` tile widths in pixels, for 4 output channels at a time:
///
/// - AVX-512: 64 pixels (16 zmm accumulators), then 16;
/// - AVX2+FMA: 16 pixels (8 ymm accumulators; 24 would need all 16 registers and
///   spill), then 8;
/// - portable: NEON on aarch64, 16 pixels (16 q-register accumulators), then 4;
///   elsewhere 4-lane blocks in plain Rust that the compiler maps to whatever
///   vector unit the target has (SSE2 on baseline x86-64).
fn tile_widths(isa: Isa) -> (usize, usize) {
    match isa {
        Isa::Avx512 => (64, 16),
        Isa::Avx2Fma => (16, 8),
        Isa::Portable => (16, 4),
    }
}

/// What a tile reads and where it writes, for one output row of one channel block.
pub(super) struct Tile<'a> {
    /// One padded image, `[ic][ih][iw]`.
    pub input: &'a [f32],
    /// The block's packed weights, `[ic][kh][kw][OCB]`.
    pub weights: &'a [f32],
    /// The block's real channels (1..=OCB).
    pub bias: &'a [f32],
    pub relu: bool,
    pub ih: usize,
    pub iw: usize,
    pub y: usize,
    pub ic: usize,
    pub kh: usize,
    pub kw: usize,
    /// Distance between two channels' rows in the output.
    pub stride: usize,
}

impl Tile<'_> {
    /// The `n + kw - 1` input values under a tile of `n` pixels at `x`, for input
    /// channel `i` and kernel row `ky`.
    #[inline(always)]
    pub fn source(&self, i: usize, ky: usize, x: usize, n: usize) -> &[f32] {
        let start = (i * self.ih + self.y + ky) * self.iw + x;
        &self.input[start..start + n + self.kw - 1]
    }

    /// The `OCB` weights of tap number `t` (in `[ic][kh][kw]` order).
    #[inline(always)]
    pub fn taps(&self, t: usize) -> &[f32; OCB] {
        self.weights[t * OCB..t * OCB + OCB].try_into().unwrap()
    }

    /// The bias of channel `o` of the block, 0 past its real channels.
    #[inline(always)]
    pub fn bias_of(&self, o: usize) -> f32 {
        self.bias.get(o).copied().unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::rnd;

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
            for isa in Isa::all_supported() {
                let p = PackedConv::with_isa(&k, Some(&bias), (oc, ic, kh, kw), relu, isa);
                assert_eq!(p.isa, isa);
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
