//! `fennec-train preview CONFIG`: a PNG grid of one training batch with labels,
//! augmentation applied, as the config would feed it to the model.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use fennec_train::config::Config;
use fennec_train::data::Subset;
use fennec_train::preview::{PreviewOptions, render_preview, write_png};
use serde_json::json;

#[derive(Debug, Args)]
pub struct PreviewArgs {
    /// YAML config: its input size, preprocessing and training.augmentation are used.
    config: PathBuf,

    /// Data folder; images are read from DIR/train/<class>/*.
    #[arg(long, value_name = "DIR", default_value = "data")]
    data: PathBuf,

    /// Output PNG file.
    #[arg(short, long, value_name = "FILE.png", default_value = "preview.png")]
    output: PathBuf,

    /// Number of images [default: the config's batch size, at most 16].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    count: Option<u32>,

    /// Seed for picking the images and their augmentation [default: the config's seed].
    #[arg(long)]
    seed: Option<u64>,

    /// Show the images without augmentation.
    #[arg(long)]
    no_augment: bool,

    /// Print what was drawn as JSON: size, grid, one entry per tile.
    #[arg(long)]
    json: bool,
}

pub fn run(args: PreviewArgs) -> Result<ExitCode> {
    let config = Config::load(&args.config)?;
    let t = &config.training;
    let opts = PreviewOptions {
        count: args.count.map_or(t.batch_size.min(16), |n| n as usize),
        seed: args.seed.unwrap_or(t.seed),
        augment: !args.no_augment,
    };
    let train_dir = args.data.join(Subset::Train.dir_name());
    let preview = render_preview(&config, &train_dir, &opts)?;
    write_png(&args.output, &preview.image)?;
    let (w, h) = preview.image.dimensions();
    let augmented = opts.augment && !t.augmentation.is_off();

    for s in &preview.skipped {
        eprintln!("warning: skipped {}", s.reason);
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let report = json!({
            "output": args.output,
            "width": w,
            "height": h,
            "columns": preview.columns,
            "rows": preview.rows,
            "seed": opts.seed,
            "augmentation": augmented,
            "tiles": preview.tiles,
            "skipped": preview.skipped,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        let aug = if augmented {
            format!(
                "augmentation on: {}",
                serde_json::to_string(&t.augmentation)?
            )
        } else if t.augmentation.is_off() {
            "no augmentation in the config".into()
        } else {
            "augmentation off (--no-augment)".into()
        };
        writeln!(
            out,
            "wrote {}: {} images from {} ({}x{} grid, {w}x{h} px, seed {}), {aug}",
            args.output.display(),
            preview.tiles.len(),
            train_dir.display(),
            preview.columns,
            preview.rows,
            opts.seed,
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
