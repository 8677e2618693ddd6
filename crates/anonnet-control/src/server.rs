//! The control API server: HTTP/1.1 on a loopback TCP port, JSON bodies, every request
//! authenticated by the cookie (`Authorization: Bearer <hex>`), compared in constant time.
//!
//! The daemon implements [`ControlHandler`] over its client; the server does the HTTP,
//! the authentication, the routing and the event stream. Limits: at most
//! [`MAX_CONNECTIONS`] connections at once (more wait in the kernel's backlog), request
//! headers within [`HEADER_TIMEOUT`] (also the idle limit of a kept-alive connection; a
//! connection that sends nothing is closed after it), request bodies of at most
//! [`MAX_BODY`] bytes; a request without the cookie is answered 401 and its connection
//! closed.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, Semaphore};
use tracing::{debug, warn};

use crate::types::{
    Ack, CircuitInfo, ErrorBody, Event, ProxyRequest, PublishRequest, ServiceInfo, Status,
    UnpublishRequest,
};
use crate::{ControlError, Cookie};
use anonnet_error::{ErrorKind, HasKind};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 32;
/// Time a client has to send a request's headers (and the idle limit between requests on
/// one connection). Short, because a connection holds one of the [`MAX_CONNECTIONS`] slots
/// before it has shown the cookie: the CLI and the tray send their request at once, so a
/// local process that opens connections and sends nothing keeps a slot at most this long.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest request body accepted (bytes).
pub const MAX_BODY: usize = 64 * 1024;
/// Event lines buffered per event-stream reader before it counts as lagging.
pub const EVENT_BUFFER: usize = 64;
/// Text of the 501 answer for hidden-service actions until they exist.
pub const SERVICES_LATER: &str = "hidden services arrive with a later release";

/// A boxed future returned by the asynchronous [`ControlHandler`] methods.
pub type HandlerFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A request the handler could not carry out; the server answers with the matching HTTP
/// status and `{"error": "<text>"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// The request is malformed or names something invalid (400).
    #[error("{0}")]
    BadRequest(String),
    /// The thing named does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// Not available in this version (501).
    #[error("{0}")]
    NotImplemented(String),
    /// It was tried and failed (500).
    #[error("{0}")]
    Failed(String),
    /// It was tried and failed for a reason of this kind (500, with the kind in the
    /// answer's `kind`).
    #[error("{message}")]
    FailedAs {
        /// The kind of the failure.
        kind: ErrorKind,
        /// What went wrong, one line.
        message: String,
    },
}

impl HasKind for HandlerError {
    /// [`ErrorKind::BadRequest`], [`ErrorKind::NotFound`],
    /// [`ErrorKind::NotImplemented`], the kind given, else [`ErrorKind::Internal`].
    fn kind(&self) -> ErrorKind {
        match self {
            HandlerError::BadRequest(_) => ErrorKind::BadRequest,
            HandlerError::NotFound(_) => ErrorKind::NotFound,
            HandlerError::NotImplemented(_) => ErrorKind::NotImplemented,
            HandlerError::Failed(_) => ErrorKind::Internal,
            HandlerError::FailedAs { kind, .. } => *kind,
        }
    }
}

impl HandlerError {
    fn status(&self) -> StatusCode {
        match self {
            HandlerError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HandlerError::NotFound(_) => StatusCode::NOT_FOUND,
            HandlerError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            HandlerError::Failed(_) | HandlerError::FailedAs { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

/// What the daemon does for the control API. Called only for authenticated requests.
///
/// The synchronous methods must not block (they run on the server's tasks); work that
/// waits on the network belongs in the asynchronous ones.
pub trait ControlHandler: Send + Sync + 'static {
    /// A snapshot (`GET /v1/status`).
    fn status(&self) -> Status;

    /// The open circuits (`GET /v1/circuits`). Default: those of [`Self::status`].
    fn circuits(&self) -> Vec<CircuitInfo> {
        self.status().circuits
    }

    /// Switch proxying on or off (`POST /v1/proxy`). While off, new proxy requests are
    /// refused and nothing is sent anywhere.
    fn set_proxy(&self, enabled: bool);

    /// Retire every current circuit (`POST /v1/new-identity`).
    fn new_identity(&self);

    /// A new subscription to the daemon's events (`GET /v1/events`). The sender side must
    /// never wait for readers (a `broadcast` channel drops the oldest for a slow reader,
    /// which the server reports as [`Event::Lagged`]).
    fn events(&self) -> broadcast::Receiver<Event>;

    /// The hidden services (`GET /v1/services`). Default: none.
    fn services(&self) -> HandlerFuture<'_, Result<Vec<ServiceInfo>, HandlerError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Publish a local server as a hidden service (`POST /v1/services/publish`).
    /// Default: [`HandlerError::NotImplemented`] ([`SERVICES_LATER`]).
    fn publish(
        &self,
        request: PublishRequest,
    ) -> HandlerFuture<'_, Result<ServiceInfo, HandlerError>> {
        let _ = request;
        Box::pin(async { Err(HandlerError::NotImplemented(SERVICES_LATER.into())) })
    }

    /// Take a hidden service down (`POST /v1/services/unpublish`).
    /// Default: [`HandlerError::NotImplemented`] ([`SERVICES_LATER`]).
    fn unpublish(&self, request: UnpublishRequest) -> HandlerFuture<'_, Result<(), HandlerError>> {
        let _ = request;
        Box::pin(async { Err(HandlerError::NotImplemented(SERVICES_LATER.into())) })
    }
}

/// A bound control API listener, not yet serving.
#[derive(Debug)]
pub struct ControlServer {
    listener: TcpListener,
    addr: SocketAddr,
    cookie: Arc<Cookie>,
}

impl ControlServer {
    /// Bind the control API on `addr`, which must be a loopback address (port 0 picks a
    /// free port). Requests must carry `cookie`.
    ///
    /// # Errors
    /// [`ControlError::NotLoopback`] for any other address, [`ControlError::Bind`] when the
    /// port cannot be bound (the error names the address).
    pub async fn bind(addr: SocketAddr, cookie: Cookie) -> Result<ControlServer, ControlError> {
        if !addr.ip().is_loopback() {
            return Err(ControlError::NotLoopback { addr });
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ControlError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ControlError::Bind { addr, source })?;
        Ok(ControlServer {
            listener,
            addr,
            cookie: Arc::new(cookie),
        })
    }

    /// The address actually bound (what goes into `ports.json` as `control`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serve requests with `handler` until this future is dropped (or its task aborted).
    /// Failed accepts (too many open files) are logged and retried after a pause.
    pub async fn serve(self, handler: Arc<dyn ControlHandler>) {
        let cookie = self.cookie;
        let limits = LocalHttp {
            what: "control API",
            max_connections: MAX_CONNECTIONS,
            header_timeout: HEADER_TIMEOUT,
        };
        serve_local_http(self.listener, limits, move |req| {
            let handler = handler.clone();
            let cookie = cookie.clone();
            async move { respond(req, handler, &cookie).await }
        })
        .await;
    }
}

/// The bounds of a small local HTTP/1.1 server ([`serve_local_http`]).
#[derive(Debug, Clone, Copy)]
pub struct LocalHttp {
    /// Names the server in log lines ("control API", "metrics").
    pub what: &'static str,
    /// Connections served at once; further ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time a connection has to send each request head, in seconds' precision.
    pub header_timeout: Duration,
}

/// Accept on `listener` until the future is dropped and answer each request with
/// `answer`, over HTTP/1.1 (hyper): at most `limits.max_connections` connections at once,
/// each request head within `limits.header_timeout`, 16 KiB of buffer per connection.
/// Shared by the control API and the daemon's metrics endpoint. A failed accept (usually
/// EMFILE) is logged at WARN and retried after 100 ms; a connection's error at DEBUG.
pub async fn serve_local_http<F, Fut, B>(listener: TcpListener, limits: LocalHttp, answer: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let what = limits.what;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                warn!("{what} accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let answer = answer.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = answer.clone();
                async move { Ok::<_, Infallible>(answer(req).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
            if let Err(e) = served {
                debug!(%peer, "{what} connection ended: {e}");
            }
            drop(permit);
        });
    }
}

/// The body of every answer.
type ResponseBody = BoxBody<Bytes, Infallible>;

/// One request, authenticated first: nothing else happens without the cookie.
async fn respond(
    req: Request<Incoming>,
    handler: Arc<dyn ControlHandler>,
    cookie: &Cookie,
) -> Response<ResponseBody> {
    let authorized = req
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|v| cookie.matches_header(v.as_bytes()));
    if !authorized {
        let mut resp = error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong control cookie: send `Authorization: Bearer <the 64 hex digits \
             in <state_dir>/control.cookie>`",
        );
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"anonnet\""),
        );
        // An unauthenticated connection gives its slot back at once.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let Some(route) = path.strip_prefix("/v1/") else {
        return error(
            StatusCode::NOT_FOUND,
            "no such endpoint (the API is under /v1/)",
        );
    };
    let handler = handler.as_ref();
    match (route, &method) {
        ("status", &Method::GET) => json(StatusCode::OK, &handler.status()),
        ("circuits", &Method::GET) => json(StatusCode::OK, &handler.circuits()),
        ("proxy", &Method::POST) => match read_json::<ProxyRequest>(req).await {
            Ok(body) => {
                handler.set_proxy(body.enabled);
                json(StatusCode::OK, &body)
            }
            Err(resp) => resp,
        },
        ("new-identity", &Method::POST) => {
            handler.new_identity();
            json(StatusCode::OK, &Ack { ok: true })
        }
        ("services", &Method::GET) => answer(handler.services().await),
        ("services/publish", &Method::POST) => match read_json::<PublishRequest>(req).await {
            Ok(body) => answer(handler.publish(body).await),
            Err(resp) => resp,
        },
        ("services/unpublish", &Method::POST) => match read_json::<UnpublishRequest>(req).await {
            Ok(body) => answer(handler.unpublish(body).await.map(|()| Ack { ok: true })),
            Err(resp) => resp,
        },
        ("events", &Method::GET) => event_stream(handler.events()),
        _ => {
            let allow = match route {
                "status" | "circuits" | "services" | "events" => "GET",
                "proxy" | "new-identity" | "services/publish" | "services/unpublish" => "POST",
                _ => return error(StatusCode::NOT_FOUND, "no such endpoint"),
            };
            let mut resp = error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("{method} is not allowed here; use {allow}"),
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            resp
        }
    }
}

fn answer<T: Serialize>(result: Result<T, HandlerError>) -> Response<ResponseBody> {
    match result {
        Ok(value) => json(StatusCode::OK, &value),
        Err(e) => error_of_kind(e.status(), e.kind(), &e.to_string()),
    }
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<ResponseBody> {
    match serde_json::to_vec(value) {
        Ok(mut body) => {
            body.push(b'\n');
            with_body(status, "application/json", Bytes::from(body))
        }
        Err(e) => {
            warn!("control API: cannot encode an answer: {e}");
            with_body(
                StatusCode::INTERNAL_SERVER_ERROR,
                "application/json",
                Bytes::from_static(
                    b"{\"error\":\"cannot encode the answer\",\"kind\":\"internal\"}\n",
                ),
            )
        }
    }
}

/// An error answer: `status`, and `{"error": message, "kind": …}` with the kind that
/// `status` means here ([`kind_of_status`]).
fn error(status: StatusCode, message: &str) -> Response<ResponseBody> {
    error_of_kind(status, kind_of_status(status), message)
}

fn error_of_kind(status: StatusCode, kind: ErrorKind, message: &str) -> Response<ResponseBody> {
    json(
        status,
        &ErrorBody {
            error: message.to_owned(),
            kind: kind.as_str().to_owned(),
        },
    )
}

/// The kind an error status of this API means when nothing more precise is known: 400
/// and 405 a bad request, 401 not allowed, 404 not found, 501 not implemented, any other
/// an internal error.
pub fn kind_of_status(status: StatusCode) -> ErrorKind {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED => ErrorKind::BadRequest,
        StatusCode::UNAUTHORIZED => ErrorKind::NotAllowed,
        StatusCode::NOT_FOUND => ErrorKind::NotFound,
        StatusCode::NOT_IMPLEMENTED => ErrorKind::NotImplemented,
        _ => ErrorKind::Internal,
    }
}

fn with_body(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<ResponseBody> {
    let mut resp = Response::new(Full::new(body).boxed());
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Read a JSON request body of at most [`MAX_BODY`] bytes; the error is the answer to send.
async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<T, Response<ResponseBody>> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the request body (at most {MAX_BODY} bytes): {e}"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            &format!("request body is not the expected JSON: {e}"),
        )
    })
}

/// `GET /v1/events`: one JSON object per line, as events happen, until the reader goes.
///
/// A task moves events from the daemon's broadcast channel into a small per-reader queue
/// that the response body drains. A reader that does not keep up fills its queue, the task
/// stops taking events, the broadcast channel drops the oldest for it, and when the task
/// resumes it writes one `{"event":"lagged","missed":N}` line. The daemon never waits.
fn event_stream(mut events: broadcast::Receiver<Event>) -> Response<ResponseBody> {
    let (tx, rx) = mpsc::channel::<Bytes>(EVENT_BUFFER);
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                () = tx.closed() => return,
                received = events.recv() => match received {
                    Ok(event) => event,
                    Err(broadcast::error::RecvError::Lagged(missed)) => Event::Lagged { missed },
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            let Ok(mut line) = serde_json::to_vec(&event) else {
                continue;
            };
            line.push(b'\n');
            if tx.send(Bytes::from(line)).await.is_err() {
                return;
            }
        }
    });
    let mut resp = Response::new(LineBody { lines: rx }.boxed());
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A response body made of the lines a channel delivers; it ends when the sender does.
struct LineBody {
    lines: mpsc::Receiver<Bytes>,
}

impl Body for LineBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.lines
            .poll_recv(cx)
            .map(|line| line.map(|l| Ok(Frame::data(l))))
    }
}
