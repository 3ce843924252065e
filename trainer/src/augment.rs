//! On-the-fly augmentation of training images, with Keras `ImageDataGenerator`
//! semantics, so a config ported from the tutorial means the same thing here.
//!
//! Per image, from its seed: a rotation angle in `[-rotation, rotation]` degrees, a
//! vertical and a horizontal shift in `[-shift, shift]` x the image size, two zoom
//! factors (rows and columns, independently, as Keras) in `[1 - zoom, 1 + zoom]`, a
//! horizontal flip with probability 1/2, and a brightness factor in `[min, max]`.
//!
//! The geometric operations are composed into one affine map about the image centre
//! (Keras' `rotation · shift · zoom`, then the flip) and the image is resampled once,
//! bilinearly, with `fill_mode='nearest'` (coordinates outside the image clamp to its
//! edge). Brightness then multiplies every byte, truncating and clamping to 0..=255
//! like Pillow's `ImageEnhance.Brightness`, which Keras uses.
//!
//! The same seed always gives the same image: the RNG is Xoshiro256++, a named
//! algorithm whose output does not change between platforms or `rand` releases.

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use crate::config::Augmentation;

/// Draws and applies random transforms for one [`Augmentation`] config.
#[derive(Debug, Clone, PartialEq)]
pub struct Augmenter {
    spec: Augmentation,
}

/// One drawn transform (what [`Augmenter::draw`] picked for a seed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transform {
    /// Rotation in degrees (positive turns the picture clockwise).
    pub rotation: f32,
    /// Vertical shift in pixels (positive moves the picture up).
    pub shift_rows: f32,
    /// Horizontal shift in pixels (positive moves the picture left).
    pub shift_cols: f32,
    /// Sampling-grid scale along rows (> 1 zooms out, < 1 zooms in), as Keras' `zx`.
    pub zoom_rows: f32,
    /// Sampling-grid scale along columns, as Keras' `zy`.
    pub zoom_cols: f32,
    pub flip: bool,
    /// Multiplier of every byte; 1 leaves the image unchanged.
    pub brightness: f32,
}

impl Transform {
    /// The transform that changes nothing.
    pub const IDENTITY: Transform = Transform {
        rotation: 0.0,
        shift_rows: 0.0,
        shift_cols: 0.0,
        zoom_rows: 1.0,
        zoom_cols: 1.0,
        flip: false,
        brightness: 1.0,
    };

    fn is_geometric(&self) -> bool {
        self.rotation != 0.0
            || self.shift_rows != 0.0
            || self.shift_cols != 0.0
            || self.zoom_rows != 1.0
            || self.zoom_cols != 1.0
    }

    /// Applies the transform in place to `height x width` interleaved pixels of
    /// `channels` bytes each.
    ///
    /// # Panics
    /// When `pixels.len() != height * width * channels`.
    pub fn apply(&self, pixels: &mut [u8], height: usize, width: usize, channels: usize) {
        assert_eq!(
            pixels.len(),
            height * width * channels,
            "pixel buffer does not match {height}x{width}x{channels}"
        );
        if pixels.is_empty() {
            return;
        }
        if self.is_geometric() {
            self.resample(pixels, height, width, channels);
        } else if self.flip {
            for row in pixels.chunks_exact_mut(width * channels) {
                flip_row(row, channels);
            }
        }
        if self.brightness != 1.0 {
            let table: [u8; 256] =
                std::array::from_fn(|v| (v as f32 * self.brightness).clamp(0.0, 255.0) as u8);
            for p in pixels.iter_mut() {
                *p = table[*p as usize];
            }
        }
    }

    /// One bilinear pass through the composed affine map.
    ///
    /// For an output pixel `(r, c)` with `p = (r, c) - centre` (centre at
    /// `((h - 1) / 2, (w - 1) / 2)`, as Keras' `transform_matrix_offset_center`), the
    /// source position is `centre + R (Z F p + t)`: F the flip, Z the zoom, t the
    /// shift, R the rotation. Affine, so it is stepped along a row by addition.
    fn resample(&self, pixels: &mut [u8], height: usize, width: usize, channels: usize) {
        let src = pixels.to_vec();
        let (sin, cos) = (self.rotation as f64).to_radians().sin_cos();
        let (zr, zc) = (
            self.zoom_rows as f64,
            self.zoom_cols as f64 * if self.flip { -1.0 } else { 1.0 },
        );
        // A = R · diag(zr, zc); offset = centre + R t - A centre.
        let a = [[cos * zr, -sin * zc], [sin * zr, cos * zc]];
        let (cr, cc) = ((height as f64 - 1.0) / 2.0, (width as f64 - 1.0) / 2.0);
        let (tr, tc) = (self.shift_rows as f64, self.shift_cols as f64);
        let off_r = cr + cos * tr - sin * tc - (a[0][0] * cr + a[0][1] * cc);
        let off_c = cc + sin * tr + cos * tc - (a[1][0] * cr + a[1][1] * cc);
        let (max_r, max_c) = ((height - 1) as f32, (width - 1) as f32);
        let stride = width * channels;
        for (r, out_row) in pixels.chunks_exact_mut(stride).enumerate() {
            let r = r as f64;
            for (c, out) in out_row.chunks_exact_mut(channels).enumerate() {
                let c = c as f64;
                let y = ((a[0][0] * r + a[0][1] * c + off_r) as f32).clamp(0.0, max_r);
                let x = ((a[1][0] * r + a[1][1] * c + off_c) as f32).clamp(0.0, max_c);
                let (y0, x0) = (y as usize, x as usize);
                let (fy, fx) = (y - y0 as f32, x - x0 as f32);
                let y1 = if fy > 0.0 { y0 + 1 } else { y0 };
                let x1 = if fx > 0.0 { x0 + 1 } else { x0 };
                let (i00, i01) = (y0 * stride + x0 * channels, y0 * stride + x1 * channels);
                let (i10, i11) = (y1 * stride + x0 * channels, y1 * stride + x1 * channels);
                for (k, o) in out.iter_mut().enumerate() {
                    let top =
                        src[i00 + k] as f32 + fx * (src[i01 + k] as f32 - src[i00 + k] as f32);
                    let bottom =
                        src[i10 + k] as f32 + fx * (src[i11 + k] as f32 - src[i10 + k] as f32);
                    *o = (top + fy * (bottom - top) + 0.5) as u8;
                }
            }
        }
    }
}

fn flip_row(row: &mut [u8], channels: usize) {
    if channels == 1 {
        row.reverse();
        return;
    }
    let n = row.len() / channels;
    for i in 0..n / 2 {
        let (left, right) = row.split_at_mut((n - 1 - i) * channels);
        left[i * channels..(i + 1) * channels].swap_with_slice(&mut right[..channels]);
    }
}

impl Augmenter {
    pub fn new(spec: &Augmentation) -> Augmenter {
        Augmenter { spec: spec.clone() }
    }

    /// True when every option is off: [`Augmenter::apply`] then changes nothing.
    pub fn is_identity(&self) -> bool {
        let s = &self.spec;
        !s.horizontal_flip
            && s.rotation == 0.0
            && s.zoom == 0.0
            && s.width_shift == 0.0
            && s.height_shift == 0.0
            && s.brightness.is_none_or(|[lo, hi]| lo == 1.0 && hi == 1.0)
    }

    /// The transform for `seed` on a `height x width` image. Always draws the same
    /// seven numbers in the same order, so switching one option on or off does not
    /// change what the others draw.
    pub fn draw(&self, seed: u64, height: usize, width: usize) -> Transform {
        let s = &self.spec;
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut uniform = |lo: f32, hi: f32| lo + (hi - lo) * rng.random::<f32>();
        let rotation = uniform(-s.rotation, s.rotation);
        let shift_rows = uniform(-s.height_shift, s.height_shift) * height as f32;
        let shift_cols = uniform(-s.width_shift, s.width_shift) * width as f32;
        let zoom_rows = uniform(1.0 - s.zoom, 1.0 + s.zoom);
        let zoom_cols = uniform(1.0 - s.zoom, 1.0 + s.zoom);
        let flip = uniform(0.0, 1.0) < 0.5 && s.horizontal_flip;
        let [lo, hi] = s.brightness.unwrap_or([1.0, 1.0]);
        let brightness = uniform(lo, hi);
        Transform {
            rotation,
            shift_rows,
            shift_cols,
            zoom_rows,
            zoom_cols,
            flip,
            brightness,
        }
    }

    /// In place on HxWxC interleaved u8 pixels; the same seed gives the same result.
    ///
    /// # Panics
    /// When `pixels.len() != height * width * channels`.
    pub fn apply(
        &self,
        pixels: &mut [u8],
        height: usize,
        width: usize,
        channels: usize,
        seed: u64,
    ) {
        assert_eq!(
            pixels.len(),
            height * width * channels,
            "pixel buffer does not match {height}x{width}x{channels}"
        );
        if self.is_identity() {
            return;
        }
        self.draw(seed, height, width)
            .apply(pixels, height, width, channels);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `h x w x c` image whose every byte is distinct-ish and position-dependent.
    fn ramp(h: usize, w: usize, c: usize) -> Vec<u8> {
        (0..h * w * c)
            .map(|i| ((i * 37 + i / c * 11) % 251) as u8)
            .collect()
    }

    fn px(img: &[u8], w: usize, c: usize, r: usize, col: usize) -> &[u8] {
        &img[(r * w + col) * c..(r * w + col + 1) * c]
    }

    fn spec() -> Augmentation {
        Augmentation::default()
    }

    #[test]
    fn identity_when_off() {
        let a = Augmenter::new(&spec());
        assert!(a.is_identity());
        let orig = ramp(7, 5, 3);
        for seed in 0..5 {
            let mut img = orig.clone();
            a.apply(&mut img, 7, 5, 3, seed);
            assert_eq!(img, orig);
        }
        let unit_brightness = Augmentation {
            brightness: Some([1.0, 1.0]),
            ..spec()
        };
        assert!(Augmenter::new(&unit_brightness).is_identity());
        assert!(
            !Augmenter::new(&Augmentation {
                zoom: 0.1,
                ..spec()
            })
            .is_identity()
        );
    }

    #[test]
    fn flip_is_exact_and_about_half_the_time() {
        let a = Augmenter::new(&Augmentation {
            horizontal_flip: true,
            ..spec()
        });
        let (h, w) = (4, 5);
        for c in [1, 3] {
            let orig = ramp(h, w, c);
            let mut flipped = 0;
            for seed in 0..200 {
                let mut img = orig.clone();
                a.apply(&mut img, h, w, c, seed);
                if a.draw(seed, h, w).flip {
                    flipped += 1;
                    for r in 0..h {
                        for col in 0..w {
                            assert_eq!(px(&img, w, c, r, col), px(&orig, w, c, r, w - 1 - col));
                        }
                    }
                } else {
                    assert_eq!(img, orig);
                }
            }
            assert!((70..130).contains(&flipped), "{flipped} flips of 200");
        }
    }

    #[test]
    fn same_seed_same_result_other_seed_differs() {
        let a = Augmenter::new(&Augmentation {
            horizontal_flip: true,
            rotation: 20.0,
            zoom: 0.2,
            width_shift: 0.1,
            height_shift: 0.1,
            brightness: Some([0.8, 1.2]),
        });
        let orig = ramp(32, 24, 3);
        let run = |seed| {
            let mut img = orig.clone();
            a.apply(&mut img, 32, 24, 3, seed);
            img
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        assert_ne!(run(7), orig);
        // Draws stay in range.
        for seed in 0..100 {
            let t = a.draw(seed, 32, 24);
            assert!(t.rotation.abs() <= 20.0);
            assert!(t.shift_rows.abs() <= 3.2 && t.shift_cols.abs() <= 2.4);
            assert!((0.8..=1.2).contains(&t.zoom_rows) && (0.8..=1.2).contains(&t.zoom_cols));
            assert!((0.8..=1.2).contains(&t.brightness));
        }
    }

    #[test]
    fn whole_pixel_shift_is_exact_with_edge_fill() {
        let (h, w, c) = (6, 8, 3);
        let orig = ramp(h, w, c);
        let mut img = orig.clone();
        let t = Transform {
            shift_rows: 2.0,
            shift_cols: -3.0,
            ..Transform::IDENTITY
        };
        t.apply(&mut img, h, w, c);
        for r in 0..h {
            for col in 0..w {
                // Source = output + shift, clamped to the edge ('nearest' fill).
                let sr = (r + 2).min(h - 1);
                let sc = (col as i64 - 3).max(0) as usize;
                assert_eq!(
                    px(&img, w, c, r, col),
                    px(&orig, w, c, sr, sc),
                    "at {r},{col}"
                );
            }
        }
    }

    #[test]
    fn rotation_by_90_degrees_on_a_square_is_a_permutation() {
        let (n, c) = (5, 3);
        let orig = ramp(n, n, c);
        let mut img = orig.clone();
        Transform {
            rotation: 90.0,
            ..Transform::IDENTITY
        }
        .apply(&mut img, n, n, c);
        for r in 0..n {
            for col in 0..n {
                // Clockwise: the left column, read bottom-up, becomes the top row.
                assert_eq!(
                    px(&img, n, c, r, col),
                    px(&orig, n, c, n - 1 - col, r),
                    "at {r},{col}"
                );
            }
        }
        // Four quarter turns give the original back.
        for _ in 0..3 {
            Transform {
                rotation: 90.0,
                ..Transform::IDENTITY
            }
            .apply(&mut img, n, n, c);
        }
        assert_eq!(img, orig);
    }

    #[test]
    fn zoom_and_flip_compose_in_one_pass() {
        // Zoom rows by 1 (none) and columns by -1 via flip: same as a plain flip.
        let (h, w, c) = (3, 6, 1);
        let orig = ramp(h, w, c);
        let mut a = orig.clone();
        Transform {
            flip: true,
            rotation: 1e-9,
            ..Transform::IDENTITY
        }
        .apply(&mut a, h, w, c);
        let mut b = orig.clone();
        Transform {
            flip: true,
            ..Transform::IDENTITY
        }
        .apply(&mut b, h, w, c);
        assert_eq!(a, b);
        // Zoom 0.5 on a linear ramp halves its slope about the centre.
        let line: Vec<u8> = (0..9).map(|i| i * 20).collect();
        let mut z = line.clone();
        Transform {
            zoom_cols: 0.5,
            ..Transform::IDENTITY
        }
        .apply(&mut z, 1, 9, 1);
        assert_eq!(z, vec![40, 50, 60, 70, 80, 90, 100, 110, 120]);
    }

    #[test]
    fn brightness_scales_and_clamps() {
        let mut img = vec![0, 10, 100, 127, 128, 200, 255];
        Transform {
            brightness: 2.0,
            ..Transform::IDENTITY
        }
        .apply(&mut img, 1, 7, 1);
        assert_eq!(img, vec![0, 20, 200, 254, 255, 255, 255]);
        let mut img = vec![0, 3, 100, 255];
        Transform {
            brightness: 0.5,
            ..Transform::IDENTITY
        }
        .apply(&mut img, 1, 4, 1);
        assert_eq!(img, vec![0, 1, 50, 127]);
    }
}
