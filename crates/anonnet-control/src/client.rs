//! The control API client, used by the `anonnet` CLI subcommands and the tray.
//!
//! Each call opens a fresh loopback connection, so a client value stays usable across
//! daemon restarts on the same port and holds no socket while idle. Every call is bounded
//! by a time limit ([`REQUEST_TIMEOUT`] unless changed); an event stream only for its start.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

use crate::cookie::COOKIE_FILE;
use crate::types::{
    Ack, CircuitInfo, ErrorBody, Event, ProxyRequest, PublishRequest, ServiceInfo, Status,
    UnpublishRequest,
};
use crate::{ControlError, Cookie};

/// Name of the port file the daemon writes in its state directory: a JSON object of
/// listener name → `"IP:PORT"`, e.g. `{"socks":"127.0.0.1:9050","control":"127.0.0.1:40123"}`.
pub const PORTS_FILE: &str = "ports.json";
/// Key of the control API's address in [`PORTS_FILE`].
pub const PORTS_KEY: &str = "control";
/// Default time limit of one call.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer accepted (bytes).
const MAX_ANSWER: usize = 16 << 20;
/// Longest event line accepted (bytes).
const MAX_EVENT_LINE: usize = 1 << 20;

/// A handle on one daemon's control API: its address and cookie.
#[derive(Debug, Clone)]
pub struct ControlClient {
    addr: SocketAddr,
    cookie: Arc<Cookie>,
    timeout: Duration,
}

impl ControlClient {
    /// A client for the control API at `addr` with `cookie`. Nothing is sent until the
    /// first call.
    pub fn connect(addr: SocketAddr, cookie: Cookie) -> ControlClient {
        ControlClient {
            addr,
            cookie: Arc::new(cookie),
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// The client for the daemon whose state directory is `state_dir`: the address from
    /// `ports.json` (key `control`), the cookie from `control.cookie`.
    ///
    /// # Errors
    /// [`ControlError::NotRunning`] when there is no `ports.json` (no daemon runs with this
    /// state directory), [`ControlError::NoControlPort`] when it names no control port,
    /// [`ControlError::File`] when a file is unreadable or malformed.
    pub fn from_state_dir(state_dir: &Path) -> Result<ControlClient, ControlError> {
        let addr = crate::locate::control_addr(state_dir)?;
        let cookie = Cookie::read(&state_dir.join(COOKIE_FILE))?;
        Ok(ControlClient::connect(addr, cookie))
    }

    /// The client for the daemon that the client config `config_file` configures: its
    /// state directory ([`crate::locate::state_dir_from_config`]), then as
    /// [`Self::from_state_dir`].
    ///
    /// # Errors
    /// As [`crate::locate::state_dir_from_config`] and [`Self::from_state_dir`].
    pub fn from_config(config_file: &Path) -> Result<ControlClient, ControlError> {
        Self::from_state_dir(&crate::locate::state_dir_from_config(config_file)?)
    }

    /// The same client with another time limit per call.
    pub fn with_timeout(mut self, timeout: Duration) -> ControlClient {
        self.timeout = timeout;
        self
    }

    /// The control API's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `GET /v1/status`.
    ///
    /// # Errors
    /// See [`ControlError`]: [`ControlError::daemon_down`] tells "not running" apart.
    pub async fn status(&self) -> Result<Status, ControlError> {
        self.call(Method::GET, "status", None).await
    }

    /// `GET /v1/circuits`.
    ///
    /// # Errors
    /// As [`Self::status`].
    pub async fn circuits(&self) -> Result<Vec<CircuitInfo>, ControlError> {
        self.call(Method::GET, "circuits", None).await
    }

    /// `POST /v1/proxy`: switch proxying on or off; returns the new state.
    ///
    /// # Errors
    /// As [`Self::status`].
    pub async fn set_proxy(&self, enabled: bool) -> Result<bool, ControlError> {
        let body = json_body(&ProxyRequest { enabled })?;
        let state: ProxyRequest = self.call(Method::POST, "proxy", Some(body)).await?;
        Ok(state.enabled)
    }

    /// `POST /v1/new-identity`: every current circuit stops taking new streams.
    ///
    /// # Errors
    /// As [`Self::status`].
    pub async fn new_identity(&self) -> Result<(), ControlError> {
        let _: Ack = self
            .call(Method::POST, "new-identity", Some(Bytes::new()))
            .await?;
        Ok(())
    }

    /// `GET /v1/services`.
    ///
    /// # Errors
    /// As [`Self::status`].
    pub async fn services(&self) -> Result<Vec<ServiceInfo>, ControlError> {
        self.call(Method::GET, "services", None).await
    }

    /// `POST /v1/services/publish`.
    ///
    /// # Errors
    /// As [`Self::status`]; [`ControlError::NotImplemented`] until hidden services exist.
    pub async fn publish(&self, request: &PublishRequest) -> Result<ServiceInfo, ControlError> {
        let body = json_body(request)?;
        self.call(Method::POST, "services/publish", Some(body))
            .await
    }

    /// `POST /v1/services/unpublish`.
    ///
    /// # Errors
    /// As [`Self::publish`].
    pub async fn unpublish(&self, address: &str) -> Result<(), ControlError> {
        let body = json_body(&UnpublishRequest {
            address: address.to_owned(),
        })?;
        let _: Ack = self
            .call(Method::POST, "services/unpublish", Some(body))
            .await?;
        Ok(())
    }

    /// `GET /v1/events`: a stream of events as they happen. Only its start is bounded by
    /// the time limit; then it lasts until dropped or the daemon stops.
    ///
    /// # Errors
    /// As [`Self::status`].
    pub async fn events(&self) -> Result<EventStream, ControlError> {
        let resp = self.bounded(self.send(Method::GET, "events", None)).await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = self.bounded(read_body(self.addr, resp)).await?;
            return Err(api_error(status, &body));
        }
        Ok(EventStream {
            addr: self.addr,
            body: resp.into_body(),
            buf: Vec::new(),
        })
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, ControlError>>,
    ) -> Result<T, ControlError> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .unwrap_or_else(|_| {
                Err(ControlError::Timeout {
                    addr: self.addr,
                    secs: self.timeout.as_secs().max(1),
                })
            })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        endpoint: &str,
        body: Option<Bytes>,
    ) -> Result<T, ControlError> {
        self.bounded(async {
            let resp = self.send(method, endpoint, body).await?;
            let status = resp.status();
            let bytes = read_body(self.addr, resp).await?;
            if !status.is_success() {
                return Err(api_error(status, &bytes));
            }
            serde_json::from_slice(&bytes)
                .map_err(|e| ControlError::Decode(format!("/v1/{endpoint}: {e}")))
        })
        .await
    }

    /// One request on a fresh connection; a 401 becomes [`ControlError::CookieRejected`].
    async fn send(
        &self,
        method: Method,
        endpoint: &str,
        body: Option<Bytes>,
    ) -> Result<Response<Incoming>, ControlError> {
        let addr = self.addr;
        let transport = |why: String| ControlError::Transport { addr, why };
        let tcp = TcpStream::connect(addr).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                ControlError::ConnectionRefused { addr }
            } else {
                transport(format!("cannot connect: {e}"))
            }
        })?;
        let _ = tcp.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| transport(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let bearer = self.cookie.bearer();
        let mut auth = HeaderValue::from_str(bearer.as_str())
            .map_err(|e| transport(format!("cookie header: {e}")))?;
        auth.set_sensitive(true);
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("/v1/{endpoint}"))
            .header(header::HOST, addr.to_string())
            .header(header::AUTHORIZATION, auth);
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        let req = builder
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| transport(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| transport(e.to_string()))?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(ControlError::CookieRejected { addr });
        }
        Ok(resp)
    }
}

fn json_body<T: serde::Serialize>(value: &T) -> Result<Bytes, ControlError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| ControlError::Decode(format!("cannot encode the request: {e}")))
}

async fn read_body(addr: SocketAddr, resp: Response<Incoming>) -> Result<Bytes, ControlError> {
    Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ControlError::Transport {
            addr,
            why: format!("reading the answer: {e}"),
        })
}

/// The error of an answer with an error `status`: its `error` text and its `kind` (from
/// the status, [`crate::server::kind_of_status`], when the daemon sent none or one this
/// version does not know).
fn api_error(status: StatusCode, body: &[u8]) -> ControlError {
    let (message, kind) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => (b.error, anonnet_error::ErrorKind::parse(&b.kind)),
        Err(_) => (String::from_utf8_lossy(body).trim().to_owned(), None),
    };
    if status == StatusCode::NOT_IMPLEMENTED {
        ControlError::NotImplemented(message)
    } else {
        ControlError::Api {
            status: status.as_u16(),
            message,
            kind: kind.unwrap_or_else(|| crate::server::kind_of_status(status)),
        }
    }
}

/// The daemon's events as they happen (`GET /v1/events`). Dropping it ends the stream.
#[derive(Debug)]
pub struct EventStream {
    addr: SocketAddr,
    body: Incoming,
    buf: Vec<u8>,
}

impl EventStream {
    /// The next event; `Ok(None)` when the daemon ended the stream (it stopped). Waits as
    /// long as nothing happens: wrap it in a timeout to bound the wait.
    ///
    /// # Errors
    /// [`ControlError::Transport`] when the connection breaks, [`ControlError::Decode`]
    /// for a line that is not an event.
    pub async fn next(&mut self) -> Result<Option<Event>, ControlError> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                return serde_json::from_slice(line)
                    .map(Some)
                    .map_err(|e| ControlError::Decode(format!("event line: {e}")));
            }
            if self.buf.len() > MAX_EVENT_LINE {
                return Err(ControlError::Decode(format!(
                    "event line longer than {MAX_EVENT_LINE} bytes"
                )));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(ControlError::Transport {
                        addr: self.addr,
                        why: format!("event stream: {e}"),
                    })
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}
