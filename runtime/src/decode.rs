//! Reading an image file into pixels, safely.
//!
//! This is the only place that touches image bytes. It guarantees that a bad file
//! (empty, not an image, truncated, corrupt, absurdly large) becomes a typed
//! [`ImageError`] naming the file, never a panic or an out-of-memory abort, and that
//! EXIF orientation is honoured so a phone photo is seen upright.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

use crate::error::ImageError;

/// Extensions (lower case) that folder scans treat as images, like Keras'
/// `flow_from_directory` white-list plus GIF and WebP.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"];

/// Default cap on decoded image size: 64 megapixels (e.g. 8000x8000).
pub const DEFAULT_MAX_MEGAPIXELS: f64 = 64.0;

/// Limits applied while decoding. The pixel cap is checked from the header, before
/// any pixel buffer is allocated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeLimits {
    pub max_megapixels: f64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_megapixels: DEFAULT_MAX_MEGAPIXELS,
        }
    }
}

/// True when the path's extension is one of [`IMAGE_EXTENSIONS`] (case-insensitive).
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Reads and decodes `path`: first frame for animations, EXIF orientation applied.
pub fn decode_file(path: &Path, limits: &DecodeLimits) -> Result<DynamicImage, ImageError> {
    let bytes = std::fs::read(path).map_err(|e| ImageError::Unreadable {
        path: path.to_path_buf(),
        reason: io_reason(&e),
    })?;
    decode_bytes(&bytes, path, limits)
}

/// Decodes an in-memory file; `path` is only used in error messages.
pub fn decode_bytes(
    bytes: &[u8],
    path: &Path,
    limits: &DecodeLimits,
) -> Result<DynamicImage, ImageError> {
    let p = || path.to_path_buf();
    if bytes.is_empty() {
        return Err(ImageError::Empty { path: p() });
    }
    let format = image::guess_format(bytes).map_err(|_| ImageError::NotAnImage { path: p() })?;
    let fmt = format_name(format);
    if !matches!(
        format,
        ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::Bmp
            | ImageFormat::Gif
            | ImageFormat::WebP
            | ImageFormat::Tiff
    ) {
        return Err(ImageError::Unsupported {
            path: p(),
            format: fmt,
            reason: "format not built into fennec".into(),
        });
    }
    if format == ImageFormat::Jpeg {
        check_jpeg_complete(bytes).map_err(|reason| ImageError::Truncated {
            path: p(),
            format: fmt,
            reason: reason.into(),
        })?;
    }

    let mut reader = ImageReader::new(Cursor::new(bytes));
    reader.set_format(format);
    let mut image_limits = image::Limits::default();
    // Byte budget for the decoder: the pixel cap at 16-bit RGBA, plus slack.
    image_limits.max_alloc = Some((limits.max_megapixels * 1e6 * 8.0) as u64 + (64 << 20));
    reader.limits(image_limits);
    let mut decoder = reader.into_decoder().map_err(|e| classify(e, path, fmt))?;

    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ImageError::Corrupt {
            path: p(),
            format: fmt,
            reason: format!("image has zero size ({width}x{height})"),
        });
    }
    if (width as f64) * (height as f64) > limits.max_megapixels * 1e6 {
        return Err(ImageError::TooLarge {
            path: p(),
            width,
            height,
            limit: limits.max_megapixels,
        });
    }
    // A missing or unreadable EXIF block is not an error: the image is used as stored.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| classify(e, path, fmt))?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// A JPEG whose data stops early still decodes (the lenient decoder pads it with
/// grey), so a truncated file must be caught by structure: walk the header segments
/// (skipping APP blocks whole, so an EXIF thumbnail's own markers don't count) to the
/// first start-of-scan, then require an end-of-image marker `FF D9` after it. Inside
/// scan data a literal `FF` is always followed by `00` or a restart marker, so `FF D9`
/// there can only be the real end.
fn check_jpeg_complete(bytes: &[u8]) -> Result<(), &'static str> {
    const HEADER_CUT: &str = "the file ends inside its header";
    let mut i = 2; // after SOI
    loop {
        if i + 1 >= bytes.len() {
            return Err(HEADER_CUT);
        }
        if bytes[i] != 0xFF {
            // Not a marker where one must be: leave the diagnosis to the decoder.
            return Ok(());
        }
        let marker = bytes[i + 1];
        match marker {
            0xFF => i += 1, // fill byte
            0xD8 | 0xD0..=0xD7 | 0x01 => i += 2,
            0xD9 => return Err("end-of-image marker before any scan data"),
            _ => {
                if i + 3 >= bytes.len() {
                    return Err(HEADER_CUT);
                }
                let len = u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize;
                let next = i + 2 + len;
                if marker == 0xDA {
                    let scan = bytes.get(next..).ok_or(HEADER_CUT)?;
                    return if scan.windows(2).any(|w| w == [0xFF, 0xD9]) {
                        Ok(())
                    } else {
                        Err("no end-of-image marker, the file was cut short")
                    };
                }
                i = next;
            }
        }
    }
}

fn classify(e: image::ImageError, path: &Path, format: &'static str) -> ImageError {
    use image::error::ImageError as E;
    let path = path.to_path_buf();
    let reason = one_line(&e.to_string());
    match e {
        E::Limits(_) => ImageError::Unsupported {
            path,
            format,
            reason: format!("needs more memory than allowed ({reason})"),
        },
        E::Unsupported(_) => ImageError::Unsupported {
            path,
            format,
            reason,
        },
        E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => ImageError::Truncated {
            path,
            format,
            reason,
        },
        _ if looks_truncated(&reason) => ImageError::Truncated {
            path,
            format,
            reason,
        },
        _ => ImageError::Corrupt {
            path,
            format,
            reason,
        },
    }
}

fn looks_truncated(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    r.contains("eof")
        || r.contains("end of file")
        || r.contains("unexpected end")
        || r.contains("truncated")
        || r.contains("no more data")
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub(crate) fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::IsADirectory => "is a directory".into(),
        _ => one_line(&e.to_string()),
    }
}

fn format_name(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Gif => "GIF",
        ImageFormat::WebP => "WebP",
        ImageFormat::Tiff => "TIFF",
        _ => "image",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_bytes(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn jpeg_bytes(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 99]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    #[test]
    fn decodes_png() {
        let img = decode_bytes(&png_bytes(5, 3), Path::new("a.png"), &Default::default()).unwrap();
        assert_eq!((img.width(), img.height()), (5, 3));
    }

    #[test]
    fn empty_and_garbage() {
        let l = DecodeLimits::default();
        assert_eq!(
            decode_bytes(b"", Path::new("e.jpg"), &l)
                .unwrap_err()
                .kind(),
            "empty"
        );
        let e = decode_bytes(b"hello, I am text", Path::new("t.jpg"), &l).unwrap_err();
        assert_eq!(e.kind(), "not_an_image");
        assert!(e.to_string().starts_with("t.jpg: "), "{e}");
    }

    #[test]
    fn truncated_jpeg_is_caught() {
        let full = jpeg_bytes(64, 64);
        let l = DecodeLimits::default();
        assert!(decode_bytes(&full, Path::new("ok.jpg"), &l).is_ok());
        for cut in [full.len() / 2, full.len() - 2, 40] {
            let e = decode_bytes(&full[..cut], Path::new("cut.jpg"), &l).unwrap_err();
            assert_eq!(e.kind(), "truncated", "cut at {cut}: {e}");
        }
    }

    #[test]
    fn truncated_png_and_bad_crc() {
        let full = png_bytes(32, 32);
        let l = DecodeLimits::default();
        let e = decode_bytes(&full[..full.len() / 2], Path::new("cut.png"), &l).unwrap_err();
        assert!(matches!(e.kind(), "truncated" | "corrupt"), "{e}");
        let mut bad = full.clone();
        // Flip a byte inside the IHDR chunk's data: its CRC no longer matches.
        bad[20] ^= 0x55;
        let e = decode_bytes(&bad, Path::new("crc.png"), &l).unwrap_err();
        assert!(matches!(e.kind(), "corrupt" | "truncated"), "{e}");
    }

    #[test]
    fn pixel_cap_is_checked_from_the_header() {
        let l = DecodeLimits {
            max_megapixels: 0.001,
        };
        let e = decode_bytes(&png_bytes(40, 40), Path::new("big.png"), &l).unwrap_err();
        assert_eq!(e.kind(), "too_large");
        assert!(e.to_string().contains("40x40"), "{e}");
    }

    #[test]
    fn extension_filter() {
        assert!(has_image_extension(Path::new("a/B.JPG")));
        assert!(has_image_extension(Path::new("x.tiff")));
        assert!(!has_image_extension(Path::new("notes.txt")));
        assert!(!has_image_extension(Path::new("jpg")));
    }
}
