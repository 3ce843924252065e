//! Training data: `DATA/<split>/<class>/*` folders → checked examples → batches of
//! normalised NCHW tensors, decoded ahead of the training step.
//!
//! - Splits are scanned with the runtime's [`scan_class_folders`] (classes = sorted
//!   folder names, as Keras' `flow_from_directory`); the classes of train, validation
//!   (and test) must agree.
//! - Pixels come only from the shared [`Preprocess`] contract: [`decode_file`], then
//!   [`Preprocess::pixels`] (colour + geometry), then [`Preprocess::normalize`], so the
//!   runtime sees exactly what the trainer saw.
//! - [`LabelledFolder::check`] decodes every file once, in parallel, before training: corrupt
//!   files are reported and dropped (or rejected with `--strict`), and the same pass
//!   fills an in-memory cache of the decoded `u8` pixels when wanted.
//! - [`BatchStream`] produces batches on a background thread (parallel decode or cache
//!   copy, augmentation, normalisation), at most [`PREFETCH`] batches ahead.
//! - Epoch order and augmentation seeds come from [`crate::seeds`], pure functions of
//!   (seed, epoch, index), so epoch k is the same whether or not the run was resumed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use fennec_runtime::decode::{DecodeLimits, decode_file};
use fennec_runtime::error::ImageError;
use fennec_runtime::folder::{Skipped, scan_class_folders};
use fennec_runtime::preprocess::Preprocess;
use rayon::prelude::*;
use serde::Serialize;

use crate::seeds::image_seed;

/// Batches decoded ahead of the one being trained on.
pub const PREFETCH: usize = 2;

/// The split folders of a data directory (Keras' names), in the order `split` fills
/// and prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subset {
    Train,
    Validation,
    Test,
}

impl Subset {
    pub const ALL: [Subset; 3] = [Subset::Train, Subset::Validation, Subset::Test];

    /// The folder name: `train`, `validation` or `test`.
    pub fn dir_name(self) -> &'static str {
        match self {
            Subset::Train => "train",
            Subset::Validation => "validation",
            Subset::Test => "test",
        }
    }
}

/// Problems with a data directory. Each names the folder it is about.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(
        "{path}: data directory not found (expected {path}/train/<class>/* and {path}/validation/<class>/*)"
    )]
    MissingDataDir { path: PathBuf },
    #[error("{path}: the '{split}' split is missing (expected {path}/{split}/<class>/<images>)")]
    MissingSplit { path: PathBuf, split: &'static str },
    #[error("{path}: {reason}")]
    Folder { path: PathBuf, reason: String },
    #[error("{path}: only {count} class folder(s) ({classes}); a classifier needs at least 2")]
    TooFewClasses {
        path: PathBuf,
        count: usize,
        classes: String,
    },
    #[error("{path}: class folder has no image files")]
    EmptyClass { path: PathBuf },
    #[error("class folders differ: {a} has [{a_classes}] but {b} has [{b_classes}]")]
    ClassMismatch {
        a: PathBuf,
        a_classes: String,
        b: PathBuf,
        b_classes: String,
    },
    #[error("{path}: no usable image files")]
    NoImages { path: PathBuf },
    #[error("{count} unreadable image file(s) and --strict is set; first: {first}")]
    Strict { count: usize, first: String },
    #[error("{0} (the file changed after the check at the start of training)")]
    Changed(ImageError),
    /// The compute device failed on a batch (a GPU out of memory or lost); the data
    /// were fine, but this is where a batch's results are read back.
    #[error("the compute device failed on a batch: {0}")]
    Compute(String),
    #[error("cannot start the data loader thread: {0}")]
    Thread(std::io::Error),
}

/// One labelled image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub path: PathBuf,
    pub label: usize,
}

/// A labelled `<root>/<class>/*` folder: one split of a data directory (`train`,
/// `validation`, `test`) or a folder given to `evaluate`.
#[derive(Debug)]
pub struct LabelledFolder {
    pub name: String,
    pub root: PathBuf,
    pub classes: Vec<String>,
    /// Usable examples: after [`LabelledFolder::check`], only the files that decoded.
    pub examples: Vec<Example>,
    /// Files left out, with the reason: no image extension, unreadable folder (from
    /// the scan), or failed to decode (from the check).
    pub skipped: Vec<Skipped>,
    /// Decoded pixels of `examples[i]` at `i * image_len`, when cached.
    cache: Option<Vec<u8>>,
}

impl LabelledFolder {
    /// Scans `root/<class>/*`. Requires at least two classes.
    pub fn scan(name: &str, root: &Path) -> Result<LabelledFolder, DataError> {
        let folders = scan_class_folders(root).map_err(|e| match e {
            fennec_runtime::Error::Input { path, reason } => DataError::Folder { path, reason },
            other => DataError::Folder {
                path: root.to_path_buf(),
                reason: other.to_string(),
            },
        })?;
        if folders.classes.len() < 2 {
            return Err(DataError::TooFewClasses {
                path: root.to_path_buf(),
                count: folders.classes.len(),
                classes: folders.classes.join(", "),
            });
        }
        let examples = folders
            .files
            .into_iter()
            .map(|(path, label)| Example { path, label })
            .collect();
        Ok(LabelledFolder {
            name: name.to_string(),
            root: root.to_path_buf(),
            classes: folders.classes,
            examples,
            skipped: folders.skipped,
            cache: None,
        })
    }

    /// Examples per class, in class order.
    pub fn counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for e in &self.examples {
            counts[e.label] += 1;
        }
        counts
    }

    /// Errors naming the first class folder without images.
    pub fn require_no_empty_class(&self) -> Result<(), DataError> {
        match self.counts().iter().position(|&n| n == 0) {
            Some(c) => Err(DataError::EmptyClass {
                path: self.root.join(&self.classes[c]),
            }),
            None => Ok(()),
        }
    }

    /// Errors when this split's classes are not `classes` (listing both sets).
    pub fn require_classes(&self, classes: &[String], other: &Path) -> Result<(), DataError> {
        if self.classes == classes {
            return Ok(());
        }
        Err(DataError::ClassMismatch {
            a: other.to_path_buf(),
            a_classes: classes.join(", "),
            b: self.root.clone(),
            b_classes: self.classes.join(", "),
        })
    }

    /// Bytes the decoded-pixel cache of this split takes.
    pub fn cache_bytes(&self, loader: &Loader) -> u64 {
        self.examples.len() as u64 * loader.image_len() as u64
    }

    pub fn is_cached(&self) -> bool {
        self.cache.is_some()
    }

    /// Decodes every file once, in parallel on rayon's global pool: files that fail
    /// move to `skipped` with the reason. With `cache`, the decoded pixels are kept.
    /// `progress(n)` is called as files finish (from several threads). Returns the
    /// decode failures of this call, or `None` when `stop` was raised (the split is
    /// then unchanged).
    pub fn check(
        &mut self,
        loader: &Loader,
        cache: bool,
        progress: &(dyn Fn(u64) + Sync),
        stop: &AtomicBool,
    ) -> Option<Vec<Skipped>> {
        let len = loader.image_len();
        let n = self.examples.len();
        let mut buffer = if cache {
            vec![0u8; n * len]
        } else {
            Vec::new()
        };
        let outcome: Vec<Option<Result<(), ImageError>>> = if cache {
            buffer
                .par_chunks_mut(len.max(1))
                .zip(self.examples.par_iter())
                .map(|(slot, e)| {
                    if stop.load(Ordering::Relaxed) {
                        return None;
                    }
                    let r = loader.pixels(&e.path).map(|px| slot.copy_from_slice(&px));
                    progress(1);
                    Some(r)
                })
                .collect()
        } else {
            self.examples
                .par_iter()
                .map(|e| {
                    if stop.load(Ordering::Relaxed) {
                        return None;
                    }
                    let r = loader.pixels(&e.path).map(drop);
                    progress(1);
                    Some(r)
                })
                .collect()
        };
        if stop.load(Ordering::Relaxed) || outcome.iter().any(Option::is_none) {
            return None;
        }
        let mut failed = Vec::new();
        let mut kept = 0;
        for (i, r) in outcome.into_iter().enumerate() {
            match r.expect("checked above") {
                Ok(()) => {
                    if cache && kept != i {
                        buffer.copy_within(i * len..(i + 1) * len, kept * len);
                    }
                    self.examples.swap(kept, i);
                    kept += 1;
                }
                Err(e) => failed.push(Skipped {
                    path: e.path().to_path_buf(),
                    kind: e.kind().to_string(),
                    reason: e.to_string(),
                }),
            }
        }
        self.examples.truncate(kept);
        if cache {
            buffer.truncate(kept * len);
            buffer.shrink_to_fit();
            self.cache = Some(buffer);
        }
        self.skipped.extend(failed.iter().cloned());
        Some(failed)
    }

    /// Writes example `index`'s normalised tensor into `out`, augmenting its pixels
    /// first when `augment` is given.
    fn tensor(
        &self,
        loader: &Loader,
        index: usize,
        augment: Option<(&Augment, u64)>,
        out: &mut [f32],
    ) -> Result<(), DataError> {
        let len = loader.image_len();
        let cached = self
            .cache
            .as_ref()
            .map(|c| &c[index * len..(index + 1) * len]);
        match (cached, augment) {
            (Some(px), None) => loader.preprocess.normalize(px, out),
            (cached, augment) => {
                let mut px = match cached {
                    Some(px) => px.to_vec(),
                    None => loader
                        .pixels(&self.examples[index].path)
                        .map_err(DataError::Changed)?,
                };
                if let Some((f, seed)) = augment {
                    f(&mut px, seed);
                }
                loader.preprocess.normalize(&px, out);
            }
        }
        Ok(())
    }
}

/// Augmentation of one image's interleaved `u8` pixels (`height x width x channels`
/// of the preprocessing spec), given its seed.
pub type Augment = dyn Fn(&mut [u8], u64) + Send + Sync;

/// Decodes files into the pixels of the preprocessing contract.
#[derive(Debug, Clone)]
pub struct Loader {
    pub preprocess: Preprocess,
    pub limits: DecodeLimits,
}

impl Loader {
    pub fn new(preprocess: Preprocess) -> Loader {
        Loader {
            preprocess,
            limits: DecodeLimits::default(),
        }
    }

    /// Bytes of one image after colour conversion and geometry (`h * w * c`).
    pub fn image_len(&self) -> usize {
        self.preprocess.tensor_len()
    }

    /// Decode → colour → geometry: interleaved `u8` pixels, `h x w x c`.
    pub fn pixels(&self, path: &Path) -> Result<Vec<u8>, ImageError> {
        let img = decode_file(path, &self.limits)?;
        Ok(self.preprocess.pixels(&img))
    }
}

/// A data directory's splits, scanned and cross-checked (nothing decoded yet).
#[derive(Debug)]
pub struct DataSet {
    pub root: PathBuf,
    pub classes: Vec<String>,
    pub train: LabelledFolder,
    pub validation: LabelledFolder,
    pub test: Option<LabelledFolder>,
}

impl DataSet {
    /// Scans `root/train`, `root/validation` and, when present, `root/test`.
    /// Errors: missing directory or split, fewer than two classes, an empty class
    /// folder in train, class folders that differ between splits.
    pub fn scan(root: &Path) -> Result<DataSet, DataError> {
        if !root.is_dir() {
            return Err(DataError::MissingDataDir {
                path: root.to_path_buf(),
            });
        }
        let split = |subset: Subset| {
            let name = subset.dir_name();
            let dir = root.join(name);
            if !dir.exists() {
                return Err(DataError::MissingSplit {
                    path: root.to_path_buf(),
                    split: name,
                });
            }
            LabelledFolder::scan(name, &dir)
        };
        let train = split(Subset::Train)?;
        train.require_no_empty_class()?;
        let validation = split(Subset::Validation)?;
        validation.require_classes(&train.classes, &train.root)?;
        let test = if root.join(Subset::Test.dir_name()).exists() {
            let test = split(Subset::Test)?;
            test.require_classes(&train.classes, &train.root)?;
            Some(test)
        } else {
            None
        };
        Ok(DataSet {
            root: root.to_path_buf(),
            classes: train.classes.clone(),
            train,
            validation,
            test,
        })
    }
}

/// Memory allowed for the decoded-image cache when the config leaves `cache` out:
/// a quarter of the RAM, at most 4 GiB.
pub fn cache_budget() -> u64 {
    use sysinfo::{MemoryRefreshKind, RefreshKind, System};
    let sys = System::new_with_specifics(
        RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()),
    );
    let ram = sys.total_memory();
    let quarter = if ram == 0 { 1 << 30 } else { ram / 4 };
    quarter.min(4 << 30)
}

/// One batch: images `[len, c, h, w]` flattened (NCHW), labels, and the example
/// indices they came from.
#[derive(Debug)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    pub len: usize,
}

/// How a stream augments: the function, the run's seed and the epoch.
#[derive(Clone)]
pub struct AugmentPlan {
    pub augment: Arc<Augment>,
    pub seed: u64,
    pub epoch: usize,
}

/// Batches of a split in a given order, produced on a background thread.
pub struct BatchStream {
    rx: Option<Receiver<Result<Batch, DataError>>>,
    handle: Option<JoinHandle<()>>,
    batches: usize,
}

impl BatchStream {
    /// Starts producing batches of `order` (indices into `split.examples`), `batch`
    /// at a time (the last one smaller unless `drop_last`).
    pub fn start(
        split: Arc<LabelledFolder>,
        loader: Arc<Loader>,
        order: Vec<usize>,
        batch: usize,
        drop_last: bool,
        augment: Option<AugmentPlan>,
    ) -> Result<BatchStream, DataError> {
        let batch = batch.max(1);
        let mut chunks: Vec<Vec<usize>> = order.chunks(batch).map(<[usize]>::to_vec).collect();
        if drop_last && chunks.last().is_some_and(|c| c.len() < batch) {
            chunks.pop();
        }
        let batches = chunks.len();
        let (tx, rx) = sync_channel(PREFETCH.saturating_sub(1));
        let handle = std::thread::Builder::new()
            .name("fennec-batches".into())
            .spawn(move || {
                let len = loader.image_len();
                for chunk in chunks {
                    let mut images = vec![0f32; chunk.len() * len];
                    let result = images
                        .par_chunks_mut(len.max(1))
                        .zip(chunk.par_iter())
                        .try_for_each(|(out, &ix)| {
                            let aug = augment
                                .as_ref()
                                .map(|a| (&*a.augment, image_seed(a.seed, a.epoch, ix)));
                            split.tensor(&loader, ix, aug, out)
                        })
                        .map(|()| Batch {
                            images,
                            labels: chunk
                                .iter()
                                .map(|&ix| split.examples[ix].label as i64)
                                .collect(),
                            len: chunk.len(),
                        });
                    let failed = result.is_err();
                    if tx.send(result).is_err() || failed {
                        return; // consumer gone, or an error that ends the stream
                    }
                }
            })
            .map_err(DataError::Thread)?;
        Ok(BatchStream {
            rx: Some(rx),
            handle: Some(handle),
            batches,
        })
    }

    /// Number of batches this stream yields.
    pub fn batches(&self) -> usize {
        self.batches
    }
}

impl Iterator for BatchStream {
    type Item = Result<Batch, DataError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for BatchStream {
    fn drop(&mut self) {
        // Closing the channel makes the producer stop after the batch in hand.
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Per-split summary for `summary.json` and the console.
#[derive(Debug, Clone, Serialize)]
pub struct FolderSummary {
    pub root: PathBuf,
    pub images: usize,
    /// Usable images per class name.
    pub per_class: std::collections::BTreeMap<String, usize>,
    pub skipped: usize,
    pub cached: bool,
}

impl LabelledFolder {
    pub fn summary(&self) -> FolderSummary {
        FolderSummary {
            root: self.root.clone(),
            images: self.examples.len(),
            per_class: self.classes.iter().cloned().zip(self.counts()).collect(),
            skipped: self.skipped.len(),
            cached: self.is_cached(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seeds::epoch_order;
    use fennec_runtime::preprocess::ColorMode;
    use image::{Rgb, RgbImage};

    fn image(root: &Path, class: &str, name: &str, rgb: [u8; 3]) {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        RgbImage::from_fn(6, 5, |x, y| {
            Rgb([rgb[0], rgb[1].wrapping_add((x + y) as u8), rgb[2]])
        })
        .save(dir.join(name))
        .unwrap();
    }

    fn dataset(root: &Path) {
        for split in ["train", "validation"] {
            for i in 0..3 {
                image(&root.join(split), "a", &format!("{i}.png"), [200, 10, 10]);
                image(&root.join(split), "b", &format!("{i}.png"), [10, 10, 200]);
            }
        }
    }

    #[test]
    fn scan_errors_name_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let e = DataSet::scan(&root.join("nope")).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("not found"), "{e}");
        dataset(root);
        assert_eq!(DataSet::scan(root).unwrap().classes, vec!["a", "b"]);

        image(&root.join("validation"), "c", "0.png", [0, 200, 0]);
        let e = DataSet::scan(root).unwrap_err().to_string();
        assert!(e.contains("[a, b]") && e.contains("[a, b, c]"), "{e}");
        std::fs::remove_dir_all(root.join("validation/c")).unwrap();

        std::fs::create_dir_all(root.join("train/c")).unwrap();
        let e = DataSet::scan(root).unwrap_err().to_string();
        assert!(e.contains("train/c") && e.contains("no image files"), "{e}");
        std::fs::remove_dir_all(root.join("train/c")).unwrap();

        std::fs::remove_dir_all(root.join("train/b")).unwrap();
        let e = DataSet::scan(root).unwrap_err().to_string();
        assert!(e.contains("only 1 class folder(s) (a)"), "{e}");

        std::fs::remove_dir_all(root.join("validation")).unwrap();
        image(&root.join("train"), "b", "0.png", [0, 0, 0]);
        let e = DataSet::scan(root).unwrap_err().to_string();
        assert!(e.contains("'validation' split is missing"), "{e}");
    }

    #[test]
    fn check_skips_corrupt_files_and_batches_match_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        dataset(root);
        std::fs::write(root.join("train/a/bad.png"), b"not a png at all").unwrap();
        let mut split = LabelledFolder::scan("train", &root.join("train")).unwrap();
        assert_eq!(split.examples.len(), 7);
        let loader = Arc::new(Loader::new(Preprocess::keras(4, 4, ColorMode::Rgb)));
        let stop = AtomicBool::new(false);
        let failed = split.check(&loader, true, &|_| {}, &stop).unwrap();
        assert_eq!(failed.len(), 1);
        assert!(failed[0].reason.contains("bad.png"), "{:?}", failed[0]);
        assert_eq!(split.counts(), vec![3, 3]);
        assert!(split.is_cached());

        // Batches equal the runtime's Preprocess::load on the same files, cached or not.
        let mut uncached = LabelledFolder::scan("train", &root.join("train")).unwrap();
        uncached.check(&loader, false, &|_| {}, &stop).unwrap();
        assert!(!uncached.is_cached());
        let order = epoch_order(6, 7, 1, true);
        for s in [Arc::new(split), Arc::new(uncached)] {
            let stream =
                BatchStream::start(s.clone(), loader.clone(), order.clone(), 4, false, None)
                    .unwrap();
            assert_eq!(stream.batches(), 2);
            let batches: Vec<Batch> = stream.map(Result::unwrap).collect();
            assert_eq!(
                batches.iter().map(|b| b.len).collect::<Vec<_>>(),
                vec![4, 2]
            );
            let first = &s.examples[order[0]];
            let want = loader.preprocess.load(&first.path, &loader.limits).unwrap();
            assert_eq!(&batches[0].images[..want.len()], &want[..]);
            assert_eq!(batches[0].labels[0], first.label as i64);
        }
    }

    #[test]
    fn augmentation_is_seeded_per_image_and_drop_last() {
        let dir = tempfile::tempdir().unwrap();
        dataset(dir.path());
        let mut split = LabelledFolder::scan("train", &dir.path().join("train")).unwrap();
        let loader = Arc::new(Loader::new(Preprocess::keras(4, 4, ColorMode::Rgb)));
        split
            .check(&loader, true, &|_| {}, &AtomicBool::new(false))
            .unwrap();
        let split = Arc::new(split);
        let invert: Arc<Augment> = Arc::new(|px: &mut [u8], seed: u64| {
            if seed.is_multiple_of(2) {
                px.iter_mut().for_each(|p| *p = 255 - *p);
            }
        });
        let plan = AugmentPlan {
            augment: invert,
            seed: 1,
            epoch: 1,
        };
        let order: Vec<usize> = (0..6).collect();
        let run = || {
            BatchStream::start(
                split.clone(),
                loader.clone(),
                order.clone(),
                4,
                true,
                Some(plan.clone()),
            )
            .unwrap()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
        };
        let (a, b) = (run(), run());
        assert_eq!(a.len(), 1, "drop_last drops the short batch");
        assert_eq!(a[0].images, b[0].images);
        let plain = loader
            .preprocess
            .load(&split.examples[0].path, &loader.limits)
            .unwrap();
        let inverted = image_seed(1, 1, 0).is_multiple_of(2);
        assert_eq!(a[0].images[..plain.len()] != plain[..], inverted);
    }
}
