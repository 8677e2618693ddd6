//! The UI thread: the tray icon and its menu. On Linux and the BSDs a D-Bus
//! StatusNotifierItem with a `com.canonical.dbusmenu` menu, served by ksni ([`sni`]); on
//! Windows the native notification-area icon through tray-icon (`windows.rs`). Both turn
//! the worker's [`Render`](crate::model::Render)s into what the platform shows and send
//! the ids of clicked items ([`Action::id`](crate::model::Action::id)) back.

#[cfg(not(windows))]
mod sni;
#[cfg(windows)]
mod windows;

#[cfg(not(windows))]
pub use sni::run;
#[cfg(windows)]
pub use windows::run;

/// Id of the StatusNotifierItem (`Id` property) and of the Windows tray icon.
const TRAY_ID: &str = "anonnet-tray";
/// Title shown above the tooltip.
const TITLE: &str = "anonnet";

/// Send a click's item id to the worker without waiting; a click is dropped, with a
/// warning, when the queue is full (the worker is still busy with earlier clicks) or the
/// worker is gone.
fn send_click(clicks: &tokio::sync::mpsc::Sender<String>, id: String) {
    if clicks.try_send(id).is_err() {
        tracing::warn!("menu click dropped: still busy with earlier ones");
    }
}
