//! The control cookie: 32 random bytes, stored as 64 hex digits and a newline in
//! `<state_dir>/control.cookie` with mode 0600. A valid cookie is reused at the next start
//! (so a read-only state directory does not stop the daemon, and a tray keeps working
//! across restarts); a missing, damaged or group/other-readable one is replaced by a new
//! one. Whoever can read that file may steer the daemon, so only its owner can.

use std::fmt;
use std::fs;
use std::path::Path;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::ControlError;

/// Name of the cookie file in the state directory.
pub const COOKIE_FILE: &str = "control.cookie";

/// Length of the cookie in bytes (64 hex digits in the file and the header).
pub const COOKIE_LEN: usize = 32;

/// The control API secret. Zeroized on drop; `Debug` prints no secret.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Cookie([u8; COOKIE_LEN]);

impl fmt::Debug for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cookie([scrubbed])")
    }
}

impl Cookie {
    /// A fresh random cookie from the OS random number generator.
    ///
    /// # Errors
    /// [`ControlError::File`] (naming no file) if the OS has no randomness to give.
    pub fn generate() -> Result<Cookie, ControlError> {
        let mut bytes = [0u8; COOKIE_LEN];
        getrandom::fill(&mut bytes)
            .map_err(|e| ControlError::file("(random cookie)", format!("no OS randomness: {e}")))?;
        let cookie = Cookie(bytes);
        bytes.zeroize();
        Ok(cookie)
    }

    /// The cookie from its 64 hex digits (surrounding whitespace ignored).
    ///
    /// Returns `None` for anything else.
    pub fn from_hex(text: &str) -> Option<Cookie> {
        let text = text.trim();
        if text.len() != 2 * COOKIE_LEN {
            return None;
        }
        let mut bytes = [0u8; COOKIE_LEN];
        let ok = hex::decode_to_slice(text, &mut bytes).is_ok();
        let cookie = Cookie(bytes);
        bytes.zeroize();
        ok.then_some(cookie)
    }

    /// The 64 lowercase hex digits, zeroized when dropped.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0))
    }

    /// The value of the `Authorization` header that carries this cookie.
    pub fn bearer(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("Bearer {}", self.to_hex().as_str()))
    }

    /// Whether `presented` (raw bytes) equals this cookie, in time independent of where
    /// they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        presented.len() == COOKIE_LEN && bool::from(self.0.ct_eq(presented))
    }

    /// Whether an `Authorization` header value is `Bearer <this cookie in hex>`.
    pub fn matches_header(&self, value: &[u8]) -> bool {
        let Some(hex_part) = value.strip_prefix(b"Bearer ") else {
            return false;
        };
        let mut presented = Zeroizing::new([0u8; COOKIE_LEN]);
        if hex::decode_to_slice(hex_part.trim_ascii(), presented.as_mut_slice()).is_err() {
            return false;
        }
        self.matches(presented.as_slice())
    }

    /// Generate a cookie and write it to `<state_dir>/control.cookie` (mode 0600),
    /// replacing an old one ([`Cookie::load_or_create_in`] keeps a valid one). The state directory is created with mode 0700 if missing and
    /// refused if someone else can write it or a directory above it (they could swap the
    /// file).
    ///
    /// # Errors
    /// [`ControlError::File`] naming the directory or file.
    pub fn create_in(state_dir: &Path) -> Result<Cookie, ControlError> {
        prepare_state_dir(state_dir)?;
        let cookie = Cookie::generate()?;
        cookie.write(&state_dir.join(COOKIE_FILE))?;
        Ok(cookie)
    }

    /// The cookie in `<state_dir>/control.cookie` when it is valid (64 hex digits) and
    /// no one else can read it (fs-mistrust); otherwise a new one, written there. A file that is not a
    /// cookie is moved aside to `control.cookie.bad` with a WARN
    /// ([`anonnet_state::set_aside`]); a cookie that someone else can read is replaced
    /// (it may be known) with a WARN. A valid cookie is not rewritten, so a read-only
    /// state directory holding one does not stop the daemon. The state directory is
    /// checked as in [`Cookie::create_in`].
    ///
    /// # Errors
    /// [`ControlError::File`] naming the directory or file: the directory cannot be
    /// created or someone else can write it or a directory above it, or a new cookie
    /// cannot be written.
    pub fn load_or_create_in(state_dir: &Path) -> Result<Cookie, ControlError> {
        prepare_state_dir(state_dir)?;
        let path = state_dir.join(COOKIE_FILE);
        let loaded = anonnet_state::load(&path, |b| {
            std::str::from_utf8(b)
                .ok()
                .and_then(Cookie::from_hex)
                .ok_or("is not a control cookie (64 hex digits)")
        });
        if let Some(cookie) = loaded {
            match anonnet_state::check_private_file(&path) {
                Ok(()) => return Ok(cookie),
                Err(e) => tracing::warn!(
                    "{}: {e}; replacing it with a new cookie (the old one may be known)",
                    path.display()
                ),
            }
        }
        let cookie = Cookie::generate()?;
        cookie.write(&path)?;
        Ok(cookie)
    }

    /// Write the cookie to `path` with mode 0600 ([`anonnet_state::write_atomically`]: a
    /// temporary file of mode 0600 in the same directory, fsynced, renamed over `path`; a
    /// failure leaves no temporary file).
    ///
    /// # Errors
    /// [`ControlError::File`] naming the file.
    pub fn write(&self, path: &Path) -> Result<(), ControlError> {
        let body = Zeroizing::new(format!("{}\n", self.to_hex().as_str()));
        anonnet_state::write_atomically(path, body.as_bytes())
            .map_err(|e| ControlError::file(path, format!("cannot write: {e}")))
    }

    /// Read a cookie file.
    ///
    /// # Errors
    /// [`ControlError::File`] naming the file when it cannot be read or does not hold 64
    /// hex digits.
    pub fn read(path: &Path) -> Result<Cookie, ControlError> {
        let text =
            Zeroizing::new(fs::read_to_string(path).map_err(|e| {
                ControlError::file(path, format!("cannot read control cookie: {e}"))
            })?);
        Cookie::from_hex(&text).ok_or_else(|| {
            ControlError::file(
                path,
                "is not a control cookie (expected 64 hex digits, as written by `anonnet run`)",
            )
        })
    }
}

/// Create `dir` (mode 0700) if missing; refuse it if someone else may write it or a
/// directory above it ([`anonnet_state::prepare_private_dir`], fs-mistrust).
fn prepare_state_dir(dir: &Path) -> Result<(), ControlError> {
    anonnet_state::prepare_private_dir(dir)
        .map_err(|e| ControlError::file(dir, format!("cannot keep the control cookie here: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    pub(crate) fn test_dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "anonnet-control-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn cookie_file_is_private_and_reads_back() {
        let dir = test_dir("cookie").join("state");
        let cookie = Cookie::create_in(&dir).unwrap();
        let path = dir.join(COOKIE_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "cookie file mode {mode:o}");
            let mode = fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "state dir mode {mode:o}");
        }
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 64);
        assert!(text.ends_with('\n'));
        let back = Cookie::read(&path).unwrap();
        assert!(back.matches(&cookie.0));
        // A second start replaces it with a different one, still 0600.
        let again = Cookie::create_in(&dir).unwrap();
        assert!(!again.matches(&cookie.0));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let _ = fs::remove_dir_all(dir.parent().unwrap());
    }

    #[cfg(unix)]
    #[test]
    fn a_valid_cookie_is_reused_and_a_bad_one_set_aside() {
        use std::os::unix::fs::PermissionsExt;
        let dir = test_dir("reuse").join("state");
        let first = Cookie::load_or_create_in(&dir).unwrap();
        let path = dir.join(COOKIE_FILE);
        // Reused, even from a directory the daemon may not write (root may write it
        // anyway, so the file's unchanged inode is what shows nothing was written).
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        let before = inode(&path);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o500)).unwrap();
        let again = Cookie::load_or_create_in(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(again.matches(&first.0));
        assert_eq!(inode(&path), before);
        // Damaged: set aside whole, a new cookie written.
        fs::write(&path, b"0123 not a cookie").unwrap();
        let fresh = Cookie::load_or_create_in(&dir).unwrap();
        assert!(!fresh.matches(&first.0));
        assert_eq!(
            fs::read(dir.join("control.cookie.bad")).unwrap(),
            b"0123 not a cookie"
        );
        assert!(Cookie::read(&path).unwrap().matches(&fresh.0));
        // Readable by others: replaced.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let replaced = Cookie::load_or_create_in(&dir).unwrap();
        assert!(!replaced.matches(&fresh.0));
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = fs::remove_dir_all(dir.parent().unwrap());
    }

    #[cfg(unix)]
    #[test]
    fn world_writable_state_dir_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = test_dir("writable");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let e = Cookie::create_in(&dir).unwrap_err().to_string();
        assert!(e.contains("is u=rwx,g=rwx,o=rwx; must be g-w,o-w"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn header_check_accepts_only_the_exact_cookie() {
        let c = Cookie::generate().unwrap();
        assert!(c.matches_header(c.bearer().as_bytes()));
        assert!(c.matches_header(format!("Bearer {}", c.to_hex().to_uppercase()).as_bytes()));
        assert!(!c.matches_header(c.to_hex().as_bytes()), "scheme required");
        assert!(!c.matches_header(b"Bearer "));
        assert!(!c.matches_header(b"Bearer zz"));
        let mut other = c.to_hex().to_string();
        other.replace_range(63..64, if other.ends_with('0') { "1" } else { "0" });
        assert!(!c.matches_header(format!("Bearer {other}").as_bytes()));
        assert!(!c.matches_header(format!("Bearer {}00", c.to_hex().as_str()).as_bytes()));
    }

    #[test]
    fn malformed_cookie_file_is_named() {
        let dir = test_dir("bad-cookie");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(COOKIE_FILE);
        fs::write(&path, "not hex\n").unwrap();
        let e = Cookie::read(&path).unwrap_err().to_string();
        assert!(
            e.contains(COOKIE_FILE) && e.contains("64 hex digits"),
            "{e}"
        );
        assert!(format!("{:?}", Cookie::generate().unwrap()).contains("scrubbed"));
        let _ = fs::remove_dir_all(&dir);
    }
}
