//! The shapes of one fused convolution: padding as burn (and Keras) compute it, the
//! conv and pool geometry, and the tiles of output rows each image is processed in.

use burn::nn::PaddingConfig2d;

/// Padding `(begin, end)` of one dimension, as burn (and Keras) compute it.
fn padding_1d(
    padding: &PaddingConfig2d,
    dim: usize,
    kernel: usize,
    stride: usize,
    size: usize,
) -> (usize, usize) {
    match *padding {
        PaddingConfig2d::Valid => (0, 0),
        PaddingConfig2d::Same => {
            let out = size.div_ceil(stride);
            let total = ((out.max(1) - 1) * stride + kernel).saturating_sub(size);
            (total / 2, total - total / 2)
        }
        PaddingConfig2d::Explicit(top, left, bottom, right) => {
            if dim == 0 {
                (top, bottom)
            } else {
                (left, right)
            }
        }
    }
}

/// Shapes of one convolution: input `[batch, cin, h, w]`, kernel `[cout, cin, kh, kw]`,
/// stride, top/left padding (bottom/right padding is implied by the output size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub batch: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Geometry {
    /// `None` when the kernel does not fit the padded input or a size is zero.
    pub fn new(
        [batch, cin, h, w]: [usize; 4],
        [cout, kh, kw]: [usize; 3],
        [sh, sw]: [usize; 2],
        padding: &PaddingConfig2d,
    ) -> Option<Geometry> {
        if [batch, cin, h, w, cout, kh, kw, sh, sw].contains(&0) {
            return None;
        }
        let (pt, pb) = padding_1d(padding, 0, kh, sh, h);
        let (pl, pr) = padding_1d(padding, 1, kw, sw, w);
        if h + pt + pb < kh || w + pl + pr < kw {
            return None;
        }
        let ho = (h + pt + pb - kh) / sh + 1;
        let wo = (w + pl + pr - kw) / sw + 1;
        Some(Geometry {
            batch,
            cin,
            h,
            w,
            cout,
            kh,
            kw,
            sh,
            sw,
            pad_top: pt,
            pad_left: pl,
            ho,
            wo,
        })
    }

    /// Rows of the im2col matrix: `cin * kh * kw`.
    pub(super) fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }
    /// Output pixels per channel.
    pub(super) fn n(&self) -> usize {
        self.ho * self.wo
    }
    pub(super) fn in_len(&self) -> usize {
        self.cin * self.h * self.w
    }
    /// A 1x1, stride-1, unpadded conv: the input planes are the im2col matrix.
    pub(super) fn pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.sh == 1
            && self.sw == 1
            && self.pad_top == 0
            && self.pad_left == 0
    }
    /// Output rows per tile: about `TILE_ELEMS` im2col values, at least one row.
    fn tile_rows(&self) -> usize {
        let te = std::env::var("FENNEC_TILE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(TILE_ELEMS);
        (te / (self.k() * self.wo).max(1)).clamp(1, self.ho)
    }
}

/// A max-pool whose stride equals its kernel (windows do not overlap) on a conv's
/// output map `[.., h, w]`; padding positions never win.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub kh: usize,
    pub kw: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Pool {
    /// `None` when a window would hold padding only, or has more than 256 positions.
    pub fn new(
        [h, w]: [usize; 2],
        [kh, kw]: [usize; 2],
        padding: &PaddingConfig2d,
    ) -> Option<Pool> {
        if kh == 0 || kw == 0 || kh * kw > 256 {
            return None;
        }
        let (pt, pb) = padding_1d(padding, 0, kh, kh, h);
        let (pl, pr) = padding_1d(padding, 1, kw, kw, w);
        if pt >= kh || pl >= kw || h + pt + pb < kh || w + pl + pr < kw {
            return None;
        }
        let ho = (h + pt + pb - kh) / kh + 1;
        let wo = (w + pl + pr - kw) / kw + 1;
        // The last window must reach into the map.
        if (ho - 1) * kh >= h + pt || (wo - 1) * kw >= w + pl {
            return None;
        }
        Some(Pool {
            kh,
            kw,
            pad_top: pt,
            pad_left: pl,
            ho,
            wo,
        })
    }
}

/// The fused operation: conv, then optionally ReLU, then optionally a max-pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    pub g: Geometry,
    pub pool: Option<Pool>,
    pub relu: bool,
}

/// Rows of one tile: conv output rows `cy0..cy1` and, with a pool, the pooled rows
/// `py0..py1` whose windows they hold.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tile {
    pub cy0: usize,
    pub cy1: usize,
    pub py0: usize,
    pub py1: usize,
}

impl Tile {
    pub(super) fn nt(&self, g: &Geometry) -> usize {
        (self.cy1 - self.cy0) * g.wo
    }
}

impl Op {
    /// `[batch, channels, height, width]` of the result.
    pub(super) fn out_shape(&self) -> [usize; 4] {
        let (h, w) = self.out_hw();
        [self.g.batch, self.g.cout, h, w]
    }
    fn out_hw(&self) -> (usize, usize) {
        match self.pool {
            Some(p) => (p.ho, p.wo),
            None => (self.g.ho, self.g.wo),
        }
    }
    /// Values of the result per image.
    pub(super) fn out_len(&self) -> usize {
        let (h, w) = self.out_hw();
        self.g.cout * h * w
    }
    pub(super) fn tiles(&self) -> Vec<Tile> {
        let g = &self.g;
        let rows = g.tile_rows();
        match self.pool {
            None => (0..g.ho)
                .step_by(rows)
                .map(|y0| {
                    let y1 = (y0 + rows).min(g.ho);
                    Tile {
                        cy0: y0,
                        cy1: y1,
                        py0: y0,
                        py1: y1,
                    }
                })
                .collect(),
            Some(p) => {
                let prows = (rows / p.kh).max(1);
                (0..p.ho)
                    .step_by(prows)
                    .map(|py0| {
                        let py1 = (py0 + prows).min(p.ho);
                        let cy0 = (py0 * p.kh).saturating_sub(p.pad_top);
                        let cy1 = (py1 * p.kh - p.pad_top).min(g.ho);
                        Tile { cy0, cy1, py0, py1 }
                    })
                    .collect()
            }
        }
    }
}

/// Target size of one im2col tile (f32 values): small enough to stay in L2.
const TILE_ELEMS: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_follows_keras_same_and_valid() {
        let g =
            Geometry::new([1, 1, 109, 109], [1, 3, 3], [1, 1], &PaddingConfig2d::Valid).unwrap();
        assert_eq!((g.ho, g.wo), (107, 107));
        let g = Geometry::new([1, 1, 5, 5], [1, 3, 3], [1, 1], &PaddingConfig2d::Same).unwrap();
        assert_eq!((g.ho, g.wo, g.pad_top, g.pad_left), (5, 5, 1, 1));
        assert!(Geometry::new([1, 1, 2, 2], [1, 3, 3], [1, 1], &PaddingConfig2d::Valid).is_none());
        let p = Pool::new([109, 110], [2, 2], &PaddingConfig2d::Same).unwrap();
        assert_eq!((p.ho, p.wo, p.pad_top, p.pad_left), (55, 55, 0, 0));
        let p = Pool::new([5, 5], [4, 4], &PaddingConfig2d::Same).unwrap();
        assert_eq!((p.ho, p.pad_top), (2, 1));
        assert!(Pool::new([5, 5], [2, 2], &PaddingConfig2d::Explicit(0, 0, 3, 0)).is_none());
    }
}
