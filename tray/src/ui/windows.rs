//! Windows: the native notification-area icon and its menu through tray-icon. `TrayIcon`
//! is `!Send`, so it lives and dies on the UI thread; the worker sends [`UiMsg`]s.

use std::collections::HashMap;
use std::sync::mpsc::Receiver;

use tracing::{debug, warn};
use tray_icon::menu::{CheckMenuItem, IsMenuItem, Menu, MenuItem, PredefinedMenuItem, Submenu};
use tray_icon::{Icon, TrayIcon, TrayIconBuilder};

use super::{send_click, TITLE, TRAY_ID};
use crate::icons;
use crate::model::{shape, Entry, IconKind, Render};
use crate::worker::UiMsg;

/// A menu item we may change later.
enum Handle {
    Item(MenuItem),
    Check(CheckMenuItem),
    Submenu(Submenu),
}

struct Tray {
    icon: TrayIcon,
    icons: HashMap<IconKind, Icon>,
    shown: Render,
    items: HashMap<String, Handle>,
}

/// The UI thread's state: the icons, and the tray icon once the first render came.
struct Ui {
    /// Taken when the tray icon is created.
    icons: Option<HashMap<IconKind, Icon>>,
    tray: Option<Tray>,
}

impl Ui {
    /// Decode the icons.
    ///
    /// # Errors
    /// A message when a built-in icon does not decode (a build defect).
    fn new() -> Result<Ui, String> {
        let mut icons = HashMap::new();
        for kind in [
            IconKind::Off,
            IconKind::Bootstrapping,
            IconKind::On,
            IconKind::Error,
        ] {
            let icon = icons::largest(kind)?;
            let icon = Icon::from_rgba(icon.pixels, icon.width, icon.height)
                .map_err(|e| format!("the {kind:?} icon: {e}"))?;
            icons.insert(kind, icon);
        }
        Ok(Ui {
            icons: Some(icons),
            tray: None,
        })
    }

    /// Handle one message from the worker; `Ok(false)` once it says quit.
    ///
    /// # Errors
    /// A message when the tray icon cannot be created.
    fn handle(&mut self, msg: UiMsg) -> Result<bool, String> {
        match msg {
            UiMsg::Render(render) => match (&mut self.tray, self.icons.take()) {
                (Some(t), _) => t.show(render),
                (None, Some(icons)) => self.tray = Some(Tray::new(render, icons)?),
                (None, None) => {}
            },
            UiMsg::Quit => return Ok(false),
        }
        Ok(true)
    }
}

/// Show what the worker sends until it says quit (or goes away).
///
/// On Windows the tray icon's window receives its clicks through the Win32 message queue
/// of the thread that created it, so this thread runs tao's event loop, and a forwarding
/// thread turns the worker's messages into the loop's user events. Clicks reach `clicks`
/// through tray-icon's menu event handler.
///
/// # Errors
/// A message when the tray icon cannot be created, or the forwarding thread cannot start.
pub fn run(
    messages: Receiver<UiMsg>,
    clicks: tokio::sync::mpsc::Sender<String>,
) -> Result<(), String> {
    use tao::event::Event;
    use tao::event_loop::{ControlFlow, EventLoopBuilder};
    use tao::platform::run_return::EventLoopExtRunReturn;
    use tray_icon::menu::MenuEvent;

    MenuEvent::set_event_handler(Some(move |event: MenuEvent| {
        send_click(&clicks, event.id.0);
    }));

    let mut event_loop = EventLoopBuilder::<UiMsg>::with_user_event().build();
    let proxy = event_loop.create_proxy();
    std::thread::Builder::new()
        .name("anonnet-tray-ui-forward".into())
        .spawn(move || {
            for msg in messages {
                if proxy.send_event(msg).is_err() {
                    return;
                }
            }
            // The worker went away without saying quit.
            let _ = proxy.send_event(UiMsg::Quit);
        })
        .map_err(|e| format!("cannot start the UI forwarding thread: {e}"))?;
    let mut ui = Ui::new()?;
    let mut failure = None;
    event_loop.run_return(|event, _, control_flow| {
        *control_flow = ControlFlow::Wait;
        if let Event::UserEvent(msg) = event {
            match ui.handle(msg) {
                Ok(true) => {}
                Ok(false) => *control_flow = ControlFlow::Exit,
                Err(e) => {
                    failure = Some(e);
                    *control_flow = ControlFlow::Exit;
                }
            }
        }
    });
    drop(ui);
    failure.map_or(Ok(()), Err)
}

impl Tray {
    fn new(render: Render, icons: HashMap<IconKind, Icon>) -> Result<Tray, String> {
        let (menu, items) = build_menu(&render.menu).map_err(|e| e.to_string())?;
        let mut builder = TrayIconBuilder::new()
            .with_id(TRAY_ID)
            .with_title(TITLE)
            .with_tooltip(&render.tooltip)
            .with_menu(Box::new(menu));
        if let Some(icon) = icons.get(&render.icon) {
            builder = builder.with_icon(icon.clone());
        }
        let icon = builder
            .build()
            .map_err(|e| format!("cannot create the tray icon: {e}"))?;
        Ok(Tray {
            icon,
            icons,
            shown: render,
            items,
        })
    }

    fn show(&mut self, render: Render) {
        if render.icon != self.shown.icon {
            if let Err(e) = self.icon.set_icon(self.icons.get(&render.icon).cloned()) {
                warn!(error = %e, "set_icon");
            }
        }
        if render.tooltip != self.shown.tooltip {
            if let Err(e) = self.icon.set_tooltip(Some(&render.tooltip)) {
                warn!(error = %e, "set_tooltip");
            }
        }
        if shape(&render.menu) == shape(&self.shown.menu) {
            self.update(&render.menu);
        } else {
            match build_menu(&render.menu) {
                Ok((menu, items)) => {
                    debug!("new menu");
                    self.icon.set_menu(Some(Box::new(menu)));
                    self.items = items;
                }
                Err(e) => warn!(error = %e, "building the menu"),
            }
        }
        self.shown = render;
    }

    /// Change texts and states in place (the menu has the same items).
    fn update(&self, entries: &[Entry]) {
        for e in entries {
            let Some(handle) = e.id().and_then(|id| self.items.get(&id)) else {
                continue;
            };
            match (e, handle) {
                (Entry::Label { text, .. }, Handle::Item(i)) => set_text(i.text(), text, |t| {
                    i.set_text(t);
                }),
                (Entry::Item { text, enabled, .. }, Handle::Item(i)) => {
                    set_text(i.text(), text, |t| i.set_text(t));
                    if i.is_enabled() != *enabled {
                        i.set_enabled(*enabled);
                    }
                }
                (Entry::Check { text, checked, .. }, Handle::Check(c)) => {
                    set_text(c.text(), text, |t| c.set_text(t));
                    // A click flips the item itself; show the daemon's state instead.
                    if c.is_checked() != *checked {
                        c.set_checked(*checked);
                    }
                }
                (Entry::Submenu { text, entries, .. }, Handle::Submenu(s)) => {
                    set_text(s.text(), text, |t| s.set_text(t));
                    self.update(entries);
                }
                _ => {}
            }
        }
    }
}

fn set_text(now: String, want: &str, set: impl FnOnce(&str)) {
    if now != want {
        set(want);
    }
}

fn build_menu(entries: &[Entry]) -> tray_icon::menu::Result<(Menu, HashMap<String, Handle>)> {
    let menu = Menu::new();
    let mut items = HashMap::new();
    for e in entries {
        menu.append(make(e, &mut items)?.as_ref())?;
    }
    Ok((menu, items))
}

fn make(
    e: &Entry,
    items: &mut HashMap<String, Handle>,
) -> tray_icon::menu::Result<Box<dyn IsMenuItem>> {
    Ok(match e {
        Entry::Label { id, text } => {
            let item = MenuItem::with_id(id.clone(), text, false, None);
            items.insert(id.clone(), Handle::Item(item.clone()));
            Box::new(item)
        }
        Entry::Item {
            action,
            text,
            enabled,
        } => {
            let item = MenuItem::with_id(action.id(), text, *enabled, None);
            items.insert(action.id(), Handle::Item(item.clone()));
            Box::new(item)
        }
        Entry::Check {
            action,
            text,
            checked,
        } => {
            let item = CheckMenuItem::with_id(action.id(), text, true, *checked, None);
            items.insert(action.id(), Handle::Check(item.clone()));
            Box::new(item)
        }
        Entry::Submenu { id, text, entries } => {
            let sub = Submenu::with_id(id.clone(), text, true);
            for child in entries {
                sub.append(make(child, items)?.as_ref())?;
            }
            items.insert(id.clone(), Handle::Submenu(sub.clone()));
            Box::new(sub)
        }
        Entry::Separator => Box::new(PredefinedMenuItem::separator()),
    })
}
