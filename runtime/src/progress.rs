//! One look for every progress bar of `fennec` and `fennec-train`, built in one
//! place: what is being done, the bar, done/total with a unit, the rate and the time
//! left, on stderr. When stderr is not a terminal (a log file, a pipe, a test) the
//! bar is hidden, so scripted output stays clean.

use std::borrow::Cow;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar for `len` units of `unit` (`"img"`, `"files"`), labelled `phase` (`"eval"`,
/// `"epoch 3/10"`); text set with [`ProgressBar::set_message`] shows after the ETA.
/// Hidden unless `show` and stderr is a terminal; a hidden bar still counts, and its
/// `suspend` simply runs the closure, so callers need no second code path.
pub fn bar(len: u64, phase: impl Into<Cow<'static, str>>, unit: &str, show: bool) -> ProgressBar {
    if !show || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let template = format!(
        "{{prefix}} [{{elapsed_precise}}] [{{wide_bar}}] {{pos}}/{{len}} {unit} {{per_sec}} ETA {{eta}} {{msg}}"
    );
    let bar = ProgressBar::new(len).with_prefix(phase);
    bar.set_style(
        ProgressStyle::with_template(&template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_when_not_shown_but_still_counts() {
        let b = bar(10, "eval", "img", false);
        assert!(b.is_hidden());
        b.inc(3);
        assert_eq!(b.position(), 3);
        assert_eq!(b.suspend(|| 7), 7);
    }
}
