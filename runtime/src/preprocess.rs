//! The preprocessing contract: image file → model input tensor.
//!
//! Training (`fennec-train`) and inference (`fennec`) both call [`Preprocess::load`],
//! so the two can never see different pixels. The spec is plain data (serde), stored
//! in the run directory and in the exported ONNX file's metadata.
//!
//! Order of operations, fixed: decode (EXIF orientation applied) → colour conversion
//! (Pillow's rules, as Keras uses Pillow) → geometry (stretch / centre-crop /
//! letterbox, with the chosen filter) → `x * scale`, then `(x - mean[c]) / std[c]` →
//! layout (NCHW or NHWC).
//!
//! The spec's enums are named as in its YAML (`center_crop`) both by serde and by
//! strum (`Display`, `FromStr`, the list of names and their doc comments), so the
//! command line can offer them without the library depending on clap.

use std::path::Path;

use fast_image_resize::{self as fr, FilterType, PixelType, ResizeAlg, ResizeOptions};
use image::DynamicImage;
use serde::{Deserialize, Serialize};
use strum::{EnumMessage, EnumString, VariantNames};

use crate::decode::{DecodeLimits, decode_file};
use crate::error::{Error, ImageError, Result};

/// Colour mode of the model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[derive(strum::Display, EnumString, VariantNames, EnumMessage)]
#[strum(serialize_all = "snake_case")]
pub enum ColorMode {
    /// Three channels, R, G, B. Alpha is dropped, grey is replicated.
    #[default]
    Rgb,
    /// One channel of luma, ITU-R 601-2 (`L = 0.299 R + 0.587 G + 0.114 B`), as Pillow.
    Grayscale,
}

/// How the image is fitted to the input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[derive(strum::Display, EnumString, VariantNames, EnumMessage)]
#[strum(serialize_all = "snake_case")]
pub enum ResizeMode {
    /// Resize to exactly height x width, ignoring aspect ratio (Keras'
    /// `flow_from_directory`, `load_img(target_size=...)`).
    #[default]
    Stretch,
    /// Crop the largest centred region with the target aspect ratio, then resize.
    CenterCrop,
    /// Resize to fit inside the target keeping aspect ratio; pad the rest with black.
    Letterbox,
}

/// Resampling filter. Convolution filters widen on downscaling like Pillow's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[derive(strum::Display, EnumString, VariantNames, EnumMessage)]
#[strum(serialize_all = "snake_case")]
pub enum ResizeFilter {
    /// Nearest neighbour: Keras' `load_img` default.
    #[default]
    Nearest,
    /// Bilinear (triangle), antialiased on downscale like Pillow's BILINEAR.
    Bilinear,
    /// Catmull-Rom bicubic (Pillow's BICUBIC).
    CatmullRom,
    /// Lanczos with a = 3 (Pillow's LANCZOS).
    Lanczos3,
}

/// Memory layout of the input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[derive(strum::Display, EnumString, VariantNames, EnumMessage)]
#[strum(serialize_all = "snake_case")]
pub enum Layout {
    /// `[batch, channels, height, width]` (PyTorch, burn, ONNX convention).
    #[default]
    Nchw,
    /// `[batch, height, width, channels]` (Keras / TensorFlow).
    Nhwc,
}

fn default_scale() -> f32 {
    1.0 / 255.0
}

/// Everything needed to turn an image file into a model input. Serialised as JSON
/// in model metadata and as YAML in configs; unknown keys are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    pub height: u32,
    pub width: u32,
    #[serde(default)]
    pub color: ColorMode,
    #[serde(default)]
    pub resize: ResizeMode,
    #[serde(default)]
    pub filter: ResizeFilter,
    /// Multiplier applied to 0..=255 pixel values first (default 1/255).
    #[serde(default = "default_scale")]
    pub scale: f32,
    /// Per-channel mean subtracted after scaling: empty (none), one value, or one per channel.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mean: Vec<f32>,
    /// Per-channel divisor applied after the mean: empty (none), one value, or one per channel.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub std: Vec<f32>,
    #[serde(default)]
    pub layout: Layout,
}

impl Preprocess {
    /// Keras' `flow_from_directory` defaults at the given size: stretch, nearest,
    /// rescale 1/255, no mean/std, NCHW.
    pub fn keras(height: u32, width: u32, color: ColorMode) -> Self {
        Preprocess {
            height,
            width,
            color,
            resize: ResizeMode::Stretch,
            filter: ResizeFilter::Nearest,
            scale: default_scale(),
            mean: vec![],
            std: vec![],
            layout: Layout::Nchw,
        }
    }

    pub fn channels(&self) -> usize {
        match self.color {
            ColorMode::Rgb => 3,
            ColorMode::Grayscale => 1,
        }
    }

    /// Number of `f32` values for one image.
    pub fn tensor_len(&self) -> usize {
        self.channels() * self.height as usize * self.width as usize
    }

    /// Shape of a batch of `n` images in this spec's layout.
    pub fn batch_shape(&self, n: usize) -> [usize; 4] {
        let (c, h, w) = (self.channels(), self.height as usize, self.width as usize);
        match self.layout {
            Layout::Nchw => [n, c, h, w],
            Layout::Nhwc => [n, h, w, c],
        }
    }

    /// Rejects specs that cannot produce a tensor (zero size, wrong mean/std length,
    /// zero std, non-finite numbers).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Preprocess(m));
        if self.height == 0 || self.width == 0 {
            return bad(format!(
                "size {}x{} must be at least 1x1",
                self.height, self.width
            ));
        }
        if self.height > 16384 || self.width > 16384 {
            return bad(format!("size {}x{} is over 16384", self.height, self.width));
        }
        if !self.scale.is_finite() || self.scale == 0.0 {
            return bad(format!(
                "scale must be a non-zero finite number, got {}",
                self.scale
            ));
        }
        let c = self.channels();
        for (name, v) in [("mean", &self.mean), ("std", &self.std)] {
            if !(v.is_empty() || v.len() == 1 || v.len() == c) {
                return bad(format!(
                    "{name} has {} values; give none, one, or {c} (one per channel)",
                    v.len()
                ));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return bad(format!("{name} values must be finite"));
            }
        }
        if self.std.contains(&0.0) {
            return bad("std values must be non-zero".into());
        }
        Ok(())
    }

    /// One-line human description, e.g. `224x224 rgb, stretch/nearest, x/255, NCHW`.
    pub fn describe(&self) -> String {
        let scale = if (self.scale - default_scale()).abs() < 1e-9 {
            "x/255".to_string()
        } else {
            format!("x*{}", self.scale)
        };
        let mut s = format!(
            "{}x{} {}, {}/{}, {}",
            self.height, self.width, self.color, self.resize, self.filter, scale
        );
        if !self.mean.is_empty() {
            s += &format!(", mean {:?}", self.mean);
        }
        if !self.std.is_empty() {
            s += &format!(", std {:?}", self.std);
        }
        s + &format!(", {}", self.layout.to_string().to_uppercase())
    }

    /// Decodes `path` and writes its tensor (length [`Self::tensor_len`]) into a new vector.
    pub fn load(&self, path: &Path, limits: &DecodeLimits) -> Result<Vec<f32>, ImageError> {
        let img = decode_file(path, limits)?;
        let mut out = vec![0.0; self.tensor_len()];
        self.apply(&img, &mut out);
        Ok(out)
    }

    /// Colour conversion and geometry only: the `height x width` pixels (interleaved,
    /// 1 or 3 bytes each) that the model sees before scaling. Used for previews.
    pub fn pixels(&self, img: &DynamicImage) -> Vec<u8> {
        let (src, w, h) = convert_color(img, self.color);
        self.fit(&src, w, h)
    }

    /// Writes the tensor of an already decoded image into `out` (length
    /// [`Self::tensor_len`]). The spec must have passed [`Self::validate`].
    pub fn apply(&self, img: &DynamicImage, out: &mut [f32]) {
        let pixels = self.pixels(img);
        self.normalize(&pixels, out);
    }

    /// `x * scale`, mean/std, layout: interleaved `u8` pixels → tensor.
    pub fn normalize(&self, pixels: &[u8], out: &mut [f32]) {
        let c = self.channels();
        let hw = self.height as usize * self.width as usize;
        assert_eq!(pixels.len(), hw * c, "pixel buffer does not match the spec");
        assert_eq!(out.len(), hw * c, "output buffer does not match the spec");
        let pick = |v: &[f32], ch: usize, default: f32| match v.len() {
            0 => default,
            1 => v[0],
            _ => v[ch],
        };
        // Per-channel affine map: value = byte * a + b, with a 256-entry table so the
        // hot loop is a lookup. Computed as ((byte * scale) - mean) / std, exactly.
        let tables: Vec<[f32; 256]> = (0..c)
            .map(|ch| {
                let (mean, std) = (pick(&self.mean, ch, 0.0), pick(&self.std, ch, 1.0));
                std::array::from_fn(|b| (b as f32 * self.scale - mean) / std)
            })
            .collect();
        match self.layout {
            Layout::Nhwc => {
                for (i, (o, &p)) in out.iter_mut().zip(pixels).enumerate() {
                    *o = tables[i % c][p as usize];
                }
            }
            Layout::Nchw => {
                for (ch, plane) in out.chunks_exact_mut(hw).enumerate() {
                    let t = &tables[ch];
                    for (o, px) in plane.iter_mut().zip(pixels.chunks_exact(c)) {
                        *o = t[px[ch] as usize];
                    }
                }
            }
        }
    }

    /// Geometry: source interleaved pixels (`w x h`) → `height x width` interleaved.
    fn fit(&self, src: &[u8], w: u32, h: u32) -> Vec<u8> {
        let (tw, th) = (self.width, self.height);
        let c = self.channels();
        match self.resize {
            ResizeMode::Stretch => resize(
                src,
                w,
                h,
                (0.0, 0.0, w as f64, h as f64),
                tw,
                th,
                c,
                self.filter,
            ),
            ResizeMode::CenterCrop => {
                // Largest centred box with the target aspect ratio.
                let (sw, sh) = (w as f64, h as f64);
                let target = tw as f64 / th as f64;
                let (cw, ch) = if sw / sh > target {
                    (sh * target, sh)
                } else {
                    (sw, sw / target)
                };
                let crop = ((sw - cw) / 2.0, (sh - ch) / 2.0, cw, ch);
                resize(src, w, h, crop, tw, th, c, self.filter)
            }
            ResizeMode::Letterbox => {
                let s = (tw as f64 / w as f64).min(th as f64 / h as f64);
                let nw = ((w as f64 * s).round() as u32).clamp(1, tw);
                let nh = ((h as f64 * s).round() as u32).clamp(1, th);
                let inner = resize(
                    src,
                    w,
                    h,
                    (0.0, 0.0, w as f64, h as f64),
                    nw,
                    nh,
                    c,
                    self.filter,
                );
                let mut out = vec![0u8; tw as usize * th as usize * c];
                let (x0, y0) = (((tw - nw) / 2) as usize, ((th - nh) / 2) as usize);
                let row = nw as usize * c;
                for (y, src_row) in inner.chunks_exact(row).enumerate() {
                    let start = ((y0 + y) * tw as usize + x0) * c;
                    out[start..start + row].copy_from_slice(src_row);
                }
                out
            }
        }
    }
}

/// Changes to some fields of a spec, written as the spec itself is in YAML or JSON
/// (`{filter: lanczos3, height: 32, width: 32}`) and applied through serde, so every
/// field has one spelling: [`Preprocess`]'s. The command line's preprocessing flags
/// (`--filter lanczos3`) become one of these, applied over the model's own spec.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PreprocessChanges(serde_yaml::Mapping);

impl PreprocessChanges {
    /// The fields that `changes` serialises to: a struct named like the spec whose
    /// unset fields are skipped, or a map.
    pub fn from_fields(changes: &impl Serialize) -> Result<Self> {
        match serde_yaml::to_value(changes) {
            Ok(serde_yaml::Value::Mapping(fields)) => Ok(PreprocessChanges(fields)),
            Ok(other) => Err(Error::Preprocess(format!(
                "changes must be spec fields, got {other:?}"
            ))),
            Err(e) => Err(Error::Preprocess(e.to_string())),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `spec` with these changes made; an unknown field or a wrong value is an error.
    pub fn apply(&self, spec: &Preprocess) -> Result<Preprocess> {
        let mut value = serde_yaml::to_value(spec).expect("plain data serialises");
        let fields = value.as_mapping_mut().expect("a spec is a mapping");
        fields.extend(self.0.clone());
        serde_yaml::from_value(value).map_err(|e| Error::Preprocess(e.to_string()))
    }
}

/// Decoded image → interleaved 8-bit pixels in the wanted colour mode, following
/// Pillow's `convert("RGB")` / `convert("L")`: alpha is dropped (not composited),
/// 16-bit samples are scaled to 8 bits, luma uses ITU-R 601-2 in fixed point.
fn convert_color(img: &DynamicImage, mode: ColorMode) -> (Vec<u8>, u32, u32) {
    let (w, h) = (img.width(), img.height());
    let data = match (mode, img) {
        (ColorMode::Rgb, DynamicImage::ImageRgb8(rgb)) => rgb.as_raw().clone(),
        (ColorMode::Rgb, other) => other.to_rgb8().into_raw(),
        (ColorMode::Grayscale, DynamicImage::ImageLuma8(l)) => l.as_raw().clone(),
        // Grey sources keep their grey values (scaled to 8 bits), no round trip via RGB.
        (ColorMode::Grayscale, DynamicImage::ImageLuma16(_) | DynamicImage::ImageLumaA8(_))
        | (ColorMode::Grayscale, DynamicImage::ImageLumaA16(_)) => img.to_luma8().into_raw(),
        (ColorMode::Grayscale, other) => {
            let rgb = other.to_rgb8();
            rgb.as_raw()
                .chunks_exact(3)
                .map(|p| luma_601(p[0], p[1], p[2]))
                .collect()
        }
    };
    (data, w, h)
}

/// Pillow's RGB → L: `(R*19595 + G*38470 + B*7471 + 0x8000) >> 16`.
pub fn luma_601(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// Resamples the `crop` box `(left, top, width, height)` of `src` to `dw x dh`.
#[allow(clippy::too_many_arguments)]
fn resize(
    src: &[u8],
    w: u32,
    h: u32,
    crop: (f64, f64, f64, f64),
    dw: u32,
    dh: u32,
    channels: usize,
    filter: ResizeFilter,
) -> Vec<u8> {
    let whole = crop == (0.0, 0.0, w as f64, h as f64);
    if whole && (w, h) == (dw, dh) {
        return src.to_vec();
    }
    let pixel_type = if channels == 3 {
        PixelType::U8x3
    } else {
        PixelType::U8
    };
    let src_view = fr::images::ImageRef::new(w, h, src, pixel_type)
        .expect("buffer length matches its dimensions");
    let mut dst = fr::images::Image::new(dw, dh, pixel_type);
    let alg = match filter {
        ResizeFilter::Nearest => ResizeAlg::Nearest,
        ResizeFilter::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
        ResizeFilter::CatmullRom => ResizeAlg::Convolution(FilterType::CatmullRom),
        ResizeFilter::Lanczos3 => ResizeAlg::Convolution(FilterType::Lanczos3),
    };
    let mut options = ResizeOptions::new().resize_alg(alg);
    if !whole {
        options = options.crop(crop.0, crop.1, crop.2, crop.3);
    }
    fr::Resizer::new()
        .resize(&src_view, &mut dst, &options)
        .expect("same pixel type on both sides and a crop inside the image");
    dst.into_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb, RgbImage, Rgba, RgbaImage};

    fn spec(h: u32, w: u32, color: ColorMode) -> Preprocess {
        Preprocess::keras(h, w, color)
    }

    #[test]
    fn identity_size_rgb_nchw_and_nhwc() {
        let img = RgbImage::from_fn(2, 2, |x, y| Rgb([(10 * x + y) as u8, 100, 255]));
        let img = DynamicImage::ImageRgb8(img);
        let mut s = spec(2, 2, ColorMode::Rgb);
        let mut out = vec![0.0; 12];
        s.apply(&img, &mut out);
        // Keras' rescale multiplies: x * (1/255).
        let v = |b: u8| b as f32 * (1.0 / 255.0);
        // channel 0 plane, row-major: (x=0,y=0)=0, (1,0)=10, (0,1)=1, (1,1)=11
        assert_eq!(&out[..4], &[v(0), v(10), v(1), v(11)]);
        assert_eq!(out[4], v(100));
        assert_eq!(out[8], v(255));
        s.layout = Layout::Nhwc;
        s.apply(&img, &mut out);
        assert_eq!(&out[..3], &[v(0), v(100), v(255)]);
        assert_eq!(out[3], v(10));
    }

    #[test]
    fn mean_std_and_scale() {
        let img = DynamicImage::ImageLuma8(GrayImage::from_pixel(1, 1, Luma([200])));
        let mut s = spec(1, 1, ColorMode::Grayscale);
        s.scale = 1.0;
        s.mean = vec![100.0];
        s.std = vec![50.0];
        let mut out = vec![0.0; 1];
        s.apply(&img, &mut out);
        assert_eq!(out, vec![2.0]);
    }

    #[test]
    fn grayscale_uses_pillow_luma_and_drops_alpha() {
        assert_eq!(luma_601(255, 255, 255), 255);
        assert_eq!(luma_601(255, 0, 0), 76);
        assert_eq!(luma_601(0, 255, 0), 150);
        assert_eq!(luma_601(0, 0, 255), 29);
        let img = DynamicImage::ImageRgba8(RgbaImage::from_pixel(1, 1, Rgba([255, 0, 0, 0])));
        let s = spec(1, 1, ColorMode::Grayscale);
        assert_eq!(s.pixels(&img), vec![76]);
        let s = spec(1, 1, ColorMode::Rgb);
        assert_eq!(s.pixels(&img), vec![255, 0, 0]);
    }

    #[test]
    fn nearest_downscale_picks_pillow_centres() {
        // 4 -> 2: Pillow samples source x = floor((x + 0.5) * 2) = 1, 3.
        let img = GrayImage::from_fn(4, 1, |x, _| Luma([x as u8 * 10]));
        let s = spec(1, 2, ColorMode::Grayscale);
        assert_eq!(s.pixels(&DynamicImage::ImageLuma8(img)), vec![10, 30]);
    }

    #[test]
    fn letterbox_pads_and_center_crop_crops() {
        let img = GrayImage::from_fn(4, 2, |_, _| Luma([200]));
        let img = DynamicImage::ImageLuma8(img);
        let mut s = spec(4, 4, ColorMode::Grayscale);
        s.resize = ResizeMode::Letterbox;
        let px = s.pixels(&img);
        assert_eq!(&px[..4], &[0, 0, 0, 0], "top row is padding");
        assert_eq!(&px[4..8], &[200, 200, 200, 200]);
        assert_eq!(&px[12..], &[0, 0, 0, 0], "bottom row is padding");

        let img = GrayImage::from_fn(6, 2, |x, _| Luma([x as u8]));
        let mut s = spec(2, 2, ColorMode::Grayscale);
        s.resize = ResizeMode::CenterCrop;
        assert_eq!(s.pixels(&DynamicImage::ImageLuma8(img)), vec![2, 3, 2, 3]);
    }

    #[test]
    fn validation_errors() {
        let mut s = spec(0, 4, ColorMode::Rgb);
        assert!(s.validate().is_err());
        s.height = 4;
        s.mean = vec![0.5, 0.5];
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("mean has 2 values")
        );
        s.mean = vec![0.5; 3];
        s.std = vec![0.0];
        assert!(s.validate().is_err());
        s.std = vec![];
        assert!(s.validate().is_ok());
    }

    #[test]
    fn changes_apply_through_the_spec_serde_form() {
        let base = spec(28, 28, ColorMode::Grayscale);
        let none = PreprocessChanges::from_fields(&serde_json::json!({})).unwrap();
        assert!(none.is_empty());
        assert_eq!(none.apply(&base).unwrap(), base);
        let changes = PreprocessChanges::from_fields(&serde_json::json!({
            "height": 8, "width": 9, "filter": ResizeFilter::Lanczos3, "mean": [0.5]
        }))
        .unwrap();
        let changed = changes.apply(&base).unwrap();
        assert_eq!((changed.height, changed.width), (8, 9));
        assert_eq!(
            (changed.filter, changed.mean.clone()),
            (ResizeFilter::Lanczos3, vec![0.5])
        );
        assert_eq!((changed.color, changed.scale), (base.color, base.scale));
        // Values serde_json cannot carry still reach `validate`.
        let nan = PreprocessChanges::from_fields(&std::collections::BTreeMap::from([(
            "scale",
            f32::NAN,
        )]));
        let e = nan.unwrap().apply(&base).unwrap().validate().unwrap_err();
        assert!(e.to_string().contains("scale must be"), "{e}");
        let typo = PreprocessChanges::from_fields(&serde_json::json!({"widht": 3})).unwrap();
        assert!(typo.apply(&base).unwrap_err().to_string().contains("widht"));
        assert!(PreprocessChanges::from_fields(&3).is_err());
    }

    #[test]
    fn enum_names_are_the_serde_names() {
        for (name, value) in [
            ("center_crop", ResizeMode::CenterCrop),
            ("letterbox", ResizeMode::Letterbox),
        ] {
            assert_eq!(value.to_string(), name);
            assert_eq!(name.parse::<ResizeMode>().unwrap(), value);
            assert_eq!(serde_json::to_value(value).unwrap(), name);
        }
        assert_eq!(
            ResizeFilter::VARIANTS,
            ["nearest", "bilinear", "catmull_rom", "lanczos3"]
        );
        assert_eq!(ColorMode::VARIANTS, ["rgb", "grayscale"]);
        assert_eq!(Layout::VARIANTS, ["nchw", "nhwc"]);
        assert_eq!(
            ResizeFilter::Lanczos3.get_documentation(),
            Some("Lanczos with a = 3 (Pillow's LANCZOS).")
        );
    }

    #[test]
    fn spec_round_trips_and_rejects_unknown_keys() {
        let s = Preprocess::keras(28, 28, ColorMode::Grayscale);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Preprocess>(&json).unwrap(), s);
        let y: Preprocess =
            serde_yaml::from_str("height: 8\nwidth: 9\nfilter: bilinear\n").unwrap();
        assert_eq!(
            (y.height, y.width, y.filter, y.color),
            (8, 9, ResizeFilter::Bilinear, ColorMode::Rgb)
        );
        assert!(serde_yaml::from_str::<Preprocess>("height: 8\nwidht: 9\n").is_err());
    }
}
