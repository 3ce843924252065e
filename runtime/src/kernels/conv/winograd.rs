//! 3x3 stride-1 convolutions with Winograd's F(2x2, 3x3): 16 multiplies per 2x2
//! output tile and input/output channel pair instead of 36, 2.25x fewer than the
//! direct kernels, for layers with enough input channels to pay for the
//! transforms (model_3's second convolution: 32 -> 32 channels on 111x111).
//! Opt-in (`FENNEC_CONV=winograd`) until it beats the direct kernels: see `mod.rs`.
//!
//! Per image and tile row (two output rows):
//!
//! 1. the input transform `V = Bᵀ d B` of every 4x4 input tile, for every input
//!    channel, eight or more tiles at a time from an image whose rows were split
//!    into even and odd columns first (so that a tile's four columns are four
//!    contiguous loads);
//! 2. 16 matrix products `M[p] = U[p] V[p]` (`U = G g Gᵀ`, the transformed
//!    weights, made once when the plan is made), one per tile position `p`, on
//!    a register-blocked kernel per instruction set (`gemm_*` below);
//! 3. the output transform `Y = Aᵀ M A`, bias and ReLU, and the 2x2 max pool
//!    when one follows: the pool's windows are exactly the 2x2 tiles, so a pooled
//!    value is the max of a tile and the full-size output never exists.
//!
//! The transforms only add and subtract (and halve, in `G`), so results differ
//! from a direct convolution by float rounding only; the unit tests and the
//! rewrite tests check them against a direct sum and against tract.

use super::packed::OCB;
use crate::kernels::simd::{Isa, isa, simd_fn};

/// Input channels from which Winograd beats the direct kernels: with fewer, the
/// products are too short to amortise the transforms (model_3's first
/// convolution, 3 input channels, stays direct).
pub const MIN_INPUT_CHANNELS: usize = 8;

/// The transformed weights and the rest of what a layer needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Winograd {
    pub oc: usize,
    pub ic: usize,
    pub relu: bool,
    /// `U`, `[16][oc blocks][ic][OCB]`, zero past `oc`.
    u: Vec<f32>,
    bias: Vec<f32>,
    isa: Isa,
}

/// Geometry of one image: the padded input `(ih, iw)`, its zero padding
/// (`top`, `left`), the convolution output `(oh, ow)` and the tile grid.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    /// The unpadded input.
    pub ih: usize,
    pub iw: usize,
    pub top: usize,
    pub left: usize,
    /// The convolution's output.
    pub oh: usize,
    pub ow: usize,
}

impl Geometry {
    /// Tile rows and columns.
    fn tiles(&self) -> (usize, usize) {
        (self.oh.div_ceil(2), self.ow.div_ceil(2))
    }
}

impl Winograd {
    /// `kernel` in OIHW order (`oc * ic * 9` values), `bias` of `oc` values.
    pub fn new(kernel: &[f32], bias: &[f32], oc: usize, ic: usize, relu: bool) -> Winograd {
        Self::with_isa(kernel, bias, oc, ic, relu, isa())
    }

    /// As [`Winograd::new`] with a given kernel set; one the CPU does not run
    /// falls back to [`Isa::Portable`].
    pub fn with_isa(
        kernel: &[f32],
        bias: &[f32],
        oc: usize,
        ic: usize,
        relu: bool,
        isa: Isa,
    ) -> Winograd {
        assert_eq!(kernel.len(), oc * ic * 9, "kernel length");
        assert_eq!(bias.len(), oc, "bias length");
        let blocks = oc.div_ceil(OCB);
        let mut u = vec![0.0; 16 * blocks * ic * OCB];
        for o in 0..oc {
            for i in 0..ic {
                let g: &[f32; 9] = kernel[(o * ic + i) * 9..][..9].try_into().unwrap();
                for (p, value) in transform_kernel(g).into_iter().enumerate() {
                    u[((p * blocks + o / OCB) * ic + i) * OCB + o % OCB] = value;
                }
            }
        }
        Winograd {
            oc,
            ic,
            relu,
            u,
            bias: bias.to_vec(),
            isa: if isa.supported() { isa } else { Isa::Portable },
        }
    }

    fn blocks(&self) -> usize {
        self.oc.div_ceil(OCB)
    }

    /// Tiles per product kernel call, and the tile row length rounded up to it.
    fn tile_width(&self) -> usize {
        match self.isa {
            Isa::Avx512 => 32,
            _ => 16,
        }
    }

    /// One image (`[ic][ih][iw]`, unpadded) made ready for [`Winograd::run`]:
    /// padded, its rows split into even and odd columns. Made once per image and
    /// shared by the threads.
    pub fn split(&self, image: &[f32], g: Geometry) -> SplitImage {
        assert_eq!(image.len(), self.ic * g.ih * g.iw, "input length");
        let (th, tw) = g.tiles();
        SplitImage::new(
            image,
            self.ic,
            g,
            th,
            tw.next_multiple_of(self.tile_width()),
        )
    }

    /// Output channel blocks `blocks` of one image (from [`Winograd::split`]) into
    /// `out`, their channel planes: the convolution output `[oh][ow]` per channel,
    /// or with `pool` (a 2x2 max pool of `(out_h, out_w)`) the pooled one.
    pub fn run(
        &self,
        split: &SplitImage,
        pool: Option<(usize, usize)>,
        blocks: std::ops::Range<usize>,
        out: &mut [f32],
    ) {
        let (g, twp) = (split.geometry, split.twp);
        let (th, _) = g.tiles();
        let first = blocks.start * OCB;
        let channels = first..(blocks.end * OCB).min(self.oc);
        let (plane_h, plane_w) = pool.unwrap_or((g.oh, g.ow));
        assert!(
            out.len() >= channels.len() * plane_h * plane_w,
            "output too short"
        );
        let mut v = vec![0.0f32; 16 * self.ic * twp];
        let mut m = vec![0.0f32; 16 * blocks.len() * OCB * twp];
        let mut y = vec![0.0f32; 4 * twp];
        let tile_rows = pool.map_or(th, |(ph, _)| ph.min(th));
        for ty in 0..tile_rows {
            for i in 0..self.ic {
                let rows: [&[f32]; 4] = std::array::from_fn(|r| split.row(i, 2 * ty + r));
                input_transform(rows, split.half, twp, &mut v[i * twp..], self.ic * twp);
            }
            self.products(&v, twp, blocks.clone(), &mut m);
            let m_stride = blocks.len() * OCB * twp;
            for (k, o) in channels.clone().enumerate() {
                let tiles: [&[f32]; 16] =
                    std::array::from_fn(|p| &m[p * m_stride + k * twp..][..twp]);
                let plane = &mut out[k * plane_h * plane_w..][..plane_h * plane_w];
                output_transform(tiles, self.bias[o], self.relu, twp, &mut y);
                match pool {
                    Some((ph, pw)) => write_pooled(&y, twp, g, ty, ph, pw, plane),
                    None => write_tiles(&y, twp, g, ty, plane),
                }
            }
        }
    }

    /// `M[p] = U[p] V[p]` for every tile position `p` and channel block, into
    /// `m` (`[16][channel][twp]`, the blocks' channels from 0).
    fn products(&self, v: &[f32], twp: usize, blocks: std::ops::Range<usize>, m: &mut [f32]) {
        let (ic, step) = (self.ic, self.tile_width());
        let m_stride = blocks.len() * OCB * twp;
        for p in 0..16 {
            let v = &v[p * ic * twp..][..ic * twp];
            for (k, b) in blocks.clone().enumerate() {
                let u = &self.u[(p * self.blocks() + b) * ic * OCB..][..ic * OCB];
                let m = &mut m[p * m_stride + k * OCB * twp..][..OCB * twp];
                for x in (0..twp).step_by(step) {
                    self.product_tile(u, &v[x..], twp, &mut m[x..], twp);
                }
            }
        }
    }

    /// `OCB` channels x one tile width of `m` from `u` (`[ic][OCB]`) and `v`
    /// (`[ic][v_stride]`).
    fn product_tile(&self, u: &[f32], v: &[f32], v_stride: usize, m: &mut [f32], m_stride: usize) {
        let ic = self.ic;
        assert!(u.len() >= ic * OCB && v.len() >= (ic - 1) * v_stride + self.tile_width());
        assert!(m.len() >= (OCB - 1) * m_stride + self.tile_width());
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `with_isa` only stores these levels when the CPU has the
            // features the functions are compiled for; the asserts above keep
            // every load and store inside the slices.
            Isa::Avx512 => unsafe { x86::product_avx512(u, v, v_stride, ic, m, m_stride) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => unsafe { x86::product_avx2(u, v, v_stride, ic, m, m_stride) },
            _ => product_portable(u, v, v_stride, ic, m, m_stride),
        }
    }
}

/// `G g Gᵀ` of one 3x3 kernel, the 16 values in row-major order.
fn transform_kernel(g: &[f32; 9]) -> [f32; 16] {
    // G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]].
    let col = |a: f32, b: f32, c: f32| [a, (a + b + c) * 0.5, (a - b + c) * 0.5, c];
    // Columns first (G g), then rows ((G g) Gᵀ).
    let gg: [[f32; 4]; 3] = std::array::from_fn(|c| col(g[c], g[3 + c], g[6 + c]));
    let mut u = [0.0; 16];
    for r in 0..4 {
        let row = col(gg[0][r], gg[1][r], gg[2][r]);
        u[r * 4..r * 4 + 4].copy_from_slice(&row);
    }
    u
}

/// The padded image with every row split into its even and odd columns, each
/// half `half` long and zero past the image: tile `x`'s columns `2x .. 2x + 3`
/// are `even[x], odd[x], even[x + 1], odd[x + 1]`, four contiguous runs for a
/// row of tiles.
pub struct SplitImage {
    data: Vec<f32>,
    rows: usize,
    half: usize,
    geometry: Geometry,
    /// Tiles per row, rounded up to the product kernel's width.
    twp: usize,
}

impl SplitImage {
    fn new(image: &[f32], ic: usize, g: Geometry, th: usize, twp: usize) -> SplitImage {
        let rows = 2 * th + 2;
        let half = twp + 1;
        let mut data = vec![0.0; ic * rows * 2 * half];
        for (c, channel) in image.chunks_exact(g.ih * g.iw).enumerate() {
            for (y, line) in channel.chunks_exact(g.iw).enumerate() {
                let row = &mut data[(c * rows + y + g.top) * 2 * half..][..2 * half];
                let (even, odd) = row.split_at_mut(half);
                for (x, &value) in line.iter().enumerate() {
                    let col = x + g.left;
                    if col % 2 == 0 {
                        even[col / 2] = value;
                    } else {
                        odd[col / 2] = value;
                    }
                }
            }
        }
        SplitImage {
            data,
            rows,
            half,
            geometry: g,
            twp,
        }
    }

    /// Row `y` of channel `c`: `half` even columns, then `half` odd ones.
    fn row(&self, c: usize, y: usize) -> &[f32] {
        &self.data[(c * self.rows + y) * 2 * self.half..][..2 * self.half]
    }
}

simd_fn! {
    /// `Bᵀ d B` of the `twp` tiles of one tile row and input channel, from its
    /// four input rows (each `half` even columns, then `half` odd ones); tile
    /// position `p`'s values go to `v[p * p_stride..][..twp]`.
    fn input_transform(rows: [&[f32]; 4], half: usize, twp: usize, v: &mut [f32], p_stride: usize) {
        // Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], on the
        // columns of each row, then on the rows. Every slice is cut to `twp`
        // first so that the loop has no bounds checks and vectorises.
        let d: [[&[f32]; 4]; 4] = std::array::from_fn(|r| {
            let (even, odd) = rows[r].split_at(half);
            [&even[..twp], &odd[..twp], &even[1..twp + 1], &odd[1..twp + 1]]
        });
        let mut outs = v.chunks_mut(p_stride).map(|c| &mut c[..twp]);
        let o: [&mut [f32]; 16] = std::array::from_fn(|_| outs.next().unwrap());
        #[allow(clippy::needless_range_loop)] // indexes several slices at once
        for x in 0..twp {
            let t: [[f32; 4]; 4] = std::array::from_fn(|r| {
                let d = [d[r][0][x], d[r][1][x], d[r][2][x], d[r][3][x]];
                [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]
            });
            for c in 0..4 {
                o[c][x] = t[0][c] - t[2][c];
                o[4 + c][x] = t[1][c] + t[2][c];
                o[8 + c][x] = t[2][c] - t[1][c];
                o[12 + c][x] = t[1][c] - t[3][c];
            }
        }
    }
}

simd_fn! {
    /// `Aᵀ M A` + bias (+ ReLU) of one channel's `twp` tiles into `y`: four runs
    /// of `twp`, the tiles' top-left, top-right, bottom-left and bottom-right
    /// outputs.
    fn output_transform(m: [&[f32]; 16], bias: f32, relu: bool, twp: usize, y: &mut [f32]) {
        // Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]], on the columns, then the rows.
        let m: [&[f32]; 16] = m.map(|s| &s[..twp]);
        let (top, bottom) = y[..4 * twp].split_at_mut(2 * twp);
        let (y00, y01) = top.split_at_mut(twp);
        let (y10, y11) = bottom.split_at_mut(twp);
        #[allow(clippy::needless_range_loop)] // indexes several slices at once
        for x in 0..twp {
            let s: [[f32; 2]; 4] = std::array::from_fn(|r| {
                let (a, b, c, d) = (m[r * 4][x], m[r * 4 + 1][x], m[r * 4 + 2][x], m[r * 4 + 3][x]);
                [a + b + c, b - c - d]
            });
            let out = [
                s[0][0] + s[1][0] + s[2][0],
                s[0][1] + s[1][1] + s[2][1],
                s[1][0] - s[2][0] - s[3][0],
                s[1][1] - s[2][1] - s[3][1],
            ]
            .map(|v| {
                let v = v + bias;
                if relu { v.max(0.0) } else { v }
            });
            y00[x] = out[0];
            y01[x] = out[1];
            y10[x] = out[2];
            y11[x] = out[3];
        }
    }
}

/// Tile row `ty`'s outputs (`y` from [`output_transform`]) into a `[oh][ow]`
/// plane (the last tile row and column may stick out of it).
fn write_tiles(y: &[f32], twp: usize, g: Geometry, ty: usize, plane: &mut [f32]) {
    for (dy, row) in (2 * ty..(2 * ty + 2).min(g.oh)).enumerate() {
        let line = &mut plane[row * g.ow..][..g.ow];
        for (x, value) in line.iter_mut().enumerate() {
            *value = y[(dy * 2 + x % 2) * twp + x / 2];
        }
    }
}

simd_fn! {
    /// The 2x2 max pool of tile row `ty` (`y` from [`output_transform`]) into row
    /// `ty` of a `[ph][pw]` plane: each pooled value is the max of one tile's
    /// outputs that lie inside the convolution output.
    fn write_pooled(y: &[f32], twp: usize, g: Geometry, ty: usize, ph: usize, pw: usize, plane: &mut [f32]) {
        if ty >= ph {
            return;
        }
        let line = &mut plane[ty * pw..][..pw];
        let [y00, y01, y10, y11]: [&[f32]; 4] = std::array::from_fn(|q| &y[q * twp..][..pw]);
        let both_rows = 2 * ty + 1 < g.oh;
        // Every tile but maybe the last has both its columns inside.
        let whole = if 2 * pw <= g.ow { pw } else { pw - 1 };
        #[allow(clippy::needless_range_loop)] // indexes several slices at once
        for x in 0..whole {
            let top = y00[x].max(y01[x]);
            line[x] = if both_rows { top.max(y10[x].max(y11[x])) } else { top };
        }
        #[allow(clippy::needless_range_loop)] // indexes several slices at once
        for x in whole..pw {
            line[x] = if both_rows { y00[x].max(y10[x]) } else { y00[x] };
        }
    }
}

/// The product kernel in plain Rust (NEON on aarch64, the baseline elsewhere):
/// `OCB` channels x 16 tiles.
fn product_portable(
    u: &[f32],
    v: &[f32],
    v_stride: usize,
    ic: usize,
    m: &mut [f32],
    m_stride: usize,
) {
    const W: usize = 16;
    let mut acc = [[0.0f32; W]; OCB];
    for i in 0..ic {
        let vs: &[f32; W] = v[i * v_stride..][..W].try_into().unwrap();
        let us: &[f32; OCB] = u[i * OCB..][..OCB].try_into().unwrap();
        for (row, &w) in acc.iter_mut().zip(us) {
            for (a, &x) in row.iter_mut().zip(vs) {
                *a += w * x;
            }
        }
    }
    for (o, row) in acc.iter().enumerate() {
        m[o * m_stride..][..W].copy_from_slice(row);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::OCB;

    /// `OCB` channels x 16 tiles (two registers each: 8 accumulators).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn product_avx2(
        u: &[f32],
        v: &[f32],
        v_stride: usize,
        ic: usize,
        m: &mut [f32],
        m_stride: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; OCB];
        for i in 0..ic {
            let vs = &v[i * v_stride..][..16];
            // SAFETY: `vs` holds the 16 values the two unaligned loads read.
            let x = unsafe {
                [
                    _mm256_loadu_ps(vs.as_ptr()),
                    _mm256_loadu_ps(vs.as_ptr().add(8)),
                ]
            };
            for (row, &w) in acc.iter_mut().zip(&u[i * OCB..][..OCB]) {
                let w = _mm256_set1_ps(w);
                for (a, &x) in row.iter_mut().zip(&x) {
                    *a = _mm256_fmadd_ps(x, w, *a);
                }
            }
        }
        for (o, row) in acc.iter().enumerate() {
            let dst = &mut m[o * m_stride..][..16];
            // SAFETY: `dst` has room for the 16 values the two stores write.
            unsafe {
                _mm256_storeu_ps(dst.as_mut_ptr(), row[0]);
                _mm256_storeu_ps(dst.as_mut_ptr().add(8), row[1]);
            }
        }
    }

    /// `OCB` channels x 32 tiles (two registers each: 8 accumulators).
    #[target_feature(enable = "avx512f")]
    pub(super) fn product_avx512(
        u: &[f32],
        v: &[f32],
        v_stride: usize,
        ic: usize,
        m: &mut [f32],
        m_stride: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; OCB];
        for i in 0..ic {
            let vs = &v[i * v_stride..][..32];
            // SAFETY: `vs` holds the 32 values the two unaligned loads read.
            let x = unsafe {
                [
                    _mm512_loadu_ps(vs.as_ptr()),
                    _mm512_loadu_ps(vs.as_ptr().add(16)),
                ]
            };
            for (row, &w) in acc.iter_mut().zip(&u[i * OCB..][..OCB]) {
                let w = _mm512_set1_ps(w);
                for (a, &x) in row.iter_mut().zip(&x) {
                    *a = _mm512_fmadd_ps(x, w, *a);
                }
            }
        }
        for (o, row) in acc.iter().enumerate() {
            let dst = &mut m[o * m_stride..][..32];
            // SAFETY: `dst` has room for the 32 values the two stores write.
            unsafe {
                _mm512_storeu_ps(dst.as_mut_ptr(), row[0]);
                _mm512_storeu_ps(dst.as_mut_ptr().add(16), row[1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::rnd;

    /// Direct convolution in f64, `[oc][oh][ow]` with zero padding `(top, bottom,
    /// left, right)`, bias and optional ReLU.
    fn direct(
        image: &[f32],
        k: &[f32],
        bias: &[f32],
        (oc, ic, ih, iw): (usize, usize, usize, usize),
        (top, bottom, left, right): (usize, usize, usize, usize),
        relu: bool,
    ) -> (Vec<f32>, usize, usize) {
        let (oh, ow) = (ih + top + bottom - 2, iw + left + right - 2);
        let at = |c: usize, y: usize, x: usize| -> f64 {
            let (y, x) = (y as isize - top as isize, x as isize - left as isize);
            if y < 0 || x < 0 || y >= ih as isize || x >= iw as isize {
                0.0
            } else {
                image[(c * ih + y as usize) * iw + x as usize] as f64
            }
        };
        let mut out = vec![0.0; oc * oh * ow];
        for o in 0..oc {
            for y in 0..oh {
                for x in 0..ow {
                    let mut s = bias[o] as f64;
                    for i in 0..ic {
                        for d in 0..9 {
                            s += at(i, y + d / 3, x + d % 3) * k[(o * ic + i) * 9 + d] as f64;
                        }
                    }
                    let s = s as f32;
                    out[(o * oh + y) * ow + x] = if relu { s.max(0.0) } else { s };
                }
            }
        }
        (out, oh, ow)
    }

    fn pooled(conv: &[f32], oc: usize, oh: usize, ow: usize) -> Vec<f32> {
        let (ph, pw) = (oh.div_ceil(2), ow.div_ceil(2));
        let mut out = vec![f32::NEG_INFINITY; oc * ph * pw];
        for o in 0..oc {
            for y in 0..oh {
                for x in 0..ow {
                    let p = &mut out[(o * ph + y / 2) * pw + x / 2];
                    *p = p.max(conv[(o * oh + y) * ow + x]);
                }
            }
        }
        out
    }

    #[test]
    fn kernel_transform_of_a_unit_tap() {
        // The centre tap alone: G e Gᵀ is the outer product of G's middle column.
        let mut g = [0.0; 9];
        g[4] = 1.0;
        let col = [0.0, 0.5, -0.5, 0.0];
        let want: Vec<f32> = (0..16).map(|p| col[p / 4] * col[p % 4]).collect();
        assert_eq!(transform_kernel(&g).to_vec(), want);
    }

    #[test]
    fn matches_a_direct_convolution_on_awkward_shapes() {
        // Odd and even sizes, padding same and valid, partial channel blocks,
        // with and without ReLU and the fused pool, split into two block ranges.
        let cases = [
            (32, 32, 13, 13, (0, 0, 0, 0), true),
            (6, 8, 10, 21, (1, 1, 1, 1), false),
            (5, 9, 7, 40, (0, 1, 1, 0), true),
            (8, 1, 5, 5, (1, 1, 1, 1), true),
            (4, 3, 3, 3, (0, 0, 0, 0), false),
        ];
        for (seed, &(oc, ic, ih, iw, pad, relu)) in cases.iter().enumerate() {
            let seed = seed as u64 * 10;
            let image = rnd(ic * ih * iw, seed + 1);
            let k = rnd(oc * ic * 9, seed + 2);
            let bias = rnd(oc, seed + 3);
            let (want, oh, ow) = direct(&image, &k, &bias, (oc, ic, ih, iw), pad, relu);
            let want_pooled = pooled(&want, oc, oh, ow);
            let g = Geometry {
                ih,
                iw,
                top: pad.0,
                left: pad.2,
                oh,
                ow,
            };
            for isa in Isa::all_supported() {
                let w = Winograd::with_isa(&k, &bias, oc, ic, relu, isa);
                assert_eq!(w.isa, isa);
                let blocks = w.blocks();
                let mid = blocks / 2;
                for (pool, want, plane) in [
                    (None, &want, oh * ow),
                    (
                        Some((oh.div_ceil(2), ow.div_ceil(2))),
                        &want_pooled,
                        want_pooled.len() / oc,
                    ),
                ] {
                    let mut got = vec![f32::NAN; oc * plane];
                    let (a, b) = got.split_at_mut((mid * OCB).min(oc) * plane);
                    let split = w.split(&image, g);
                    w.run(&split, pool, 0..mid, a);
                    w.run(&split, pool, mid..blocks, b);
                    for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
                        assert!(
                            (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                            "{isa:?} case {seed} pool {pool:?} at {i}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
