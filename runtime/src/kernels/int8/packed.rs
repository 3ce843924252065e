//! An int8 convolution's weights in the layout its kernels read, the input
//! layout they read, and the driver that computes one requantized output row.
//!
//! The kernels contract pairs of neighbouring values as i16 x i16 → i32 (x86's
//! `vpmaddwd`; NEON's widening multiply-adds): exact, unlike the faster
//! `vpmaddubsw`, whose u8 x i8 pair sums saturate at 16 bits. So the image is
//! laid out channels-last (`[h][w][channels]`, the channel count rounded up to
//! even) as i16 codes minus the zero point, with a zero border, and the weights
//! as `[kh][kw * channels / 2]` steps of [`QOCB`] output channels x 2 codes: for
//! one kernel row and one output pixel, every step reads the next two input
//! values in memory.

#[cfg(target_arch = "x86_64")]
use super::avx2;
use super::portable;
use super::qdq::Requant;
use crate::kernels::simd::{Isa, isa};

/// Output channels computed together.
pub const QOCB: usize = 16;
/// Output pixels computed together (with [`QOCB`] channels: 8 AVX2 accumulators).
pub const PIXELS: usize = 4;

/// A quantized convolution's packed weights and requantization.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedQConv {
    pub oc: usize,
    pub ic: usize,
    /// `ic` rounded up to even: the channels of the packed input.
    pub icp: usize,
    pub kh: usize,
    pub kw: usize,
    /// `ceil(oc / QOCB)` blocks of `[kh][kw * icp / 2][QOCB][2]`, zero past `oc`.
    weights: Vec<i16>,
    pub requant: Requant,
    isa: Isa,
}

impl PackedQConv {
    /// `codes` in OIHW order.
    pub fn new(
        codes: &[i8],
        (oc, ic, kh, kw): (usize, usize, usize, usize),
        requant: Requant,
    ) -> PackedQConv {
        Self::with_isa(codes, (oc, ic, kh, kw), requant, isa())
    }

    /// As [`PackedQConv::new`] with a given kernel set; one the CPU does not run
    /// falls back to [`Isa::Portable`].
    pub fn with_isa(
        codes: &[i8],
        (oc, ic, kh, kw): (usize, usize, usize, usize),
        requant: Requant,
        isa: Isa,
    ) -> PackedQConv {
        assert_eq!(codes.len(), oc * ic * kh * kw, "kernel length");
        assert_eq!(requant.scale.len(), oc, "requantization channels");
        let icp = ic.next_multiple_of(2);
        let steps = kw * icp / 2;
        let mut weights = vec![0; oc.div_ceil(QOCB) * kh * steps * QOCB * 2];
        for o in 0..oc {
            for i in 0..ic {
                for ky in 0..kh {
                    for kx in 0..kw {
                        let k = kx * icp + i; // position in the input run of one pixel row
                        let at = (((o / QOCB) * kh + ky) * steps + k / 2) * QOCB * 2
                            + (o % QOCB) * 2
                            + k % 2;
                        weights[at] = codes[((o * ic + i) * kh + ky) * kw + kx] as i16;
                    }
                }
            }
        }
        let isa = if isa.supported() { isa } else { Isa::Portable };
        PackedQConv {
            oc,
            ic,
            icp,
            kh,
            kw,
            weights,
            requant,
            isa,
        }
    }

    pub fn blocks(&self) -> usize {
        self.oc.div_ceil(QOCB)
    }

    /// Output channels of block `b` (the last block may be partial).
    pub fn block_channels(&self, b: usize) -> std::ops::Range<usize> {
        b * QOCB..((b + 1) * QOCB).min(self.oc)
    }

    /// One image as the kernels read it: `centred` is `[ic][h][w]` (codes minus
    /// the zero point); the result `[pad_top + h + pad_bottom][pad_left + w +
    /// pad_right][icp]`, zero in the border and the extra channel.
    pub fn pack_input(
        &self,
        centred: &[i16],
        (h, w): (usize, usize),
        pad: [(usize, usize); 2],
    ) -> Vec<i16> {
        assert_eq!(centred.len(), self.ic * h * w, "input length");
        let (ph, pw) = (h + pad[0].0 + pad[0].1, w + pad[1].0 + pad[1].1);
        let icp = self.icp;
        let mut out = vec![0; ph * pw * icp];
        for (c, plane) in centred.chunks_exact(h * w).enumerate() {
            for (y, row) in plane.chunks_exact(w).enumerate() {
                let start = ((y + pad[0].0) * pw + pad[1].0) * icp + c;
                for (dst, &v) in out[start..].iter_mut().step_by(icp).zip(row) {
                    *dst = v;
                }
            }
        }
        out
    }

    /// Output row `y` of the channels of `block`, requantized, from a packed
    /// image `(ph, pw)`: channel `o` goes to `out[(o - first) * stride..][..ow]`,
    /// `first` being the block's first channel, `ow = pw - kw + 1`.
    pub fn row(
        &self,
        input: &[i16],
        (ph, pw): (usize, usize),
        y: usize,
        block: usize,
        out: &mut [i16],
        stride: usize,
    ) {
        assert!(pw >= self.kw && y + self.kh <= ph, "row outside the image");
        assert_eq!(input.len(), ph * pw * self.icp, "input length");
        let channels = self.block_channels(block);
        let ow = pw - self.kw + 1;
        assert!(
            out.len() >= (channels.len() - 1) * stride + ow,
            "output too short"
        );
        let steps = self.kw * self.icp / 2;
        let size = self.kh * steps * QOCB * 2;
        let t = QTile {
            input,
            weights: &self.weights[block * size..][..size],
            pw,
            icp: self.icp,
            kh: self.kh,
            steps,
            y,
        };
        let mut store = |x: usize, acc: &[[i32; QOCB]]| {
            for (p, acc) in acc.iter().enumerate() {
                for (k, o) in channels.clone().enumerate() {
                    out[k * stride + x + p] = self.requant.apply(o, acc[k]);
                }
            }
        };
        // Tiles of PIXELS, the last one shifted left to end at the row's end;
        // single pixels for rows narrower than a tile.
        let mut x = 0;
        if ow >= PIXELS {
            while x < ow {
                let start = x.min(ow - PIXELS);
                store(start, &self.tile(&t, start));
                x = start + PIXELS;
            }
        }
        while x < ow {
            store(x, &portable::tile::<1>(&t, x));
            x += 1;
        }
    }

    fn tile(&self, t: &QTile, x: usize) -> [[i32; QOCB]; PIXELS] {
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx2Fma` and above are only stored (see `with_isa`)
            // when the CPU has AVX2.
            Isa::Avx2Fma | Isa::Avx512 => unsafe { avx2::tile::<PIXELS>(t, x) },
            _ => portable::tile::<PIXELS>(t, x),
        }
    }
}

/// What a tile reads: one packed image, one block's weights, one output row.
pub(super) struct QTile<'a> {
    /// `[ph][pw][icp]`.
    pub input: &'a [i16],
    /// `[kh][steps][QOCB][2]`.
    pub weights: &'a [i16],
    pub pw: usize,
    pub icp: usize,
    pub kh: usize,
    /// Pairs per kernel row: `kw * icp / 2`.
    pub steps: usize,
    pub y: usize,
}

impl QTile<'_> {
    /// The `2 * steps` input values under kernel row `ky` for the output pixel at
    /// column `x`.
    #[inline(always)]
    pub fn source(&self, ky: usize, x: usize) -> &[i16] {
        let start = ((self.y + ky) * self.pw + x) * self.icp;
        &self.input[start..start + 2 * self.steps]
    }

    /// The weights of kernel row `ky`: `steps` x [`QOCB`] x 2.
    #[inline(always)]
    pub fn row_weights(&self, ky: usize) -> &[i16] {
        let size = self.steps * QOCB * 2;
        &self.weights[ky * size..][..size]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::int8::qdq::{Act, QParams, Requant};

    /// xorshift codes in `[lo, hi]`.
    fn codes(n: usize, seed: u64, lo: i32, hi: i32) -> Vec<i32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                lo + (s >> 33) as i32 % (hi - lo + 1)
            })
            .collect()
    }

    /// Plain convolution of centred codes `[ic][h][w]` with zero padding, i64
    /// sums: `out[o][y][x]` before requantization.
    fn reference(
        x: &[i32],
        w: &[i32],
        (oc, ic, kh, kw): (usize, usize, usize, usize),
        (h, wd): (usize, usize),
        pad: [(usize, usize); 2],
    ) -> Vec<i64> {
        let (ph, pw) = (h + pad[0].0 + pad[0].1, wd + pad[1].0 + pad[1].1);
        let (oh, ow) = (ph - kh + 1, pw - kw + 1);
        let at = |i: usize, y: usize, xx: usize| -> i64 {
            let (Some(y), Some(xx)) = (y.checked_sub(pad[0].0), xx.checked_sub(pad[1].0)) else {
                return 0;
            };
            if y >= h || xx >= wd {
                return 0;
            }
            x[(i * h + y) * wd + xx] as i64
        };
        let mut out = vec![0; oc * oh * ow];
        for o in 0..oc {
            for y in 0..oh {
                for xx in 0..ow {
                    let mut s = 0i64;
                    for i in 0..ic {
                        for dy in 0..kh {
                            for dx in 0..kw {
                                s += at(i, y + dy, xx + dx)
                                    * w[((o * ic + i) * kh + dy) * kw + dx] as i64;
                            }
                        }
                    }
                    out[(o * oh + y) * ow + xx] = s;
                }
            }
        }
        out
    }

    #[test]
    fn rows_match_a_plain_convolution_exactly() {
        // (oc, ic, kh, kw, h, w, pad): 1 and 3 input channels, odd sizes, partial
        // channel blocks, rows narrower than a tile, same and valid padding.
        let cases = [
            (32, 3, 3, 3, 9, 23, [(0, 0), (0, 0)]),
            (5, 1, 3, 3, 6, 7, [(1, 1), (1, 1)]),
            (17, 32, 3, 3, 5, 13, [(1, 1), (1, 1)]),
            (3, 2, 2, 3, 4, 3, [(0, 1), (2, 0)]),
            (16, 7, 1, 1, 3, 4, [(0, 0), (0, 0)]),
            (20, 4, 5, 5, 9, 9, [(2, 2), (2, 2)]),
        ];
        for (seed, &(oc, ic, kh, kw, h, w, pad)) in cases.iter().enumerate() {
            let seed = seed as u64;
            // Extreme codes included: u8 inputs centred on zero point 3, int8 weights.
            let x = codes(ic * h * w, seed + 1, -3, 252);
            let k = codes(oc * ic * kh * kw, seed + 100, -128, 127);
            let want = reference(&x, &k, (oc, ic, kh, kw), (h, w), pad);
            let q = |scale: f32, zero_point| QParams {
                act: Act::U8,
                scale,
                inv_scale: scale.recip(),
                zero_point,
            };
            let wscales: Vec<f32> = (0..oc).map(|o| 0.001 * (o + 1) as f32).collect();
            let bias: Vec<f32> = (0..oc).map(|o| o as f32 * 0.37 - 2.0).collect();
            let requant = Requant::new(
                &q(0.02, 3),
                &wscales,
                Some(&bias),
                seed.is_multiple_of(2),
                &q(0.05, 7),
            );
            let k8: Vec<i8> = k.iter().map(|&v| v as i8).collect();
            let centred: Vec<i16> = x.iter().map(|&v| v as i16).collect();
            let (ph, pw) = (h + pad[0].0 + pad[0].1, w + pad[1].0 + pad[1].1);
            let (oh, ow) = (ph - kh + 1, pw - kw + 1);
            for isa in Isa::all_supported() {
                let p = PackedQConv::with_isa(&k8, (oc, ic, kh, kw), requant.clone(), isa);
                let input = p.pack_input(&centred, (h, w), pad);
                let mut got = vec![i16::MIN; oc * oh * ow];
                for y in 0..oh {
                    for b in 0..p.blocks() {
                        let first = p.block_channels(b).start;
                        p.row(
                            &input,
                            (ph, pw),
                            y,
                            b,
                            &mut got[(first * oh + y) * ow..],
                            oh * ow,
                        );
                    }
                }
                for (i, (&g, &s)) in got.iter().zip(&want).enumerate() {
                    let o = i / (oh * ow);
                    assert_eq!(g, requant.apply(o, s as i32), "{isa:?} case {seed} at {i}");
                }
            }
        }
    }
}
