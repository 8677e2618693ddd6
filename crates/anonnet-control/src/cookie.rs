//! The control cookie: 32 random bytes, stored as 64 hex digits and a newline in
//! `<state_dir>/control.cookie` with mode 0600, written afresh at every daemon start.
//! Whoever can read that file may steer the daemon, so only its owner can.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

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
    /// replacing an old one. The state directory is created with mode 0700 if missing and
    /// refused if group or others can write it (they could swap the file).
    ///
    /// # Errors
    /// [`ControlError::File`] naming the directory or file.
    pub fn create_in(state_dir: &Path) -> Result<Cookie, ControlError> {
        prepare_state_dir(state_dir)?;
        let cookie = Cookie::generate()?;
        cookie.write(&state_dir.join(COOKIE_FILE))?;
        Ok(cookie)
    }

    /// Write the cookie to `path` with mode 0600: a temporary file in the same directory
    /// (created exclusively, 0600 from the start) renamed over `path`.
    ///
    /// # Errors
    /// [`ControlError::File`] naming the file.
    pub fn write(&self, path: &Path) -> Result<(), ControlError> {
        let tmp = tmp_path(path);
        let _ = fs::remove_file(&tmp);
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let body = Zeroizing::new(format!("{}\n", self.to_hex().as_str()));
        let written = options
            .open(&tmp)
            .and_then(|mut f| f.write_all(body.as_bytes()).and_then(|()| f.sync_all()))
            .and_then(|()| fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(ControlError::file(path, format!("cannot write: {e}")));
        }
        Ok(())
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

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Create `dir` (mode 0700) if missing; refuse it if group or others may write it.
fn prepare_state_dir(dir: &Path) -> Result<(), ControlError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| ControlError::file(dir, format!("cannot create state directory: {e}")))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir)
            .map_err(|e| ControlError::file(dir, e))?
            .permissions()
            .mode();
        if mode & 0o022 != 0 {
            return Err(ControlError::file(
                dir,
                "is writable by group or others; chmod 700 it before the control cookie is \
                 stored there",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    pub(crate) fn test_dir(name: &str) -> PathBuf {
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
    fn world_writable_state_dir_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = test_dir("writable");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let e = Cookie::create_in(&dir).unwrap_err().to_string();
        assert!(e.contains("writable by group or others"), "{e}");
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
