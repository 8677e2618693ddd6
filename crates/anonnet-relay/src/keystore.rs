//! Persistent relay keys in the data directory: `identity.key` (the 32-byte Ed25519 seed)
//! and `onion.key` (the 32-byte X25519 secret), created on first start with mode 0600 in a
//! directory of mode 0700. Before trusting a key file, the directory and file are checked:
//! not writable by group or others.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anonnet_crypto::{IdentityKey, OnionKey};
use zeroize::Zeroizing;

use crate::RelayError;

/// File name of the identity key seed.
pub const IDENTITY_FILE: &str = "identity.key";
/// File name of the onion key secret.
pub const ONION_FILE: &str = "onion.key";

/// Create `dir` with mode 0700 if missing; refuse an existing directory that group or
/// others can write (someone else could replace the keys).
///
/// # Errors
/// [`RelayError::Keys`] naming the path when it cannot be created or is group/world
/// writable.
pub fn prepare_dir(dir: &Path) -> Result<(), RelayError> {
    let existed = dir.exists();
    fs::create_dir_all(dir).map_err(|e| keys_err(dir, &e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if !existed {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| keys_err(dir, &e.to_string()))?;
        }
        let meta = fs::metadata(dir).map_err(|e| keys_err(dir, &e.to_string()))?;
        if meta.permissions().mode() & 0o022 != 0 {
            return Err(keys_err(
                dir,
                "is writable by group or others; chmod 700 it before keys are stored there",
            ));
        }
    }
    Ok(())
}

fn keys_err(path: &Path, why: &str) -> RelayError {
    RelayError::Keys {
        path: path.to_path_buf(),
        why: why.to_owned(),
    }
}

fn load_or_create(
    path: PathBuf,
    make: impl FnOnce() -> Result<Zeroizing<[u8; 32]>, RelayError>,
) -> Result<Zeroizing<[u8; 32]>, RelayError> {
    match fs::read(&path) {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = fs::metadata(&path)
                    .map_err(|e| keys_err(&path, &e.to_string()))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(keys_err(
                        &path,
                        "is readable or writable by group/others; chmod 600 it",
                    ));
                }
            }
            let mut out = Zeroizing::new([0u8; 32]);
            if bytes.len() != 32 {
                return Err(keys_err(&path, "is not a 32-byte key"));
            }
            out.copy_from_slice(&bytes);
            Ok(out)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = make()?;
            let mut opts = fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts
                .open(&path)
                .map_err(|e| keys_err(&path, &e.to_string()))?;
            f.write_all(secret.as_slice())
                .and_then(|()| f.sync_all())
                .map_err(|e| keys_err(&path, &e.to_string()))?;
            Ok(secret)
        }
        Err(e) => Err(keys_err(&path, &e.to_string())),
    }
}

/// Load the identity and onion keys from `dir`, creating them on first start.
///
/// # Errors
/// [`RelayError::Keys`] naming the file when it cannot be read, written, has the wrong
/// length or loose permissions.
pub fn load_keys(dir: &Path) -> Result<(IdentityKey, OnionKey), RelayError> {
    prepare_dir(dir)?;
    let rng = |path: &Path| {
        let p = path.to_path_buf();
        move || {
            anonnet_crypto::random_bytes::<32>()
                .map(Zeroizing::new)
                .map_err(|_| keys_err(&p, "no randomness to create the key"))
        }
    };
    let id_path = dir.join(IDENTITY_FILE);
    let seed = load_or_create(id_path.clone(), rng(&id_path))?;
    let onion_path = dir.join(ONION_FILE);
    let onion = load_or_create(onion_path.clone(), rng(&onion_path))?;
    Ok((IdentityKey::from_seed(&seed), OnionKey::from_secret(&onion)))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keys_are_created_once_and_reloaded() {
        let dir = std::env::temp_dir().join(format!("anonnet-keys-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (id1, on1) = load_keys(&dir).unwrap();
        let (id2, on2) = load_keys(&dir).unwrap();
        assert_eq!(id1.public(), id2.public());
        assert_eq!(on1.public(), on2.public());
        {
            let mode = fs::metadata(dir.join(IDENTITY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            fs::set_permissions(dir.join(ONION_FILE), fs::Permissions::from_mode(0o644)).unwrap();
            assert!(load_keys(&dir).is_err());
        }
        fs::set_permissions(dir.join(ONION_FILE), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(load_keys(&dir).is_err(), "world-writable data dir refused");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(dir.join(IDENTITY_FILE), b"short").unwrap();
        assert!(load_keys(&dir).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
