//! Where secrets are kept: directories and files that only this user (and root) may write,
//! and key files only they may read, checked with Arti's `fs-mistrust` — the target itself
//! and every directory above it, so a key is refused when anyone else could have replaced
//! it or a directory on its way.
//!
//! `FS_MISTRUST_DISABLE_PERMISSIONS_CHECKS=true` turns the checks off (fs-mistrust's own
//! variable, as in Arti), for file systems without Unix modes.

use std::path::{Path, PathBuf};

use fs_mistrust::Mistrust;

/// Why a private directory or file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PrivateError {
    /// The permission checker could not be set up (the user database could not be read).
    #[error("cannot check permissions: {0}")]
    Setup(String),
    /// `path`, or a directory above it, can be written (or, for a key file, read) by
    /// someone else; `why` is fs-mistrust's account (which path, which bits).
    /// Shown without `path` (callers name it, as they do for I/O errors): `why` names the
    /// path that is wrong, which may be a directory above it.
    #[error("{why}; fix the permissions (chmod 700 for directories, 600 for key files) or set FS_MISTRUST_DISABLE_PERMISSIONS_CHECKS=true")]
    Untrusted {
        /// The directory or file that was checked.
        path: PathBuf,
        /// fs-mistrust's message.
        why: String,
    },
}

/// The checker: trusts this user and root, and honours
/// `FS_MISTRUST_DISABLE_PERMISSIONS_CHECKS`.
fn mistrust() -> Result<Mistrust, PrivateError> {
    Mistrust::builder()
        .controlled_by_default_env_var()
        .build()
        .map_err(|e| PrivateError::Setup(e.to_string()))
}

fn untrusted(path: &Path, e: &fs_mistrust::Error) -> PrivateError {
    PrivateError::Untrusted {
        path: path.to_path_buf(),
        why: e.to_string(),
    }
}

/// Create `dir` and any missing parents (mode 0700), then check that no one but this
/// user and root can write it or any directory above it (others may read or list it: the
/// key files in it are checked one by one with [`check_private_file`]).
///
/// # Errors
/// [`PrivateError::Untrusted`] naming `dir` when it cannot be created or someone else can
/// write it or a directory above it; [`PrivateError::Setup`] when nothing can be checked.
pub fn prepare_private_dir(dir: &Path) -> Result<(), PrivateError> {
    mistrust()?
        .verifier()
        .permit_readable()
        .make_directory(dir)
        .map_err(|e| untrusted(dir, &e))
}

/// Check that `path` is a file that only this user and root can read or write, in
/// directories that only they can write.
///
/// # Errors
/// [`PrivateError::Untrusted`] naming `path` when it is missing, not a file, or someone
/// else could read or replace it; [`PrivateError::Setup`] when nothing can be checked.
pub fn check_private_file(path: &Path) -> Result<(), PrivateError> {
    mistrust()?
        .verifier()
        .require_file()
        .check(path)
        .map_err(|e| untrusted(path, &e))
}

impl anonnet_error::HasKind for PrivateError {
    /// [`anonnet_error::ErrorKind::Permission`] for an untrusted path,
    /// [`anonnet_error::ErrorKind::LocalResource`] when the check itself could not run.
    fn kind(&self) -> anonnet_error::ErrorKind {
        match self {
            PrivateError::Setup(_) => anonnet_error::ErrorKind::LocalResource,
            PrivateError::Untrusted { .. } => anonnet_error::ErrorKind::Permission,
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_new_directory_is_private_and_a_writable_one_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a").join("keys");
        prepare_private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        // Readable by others is fine for the directory.
        set_mode(&dir, 0o755);
        prepare_private_dir(&dir).unwrap();
        set_mode(&dir, 0o777);
        let e = prepare_private_dir(&dir).unwrap_err().to_string();
        assert!(e.contains("keys") && e.contains("chmod 700"), "{e}");
        // A directory above it that others may write is refused too.
        set_mode(&dir, 0o700);
        set_mode(&tmp.path().join("a"), 0o777);
        let e = prepare_private_dir(&dir).unwrap_err().to_string();
        let above = format!("{:?} is u=rwx,g=rwx,o=rwx", tmp.path().join("a"));
        assert!(e.contains(&above), "{e}");
        set_mode(&tmp.path().join("a"), 0o700);
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("identity.key");
        crate::create_atomically(&key, b"secret").unwrap();
        check_private_file(&key).unwrap();
        set_mode(&key, 0o644);
        let e = check_private_file(&key).unwrap_err().to_string();
        assert!(e.contains("identity.key") && e.contains("600"), "{e}");
        set_mode(&key, 0o600);
        assert!(check_private_file(&tmp.path().join("missing.key")).is_err());
    }
}
