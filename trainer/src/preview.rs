//! A picture of one training batch with each image's class under it (the tutorial's
//! `visualize_batch`), so a user can check labels, preprocessing and augmentation
//! before spending hours on `fit`.
//!
//! Images go through exactly what training feeds the model: decode, the shared
//! [`Preprocess::pixels`] (colour and resize), then [`Augmenter::apply`]. Labels are
//! drawn with the font compiled into the binary ([`crate::plot::label_font`]).
//!
//! Layout: small inputs are enlarged by a whole factor `s = ceil(96 / max(h, w))`
//! (at least 1); each tile is `w*s` x `h*s` plus a [`LABEL_HEIGHT`] band, tiles sit in
//! a `ceil(sqrt(n))`-column grid with [`PAD`] pixels around and between them.

use std::path::{Path, PathBuf};

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use fennec_runtime::decode::{DecodeLimits, decode_file};
use fennec_runtime::folder::scan_class_folders;
use fennec_runtime::preprocess::Preprocess;
use image::{ImageEncoder, Rgb, RgbImage};
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use rand::seq::SliceRandom;
use serde::Serialize;

use crate::augment::Augmenter;
use crate::config::Config;
use crate::output::{WriteError, write_file};

/// Pixels around and between tiles.
pub const PAD: u32 = 8;
/// Height of the label band under each image.
pub const LABEL_HEIGHT: u32 = 22;
/// Inputs smaller than this (longest side) are enlarged by a whole factor.
pub const MIN_TILE: u32 = 96;
const FONT_SIZE: f32 = 15.0;

#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error(transparent)]
    Folder(#[from] fennec_runtime::Error),
    #[error("{path}: no readable image in any class folder")]
    NoImages { path: PathBuf },
}

#[derive(Debug, Clone, PartialEq)]
pub struct PreviewOptions {
    /// Number of images (fewer when the folder has fewer).
    pub count: usize,
    /// Picks the images and their augmentation.
    pub seed: u64,
    /// Apply the config's augmentation.
    pub augment: bool,
}

/// Where one image sits in the picture (the image part, label band excluded).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tile {
    pub file: PathBuf,
    pub class: String,
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// A file that could not be shown, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SkippedFile {
    pub file: PathBuf,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct Preview {
    pub image: RgbImage,
    pub columns: u32,
    pub rows: u32,
    pub tiles: Vec<Tile>,
    pub skipped: Vec<SkippedFile>,
}

/// Renders a preview of `train_dir/<class>/*` as `config` preprocesses (and, with
/// `opts.augment`, augments) it.
pub fn render_preview(
    config: &Config,
    train_dir: &Path,
    opts: &PreviewOptions,
) -> Result<Preview, PreviewError> {
    let folders = scan_class_folders(train_dir)?;
    let mut files = folders.files.clone();
    files.shuffle(&mut Xoshiro256PlusPlus::seed_from_u64(opts.seed));

    let pre: &Preprocess = &config.preprocess;
    let (h, w, c) = (pre.height as usize, pre.width as usize, pre.channels());
    let augmenter = Augmenter::new(&config.training.augmentation);
    let limits = DecodeLimits::default();
    let mut chosen: Vec<(PathBuf, usize, Vec<u8>)> = Vec::new();
    let mut skipped = Vec::new();
    for (path, class) in files {
        if chosen.len() >= opts.count {
            break;
        }
        match decode_file(&path, &limits) {
            Ok(img) => {
                let mut pixels = pre.pixels(&img);
                if opts.augment {
                    let seed =
                        opts.seed ^ (chosen.len() as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    augmenter.apply(&mut pixels, h, w, c, seed);
                }
                chosen.push((path, class, pixels));
            }
            Err(e) => skipped.push(SkippedFile {
                file: path,
                reason: e.to_string(),
            }),
        }
    }
    if chosen.is_empty() {
        return Err(PreviewError::NoImages {
            path: train_dir.to_path_buf(),
        });
    }

    let scale = MIN_TILE.div_ceil(pre.height.max(pre.width)).max(1);
    let (tw, th) = (pre.width * scale, pre.height * scale);
    let n = chosen.len() as u32;
    let columns = (n as f64).sqrt().ceil() as u32;
    let rows = n.div_ceil(columns);
    let width = PAD + columns * (tw + PAD);
    let height = PAD + rows * (th + LABEL_HEIGHT + PAD);
    let mut image = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let font = crate::plot::label_font();
    let mut tiles = Vec::new();
    for (i, (path, class, pixels)) in chosen.into_iter().enumerate() {
        let (col, row) = (i as u32 % columns, i as u32 / columns);
        let (x0, y0) = (
            PAD + col * (tw + PAD),
            PAD + row * (th + LABEL_HEIGHT + PAD),
        );
        for y in 0..th {
            for x in 0..tw {
                let at = ((y / scale) as usize * w + (x / scale) as usize) * c;
                let rgb = if c == 1 {
                    [pixels[at]; 3]
                } else {
                    [pixels[at], pixels[at + 1], pixels[at + 2]]
                };
                image.put_pixel(x0 + x, y0 + y, Rgb(rgb));
            }
        }
        let label = &folders.classes[class];
        let text = fit_text(&font, label, tw as f32 - 4.0);
        let text_w = text_width(&font, &text);
        let tx = x0 as f32 + ((tw as f32 - text_w) / 2.0).max(0.0);
        let baseline = (y0 + th) as f32 + LABEL_HEIGHT as f32 / 2.0 + FONT_SIZE * 0.35;
        draw_text(
            &mut image,
            &font,
            &text,
            tx,
            baseline,
            [20, 20, 20],
            (x0, x0 + tw),
        );
        tiles.push(Tile {
            file: path,
            class: label.clone(),
            x: x0,
            y: y0,
            width: tw,
            height: th,
        });
    }
    Ok(Preview {
        image,
        columns,
        rows,
        tiles,
        skipped,
    })
}

/// Writes `image` as a PNG, atomically.
pub fn write_png(path: &Path, image: &RgbImage) -> Result<(), WriteError> {
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| WriteError::new(path, std::io::Error::other(e)))?;
    write_file(path, &png)
}

fn text_width(font: &FontRef<'_>, text: &str) -> f32 {
    let f = font.as_scaled(PxScale::from(FONT_SIZE));
    let mut width = 0.0;
    let mut prev = None;
    for ch in text.chars() {
        let id = f.glyph_id(ch);
        if let Some(p) = prev {
            width += f.kern(p, id);
        }
        width += f.h_advance(id);
        prev = Some(id);
    }
    width
}

/// `text`, or as much of it as fits in `max` pixels followed by an ellipsis.
fn fit_text(font: &FontRef<'_>, text: &str, max: f32) -> String {
    if text_width(font, text) <= max {
        return text.to_string();
    }
    let chars: Vec<char> = text.chars().collect();
    for keep in (0..chars.len()).rev() {
        let s: String = chars[..keep].iter().collect::<String>() + "…";
        if text_width(font, &s) <= max {
            return s;
        }
    }
    String::new()
}

/// Draws anti-aliased `text` with its baseline at `baseline`, clipped to the
/// columns `clip.0..clip.1`.
fn draw_text(
    img: &mut RgbImage,
    font: &FontRef<'_>,
    text: &str,
    x: f32,
    baseline: f32,
    color: [u8; 3],
    clip: (u32, u32),
) {
    let scale = PxScale::from(FONT_SIZE);
    let f = font.as_scaled(scale);
    let mut caret = x;
    let mut prev = None;
    for ch in text.chars() {
        let id = f.glyph_id(ch);
        if let Some(p) = prev {
            caret += f.kern(p, id);
        }
        prev = Some(id);
        let glyph = id.with_scale_and_position(scale, ab_glyph::point(caret, baseline));
        caret += f.h_advance(id);
        let Some(outline) = font.outline_glyph(glyph) else {
            continue;
        };
        let b = outline.px_bounds();
        outline.draw(|gx, gy, coverage| {
            let (px, py) = (b.min.x as i64 + gx as i64, b.min.y as i64 + gy as i64);
            if px < clip.0 as i64 || px >= clip.1 as i64 || py < 0 || py >= img.height() as i64 {
                return;
            }
            let p = img.get_pixel_mut(px as u32, py as u32);
            let a = coverage.clamp(0.0, 1.0);
            for (v, c) in p.0.iter_mut().zip(color) {
                *v = (*v as f32 * (1.0 - a) + c as f32 * a).round() as u8;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "
name: tiny
input: {height: 20, width: 30, channels: 3}
layers:
  - flatten
  - dense: {activation: softmax}
";

    fn folder(root: &Path) {
        for (class, rgb) in [("blue", [0, 0, 255]), ("red", [255, 0, 0])] {
            let dir = root.join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..5 {
                RgbImage::from_pixel(40 + i, 30, Rgb(rgb))
                    .save(dir.join(format!("{i}.png")))
                    .unwrap();
            }
        }
        std::fs::write(root.join("red/broken.png"), b"not a png").unwrap();
    }

    #[test]
    fn grid_layout_labels_and_pixels() {
        let d = tempfile::tempdir().unwrap();
        folder(d.path());
        let config = Config::parse(CONFIG, "tiny.yaml").unwrap();
        let opts = PreviewOptions {
            count: 11,
            seed: 3,
            augment: true,
        };
        let p = render_preview(&config, d.path(), &opts).unwrap();
        // 10 good images of 11 files: 4 columns, 3 rows; 30x20 enlarged 4x (96/30).
        assert_eq!(p.tiles.len(), 10);
        assert_eq!(p.skipped.len(), 1);
        assert!(p.skipped[0].reason.contains("broken.png"));
        assert_eq!((p.columns, p.rows), (4, 3));
        assert_eq!(
            p.image.dimensions(),
            (PAD + 4 * (120 + PAD), PAD + 3 * (80 + LABEL_HEIGHT + PAD))
        );
        for t in &p.tiles {
            let centre = p.image.get_pixel(t.x + t.width / 2, t.y + t.height / 2).0;
            let want = if t.class == "red" {
                [255, 0, 0]
            } else {
                [0, 0, 255]
            };
            assert_eq!(centre, want, "{t:?}");
            assert!(t.file.starts_with(d.path().join(&t.class)));
            // The label band has dark text pixels.
            let dark = (t.x..t.x + t.width)
                .flat_map(|x| (t.y + t.height..t.y + t.height + LABEL_HEIGHT).map(move |y| (x, y)))
                .filter(|&(x, y)| p.image.get_pixel(x, y).0[0] < 128)
                .count();
            assert!(dark > 10, "label drawn under {t:?}");
        }
        // Same seed, same picture; another seed, another order.
        let again = render_preview(&config, d.path(), &opts).unwrap();
        assert_eq!(again.image, p.image);
        let other = render_preview(
            &config,
            d.path(),
            &PreviewOptions {
                seed: 4,
                ..opts.clone()
            },
        )
        .unwrap();
        assert_ne!(
            other.tiles.iter().map(|t| &t.file).collect::<Vec<_>>(),
            p.tiles.iter().map(|t| &t.file).collect::<Vec<_>>()
        );

        let out = d.path().join("p.png");
        write_png(&out, &p.image).unwrap();
        assert_eq!(image::open(&out).unwrap().to_rgb8(), p.image);
    }

    #[test]
    fn long_labels_are_shortened() {
        let font = crate::plot::label_font();
        let s = fit_text(&font, "a-very-long-class-name-indeed", 60.0);
        assert!(s.ends_with('…') && text_width(&font, &s) <= 60.0, "{s}");
        assert_eq!(fit_text(&font, "cat", 60.0), "cat");
    }

    #[test]
    fn empty_folder_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a")).unwrap();
        let config = Config::parse(CONFIG, "tiny.yaml").unwrap();
        let e = render_preview(
            &config,
            d.path(),
            &PreviewOptions {
                count: 4,
                seed: 1,
                augment: false,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("no readable image"), "{e}");
    }
}
