//! Desktop notifications: `org.freedesktop.Notifications.Notify` on the session bus (the
//! Desktop Notifications Specification 1.2), sent by the worker after a publication.
//!
//! ksni keeps its D-Bus connection to itself, so this opens a second
//! connection to the same session bus, once, on the first notification. On Windows there is
//! no notification here yet (see README.md, "Windows"): [`Notifier::show`] says so.

use crate::model::Notification;

/// Bus name and object path of the notification server.
#[cfg(all(unix, not(target_os = "macos")))]
const SERVER: &str = "org.freedesktop.Notifications";
#[cfg(all(unix, not(target_os = "macos")))]
const PATH: &str = "/org/freedesktop/Notifications";
/// `app_name` of every notification.
#[cfg(all(unix, not(target_os = "macos")))]
const APP_NAME: &str = "anonnet";
/// `app_icon`: the icon name the package installs into the hicolor theme.
#[cfg(all(unix, not(target_os = "macos")))]
const APP_ICON: &str = "anonnet";
/// The `desktop-entry` hint: the tray's desktop file, without `.desktop`.
#[cfg(all(unix, not(target_os = "macos")))]
const DESKTOP_ENTRY: &str = "anonnet-tray";
/// Longest wait for the session bus and the server's answer.
#[cfg(all(unix, not(target_os = "macos")))]
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Sends notifications; each replaces the one before it (`replaces_id`), so a desktop shows
/// at most one from the tray.
#[derive(Default)]
pub struct Notifier {
    #[cfg(all(unix, not(target_os = "macos")))]
    conn: Option<zbus::Connection>,
    /// Id the server gave the last notification (0: none yet).
    #[cfg(all(unix, not(target_os = "macos")))]
    last_id: u32,
}

impl Notifier {
    /// Show `n`; returns the server's id for it.
    ///
    /// # Errors
    /// A message when there is no session bus, no notification server on it, or no answer
    /// within 5 s; on Windows, always (not built there yet).
    #[cfg(all(unix, not(target_os = "macos")))]
    pub async fn show(&mut self, n: &Notification) -> Result<u32, String> {
        match tokio::time::timeout(TIMEOUT, self.notify(n)).await {
            Ok(Ok(id)) => Ok(id),
            Ok(Err(e)) => {
                // The bus may have gone away; connect again next time.
                self.conn = None;
                Err(e)
            }
            Err(_) => Err(format!(
                "the notification server did not answer within {} s",
                TIMEOUT.as_secs()
            )),
        }
    }

    #[cfg(all(unix, not(target_os = "macos")))]
    async fn notify(&mut self, n: &Notification) -> Result<u32, String> {
        use std::collections::HashMap;
        use zbus::zvariant::Value;

        let conn = match &self.conn {
            Some(c) => c.clone(),
            None => {
                let c = zbus::Connection::session()
                    .await
                    .map_err(|e| format!("no session bus: {e}"))?;
                self.conn = Some(c.clone());
                c
            }
        };
        let actions: Vec<&str> = Vec::new();
        let mut hints: HashMap<&str, Value<'_>> = HashMap::new();
        hints.insert("desktop-entry", Value::from(DESKTOP_ENTRY));
        // -1: the server's default display time.
        let expire_timeout: i32 = -1;
        let reply = conn
            .call_method(
                Some(SERVER),
                PATH,
                Some(SERVER),
                "Notify",
                &(
                    APP_NAME,
                    self.last_id,
                    APP_ICON,
                    n.summary.as_str(),
                    n.body.as_str(),
                    actions,
                    hints,
                    expire_timeout,
                ),
            )
            .await
            .map_err(|e| format!("{SERVER}.Notify: {e}"))?;
        let id: u32 = reply
            .body()
            .deserialize()
            .map_err(|e| format!("{SERVER}.Notify answered: {e}"))?;
        self.last_id = id;
        Ok(id)
    }

    /// Not built on this system yet.
    ///
    /// # Errors
    /// Always: desktop notifications are only sent over D-Bus (Linux and the BSDs).
    #[cfg(not(all(unix, not(target_os = "macos"))))]
    pub async fn show(&mut self, _n: &Notification) -> Result<u32, String> {
        Err("desktop notifications are only sent over D-Bus (Linux and the BSDs)".into())
    }
}
