//! The shipped pieces fit together, tried as a new user would:
//!
//! - the shipped model (`models/fashion_model_3.onnx`) scores the shipped data
//!   (`data/fashion-mini`) as is: its labels are the data's class folders, and its
//!   accuracy there is the model card's, give or take the subset's sampling error;
//! - the commands of the README's and the model cards' `sh` blocks run as written,
//!   with the test build's `fennec` and `fennec-train` first on `PATH`. A line that
//!   needs what is not shipped is skipped by a rule of [`SKIP`], which says why, and
//!   the skips are printed; a line that no rule covers must be a `fennec` or
//!   `fennec-train` command, and then it runs and must exit 0;
//! - the README's example config is a valid config.

// Links stand in for the checkout and the binaries: Unix only, as the suite runs.
#![cfg(unix)]

use std::path::{Path, PathBuf};

use fennec_e2e::{Outcome, bin, config, fennec, fennec_train, repo_root, tempdir};
use serde_json::Value;

const MODEL: &str = "models/fashion_model_3.onnx";
const DATA: &str = "data/fashion-mini";

/// A line is skipped when one of its words passes a rule's test: (rule, test, why).
type Rule = (&'static str, fn(&str) -> bool, &'static str);

const SKIP: &[Rule] = &[
    (
        "cats and dogs",
        |w| w == "PetImages/" || w == "data/" || w == "data/test" || w.starts_with("runs/m3"),
        "the tutorial's photos (PetImages/, split into data/, trained into runs/m3) are not shipped",
    ),
    (
        "full Fashion-MNIST",
        |w| {
            w == "data/fashion"
                || w.starts_with("data/fashion/")
                || w.starts_with("runs/fashion_model_3")
        },
        "data/fashion is the whole Fashion-MNIST, made from a downloaded Debian package: not shipped",
    ),
    (
        "synopsis",
        |w| {
            [
                "MODEL.onnx",
                "MODEL.nnef.tgz",
                "IMG...",
                "DIR",
                "FOLDER",
                "photo.png",
            ]
            .contains(&w)
        },
        "a usage summary: MODEL.onnx, IMG..., DIR, FOLDER and photo.png stand for the user's files",
    ),
    (
        "cargo",
        |w| w == "cargo",
        "builds or tests the workspace: `cargo test --workspace` is what runs this test",
    ),
    (
        "demo",
        |w| w == "scripts/demo.sh",
        "rebuilds, trains for minutes and writes runs/demo: run on its own",
    ),
];

/// The command lines of the ```sh blocks of a Markdown file (comments kept: the
/// shell drops them).
fn sh_lines(markdown: &str) -> Vec<String> {
    let mut in_sh = false;
    let mut lines = Vec::new();
    for line in markdown.lines() {
        let fence = line.trim_start().strip_prefix("```");
        match (in_sh, fence) {
            (false, Some(lang)) => in_sh = lang.trim() == "sh",
            (true, Some(_)) => in_sh = false,
            (true, None) if !line.trim().is_empty() && !line.trim().starts_with('#') => {
                lines.push(line.trim().to_string())
            }
            _ => {}
        }
    }
    lines
}

/// The first rule that skips `line`.
fn skip_rule(line: &str) -> Option<&'static Rule> {
    let words: Vec<&str> = line.split('#').next().unwrap().split_whitespace().collect();
    SKIP.iter()
        .find(|(_, test, _)| words.iter().any(|w| test(w)))
}

/// The Markdown files whose commands must run: README.md and the model cards.
fn documents() -> Vec<PathBuf> {
    let root = repo_root();
    let mut docs = vec![root.join("README.md")];
    let mut cards: Vec<PathBuf> = std::fs::read_dir(root.join("models"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    cards.sort();
    docs.extend(cards);
    docs
}

/// A folder that looks like the repository root to a command (a link to each of
/// its top-level entries but `.git`, `target` and `runs`), so that files a command
/// writes land in the temporary folder, not in the checkout.
fn checkout_view(dir: &Path) -> PathBuf {
    let view = dir.join("repo");
    std::fs::create_dir_all(&view).unwrap();
    for entry in std::fs::read_dir(repo_root()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if [".git", "target", "runs"].iter().any(|n| name == *n) {
            continue;
        }
        std::os::unix::fs::symlink(entry.path(), view.join(&name)).unwrap();
    }
    view
}

/// `dir/bin` holding `fennec` and `fennec-train`: links to the test build's binaries.
fn bin_dir(dir: &Path) -> PathBuf {
    let bins = dir.join("bin");
    std::fs::create_dir_all(&bins).unwrap();
    for name in ["fennec", "fennec-train"] {
        std::os::unix::fs::symlink(bin(name), bins.join(name)).unwrap();
    }
    bins
}

#[test]
fn readme_commands_run_as_written() {
    let d = tempdir();
    let view = checkout_view(d.path());
    let path = std::env::join_paths(std::iter::once(bin_dir(d.path())).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    let mut ran = 0;
    for doc in documents() {
        let name = doc.strip_prefix(repo_root()).unwrap().display().to_string();
        for line in sh_lines(&std::fs::read_to_string(&doc).unwrap()) {
            if let Some((rule, _, why)) = skip_rule(&line) {
                eprintln!("SKIP {name}: `{line}`\n     rule {rule:?}: {why}");
                continue;
            }
            let program = line.split_whitespace().next().unwrap();
            assert!(
                program == "fennec" || program == "fennec-train",
                "{name}: `{line}` is neither a fennec command nor covered by a rule of SKIP \
                 in tests/shipped.rs: make it run here or add a rule that says why not"
            );
            eprintln!("RUN  {name}: `{line}`");
            assert_cmd::Command::new("sh")
                .args(["-c", &line])
                .current_dir(&view)
                .env("PATH", &path)
                .assert()
                .success();
            ran += 1;
        }
    }
    assert!(ran > 0, "no README command ran");
}

/// Sorted folder names of `dir`.
fn class_folders(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn shipped_model_scores_the_shipped_data() {
    let root = repo_root();
    let model = root.join(MODEL);
    let info: Value = serde_json::from_str(&fennec!("info", model, "--json").ok()).unwrap();
    let labels: Vec<String> = serde_json::from_value(info["labels"].clone()).unwrap();
    for split in ["train", "validation", "test"] {
        assert_eq!(
            class_folders(&root.join(DATA).join(split)),
            labels,
            "{DATA}/{split}: class folders are not {MODEL}'s labels"
        );
    }
    let test = root.join(DATA).join("test");
    let report: Value =
        serde_json::from_str(&fennec!("eval", model, test, "--json", "-", "-q").ok()).unwrap();
    assert_eq!(report["scored"], 1000, "{report}");
    assert_eq!(report["skipped"].as_array().map(Vec::len), Some(0));
    // The model card: 91.16 % on the 10,000 official test images. These 1,000 are
    // drawn from them, so about one point of sampling error; 88 % is three.
    let accuracy = report["accuracy"].as_f64().unwrap();
    eprintln!("{MODEL} on {DATA}/test: accuracy {accuracy:.4}");
    assert!(accuracy > 0.88, "accuracy {accuracy}");
}

#[test]
fn readme_example_config_is_valid() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let yaml = readme
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("README.md has a ```yaml block");
    let d = tempdir();
    let cfg = config(d.path(), "readme.yaml", yaml);
    fennec_train!("summary", cfg).ok();
}
