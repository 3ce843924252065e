//! Plain aligned text tables for human output (no colours, so logs stay clean).

use std::io::{self, Write};

/// A table: first column left-aligned, the others right-aligned (numbers) unless
/// [`Table::left_aligned`].
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    left: bool,
}

impl Table {
    pub fn new<S: ToString>(header: impl IntoIterator<Item = S>) -> Self {
        Table {
            header: header.into_iter().map(|s| s.to_string()).collect(),
            rows: vec![],
            left: false,
        }
    }

    /// Every column left-aligned: for text values (a field/value listing).
    pub fn left_aligned(mut self) -> Self {
        self.left = true;
        self
    }

    pub fn row<S: ToString>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows
            .push(cells.into_iter().map(|s| s.to_string()).collect());
    }

    pub fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        let cols = self.header.len();
        let mut width = vec![0; cols];
        for r in std::iter::once(&self.header).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(cols) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, w) in width.iter().enumerate() {
                let cell = r.get(i).map(String::as_str).unwrap_or("");
                let pad = w - cell.chars().count();
                if i == 0 || self.left {
                    if i > 0 {
                        line += "  ";
                    }
                    line += cell;
                    line += &" ".repeat(pad);
                } else {
                    line += "  ";
                    line += &" ".repeat(pad);
                    line += cell;
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let mut t = Table::new(["class", "n"]);
        t.row(["cat", "5"]);
        t.row(["hippo", "120"]);
        let mut out = Vec::new();
        t.write(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "class    n\ncat      5\nhippo  120\n"
        );
    }

    #[test]
    fn left_aligned_pads_after_each_cell() {
        let mut t = Table::new(["field", "value", "x"]).left_aligned();
        t.row(["a", "long value", "1"]);
        t.row(["bb", "v", "22"]);
        let mut out = Vec::new();
        t.write(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "field  value       x\na      long value  1\nbb     v           22\n"
        );
    }
}
