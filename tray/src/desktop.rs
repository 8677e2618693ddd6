//! What the tray does on the desktop besides talking to the daemon: start `anonnet run`,
//! open a folder, put text on the clipboard.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Name of the daemon binary.
const DAEMON_BIN: &str = "anonnet";
/// How long a clipboard helper (`wl-copy`, `xclip`, `xsel`) may take to take the text.
const HELPER_WAIT: Duration = Duration::from_secs(3);

/// The `anonnet` binary: next to this executable (an install or a cargo target dir), else
/// the first on `PATH`.
pub fn find_daemon() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(DAEMON_BIN)));
    beside
        .into_iter()
        .chain(on_path(DAEMON_BIN))
        .find(|p| is_executable(p))
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    }
    #[cfg(not(unix))]
    {
        p.is_file()
    }
}

/// Start `BIN run [--config CONFIG]` detached from the tray: its own process group (a
/// Ctrl-C meant for the tray does not reach it), no terminal, stdout and stderr appended
/// to `log`. It keeps running when the tray quits.
///
/// # Errors
/// The I/O error of creating the log or spawning.
pub fn start_daemon(bin: &Path, config: Option<&Path>, log: &Path) -> std::io::Result<Child> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(bin);
    cmd.arg("run");
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    cmd.spawn()
}

/// The last non-empty line of `log`, without terminal colour codes: why a daemon the tray
/// started has stopped.
pub fn last_line(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    Some(strip_ansi(line).trim().to_owned())
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters… final byte in @..~
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Open `dir` in the desktop's file manager (`xdg-open`; `open` on macOS). The opener is
/// reaped in the background.
///
/// # Errors
/// A message when no opener could be started.
pub fn open_folder(dir: &Path) -> Result<(), String> {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let mut child = Command::new(opener)
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {opener}: {e}"))?;
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(())
}

/// The clipboard: the X11 clipboard through arboard (pure Rust, also served to Wayland
/// programs by XWayland), else `wl-copy`, `xclip` or `xsel` when installed.
///
/// The arboard handle is kept for the life of the tray: on X11 the owner of a selection
/// serves it, so the text would vanish with the handle.
#[derive(Default)]
pub struct Clipboard {
    x11: Mutex<Option<arboard::Clipboard>>,
}

impl Clipboard {
    /// Put `text` on the clipboard; returns what did it.
    ///
    /// # Errors
    /// Why nothing could (no display, no helper installed).
    pub fn copy(&self, text: &str) -> Result<&'static str, String> {
        let mut why = Vec::new();
        if let Ok(mut slot) = self.x11.lock() {
            if slot.is_none() {
                match arboard::Clipboard::new() {
                    Ok(c) => *slot = Some(c),
                    Err(e) => why.push(format!("X11: {e}")),
                }
            }
            if let Some(c) = slot.as_mut() {
                match c.set_text(text) {
                    Ok(()) => return Ok("X11 clipboard"),
                    Err(e) => why.push(format!("X11: {e}")),
                }
            }
        }
        let helpers: [(&'static str, &[&str]); 3] = [
            ("wl-copy", &[]),
            ("xclip", &["-selection", "clipboard"]),
            ("xsel", &["--clipboard", "--input"]),
        ];
        for (helper, args) in helpers {
            if helper == "wl-copy" && std::env::var_os("WAYLAND_DISPLAY").is_none() {
                continue;
            }
            match pipe_to(helper, args, text) {
                Ok(()) => return Ok(helper),
                Err(e) => why.push(e),
            }
        }
        Err(why.join("; "))
    }
}

/// Run `helper ARGS` with `text` on its stdin; it must exit 0 within [`HELPER_WAIT`] (the
/// helpers fork a server that keeps the selection).
fn pipe_to(helper: &str, args: &[&str], text: &str) -> Result<(), String> {
    let mut child = Command::new(helper)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{helper}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("{helper}: {e}"))?;
    }
    let deadline = Instant::now() + HELPER_WAIT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{helper}: {status}")),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{helper}: no answer in {HELPER_WAIT:?}"));
            }
            Err(e) => return Err(format!("{helper}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_log_line_says_why_the_daemon_stopped() {
        let dir = std::env::temp_dir().join(format!("anonnet-tray-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("daemon.log");
        std::fs::write(
            &log,
            "\u{1b}[2m2026-01-01T00:00:00Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m starting\n\
             anonnet: error: no client config at /home/u/.config/anonnet/client.toml\n\n",
        )
        .unwrap();
        assert_eq!(
            last_line(&log).as_deref(),
            Some("anonnet: error: no client config at /home/u/.config/anonnet/client.toml")
        );
        assert_eq!(
            strip_ansi("\u{1b}[2mtime\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m x"),
            "time  INFO x"
        );
        assert_eq!(last_line(&dir.join("missing.log")), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn a_started_daemon_writes_to_its_log_and_is_found_on_path_rules() {
        let dir = std::env::temp_dir().join(format!("anonnet-tray-start-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A stand-in daemon: prints its arguments and stops.
        let bin = dir.join("anonnet");
        std::fs::write(&bin, "#!/bin/sh\necho \"args: $*\" >&2\nexit 3\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(is_executable(&bin));
        assert!(!is_executable(&dir.join("nothing")));
        let log = dir.join("logs/daemon.log");
        let mut child = start_daemon(&bin, Some(Path::new("/x/client.toml")), &log).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(
            last_line(&log).as_deref(),
            Some("args: run --config /x/client.toml")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
