//! Persistent relay keys in the data directory: `identity.key` (the 32-byte Ed25519 seed)
//! and the onion keys (`docs/protocol.md` §2): `onion.key` (the current 32-byte X25519
//! secret), `onion.key.old` (the previous one, while its grace lasts) and `onion.key.times`
//! (when each was created or replaced, see [`crate::onion_keys`]). Files are created with
//! mode 0600 in a directory of mode 0700; before trusting a key file, the directory and file
//! are checked with fs-mistrust: no one else may write the file, the directory or any
//! directory above it, nor read the file. Onion key files are replaced atomically
//! (a temporary file, fsynced, renamed over the old one, then the directory fsynced).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anonnet_crypto::{IdentityKey, OnionKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::onion_keys::{OnionKeyConfig, OnionKeyRing};
use crate::RelayError;

/// File name of the identity key seed.
pub const IDENTITY_FILE: &str = "identity.key";
/// File name of the current onion key secret (32 bytes, raw).
pub const ONION_FILE: &str = "onion.key";
/// File name of the previous onion key secret (32 bytes, raw); present only while the
/// relay keeps a previous key.
pub const ONION_OLD_FILE: &str = "onion.key.old";
/// File name of the onion keys' times (JSON, no secrets): the current key's public part
/// and creation time, the previous key's public part and replacement time, Unix seconds.
pub const ONION_TIMES_FILE: &str = "onion.key.times";

/// Create `dir` with mode 0700 if missing; refuse a directory that someone else can
/// write, or under a directory someone else can write (they could replace the keys):
/// [`anonnet_state::prepare_private_dir`] (fs-mistrust).
///
/// # Errors
/// [`RelayError::Untrusted`] naming the path when it cannot be created or someone else
/// can write it or a directory above it.
pub fn prepare_dir(dir: &Path) -> Result<(), RelayError> {
    anonnet_state::prepare_private_dir(dir).map_err(|source| RelayError::Untrusted {
        path: dir.to_path_buf(),
        source,
    })
}

fn keys_err(path: &Path, why: &str) -> RelayError {
    RelayError::Keys {
        path: path.to_path_buf(),
        why: why.to_owned(),
    }
}

/// Refuse a key file that someone else can read or write, or that sits under a directory
/// someone else can write ([`anonnet_state::check_private_file`], fs-mistrust).
fn check_private(path: &Path) -> Result<(), RelayError> {
    anonnet_state::check_private_file(path).map_err(|source| RelayError::Untrusted {
        path: path.to_path_buf(),
        source,
    })
}

/// The 32-byte secret in `path`, `None` when the file does not exist.
fn read_key_file(path: &Path) -> Result<Option<Zeroizing<[u8; 32]>>, RelayError> {
    let bytes = match fs::read(path) {
        Ok(b) => Zeroizing::new(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(keys_err(path, &e.to_string())),
    };
    check_private(path)?;
    let mut out = Zeroizing::new([0u8; 32]);
    if bytes.len() != 32 {
        return Err(keys_err(path, "is not a 32-byte key"));
    }
    out.copy_from_slice(&bytes);
    Ok(Some(out))
}

fn load_or_create(
    path: PathBuf,
    make: impl FnOnce() -> Result<Zeroizing<[u8; 32]>, RelayError>,
) -> Result<Zeroizing<[u8; 32]>, RelayError> {
    if let Some(secret) = read_key_file(&path)? {
        return Ok(secret);
    }
    let secret = make()?;
    // Whole or absent after a crash; an existing file is never replaced.
    anonnet_state::create_atomically(&path, secret.as_slice())
        .map_err(|e| keys_err(&path, &e.to_string()))?;
    Ok(secret)
}

fn random_secret(path: &Path) -> impl FnOnce() -> Result<Zeroizing<[u8; 32]>, RelayError> {
    let p = path.to_path_buf();
    move || {
        anonnet_crypto::random_bytes::<32>()
            .map(Zeroizing::new)
            .map_err(|_| keys_err(&p, "no randomness to create the key"))
    }
}

/// Load the identity and onion keys from `dir`, creating them on first start. The onion
/// key is the current one of `onion.key`; a relay uses [`load_identity`] and
/// [`load_onion_keys`] instead.
///
/// # Errors
/// [`RelayError::Keys`] naming the file when it cannot be read, written, has the wrong
/// length or loose permissions.
pub fn load_keys(dir: &Path) -> Result<(IdentityKey, OnionKey), RelayError> {
    let identity = load_identity(dir)?;
    let onion_path = dir.join(ONION_FILE);
    let onion = load_or_create(onion_path.clone(), random_secret(&onion_path))?;
    Ok((identity, OnionKey::from_secret(&onion)))
}

/// Load the identity key from `dir` (`identity.key`), creating the directory and the key on
/// first start.
///
/// # Errors
/// As [`load_keys`].
pub fn load_identity(dir: &Path) -> Result<IdentityKey, RelayError> {
    prepare_dir(dir)?;
    let id_path = dir.join(IDENTITY_FILE);
    let seed = load_or_create(id_path.clone(), random_secret(&id_path))?;
    Ok(IdentityKey::from_seed(&seed))
}

/// The contents of [`ONION_TIMES_FILE`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimesFile {
    /// Format version, 1.
    version: u8,
    current: KeyTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous: Option<KeyTime>,
}

/// One key's public part (64 hex digits) and time (Unix seconds): created for the current
/// key, replaced for the previous one.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyTime {
    public: String,
    time: u64,
}

impl KeyTime {
    fn new(public: &[u8; 32], time: SystemTime) -> KeyTime {
        KeyTime {
            public: hex::encode(public),
            // A time before 1970 (a very wrong clock) is written as 0.
            time: time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        }
    }

    /// The time, when this entry describes the key `public`.
    fn time_of(&self, public: &[u8; 32]) -> Option<SystemTime> {
        (self.public.eq_ignore_ascii_case(&hex::encode(public)))
            .then(|| UNIX_EPOCH.checked_add(Duration::from_secs(self.time)))
            .flatten()
    }
}

fn read_times(path: &Path) -> Result<Option<TimesFile>, RelayError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(keys_err(path, &e.to_string())),
    };
    check_private(path)?;
    let corrupt = |why: String| {
        keys_err(
            path,
            &format!(
                "is not a valid onion key times file ({why}); \
                 delete it to count the onion keys' age from now"
            ),
        )
    };
    let times: TimesFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if times.version != 1 {
        return Err(corrupt(format!("unknown version {}", times.version)));
    }
    let valid_hex =
        |k: &KeyTime| k.public.len() == 64 && k.public.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid_hex(&times.current) || !times.previous.as_ref().is_none_or(valid_hex) {
        return Err(corrupt("a public key is not 64 hex digits".into()));
    }
    Ok(Some(times))
}

/// Load the onion keys from `dir`: the current key from `onion.key` (created on first
/// start), the previous key from `onion.key.old` when present, their times from
/// `onion.key.times`. A time the times file does not give for the key in the file (the
/// times file is missing, e.g. in a data directory of a relay without rotation, or a
/// rotation was interrupted between the files) is `now`. Expired or due keys are not
/// dropped or rotated here: see [`OnionKeyRing::drop_expired`] and
/// [`OnionKeyRing::rotate_if_due`].
///
/// # Errors
/// [`RelayError::Keys`] naming the file when a key file cannot be read or written, has the
/// wrong length or loose permissions, or the times file is not valid.
pub fn load_onion_keys(
    dir: &Path,
    config: OnionKeyConfig,
    now: SystemTime,
) -> Result<OnionKeyRing, RelayError> {
    prepare_dir(dir)?;
    remove_stale_temporaries(dir);
    let current_path = dir.join(ONION_FILE);
    let secret = load_or_create(current_path.clone(), random_secret(&current_path))?;
    let current = OnionKey::from_secret(&secret);
    let previous = read_key_file(&dir.join(ONION_OLD_FILE))?.map(|s| OnionKey::from_secret(&s));
    let times = read_times(&dir.join(ONION_TIMES_FILE))?;
    let created = times
        .as_ref()
        .and_then(|t| t.current.time_of(&current.public()))
        .unwrap_or(now);
    let mut ring = OnionKeyRing::new(config, current, created);
    if let Some(previous) = previous {
        let replaced = times
            .as_ref()
            .and_then(|t| t.previous.as_ref())
            .and_then(|p| p.time_of(&previous.public()))
            .unwrap_or(now);
        ring = ring.with_previous(previous, replaced);
    }
    Ok(ring)
}

/// Store `ring` in `dir`, each file replaced atomically and durably, mode 0600: first
/// `onion.key.old` (written, or removed when there is no previous key), then `onion.key`,
/// then `onion.key.times`. A crash in between leaves keys whose times [`load_onion_keys`]
/// counts from the restart: the current key is never lost, and the previous one is at
/// worst answered for a grace counted from the restart.
///
/// # Errors
/// [`RelayError::Keys`] naming the file that could not be written or removed.
pub fn save_onion_keys(dir: &Path, ring: &OnionKeyRing) -> Result<(), RelayError> {
    let old_path = dir.join(ONION_OLD_FILE);
    match ring.previous() {
        Some((key, _)) => write_private(&old_path, key.secret_bytes().as_slice())?,
        None => {
            anonnet_state::remove_durably(&old_path)
                .map_err(|e| keys_err(&old_path, &e.to_string()))?;
        }
    }
    write_private(
        &dir.join(ONION_FILE),
        ring.current().secret_bytes().as_slice(),
    )?;
    let times = TimesFile {
        version: 1,
        current: KeyTime::new(&ring.current_public(), ring.current_created()),
        previous: ring
            .previous()
            .map(|(key, replaced)| KeyTime::new(&key.public(), replaced)),
    };
    let times_path = dir.join(ONION_TIMES_FILE);
    let mut text =
        serde_json::to_string_pretty(&times).map_err(|e| keys_err(&times_path, &e.to_string()))?;
    text.push('\n');
    write_private(&times_path, text.as_bytes())
}

/// Remove the temporary key files a crash left behind (they may hold a secret).
fn remove_stale_temporaries(dir: &Path) {
    for name in [IDENTITY_FILE, ONION_FILE, ONION_OLD_FILE, ONION_TIMES_FILE] {
        anonnet_state::remove_temporaries(&dir.join(name));
    }
}

/// Replace `path` by `bytes` ([`anonnet_state::write_atomically`]: mode 0600, fsynced,
/// renamed, directory fsynced).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), RelayError> {
    anonnet_state::write_atomically(path, bytes).map_err(|e| keys_err(path, &e.to_string()))
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

    const DAY: Duration = Duration::from_secs(86_400);

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn onion_keys_round_trip_through_the_data_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("relay");
        let config = OnionKeyConfig::default();
        let mut ring = load_onion_keys(&dir, config, t(0)).unwrap();
        assert_eq!(ring.current_created(), t(0));
        assert!(ring.previous().is_none());
        save_onion_keys(&dir, &ring).unwrap();
        let first = ring.current_public();
        assert!(!dir.join(ONION_OLD_FILE).exists());

        // Rotate and store; a later start finds both keys with their times.
        let rotated = t(0) + 28 * DAY;
        assert!(ring.rotate_if_due(rotated).unwrap());
        save_onion_keys(&dir, &ring).unwrap();
        for f in [ONION_FILE, ONION_OLD_FILE, ONION_TIMES_FILE] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
        let loaded = load_onion_keys(&dir, config, rotated + DAY).unwrap();
        assert_eq!(loaded.current_public(), ring.current_public());
        assert_eq!(loaded.current_created(), rotated);
        let (prev, replaced) = loaded.previous().unwrap();
        assert_eq!(prev.public(), first);
        assert_eq!(replaced, rotated);
        assert!(loaded.find(&first, rotated + DAY).is_some());
        // `onion.key` stays the current key, for tools that read it.
        assert_eq!(load_keys(&dir).unwrap().1.public(), ring.current_public());

        // Once its grace is over the previous key is dropped, and so is its file.
        let mut loaded = loaded;
        assert!(loaded.drop_expired(rotated + 7 * DAY));
        save_onion_keys(&dir, &loaded).unwrap();
        assert!(!dir.join(ONION_OLD_FILE).exists());
        let again = load_onion_keys(&dir, config, rotated + 8 * DAY).unwrap();
        assert!(again.previous().is_none());
        assert_eq!(again.current_created(), rotated);
        // No temporary file is left behind.
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [IDENTITY_FILE, ONION_FILE, ONION_TIMES_FILE]);
    }

    #[test]
    fn missing_times_file_counts_the_keys_from_now() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        // A data directory of a relay from before rotation: `onion.key` alone.
        let (_, onion) = load_keys(dir).unwrap();
        let ring = load_onion_keys(dir, OnionKeyConfig::default(), t(5)).unwrap();
        assert_eq!(ring.current_public(), onion.public());
        assert_eq!(ring.current_created(), t(5));
    }

    #[test]
    fn corrupt_times_file_is_refused_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ring = load_onion_keys(dir, OnionKeyConfig::default(), t(0)).unwrap();
        save_onion_keys(dir, &ring).unwrap();
        let times = dir.join(ONION_TIMES_FILE);
        for bad in [
            &b"{not json"[..],
            br#"{"version":2,"current":{"public":"00","time":1}}"#,
            br#"{"version":1,"current":{"public":"zz","time":1}}"#,
            br#"{"version":1,"current":{"public":"00","time":-1}}"#,
        ] {
            fs::write(&times, bad).unwrap();
            let e = load_onion_keys(dir, OnionKeyConfig::default(), t(0))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&times.display().to_string()), "{e}");
            assert!(e.contains("not a valid onion key times file"), "{e}");
        }
        // A corrupt previous key file is refused as well, naming it.
        fs::remove_file(&times).unwrap();
        let old = dir.join(ONION_OLD_FILE);
        fs::write(&old, b"short").unwrap();
        fs::set_permissions(&old, fs::Permissions::from_mode(0o600)).unwrap();
        let e = load_onion_keys(dir, OnionKeyConfig::default(), t(0))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&old.display().to_string()) && e.contains("32-byte"),
            "{e}"
        );
    }

    #[test]
    fn interrupted_rotation_keeps_the_current_key() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let config = OnionKeyConfig::default();
        let mut ring = load_onion_keys(dir, config, t(0)).unwrap();
        save_onion_keys(dir, &ring).unwrap();
        let times_before = fs::read(dir.join(ONION_TIMES_FILE)).unwrap();
        let rotated = t(0) + 28 * DAY;
        ring.rotate_if_due(rotated).unwrap();
        save_onion_keys(dir, &ring).unwrap();
        // As if the relay died before the times file was replaced, leaving a temporary
        // file behind.
        fs::write(dir.join(ONION_TIMES_FILE), &times_before).unwrap();
        fs::write(dir.join(".onion.key.times.Crash1"), [0x42; 32]).unwrap();
        let restart = rotated + Duration::from_secs(60);
        let loaded = load_onion_keys(dir, config, restart).unwrap();
        assert_eq!(loaded.current_public(), ring.current_public());
        assert_eq!(
            loaded.current_created(),
            restart,
            "unknown age counts from now"
        );
        let (prev, replaced) = loaded.previous().unwrap();
        assert_eq!(prev.public(), ring.previous().unwrap().0.public());
        assert_eq!(replaced, restart);
        assert!(!dir.join(".onion.key.times.Crash1").exists());
    }
}
