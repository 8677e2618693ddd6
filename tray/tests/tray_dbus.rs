//! End to end over D-Bus: a real testnet, a private session bus, a minimal
//! StatusNotifierWatcher, and the real `anonnet-tray`. The test reads the tray's menu the
//! way a tray host does (`com.canonical.dbusmenu.GetLayout` on `/MenuBar`), clicks items
//! with `Event(id, "clicked", …)`, and checks through the control API that the daemon did
//! what the menu said. A minimal notification server on the same bus records the desktop
//! notifications the tray sends (one after a publication, none otherwise).
//!
//! Needs `dbus-daemon` (Debian package `dbus`, installed by `.ci/run`) and the `anonnet`
//! binary in the same target directory (`cargo build -p anonnet`, or `cargo test
//! --workspace`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anonnet_control::{ControlClient, Event, ServiceInfo, Status};
use anonnet_tests::{curl_socks, socks_connect_reply, temp_dir, TestDir, Testnet};
use zbus::blocking::Connection;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{OwnedValue, Value};

const SNI_PREFIX: &str = "org.kde.StatusNotifierItem-";
const WATCHER_NAME: &str = "org.kde.StatusNotifierWatcher";

// ------------------------------------------------------------------ processes

/// A private `dbus-daemon --session`; killed on drop (also when a test panics).
struct SessionBus {
    address: String,
    pid: u32,
}

impl SessionBus {
    fn start() -> SessionBus {
        let mut child = Command::new("dbus-daemon")
            .args([
                "--session",
                "--fork",
                "--nopidfile",
                "--print-address=1",
                "--print-pid=1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("dbus-daemon is installed (Debian package dbus; .ci/run installs it)");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok).take(2) {
                let _ = tx.send(line);
            }
        });
        let address = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let pid = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The launcher exits after forking the bus.
        let _ = child.wait();
        SessionBus { address, pid }
    }

    fn connect(&self) -> Connection {
        zbus::blocking::connection::Builder::address(self.address.as_str())
            .unwrap()
            .build()
            .unwrap()
    }
}

impl Drop for SessionBus {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
    }
}

/// The real `anonnet-tray` on the private bus; killed on drop. Its log is printed when the
/// test failed.
struct Tray {
    child: Child,
    log: PathBuf,
}

impl Tray {
    fn start(bus: &SessionBus, config: &Path, log: PathBuf) -> Tray {
        let child = Command::new(env!("CARGO_BIN_EXE_anonnet-tray"))
            .arg("--config")
            .arg(config)
            .args(["--log-level", "debug"])
            .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
            // No display: the clipboard falls back (and fails) quietly.
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Tray { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait (bounded) for the tray to exit; its exit status.
    fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Tray {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- anonnet-tray log (last 60 lines, newest first) ---");
            for l in tail {
                eprintln!("{l}");
            }
        }
    }
}

/// A web server on 127.0.0.1:0 in a thread: every request gets `body`.
fn serve_page(body: &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(body);
            });
        }
    });
    port
}

// ------------------------------------------------------------------ the watcher

/// The smallest StatusNotifierWatcher a StatusNotifierItem registers with (what a tray host
/// such as a desktop panel provides).
#[derive(Clone, Default)]
struct Watcher {
    items: Arc<Mutex<Vec<String>>>,
}

#[zbus::interface(name = "org.kde.StatusNotifierWatcher")]
impl Watcher {
    async fn register_status_notifier_item(
        &self,
        service: &str,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) {
        // An item registers by bus name, or by object path (then its sender is the name).
        let name = if service.starts_with('/') {
            header.sender().map(|s| s.to_string()).unwrap_or_default()
        } else {
            service.to_owned()
        };
        self.items.lock().unwrap().push(name.clone());
        let _ = Self::status_notifier_item_registered(&emitter, &name).await;
    }

    fn register_status_notifier_host(&self, _service: &str) {}

    #[zbus(property)]
    fn registered_status_notifier_items(&self) -> Vec<String> {
        self.items.lock().unwrap().clone()
    }

    #[zbus(property)]
    fn is_status_notifier_host_registered(&self) -> bool {
        true
    }

    #[zbus(property)]
    fn protocol_version(&self) -> i32 {
        0
    }

    #[zbus(signal)]
    async fn status_notifier_item_registered(
        emitter: &SignalEmitter<'_>,
        service: &str,
    ) -> zbus::Result<()>;
}

fn serve_watcher(bus: &SessionBus, watcher: Watcher) -> Connection {
    zbus::blocking::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .name(WATCHER_NAME)
        .unwrap()
        .serve_at("/StatusNotifierWatcher", watcher)
        .unwrap()
        .build()
        .unwrap()
}

// ------------------------------------------------------------------ notifications

const NOTIFICATIONS_NAME: &str = "org.freedesktop.Notifications";

/// One `Notify` call, as a notification server receives it.
#[derive(Debug, Clone)]
struct Notified {
    app_name: String,
    replaces_id: u32,
    app_icon: String,
    summary: String,
    body: String,
    desktop_entry: Option<String>,
}

/// The part of a notification server (Desktop Notifications Specification 1.2) that a
/// desktop provides: it records every `Notify` and numbers them from 1.
#[derive(Clone, Default)]
struct Notifications {
    received: Arc<Mutex<Vec<Notified>>>,
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl Notifications {
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        app_name: &str,
        replaces_id: u32,
        app_icon: &str,
        summary: &str,
        body: &str,
        _actions: Vec<String>,
        hints: HashMap<String, OwnedValue>,
        _expire_timeout: i32,
    ) -> u32 {
        let desktop_entry = hints
            .get("desktop-entry")
            .and_then(|v| String::try_from(v.try_clone().ok()?).ok());
        let mut received = self.received.lock().unwrap();
        received.push(Notified {
            app_name: app_name.to_owned(),
            replaces_id,
            app_icon: app_icon.to_owned(),
            summary: summary.to_owned(),
            body: body.to_owned(),
            desktop_entry,
        });
        u32::try_from(received.len()).unwrap()
    }

    fn get_capabilities(&self) -> Vec<String> {
        vec!["body".into()]
    }

    fn get_server_information(&self) -> (String, String, String, String) {
        (
            "anonnet-test".into(),
            "anonnet".into(),
            "0".into(),
            "1.2".into(),
        )
    }

    fn close_notification(&self, _id: u32) {}
}

fn serve_notifications(bus: &SessionBus, server: Notifications) -> Connection {
    zbus::blocking::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .name(NOTIFICATIONS_NAME)
        .unwrap()
        .serve_at("/org/freedesktop/Notifications", server)
        .unwrap()
        .build()
        .unwrap()
}

// ------------------------------------------------------------------ the menu over D-Bus

/// One dbusmenu item.
#[derive(Debug, Clone)]
struct Item {
    id: i32,
    label: String,
    enabled: bool,
    toggle_state: Option<i32>,
    children: Vec<Item>,
}

impl Item {
    fn all(&self) -> Vec<&Item> {
        let mut out = vec![self];
        for c in &self.children {
            out.extend(c.all());
        }
        out
    }

    fn find(&self, label: &str) -> Option<&Item> {
        self.all().into_iter().find(|i| i.label == label)
    }

    fn labels(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .map(|i| i.label.clone())
            .filter(|l| !l.is_empty())
            .collect()
    }
}

type RawItem = (i32, HashMap<String, OwnedValue>, Vec<OwnedValue>);

fn item(raw: RawItem) -> Item {
    let (id, props, children) = raw;
    let prop = |k: &str| props.get(k).and_then(|v| v.try_clone().ok());
    Item {
        id,
        label: prop("label")
            .and_then(|v| String::try_from(v).ok())
            .unwrap_or_default(),
        enabled: prop("enabled")
            .and_then(|v| bool::try_from(v).ok())
            .unwrap_or(true),
        toggle_state: prop("toggle-state").and_then(|v| i32::try_from(v).ok()),
        children: children
            .into_iter()
            .map(|c| {
                let v: Value<'_> = c.try_clone().unwrap().into();
                item(RawItem::try_from(v).unwrap())
            })
            .collect(),
    }
}

/// The whole menu, as a tray host reads it.
fn menu(conn: &Connection, name: &str) -> Item {
    let reply = conn
        .call_method(
            Some(name),
            "/MenuBar",
            Some("com.canonical.dbusmenu"),
            "GetLayout",
            &(0i32, -1i32, Vec::<String>::new()),
        )
        .unwrap();
    let (_revision, root): (u32, RawItem) = reply.body().deserialize().unwrap();
    item(root)
}

/// Click the item labelled `label` (looked up afresh: ids change when the menu is rebuilt).
fn click(conn: &Connection, name: &str, label: &str) {
    let m = menu(conn, name);
    let Some(target) = m.find(label) else {
        panic!("no item {label:?} in the menu: {:?}", m.labels());
    };
    assert!(target.enabled, "{label:?} is disabled");
    conn.call_method(
        Some(name),
        "/MenuBar",
        Some("com.canonical.dbusmenu"),
        "Event",
        &(target.id, "clicked", Value::from(""), 0u32),
    )
    .unwrap();
}

/// A property of the tray's `/StatusNotifierItem`.
fn sni_property(conn: &Connection, name: &str, property: &str) -> OwnedValue {
    let reply = conn
        .call_method(
            Some(name),
            "/StatusNotifierItem",
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &("org.kde.StatusNotifierItem", property),
        )
        .unwrap();
    reply.body().deserialize().unwrap()
}

/// The tooltip's text (`(icon name, icon pixmaps, title, description)`).
fn tooltip(conn: &Connection, name: &str) -> String {
    let (_icon, _pixmaps, title, text) =
        <(String, Vec<(i32, i32, Vec<u8>)>, String, String)>::try_from(sni_property(
            conn, name, "ToolTip",
        ))
        .unwrap();
    assert_eq!(title, "anonnet");
    text
}

/// The icon's pixmaps (`(width, height, ARGB32)`), as the item lists them.
fn icon_pixmaps(conn: &Connection, name: &str) -> Vec<(i32, i32, Vec<u8>)> {
    <Vec<(i32, i32, Vec<u8>)>>::try_from(sni_property(conn, name, "IconPixmap")).unwrap()
}

/// The icon's largest pixmap.
fn icon_pixels(conn: &Connection, name: &str) -> (i32, i32, Vec<u8>) {
    icon_pixmaps(conn, name)
        .into_iter()
        .max_by_key(|(w, _, _)| *w)
        .expect("an icon pixmap")
}

/// The host opens the menu: `AboutToShow` on its root item (id 0), as a panel does before
/// it draws the menu from the layout it fetched.
fn about_to_show(conn: &Connection, name: &str) {
    conn.call_method(
        Some(name),
        "/MenuBar",
        Some("com.canonical.dbusmenu"),
        "AboutToShow",
        &(0i32),
    )
    .unwrap();
}

/// Poll `f` every 100 ms until it returns `Some`, at most `within`.
fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The bus name of the StatusNotifierItem of process `pid`.
fn find_item(conn: &Connection, pid: u32) -> String {
    let dbus = zbus::blocking::fdo::DBusProxy::new(conn).unwrap();
    let want = format!("{SNI_PREFIX}{pid}-");
    wait_for(
        "the tray's StatusNotifierItem name on the bus",
        Duration::from_secs(20),
        || {
            dbus.list_names()
                .unwrap()
                .into_iter()
                .map(|n| n.to_string())
                .find(|n| n.starts_with(&want))
        },
    )
}

/// Wait until the menu satisfies `ok`; returns it.
fn wait_menu(conn: &Connection, name: &str, what: &str, ok: impl Fn(&Item) -> bool) -> Item {
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = menu(conn, name);
        if ok(&m) {
            return m;
        }
        if Instant::now() > deadline {
            panic!(
                "menu never showed {what}; last: {:?}",
                last.map(|m: Item| m.labels())
            );
        }
        last = Some(m);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn status(rt: &tokio::runtime::Runtime, control: &ControlClient) -> Status {
    rt.block_on(control.status()).unwrap()
}

/// A testnet, a private bus with a watcher, and the tray on it, found on the bus.
struct Setup {
    rt: tokio::runtime::Runtime,
    control: ControlClient,
    conn: Connection,
    name: String,
    watcher: Watcher,
    notifications: Notifications,
    // Dropped in this order: the tray, the watcher, the bus, the testnet, its directory.
    tray: Tray,
    _watcher_conn: Connection,
    _notifications_conn: Connection,
    _bus: SessionBus,
    net: Testnet,
    dir: TestDir,
}

fn setup(test: &str) -> Setup {
    let dir = temp_dir(test);
    let net = Testnet::start(3, &dir);
    let config = dir.join("client").join("client.toml");
    let rt = runtime();
    let control = ControlClient::from_config(&config).unwrap();
    let bus = SessionBus::start();
    let watcher = Watcher::default();
    let watcher_conn = serve_watcher(&bus, watcher.clone());
    let notifications = Notifications::default();
    let notifications_conn = serve_notifications(&bus, notifications.clone());
    let tray = Tray::start(&bus, &config, dir.join("tray.log"));
    let conn = bus.connect();
    let name = find_item(&conn, tray.pid());
    Setup {
        rt,
        control,
        conn,
        name,
        dir,
        watcher,
        notifications,
        tray,
        _watcher_conn: watcher_conn,
        _notifications_conn: notifications_conn,
        _bus: bus,
        net,
    }
}

// ------------------------------------------------------------------ tests

#[test]
fn tray_menu_switches_the_proxy_and_asks_for_a_new_identity_over_dbus() {
    let started = Instant::now();
    let mut s = setup("tray-menu");
    let (conn, name) = (&s.conn, s.name.as_str());
    eprintln!("testnet and tray up in {:?}", started.elapsed());

    // It registered with the watcher, as with a desktop's tray host.
    let watcher = s.watcher.clone();
    wait_for(
        "the tray registers with the StatusNotifierWatcher",
        Duration::from_secs(10),
        || {
            watcher
                .items
                .lock()
                .unwrap()
                .contains(&name.to_owned())
                .then_some(())
        },
    );
    let id = String::try_from(sni_property(conn, name, "Id")).unwrap();
    assert_eq!(id, "anonnet-tray");

    // Bootstrapped testnet: "on", proxy ticked, the circuit count in the tooltip.
    let m = wait_menu(conn, name, "the daemon on with the proxy ticked", |m| {
        m.find("Anonymizing proxy")
            .is_some_and(|i| i.toggle_state == Some(1))
            && m.labels().iter().any(|l| l.starts_with("On: "))
    });
    for label in [
        "New identity",
        "Hidden services",
        "Open config folder",
        "Quit tray",
    ] {
        assert!(m.find(label).is_some(), "{label:?} in {:?}", m.labels());
    }
    assert!(m.find("Start daemon").is_none());
    let on_tip = tooltip(conn, name);
    assert!(
        on_tip.starts_with("On: ") && on_tip.contains("circuit"),
        "{on_tip}"
    );
    // Every size, so the host picks the one of its panel instead of scaling one.
    let sizes: Vec<(i32, i32)> = icon_pixmaps(conn, name)
        .iter()
        .map(|(w, h, argb)| {
            assert_eq!(argb.len(), (w * h * 4) as usize);
            (*w, *h)
        })
        .collect();
    assert_eq!(
        sizes,
        [(16, 16), (22, 22), (24, 24), (32, 32), (48, 48), (64, 64)]
    );
    let (_, _, on_icon) = icon_pixels(conn, name);
    // The daemon's own ports are never offered for publishing.
    let ports = anonnet_control::locate::read_ports(&s.dir.join("client")).unwrap();
    for addr in ports.values() {
        let label = format!("Publish localhost:{}", addr.port());
        assert!(m.find(&label).is_none(), "{label} offered");
    }

    let mut events = s.rt.block_on(s.control.events()).unwrap();

    // "Anonymizing proxy" off: the daemon refuses SOCKS requests; the icon and menu follow.
    click(conn, name, "Anonymizing proxy");
    wait_for(
        "the daemon switched the proxy off",
        Duration::from_secs(10),
        || (!status(&s.rt, &s.control).enabled).then_some(()),
    );
    assert_eq!(
        s.rt.block_on(socks_connect_reply(s.net.socks, 1, "127.0.0.1", 9)),
        2,
        "SOCKS says 'not allowed' while the proxy is off"
    );
    wait_menu(conn, name, "the proxy unticked and 'Off'", |m| {
        m.find("Anonymizing proxy")
            .is_some_and(|i| i.toggle_state == Some(0))
            && m.find("Off: proxy switched off").is_some()
    });
    assert_eq!(tooltip(conn, name), "Off: proxy switched off");
    assert_ne!(icon_pixels(conn, name).2, on_icon, "the icon changed");

    // And on again.
    click(conn, name, "Anonymizing proxy");
    wait_for(
        "the daemon switched the proxy on",
        Duration::from_secs(10),
        || status(&s.rt, &s.control).enabled.then_some(()),
    );
    wait_menu(conn, name, "the proxy ticked again", |m| {
        m.find("Anonymizing proxy")
            .is_some_and(|i| i.toggle_state == Some(1))
    });
    wait_for("the 'on' icon again", Duration::from_secs(10), || {
        (icon_pixels(conn, name).2 == on_icon).then_some(())
    });

    // The host opens the menu; a server that starts listening now would add an item
    // ("Publish localhost:PORT"), which waits until the menu closes: here the click on
    // "New identity" below. The worker looks for servers every 1.5 s.
    about_to_show(conn, name);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let publish = format!(
        "Publish localhost:{}",
        listener.local_addr().unwrap().port()
    );
    let open_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < open_until {
        let m = menu(conn, name);
        assert!(
            m.find(&publish).is_none(),
            "the layout changed while the menu was open: {:?}",
            m.labels()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // "New identity": every circuit that existed is retired, and fresh ones are built.
    let before: HashSet<u64> = status(&s.rt, &s.control)
        .circuits
        .iter()
        .filter(|c| c.state != "retired")
        .map(|c| c.id)
        .collect();
    assert!(!before.is_empty());
    click(conn, name, "New identity");
    s.rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match events.next().await.unwrap() {
                    Some(Event::NewIdentity) => return,
                    Some(_) => continue,
                    None => panic!("event stream ended"),
                }
            }
        })
        .await
        .expect("the daemon reported a new identity")
    });
    let circuits = s.rt.block_on(s.control.circuits()).unwrap();
    for c in circuits.iter().filter(|c| before.contains(&c.id)) {
        assert_eq!(
            c.state, "retired",
            "old circuit {} after new identity",
            c.id
        );
    }
    wait_for(
        "a fresh circuit after the new identity",
        Duration::from_secs(15),
        || {
            s.rt.block_on(s.control.circuits())
                .unwrap()
                .iter()
                .any(|c| c.state != "retired" && !before.contains(&c.id))
                .then_some(())
        },
    );

    // The click closed the menu: the held item is there, and goes with its server.
    wait_menu(conn, name, "the new item after the menu closed", |m| {
        m.find(&publish).is_some()
    });
    drop(listener);
    wait_menu(conn, name, "the item gone with its server", |m| {
        m.find(&publish).is_none()
    });

    // "Quit tray": the tray exits cleanly and leaves the bus.
    click(conn, name, "Quit tray");
    let exit = s.tray.wait_exit(Duration::from_secs(10));
    assert!(
        exit.is_some_and(|e| e.success()),
        "tray exit after Quit: {exit:?}"
    );
    let dbus = zbus::blocking::fdo::DBusProxy::new(conn).unwrap();
    assert!(!dbus
        .list_names()
        .unwrap()
        .iter()
        .any(|n| n.as_str() == name));
    // Switching the proxy and a new identity show in the menu only: no notification.
    assert!(s.notifications.received.lock().unwrap().is_empty());
    eprintln!("tray menu test took {:?}", started.elapsed());
}

const PAGE: &[u8] = b"<html><body>published from the tray</body></html>\n";

#[test]
fn tray_publishes_a_listening_port_and_it_answers_through_its_anon_address() {
    let started = Instant::now();
    let port = serve_page(PAGE);
    let target: SocketAddr = ([127, 0, 0, 1], port).into();
    let s = setup("tray-publish");
    let (conn, name) = (&s.conn, s.name.as_str());

    let publish = format!("Publish localhost:{port}");
    wait_menu(conn, name, &publish, |m| m.find(&publish).is_some());
    click(conn, name, &publish);

    let not_available = "Hidden services: not available in this daemon";
    let service: ServiceInfo = wait_for(
        "the published service in /v1/services",
        Duration::from_secs(90),
        || {
            let m = menu(conn, name);
            if m.find(not_available).is_some() {
                panic!(
                    "the daemon has no hidden services (publish answered 501): {:?}",
                    m.labels()
                );
            }
            s.rt.block_on(s.control.services())
                .unwrap()
                .into_iter()
                .find(|svc| svc.target == target.to_string() && svc.published)
        },
    );
    assert!(
        service.address.ends_with(".anon"),
        "address {:?}",
        service.address
    );
    assert_eq!(service.port, 80);

    // The tray shows the new address (menu line and tooltip) and lists the service.
    let shown = format!("Published {}", service.address);
    let toggle = |m: &Item| {
        m.find(&service.address).and_then(|s| {
            s.children
                .iter()
                .find(|i| i.label == "Published")
                .map(|i| i.toggle_state)
        })
    };
    let m = wait_menu(conn, name, "the new address, published", |m| {
        m.labels().iter().any(|l| l.starts_with(&shown)) && toggle(m) == Some(Some(1))
    });
    assert!(m.find(&publish).is_none(), "{publish} still offered");
    assert!(tooltip(conn, name).contains(&service.address));

    // The desktop was told, once, with the address.
    let n = wait_for(
        "a desktop notification of the publication",
        Duration::from_secs(10),
        || s.notifications.received.lock().unwrap().first().cloned(),
    );
    assert_eq!(n.summary, "Hidden service published", "{n:?}");
    assert!(n.body.contains(&service.address), "{n:?}");
    assert_eq!(
        (n.app_name.as_str(), n.app_icon.as_str(), n.replaces_id),
        ("anonnet", "anonnet", 0),
        "{n:?}"
    );
    assert_eq!(n.desktop_entry.as_deref(), Some("anonnet-tray"), "{n:?}");

    // Through the network, by its .anon address.
    let out = s.dir.join("page.html");
    let url = format!("http://{}/", service.address);
    // A fresh descriptor may take a moment to be found: a few tries, bounded.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, err) = curl_socks(s.net.socks, &url, &out);
        if code == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "curl {url}: exit {code}: {err}");
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(std::fs::read(&out).unwrap(), PAGE);

    // The toggle unpublishes it.
    click(conn, name, "Published");
    wait_for("the service unpublished", Duration::from_secs(30), || {
        s.rt.block_on(s.control.services())
            .unwrap()
            .iter()
            .all(|svc| svc.address != service.address || !svc.published)
            .then_some(())
    });
    // Unpublishing is not announced: still the one notification.
    assert_eq!(s.notifications.received.lock().unwrap().len(), 1);
    eprintln!("tray publish test took {:?}", started.elapsed());
}
