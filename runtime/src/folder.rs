//! Finding images on disk: `<root>/<class>/<images>` folders (like Keras'
//! `flow_from_directory`) and lists of files, directories or globs given on a command line.
//!
//! Listing is cheap and deterministic (sorted), and never fails on one bad entry:
//! unreadable sub-folders and files without an image extension are collected as
//! [`Skipped`] entries for the caller to report.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::decode::{has_image_extension, io_reason};
use crate::error::{Error, Result};

/// How deep to descend into a class folder (guards against symlink loops).
const MAX_DEPTH: usize = 16;

/// A path that was not used, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub path: PathBuf,
    /// Short category: `unreadable`, `not_an_image`, `corrupt`, ...
    pub kind: String,
    /// One-line explanation naming the file.
    pub reason: String,
}

/// A labelled image folder: classes are the sorted sub-folder names.
#[derive(Debug, Clone)]
pub struct ClassFolders {
    pub root: PathBuf,
    pub classes: Vec<String>,
    /// `(file, class index)`, grouped by class, sorted by path within a class.
    pub files: Vec<(PathBuf, usize)>,
    /// Files without an image extension and unreadable folders.
    pub skipped: Vec<Skipped>,
}

impl ClassFolders {
    /// Number of files per class, in class order.
    pub fn counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for (_, c) in &self.files {
            counts[*c] += 1;
        }
        counts
    }
}

/// Scans `root/<class>/**/<image>`. Errors when `root` is missing, not a folder, or
/// has no class sub-folders. Hidden entries (`.name`) are ignored; an empty class
/// folder is kept (with zero files) so class indices stay stable.
pub fn scan_class_folders(root: &Path) -> Result<ClassFolders> {
    let folder_err = |reason: String| Error::input(root, reason);
    let meta = fs::metadata(root).map_err(|e| folder_err(io_reason(&e)))?;
    if !meta.is_dir() {
        return Err(folder_err("not a directory".into()));
    }
    let mut skipped = Vec::new();
    let mut class_dirs: Vec<(String, PathBuf)> = Vec::new();
    for entry in read_dir_sorted(root).map_err(|e| folder_err(io_reason(&e)))? {
        if is_hidden(&entry) {
            continue;
        }
        if entry.is_dir() {
            let name = entry
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            class_dirs.push((name, entry));
        } else {
            skipped.push(skip(
                &entry,
                "not_in_class_folder",
                "file directly under the root, not in a class folder",
            ));
        }
    }
    if class_dirs.is_empty() {
        return Err(folder_err(format!(
            "no class folders (expected {}/<class>/<images>)",
            root.display()
        )));
    }
    let mut files = Vec::new();
    for (ix, (_, dir)) in class_dirs.iter().enumerate() {
        let mut found = Vec::new();
        walk(dir, 0, &mut found, &mut skipped);
        found.sort();
        files.extend(found.into_iter().map(|f| (f, ix)));
    }
    Ok(ClassFolders {
        root: root.to_path_buf(),
        classes: class_dirs.into_iter().map(|(n, _)| n).collect(),
        files,
        skipped,
    })
}

/// Expands command-line inputs into image files: files are kept as given (even
/// without an image extension, so the decoder can say what is wrong), directories
/// are walked recursively for image files, and patterns with `*`, `?` or `[` are
/// globbed. An input that matches nothing is an error naming it.
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<(Vec<PathBuf>, Vec<Skipped>)> {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for input in inputs {
        let text = input.to_string_lossy();
        let is_pattern = !input.exists() && text.contains(['*', '?', '[']);
        if is_pattern {
            let matches: Vec<PathBuf> = glob::glob(&text)
                .map_err(|e| Error::input(input, format!("bad pattern: {e}")))?
                .filter_map(|m| m.ok())
                .collect();
            if matches.is_empty() {
                return Err(Error::input(input, "pattern matches no file"));
            }
            for m in matches {
                if m.is_dir() {
                    walk(&m, 0, &mut files, &mut skipped);
                } else if has_image_extension(&m) {
                    files.push(m);
                }
            }
        } else if input.is_dir() {
            let before = files.len();
            walk(input, 0, &mut files, &mut skipped);
            if files.len() == before && skipped.is_empty() {
                return Err(Error::input(input, "no image files in this directory"));
            }
            files[before..].sort();
        } else {
            // Plain file (or missing: decoding reports "no such file" for it).
            files.push(input.clone());
        }
    }
    Ok((files, skipped))
}

/// Collects image files under `dir` (recursively, sorted per folder).
fn walk(dir: &Path, depth: usize, files: &mut Vec<PathBuf>, skipped: &mut Vec<Skipped>) {
    if depth > MAX_DEPTH {
        skipped.push(skip(
            dir,
            "too_deep",
            &format!("folder nested deeper than {MAX_DEPTH} levels"),
        ));
        return;
    }
    let entries = match read_dir_sorted(dir) {
        Ok(e) => e,
        Err(e) => {
            skipped.push(skip(
                dir,
                "unreadable",
                &format!("cannot list folder: {}", io_reason(&e)),
            ));
            return;
        }
    };
    for entry in entries {
        if is_hidden(&entry) {
            continue;
        }
        if entry.is_dir() {
            walk(&entry, depth + 1, files, skipped);
        } else if has_image_extension(&entry) {
            files.push(entry);
        } else {
            skipped.push(skip(&entry, "not_an_image", "no image file extension"));
        }
    }
}

fn read_dir_sorted(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    entries.sort();
    Ok(entries)
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."))
}

fn skip(path: &Path, kind: &str, reason: &str) -> Skipped {
    Skipped {
        path: path.to_path_buf(),
        kind: kind.into(),
        reason: format!("{}: {reason}", path.display()),
    }
}

/// Reads a labels file: one class name per line, surrounding blanks trimmed, empty
/// lines at the end ignored. Empty lines in the middle or duplicates are errors.
pub fn read_labels(path: &Path) -> Result<Vec<String>> {
    let text = fs_err::read_to_string(path)?;
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let end = lines
        .iter()
        .rposition(|l| !l.is_empty())
        .map_or(0, |i| i + 1);
    let labels: Vec<String> = lines[..end].iter().map(|s| s.to_string()).collect();
    let bad = |reason: String| Error::input(path, reason);
    if labels.is_empty() {
        return Err(bad("no labels in the file".into()));
    }
    if let Some(i) = labels.iter().position(String::is_empty) {
        return Err(bad(format!("line {} is empty", i + 1)));
    }
    for (i, l) in labels.iter().enumerate() {
        if labels[..i].contains(l) {
            return Err(bad(format!("label '{l}' appears twice (line {})", i + 1)));
        }
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::tempdir;

    fn touch(p: &Path) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, b"x").unwrap();
    }

    #[test]
    fn scans_sorted_classes_and_files() {
        let dir = tempdir().unwrap();
        let r = dir.path();
        touch(&r.join("dog/b.jpg"));
        touch(&r.join("dog/a.PNG"));
        touch(&r.join("cat/sub/z.jpeg"));
        touch(&r.join("cat/readme.txt"));
        touch(&r.join("cat/.hidden.jpg"));
        fs::create_dir_all(r.join("empty")).unwrap();
        let f = scan_class_folders(r).unwrap();
        assert_eq!(f.classes, vec!["cat", "dog", "empty"]);
        let names: Vec<_> = f
            .files
            .iter()
            .map(|(p, c)| (p.strip_prefix(r).unwrap().to_owned(), *c))
            .collect();
        assert_eq!(
            names,
            vec![
                ("cat/sub/z.jpeg".into(), 0),
                ("dog/a.PNG".into(), 1),
                ("dog/b.jpg".into(), 1)
            ]
        );
        assert_eq!(f.counts(), vec![1, 2, 0]);
        assert_eq!(f.skipped.len(), 1);
        assert_eq!(f.skipped[0].kind, "not_an_image");
    }

    #[test]
    fn missing_and_flat_roots_are_errors() {
        let dir = tempdir().unwrap();
        let e = scan_class_folders(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope") && e.contains("no such file"), "{e}");
        touch(&dir.path().join("a.jpg"));
        let e = scan_class_folders(dir.path()).unwrap_err().to_string();
        assert!(e.contains("no class folders"), "{e}");
    }

    #[test]
    fn labels_file() {
        let dir = tempdir().unwrap();
        let p = dir.path().join("labels.txt");
        fs::write(&p, "cat\n dog \n\n").unwrap();
        assert_eq!(read_labels(&p).unwrap(), vec!["cat", "dog"]);
        fs::write(&p, "cat\n\ndog\n").unwrap();
        assert!(
            read_labels(&p)
                .unwrap_err()
                .to_string()
                .contains("line 2 is empty")
        );
        fs::write(&p, "cat\ncat\n").unwrap();
        assert!(read_labels(&p).is_err());
    }
}
