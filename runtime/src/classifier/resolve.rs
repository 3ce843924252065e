//! Which labels and preprocessing a loaded model uses, for both readers (ONNX and
//! NNEF): the user's choice over the file's own over a default; then the user's
//! changes to single preprocessing fields; then the checks that they fit the model.

use std::path::Path;

use super::{LoadOptions, Source};
use crate::error::{Error, Result};
use crate::preprocess::Preprocess;

/// The class names: the user's (`--labels`), else the file's, else the output
/// indices (`0`, `1`, ...). Their number must be the model's number of classes.
pub(super) fn labels(
    path: &Path,
    options: &LoadOptions,
    file: Option<(Vec<String>, Source)>,
    num_classes: usize,
) -> Result<(Vec<String>, Source)> {
    let (labels, source) = match (&options.labels, file) {
        (Some(user), _) => (user.clone(), Source::User),
        (None, Some(file)) => file,
        (None, None) => (
            (0..num_classes).map(|i| i.to_string()).collect(),
            Source::Default,
        ),
    };
    if labels.len() != num_classes {
        return Err(Error::not_a_classifier(
            path,
            format!(
                "{} labels ({source:?}) but the model outputs {num_classes} classes",
                labels.len()
            ),
        ));
    }
    Ok((labels, source))
}

/// The preprocessing spec: the user's whole spec (`--preprocess`), else
/// `fallback` (the file's own, or a default made from the model's input), then the
/// user's field changes (`--size`, `--filter`, ...), which make it the user's.
/// Specs that cannot make a tensor are refused.
pub(super) fn preprocess(
    path: &Path,
    options: &LoadOptions,
    fallback: impl FnOnce() -> Result<(Preprocess, Source)>,
) -> Result<(Preprocess, Source)> {
    let (mut spec, mut source) = match &options.preprocess {
        Some(user) => (user.clone(), Source::User),
        None => fallback()?,
    };
    let not_a_classifier = |e: Error| Error::not_a_classifier(path, e.to_string());
    if !options.changes.is_empty() {
        spec = options.changes.apply(&spec).map_err(not_a_classifier)?;
        source = Source::User;
    }
    spec.validate().map_err(not_a_classifier)?;
    Ok((spec, source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::{ColorMode, PreprocessChanges};

    fn file_spec() -> (Preprocess, Source) {
        (Preprocess::keras(8, 8, ColorMode::Rgb), Source::Metadata)
    }

    #[test]
    fn user_over_file_over_default_then_changes() {
        let path = Path::new("m.onnx");
        let mut options = LoadOptions::default();
        let (_, source) = preprocess(path, &options, || Ok(file_spec())).unwrap();
        assert_eq!(source, Source::Metadata);
        options.preprocess = Some(Preprocess::keras(4, 4, ColorMode::Grayscale));
        let (spec, source) = preprocess(path, &options, || Ok(file_spec())).unwrap();
        assert_eq!((spec.height, source), (4, Source::User));

        options.preprocess = None;
        options.changes =
            PreprocessChanges::from_fields(&serde_json::json!({"height": 2, "width": 3})).unwrap();
        let (spec, source) = preprocess(path, &options, || Ok(file_spec())).unwrap();
        assert_eq!((spec.height, spec.width, source), (2, 3, Source::User));
        options.changes =
            PreprocessChanges::from_fields(&serde_json::json!({"height": 0})).unwrap();
        let e = preprocess(path, &options, || Ok(file_spec())).unwrap_err();
        assert!(
            e.to_string().starts_with("m.onnx: not an image classifier"),
            "{e}"
        );

        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let file = Some((names(&["a", "b"]), Source::Metadata));
        assert_eq!(
            labels(path, &options, None, 2).unwrap(),
            (names(&["0", "1"]), Source::Default)
        );
        assert_eq!(
            labels(path, &options, file.clone(), 2).unwrap().1,
            Source::Metadata
        );
        options.labels = Some(names(&["x", "y", "z"]));
        let e = labels(path, &options, file, 2).unwrap_err().to_string();
        assert!(
            e.contains("3 labels (User) but the model outputs 2 classes"),
            "{e}"
        );
    }
}
