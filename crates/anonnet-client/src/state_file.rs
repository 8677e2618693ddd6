//! Writing the client's state files (`guards.json`, `dark-pins.json`, `consensus`): through
//! a temporary file in the same directory (`tempfile`), fsynced, then renamed over the old
//! file. A crash, a power cut or a full disk leaves the old file whole and no stray
//! temporary file (`NamedTempFile` removes its file when the write fails).

use std::io::Write;
use std::path::Path;

/// Replace `path` with `bytes` atomically and durably.
///
/// # Errors
/// The I/O error of creating, writing, syncing or renaming; `path` is then unchanged.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map(drop).map_err(|e| e.error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_atomically(&p, b"one").unwrap();
        write_atomically(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A directory that does not exist: an error, nothing written.
        assert!(write_atomically(&dir.path().join("no/such/file"), b"x").is_err());
    }
}
