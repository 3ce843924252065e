//! Generated test images: flat colours with a little deterministic noise, and
//! labelled class folders of them, whose right answers the colour model knows.

use std::path::Path;

use image::{ImageFormat, Rgb, RgbImage};

pub const RED: [u8; 3] = [220, 30, 30];
pub const GREEN: [u8; 3] = [30, 200, 40];
pub const BLUE: [u8; 3] = [20, 40, 230];
pub const COLORS: [(&str, [u8; 3]); 3] = [("blue", BLUE), ("green", GREEN), ("red", RED)];

/// A `w x h` image of `color` with a little deterministic noise.
pub fn color_image(w: u32, h: u32, color: [u8; 3], seed: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let n = ((x * 31 + y * 17 + seed * 7) % 23) as i32 - 11;
        Rgb(color.map(|c| (c as i32 + n).clamp(0, 255) as u8))
    })
}

/// Saves an image in the format its extension says.
pub fn save(img: &RgbImage, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let format = ImageFormat::from_path(path).unwrap();
    img.save_with_format(path, format).unwrap();
}

/// `root/<colour>/<i>.png|jpg` for blue, green, red: `n` images each, sizes vary.
pub fn color_folders(root: &Path, n: u32) {
    for (name, rgb) in COLORS {
        for i in 0..n {
            let ext = if i % 2 == 0 { "png" } else { "jpg" };
            save(
                &color_image(10 + i % 7, 9 + i % 5, rgb, i),
                &root.join(name).join(format!("{i}.{ext}")),
            );
        }
    }
}

/// `dir/<colour>.png`: one image of each colour, the i-th (blue, green, red)
/// `w + grow * i` by `h` pixels.
pub fn one_of_each(dir: &Path, w: u32, h: u32, grow: u32) {
    for (i, (name, rgb)) in (0u32..).zip(COLORS) {
        save(
            &color_image(w + grow * i, h, rgb, i),
            &dir.join(format!("{name}.png")),
        );
    }
}
