//! Files the tests share: the YAML configs of `tests/fixtures/` (each tiny model
//! written once, varied by the tests that need a variant) and the repository root.

use std::path::{Path, PathBuf};

/// The repository root (the workspace holding `configs/`, `models/`, `data/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository root")
        .to_path_buf()
}

/// The text of `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Writes `yaml` to `dir/name` and returns its path.
pub fn config(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

/// `tests/fixtures/<name>` with each `(from, to)` replaced; `from` must occur
/// exactly once, so a variant cannot silently stop differing from its fixture.
pub fn fixture_with(name: &str, edits: &[(&str, &str)]) -> String {
    let mut text = fixture(name);
    for (from, to) in edits {
        assert_eq!(
            text.matches(from).count(),
            1,
            "{name}: {from:?} must occur exactly once"
        );
        text = text.replace(from, to);
    }
    text
}
