//! `history.png`: loss and accuracy curves of a run, train vs validation, the plot
//! the tutorial draws with matplotlib after `fit`.
//!
//! Drawn with `plotters` into an in-memory RGB buffer, PNG-encoded with `image`
//! and written atomically. Text uses a font compiled into the binary (Ubuntu Light,
//! from `epaint_default_fonts`), so plots render the same on a fresh machine or CI
//! without system fonts; [`label_font`] hands the same font to other drawings.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use image::ImageEncoder;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::history::EpochRecord;
use crate::output::{WriteError, write_file};

/// Size of `history.png` in pixels.
pub const PLOT_SIZE: (u32, u32) = (1200, 480);

/// The embedded font (Ubuntu Light, Ubuntu Font Licence 1.0).
pub const FONT_BYTES: &[u8] = epaint_default_fonts::UBUNTU_LIGHT;

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("{path}: cannot plot an empty history")]
    Empty { path: PathBuf },
    #[error("{path}: cannot draw the plot: {reason}")]
    Draw { path: PathBuf, reason: String },
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// The embedded font for drawing text with `ab_glyph` directly (previews).
pub fn label_font() -> ab_glyph::FontRef<'static> {
    ab_glyph::FontRef::try_from_slice(FONT_BYTES).expect("the embedded font parses")
}

/// Registers the embedded font as plotters' `sans-serif`, once per process; false
/// when it could not be loaded.
fn register_embedded_font() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| register_font("sans-serif", FontStyle::Normal, FONT_BYTES).is_ok())
}

/// Writes `path` (a run's `history.png`): two panels (loss, categorical accuracy),
/// each with the train and validation curves per epoch, axis labels and a legend.
/// Non-finite values are left out of the curves.
pub fn plot_history(path: &Path, history: &[EpochRecord]) -> Result<(), PlotError> {
    let failed = |reason: String| PlotError::Draw {
        path: path.to_path_buf(),
        reason,
    };
    if history.is_empty() {
        return Err(PlotError::Empty {
            path: path.to_path_buf(),
        });
    }
    let (w, h) = PLOT_SIZE;
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    draw(&mut buf, history).map_err(|e| failed(e.to_string()))?;
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&buf, w, h, image::ExtendedColorType::Rgb8)
        .map_err(|e| failed(e.to_string()))?;
    Ok(write_file(path, &png)?)
}

struct Panel<'a> {
    title: &'a str,
    y_desc: &'a str,
    train: Vec<(f64, f64)>,
    val: Vec<(f64, f64)>,
    /// Clamp the y axis to [0, 1].
    unit: bool,
}

fn draw(buf: &mut [u8], history: &[EpochRecord]) -> Result<(), Box<dyn std::error::Error>> {
    if !register_embedded_font() {
        return Err("the embedded font could not be loaded".into());
    }
    let points = |f: fn(&EpochRecord) -> f64| -> Vec<(f64, f64)> {
        history
            .iter()
            .map(|r| (r.epoch as f64, f(r)))
            .filter(|(_, y)| y.is_finite())
            .collect()
    };
    let panels = [
        Panel {
            title: "Loss",
            y_desc: "loss (categorical cross-entropy)",
            train: points(|r| r.train_loss),
            val: points(|r| r.val_loss),
            unit: false,
        },
        Panel {
            title: "Accuracy",
            y_desc: "categorical accuracy",
            train: points(|r| r.train_accuracy),
            val: points(|r| r.val_accuracy),
            unit: true,
        },
    ];
    let first = history.iter().map(|r| r.epoch).min().unwrap_or(1) as f64;
    let last = history.iter().map(|r| r.epoch).max().unwrap_or(1) as f64;
    let x_pad = if last > first { 0.25 } else { 0.5 };
    let x_range = first - x_pad..last + x_pad;
    let epochs = (last - first) as usize + 1;

    let root = BitMapBackend::with_buffer(buf, PLOT_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let halves = root.split_evenly((1, 2));
    for (area, panel) in halves.iter().zip(&panels) {
        draw_panel(area, panel, x_range.clone(), epochs)?;
    }
    root.present()?;
    Ok(())
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    p: &Panel<'_>,
    x_range: std::ops::Range<f64>,
    epochs: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let ys = p.train.iter().chain(&p.val).map(|&(_, y)| y);
    let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
        (lo.min(y), hi.max(y))
    });
    let (mut lo, mut hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.08).max(if p.unit {
        0.02
    } else {
        0.05 * hi.abs().max(1e-3)
    });
    lo -= pad;
    hi += pad;
    if p.unit {
        lo = lo.max(0.0);
        hi = hi.min(1.0);
    } else if lo < 0.0 && p.train.iter().chain(&p.val).all(|&(_, y)| y >= 0.0) {
        lo = 0.0;
    }

    // Enough decimals to tell the ticks apart (about five per axis).
    let decimals = (-((hi - lo) / 5.0).log10()).ceil().clamp(1.0, 4.0) as usize;
    let y_format = move |y: &f64| format!("{y:.decimals$}");

    let mut chart = ChartBuilder::on(area)
        .caption(p.title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range, lo..hi)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(p.y_desc)
        .x_labels(epochs.clamp(2, 12))
        .x_label_formatter(&|x| {
            // Epochs are whole numbers: label only the integer ticks.
            if (x - x.round()).abs() < 1e-6 {
                format!("{}", x.round() as i64)
            } else {
                String::new()
            }
        })
        .y_label_formatter(&y_format)
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;

    let train_color = RGBColor(31, 119, 180);
    let val_color = RGBColor(255, 127, 14);
    for (points, color, name) in [
        (&p.train, train_color, "train"),
        (&p.val, val_color, "validation"),
    ] {
        chart
            .draw_series(
                LineSeries::new(points.iter().copied(), color.stroke_width(2)).point_size(3),
            )?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .position(if p.unit {
            SeriesLabelPosition::LowerRight
        } else {
            SeriesLabelPosition::UpperRight
        })
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: usize, loss: f64, acc: f64) -> EpochRecord {
        EpochRecord {
            epoch,
            train_loss: loss,
            train_accuracy: acc,
            val_loss: loss * 1.2,
            val_accuracy: acc * 0.95,
            val_binary_accuracy: acc,
            train_seconds: 1.0,
            images_per_second: 100.0,
            learning_rate: 1e-3,
        }
    }

    fn read_png(path: &Path) -> image::RgbImage {
        image::open(path).expect("a readable PNG").to_rgb8()
    }

    #[test]
    fn writes_a_png_with_both_curves() {
        let dir = tempfile::tempdir().unwrap();
        let h: Vec<_> = (1..=10)
            .map(|e| record(e, 1.0 / e as f64, 0.5 + 0.04 * e as f64))
            .collect();
        plot_history(&dir.path().join("history.png"), &h).unwrap();
        let img = read_png(&dir.path().join("history.png"));
        assert_eq!(img.dimensions(), PLOT_SIZE);
        let has = |c: [u8; 3]| img.pixels().filter(|p| p.0 == c).count();
        assert!(has([31, 119, 180]) > 500, "train curve drawn");
        assert!(has([255, 127, 14]) > 500, "validation curve drawn");
        // Text is drawn (dark anti-aliased pixels besides the black axes).
        let grey = img
            .pixels()
            .filter(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2] && (30..200).contains(&p.0[0]))
            .count();
        assert!(grey > 300, "labels drawn ({grey} grey pixels)");
        // Nothing else left behind in the folder.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn one_epoch_and_non_finite_values() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = record(1, 0.7, 0.5);
        r.val_loss = f64::NAN;
        plot_history(&dir.path().join("history.png"), &[r]).unwrap();
        assert_eq!(
            read_png(&dir.path().join("history.png")).dimensions(),
            PLOT_SIZE
        );
    }

    #[test]
    fn empty_history_and_missing_folder_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = plot_history(&dir.path().join("history.png"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("history.png") && e.contains("empty"), "{e}");
        let missing = dir.path().join("no/such");
        let e = plot_history(&missing.join("history.png"), &[record(1, 0.5, 0.5)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no/such/history.png"), "{e}");
    }
}
