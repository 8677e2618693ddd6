#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use std::ffi::OsString;
use std::fmt::Display;
use std::io::Write;
use std::path::{Path, PathBuf};

use tracing::warn;

mod private;
pub use private::{check_private_file, prepare_private_dir, PrivateError};

/// How many `NAME.bad`, `NAME.bad.1` … `NAME.bad.9` a state file may leave before the
/// oldest name, `NAME.bad`, is reused.
pub const MAX_SET_ASIDE: usize = 10;

/// Replace `path` with `bytes` atomically and durably: a temporary file in the same
/// directory (created exclusively, mode 0600 on Unix), written, fsynced, renamed over
/// `path`; then the directory is fsynced so the rename itself survives a power cut (best
/// effort: a directory that cannot be opened or synced is not an error, the file is in
/// place).
///
/// # Errors
/// The I/O error of creating, writing, syncing or renaming the temporary file (a full
/// disk: `StorageFull`; a read-only directory: `PermissionDenied` or `ReadOnlyFilesystem`).
/// `path` is then unchanged and the temporary file removed. The error does not name
/// `path`: callers log it with the path ("cannot save PATH: ERROR").
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = synced_temporary(path, bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(parent_dir(path));
    Ok(())
}

/// Write `bytes` to `path`, which must not exist yet (a new secret key: never replaced),
/// as [`write_atomically`] does: `path` appears whole or not at all, never truncated by a
/// crash or a full disk.
///
/// # Errors
/// `AlreadyExists` when `path` exists (it is left as it is), else the I/O error of
/// creating, writing, syncing or linking the temporary file, which is then removed.
pub fn create_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = synced_temporary(path, bytes)?;
    tmp.persist_noclobber(path).map_err(|e| e.error)?;
    sync_dir(parent_dir(path));
    Ok(())
}

/// Remove `path` so that the removal survives a power cut (the directory is fsynced
/// after it, best effort, as [`write_atomically`] does for a rename). Returns false when
/// there was no such file.
///
/// # Errors
/// The I/O error of the removal other than `NotFound`.
pub fn remove_durably(path: &Path) -> std::io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            sync_dir(parent_dir(path));
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// A temporary file `.NAME.XXXXXX` beside `path` (mode 0600 on Unix) holding `bytes`,
/// fsynced; removed when dropped unless persisted.
fn synced_temporary(path: &Path, bytes: &[u8]) -> std::io::Result<tempfile::NamedTempFile> {
    let mut tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(path))
        .rand_bytes(TEMP_SUFFIX_LEN)
        .tempfile_in(parent_dir(path))?;
    // Through the `File`: its errors are the OS's, not wrapped with the temporary's name.
    tmp.as_file_mut().write_all(bytes)?;
    tmp.as_file().sync_all()?;
    Ok(tmp)
}

/// Remove the temporary files that [`write_atomically`] or [`create_atomically`] left
/// for `path` when the process was killed mid-write (`.NAME.XXXXXX` in the same
/// directory; they may hold a secret). Call it at start-up, before the first write.
///
/// Returns how many were removed; a directory that cannot be listed counts as none.
pub fn remove_temporaries(path: &Path) -> usize {
    let prefix = temp_prefix(path);
    let prefix = prefix.to_string_lossy();
    let Ok(entries) = std::fs::read_dir(parent_dir(path)) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix(prefix.as_ref()).is_some_and(|rest| {
                rest.len() == TEMP_SUFFIX_LEN && rest.chars().all(|c| c.is_ascii_alphanumeric())
            })
        })
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// Random characters after the prefix of a temporary file (`tempfile`'s default).
const TEMP_SUFFIX_LEN: usize = 6;

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Make a rename in `dir` durable; best effort (a no-op where directories cannot be
/// opened).
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// `.NAME.` so that a temporary file left by a killed process says whose it was.
fn temp_prefix(path: &Path) -> OsString {
    let mut p = OsString::from(".");
    p.push(path.file_name().unwrap_or_default());
    p.push(".");
    p
}

/// Read the state file `path` and parse its bytes with `parse`.
///
/// Returns `None` when the file does not exist (a first start), or when it cannot be
/// read or `parse` refuses it: the file is then moved aside ([`set_aside`], a WARN naming
/// it and the reason) so that the next save cannot overwrite what a person may still
/// recover, and the caller starts afresh. Temporary files a killed process left for
/// `path` are removed first ([`remove_temporaries`]).
pub fn load<T, E: Display>(path: &Path, parse: impl FnOnce(&[u8]) -> Result<T, E>) -> Option<T> {
    remove_temporaries(path);
    match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            set_aside(path, &format!("cannot be read ({e})"), "starting afresh");
            None
        }
        Ok(bytes) => match parse(&bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                set_aside(path, &format!("cannot be parsed ({e})"), "starting afresh");
                None
            }
        },
    }
}

/// Move the state file `path` aside to `NAME.bad` (or `NAME.bad.1` … when older ones are
/// there, at most [`MAX_SET_ASIDE`]), and WARN: "PATH WHY; moved aside to PATH.bad
/// (KEPT)". `kept` says what the daemon goes on with ("starting afresh", "3 of 5 guards
/// kept").
///
/// Returns the new name, or `None` when the file could not be renamed (the WARN then says
/// so and why; a later save will replace the file).
pub fn set_aside(path: &Path, why: &dyn Display, kept: &str) -> Option<PathBuf> {
    let aside = bad_name(path);
    let renamed = std::fs::rename(path, &aside);
    // `components()` drops `.` parts: `DIR/guards.json`, not `DIR/./guards.json`.
    let (shown, shown_aside): (PathBuf, PathBuf) =
        (path.components().collect(), aside.components().collect());
    match renamed {
        Ok(()) => {
            warn!(
                "state file {} {why}; moved aside to {} ({kept})",
                shown.display(),
                shown_aside.display()
            );
            Some(aside)
        }
        Err(e) => {
            warn!(
                "state file {} {why}, and cannot be moved aside to {}: {e} ({kept})",
                shown.display(),
                shown_aside.display()
            );
            None
        }
    }
}

/// The first of `NAME.bad`, `NAME.bad.1` … that does not exist, else `NAME.bad`.
fn bad_name(path: &Path) -> PathBuf {
    let mut base = path.as_os_str().to_os_string();
    base.push(".bad");
    let base = PathBuf::from(base);
    (0..MAX_SET_ASIDE)
        .map(|i| {
            if i == 0 {
                base.clone()
            } else {
                let mut n = base.as_os_str().to_os_string();
                n.push(format!(".{i}"));
                PathBuf::from(n)
            }
        })
        .find(|p| !p.exists())
        .unwrap_or(base)
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
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        }
        // A directory that does not exist: an error, nothing written.
        assert!(write_atomically(&dir.path().join("no/such/file"), b"x").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_failed_save_keeps_the_old_file_and_leaves_nothing_behind() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_atomically(&p, b"old").unwrap();
        // Root ignores directory permissions: a file in place of the directory instead.
        let blocked = dir.path().join("file-not-dir");
        std::fs::write(&blocked, b"").unwrap();
        assert!(write_atomically(&blocked.join("state.json"), b"new").is_err());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o500)).unwrap();
        let r = write_atomically(&p, b"new");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        if r.is_err() {
            assert_eq!(std::fs::read(&p).unwrap(), b"old");
        }
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    /// A full disk: a 64 KiB tmpfs (needs root and `mount`; skipped with a note otherwise).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_disk_keeps_the_old_file_and_leaves_no_temporary_file() {
        use std::process::Command;
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k,mode=700", "tmpfs"])
            .arg(mnt)
            .output()
            .is_ok_and(|o| o.status.success());
        if !mounted {
            eprintln!("skipped: cannot mount a tmpfs (not root?)");
            return;
        }
        let p = mnt.join("guards.json");
        let result = std::panic::catch_unwind(|| {
            write_atomically(&p, b"old").unwrap();
            let e = write_atomically(&p, &vec![7u8; 256 * 1024]).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{e}");
            assert_eq!(std::fs::read(&p).unwrap(), b"old");
            let names: Vec<_> = std::fs::read_dir(mnt)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, ["guards.json"]);
        });
        let _ = Command::new("umount").arg(mnt).status();
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    }

    #[test]
    fn a_new_file_is_never_replaced_and_crash_leftovers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("service.key");
        create_atomically(&p, b"first").unwrap();
        let e = create_atomically(&p, b"second").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        std::fs::write(dir.path().join(".service.key.Ab12cD"), b"half").unwrap();
        std::fs::write(dir.path().join(".service.key.keepme-long"), b"other").unwrap();
        assert_eq!(remove_temporaries(&p), 1);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn unparseable_file_is_set_aside_whole_and_missing_is_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pins.json");
        std::fs::write(dir.path().join(".pins.json.x1Y2z3"), b"left by a kill").unwrap();
        assert_eq!(load(&p, |_| Ok::<_, String>(1)), None);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        std::fs::write(&p, b"{garbage").unwrap();
        assert_eq!(load(&p, |_| Err::<u8, _>("not json")), None);
        assert!(!p.exists());
        assert_eq!(
            std::fs::read(dir.path().join("pins.json.bad")).unwrap(),
            b"{garbage"
        );
        // A second bad file does not replace the first one set aside.
        std::fs::write(&p, b"second").unwrap();
        assert_eq!(load(&p, |_| Err::<u8, _>("no")), None);
        assert_eq!(
            std::fs::read(dir.path().join("pins.json.bad")).unwrap(),
            b"{garbage"
        );
        assert_eq!(
            std::fs::read(dir.path().join("pins.json.bad.1")).unwrap(),
            b"second"
        );
        // A good file is parsed and left where it is.
        std::fs::write(&p, b"7").unwrap();
        let v = load(&p, |b| {
            std::str::from_utf8(b)
                .map_err(|e| e.to_string())?
                .parse::<u8>()
                .map_err(|e| e.to_string())
        });
        assert_eq!(v, Some(7));
        assert!(p.exists());
    }
}
