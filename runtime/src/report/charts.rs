//! The report's two charts as PNGs: the confusion matrix as a heat map with the
//! counts in its cells, and per-class precision / recall / F1 bars.
//!
//! Drawn with `plotters` into an RGB buffer (rectangles and text, no chart
//! scaffolding needed) and PNG-encoded with `image`. Text uses the Ubuntu font
//! compiled into the binary (as the trainer's plots do), so a chart looks the same
//! on a machine without fonts.

use std::sync::OnceLock;

use image::ImageEncoder;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, register_font};

use crate::metrics::Summary;

/// Heat-map colour of an empty cell and of a full one (the row's whole support).
pub const COLD: [u8; 3] = [247, 251, 255];
pub const HOT: [u8; 3] = [8, 48, 107];

/// Bar colours: precision, recall (= per-class accuracy), F1.
const BARS: [(&str, RGBColor); 3] = [
    ("precision", RGBColor(31, 119, 180)),
    ("recall (= class accuracy)", RGBColor(255, 127, 14)),
    ("F1", RGBColor(44, 160, 44)),
];

type DrawResult = Result<(), String>;

/// Registers the embedded font as plotters' `sans-serif` once per process.
fn font() -> Result<(), String> {
    static LOADED: OnceLock<bool> = OnceLock::new();
    let ok = *LOADED.get_or_init(|| {
        register_font(
            "sans-serif",
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        )
        .is_ok()
    });
    ok.then_some(())
        .ok_or_else(|| "the embedded font does not load".into())
}

/// Linear mix of [`COLD`] and [`HOT`], `t` in 0..=1.
pub fn heat(t: f64) -> [u8; 3] {
    let t = t.clamp(0.0, 1.0);
    std::array::from_fn(|i| (COLD[i] as f64 + (HOT[i] as f64 - COLD[i] as f64) * t).round() as u8)
}

/// Cell side of the heat map for `n` classes, in pixels.
pub fn cell_size(n: usize) -> u32 {
    (720 / n.max(1) as u32).clamp(14, 64)
}

/// Width of the heat map's label column, in pixels.
pub const LABEL_WIDTH: u32 = 170;
/// Height of the heat map's header (title and column indices), in pixels.
pub const HEADER_HEIGHT: u32 = 60;

/// The confusion matrix, rows = true class, columns = predicted class, each cell
/// coloured by its share of the row and showing its count.
pub fn confusion_png(s: &Summary) -> Result<Vec<u8>, String> {
    font()?;
    let n = s.labels.len();
    let cell = cell_size(n);
    // At least as wide as the title, however few the classes.
    let (w, h) = (
        (LABEL_WIDTH + cell * n as u32 + 20).max(LABEL_WIDTH + 400),
        HEADER_HEIGHT + cell * n as u32 + 20,
    );
    render(w, h, |area| {
        let text = |size: u32, pos: Pos, color: RGBColor| {
            ("sans-serif", size as f64)
                .into_font()
                .color(&color)
                .pos(pos)
        };
        let center = Pos::new(HPos::Center, VPos::Center);
        area.draw(&Text::new(
            "true class (rows) vs predicted class (columns)",
            (LABEL_WIDTH as i32, 16),
            text(16, Pos::new(HPos::Left, VPos::Center), BLACK),
        ))
        .map_err(|e| e.to_string())?;
        let font_size = (cell / 3).clamp(8, 16);
        for (i, row) in s.confusion.iter().enumerate() {
            let support: u64 = row.iter().sum();
            let y = (HEADER_HEIGHT + cell * i as u32) as i32;
            area.draw(&Text::new(
                format!("{i} {}", s.labels[i]),
                (LABEL_WIDTH as i32 - 6, y + cell as i32 / 2),
                text(
                    font_size.max(12),
                    Pos::new(HPos::Right, VPos::Center),
                    BLACK,
                ),
            ))
            .map_err(|e| e.to_string())?;
            for (j, &count) in row.iter().enumerate() {
                let x = (LABEL_WIDTH + cell * j as u32) as i32;
                let share = if support == 0 {
                    0.0
                } else {
                    count as f64 / support as f64
                };
                let [r, g, b] = heat(share);
                area.draw(&Rectangle::new(
                    [(x, y), (x + cell as i32 - 1, y + cell as i32 - 1)],
                    RGBColor(r, g, b).filled(),
                ))
                .map_err(|e| e.to_string())?;
                if count > 0 {
                    let ink = if share > 0.5 { WHITE } else { BLACK };
                    area.draw(&Text::new(
                        count.to_string(),
                        (x + cell as i32 / 2, y + cell as i32 / 2),
                        text(font_size, center, ink),
                    ))
                    .map_err(|e| e.to_string())?;
                }
            }
        }
        for j in 0..n {
            let x = (LABEL_WIDTH + cell * j as u32 + cell / 2) as i32;
            area.draw(&Text::new(
                j.to_string(),
                (x, HEADER_HEIGHT as i32 - 12),
                text(font_size.max(11), center, BLACK),
            ))
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

/// Horizontal bars per class: precision, recall, F1, on a 0..1 scale.
pub fn per_class_png(s: &Summary) -> Result<Vec<u8>, String> {
    font()?;
    let n = s.per_class.len();
    let (bar, gap) = (12u32, 10u32);
    let group = bar * 3 + gap;
    let (left, top, scale_w) = (170u32, 56u32, 600u32);
    let (w, h) = (left + scale_w + 60, top + group * n as u32 + 30);
    render(w, h, |area| {
        let text = |size: f64, pos: Pos| ("sans-serif", size).into_font().color(&BLACK).pos(pos);
        let mut x = left as i32;
        for (name, color) in BARS {
            area.draw(&Rectangle::new([(x, 10), (x + 14, 24)], color.filled()))
                .map_err(|e| e.to_string())?;
            area.draw(&Text::new(
                name,
                (x + 20, 17),
                text(14.0, Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(|e| e.to_string())?;
            x += 40 + 8 * name.len() as i32;
        }
        for tick in 0..=4 {
            let x = (left + scale_w * tick / 4) as i32;
            area.draw(&PathElement::new(
                vec![(x, top as i32 - 8), (x, (h - 24) as i32)],
                RGBColor(200, 200, 200),
            ))
            .map_err(|e| e.to_string())?;
            area.draw(&Text::new(
                format!("{:.2}", tick as f64 / 4.0),
                (x, (h - 12) as i32),
                text(12.0, Pos::new(HPos::Center, VPos::Center)),
            ))
            .map_err(|e| e.to_string())?;
        }
        for (i, m) in s.per_class.iter().enumerate() {
            let y = (top + group * i as u32) as i32;
            area.draw(&Text::new(
                m.label.clone(),
                (left as i32 - 8, y + (bar * 3) as i32 / 2),
                text(13.0, Pos::new(HPos::Right, VPos::Center)),
            ))
            .map_err(|e| e.to_string())?;
            for (k, (value, (_, color))) in
                [m.precision, m.recall, m.f1].iter().zip(BARS).enumerate()
            {
                let y0 = y + (bar * k as u32) as i32;
                let x1 = left as i32 + (value.clamp(0.0, 1.0) * scale_w as f64).round() as i32;
                area.draw(&Rectangle::new(
                    [(left as i32, y0), (x1, y0 + bar as i32 - 2)],
                    color.filled(),
                ))
                .map_err(|e| e.to_string())?;
                area.draw(&Text::new(
                    format!("{value:.3}"),
                    (x1 + 4, y0 + bar as i32 / 2 - 1),
                    text(11.0, Pos::new(HPos::Left, VPos::Center)),
                ))
                .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    })
}

/// A white `w x h` RGB canvas given to `draw`, then PNG-encoded.
fn render(
    w: u32,
    h: u32,
    draw: impl FnOnce(&DrawingArea<BitMapBackend, plotters::coord::Shift>) -> DrawResult,
) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    {
        let area = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        area.fill(&WHITE).map_err(|e| e.to_string())?;
        draw(&area)?;
        area.present().map_err(|e| e.to_string())?;
    }
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&buf, w, h, image::ExtendedColorType::Rgb8)
        .map_err(|e| e.to_string())?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Evaluation;

    fn summary() -> Summary {
        let mut e = Evaluation::new(vec!["cat".into(), "dog".into(), "bird".into()], 1);
        for (t, p, n) in [(0, 0, 8), (0, 1, 2), (1, 1, 5), (2, 0, 1), (2, 2, 3)] {
            for _ in 0..n {
                e.record(t, p, t == p);
            }
        }
        e.summary()
    }

    #[test]
    fn heat_map_cells_have_the_heat_colour_of_their_share() {
        let s = summary();
        let png = confusion_png(&s).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        let cell = cell_size(3);
        let at = |row: u32, col: u32| {
            // A corner of the cell, away from its count.
            img.get_pixel(LABEL_WIDTH + cell * col + 2, HEADER_HEIGHT + cell * row + 2)
                .0
        };
        assert_eq!(at(1, 1), HOT, "dog row is all correct");
        assert_eq!(at(0, 0), heat(0.8));
        assert_eq!(at(0, 2), COLD, "no cat predicted as bird");
        assert_eq!(at(2, 0), heat(0.25));
    }

    #[test]
    fn bars_are_drawn() {
        let png = per_class_png(&summary()).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        let blue = BARS[0].1;
        let blue = [blue.0, blue.1, blue.2];
        assert!(img.pixels().filter(|p| p.0 == blue).count() > 500);
    }
}
