//! Step one of `fit`: decode every training and validation image once before the
//! first epoch, so a corrupt file is reported (and skipped, or an error with
//! `--strict`) up front, and cache the decoded pixels when they fit in memory.

use std::sync::Arc;

use super::{DataReport, Event, FitOptions, Observer, TrainError};
use crate::data::{DataError, DataSet, LabelledFolder, Loader, cache_budget};

/// Checks (and maybe caches) `data`'s train and validation images; returns the
/// loader of the config's preprocessing and the data report, or `None` when stopped
/// by request.
pub(super) fn check(
    opts: &FitOptions,
    data: &mut DataSet,
    obs: &dyn Observer,
) -> Result<Option<(Arc<Loader>, DataReport)>, TrainError> {
    let loader = Arc::new(Loader::new(opts.config.preprocess.clone()));
    let (train_bytes, val_bytes) = (
        data.train.cache_bytes(&loader),
        data.validation.cache_bytes(&loader),
    );
    let (cache_train, cache_val) = match opts.config.training.cache {
        Some(c) => (c, c),
        None => {
            let budget = cache_budget();
            (train_bytes <= budget, train_bytes + val_bytes <= budget)
        }
    };
    let mut failed = 0;
    for (folder, cache) in [
        (&mut data.train, cache_train),
        (&mut data.validation, cache_val),
    ] {
        obs.event(Event::Checking {
            split: &folder.name,
            total: folder.examples.len(),
        });
        let Some(bad) = folder.check(
            &loader,
            cache,
            &|n| obs.event(Event::Advance(n)),
            &opts.stop,
        ) else {
            return Ok(None);
        };
        for s in &bad {
            obs.event(Event::Skipped(s));
        }
        failed += bad.len();
        if opts.strict && failed > 0 {
            return Err(DataError::Strict {
                count: failed,
                first: bad[0].reason.clone(),
            }
            .into());
        }
        if folder.examples.is_empty() {
            return Err(DataError::NoImages {
                path: folder.root.clone(),
            }
            .into());
        }
    }
    data.train.require_no_empty_class()?;
    let report = DataReport {
        root: opts.data_dir.clone(),
        classes: data.classes.clone(),
        train: data.train.summary(),
        validation: data.validation.summary(),
        test: data.test.as_ref().map(LabelledFolder::summary),
        skipped: [&data.train, &data.validation]
            .into_iter()
            .chain(data.test.as_ref())
            .flat_map(|s| s.skipped.iter().cloned())
            .collect(),
    };
    Ok(Some((loader, report)))
}
