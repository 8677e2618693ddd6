//! The tray's tokio side: finds the daemon, polls it (every [`POLL`], and at once when
//! its event stream says something changed), carries out menu clicks, and sends the UI
//! thread a new [`Render`] whenever what it shows changes.
//!
//! It owns no tray type (those stay on the UI thread; tray-icon's `TrayIcon` is `!Send`); it talks
//! to the UI over a bounded channel of [`UiMsg`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use anonnet_control::{locate, ControlClient, ControlError};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, warn};

use crate::desktop::{self, Clipboard};
use crate::model::{
    self, outcome, plan, Action, Daemon, Notice, Render, Reply, Request, Running, Services, Step,
    View,
};
use crate::notify::Notifier;
use crate::proc_net;

/// How often the daemon is asked for its state when nothing happens.
pub const POLL: Duration = Duration::from_millis(1500);
/// Time limit of a status or list call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Time limit of a publish call (the daemon may wait for its descriptor to be stored).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(90);
/// Events arriving within this of each other cause one refresh.
const COALESCE: Duration = Duration::from_millis(100);
/// Wait before following the event stream again after it ended.
const EVENTS_RETRY: Duration = Duration::from_secs(2);

/// What the worker tells the UI thread.
#[derive(Debug)]
pub enum UiMsg {
    /// Show this.
    Render(Render),
    /// Remove the icon and exit.
    Quit,
}

/// Where the daemon is, from `--config` or the OS-standard client config.
#[derive(Debug, Clone)]
pub struct Locator {
    /// `--config`.
    pub config: Option<PathBuf>,
}

impl Locator {
    /// The client config file in use, if any: `--config`, else the OS-standard file.
    pub fn config_file(&self) -> Option<PathBuf> {
        self.config.clone().or_else(locate::default_client_config)
    }

    /// The daemon's state directory (see `anonnet_control::locate`). Without `--config`
    /// and without the OS-standard file, the default state directory.
    ///
    /// # Errors
    /// The config cannot be read, or there is no home directory.
    pub fn state_dir(&self) -> Result<PathBuf, ControlError> {
        match self.config_file() {
            Some(file) if self.config.is_some() || file.exists() => {
                locate::state_dir_from_config(&file)
            }
            _ => locate::default_state_dir().ok_or_else(|| ControlError::File {
                path: PathBuf::from("~"),
                why: "this user has no home directory: pass --config".into(),
            }),
        }
    }

    /// What "Open config folder" opens: the config file's folder when it exists, else the
    /// state directory.
    pub fn folder(&self) -> Option<PathBuf> {
        let from_config = self
            .config_file()
            .filter(|f| f.exists())
            .and_then(|f| Some(std::path::absolute(&f).ok()?.parent()?.to_path_buf()));
        from_config.or_else(|| self.state_dir().ok().filter(|d| d.exists()))
    }

    /// Where a daemon started by the tray logs (its stdout and stderr).
    pub fn daemon_log(&self) -> PathBuf {
        locate::project_dirs()
            .map(|d| d.cache_dir().to_path_buf())
            .unwrap_or_else(std::env::temp_dir)
            .join("daemon.log")
    }

    fn client(&self, timeout: Duration) -> Result<ControlClient, ControlError> {
        Ok(ControlClient::from_state_dir(&self.state_dir()?)?.with_timeout(timeout))
    }
}

/// The answer to a request made in the background.
type Answer = (Request, Result<Reply, ControlError>);

/// The tray's state and the loop that keeps it current.
pub struct Worker {
    locator: Locator,
    daemon_bin: Option<PathBuf>,
    view: View,
    /// Control address of a daemon that answered 501 to a hidden-service call, and its
    /// message: it has none until it is replaced by another daemon.
    services_unavailable: Option<(SocketAddr, String)>,
    /// Control address seen at the last refresh.
    control_addr: Option<SocketAddr>,
    clipboard: Arc<Clipboard>,
    /// Desktop notifications of publications.
    notifier: Notifier,
    /// Exit status of the daemon this tray started, once it stops.
    started: Option<Receiver<Option<i32>>>,
    ui: SyncSender<UiMsg>,
    /// The UI thread has gone (the tray icon could not be made, or it quit).
    ui_closed: bool,
    shown: Option<Render>,
}

impl Worker {
    /// A worker for the daemon `locator` finds, sending to `ui`.
    pub fn new(locator: Locator, ui: SyncSender<UiMsg>) -> Worker {
        Worker {
            locator,
            daemon_bin: desktop::find_daemon(),
            view: View::default(),
            services_unavailable: None,
            control_addr: None,
            clipboard: Arc::new(Clipboard::default()),
            notifier: Notifier::default(),
            started: None,
            ui,
            ui_closed: false,
            shown: None,
        }
    }

    /// Run until "Quit tray", SIGTERM/SIGINT, or the UI is gone. `actions` carries the ids
    /// of clicked menu items.
    pub async fn run(mut self, mut actions: mpsc::Receiver<String>) {
        let changed = Arc::new(Notify::new());
        let follower = tokio::spawn(follow_events(self.locator.clone(), changed.clone()));
        let (answers_tx, mut answers) = mpsc::channel::<Answer>(16);
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop = Box::pin(stop_signal());
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = changed.notified() => tokio::time::sleep(COALESCE).await,
                answer = answers.recv() => {
                    if let Some((request, result)) = answer {
                        self.answered(request, result).await;
                    }
                }
                id = actions.recv() => {
                    let Some(id) = id else { break };
                    if !self.clicked(&id, &answers_tx).await {
                        break;
                    }
                }
                _ = &mut stop => {
                    info!("signal: quitting");
                    break;
                }
            }
            self.refresh().await;
            if self.ui_closed {
                break;
            }
        }
        follower.abort();
        self.send(UiMsg::Quit);
    }

    /// Look at the daemon again and show the result if it changed.
    async fn refresh(&mut self) {
        let daemon = self.look().await;
        if !matches!(daemon, Daemon::Running(_)) {
            self.control_addr = None;
        }
        // What became of a daemon this tray started.
        if let Some(rx) = &self.started {
            if let Ok(code) = rx.try_recv() {
                self.started = None;
                if !matches!(daemon, Daemon::Running(_)) {
                    let why = desktop::last_line(&self.locator.daemon_log()).unwrap_or_else(|| {
                        let code = code.unwrap_or(-1);
                        match anonnet_error::exit_code_meaning(code) {
                            Some(words) => format!("it exited with status {code}: {words}"),
                            None => format!("it exited with status {code}"),
                        }
                    });
                    self.view.notice = Some(Notice::Failed {
                        what: "Start daemon".into(),
                        why,
                    });
                }
            }
        }
        if matches!(daemon, Daemon::Running(_)) && self.view.notice == Some(Notice::Starting) {
            self.view.notice = None;
        }
        self.view.daemon = daemon;
        self.view.can_start_daemon = self.daemon_bin.is_some();
        let render = model::render(&self.view);
        if self.shown.as_ref() != Some(&render) {
            debug!(icon = ?render.icon, tooltip = %render.tooltip, "render");
            if self.send(UiMsg::Render(render.clone())) {
                self.shown = Some(render);
            }
        }
    }

    fn send(&mut self, msg: UiMsg) -> bool {
        match self.ui.try_send(msg) {
            Ok(()) => true,
            // Full: the UI thread is busy; the next refresh sends again.
            Err(TrySendError::Full(_)) => false,
            Err(TrySendError::Disconnected(_)) => {
                self.ui_closed = true;
                false
            }
        }
    }

    /// The daemon's state now.
    async fn look(&mut self) -> Daemon {
        let dir = match self.locator.state_dir() {
            Ok(d) => d,
            Err(e) => return Daemon::Unreachable { why: e.to_string() },
        };
        let client = match ControlClient::from_state_dir(&dir) {
            Ok(c) => c.with_timeout(CALL_TIMEOUT),
            Err(e) => return classify(e),
        };
        let status = match client.status().await {
            Ok(s) => s,
            Err(e) => return classify(e),
        };
        if self.control_addr != Some(client.addr()) {
            info!(control = %client.addr(), "daemon found");
            self.control_addr = Some(client.addr());
        }
        let unavailable = self
            .services_unavailable
            .as_ref()
            .filter(|(addr, _)| *addr == client.addr())
            .map(|(_, m)| m.clone());
        let services = match unavailable {
            Some(message) => Services::NotAvailable(message),
            None => match client.services().await {
                Ok(list) => Services::Available(list),
                Err(ControlError::NotImplemented(message)) => Services::NotAvailable(message),
                Err(e) => {
                    debug!(error = %e, "listing services");
                    Services::Unknown
                }
            },
        };
        let own_ports = locate::read_ports(&dir)
            .map(|p| p.values().map(SocketAddr::port).collect())
            .unwrap_or_default();
        Daemon::Running(Box::new(Running {
            status,
            services,
            own_ports,
            listening: proc_net::read_loopback_targets(),
        }))
    }

    /// Carry out a click; `false` to quit.
    async fn clicked(&mut self, id: &str, answers: &mpsc::Sender<Answer>) -> bool {
        let Some(action) = Action::from_id(id) else {
            return true;
        };
        let step = plan(&action, &self.view);
        info!(?action, ?step, "menu");
        match step {
            Step::Control(request) => {
                let timeout = match request {
                    Request::Publish(_) => PUBLISH_TIMEOUT,
                    _ => CALL_TIMEOUT,
                };
                if matches!(request, Request::Publish(_) | Request::Unpublish(_)) {
                    self.view.notice = Some(Notice::Pending {
                        what: request.describe(),
                    });
                }
                let client = self.locator.client(timeout);
                let answers = answers.clone();
                tokio::spawn(async move {
                    let result = match client {
                        Ok(c) => execute(&c, &request).await,
                        Err(e) => Err(e),
                    };
                    let _ = answers.send((request, result)).await;
                });
            }
            Step::Copy(text) => {
                let copied = self.copy(&text).await;
                self.view.notice = Some(Notice::Copied {
                    address: text,
                    copied,
                });
            }
            Step::OpenConfigFolder => {
                let result = match self.locator.folder() {
                    Some(dir) => desktop::open_folder(&dir),
                    None => Err("no config file and no state directory yet".into()),
                };
                if let Err(why) = result {
                    self.view.notice = Some(Notice::Failed {
                        what: "Open config folder".into(),
                        why,
                    });
                }
            }
            Step::StartDaemon => self.start_daemon(),
            Step::Quit => return false,
            Step::Nothing => {}
        }
        true
    }

    fn start_daemon(&mut self) {
        let Some(bin) = self.daemon_bin.clone() else {
            return;
        };
        let log = self.locator.daemon_log();
        let config = self.locator.config_file().filter(|f| f.exists());
        match desktop::start_daemon(&bin, config.as_deref(), &log) {
            Ok(mut child) => {
                info!(bin = %bin.display(), log = %log.display(), "daemon started");
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let code = child.wait().ok().and_then(|s| s.code());
                    let _ = tx.send(code);
                });
                self.started = Some(rx);
                self.view.notice = Some(Notice::Starting);
            }
            Err(e) => {
                self.view.notice = Some(Notice::Failed {
                    what: "Start daemon".into(),
                    why: format!("cannot run {}: {e}", bin.display()),
                });
            }
        }
    }

    async fn answered(&mut self, request: Request, result: Result<Reply, ControlError>) {
        match &result {
            Ok(reply) => info!(?request, ?reply, "done"),
            Err(e) => warn!(?request, error = %e, "failed"),
        }
        let mut out = outcome(&request, &result);
        if let Some(message) = out.services_unavailable.take() {
            if let Some(addr) = self.control_addr {
                self.services_unavailable = Some((addr, message));
            }
        }
        if let Some(text) = out.copy.take() {
            let ok = self.copy(&text).await;
            if let Some(Notice::Published { copied, .. }) = &mut out.notice {
                *copied = ok;
            }
        }
        if let Some(n) = model::notification(&request, out.notice.as_ref()) {
            match self.notifier.show(&n).await {
                Ok(id) => debug!(id, "notification shown"),
                Err(why) => warn!(%why, "no desktop notification"),
            }
        }
        // A success clears an old message; a pending one is replaced by its outcome.
        self.view.notice = out.notice;
    }

    async fn copy(&self, text: &str) -> bool {
        let clipboard = self.clipboard.clone();
        let text = text.to_owned();
        let result = tokio::task::spawn_blocking(move || clipboard.copy(&text)).await;
        match result {
            Ok(Ok(how)) => {
                info!(how, "copied to the clipboard");
                true
            }
            Ok(Err(why)) => {
                warn!(%why, "no clipboard");
                false
            }
            Err(_) => false,
        }
    }
}

/// "Not running" (offer to start it) or "cannot use it" (an error).
fn classify(e: ControlError) -> Daemon {
    if e.daemon_down() {
        Daemon::NotRunning { why: e.to_string() }
    } else {
        Daemon::Unreachable { why: e.to_string() }
    }
}

/// Make one control API call.
async fn execute(client: &ControlClient, request: &Request) -> Result<Reply, ControlError> {
    match request {
        Request::SetProxy(on) => client.set_proxy(*on).await.map(Reply::Proxy),
        Request::NewIdentity => client.new_identity().await.map(|()| Reply::Done),
        Request::Publish(p) => client.publish(p).await.map(Reply::Published),
        Request::Unpublish(address) => client.unpublish(address).await.map(|()| Reply::Done),
    }
}

/// Follow `GET /v1/events` of whatever daemon `locator` finds, waking the worker on every
/// event; reconnect after the stream ends (the daemon restarted).
async fn follow_events(locator: Locator, changed: Arc<Notify>) {
    loop {
        if let Ok(client) = locator.client(CALL_TIMEOUT) {
            if let Ok(mut events) = client.events().await {
                debug!("following events");
                while let Ok(Some(event)) = events.next().await {
                    debug!(?event, "event");
                    changed.notify_one();
                }
                changed.notify_one();
            }
        }
        tokio::time::sleep(EVENTS_RETRY).await;
    }
}

/// SIGTERM or SIGINT.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
