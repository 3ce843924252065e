//! The config as written in YAML. The tutorial's layout gives the model input's
//! size and channels under `input:` and the rest of the preprocessing under
//! `preprocess:`; [`Config`] holds both as the runtime's one [`Preprocess`]. This
//! file is the only place that knows the split: `preprocess:` is read and written
//! by `Preprocess`'s own serde (its keys, defaults and unknown-key errors), less the
//! keys that `input:` sets.

use fennec_runtime::preprocess::{ColorMode, Layout, Preprocess};
use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};

use super::{Config, LayerSpec, Training};

/// The keys of [`Preprocess`] that come from `input:` (or are fixed: burn trains NCHW).
const INPUT_KEYS: [&str; 4] = ["height", "width", "color", "layout"];

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConfigFile {
    name: String,
    input: Input,
    /// Preprocessing beyond the input size (resize, filter, scale, mean, std).
    #[serde(default, skip_serializing_if = "Mapping::is_empty")]
    preprocess: Mapping,
    /// YAML enums are written as one-key maps (`- conv2d: {...}`), not `!tags`.
    #[serde(with = "serde_yaml::with::singleton_map_recursive")]
    layers: Vec<LayerSpec>,
    #[serde(default)]
    training: Training,
}

/// `input: {height: 224, width: 224, channels: 3}`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    height: u32,
    width: u32,
    /// 3 (RGB) or 1 (grayscale).
    channels: u32,
}

/// A key that the YAML layout does not allow where it was written, or a
/// `preprocess:` value that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("input.channels must be 1 (grayscale) or 3 (rgb), got {0}")]
    Channels(u32),
    #[error(
        "preprocess.{0}: the input size and channels are set under input: (the layout is always NCHW)"
    )]
    InputKey(&'static str),
    #[error("preprocess: {0}")]
    Preprocess(serde_yaml::Error),
}

impl TryFrom<ConfigFile> for Config {
    type Error = LayoutError;

    fn try_from(f: ConfigFile) -> Result<Config, LayoutError> {
        let color = match f.input.channels {
            1 => ColorMode::Grayscale,
            3 => ColorMode::Rgb,
            n => return Err(LayoutError::Channels(n)),
        };
        let mut keys = f.preprocess;
        if let Some(key) = INPUT_KEYS.into_iter().find(|&k| keys.contains_key(k)) {
            return Err(LayoutError::InputKey(key));
        }
        let input = Preprocess::keras(f.input.height, f.input.width, color);
        for (key, value) in to_mapping(&input) {
            if INPUT_KEYS.iter().any(|&k| key == k) {
                keys.insert(key, value);
            }
        }
        let preprocess =
            serde_yaml::from_value(Value::Mapping(keys)).map_err(LayoutError::Preprocess)?;
        Ok(Config {
            name: f.name,
            preprocess,
            layers: f.layers,
            training: f.training,
        })
    }
}

impl From<Config> for ConfigFile {
    /// `preprocess:` lists only what differs from Keras' defaults at the input size,
    /// so a resolved config reads like the one the user wrote.
    fn from(c: Config) -> ConfigFile {
        let p = &c.preprocess;
        let defaults = to_mapping(&Preprocess::keras(p.height, p.width, p.color));
        let preprocess = to_mapping(p)
            .into_iter()
            .filter(|(key, value)| {
                !INPUT_KEYS.iter().any(|&k| key == k) && defaults.get(key) != Some(value)
            })
            .collect();
        ConfigFile {
            name: c.name,
            input: Input {
                height: p.height,
                width: p.width,
                channels: p.channels() as u32,
            },
            preprocess,
            layers: c.layers,
            training: c.training,
        }
    }
}

fn to_mapping(p: &Preprocess) -> Mapping {
    debug_assert_eq!(p.layout, Layout::Nchw, "burn trains NCHW");
    match serde_yaml::to_value(p) {
        Ok(Value::Mapping(m)) => m,
        other => unreachable!("a Preprocess serialises as a mapping, got {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::MODEL_3;
    use fennec_runtime::preprocess::{ResizeFilter, ResizeMode};

    #[test]
    fn input_and_preprocess_keys_make_one_preprocess() {
        let c = Config::parse(MODEL_3, "m3").unwrap();
        assert_eq!(c.preprocess, Preprocess::keras(224, 224, ColorMode::Rgb));
        let custom = MODEL_3.replace(
            "channels: 3}",
            "channels: 1}\npreprocess: {resize: center_crop, filter: bilinear, scale: 0.5, mean: [0.5], std: [0.25]}",
        );
        let c = Config::parse(&custom, "c").unwrap();
        let p = &c.preprocess;
        assert_eq!(
            (p.height, p.width, p.color),
            (224, 224, ColorMode::Grayscale)
        );
        assert_eq!(
            (p.resize, p.filter),
            (ResizeMode::CenterCrop, ResizeFilter::Bilinear)
        );
        assert_eq!(
            (p.scale, &p.mean[..], &p.std[..]),
            (0.5, &[0.5][..], &[0.25][..])
        );
        assert_eq!(p.layout, Layout::Nchw);

        // Written and read back: the same config; defaults are left out.
        for config in [Config::parse(MODEL_3, "m3").unwrap(), c] {
            let text = serde_yaml::to_string(&config).unwrap();
            assert_eq!(Config::parse(&text, "again").unwrap(), config, "{text}");
        }
        let plain = serde_yaml::to_string(&Config::parse(MODEL_3, "m3").unwrap()).unwrap();
        assert!(!plain.contains("preprocess"), "{plain}");
    }

    #[test]
    fn misplaced_and_unknown_preprocess_keys_are_named() {
        let with = |keys: &str| {
            let yaml = MODEL_3.replace(
                "channels: 3}",
                &format!("channels: 3}}\npreprocess: {{{keys}}}"),
            );
            Config::parse(&yaml, "p.yaml").unwrap_err().to_string()
        };
        let e = with("height: 10");
        assert!(
            e.contains("p.yaml") && e.contains("preprocess.height") && e.contains("input:"),
            "{e}"
        );
        let e = with("layout: nhwc");
        assert!(e.contains("preprocess.layout"), "{e}");
        let e = with("fliter: bilinear");
        assert!(e.contains("preprocess") && e.contains("fliter"), "{e}");
        let e = with("resize: squash");
        assert!(e.contains("preprocess") && e.contains("squash"), "{e}");
        let e = with("std: [0.0]");
        assert!(e.contains("preprocess") && e.contains("non-zero"), "{e}");
    }
}
