//! Finding a daemon: which client config, which state directory, which ports.
//!
//! The one rule shared by `anonnet run` (where it writes), the CLI subcommands and the
//! tray (where they look): the state directory is `client.state_dir` of the client config,
//! relative to the file's directory, else the OS state directory (`~/.local/state/anonnet`
//! on Linux). The daemon validates every key of its config itself; [`state_dir_from_config`]
//! reads only `client.state_dir`, so a reader never needs the bootstrap descriptor files.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use directories::ProjectDirs;
use serde::Deserialize;

use crate::client::{PORTS_FILE, PORTS_KEY};
use crate::ControlError;

/// Name of the client config file in the OS-standard config directory.
pub const CLIENT_FILE: &str = "client.toml";

/// The project's OS-standard directories (`org.anonnet.anonnet`; on Linux `~/.config/anonnet`,
/// `~/.local/state/anonnet`, …), if the OS has a home directory for this user.
pub fn project_dirs() -> Option<ProjectDirs> {
    ProjectDirs::from("org", "anonnet", "anonnet")
}

/// Where `anonnet run` looks for its config when no `--config` is given.
pub fn default_client_config() -> Option<PathBuf> {
    project_dirs().map(|d| d.config_dir().join(CLIENT_FILE))
}

/// The state directory of a client config that sets no `client.state_dir`: the OS state
/// directory, or the local data directory where the OS has none (macOS, Windows).
pub fn default_state_dir() -> Option<PathBuf> {
    project_dirs().map(|p| {
        p.state_dir()
            .unwrap_or_else(|| p.data_local_dir())
            .to_path_buf()
    })
}

/// The state directory for `client.state_dir = configured` in `config_file`: a relative
/// value is taken from the file's directory; no value means [`default_state_dir`].
/// `None` only when no value is set and this user has no home directory.
pub fn resolve_state_dir(config_file: &Path, configured: Option<&str>) -> Option<PathBuf> {
    match configured {
        Some(dir) => {
            let file = std::path::absolute(config_file).unwrap_or_else(|_| config_file.into());
            let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
            Some(base.join(dir))
        }
        None => default_state_dir(),
    }
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    client: ClientSection,
}

#[derive(Deserialize, Default)]
struct ClientSection {
    state_dir: Option<String>,
}

/// The state directory named by the client config `config_file` (only `client.state_dir`
/// is read; other keys are left to the daemon to check).
///
/// # Errors
/// [`ControlError::File`] when the file cannot be read or is not TOML, or when it sets no
/// state directory and this user has no home directory.
pub fn state_dir_from_config(config_file: &Path) -> Result<PathBuf, ControlError> {
    let text = std::fs::read_to_string(config_file)
        .map_err(|e| ControlError::file(config_file, format!("cannot read: {e}")))?;
    let file: ConfigFile = toml::from_str(&text).map_err(|e| {
        ControlError::file(config_file, format!("is not valid TOML: {}", e.message()))
    })?;
    resolve_state_dir(config_file, file.client.state_dir.as_deref()).ok_or_else(|| {
        ControlError::file(
            config_file,
            "sets no client.state_dir and this user has no home directory",
        )
    })
}

/// The listeners a daemon has bound, from `<state_dir>/ports.json`: name (`socks`, `http`,
/// `control`, …) → address. Entries that are not `"IP:PORT"` strings are skipped.
///
/// # Errors
/// [`ControlError::NotRunning`] when there is no `ports.json`, [`ControlError::File`] when
/// it is unreadable or not a JSON object.
pub fn read_ports(state_dir: &Path) -> Result<BTreeMap<String, SocketAddr>, ControlError> {
    let ports_file = state_dir.join(PORTS_FILE);
    let text = match std::fs::read_to_string(&ports_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ControlError::NotRunning { ports_file })
        }
        Err(e) => return Err(ControlError::file(ports_file, format!("cannot read: {e}"))),
    };
    let ports: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
        .map_err(|e| ControlError::file(&ports_file, format!("is not a JSON object: {e}")))?;
    Ok(ports
        .into_iter()
        .filter_map(|(k, v)| Some((k, v.as_str()?.parse().ok()?)))
        .collect())
}

/// The control address in `<state_dir>/ports.json`.
///
/// # Errors
/// As [`read_ports`]; [`ControlError::NoControlPort`] when it names no control port,
/// [`ControlError::File`] when that entry is not an `"IP:PORT"` string.
pub(crate) fn control_addr(state_dir: &Path) -> Result<SocketAddr, ControlError> {
    let ports_file = state_dir.join(PORTS_FILE);
    let ports = read_ports(state_dir)?;
    if let Some(addr) = ports.get(PORTS_KEY) {
        return Ok(*addr);
    }
    // Tell "no entry" from "an entry that is not an address".
    let text = std::fs::read_to_string(&ports_file).unwrap_or_default();
    let raw: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    match raw.get(PORTS_KEY) {
        None => Err(ControlError::NoControlPort { ports_file }),
        Some(control) => Err(ControlError::file(
            &ports_file,
            format!("\"{PORTS_KEY}\" is {control}, not an \"IP:PORT\" string"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("anonnet-locate-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn state_dir_is_relative_to_the_config_file_and_other_keys_are_ignored() {
        let dir = temp("relative");
        let file = dir.join("client.toml");
        std::fs::write(
            &file,
            "[client]\nstate_dir = \"st\"\nsocks_listen = \"auto\"\nbootstrap = [\"x.desc\"]\n",
        )
        .unwrap();
        assert_eq!(state_dir_from_config(&file).unwrap(), dir.join("st"));
        std::fs::write(&file, "[client]\nstate_dir = \"/abs/state\"\n").unwrap();
        assert_eq!(
            state_dir_from_config(&file).unwrap(),
            PathBuf::from("/abs/state")
        );
        std::fs::write(&file, "[client]\n").unwrap();
        assert_eq!(state_dir_from_config(&file).ok(), default_state_dir());
        std::fs::write(&file, "[client\n").unwrap();
        let e = state_dir_from_config(&file).unwrap_err().to_string();
        assert!(e.contains("client.toml") && e.contains("TOML"), "{e}");
        let e = state_dir_from_config(&dir.join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.toml: cannot read"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ports_file_lists_the_listeners_and_names_the_control_port() {
        let dir = temp("ports");
        assert!(matches!(
            read_ports(&dir),
            Err(ControlError::NotRunning { .. })
        ));
        std::fs::write(
            dir.join(PORTS_FILE),
            r#"{"socks":"127.0.0.1:9050","http":"127.0.0.1:9080","odd":7}"#,
        )
        .unwrap();
        let ports = read_ports(&dir).unwrap();
        assert_eq!(ports.len(), 2);
        assert_eq!(ports["socks"], "127.0.0.1:9050".parse().unwrap());
        assert!(matches!(
            control_addr(&dir),
            Err(ControlError::NoControlPort { .. })
        ));
        std::fs::write(dir.join(PORTS_FILE), r#"{"control":"nowhere"}"#).unwrap();
        let e = control_addr(&dir).unwrap_err().to_string();
        assert!(e.contains("not an \"IP:PORT\" string"), "{e}");
        std::fs::write(dir.join(PORTS_FILE), r#"{"control":"127.0.0.1:4000"}"#).unwrap();
        assert_eq!(
            control_addr(&dir).unwrap(),
            "127.0.0.1:4000".parse().unwrap()
        );
        std::fs::write(dir.join(PORTS_FILE), "[1]").unwrap();
        assert!(matches!(read_ports(&dir), Err(ControlError::File { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
