//! The report's `index.html`: summary, model metadata, the two charts, the
//! per-class table, the grid of mistakes and the skipped files. Plain HTML with
//! inline CSS; every text from a file, folder or model is escaped.

use std::fmt::Write;

use crate::metrics::Summary;
use crate::part::EvalPart;

/// Skipped files listed on the page (all are in the JSON report).
const SKIPPED_SHOWN: usize = 200;

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;max-width:1200px}\
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}\
.grid{display:flex;flex-wrap:wrap;gap:8px;margin-bottom:16px}\
figure{margin:0;width:112px;font-size:11px;text-align:center}\
figure img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;background:#eee}\
figcaption{overflow-wrap:anywhere}.bad{color:#b00}";

/// HTML-escapes text for element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page; `thumbs[i]` is the image file of `part.mistakes[i]`, if any.
pub fn page(part: &EvalPart, s: &Summary, thumbs: &[Option<String>]) -> String {
    let mut h = String::new();
    let e = |s: &str| escape(s);
    let title = format!("fennec eval: {}", part.dir.display());
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
        e(&title),
        e(&title)
    );
    let _ = writeln!(
        h,
        "<p><b>accuracy {:.4}</b> ({}/{}), top-{} accuracy {:.4}; {} image files, {} skipped \
         entries; macro F1 {:.4}, weighted F1 {:.4}.</p>",
        s.accuracy,
        s.correct,
        s.images,
        s.top_k,
        s.top_k_accuracy,
        part.files,
        part.skipped.len(),
        s.macro_avg.f1,
        s.weighted_avg.f1
    );

    h.push_str("<h2>Model</h2>\n<table>\n");
    let mut row = |k: &str, v: &str| {
        let _ = writeln!(h, "<tr><th>{}</th><td>{}</td></tr>", e(k), e(v));
    };
    row("file", &part.model.display().to_string());
    row("sha256", &part.model_sha256);
    row("classes", &part.labels.join(", "));
    row("preprocessing", &part.preprocess.describe());
    if let Some(info) = part.model_info.as_object() {
        for (k, v) in info {
            if matches!(k.as_str(), "path" | "metadata") {
                continue;
            }
            row(k, &plain(v));
        }
        if let Some(meta) = info.get("metadata").and_then(|m| m.as_object()) {
            for (k, v) in meta
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "labels" | "preprocess"))
            {
                row(&format!("metadata: {k}"), &plain(v));
            }
        }
    }
    h.push_str("</table>\n");

    h.push_str(
        "<h2>Confusion matrix</h2>\n<img id=\"confusion\" src=\"confusion.png\" \
         alt=\"confusion matrix heat map\">\n<h2>Per class</h2>\n\
         <img id=\"per-class\" src=\"per_class.png\" alt=\"per-class precision, recall and F1\">\n<table>\
         <tr><th>class</th><th>support</th><th>correct</th><th>predicted</th>\
         <th>precision</th><th>recall (accuracy)</th><th>F1</th></tr>\n",
    );
    for m in &s.per_class {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td>\
             <td class=n>{:.4}</td><td class=n>{:.4}</td><td class=n>{:.4}</td></tr>",
            e(&m.label),
            m.support,
            m.correct,
            m.predicted,
            m.precision,
            m.recall,
            m.f1
        );
    }
    h.push_str("</table>\n");

    let _ = writeln!(
        h,
        "<h2>Mistakes</h2>\n<p>Per true class, the most confident mistakes first \
         (at most {} per class).</p>",
        crate::part::MISTAKES_PER_CLASS
    );
    if part.mistakes.is_empty() {
        h.push_str("<p>None.</p>\n");
    }
    let mut current = None;
    for (m, thumb) in part.mistakes.iter().zip(thumbs) {
        if current != Some(m.truth) {
            if current.is_some() {
                h.push_str("</div>\n");
            }
            current = Some(m.truth);
            let _ = writeln!(
                h,
                "<h3>{}</h3>\n<div class=\"grid\">",
                e(&part.labels[m.truth])
            );
        }
        let img = match thumb {
            Some(src) => format!("<img src=\"{}\" alt=\"{}\">", e(src), e(&m.file)),
            None => "<span class=bad>(image no longer readable)</span>".into(),
        };
        let _ = writeln!(
            h,
            "<figure>{img}<figcaption>true {}<br>predicted <b>{}</b> {:.3}<br>{}</figcaption></figure>",
            e(&part.labels[m.truth]),
            e(&part.labels[m.predicted]),
            m.confidence,
            e(&m.file)
        );
    }
    if current.is_some() {
        h.push_str("</div>\n");
    }

    if !part.skipped.is_empty() {
        let _ = writeln!(h, "<h2>Skipped ({})</h2>\n<ul>", part.skipped.len());
        for sk in part.skipped.iter().take(SKIPPED_SHOWN) {
            let _ = writeln!(h, "<li>[{}] {}</li>", e(&sk.kind), e(&sk.reason));
        }
        if part.skipped.len() > SKIPPED_SHOWN {
            let _ = writeln!(
                h,
                "<li>... and {} more (see the JSON report)</li>",
                part.skipped.len() - SKIPPED_SHOWN
            );
        }
        h.push_str("</ul>\n");
    }
    h.push_str("</body></html>\n");
    h
}

/// A JSON value as plain text: strings unquoted, objects as `key value, ...`, the rest
/// as compact JSON.
fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k} {}", plain(v)))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
