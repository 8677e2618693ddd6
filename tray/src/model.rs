//! What the tray shows and what its menu does, as plain data: the daemon's state in,
//! an icon, a tooltip and a menu out; a clicked entry in, a control API request out.
//!
//! No tray types here and no I/O: `ui/` turns a [`Render`] into ksni or tray-icon calls,
//! `worker.rs` gathers the [`View`] and carries out the [`Step`]s. Everything here is
//! unit-tested.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anonnet_control::{ControlError, PublishRequest, ServiceInfo, Status};
use anonnet_error::{ErrorKind, HasKind};

/// Most "Publish localhost:PORT" entries in the menu itself: the newest listeners (a dev
/// server just started is among them); the others go to a "More local servers" submenu.
pub const MAX_PUBLISH_ENTRIES: usize = 8;
/// Most entries in the "More local servers" submenu.
pub const MAX_MORE_ENTRIES: usize = 40;
/// Ports below this are system services (DNS, SSH, CUPS, …), never offered for
/// publishing from the menu; `anonnet service publish` still takes them.
pub const FIRST_OFFERED_PORT: u16 = 1024;
/// Port of a hidden service published from the menu (its `.anon` address's port).
pub const PUBLISHED_PORT: u16 = 80;
/// Longest error text shown in the menu (characters); the tooltip has the rest.
const MENU_TEXT_MAX: usize = 90;

/// The daemon as the tray last saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Daemon {
    /// No daemon answers for this config (no `ports.json`, or its port refuses).
    NotRunning {
        /// Why we think so, for the tooltip.
        why: String,
    },
    /// Something answers but we cannot use it (cookie rejected, timeout, bad config).
    Unreachable {
        /// What failed, one line.
        why: String,
    },
    /// The daemon answered.
    Running(Box<Running>),
}

impl Default for Daemon {
    fn default() -> Daemon {
        Daemon::NotRunning {
            why: "not looked for yet".into(),
        }
    }
}

/// What a running daemon told us, and what listens on this machine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Running {
    /// `GET /v1/status`.
    pub status: Status,
    /// `GET /v1/services`, or why there are none.
    pub services: Services,
    /// Ports of the daemon's own listeners (`ports.json`: SOCKS, HTTP proxy, control).
    pub own_ports: Vec<u16>,
    /// This user's loopback-reachable TCP listeners, newest first
    /// (`proc_net::loopback_targets`).
    pub listening: Vec<SocketAddr>,
}

/// The daemon's hidden services.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Services {
    /// Not known (the list failed for another reason than 501).
    #[default]
    Unknown,
    /// The list.
    Available(Vec<ServiceInfo>),
    /// This daemon has no hidden services (it answered 501, with this message).
    NotAvailable(String),
}

/// Something the tray tells the person once, after an action.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// A service was published; `copied` tells whether its address is on the clipboard.
    Published {
        /// The `.anon` address.
        address: String,
        /// Whether the clipboard has it.
        copied: bool,
    },
    /// An address was copied (or not) by "Copy address".
    Copied {
        /// The `.anon` address.
        address: String,
        /// Whether the clipboard has it.
        copied: bool,
    },
    /// The tray started the daemon and waits for it.
    Starting,
    /// A request is on its way ("Publish localhost:8080").
    Pending {
        /// What is being done.
        what: String,
    },
    /// An action failed.
    Failed {
        /// What was tried ("Publish localhost:8080").
        what: String,
        /// Why, one line.
        why: String,
    },
}

/// Everything the tray shows is a function of this.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// The daemon.
    pub daemon: Daemon,
    /// Whether "Start daemon" can work (an `anonnet` binary was found).
    pub can_start_daemon: bool,
    /// The last action's outcome, if worth telling.
    pub notice: Option<Notice>,
}

/// The four icons (`assets/<kind>.svg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IconKind {
    /// Daemon not running, or proxying switched off.
    Off,
    /// Connecting to the network.
    Bootstrapping,
    /// Proxying through working circuits.
    On,
    /// The daemon cannot be used, or it has no working circuit.
    Error,
}

/// A click on a menu entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// "Anonymizing proxy": switch proxying to the other state.
    ToggleProxy,
    /// "New identity".
    NewIdentity,
    /// "Publish localhost:PORT": publish the server at this address.
    PublishLocal(SocketAddr),
    /// A service's "Published" toggle.
    ToggleService(String),
    /// A service's "Copy address".
    CopyAddress(String),
    /// "Open config folder".
    OpenConfigFolder,
    /// "Start daemon".
    StartDaemon,
    /// "Quit tray".
    Quit,
}

impl Action {
    /// The menu item id that carries this action (both tray backends report clicks by id).
    pub fn id(&self) -> String {
        match self {
            Action::ToggleProxy => "proxy".into(),
            Action::NewIdentity => "new-identity".into(),
            Action::PublishLocal(addr) => format!("publish-local:{addr}"),
            Action::ToggleService(address) => format!("toggle-service:{address}"),
            Action::CopyAddress(address) => format!("copy-address:{address}"),
            Action::OpenConfigFolder => "open-config-folder".into(),
            Action::StartDaemon => "start-daemon".into(),
            Action::Quit => "quit".into(),
        }
    }

    /// The action of a menu item id; `None` for ids that do nothing (labels).
    pub fn from_id(id: &str) -> Option<Action> {
        let simple = match id {
            "proxy" => Some(Action::ToggleProxy),
            "new-identity" => Some(Action::NewIdentity),
            "open-config-folder" => Some(Action::OpenConfigFolder),
            "start-daemon" => Some(Action::StartDaemon),
            "quit" => Some(Action::Quit),
            _ => None,
        };
        if simple.is_some() {
            return simple;
        }
        let (kind, arg) = id.split_once(':')?;
        match kind {
            "publish-local" => arg.parse().ok().map(Action::PublishLocal),
            "toggle-service" if !arg.is_empty() => Some(Action::ToggleService(arg.into())),
            "copy-address" if !arg.is_empty() => Some(Action::CopyAddress(arg.into())),
            _ => None,
        }
    }
}

/// A control API call, as `worker.rs` makes it with `anonnet_control::ControlClient`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `POST /v1/proxy {"enabled": …}`.
    SetProxy(bool),
    /// `POST /v1/new-identity`.
    NewIdentity,
    /// `POST /v1/services/publish`.
    Publish(PublishRequest),
    /// `POST /v1/services/unpublish {"address": …}`.
    Unpublish(String),
}

impl Request {
    /// What this does, for a failure message ("Publish localhost:8080").
    pub fn describe(&self) -> String {
        match self {
            Request::SetProxy(true) => "Switch the proxy on".into(),
            Request::SetProxy(false) => "Switch the proxy off".into(),
            Request::NewIdentity => "New identity".into(),
            Request::Publish(p) => match p.target.parse::<SocketAddr>() {
                Ok(addr) => format!("Publish {}", local_name(addr)),
                Err(_) => format!("Publish {}", p.target),
            },
            Request::Unpublish(address) => format!("Unpublish {}", short_address(address)),
        }
    }
}

/// What the worker does for a click.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Call the control API.
    Control(Request),
    /// Put this text on the clipboard.
    Copy(String),
    /// Open the config folder in the file manager.
    OpenConfigFolder,
    /// Start `anonnet run`.
    StartDaemon,
    /// Quit the tray.
    Quit,
    /// Nothing to do (the menu was older than the state, e.g. a click on a service that is
    /// gone).
    Nothing,
}

/// What a click on `action` does, given what the tray knows now.
pub fn plan(action: &Action, view: &View) -> Step {
    let running = match &view.daemon {
        Daemon::Running(r) => Some(r.as_ref()),
        _ => None,
    };
    match action {
        Action::ToggleProxy => match running {
            Some(r) => Step::Control(Request::SetProxy(!r.status.enabled)),
            None => Step::Nothing,
        },
        Action::NewIdentity if running.is_some() => Step::Control(Request::NewIdentity),
        Action::PublishLocal(target) if running.is_some() => {
            Step::Control(Request::Publish(PublishRequest {
                target: target.to_string(),
                port: Some(PUBLISHED_PORT),
            }))
        }
        Action::ToggleService(address) => {
            let service = running.and_then(|r| match &r.services {
                Services::Available(list) => list.iter().find(|s| &s.address == address),
                _ => None,
            });
            match service {
                Some(s) if s.published => Step::Control(Request::Unpublish(s.address.clone())),
                Some(s) => Step::Control(Request::Publish(PublishRequest {
                    target: s.target.clone(),
                    port: Some(s.port),
                })),
                None => Step::Nothing,
            }
        }
        Action::CopyAddress(address) => Step::Copy(address.clone()),
        Action::OpenConfigFolder => Step::OpenConfigFolder,
        Action::StartDaemon if matches!(view.daemon, Daemon::NotRunning { .. }) => {
            Step::StartDaemon
        }
        Action::Quit => Step::Quit,
        Action::NewIdentity | Action::PublishLocal(_) | Action::StartDaemon => Step::Nothing,
    }
}

/// A successful answer to a [`Request`].
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The proxy's state after `SetProxy`.
    Proxy(bool),
    /// `NewIdentity` or `Unpublish` done.
    Done,
    /// The service `Publish` made.
    Published(ServiceInfo),
}

/// What the worker does after a request's answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// What to tell the person (`copied` filled in once the clipboard answered).
    pub notice: Option<Notice>,
    /// Text to put on the clipboard.
    pub copy: Option<String>,
    /// Set when the daemon answered 501 to a hidden-service call: remember that it has
    /// none (the menu then says so instead of offering to publish).
    pub services_unavailable: Option<String>,
}

/// The [`Outcome`] of `request` answered with `result`.
pub fn outcome(request: &Request, result: &Result<Reply, ControlError>) -> Outcome {
    match result {
        Ok(Reply::Published(service)) => Outcome {
            notice: Some(Notice::Published {
                address: service.address.clone(),
                copied: false,
            }),
            copy: Some(service.address.clone()),
            services_unavailable: None,
        },
        Ok(_) => Outcome::default(),
        Err(e @ (ControlError::NotImplemented(message) | ControlError::Api { message, .. }))
            if e.kind() == ErrorKind::NotImplemented
                && matches!(request, Request::Publish(_) | Request::Unpublish(_)) =>
        {
            Outcome {
                notice: Some(Notice::Failed {
                    what: request.describe(),
                    why: message.clone(),
                }),
                copy: None,
                services_unavailable: Some(message.clone()),
            }
        }
        Err(e) => Outcome {
            notice: Some(Notice::Failed {
                what: request.describe(),
                why: failure_text(e),
            }),
            copy: None,
            services_unavailable: None,
        },
    }
}

/// Why a request failed, for people: the words of its kind
/// ([`ErrorKind::summary`]), then the error's own text in brackets.
pub fn failure_text(e: &ControlError) -> String {
    let kind = e.kind();
    format!("{} ({e})", kind.summary().trim_end_matches('.'))
}

/// A desktop notification: the `summary` and `body` of the Desktop Notifications
/// Specification's `Notify` (plain text; `body` at most a few lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// One line ("Hidden service published").
    pub summary: String,
    /// The details: the address, or why it failed.
    pub body: String,
}

/// The notification the outcome of `request` deserves: only a publication gets one, since
/// it is the one action that takes long (up to [`PUBLISH_TIMEOUT`](crate::worker) while the
/// descriptor is stored) and whose result the user then wants to paste elsewhere.
pub fn notification(request: &Request, notice: Option<&Notice>) -> Option<Notification> {
    if !matches!(request, Request::Publish(_)) {
        return None;
    }
    match notice? {
        Notice::Published { address, copied } => Some(Notification {
            summary: "Hidden service published".into(),
            body: if *copied {
                format!("{address} is reachable through anonnet. The address is on the clipboard.")
            } else {
                format!("{address} is reachable through anonnet.")
            },
        }),
        Notice::Failed { what, why } => Some(Notification {
            summary: "Publishing failed".into(),
            body: format!("{what}: {why}"),
        }),
        _ => None,
    }
}

/// One menu entry. Ids are unique within a menu; the ids of entries with an action are
/// [`Action::id`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Text that cannot be clicked (shown greyed out).
    Label {
        /// Unique id (`label:…`).
        id: String,
        /// The text.
        text: String,
    },
    /// A clickable entry.
    Item {
        /// What a click does.
        action: Action,
        /// The text.
        text: String,
        /// Whether it can be clicked now.
        enabled: bool,
    },
    /// A checkbox entry.
    Check {
        /// What a click does.
        action: Action,
        /// The text.
        text: String,
        /// Ticked or not.
        checked: bool,
    },
    /// A submenu.
    Submenu {
        /// Unique id (`submenu:…`).
        id: String,
        /// Its title.
        text: String,
        /// Its entries.
        entries: Vec<Entry>,
    },
    /// A line between groups.
    Separator,
}

impl Entry {
    fn label(id: &str, text: impl Into<String>) -> Entry {
        Entry::Label {
            id: format!("label:{id}"),
            text: text.into(),
        }
    }

    fn item(action: Action, text: impl Into<String>) -> Entry {
        Entry::Item {
            action,
            text: text.into(),
            enabled: true,
        }
    }

    /// The id of the menu item (separators have none).
    pub fn id(&self) -> Option<String> {
        match self {
            Entry::Label { id, .. } | Entry::Submenu { id, .. } => Some(id.clone()),
            Entry::Item { action, .. } | Entry::Check { action, .. } => Some(action.id()),
            Entry::Separator => None,
        }
    }

    /// The text shown.
    #[cfg(test)]
    pub fn text(&self) -> &str {
        match self {
            Entry::Label { text, .. }
            | Entry::Item { text, .. }
            | Entry::Check { text, .. }
            | Entry::Submenu { text, .. } => text,
            Entry::Separator => "",
        }
    }
}

/// The structure of a menu: the kind and id of every entry, depth first. Two menus of the
/// same shape differ only in texts and states, so the tray updates the items it has
/// instead of building a new menu (which would close a menu the person has open).
pub fn shape(entries: &[Entry]) -> Vec<String> {
    let mut out = Vec::new();
    for e in entries {
        let kind = match e {
            Entry::Label { .. } => "label",
            Entry::Item { .. } => "item",
            Entry::Check { .. } => "check",
            Entry::Submenu { .. } => "submenu",
            Entry::Separator => "separator",
        };
        out.push(format!("{kind} {}", e.id().unwrap_or_default()));
        if let Entry::Submenu { entries, .. } = e {
            out.push("{".into());
            out.extend(shape(entries));
            out.push("}".into());
        }
    }
    out
}

/// What the tray shows for a [`View`].
#[derive(Debug, Clone, PartialEq)]
pub struct Render {
    /// The icon.
    pub icon: IconKind,
    /// The tooltip (the title "anonnet" is shown above it).
    pub tooltip: String,
    /// The menu.
    pub menu: Vec<Entry>,
}

/// The icon for the daemon's state.
pub fn icon(daemon: &Daemon) -> IconKind {
    match daemon {
        Daemon::NotRunning { .. } => IconKind::Off,
        Daemon::Unreachable { .. } => IconKind::Error,
        Daemon::Running(r) => {
            let s = &r.status;
            if !s.enabled {
                IconKind::Off
            } else if s.bootstrap.percent < 100 {
                IconKind::Bootstrapping
            } else if usable_circuits(s) == 0 && s.counters.circuit_build_failures > 0 {
                IconKind::Error
            } else {
                IconKind::On
            }
        }
    }
}

/// Circuits that take new streams (not retired).
fn usable_circuits(s: &Status) -> usize {
    s.circuits.iter().filter(|c| c.state != "retired").count()
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// One line on the daemon's state: the menu's first entry and the tooltip's first line.
pub fn status_line(daemon: &Daemon) -> String {
    match daemon {
        Daemon::NotRunning { .. } => "Daemon not running".into(),
        Daemon::Unreachable { .. } => "Error: cannot use the daemon".into(),
        Daemon::Running(r) => {
            let s = &r.status;
            match icon(daemon) {
                IconKind::Off => "Off: proxy switched off".into(),
                IconKind::Bootstrapping => format!(
                    "Connecting: {}% ({})",
                    s.bootstrap.percent, s.bootstrap.phase
                ),
                IconKind::Error => format!(
                    "Error: no working circuit ({} failed)",
                    plural(
                        s.counters.circuit_build_failures as usize,
                        "build",
                        "builds"
                    )
                ),
                IconKind::On => {
                    let mut line =
                        format!("On: {}", plural(s.circuits.len(), "circuit", "circuits"));
                    if s.streams > 0 {
                        line.push_str(&format!(", {}", plural(s.streams, "stream", "streams")));
                    }
                    line
                }
            }
        }
    }
}

/// `abcdefgh…wxyz.anon`: short enough for a one-line message; the full address is in the
/// service's submenu and on the clipboard.
pub fn short_address(address: &str) -> String {
    let base = address.strip_suffix(".anon").unwrap_or(address);
    if base.chars().count() <= 16 {
        return address.to_owned();
    }
    let head: String = base.chars().take(8).collect();
    let tail: String = base
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{head}…{tail}.anon")
}

/// `localhost:8080` for 127.0.0.1 and ::1, else `IP:PORT`.
pub fn local_name(addr: SocketAddr) -> String {
    if addr.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST) || addr.ip() == IpAddr::V6(Ipv6Addr::LOCALHOST)
    {
        format!("localhost:{}", addr.port())
    } else {
        addr.to_string()
    }
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut t: String = text.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// The notice as one line.
pub fn notice_line(notice: &Notice) -> String {
    match notice {
        Notice::Published { address, copied } => format!(
            "Published {address}{}",
            if *copied { " (address copied)" } else { "" }
        ),
        Notice::Copied {
            address,
            copied: true,
        } => format!("Copied {address}"),
        Notice::Copied {
            address,
            copied: false,
        } => format!("Could not copy {address}: no clipboard"),
        Notice::Starting => "Starting the daemon…".into(),
        Notice::Pending { what } => format!("{what}…"),
        Notice::Failed { what, why } => format!("{what} failed: {why}"),
    }
}

/// The local servers offered for publishing, newest first: loopback listeners on
/// unprivileged ports, minus the daemon's own ports and the servers already published.
pub fn publishable(r: &Running) -> Vec<SocketAddr> {
    let published: Vec<SocketAddr> = match &r.services {
        Services::Available(list) => list.iter().filter_map(|s| s.target.parse().ok()).collect(),
        _ => Vec::new(),
    };
    r.listening
        .iter()
        .copied()
        .filter(|a| a.port() >= FIRST_OFFERED_PORT)
        .filter(|a| !r.own_ports.contains(&a.port()))
        .filter(|a| !published.iter().any(|p| p.port() == a.port()))
        .collect()
}

fn services_menu(r: &Running) -> Vec<Entry> {
    let mut menu = Vec::new();
    match &r.services {
        Services::NotAvailable(_) => {
            menu.push(Entry::label(
                "services",
                "Hidden services: not available in this daemon",
            ));
            return menu;
        }
        Services::Unknown => menu.push(Entry::label(
            "services",
            "Hidden services: cannot list them now",
        )),
        Services::Available(list) => {
            let entries = if list.is_empty() {
                vec![Entry::label("no-services", "No hidden services")]
            } else {
                list.iter()
                    .map(|s| {
                        let mut entries = Vec::new();
                        if !s.name.is_empty() {
                            entries.push(Entry::label(
                                &format!("service-name:{}", s.address),
                                format!("Name: {}", s.name),
                            ));
                        }
                        entries.extend([
                            Entry::label(
                                &format!("service-target:{}", s.address),
                                format!("Port {} → {}", s.port, s.target),
                            ),
                            Entry::Check {
                                action: Action::ToggleService(s.address.clone()),
                                text: "Published".into(),
                                checked: s.published,
                            },
                            Entry::item(Action::CopyAddress(s.address.clone()), "Copy address"),
                        ]);
                        Entry::Submenu {
                            id: format!("submenu:service:{}", s.address),
                            text: s.address.clone(),
                            entries,
                        }
                    })
                    .collect()
            };
            menu.push(Entry::Submenu {
                id: "submenu:services".into(),
                text: "Hidden services".into(),
                entries,
            });
        }
    }
    let offered = publishable(r);
    let publish_entry = |addr: &SocketAddr| {
        Entry::item(
            Action::PublishLocal(*addr),
            format!("Publish {}", local_name(*addr)),
        )
    };
    let by_port = |list: &[SocketAddr]| {
        let mut list = list.to_vec();
        list.sort_by_key(|a| (a.port(), a.is_ipv6()));
        list
    };
    let (newest, others) = offered.split_at(offered.len().min(MAX_PUBLISH_ENTRIES));
    menu.extend(by_port(newest).iter().map(publish_entry));
    if !others.is_empty() {
        // The newest of the others, by port.
        let kept = &others[..others.len().min(MAX_MORE_ENTRIES)];
        let mut more: Vec<Entry> = by_port(kept).iter().map(publish_entry).collect();
        if others.len() > MAX_MORE_ENTRIES {
            more.push(Entry::label(
                "more-ports",
                format!(
                    "… {} more (anonnet service publish PORT)",
                    others.len() - MAX_MORE_ENTRIES
                ),
            ));
        }
        menu.push(Entry::Submenu {
            id: "submenu:more-local-servers".into(),
            text: "More local servers".into(),
            entries: more,
        });
    }
    menu
}

/// The icon, tooltip and menu for `view`.
pub fn render(view: &View) -> Render {
    let status = status_line(&view.daemon);
    let mut tooltip = status.clone();
    let mut menu = vec![Entry::label("status", status)];
    match &view.daemon {
        Daemon::NotRunning { why } | Daemon::Unreachable { why } => {
            tooltip.push('\n');
            tooltip.push_str(why);
        }
        Daemon::Running(_) => {}
    }
    if let Some(notice) = &view.notice {
        let line = notice_line(notice);
        tooltip.push('\n');
        tooltip.push_str(&line);
        menu.push(Entry::label("notice", clip(&line, MENU_TEXT_MAX)));
    }
    menu.push(Entry::Separator);
    match &view.daemon {
        Daemon::NotRunning { .. } => {
            menu.push(Entry::Item {
                action: Action::StartDaemon,
                text: if view.can_start_daemon {
                    "Start daemon".into()
                } else {
                    "Start daemon (anonnet not found)".into()
                },
                enabled: view.can_start_daemon,
            });
        }
        Daemon::Unreachable { why } => {
            menu.push(Entry::label("why", clip(why, MENU_TEXT_MAX)));
        }
        Daemon::Running(r) => {
            menu.push(Entry::Check {
                action: Action::ToggleProxy,
                text: "Anonymizing proxy".into(),
                checked: r.status.enabled,
            });
            menu.push(Entry::item(Action::NewIdentity, "New identity"));
            menu.push(Entry::Separator);
            menu.extend(services_menu(r));
        }
    }
    menu.push(Entry::Separator);
    menu.push(Entry::item(Action::OpenConfigFolder, "Open config folder"));
    menu.push(Entry::item(Action::Quit, "Quit tray"));
    Render {
        icon: icon(&view.daemon),
        tooltip,
        menu,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anonnet_control::{Bootstrap, CircuitInfo, Counters};

    const ADDR: &str = "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz2345.anon";

    fn circuit(id: u64, state: &str) -> CircuitInfo {
        CircuitInfo {
            id,
            state: state.into(),
            ..CircuitInfo::default()
        }
    }

    fn running(enabled: bool, percent: u8, circuits: Vec<CircuitInfo>) -> Running {
        Running {
            status: Status {
                enabled,
                bootstrap: Bootstrap {
                    percent,
                    phase: if percent == 100 {
                        "ready".into()
                    } else {
                        "building first circuit".into()
                    },
                },
                relays: 5,
                circuits,
                ..Status::default()
            },
            services: Services::Available(Vec::new()),
            own_ports: vec![9050, 9080, 40123],
            listening: Vec::new(),
        }
    }

    fn view(r: Running) -> View {
        View {
            daemon: Daemon::Running(Box::new(r)),
            can_start_daemon: true,
            notice: None,
        }
    }

    fn on() -> Running {
        running(
            true,
            100,
            vec![
                circuit(1, "clean"),
                circuit(2, "in use"),
                circuit(3, "clean"),
            ],
        )
    }

    fn service(published: bool) -> ServiceInfo {
        ServiceInfo {
            address: ADDR.into(),
            port: 80,
            target: "127.0.0.1:8080".into(),
            published,
            ..ServiceInfo::default()
        }
    }

    /// Every entry, depth first.
    fn flat(entries: &[Entry]) -> Vec<&Entry> {
        let mut out = Vec::new();
        for e in entries {
            out.push(e);
            if let Entry::Submenu { entries, .. } = e {
                out.extend(flat(entries));
            }
        }
        out
    }

    fn find<'a>(menu: &'a [Entry], text: &str) -> Option<&'a Entry> {
        flat(menu).into_iter().find(|e| e.text() == text)
    }

    fn texts(menu: &[Entry]) -> Vec<&str> {
        flat(menu).into_iter().map(Entry::text).collect()
    }

    #[test]
    fn daemon_not_running_is_off_and_offers_to_start_it() {
        let v = View {
            daemon: Daemon::NotRunning {
                why: "daemon not running (no ports.json at /s/ports.json)".into(),
            },
            can_start_daemon: true,
            notice: None,
        };
        let r = render(&v);
        assert_eq!(r.icon, IconKind::Off);
        assert_eq!(
            r.tooltip,
            "Daemon not running\ndaemon not running (no ports.json at /s/ports.json)"
        );
        assert_eq!(
            texts(&r.menu),
            [
                "Daemon not running",
                "",
                "Start daemon",
                "",
                "Open config folder",
                "Quit tray"
            ]
        );
        assert_eq!(plan(&Action::StartDaemon, &v), Step::StartDaemon);
        // Nothing to switch while no daemon runs.
        assert_eq!(plan(&Action::ToggleProxy, &v), Step::Nothing);
        assert_eq!(plan(&Action::NewIdentity, &v), Step::Nothing);

        let v = View {
            can_start_daemon: false,
            ..v
        };
        let r = render(&v);
        assert!(r.menu.contains(&Entry::Item {
            action: Action::StartDaemon,
            text: "Start daemon (anonnet not found)".into(),
            enabled: false
        }));
    }

    #[test]
    fn bootstrapping_shows_the_percentage() {
        let r = render(&view(running(true, 40, Vec::new())));
        assert_eq!(r.icon, IconKind::Bootstrapping);
        assert_eq!(r.tooltip, "Connecting: 40% (building first circuit)");
        assert_eq!(r.menu[0].text(), "Connecting: 40% (building first circuit)");
    }

    #[test]
    fn on_shows_the_circuit_count_and_the_proxy_ticked() {
        let mut r = on();
        r.status.streams = 1;
        let out = render(&view(r));
        assert_eq!(out.icon, IconKind::On);
        assert_eq!(out.tooltip, "On: 3 circuits, 1 stream");
        assert_eq!(
            find(&out.menu, "Anonymizing proxy"),
            Some(&Entry::Check {
                action: Action::ToggleProxy,
                text: "Anonymizing proxy".into(),
                checked: true
            })
        );
        assert!(find(&out.menu, "New identity").is_some());
        assert!(find(&out.menu, "Hidden services").is_some());
        assert!(find(&out.menu, "No hidden services").is_some());
        assert!(find(&out.menu, "Start daemon").is_none());
        let one = render(&view(running(true, 100, vec![circuit(4, "clean")])));
        assert_eq!(one.tooltip, "On: 1 circuit");
    }

    #[test]
    fn proxy_off_is_the_off_icon_and_unticked_even_while_bootstrapping() {
        for percent in [40, 100] {
            let out = render(&view(running(false, percent, Vec::new())));
            assert_eq!(out.icon, IconKind::Off);
            assert_eq!(out.tooltip, "Off: proxy switched off");
            assert!(matches!(
                find(&out.menu, "Anonymizing proxy"),
                Some(Entry::Check { checked: false, .. })
            ));
        }
    }

    #[test]
    fn no_working_circuit_after_failures_is_an_error() {
        let mut r = running(true, 100, vec![circuit(1, "retired")]);
        r.status.counters = Counters {
            circuit_build_failures: 4,
            ..Counters::default()
        };
        let out = render(&view(r));
        assert_eq!(out.icon, IconKind::Error);
        assert_eq!(out.tooltip, "Error: no working circuit (4 builds failed)");
        // Retired circuits and no failures: just "on" (the pool is refilling).
        let out = render(&view(running(true, 100, vec![circuit(1, "retired")])));
        assert_eq!(out.icon, IconKind::On);
    }

    #[test]
    fn an_unusable_daemon_is_an_error_with_the_reason() {
        let why =
            "cookie rejected by the daemon at 127.0.0.1:4000: the control cookie does not match";
        let v = View {
            daemon: Daemon::Unreachable { why: why.into() },
            ..View::default()
        };
        let out = render(&v);
        assert_eq!(out.icon, IconKind::Error);
        assert_eq!(out.tooltip, format!("Error: cannot use the daemon\n{why}"));
        assert!(find(&out.menu, why).is_some());
        assert!(find(&out.menu, "Start daemon").is_none());
        assert!(find(&out.menu, "Anonymizing proxy").is_none());
    }

    #[test]
    fn menu_actions_map_to_control_requests() {
        let v = view(on());
        assert_eq!(
            plan(&Action::ToggleProxy, &v),
            Step::Control(Request::SetProxy(false))
        );
        let off = view(running(false, 100, Vec::new()));
        assert_eq!(
            plan(&Action::ToggleProxy, &off),
            Step::Control(Request::SetProxy(true))
        );
        assert_eq!(
            plan(&Action::NewIdentity, &v),
            Step::Control(Request::NewIdentity)
        );
        assert_eq!(
            plan(&Action::PublishLocal("127.0.0.1:8000".parse().unwrap()), &v),
            Step::Control(Request::Publish(PublishRequest {
                target: "127.0.0.1:8000".into(),
                port: Some(80)
            }))
        );
        assert_eq!(
            plan(&Action::CopyAddress(ADDR.into()), &v),
            Step::Copy(ADDR.into())
        );
        assert_eq!(plan(&Action::OpenConfigFolder, &v), Step::OpenConfigFolder);
        assert_eq!(plan(&Action::Quit, &v), Step::Quit);
        // A running daemon is not started twice.
        assert_eq!(plan(&Action::StartDaemon, &v), Step::Nothing);
    }

    #[test]
    fn service_toggle_unpublishes_a_published_one_and_republishes_with_its_port() {
        let mut r = on();
        r.services = Services::Available(vec![service(true)]);
        assert_eq!(
            plan(&Action::ToggleService(ADDR.into()), &view(r.clone())),
            Step::Control(Request::Unpublish(ADDR.into()))
        );
        let mut down = service(false);
        down.port = 8443;
        r.services = Services::Available(vec![down]);
        assert_eq!(
            plan(&Action::ToggleService(ADDR.into()), &view(r.clone())),
            Step::Control(Request::Publish(PublishRequest {
                target: "127.0.0.1:8080".into(),
                port: Some(8443)
            }))
        );
        // A click on a service that has gone since the menu was built does nothing.
        assert_eq!(
            plan(&Action::ToggleService("gone.anon".into()), &view(r)),
            Step::Nothing
        );
    }

    #[test]
    fn action_ids_round_trip_and_labels_have_no_action() {
        let actions = [
            Action::ToggleProxy,
            Action::NewIdentity,
            Action::PublishLocal("127.0.0.1:8080".parse().unwrap()),
            Action::PublishLocal("[::1]:3000".parse().unwrap()),
            Action::ToggleService(ADDR.into()),
            Action::CopyAddress(ADDR.into()),
            Action::OpenConfigFolder,
            Action::StartDaemon,
            Action::Quit,
        ];
        for a in actions {
            assert_eq!(Action::from_id(&a.id()), Some(a.clone()), "{}", a.id());
        }
        for id in [
            "label:status",
            "submenu:services",
            "publish-local:nowhere",
            "copy-address:",
            "",
        ] {
            assert_eq!(Action::from_id(id), None, "{id}");
        }
    }

    #[test]
    fn services_are_listed_with_address_toggle_and_copy() {
        let mut r = on();
        r.services = Services::Available(vec![service(true)]);
        let out = render(&view(r));
        let Some(Entry::Submenu { entries, .. }) = find(&out.menu, "Hidden services") else {
            panic!("no Hidden services submenu: {:?}", out.menu);
        };
        let Some(Entry::Submenu { entries, .. }) = entries.first() else {
            panic!("no service submenu: {entries:?}");
        };
        assert_eq!(
            texts(entries),
            ["Port 80 → 127.0.0.1:8080", "Published", "Copy address"]
        );
        assert_eq!(
            entries[1],
            Entry::Check {
                action: Action::ToggleService(ADDR.into()),
                text: "Published".into(),
                checked: true
            }
        );
        assert!(find(&out.menu, ADDR).is_some(), "the full address is shown");

        // A service with a .dark name shows it first.
        let mut r = on();
        r.services = Services::Available(vec![ServiceInfo {
            name: "shop.dark".into(),
            ..service(false)
        }]);
        let out = render(&view(r));
        let Some(Entry::Submenu { entries, .. }) = find(&out.menu, ADDR) else {
            panic!("no service submenu");
        };
        assert_eq!(
            texts(entries),
            [
                "Name: shop.dark",
                "Port 80 → 127.0.0.1:8080",
                "Published",
                "Copy address"
            ]
        );
        assert!(matches!(entries[2], Entry::Check { checked: false, .. }));
    }

    #[test]
    fn listening_ports_are_offered_except_the_daemons_system_and_published_ones() {
        let mut r = on();
        r.listening = [
            "127.0.0.1:22",
            "127.0.0.1:3000",
            "127.0.0.1:8080",
            "127.0.0.1:9050",
            "[::1]:5173",
            "127.0.0.1:40123",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        r.services = Services::Available(vec![service(true)]);
        let out = render(&view(r.clone()));
        let offered: Vec<&str> = texts(&out.menu)
            .into_iter()
            .filter(|t| t.starts_with("Publish "))
            .collect();
        assert_eq!(
            offered,
            ["Publish localhost:3000", "Publish localhost:5173"]
        );
        assert_eq!(
            find(&out.menu, "Publish localhost:5173"),
            Some(&Entry::Item {
                action: Action::PublishLocal("[::1]:5173".parse().unwrap()),
                text: "Publish localhost:5173".into(),
                enabled: true
            })
        );

        // The newest few in the menu, the others in a submenu, then a hint.
        let n = MAX_PUBLISH_ENTRIES + MAX_MORE_ENTRIES + 5;
        r.listening = (0..n as u16)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 20_000 + i)))
            .rev()
            .collect();
        let out = render(&view(r));
        let top: Vec<&str> = out
            .menu
            .iter()
            .map(Entry::text)
            .filter(|t| t.starts_with("Publish "))
            .collect();
        let newest: Vec<String> = (n - MAX_PUBLISH_ENTRIES..n)
            .map(|i| format!("Publish localhost:{}", 20_000 + i))
            .collect();
        assert_eq!(top, newest, "the newest listeners, by port");
        let Some(Entry::Submenu { entries, .. }) = find(&out.menu, "More local servers") else {
            panic!("no More local servers submenu");
        };
        assert_eq!(entries.len(), MAX_MORE_ENTRIES + 1);
        assert_eq!(entries[0].text(), "Publish localhost:20005");
        assert_eq!(
            entries[MAX_MORE_ENTRIES].text(),
            "… 5 more (anonnet service publish PORT)"
        );
    }

    #[test]
    fn a_daemon_without_hidden_services_says_so_and_offers_no_publishing() {
        let mut r = on();
        r.listening = vec!["127.0.0.1:3000".parse().unwrap()];
        r.services = Services::NotAvailable("hidden services arrive with a later release".into());
        let out = render(&view(r));
        assert!(find(&out.menu, "Hidden services: not available in this daemon").is_some());
        assert!(find(&out.menu, "Publish localhost:3000").is_none());
        assert!(find(&out.menu, "Hidden services").is_none());
    }

    #[test]
    fn publishing_copies_the_new_address_and_shows_it() {
        let request = Request::Publish(PublishRequest {
            target: "127.0.0.1:3000".into(),
            port: Some(80),
        });
        let out = outcome(&request, &Ok(Reply::Published(service(true))));
        assert_eq!(out.copy.as_deref(), Some(ADDR));
        assert_eq!(
            out.notice,
            Some(Notice::Published {
                address: ADDR.into(),
                copied: false
            })
        );
        let mut v = view(on());
        v.notice = Some(Notice::Published {
            address: ADDR.into(),
            copied: true,
        });
        let r = render(&v);
        let line = format!("Published {ADDR} (address copied)");
        assert!(r.tooltip.ends_with(&line), "{}", r.tooltip);
        assert_eq!(r.menu[1].text(), line);
    }

    #[test]
    fn a_501_marks_hidden_services_unavailable_other_errors_are_shown() {
        let request = Request::Publish(PublishRequest {
            target: "127.0.0.1:3000".into(),
            port: Some(80),
        });
        let e = ControlError::NotImplemented("hidden services arrive with a later release".into());
        let out = outcome(&request, &Err(e));
        assert_eq!(
            out.services_unavailable.as_deref(),
            Some("hidden services arrive with a later release")
        );
        assert_eq!(
            out.notice.as_ref().map(notice_line).as_deref(),
            Some("Publish localhost:3000 failed: hidden services arrive with a later release")
        );
        let e = ControlError::Api {
            status: 500,
            message: "boom".into(),
            kind: ErrorKind::Internal,
        };
        let out = outcome(&Request::SetProxy(false), &Err(e));
        assert_eq!(out.services_unavailable, None);
        assert_eq!(
            out.notice.as_ref().map(notice_line).as_deref(),
            Some(
                "Switch the proxy off failed: Something went wrong inside anonnet \
                 (the daemon answered 500: boom)"
            )
        );
        // The kind decides, not the words: a daemon that is gone.
        let e = ControlError::ConnectionRefused {
            addr: "127.0.0.1:1".parse().unwrap(),
        };
        let out = outcome(&Request::NewIdentity, &Err(e));
        assert!(
            out.notice.as_ref().map(notice_line).is_some_and(
                |l| l.starts_with("New identity failed: The anonnet daemon is not running (")
            ),
            "{out:?}"
        );
        assert_eq!(
            outcome(&Request::NewIdentity, &Ok(Reply::Done)),
            Outcome::default()
        );
    }

    #[test]
    fn same_shape_means_only_texts_and_states_changed() {
        let a = render(&view(on())).menu;
        let b = render(&view(running(false, 100, Vec::new()))).menu;
        assert_eq!(shape(&a), shape(&b), "proxy off: same items, other states");
        let mut r = on();
        r.services = Services::Available(vec![service(true)]);
        let c = render(&view(r)).menu;
        assert_ne!(shape(&a), shape(&c), "a new service changes the structure");
        let d = render(&View::default()).menu;
        assert_ne!(shape(&a), shape(&d));
    }

    #[test]
    fn long_addresses_are_shortened_in_messages_only() {
        assert_eq!(short_address(ADDR), "abcdefgh…2345.anon");
        assert_eq!(short_address("short.anon"), "short.anon");
        assert_eq!(
            Request::Unpublish(ADDR.into()).describe(),
            "Unpublish abcdefgh…2345.anon"
        );
        assert_eq!(local_name("10.0.0.1:80".parse().unwrap()), "10.0.0.1:80");
    }

    #[test]
    fn only_publishing_is_notified_with_the_address_or_the_reason() {
        let publish = Request::Publish(PublishRequest {
            target: "127.0.0.1:8080".into(),
            port: None,
        });
        let published = Notice::Published {
            address: "abc.anon".into(),
            copied: true,
        };
        let n = notification(&publish, Some(&published)).unwrap();
        assert_eq!(n.summary, "Hidden service published");
        assert!(n.body.contains("abc.anon") && n.body.contains("clipboard"));
        let not_copied = Notice::Published {
            address: "abc.anon".into(),
            copied: false,
        };
        let n = notification(&publish, Some(&not_copied)).unwrap();
        assert!(n.body.contains("abc.anon") && !n.body.contains("clipboard"));
        let failed = Notice::Failed {
            what: "Publish localhost:8080".into(),
            why: "the daemon is off".into(),
        };
        let n = notification(&publish, Some(&failed)).unwrap();
        assert_eq!(n.summary, "Publishing failed");
        assert_eq!(n.body, "Publish localhost:8080: the daemon is off");
        assert_eq!(notification(&publish, None), None);
        assert_eq!(notification(&Request::NewIdentity, Some(&failed)), None);
        assert_eq!(
            notification(&Request::Unpublish("abc.anon".into()), Some(&published)),
            None
        );
    }
}
