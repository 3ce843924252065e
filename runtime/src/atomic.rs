//! Writing files whole or not at all.
//!
//! Every file fennec writes (reports, checkpoints, ONNX models) goes through
//! [`write_atomic`]: the bytes go to a temporary file beside the target (tempfile's
//! `NamedTempFile`), are flushed to disk, and the temporary file is renamed over the
//! target. A crash, a full disk or Ctrl-C leaves either the old file or the new
//! one, never half of one.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Writes what `fill` produces to `path` atomically. On error the target is untouched
/// and the temporary file is removed.
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut io::BufWriter<&fs::File>) -> io::Result<()>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    // `dir/.name.tmpXXXXXX`: hidden, on the target's filesystem (so the rename is
    // atomic), deleted when dropped before `persist`.
    let prefix = format!(".{name}.tmp");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix);
    // The permissions `File::create` gives (0666 less the umask), not tempfile's 0600.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let tmp = builder.tempfile_in(dir)?;
    let mut w = io::BufWriter::new(tmp.as_file());
    fill(&mut w)?;
    w.flush()?;
    drop(w);
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// [`write_atomic`] for bytes already in memory.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic(path, |w| w.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_file_and_cleans_up_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.txt");
        write_bytes_atomic(&p, b"first").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"first");
        let err = write_atomic(&p, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("disk full"))
        });
        assert!(err.is_err());
        assert_eq!(
            fs::read(&p).unwrap(),
            b"first",
            "old content survives a failed write"
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn permissions_are_those_of_a_created_file() {
        let dir = tempfile::tempdir().unwrap();
        let (atomic, plain) = (dir.path().join("a"), dir.path().join("b"));
        write_bytes_atomic(&atomic, b"x").unwrap();
        fs::write(&plain, b"x").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions();
        assert_eq!(mode(&atomic), mode(&plain));
    }

    #[test]
    fn missing_folder_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_bytes_atomic(&dir.path().join("no/such/dir/x"), b"x").is_err());
    }
}
