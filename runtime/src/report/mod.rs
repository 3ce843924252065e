//! `--report DIR` of `fennec eval` and `fennec merge`: a report people can look at.
//!
//! `DIR/index.html` is one self-contained page (inline CSS, no script, nothing
//! fetched) beside its images: `confusion.png` (the confusion matrix as a heat map
//! with counts), `per_class.png` (precision / recall / F1 bars) and
//! `thumbs/*.png` (the most confident mistakes of each class, from the part). It
//! is made from an [`EvalPart`] alone, so a merge of shards gives the report of a
//! single run. Every file is written atomically; the page last.

mod charts;
mod html;

use std::path::Path;

use crate::atomic::write_bytes_atomic;
use crate::error::{Error, Result};
use crate::part::EvalPart;

pub use charts::{COLD, HEADER_HEIGHT, HOT, LABEL_WIDTH, cell_size, heat};

/// Writes the report of `part` into `dir` (created if missing).
pub fn write_report(dir: &Path, part: &EvalPart) -> Result<()> {
    let summary = part.summary();
    let failed =
        |what: &str, reason: String| Error::input(dir, format!("cannot draw {what}: {reason}"));
    let confusion = charts::confusion_png(&summary).map_err(|e| failed("the heat map", e))?;
    let bars = charts::per_class_png(&summary).map_err(|e| failed("the bars", e))?;
    fs_err::create_dir_all(dir.join("thumbs"))?;
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        write_bytes_atomic(&path, bytes)
            .map_err(|e| Error::input(&path, format!("cannot write: {e}")))
    };
    write("confusion.png", &confusion)?;
    write("per_class.png", &bars)?;
    let mut thumbs = Vec::with_capacity(part.mistakes.len());
    for (i, m) in part.mistakes.iter().enumerate() {
        let name = match hex::decode(&m.thumbnail) {
            Ok(png) if !png.is_empty() => {
                let name = format!("thumbs/{i}.png");
                write(&name, &png)?;
                Some(name)
            }
            _ => None,
        };
        thumbs.push(name);
    }
    write("index.html", html::page(part, &summary, &thumbs).as_bytes())
}
