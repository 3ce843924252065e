//! `fennec watch`: score each new image of a folder exactly once, across restarts.
//!
//! The folder is polled, not watched with inotify: a poll also finds what arrived
//! while fennec was stopped, works on network and FUSE mounts where inotify sees
//! nothing, and needs no dependency. A file is taken only once it is *settled*:
//! the same size and modification time at two polls, and not modified for the
//! settle time, so a picture still being written is left for a later poll (and a
//! camera that writes `.name.tmp` then renames is caught at the rename: hidden
//! files are never taken). A file that changes after it was scored is a new
//! picture and is scored again.
//!
//! Exactly once: each result is a line appended to the results file (JSON lines,
//! synced), then the state file (written atomically, beside the results) records
//! the file as done together with the results file's length. After a crash between
//! the two, the lines past that length tell what was done; a half-written last line
//! is cut off. So a restart neither scores a file twice nor misses one.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::atomic::write_bytes_atomic;
use crate::classifier::Classifier;
use crate::decode::has_image_extension;
use crate::error::{Error, Result};
use crate::pipeline::{PipelineOptions, classify_files};
use crate::scores::top_k;

/// What `fennec watch` does besides scoring.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// A file must not have changed for this long before it is scored.
    pub settle: Duration,
    /// Classes per result line.
    pub top_k: usize,
    /// Scored (and failed) files are moved here, if set.
    pub move_done: Option<PathBuf>,
    /// Most files scored per poll (the rest wait for the next).
    pub max_per_poll: usize,
    pub pipeline: PipelineOptions,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            settle: Duration::from_secs(1),
            top_k: 1,
            move_done: None,
            max_per_poll: 256,
            pipeline: PipelineOptions::default(),
        }
    }
}

/// A file as last seen: its size and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub size: u64,
    pub mtime_ns: u64,
}

/// The state file: files done (by name in the folder), the length of the results
/// file when it was written, and running counts.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    version: u32,
    results_len: u64,
    scored: u64,
    failed: u64,
    done: BTreeMap<String, Seen>,
}

/// A listing: the files ready to score (name, as seen), and every candidate present.
type Scan = (Vec<(String, Seen)>, HashMap<String, Seen>);

/// What one poll did.
#[derive(Debug, Default)]
pub struct Round {
    pub scored: usize,
    /// Files that could not be scored: `(file name, one-line reason)`.
    pub failed: Vec<(String, String)>,
    /// Files still being written (seen, not settled yet).
    pub waiting: usize,
}

/// A watched folder, its results file and its state.
pub struct Watcher {
    dir: PathBuf,
    results_path: PathBuf,
    state_path: PathBuf,
    results: fs::File,
    state: State,
    /// Files seen at the previous poll and not done, to tell settled ones.
    previous: HashMap<String, Seen>,
    options: WatchOptions,
}

impl Watcher {
    /// Opens (or resumes) watching `dir`, appending to `results_path`, keeping state
    /// in `state_path`. Recovers from a crash between a result and its state.
    pub fn open(
        dir: &Path,
        results_path: &Path,
        state_path: &Path,
        options: WatchOptions,
    ) -> Result<Watcher> {
        if !dir.is_dir() {
            return Err(Error::input(dir, "not a folder (nothing to watch)"));
        }
        if let Some(target) = &options.move_done {
            fs_err::create_dir_all(target)?;
        }
        let mut state = match fs::read(state_path) {
            Ok(bytes) => serde_json::from_slice::<State>(&bytes).map_err(|e| {
                Error::input(
                    state_path,
                    format!("corrupt watch state file ({e}); delete it to score the folder again from scratch"),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State {
                version: 1,
                ..State::default()
            },
            Err(e) => return Err(fs_err_io(state_path, e)),
        };
        let mut results = fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(results_path)
            .map_err(|e| fs_err_io(results_path, e))?;
        recover(&mut results, results_path, &mut state)?;
        let watcher = Watcher {
            dir: dir.into(),
            results_path: results_path.into(),
            state_path: state_path.into(),
            results,
            state,
            previous: HashMap::new(),
            options,
        };
        watcher.save()?;
        Ok(watcher)
    }

    /// Totals since the state file was made: (scored, failed).
    pub fn totals(&self) -> (u64, u64) {
        (self.state.scored, self.state.failed)
    }

    /// One poll: scores the settled new files (all present files with `all`, for a
    /// single pass over a finished folder), appends their lines, saves the state.
    pub fn poll(&mut self, classifier: &Classifier, all: bool) -> Result<Round> {
        let mut round = Round::default();
        let (ready, mut present) = self.scan(SystemTime::now(), all, &mut round)?;
        if !ready.is_empty() {
            self.score(classifier, &ready, &mut round)?;
        }
        for (name, seen) in &ready {
            present.remove(name);
            self.move_done(name, *seen)?;
        }
        self.previous = present;
        self.save()?;
        Ok(round)
    }

    /// Lists the folder: the files ready to score, and every candidate present
    /// (to compare at the next poll). Moves files done before a crash.
    fn scan(&mut self, now: SystemTime, all: bool, round: &mut Round) -> Result<Scan> {
        let mut ready: Vec<(String, Seen)> = vec![];
        let mut present: HashMap<String, Seen> = HashMap::new();
        for entry in fs_err::read_dir(&self.dir)? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue; // not UTF-8: cannot be a key of the JSON state
            };
            let path = entry.path();
            if name.starts_with('.') || !has_image_extension(&path) {
                continue;
            }
            // Gone since the listing, or not a regular file: not ours.
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
            let seen = Seen {
                size: meta.len(),
                mtime_ns: mtime
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
            };
            if self.state.done.get(&name) == Some(&seen) {
                // Done already (with --move-done: scored before a crash that came
                // before its move).
                present.insert(name.clone(), seen);
                self.move_done(&name, seen)?;
                continue;
            }
            present.insert(name.clone(), seen);
            let settled = self.previous.get(&name) == Some(&seen)
                && now.duration_since(mtime).unwrap_or_default() >= self.options.settle;
            if (all || settled) && ready.len() < self.options.max_per_poll {
                ready.push((name, seen));
            } else {
                round.waiting += 1;
            }
        }
        // Forget what left the folder, so the state stays small.
        self.state.done.retain(|name, _| present.contains_key(name));
        ready.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((ready, present))
    }

    fn score(
        &mut self,
        classifier: &Classifier,
        ready: &[(String, Seen)],
        round: &mut Round,
    ) -> Result<()> {
        let files: Vec<PathBuf> = ready.iter().map(|(n, _)| self.dir.join(n)).collect();
        let k = self.options.top_k.clamp(1, classifier.labels.len());
        let mut lines = String::new();
        let scored_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        classify_files(classifier, &files, &self.options.pipeline, |ix, outcome| {
            let (name, seen) = &ready[ix];
            let mut line = json!({
                "file": name,
                "size": seen.size,
                "mtime_ns": seen.mtime_ns,
                "scored_at": scored_at,
            });
            match outcome {
                Ok(probs) => {
                    let preds: Vec<Value> = top_k(&probs, k)
                        .into_iter()
                        .map(|c| json!({"label": classifier.labels[c], "index": c, "probability": probs[c]}))
                        .collect();
                    line["predictions"] = Value::Array(preds);
                    round.scored += 1;
                }
                Err(e) => {
                    line["error"] = json!(e.to_string());
                    line["kind"] = json!(e.kind());
                    round.failed.push((name.clone(), e.to_string()));
                }
            }
            lines.push_str(&line.to_string());
            lines.push('\n');
        })?;
        self.results
            .write_all(lines.as_bytes())
            .and_then(|()| self.results.sync_data())
            .map_err(|e| fs_err_io(&self.results_path, e))?;
        self.state.results_len += lines.len() as u64;
        self.state.scored += round.scored as u64;
        self.state.failed += round.failed.len() as u64;
        for (name, seen) in ready {
            self.state.done.insert(name.clone(), *seen);
        }
        Ok(())
    }

    /// With `--move-done`: moves a done file out of the folder (keeping a file of
    /// the same name already there), and forgets it.
    fn move_done(&mut self, name: &str, seen: Seen) -> Result<()> {
        let Some(target_dir) = &self.options.move_done else {
            return Ok(());
        };
        let from = self.dir.join(name);
        let mut to = target_dir.join(name);
        if to.exists() {
            to = target_dir.join(format!("{}.{}", seen.mtime_ns, name));
        }
        if let Err(e) = fs::rename(&from, &to) {
            if e.kind() != std::io::ErrorKind::CrossesDevices {
                return Err(fs_err_io(&from, e));
            }
            fs_err::copy(&from, &to)?;
            fs_err::remove_file(&from)?;
        }
        self.state.done.remove(name);
        Ok(())
    }

    fn save(&self) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.state).map_err(std::io::Error::other)?;
        write_bytes_atomic(&self.state_path, &bytes).map_err(|e| fs_err_io(&self.state_path, e))
    }
}

/// Brings the state up to the results file: lines past `results_len` are results
/// whose state was never saved (their files are done); a last line without its
/// newline was cut by the crash and is removed.
fn recover(results: &mut fs::File, path: &Path, state: &mut State) -> Result<()> {
    let io = |e| fs_err_io(path, e);
    let len = results.metadata().map_err(io)?.len();
    if len < state.results_len {
        // Rotated or truncated by the user: start counting from here.
        state.results_len = len;
        return Ok(());
    }
    let mut tail = Vec::new();
    results
        .seek(SeekFrom::Start(state.results_len))
        .map_err(io)?;
    results.read_to_end(&mut tail).map_err(io)?;
    let complete = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    for line in tail[..complete].split(|&b| b == b'\n') {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        let (Some(name), Some(size), Some(mtime_ns)) = (
            v["file"].as_str(),
            v["size"].as_u64(),
            v["mtime_ns"].as_u64(),
        ) else {
            continue;
        };
        if v.get("error").is_some() {
            state.failed += 1;
        } else {
            state.scored += 1;
        }
        state.done.insert(name.to_string(), Seen { size, mtime_ns });
    }
    if complete < tail.len() {
        results
            .set_len(state.results_len + complete as u64)
            .map_err(io)?;
    }
    state.results_len += complete as u64;
    Ok(())
}

fn fs_err_io(path: &Path, e: std::io::Error) -> Error {
    Error::input(path, crate::decode::io_reason(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(name: &str, size: u64) -> String {
        format!(
            "{}\n",
            json!({"file": name, "size": size, "mtime_ns": 7, "predictions": []})
        )
    }

    #[test]
    fn recovery_adopts_unsaved_lines_and_cuts_a_torn_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let saved = line("a.png", 1);
        let unsaved = line("b.png", 2);
        fs::write(&path, format!("{saved}{unsaved}{{\"file\": \"c.pn")).unwrap();
        let mut state = State {
            results_len: saved.len() as u64,
            done: BTreeMap::from([(
                "a.png".into(),
                Seen {
                    size: 1,
                    mtime_ns: 7,
                },
            )]),
            ..State::default()
        };
        recover(&mut open_results(&path), &path, &mut state).unwrap();
        assert_eq!(state.done.len(), 2);
        assert_eq!(
            state.done["b.png"],
            Seen {
                size: 2,
                mtime_ns: 7
            }
        );
        assert_eq!(state.scored, 1);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{saved}{unsaved}"), "torn line removed");
        assert_eq!(state.results_len, text.len() as u64);
    }

    #[test]
    fn a_shorter_results_file_resets_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        fs::write(&path, "").unwrap();
        let mut state = State {
            results_len: 500,
            ..State::default()
        };
        recover(&mut open_results(&path), &path, &mut state).unwrap();
        assert_eq!(state.results_len, 0);
    }

    /// The results file opened as `watch` opens it: read and append.
    fn open_results(path: &Path) -> fs::File {
        fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(path)
            .unwrap()
    }

    fn names(ready: &[(String, Seen)]) -> Vec<&str> {
        ready.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn only_files_unchanged_between_polls_are_taken() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path().join("in");
        fs::create_dir(&inbox).unwrap();
        let options = WatchOptions {
            settle: Duration::ZERO,
            ..WatchOptions::default()
        };
        let mut w = Watcher::open(
            &inbox,
            &dir.path().join("r.jsonl"),
            &dir.path().join("s.json"),
            options,
        )
        .unwrap();
        let later = SystemTime::now() + Duration::from_secs(3600);
        let poll = |w: &mut Watcher| {
            let mut round = Round::default();
            let (ready, present) = w.scan(later, false, &mut round).unwrap();
            w.previous = present;
            ready
        };
        fs::write(inbox.join("a.png"), b"half").unwrap();
        fs::write(inbox.join(".b.png"), b"hidden until renamed").unwrap();
        fs::write(inbox.join("c.txt"), b"not an image").unwrap();
        assert!(poll(&mut w).is_empty(), "first sight: not settled yet");
        fs::write(inbox.join("a.png"), b"half and the rest").unwrap();
        assert!(poll(&mut w).is_empty(), "still growing");
        assert_eq!(
            names(&poll(&mut w)),
            ["a.png"],
            "unchanged since the last poll"
        );
        fs::rename(inbox.join(".b.png"), inbox.join("b.png")).unwrap();
        assert!(names(&poll(&mut w)).contains(&"a.png"));
        assert_eq!(names(&poll(&mut w)), ["a.png", "b.png"]);
    }

    #[test]
    fn the_settle_time_holds_back_recent_files() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path().join("in");
        fs::create_dir(&inbox).unwrap();
        let options = WatchOptions {
            settle: Duration::from_secs(3600),
            ..WatchOptions::default()
        };
        let mut w = Watcher::open(
            &inbox,
            &dir.path().join("r.jsonl"),
            &dir.path().join("s.json"),
            options,
        )
        .unwrap();
        fs::write(inbox.join("a.png"), b"x").unwrap();
        for _ in 0..2 {
            let mut round = Round::default();
            let (ready, present) = w.scan(SystemTime::now(), false, &mut round).unwrap();
            w.previous = present;
            assert!(ready.is_empty());
            assert_eq!(round.waiting, 1);
        }
        let mut round = Round::default();
        let (ready, _) = w.scan(SystemTime::now(), true, &mut round).unwrap();
        assert_eq!(names(&ready), ["a.png"], "--once takes everything present");
    }
}
