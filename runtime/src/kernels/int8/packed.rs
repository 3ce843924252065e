//! An int8 convolution's weights in the layout its kernels read, the input
//! layouts they read, and the driver that computes requantized output rows.
//!
//! The kernels contract pairs of values as i16 x i16 → i32 (x86's `vpmaddwd`;
//! NEON's widening multiply-adds): exact, unlike the twice as wide `vpmaddubsw`,
//! whose u8 x i8 pair sums saturate at 16 bits. Every output value is a sum over
//! `pairs` pairs of (input, weight) codes. A tile is [`OCT`] output channels x
//! [`PX`] neighbouring pixels of one output row: for each pair it reads the
//! `PX` input pairs of its pixels, one contiguous run (a *pair row*), and
//! multiplies them by each channel's weight pair. Two ways to lay the input out
//! so that a pair row is contiguous:
//!
//! - [`Layout::ChannelPairs`] (even or many input channels): the image is packed
//!   once as `[h][ic / 2][w][2]` i16 (codes minus the zero point, zero border);
//!   pair `(ky, kx, c / 2)` of output row `y` is the run at row `y + ky`, channel
//!   pair `c / 2`, column `kx`. No copy per output row.
//! - [`Layout::Taps`] (few, odd input channels: the first layer's RGB): the
//!   `ic * kh * kw` taps of one output value are paired in OIHW order (27 taps →
//!   14 pairs instead of 3x3x4 / 2 = 18), and each output row's pair rows are
//!   built from the planar padded image (`[ic][h][w]`) before its tiles run.
//!
//! Images narrower than a tile get a zero right border wide enough for one tile;
//! otherwise the row's last tile is shifted left to end at the row's end.

#[cfg(target_arch = "x86_64")]
use super::avx2;
use super::portable;
use rayon::prelude::*;

use super::qdq::{QParams, Requant};
use crate::kernels::simd::{Isa, isa, simd_fn};

/// Output channels of a tile (the weights are packed in blocks of this many).
pub const OCT: usize = 4;
/// Vectors of 8 pixels in a tile.
pub const NV: usize = 2;
/// Pixels of a tile.
pub const PX: usize = 8 * NV;

/// How a convolution's input is laid out for the kernels (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    ChannelPairs,
    Taps,
}

/// A quantized convolution's packed weights and requantization.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedQConv {
    pub oc: usize,
    pub ic: usize,
    pub kh: usize,
    pub kw: usize,
    pub layout: Layout,
    /// Pairs summed per output value.
    pub pairs: usize,
    /// `ceil(oc / OCT)` blocks of `[pairs][OCT][2]` codes, zero past `oc`.
    weights: Vec<i16>,
    pub requant: Requant,
    isa: Isa,
}

/// One image in the layout of a [`PackedQConv`], ready for
/// [`PackedQConv::pair_rows`].
#[derive(Debug, Clone)]
pub struct PackedInput {
    /// [`Layout::ChannelPairs`]: `[ph][ic / 2][pwa][2]`; [`Layout::Taps`]:
    /// `[ic][ph][pwa]`. Zero in the border.
    data: Vec<i16>,
    /// Rows of the padded image, and its allocated width (at least one tile
    /// wider than the kernel).
    ph: usize,
    pwa: usize,
    /// Output rows and columns of the convolution.
    pub oh: usize,
    pub ow: usize,
    /// Columns the tiles cover: `max(ow, PX)`.
    pub cols: usize,
}

/// The pair rows of one output row (see [`PackedQConv::pair_rows`]): pair `p`
/// of the pixel at column `x` is `data[2 * (offsets[p] + x)..][..2]`, for `x <
/// cols` (checked when built).
#[derive(Debug)]
pub struct PairRows<'a> {
    data: &'a [i16],
    offsets: &'a [usize],
    cols: usize,
}

/// Per-thread buffers of the row driver: the pair rows of one output row
/// ([`Layout::Taps`]) and their start offsets (in pairs).
#[derive(Debug, Default)]
pub struct RowScratch {
    pair_rows: Vec<i16>,
    offsets: Vec<usize>,
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
        let layout = if ic % 2 == 1 && ic < 8 {
            Layout::Taps
        } else {
            Layout::ChannelPairs
        };
        let (taps, icp) = (ic * kh * kw, ic.next_multiple_of(2));
        let pairs = match layout {
            Layout::Taps => taps.div_ceil(2),
            Layout::ChannelPairs => kh * kw * icp / 2,
        };
        // Where the code for slot `s` of output channel `o`'s pair rows is in
        // `codes` (`None`: a zero slot).
        let slot = |o: usize, s: usize| match layout {
            // Slot `s` is tap `s` in OIHW order.
            Layout::Taps => (s < taps).then_some(o * taps + s),
            // Slot `s` is `(ky * kw + kx) * icp + i`.
            Layout::ChannelPairs => {
                let (tap, i) = (s / icp, s % icp);
                (i < ic).then(|| ((o * ic + i) * kh + tap / kw) * kw + tap % kw)
            }
        };
        let blocks = oc.div_ceil(OCT);
        let mut weights = vec![0; blocks * pairs * OCT * 2];
        for o in 0..oc {
            for s in 0..2 * pairs {
                if let Some(at) = slot(o, s) {
                    weights[((o / OCT * pairs + s / 2) * OCT + o % OCT) * 2 + s % 2] =
                        codes[at] as i16;
                }
            }
        }
        let isa = if isa.supported() { isa } else { Isa::Portable };
        PackedQConv {
            oc,
            ic,
            kh,
            kw,
            layout,
            pairs,
            weights,
            requant,
            isa,
        }
    }

    pub fn blocks(&self) -> usize {
        self.oc.div_ceil(OCT)
    }

    /// One image `[ic][h][w]` as the kernels read it: codes minus the input's
    /// zero point, with `pad` rows and columns of zeros (`(before, after)` per
    /// axis). With `parallel`, rows are packed by the threads of the current
    /// rayon pool (call it inside the inference pool's `install`).
    pub fn pack_input(
        &self,
        image: &Source,
        (h, w): (usize, usize),
        pad: [(usize, usize); 2],
        parallel: bool,
    ) -> PackedInput {
        assert_eq!(image.len(), self.ic * h * w, "input length");
        let (ph, pw) = (h + pad[0].0 + pad[0].1, w + pad[1].0 + pad[1].1);
        assert!(
            ph >= self.kh && pw >= self.kw,
            "image smaller than the kernel"
        );
        let (oh, ow) = (ph + 1 - self.kh, pw + 1 - self.kw);
        let cols = ow.max(PX);
        let pwa = cols + self.kw - 1;
        let (top, left) = (pad[0].0, pad[1].0);
        // One padded row: [pwa] of one channel (taps) or [pairs][pwa][2]
        // (channel pairs); `i` counts them in memory order; `tmp` is room for
        // two rows of `w`.
        let pairs = self.ic.div_ceil(2);
        let row_len = match self.layout {
            Layout::Taps => pwa,
            Layout::ChannelPairs => pairs * pwa * 2,
        };
        let fill = |tmp: &mut Vec<i16>, (i, dst): (usize, &mut [i16])| {
            let (c, y) = match self.layout {
                Layout::Taps => (i / ph, i % ph),
                Layout::ChannelPairs => (0, i),
            };
            let Some(y) = y.checked_sub(top).filter(|&y| y < h) else {
                return;
            };
            match self.layout {
                Layout::Taps => image.row((c * h + y) * w, &mut dst[left..][..w]),
                Layout::ChannelPairs => {
                    tmp.resize(2 * w, 0);
                    let (a, b) = tmp.split_at_mut(w);
                    for (p, dst) in dst.chunks_exact_mut(pwa * 2).enumerate() {
                        let dst = &mut dst[left * 2..][..2 * w];
                        let (first, second) = ((2 * p * h + y) * w, ((2 * p + 1) * h + y) * w);
                        match image {
                            // Codes of both channels in one pass.
                            Source::Codes { codes, .. } if 2 * p + 1 < self.ic => {
                                let (flip, offset) = image.centring();
                                let (a, b) = (&codes[first..][..w], &codes[second..][..w]);
                                centre_pairs(a, b, flip, offset, dst);
                            }
                            _ => {
                                image.row(first, a);
                                if 2 * p + 1 < self.ic {
                                    image.row(second, b);
                                } else {
                                    b.fill(0);
                                }
                                interleave(a, b, dst);
                            }
                        }
                    }
                }
            }
        };
        let rows = match self.layout {
            Layout::Taps => self.ic * ph,
            Layout::ChannelPairs => ph,
        };
        let mut data = vec![0; rows * row_len];
        if parallel {
            data.par_chunks_mut(row_len)
                .enumerate()
                .for_each_init(Vec::new, fill);
        } else {
            let mut tmp = Vec::new();
            data.chunks_mut(row_len)
                .enumerate()
                .for_each(|row| fill(&mut tmp, row));
        }
        PackedInput {
            data,
            ph,
            pwa,
            oh,
            ow,
            cols,
        }
    }

    /// Output channels of block `b` (the last block may be partial).
    pub fn block_channels(&self, b: usize) -> std::ops::Range<usize> {
        b * OCT..((b + 1) * OCT).min(self.oc)
    }

    /// The pair rows of output row `y`, for [`PackedQConv::block_row`]: views
    /// into the packed image ([`Layout::ChannelPairs`]) or built into `scratch`
    /// ([`Layout::Taps`]).
    pub fn pair_rows<'a>(
        &self,
        input: &'a PackedInput,
        y: usize,
        scratch: &'a mut RowScratch,
    ) -> PairRows<'a> {
        assert!(y < input.oh, "row outside the output");
        let cols = input.cols;
        let RowScratch { pair_rows, offsets } = scratch;
        offsets.clear();
        let data: &[i16] = match self.layout {
            Layout::ChannelPairs => {
                let pairs = self.ic.div_ceil(2);
                for ky in 0..self.kh {
                    for kx in 0..self.kw {
                        for p in 0..pairs {
                            offsets.push(((y + ky) * pairs + p) * input.pwa + kx);
                        }
                    }
                }
                &input.data
            }
            Layout::Taps => {
                pair_rows.resize(self.pairs * cols * 2, 0);
                let taps = self.ic * self.kh * self.kw;
                let tap = |t: usize| {
                    let (c, k) = (t / (self.kh * self.kw), t % (self.kh * self.kw));
                    let start = (c * input.ph + y + k / self.kw) * input.pwa + k % self.kw;
                    &input.data[start..][..cols]
                };
                for (p, dst) in pair_rows.chunks_exact_mut(2 * cols).enumerate() {
                    if 2 * p + 1 < taps {
                        interleave(tap(2 * p), tap(2 * p + 1), dst);
                    } else {
                        for (d, &a) in dst.chunks_exact_mut(2).zip(tap(2 * p)) {
                            d[0] = a;
                            d[1] = 0;
                        }
                    }
                    offsets.push(p * cols);
                }
                pair_rows
            }
        };
        let end = offsets.iter().max().map_or(0, |m| m + cols);
        assert!(2 * end <= data.len(), "pair rows outside the input");
        PairRows {
            data,
            offsets,
            cols,
        }
    }

    /// One output row of the channels of block `b` from its pair rows: channel
    /// `j`'s i32 sums (bias not added) go to `out[j * cols..][..cols]` (the first
    /// `ow` columns are the row; channels past `oc` hold nothing of use).
    pub fn block_row(&self, rows: &PairRows, b: usize, out: &mut [i32]) {
        assert!(b < self.blocks(), "block outside the output");
        let cols = rows.cols;
        let t = QTile {
            data: rows.data,
            offsets: rows.offsets,
            cols,
            weights: &self.weights[b * self.pairs * OCT * 2..][..self.pairs * OCT * 2],
        };
        let out = &mut out[..OCT * cols];
        // Tiles of PX, the last one shifted left to end at the row's end.
        let mut x = 0;
        while x < cols {
            let start = x.min(cols - PX);
            self.tile(&t, start, out, cols);
            x = start + PX;
        }
    }

    /// Output channel `o`'s codes of `sums` (from [`PackedQConv::block_row`]) as
    /// bytes (`u8`, or `i8` as bytes) into `out`.
    pub fn requant_row(&self, o: usize, sums: &[i32], out: &mut [u8]) {
        let r = &self.requant;
        let (bias, scale) = (r.bias[o], r.scale[o]);
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `tile`.
            Isa::Avx2Fma | Isa::Avx512 => unsafe { avx2::requant_row(r, bias, scale, sums, out) },
            _ => portable::requant_row(r, bias, scale, sums, out),
        }
    }

    /// Whether the max of codes is the code of the max sum, so that a max pool
    /// can run on the sums and requantize 1 value per window: true when no
    /// scale is negative and no sum plus bias can wrap (the requantization is
    /// then non-decreasing).
    pub fn pools_on_sums(&self) -> bool {
        // Centred codes are within ±255, weight codes within ±128.
        let most = (2 * self.pairs * 255 * 128) as i64;
        let bias = self.requant.bias.iter().map(|b| (*b as i64).abs()).max();
        self.requant.scale.iter().all(|&s| s >= 0.0) && most + bias.unwrap_or(0) <= i32::MAX as i64
    }

    fn tile(&self, t: &QTile, x: usize, out: &mut [i32], stride: usize) {
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx2Fma` and above are only stored (see `with_isa`)
            // when the CPU has AVX2.
            Isa::Avx2Fma | Isa::Avx512 => unsafe { avx2::tile(t, x, out, stride) },
            _ => portable::tile(t, x, out, stride),
        }
    }
}

/// An image the convolution reads: 8-bit codes, or floats it quantizes itself
/// (the model's `QuantizeLinear` before the op, as tract would).
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// `u8` codes, or `i8` codes as bytes when `signed`, of the given zero point.
    Codes {
        codes: &'a [u8],
        signed: bool,
        zero_point: i32,
    },
    /// Quantized with `quantize` (tract's `QuantizeLinear`: `x * inv_scale`
    /// rounded half to even, plus the zero point, clamped), then read as codes of
    /// zero point `zero_point`.
    Floats {
        values: &'a [f32],
        quantize: QParams,
        zero_point: i32,
    },
}

impl Source<'_> {
    fn len(&self) -> usize {
        match self {
            Source::Codes { codes, .. } => codes.len(),
            Source::Floats { values, .. } => values.len(),
        }
    }

    /// For codes: `(flip, offset)` such that a code's byte `c` is `(c ^ flip) as
    /// i16 - offset` minus the zero point (an i8 code is the u8 `c ^ 0x80` minus
    /// 128).
    fn centring(&self) -> (u8, i16) {
        match *self {
            Source::Codes {
                signed: true,
                zero_point,
                ..
            } => (0x80, (zero_point + 128) as i16),
            Source::Codes { zero_point, .. } => (0, zero_point as i16),
            Source::Floats { .. } => (0, 0),
        }
    }

    /// The `dst.len()` values from `start` on, minus the zero point.
    fn row(&self, start: usize, dst: &mut [i16]) {
        match *self {
            Source::Codes { codes, .. } => {
                let (flip, offset) = self.centring();
                centre(&codes[start..][..dst.len()], flip, offset, dst);
            }
            Source::Floats {
                values,
                quantize: q,
                zero_point,
            } => {
                let (lo, hi) = q.act.range();
                let codes = (q.inv_scale, q.zero_point, lo, hi);
                quantize(&values[start..][..dst.len()], codes, zero_point, dst);
            }
        }
    }
}

/// What a tile reads: the pair rows of one output row and one block's weights.
/// Built only by [`PackedQConv::block_row`].
pub(super) struct QTile<'a> {
    /// Pair rows: pair `p` of the pixel at column `x` is `data[2 * (offsets[p] +
    /// x)..][..2]`.
    pub data: &'a [i16],
    pub offsets: &'a [usize],
    /// Columns of the row: `2 * (offsets[p] + cols) <= data.len()` for every
    /// `p` (checked once per row by [`PackedQConv::pair_rows`], relied on by the
    /// AVX2 kernel's unchecked loads).
    pub cols: usize,
    /// `[pairs][OCT][2]`.
    pub weights: &'a [i16],
}

simd_fn! {
    /// `dst[i] = (src[i] ^ flip) - offset`: 8-bit codes to centred i16.
    fn centre(src: &[u8], flip: u8, offset: i16, dst: &mut [i16]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = (s ^ flip) as i16 - offset;
        }
    }
}

simd_fn! {
    /// Floats to centred i16 codes: `codes = (multiplier, zero point, lo, hi)` of
    /// the quantization (as tract's `QuantizeLinear`, whose `+ zero_point` wraps
    /// in release builds), then minus `zero_point`.
    fn quantize(x: &[f32], codes: (f32, i32, i32, i32), zero_point: i32, dst: &mut [i16]) {
        let (multiplier, zp, lo, hi) = codes;
        for (d, &x) in dst.iter_mut().zip(x) {
            let code = ((x * multiplier).round_ties_even() as i32).wrapping_add(zp);
            *d = (code.clamp(lo, hi) - zero_point) as i16;
        }
    }
}

simd_fn! {
    /// [`centre`] of two rows, interleaved: `dst[2i] = a[i]`, `dst[2i + 1] = b[i]`.
    fn centre_pairs(a: &[u8], b: &[u8], flip: u8, offset: i16, dst: &mut [i16]) {
        for ((d, &a), &b) in dst.chunks_exact_mut(2).zip(a).zip(b) {
            d[0] = (a ^ flip) as i16 - offset;
            d[1] = (b ^ flip) as i16 - offset;
        }
    }
}

simd_fn! {
    /// `dst[2i] = a[i]`, `dst[2i + 1] = b[i]`.
    fn interleave(a: &[i16], b: &[i16], dst: &mut [i16]) {
        for ((d, &a), &b) in dst.chunks_exact_mut(2).zip(a).zip(b) {
            d[0] = a;
            d[1] = b;
        }
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

    /// Sums that wrap when their bias is added, products past the i32 range or
    /// infinite, negative and tiny scales: the vector requantization gives the
    /// scalar one's codes.
    #[test]
    fn extreme_requantization_matches_the_scalar_one() {
        let (oc, ic, h, w) = (8, 2, 3, 37);
        let x = codes(ic * h * w, 5, 0, 255);
        let k = codes(oc * ic * 9, 6, -128, 127);
        let want = reference(&x, &k, (oc, ic, 3, 3), (h, w), [(1, 1), (1, 1)]);
        let requant = Requant {
            bias: vec![i32::MAX - 100, i32::MIN + 100, 7, -3, 0, 1 << 30, 0, 12],
            scale: vec![1e-9, 3e38, -2.5e-3, 0.5, f32::MIN_POSITIVE, 1.0, -3e38, 0.0],
            zero_point: 5,
            lo: 5,
            hi: 255,
        };
        let k8: Vec<i8> = k.iter().map(|&v| v as i8).collect();
        let bytes: Vec<u8> = x.iter().map(|&v| v as u8).collect();
        for isa in Isa::all_supported() {
            let p = PackedQConv::with_isa(&k8, (oc, ic, 3, 3), requant.clone(), isa);
            let image = Source::Codes {
                codes: &bytes,
                signed: false,
                zero_point: 0,
            };
            let input = p.pack_input(&image, (h, w), [(1, 1), (1, 1)], false);
            let mut rows = vec![0; oc * input.cols];
            for y in 0..h {
                let mut scratch = RowScratch::default();
                let pairs = p.pair_rows(&input, y, &mut scratch);
                for b in 0..p.blocks() {
                    p.block_row(&pairs, b, &mut rows[b * OCT * input.cols..]);
                }
                for o in 0..oc {
                    let sums = &rows[o * input.cols..][..w];
                    let mut got = vec![0u8; w];
                    p.requant_row(o, sums, &mut got);
                    for (xx, (&sum, &got)) in sums.iter().zip(&got).enumerate() {
                        assert_eq!(sum as i64, want[(o * h + y) * w + xx]);
                        let code = requant.apply(o, sum) as u8;
                        assert_eq!(got, code, "{isa:?} {o} {y} {xx}");
                    }
                }
            }
        }
    }

    #[test]
    fn rows_match_a_plain_convolution_exactly() {
        // (oc, ic, kh, kw, h, w, pad): both layouts (1, 3, 5 and 7 channels are
        // taps; 2, 4, 9 and 32 channel pairs), odd sizes, partial channel blocks,
        // rows narrower than a tile and one tile plus a few, same and valid padding.
        let cases = [
            (32, 3, 3, 3, 9, 23, [(0, 0), (0, 0)]),
            (5, 1, 3, 3, 6, 7, [(1, 1), (1, 1)]),
            (17, 32, 3, 3, 5, 13, [(1, 1), (1, 1)]),
            (3, 2, 2, 3, 4, 3, [(0, 1), (2, 0)]),
            (16, 7, 1, 1, 3, 4, [(0, 0), (0, 0)]),
            (20, 4, 5, 5, 9, 9, [(2, 2), (2, 2)]),
            (6, 9, 3, 3, 4, 40, [(1, 1), (1, 1)]),
            (9, 5, 3, 2, 7, 19, [(0, 0), (1, 0)]),
        ];
        for (seed, &(oc, ic, kh, kw, h, w, pad)) in cases.iter().enumerate() {
            let seed = seed as u64;
            // Both activation types, extreme codes included.
            let signed = seed % 3 == 1;
            let (act, zp, lo) = if signed {
                (Act::I8, -5, -128)
            } else {
                (Act::U8, 3, 0)
            };
            // Codes, or (odd cases) floats the kernel quantizes itself, some
            // past the code range.
            let floats = seed % 2 == 1;
            let quantize = QParams {
                act,
                scale: 0.5,
                inv_scale: 2.0,
                zero_point: zp + 1,
            };
            let values: Vec<f32> = codes(ic * h * w, seed + 1, -300, 300)
                .iter()
                .map(|&v| v as f32 * 0.3)
                .collect();
            let raw: Vec<i32> = if floats {
                values
                    .iter()
                    .map(|&v| ((v * 2.0).round_ties_even() as i32 + zp + 1).clamp(lo, lo + 255))
                    .collect()
            } else {
                codes(ic * h * w, seed + 1, lo, lo + 255)
            };
            let x: Vec<i32> = raw.iter().map(|&v| v - zp).collect();
            let bytes: Vec<u8> = raw.iter().map(|&v| v as u8).collect();
            let k = codes(oc * ic * kh * kw, seed + 100, -128, 127);
            let want = reference(&x, &k, (oc, ic, kh, kw), (h, w), pad);
            let q = |scale: f32, zero_point| QParams {
                act,
                scale,
                inv_scale: scale.recip(),
                zero_point,
            };
            let wscales: Vec<f32> = (0..oc).map(|o| 0.001 * (o + 1) as f32).collect();
            let bias: Vec<f32> = (0..oc).map(|o| o as f32 * 0.37 - 2.0).collect();
            let requant = Requant::new(
                &q(0.02, zp),
                &wscales,
                Some(&bias),
                seed.is_multiple_of(2),
                &q(0.05, 7),
            );
            let k8: Vec<i8> = k.iter().map(|&v| v as i8).collect();
            let (ph, pw) = (h + pad[0].0 + pad[0].1, w + pad[1].0 + pad[1].1);
            let (oh, ow) = (ph - kh + 1, pw - kw + 1);
            for isa in Isa::all_supported() {
                let p = PackedQConv::with_isa(&k8, (oc, ic, kh, kw), requant.clone(), isa);
                assert_eq!(p.layout == Layout::Taps, ic % 2 == 1 && ic < 8);
                let image = if floats {
                    Source::Floats {
                        values: &values,
                        quantize,
                        zero_point: zp,
                    }
                } else {
                    Source::Codes {
                        codes: &bytes,
                        signed,
                        zero_point: zp,
                    }
                };
                let input = p.pack_input(&image, (h, w), pad, seed.is_multiple_of(2));
                let mut scratch = RowScratch::default();
                let mut sums = vec![i32::MIN; oc * oh * ow];
                let mut got = vec![0u8; oc * oh * ow];
                for y in 0..oh {
                    let pairs = p.pair_rows(&input, y, &mut scratch);
                    // Blocks in reverse: each row stands alone.
                    for b in (0..p.blocks()).rev() {
                        let mut rows = vec![i32::MIN; OCT * input.cols];
                        p.block_row(&pairs, b, &mut rows);
                        for (j, o) in p.block_channels(b).enumerate() {
                            let row = &rows[j * input.cols..][..ow];
                            sums[(o * oh + y) * ow..][..ow].copy_from_slice(row);
                            let codes = &mut got[(o * oh + y) * ow..][..ow];
                            p.requant_row(o, row, codes);
                        }
                    }
                }
                for (i, ((&g, &sum), &s)) in got.iter().zip(&sums).zip(&want).enumerate() {
                    let o = i / (oh * ow);
                    assert_eq!(sum as i64, s, "{isa:?} case {seed}: sum at {i}");
                    let code = requant.apply(o, s as i32) as u8;
                    assert_eq!(g, code, "{isa:?} case {seed}: code at {i}");
                }
            }
        }
    }
}
