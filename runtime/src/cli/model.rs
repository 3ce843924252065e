//! The flags that name a model and stand in for what its file does not say: labels,
//! a whole preprocessing spec, or changes to single fields of it.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Result;
use clap::Args;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use fennec_runtime::{
    Classifier, ColorMode, LoadOptions, Preprocess, PreprocessChanges, ResizeFilter, ResizeMode,
    Source,
};
use serde::Serialize;
use strum::{EnumMessage, VariantNames};

/// The model and everything that can stand in for missing metadata.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// ONNX model file (or a .nnef.tgz written by `fennec convert`).
    pub model: PathBuf,

    /// Class names, one per line, in output order (replaces the model's labels).
    #[arg(long, value_name = "FILE", help_heading = "Model")]
    pub labels: Option<PathBuf>,

    /// Preprocessing spec as YAML (keys: height, width, color, resize, filter, scale,
    /// mean, std, layout), replacing the model's own.
    #[arg(long, value_name = "FILE.yaml", help_heading = "Preprocessing")]
    pub preprocess: Option<PathBuf>,

    #[command(flatten)]
    pub changes: PreprocessFlags,
}

/// Changes to single fields of the spec. Serialised, they are those fields in the
/// spec's own spelling (unset flags left out): the library's `PreprocessChanges`.
#[derive(Debug, Args, Serialize)]
pub struct PreprocessFlags {
    /// Input size HxW (e.g. 224x224) when the model does not fix it.
    #[arg(long, value_name = "HxW", value_parser = parse_size, help_heading = "Preprocessing")]
    #[serde(flatten)]
    size: Option<Size>,

    /// Colour mode.
    #[arg(long, value_parser = enum_value::<ColorMode>(), help_heading = "Preprocessing")]
    #[serde(skip_serializing_if = "Option::is_none")]
    color: Option<ColorMode>,

    /// How images are fitted to the input size.
    #[arg(long, value_parser = enum_value::<ResizeMode>(), help_heading = "Preprocessing")]
    #[serde(skip_serializing_if = "Option::is_none")]
    resize: Option<ResizeMode>,

    /// Resampling filter.
    #[arg(long, value_parser = enum_value::<ResizeFilter>(), help_heading = "Preprocessing")]
    #[serde(skip_serializing_if = "Option::is_none")]
    filter: Option<ResizeFilter>,

    /// Multiplier for 0-255 pixel values (default 1/255 = 0.00392...).
    #[arg(long, help_heading = "Preprocessing")]
    #[serde(skip_serializing_if = "Option::is_none")]
    scale: Option<f32>,

    /// Per-channel mean subtracted after scaling, comma-separated (e.g. 0.485,0.456,0.406).
    #[arg(long, value_delimiter = ',', num_args = 1.., allow_negative_numbers = true, help_heading = "Preprocessing")]
    #[serde(skip_serializing_if = "Option::is_none")]
    mean: Option<Vec<f32>>,

    /// Per-channel std divided after the mean, comma-separated.
    #[arg(long, value_delimiter = ',', num_args = 1.., help_heading = "Preprocessing")]
    #[serde(skip_serializing_if = "Option::is_none")]
    std: Option<Vec<f32>>,
}

/// `--size`: the spec's `height` and `width`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
struct Size {
    height: u32,
    width: u32,
}

impl ModelArgs {
    /// Loads the model with the user's labels and preprocessing, or fails naming the file.
    pub fn load(&self) -> Result<Classifier> {
        let labels = match &self.labels {
            Some(p) => Some(fennec_runtime::folder::read_labels(p)?),
            None => None,
        };
        let preprocess = match &self.preprocess {
            Some(p) => {
                let text = fs_err::read_to_string(p)?;
                let spec: Preprocess = serde_yaml::from_str(&text).map_err(|e| {
                    anyhow::anyhow!("{}: invalid preprocessing spec: {e}", p.display())
                })?;
                Some(spec)
            }
            None => None,
        };
        let options = LoadOptions {
            labels,
            preprocess,
            changes: PreprocessChanges::from_fields(&self.changes)?,
        };
        Ok(Classifier::load(&self.model, &options)?)
    }
}

/// Notes on stderr about anything fennec had to guess, so a default is never silent.
pub fn print_defaults_note(c: &Classifier) {
    if c.info.labels_source == Source::Default {
        eprintln!(
            "note: {} has no class names; showing output indices 0..{} (give --labels FILE)",
            c.info.path.display(),
            c.labels.len() - 1
        );
    }
    if c.info.preprocess_source == Source::Default {
        eprintln!(
            "note: {} has no preprocessing metadata; using Keras defaults from its input shape: {}",
            c.info.path.display(),
            c.preprocess.describe()
        );
    }
}

fn parse_size(s: &str) -> Result<Size> {
    let (h, w) = s.split_once(['x', 'X']).unwrap_or((s, s));
    let parse = |v: &str| v.trim().parse::<u32>().ok().filter(|&v| v > 0);
    match (parse(h), parse(w)) {
        (Some(height), Some(width)) => Ok(Size { height, width }),
        _ => anyhow::bail!("'{s}' is not a size like 224x224 or 224"),
    }
}

/// The value parser of a flag whose values are a library enum, which names them as
/// its YAML does (`center_crop`, with strum) and has no clap. The command line lists
/// and takes them in clap's kebab case (`center-crop`), each with its doc comment
/// as help, as a clap `ValueEnum` would.
fn enum_value<T>() -> impl TypedValueParser<Value = T>
where
    T: VariantNames
        + FromStr<Err = strum::ParseError>
        + EnumMessage
        + Clone
        + Send
        + Sync
        + 'static,
{
    let values = T::VARIANTS.iter().map(|name| {
        let doc = name.parse::<T>().ok().and_then(|v| v.get_documentation());
        // One line without the final full stop, as clap shows doc comments.
        let help = doc.map_or(String::new(), |d| {
            let line = d.split_whitespace().collect::<Vec<_>>().join(" ");
            line.strip_suffix('.').unwrap_or(&line).to_string()
        });
        PossibleValue::new(name.replace('_', "-")).help(help)
    });
    PossibleValuesParser::new(values).try_map(|s| s.replace('-', "_").parse::<T>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let size = |height, width| Size { height, width };
        assert_eq!(parse_size("224x200").unwrap(), size(224, 200));
        assert_eq!(parse_size("28").unwrap(), size(28, 28));
        assert!(parse_size("0x5").is_err());
        assert!(parse_size("abc").is_err());
    }

    #[test]
    fn flags_become_the_spec_fields() {
        use clap::FromArgMatches;
        let parse = |args: &[&str]| {
            let cmd = PreprocessFlags::augment_args(clap::Command::new("t"));
            let matches = cmd.try_get_matches_from(args).unwrap();
            PreprocessFlags::from_arg_matches(&matches).unwrap()
        };
        let none = PreprocessChanges::from_fields(&parse(&["t"])).unwrap();
        assert!(none.is_empty());
        let flags = parse(&[
            "t",
            "--size",
            "8x9",
            "--resize",
            "center-crop",
            "--mean=-1,2",
        ]);
        let spec = PreprocessChanges::from_fields(&flags)
            .unwrap()
            .apply(&Preprocess::keras(4, 4, ColorMode::Rgb))
            .unwrap();
        assert_eq!((spec.height, spec.width), (8, 9));
        assert_eq!(
            (spec.resize, spec.mean),
            (ResizeMode::CenterCrop, vec![-1.0, 2.0])
        );
    }
}
