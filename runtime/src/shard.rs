//! Splitting one folder's files into `n` shards that separate machines (or jobs of
//! any scheduler) score independently, for `--shard i/n`.
//!
//! A file's shard depends only on its path relative to the scored folder: the
//! first 8 bytes of the SHA-256 of that path (components joined with `/`, as
//! UTF-8), read big-endian, modulo `n`. Not the listing order, so adding files
//! elsewhere moves no other file, and every file is in exactly one shard. SHA-256
//! because it is a fixed standard with the same result on every platform (32-bit
//! ARM included: no `usize`, no endianness, no per-process seed as in std's
//! hasher), it spreads paths evenly, and fennec already hashes model files with
//! it; hashing a short path costs well under a microsecond.

use std::fmt;
use std::path::{Component, Path};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Environment variables holding a job's index, tried in this order by `auto/n`:
/// Kubernetes indexed Jobs, then Slurm job arrays.
pub const INDEX_VARIABLES: [&str; 2] = ["JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID"];

/// Shard `index` of `count` (0-based: `0/4` .. `3/4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

/// Why a `--shard` value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("'{0}' is not a shard: expected INDEX/COUNT (0-based, e.g. 0/4) or auto/COUNT")]
    Syntax(String),
    #[error("shard index {index} out of range for {count} shards (0..={last})", last = count - 1)]
    OutOfRange { index: u32, count: u32 },
    #[error("the shard count must be at least 1")]
    ZeroCount,
    #[error("auto/{count}: none of {vars} is set (give the index: INDEX/{count})", vars = INDEX_VARIABLES.join(", "))]
    NoIndexVariable { count: u32 },
    #[error("auto/{count}: {var}='{value}' is not a shard index")]
    BadIndexVariable {
        count: u32,
        var: &'static str,
        value: String,
    },
}

impl Shard {
    /// The whole folder: one shard.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    pub fn new(index: u32, count: u32) -> Result<Shard, ShardError> {
        if count == 0 {
            return Err(ShardError::ZeroCount);
        }
        if index >= count {
            return Err(ShardError::OutOfRange { index, count });
        }
        Ok(Shard { index, count })
    }

    /// Parses `i/n`, or `auto/n` with the index read through `env` from the first
    /// of [`INDEX_VARIABLES`] that is set.
    pub fn parse_with_env(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Shard, ShardError> {
        let syntax = || ShardError::Syntax(text.to_string());
        let (index, count) = text.trim().split_once('/').ok_or_else(syntax)?;
        let count: u32 = count.trim().parse().map_err(|_| syntax())?;
        if count == 0 {
            return Err(ShardError::ZeroCount);
        }
        let index = match index.trim() {
            "auto" => {
                let (var, value) = INDEX_VARIABLES
                    .iter()
                    .find_map(|&v| env(v).map(|value| (v, value)))
                    .ok_or(ShardError::NoIndexVariable { count })?;
                value
                    .trim()
                    .parse()
                    .map_err(|_| ShardError::BadIndexVariable { count, var, value })?
            }
            i => i.parse().map_err(|_| syntax())?,
        };
        Shard::new(index, count)
    }

    /// Whether the file whose [`relative_key`] is `key` is in this shard.
    pub fn contains(&self, key: &str) -> bool {
        self.count == 1 || shard_of(key, self.count) == self.index
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = ShardError;

    /// `i/n`, or `auto/n` from the process environment.
    fn from_str(s: &str) -> Result<Shard, ShardError> {
        Shard::parse_with_env(s, |v| std::env::var(v).ok())
    }
}

/// A relative path as the platform-independent text that is hashed and stored in
/// predictions files: normal components joined with `/` (non-UTF-8 bytes replaced).
pub fn relative_key(relative: &Path) -> String {
    let parts: Vec<_> = relative
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy()),
            _ => None,
        })
        .collect();
    parts.join("/")
}

/// The shard (0..count) of a relative path key.
pub fn shard_of(key: &str, count: u32) -> u32 {
    let digest = Sha256::digest(key.as_bytes());
    let head = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    (head % u64::from(count)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn parses_index_and_auto() {
        let none = env(&[]);
        assert_eq!(
            Shard::parse_with_env("2/4", &none),
            Ok(Shard::new(2, 4).unwrap())
        );
        assert_eq!(
            Shard::parse_with_env("4/4", &none),
            Err(ShardError::OutOfRange { index: 4, count: 4 })
        );
        assert_eq!(
            Shard::parse_with_env("0/0", &none),
            Err(ShardError::ZeroCount)
        );
        assert!(matches!(
            Shard::parse_with_env("1-4", &none),
            Err(ShardError::Syntax(_))
        ));
        assert!(matches!(
            Shard::parse_with_env("-1/4", &none),
            Err(ShardError::Syntax(_))
        ));
        assert_eq!(
            Shard::parse_with_env("auto/3", &none),
            Err(ShardError::NoIndexVariable { count: 3 })
        );
        let k8s = env(&[("JOB_COMPLETION_INDEX", "1"), ("SLURM_ARRAY_TASK_ID", "2")]);
        assert_eq!(Shard::parse_with_env("auto/3", &k8s).unwrap().index, 1);
        let slurm = env(&[("SLURM_ARRAY_TASK_ID", "2")]);
        assert_eq!(Shard::parse_with_env("auto/3", &slurm).unwrap().index, 2);
        assert_eq!(
            Shard::parse_with_env("auto/2", &slurm),
            Err(ShardError::OutOfRange { index: 2, count: 2 })
        );
        let bad = env(&[("SLURM_ARRAY_TASK_ID", "x")]);
        let e = Shard::parse_with_env("auto/2", &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("SLURM_ARRAY_TASK_ID='x'"), "{e}");
    }

    #[test]
    fn keys_are_platform_independent() {
        assert_eq!(relative_key(Path::new("cat/sub/a.png")), "cat/sub/a.png");
        assert_eq!(relative_key(Path::new("./cat//a.png")), "cat/a.png");
    }

    /// Known values (Python's hashlib: first 16 hex digits of the SHA-256, mod 7): a
    /// change of hash, byte order or key format would move files between the shards
    /// of runs already under way, so it must show up here.
    #[test]
    fn assignment_is_pinned() {
        let got: Vec<u32> = [
            "cat/0.png",
            "cat/1.png",
            "dog/0.png",
            "dog/1.png",
            "bird/x.jpg",
        ]
        .iter()
        .map(|k| shard_of(k, 7))
        .collect();
        // cat/0.png: 1a07b51d89614a9d, cat/1.png: 6a3b843cf66c4612, ...
        assert_eq!(got, vec![1, 4, 3, 6, 0]);
    }

    #[test]
    fn every_file_in_exactly_one_shard_and_balanced() {
        let keys: Vec<String> = (0..7000)
            .map(|i| format!("c{}/{i:05}.png", i % 10))
            .collect();
        for n in 1..=7u32 {
            let mut sizes = vec![0usize; n as usize];
            for k in &keys {
                let owners: Vec<u32> = (0..n)
                    .filter(|&i| Shard::new(i, n).unwrap().contains(k))
                    .collect();
                assert_eq!(owners.len(), 1, "{k} in shards {owners:?} of {n}");
                sizes[owners[0] as usize] += 1;
            }
            let mean = keys.len() / n as usize;
            assert!(
                sizes.iter().all(|&s| s.abs_diff(mean) < mean / 5 + 10),
                "{n} shards: {sizes:?}"
            );
        }
    }
}
