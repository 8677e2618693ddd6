//! Linux and the BSDs: a D-Bus StatusNotifierItem (`org.kde.StatusNotifierItem`) with a
//! `com.canonical.dbusmenu` menu, served by ksni on its own thread (pure Rust over zbus; no
//! GTK). The item offers its icon at every size of [`icons::SIZES`] (`IconPixmap` is a
//! list, so the host picks the one for its panel), and keeps the menu's layout while the
//! host shows it ([`MenuState`]).

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use ksni::blocking::TrayMethods as _;
use ksni::menu::{CheckmarkItem, StandardItem, SubMenu};
use tokio::sync::mpsc::Sender;
use tracing::debug;

use super::{send_click, TITLE, TRAY_ID};
use crate::icons;
use crate::model::{shape, Entry, IconKind, Render};
use crate::worker::UiMsg;

/// How long a menu counts as open after the host's `AboutToShow` on the root, unless an
/// item is clicked first (seconds). dbusmenu's "closed" event never reaches the item
/// through ksni, so this bounds how long a new layout can wait.
pub const MENU_OPEN_HOLD: Duration = Duration::from_secs(20);

/// How often the UI thread looks whether a held layout is due while nothing else comes.
const TICK: Duration = Duration::from_secs(2);

/// The entries the menu shows, and the rule that keeps its layout stable while it is open:
/// a menu of another shape ([`shape`]: items added, removed or moved) waits until the menu
/// closes; texts and ticks of the same items change at once. A host numbers items by the
/// ids of the layout it fetched when it opened the menu, so a new layout under the pointer
/// would move items and could turn a click into another item's.
#[derive(Debug, Default)]
pub struct MenuState {
    shown: Vec<Entry>,
    /// A menu of another shape that waits for the open one to close.
    held: Option<Vec<Entry>>,
    /// When the host last said the menu is about to show.
    opened: Option<Instant>,
}

impl MenuState {
    /// A menu showing `entries`.
    pub fn new(entries: Vec<Entry>) -> MenuState {
        MenuState {
            shown: entries,
            ..MenuState::default()
        }
    }

    /// The entries shown now.
    pub fn shown(&self) -> &[Entry] {
        &self.shown
    }

    /// Whether a menu of another shape is waiting.
    pub fn is_holding(&self) -> bool {
        self.held.is_some()
    }

    /// Show `entries` now, or hold them when their shape differs and the menu is open at
    /// `now`.
    pub fn set(&mut self, entries: Vec<Entry>, now: Instant) {
        if shape(&entries) == shape(&self.shown) || !self.is_open(now) {
            self.shown = entries;
            self.held = None;
        } else {
            self.held = Some(entries);
        }
    }

    /// The host is about to show the menu (`AboutToShow` on the root item).
    pub fn opened(&mut self, now: Instant) {
        self.opened = Some(now);
    }

    /// The menu closed (an item was clicked): a held menu is shown.
    pub fn closed(&mut self) {
        self.opened = None;
        if let Some(entries) = self.held.take() {
            self.shown = entries;
        }
    }

    /// Show a held menu once [`MENU_OPEN_HOLD`] has passed since the menu opened.
    pub fn tick(&mut self, now: Instant) {
        if !self.is_open(now) {
            self.closed();
        }
    }

    fn is_open(&self, now: Instant) -> bool {
        self.opened
            .is_some_and(|t| now.saturating_duration_since(t) < MENU_OPEN_HOLD)
    }
}

/// What ksni serves: the state of the StatusNotifierItem and its menu.
struct SniTray {
    /// Every size of every state icon, ARGB32.
    icons: HashMap<IconKind, Vec<ksni::Icon>>,
    icon: IconKind,
    tooltip: String,
    menu: MenuState,
    clicks: Sender<String>,
}

impl SniTray {
    fn show(&mut self, render: Render, now: Instant) {
        self.icon = render.icon;
        self.tooltip = render.tooltip;
        self.menu.set(render.menu, now);
    }

    fn clicked(&mut self, id: String) {
        send_click(&self.clicks, id);
        self.menu.closed();
    }
}

impl ksni::Tray for SniTray {
    fn id(&self) -> String {
        TRAY_ID.into()
    }

    fn title(&self) -> String {
        TITLE.into()
    }

    fn icon_pixmap(&self) -> Vec<ksni::Icon> {
        self.icons.get(&self.icon).cloned().unwrap_or_default()
    }

    fn tool_tip(&self) -> ksni::ToolTip {
        ksni::ToolTip {
            icon_pixmap: self.icon_pixmap(),
            title: TITLE.into(),
            description: self.tooltip.clone(),
            ..Default::default()
        }
    }

    fn menu(&self) -> Vec<ksni::MenuItem<Self>> {
        self.menu.shown().iter().map(menu_item).collect()
    }

    fn menu_about_to_show(&mut self) {
        self.menu.opened(Instant::now());
    }
}

/// A dbusmenu label: `_` marks a mnemonic there, so a literal one is doubled.
fn label(text: &str) -> String {
    text.replace('_', "__")
}

fn menu_item(e: &Entry) -> ksni::MenuItem<SniTray> {
    match e {
        Entry::Label { text, .. } => StandardItem {
            label: label(text),
            enabled: false,
            ..Default::default()
        }
        .into(),
        Entry::Item {
            action,
            text,
            enabled,
        } => {
            let id = action.id();
            StandardItem {
                label: label(text),
                enabled: *enabled,
                activate: Box::new(move |t: &mut SniTray| t.clicked(id.clone())),
                ..Default::default()
            }
            .into()
        }
        Entry::Check {
            action,
            text,
            checked,
        } => {
            let id = action.id();
            CheckmarkItem {
                label: label(text),
                checked: *checked,
                activate: Box::new(move |t: &mut SniTray| t.clicked(id.clone())),
                ..Default::default()
            }
            .into()
        }
        Entry::Submenu { text, entries, .. } => SubMenu {
            label: label(text),
            submenu: entries.iter().map(menu_item).collect(),
            ..Default::default()
        }
        .into(),
        Entry::Separator => ksni::MenuItem::Separator,
    }
}

/// Every state icon at every size, as `IconPixmap` entries.
///
/// # Errors
/// A message when a compiled-in icon does not decode (a build defect).
fn pixmaps() -> Result<HashMap<IconKind, Vec<ksni::Icon>>, String> {
    let mut out = HashMap::new();
    for kind in [
        IconKind::Off,
        IconKind::Bootstrapping,
        IconKind::On,
        IconKind::Error,
    ] {
        let sizes = icons::all_sizes(kind)?
            .into_iter()
            .map(|icon| {
                Ok(ksni::Icon {
                    width: i32::try_from(icon.width).map_err(|e| e.to_string())?,
                    height: i32::try_from(icon.height).map_err(|e| e.to_string())?,
                    data: icons::to_argb32(&icon.pixels),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        out.insert(kind, sizes);
    }
    Ok(out)
}

/// Show what the worker sends until it says quit (or goes away); clicked item ids go to
/// `clicks`. ksni serves the item on its own thread; this one applies the renders and lets
/// a held menu out when its time is up.
///
/// # Errors
/// A message when the item cannot be put on the session bus (no bus, or none reachable).
pub fn run(messages: Receiver<UiMsg>, clicks: Sender<String>) -> Result<(), String> {
    let mut icons = Some(pixmaps()?);
    let mut handle: Option<ksni::blocking::Handle<SniTray>> = None;
    loop {
        let msg = match messages.recv_timeout(TICK) {
            Ok(msg) => Some(msg),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        match (msg, &handle) {
            (Some(UiMsg::Quit), _) => break,
            (Some(UiMsg::Render(render)), Some(h)) => {
                h.update(|t| t.show(render, Instant::now()));
            }
            (Some(UiMsg::Render(render)), None) => {
                let tray = SniTray {
                    icons: icons.take().unwrap_or_default(),
                    icon: render.icon,
                    tooltip: render.tooltip,
                    menu: MenuState::new(render.menu),
                    clicks: clicks.clone(),
                };
                let h = tray.assume_sni_available(true).spawn().map_err(|e| {
                    format!(
                        "cannot create the tray icon: {e} (it needs a D-Bus session bus: is \
                         DBUS_SESSION_BUS_ADDRESS set?)"
                    )
                })?;
                handle = Some(h);
            }
            (None, Some(h)) => {
                let released = h.update(|t| {
                    let was = t.menu.is_holding();
                    t.menu.tick(Instant::now());
                    was && !t.menu.is_holding()
                });
                if released == Some(true) {
                    debug!("the menu's new layout is shown: the hold ended");
                }
            }
            (None, None) => {}
        }
    }
    // Taking the item off the bus.
    if let Some(h) = handle {
        h.shutdown().wait();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Action;

    fn status(text: &str) -> Entry {
        Entry::Label {
            id: "label:status".into(),
            text: text.into(),
        }
    }

    fn publish(port: u16) -> Entry {
        Entry::Item {
            action: Action::PublishLocal(format!("127.0.0.1:{port}").parse().unwrap()),
            text: format!("Publish localhost:{port}"),
            enabled: true,
        }
    }

    #[test]
    fn a_new_layout_waits_while_the_menu_is_open_and_texts_do_not() {
        let t0 = Instant::now();
        let mut m = MenuState::new(vec![status("On: 3 circuits")]);
        // Closed: any change shows at once.
        m.set(vec![status("On: 4 circuits"), publish(8080)], t0);
        assert_eq!(m.shown().len(), 2);

        m.opened(t0);
        // The same items with new texts: at once.
        m.set(vec![status("On: 5 circuits"), publish(8080)], t0);
        assert_eq!(m.shown()[0].text(), "On: 5 circuits");
        assert!(!m.is_holding());
        // Another item: held while open.
        let three = vec![status("On: 5 circuits"), publish(8080), publish(8081)];
        m.set(three.clone(), t0 + Duration::from_secs(1));
        assert_eq!(m.shown().len(), 2);
        assert!(m.is_holding());
        m.tick(t0 + MENU_OPEN_HOLD - Duration::from_millis(1));
        assert_eq!(m.shown().len(), 2, "still open");
        // A click closes it: the held layout shows.
        m.closed();
        assert_eq!(m.shown(), three.as_slice());
        assert!(!m.is_holding());
    }

    #[test]
    fn a_held_layout_shows_once_the_hold_ends_and_a_return_to_the_shown_shape_drops_it() {
        let t0 = Instant::now();
        let mut m = MenuState::new(vec![status("a")]);
        m.opened(t0);
        m.set(vec![status("a"), publish(1)], t0);
        assert!(m.is_holding());
        // The item went away again before the menu closed: nothing is left to show.
        m.set(vec![status("b")], t0);
        assert!(!m.is_holding());
        assert_eq!(m.shown()[0].text(), "b");
        // Held again; the hold ends on its own.
        m.set(vec![status("b"), publish(2)], t0);
        m.tick(t0 + MENU_OPEN_HOLD);
        assert_eq!(m.shown().len(), 2);
        // A host that never says "about to show" never holds anything.
        let mut never = MenuState::new(vec![status("a")]);
        never.set(vec![status("a"), publish(3)], t0);
        assert_eq!(never.shown().len(), 2);
    }

    #[test]
    fn labels_keep_underscores_literal() {
        assert_eq!(label("my_site.dark"), "my__site.dark");
        assert_eq!(label("Quit tray"), "Quit tray");
    }

    #[test]
    fn every_state_has_every_size_in_argb() {
        let all = pixmaps().unwrap();
        for sizes in all.values() {
            let dims: Vec<i32> = sizes.iter().map(|i| i.width).collect();
            assert_eq!(dims, [16, 22, 24, 32, 48, 64]);
            for i in sizes {
                assert_eq!(i.data.len(), (i.width * i.height * 4) as usize);
            }
        }
    }
}
