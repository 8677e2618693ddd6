//! The HTTP proxy front end (DESIGN.md §4 "Local interfaces"): `CONNECT host:port` tunnels
//! and absolute-form requests (`GET http://host[:port]/path`, any method), each carried on
//! its own stream through the client. Built on hyper's HTTP/1 server and client.
//!
//! Host names go to the exit unresolved ([`Target::Host`]); only a literal IP becomes
//! [`Target::Ip`]. Every failure is answered by the proxy itself with a status chosen from
//! the client's [`ErrorKind`] ([`http_status`]) and a one-line `text/plain` reason.
//! `Proxy-Authorization: Basic` credentials choose the stream isolation group, like SOCKS5
//! username/password. A plain `GET /proxy.pac` or `GET /hidden.pac` to the proxy itself
//! is answered with a proxy auto-config file ([`crate::pac`]).

use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anonnet_client::{Client, ClientError, ErrorKind, HasKind, IsolationKey, StreamError};
use anonnet_wire::Target;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE, HOST};
use hyper::http::request::Parts;
use hyper::http::uri::Scheme;
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, warn};

use crate::pac::{pac_file, PacMode};
use crate::ProxyError;

/// How long a client may take by default to send a request's head (request line and
/// headers); config `client.handshake_timeout_secs` changes it
/// ([`HttpProxy::with_header_read_timeout`]).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head read (bytes: request line plus headers; hyper's read buffer,
/// whose default is about 408 KiB). A longer head is answered `431 Request Header Fields
/// Too Large`. Browsers send 1–8 KiB; nginx's default limit is 4 × 8 KiB.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How long the destination may take to answer a forwarded request with a response head,
/// once the stream is open; after that the proxy answers 504.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);
/// HTTP connections (including open `CONNECT` tunnels) served at once; more wait in the
/// kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 4096;
/// Port of an absolute-form `http://` URL that names none.
pub const DEFAULT_HTTP_PORT: u16 = 80;

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus the proxy's own
/// credentials and the legacy `Proxy-Connection`.
pub const HOP_BY_HOP: [&str; 7] = [
    "proxy-connection",
    "proxy-authorization",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
];

/// Body of every response the proxy sends: the destination's body, relayed, or the proxy's
/// own short text.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The HTTP status for a failure of this kind: 403 exit policy or refused here (a `.dark`
/// name whose owner changed), 503 proxying switched off or a relay too busy,
/// 504 timeout, 400 bad request, 502 anything else.
pub fn http_status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::ExitPolicy | ErrorKind::NotAllowed => StatusCode::FORBIDDEN,
        ErrorKind::Disabled | ErrorKind::Busy => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// Where a request goes: a host name (unresolved) or a literal IP, and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The host, as the exit will receive it in `BEGIN`.
    pub target: Target,
    /// TCP port, 1..=65535.
    pub port: u16,
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.target, self.port)
    }
}

/// A request the proxy answers itself instead of relaying it: the status and a one-line
/// reason for the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The status sent.
    pub status: StatusCode,
    /// Why, in a few words (sent as `text/plain`, with a trailing newline).
    pub reason: String,
}

impl Refusal {
    /// A 400 Bad Request with `reason`.
    pub fn bad_request(reason: impl Into<String>) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            reason: reason.into(),
        }
    }

    /// The refusal for a client error while reaching `dest`: status from [`http_status`],
    /// the reason worded from the error's kind.
    pub fn from_client_error(e: &ClientError, dest: &Destination) -> Refusal {
        // The reason goes to the application that asked, not to a log: names in the error
        // are written out (safe logging scrubs them only in logs).
        safelog::with_safe_logging_suppressed(|| Refusal::from_client_error_unscrubbed(e, dest))
    }

    fn from_client_error_unscrubbed(e: &ClientError, dest: &Destination) -> Refusal {
        let kind = e.kind();
        let reason = match kind {
            ErrorKind::ExitPolicy => format!("the exit relay's policy does not allow {dest}"),
            ErrorKind::Disabled => {
                "proxying is switched off (turn it on with `anonnet proxy on`)".to_owned()
            }
            ErrorKind::Timeout => format!("timed out reaching {dest}: {e}"),
            ErrorKind::ConnectionRefused => format!("{dest} refused the connection"),
            ErrorKind::HostUnreachable => format!("{dest} could not be resolved or reached"),
            ErrorKind::BadRequest => format!("bad destination {dest}: {e}"),
            ErrorKind::NotAllowed => format!("refusing {dest}: {e}"),
            ErrorKind::NotReady => format!("the client is not ready yet: {e}"),
            ErrorKind::CircuitFailed => format!("no working circuit to {dest}: {e}"),
            ErrorKind::Busy => format!("too busy to reach {dest} now: {e}"),
            _ => format!("cannot reach {dest}: {e}"),
        };
        Refusal {
            status: http_status(kind),
            reason,
        }
    }

    /// The response carrying this refusal. The connection is closed after it, since the
    /// request body (if any) was not read.
    pub fn into_response(self) -> Response<ProxyBody> {
        let mut resp = Response::new(text_body(format!("anonnet: {}\n", self.reason)));
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        resp
    }
}

fn text_body(text: String) -> ProxyBody {
    Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed()
}

/// `host` (IPv6 possibly in brackets) as a stream target: a literal IP stays an IP, any
/// other name is passed on unresolved.
pub fn target_of(host: &str) -> Target {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match bare.parse::<IpAddr>() {
        Ok(ip) => Target::Ip(ip),
        Err(_) => Target::Host(host.to_owned()),
    }
}

/// The destination of a `CONNECT` request (authority-form `host:port`).
///
/// # Errors
/// A 400 [`Refusal`] when the host or the port is missing or invalid.
pub fn connect_destination(uri: &Uri) -> Result<Destination, Refusal> {
    let Some(authority) = uri.authority() else {
        return Err(Refusal::bad_request("CONNECT needs host:port"));
    };
    let host = authority.host();
    if host.is_empty() {
        return Err(Refusal::bad_request("CONNECT without a host"));
    }
    match authority.port_u16() {
        Some(port) if port != 0 => Ok(Destination {
            target: target_of(host),
            port,
        }),
        _ => Err(Refusal::bad_request(
            "CONNECT needs host:port with a port in 1..=65535",
        )),
    }
}

/// Turn an absolute-form request head (`GET http://host[:port]/path`) into the origin-form
/// head the destination expects: URI `/path?query`, `Host: host[:port]`, hop-by-hop headers
/// (those in [`HOP_BY_HOP`] and those named in `Connection`) removed. Returns where to send
/// it (port 80 unless the URL names one).
///
/// # Errors
/// A 400 [`Refusal`] for an origin-form request (this is a proxy), an `https://` URL
/// (those go through `CONNECT`), another scheme, or a missing host or port 0.
pub fn into_origin_form(parts: &mut Parts) -> Result<Destination, Refusal> {
    let uri = &parts.uri;
    match uri.scheme() {
        Some(s) if *s == Scheme::HTTP => {}
        Some(s) if *s == Scheme::HTTPS => {
            return Err(Refusal::bad_request(
                "https:// URLs go through a CONNECT tunnel; configure this proxy for \
                 HTTPS too (curl: -x http://PROXY https://…)",
            ))
        }
        Some(s) => {
            return Err(Refusal::bad_request(format!(
                "unsupported scheme {s}://; this proxy relays http:// URLs and CONNECT"
            )))
        }
        None if uri.authority().is_some() => {
            return Err(Refusal::bad_request(
                "expected an absolute URL http://host/path (or use CONNECT host:port)",
            ))
        }
        None => {
            return Err(Refusal::bad_request(
                "this is an HTTP proxy: send absolute-form requests \
                 (GET http://host/path) or CONNECT host:port",
            ))
        }
    }
    let Some(authority) = uri.authority() else {
        return Err(Refusal::bad_request("the URL has no host"));
    };
    let host = authority.host();
    if host.is_empty() {
        return Err(Refusal::bad_request("the URL has no host"));
    }
    let port = match authority.port_u16() {
        Some(0) => return Err(Refusal::bad_request("port 0 is not a destination port")),
        Some(p) => p,
        None => DEFAULT_HTTP_PORT,
    };
    // The Host header is the URL's host[:port] without any user:password@ part.
    let host_header = match authority.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    let host_header = HeaderValue::from_str(&host_header)
        .map_err(|_| Refusal::bad_request("the URL's host is not a valid Host header"))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let origin: Uri = path
        .parse()
        .map_err(|_| Refusal::bad_request("the URL's path is not valid"))?;
    let dest = Destination {
        target: target_of(host),
        port,
    };
    parts.uri = origin;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(HOST, host_header);
    Ok(dest)
}

/// Remove the headers that describe one hop: those listed in [`HOP_BY_HOP`] and every
/// header named in a `Connection` header.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The isolation group of a request: `Proxy-Authorization: Basic base64(user:password)`
/// gives [`IsolationKey::from_credentials`] (the password may be empty), no header gives
/// the default key.
///
/// # Errors
/// A 400 [`Refusal`] when the header is present but not valid `Basic` credentials, so a
/// typo never silently shares a circuit with the default group.
pub fn isolation_from(headers: &HeaderMap) -> Result<IsolationKey, Refusal> {
    let Some(value) = headers.get(hyper::header::PROXY_AUTHORIZATION) else {
        return Ok(IsolationKey::default());
    };
    let bad = || Refusal::bad_request("Proxy-Authorization must be Basic base64(user:password)");
    let value = value.to_str().map_err(|_| bad())?.trim();
    let (scheme, creds) = value.split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(creds.trim())
        .map_err(|_| bad())?;
    let colon = decoded.iter().position(|&b| b == b':').ok_or_else(bad)?;
    let (user, rest) = decoded.split_at(colon);
    let password = rest.get(1..).unwrap_or_default();
    Ok(IsolationKey::from_credentials(user, password))
}

/// A bound HTTP proxy listener.
#[derive(Debug)]
pub struct HttpProxy {
    listener: crate::listener::Listener,
    header_read_timeout: Duration,
}

impl HttpProxy {
    /// Bind `addr` (port 0 picks a free port).
    ///
    /// # Errors
    /// [`ProxyError::Bind`] naming the address when it cannot be bound.
    pub async fn bind(addr: SocketAddr) -> Result<HttpProxy, ProxyError> {
        Ok(HttpProxy {
            listener: crate::listener::Listener::bind(addr).await?,
            header_read_timeout: HEADER_READ_TIMEOUT,
        })
    }

    /// Close connections that take longer than this to send a request head, also while
    /// idle between requests (default [`HEADER_READ_TIMEOUT`]).
    #[must_use]
    pub fn with_header_read_timeout(mut self, timeout: Duration) -> HttpProxy {
        self.header_read_timeout = timeout;
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Serve connections through `client` until this future is dropped. At most
    /// [`MAX_CONNECTIONS`] connections and tunnels are served at once.
    pub async fn serve(self, client: Arc<Client>) {
        let timeout = self.header_read_timeout;
        self.listener
            .run("HTTP proxy", move |tcp, permit| {
                let client = client.clone();
                async move { serve_http(tcp, client, permit, timeout).await }
            })
            .await;
    }
}

/// Serve one HTTP/1 connection. `permit` is held until the connection and any `CONNECT`
/// tunnel it became are closed.
///
/// # Errors
/// hyper's error when the connection fails (a malformed request was already answered 400
/// by hyper, a head over [`MAX_HEAD_BYTES`] answered 431, a slow request head is dropped
/// after `header_read_timeout`).
pub async fn serve_http(
    tcp: TcpStream,
    client: Arc<Client>,
    permit: OwnedSemaphorePermit,
    header_read_timeout: Duration,
) -> Result<(), hyper::Error> {
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().ok();
    let permit = Arc::new(permit);
    let svc = service_fn(move |req| {
        let client = client.clone();
        let permit = permit.clone();
        async move { Ok::<_, Infallible>(handle(req, client, permit, local).await) }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .preserve_header_case(true)
        .serve_connection(TokioIo::new(tcp), svc)
        .with_upgrades()
        .await
}

async fn handle(
    req: Request<Incoming>,
    client: Arc<Client>,
    permit: Arc<OwnedSemaphorePermit>,
    local: Option<SocketAddr>,
) -> Response<ProxyBody> {
    // `GET /proxy.pac` or `/hidden.pac` addressed to the proxy itself (origin form): the
    // proxy auto-config file naming this listener.
    if req.method() == Method::GET && req.uri().authority().is_none() {
        if let (Some(mode), Some(local)) = (PacMode::for_path(req.uri().path()), local) {
            let mut response = Response::new(text_body(pac_file(mode, local)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(crate::pac::CONTENT_TYPE),
            );
            return response;
        }
    }
    let result = match isolation_from(req.headers()) {
        Ok(isolation) if req.method() == Method::CONNECT => {
            tunnel(req, &client, &isolation, permit).await
        }
        Ok(isolation) => forward(req, &client, &isolation).await,
        Err(refusal) => Err(refusal),
    };
    result.unwrap_or_else(|refusal| {
        if refusal.status == StatusCode::SERVICE_UNAVAILABLE {
            warn!("refusing an HTTP proxy request: proxying is off (`anonnet proxy on`)");
        }
        debug!(status = %refusal.status, "HTTP proxy refused a request");
        refusal.into_response()
    })
}

/// `CONNECT host:port`: open the stream first (so a failure gets a real status), answer
/// 200, then copy bytes both ways once hyper hands over the connection.
async fn tunnel(
    req: Request<Incoming>,
    client: &Client,
    isolation: &IsolationKey,
    permit: Arc<OwnedSemaphorePermit>,
) -> Result<Response<ProxyBody>, Refusal> {
    let dest = connect_destination(req.uri())?;
    let mut stream = client
        .connect_isolated(dest.target.clone(), dest.port, isolation)
        .await
        .map_err(|e| Refusal::from_client_error(&e, &dest))?;
    tokio::spawn(async move {
        let _permit = permit;
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let mut upgraded = TokioIo::new(upgraded);
                match tokio::io::copy_bidirectional(&mut upgraded, &mut stream).await {
                    Ok((up, down)) => debug!(up, down, "CONNECT tunnel closed"),
                    Err(e) => debug!("CONNECT tunnel ended: {e}"),
                }
            }
            Err(e) => debug!("CONNECT upgrade failed: {e}"),
        }
    });
    Ok(Response::new(text_body(String::new())))
}

/// The exit's refusal of an optimistic stream inside a hyper error's sources, if that is
/// what ended it (docs/protocol.md §6.5).
fn refusal_in(e: &hyper::Error) -> Option<StreamError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(refused) = err.downcast_ref::<StreamError>() {
            return Some(refused.clone());
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(refused) = io.get_ref().and_then(|i| i.downcast_ref::<StreamError>()) {
                return Some(refused.clone());
            }
        }
        source = err.source();
    }
    None
}

/// An absolute-form request: one stream to the destination, the request in origin form,
/// the response relayed as it arrives. `GET` and `HEAD` go optimistically (§6.5): the
/// request follows `BEGIN` without waiting for `CONNECTED`, one circuit round trip
/// sooner; a refusal still becomes the status it would have been. When an optimistic
/// request without a body gets no response head at all (its circuit failed under it, or
/// the connection closed first), it is sent once more on a stream opened the
/// non-optimistic way (which tries other circuits, §9.3), as Tor replays optimistic data
/// on a retried stream and as browsers retry an idempotent request.
async fn forward(
    req: Request<Incoming>,
    client: &Client,
    isolation: &IsolationKey,
) -> Result<Response<ProxyBody>, Refusal> {
    use hyper::body::Body as _;
    let (mut parts, body) = req.into_parts();
    let dest = into_origin_form(&mut parts)?;
    let optimistic = parts.method == Method::GET || parts.method == Method::HEAD;
    let replay = (optimistic && body.is_end_stream()).then(|| {
        let mut head = Request::new(http_body_util::Empty::<Bytes>::new());
        *head.method_mut() = parts.method.clone();
        *head.uri_mut() = parts.uri.clone();
        *head.version_mut() = parts.version;
        *head.headers_mut() = parts.headers.clone();
        head
    });
    let stream = if optimistic {
        client
            .connect_optimistic_isolated(dest.target.clone(), dest.port, isolation)
            .await
    } else {
        client
            .connect_isolated(dest.target.clone(), dest.port, isolation)
            .await
    }
    .map_err(|e| Refusal::from_client_error(&e, &dest))?;
    match exchange(stream, Request::from_parts(parts, body), &dest).await {
        Err(Exchange::NoResponse(e)) => {
            let Some(head) = replay else {
                return Err(Exchange::NoResponse(e).into_refusal(&dest));
            };
            debug!("no response to an optimistic request ({e}); sending it again");
            let stream = client
                .connect_isolated(dest.target.clone(), dest.port, isolation)
                .await
                .map_err(|e| Refusal::from_client_error(&e, &dest))?;
            exchange(stream, head, &dest)
                .await
                .map_err(|e| e.into_refusal(&dest))
        }
        other => other.map_err(|e| e.into_refusal(&dest)),
    }
}

/// How one request on one stream failed ([`exchange`]).
enum Exchange {
    /// Already the answer to give.
    Refused(Refusal),
    /// No response head came, for this reason (hyper's error).
    NoResponse(String),
}

impl Exchange {
    /// The answer to give: the refusal, or 502 when no valid response came.
    fn into_refusal(self, dest: &Destination) -> Refusal {
        match self {
            Exchange::Refused(r) => r,
            Exchange::NoResponse(e) => Refusal {
                status: StatusCode::BAD_GATEWAY,
                reason: format!("{dest} did not send a valid HTTP response: {e}"),
            },
        }
    }
}

/// Send `req` on `stream` (HTTP/1.1, header case kept) and wait, at most
/// [`RESPONSE_TIMEOUT`], for the response head; the response with its hop-by-hop headers
/// removed.
///
/// # Errors
/// [`Exchange::Refused`]: the stream's refusal as its status (§6.5), 502 when hyper cannot
/// speak HTTP on the stream, 504 after [`RESPONSE_TIMEOUT`]; [`Exchange::NoResponse`] when
/// the connection ended or broke before a valid response head.
async fn exchange<B>(
    stream: anonnet_client::circuit::DataStream,
    req: Request<B>,
    dest: &Destination,
) -> Result<Response<ProxyBody>, Exchange>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .preserve_header_case(true)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| {
            Exchange::Refused(Refusal {
                status: StatusCode::BAD_GATEWAY,
                reason: format!("cannot speak HTTP to {dest}: {e}"),
            })
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!("upstream HTTP connection ended: {e}");
        }
    });
    match tokio::time::timeout(RESPONSE_TIMEOUT, sender.send_request(req)).await {
        Ok(Ok(mut resp)) => {
            strip_hop_by_hop(resp.headers_mut());
            Ok(resp.map(|b| b.boxed()))
        }
        Ok(Err(e)) => Err(match refusal_in(&e) {
            Some(refused) => Exchange::Refused(Refusal::from_client_error(
                &ClientError::Stream(refused),
                dest,
            )),
            None => Exchange::NoResponse(e.to_string()),
        }),
        Err(_) => Err(Exchange::Refused(Refusal {
            status: StatusCode::GATEWAY_TIMEOUT,
            reason: format!(
                "{dest} did not answer within {} s",
                RESPONSE_TIMEOUT.as_secs()
            ),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anonnet_client::StreamError;
    use anonnet_wire::EndReason;

    fn parts(req: Request<()>) -> Parts {
        req.into_parts().0
    }

    #[test]
    fn absolute_form_becomes_origin_form_with_host_and_no_hop_headers() {
        let mut p = parts(
            Request::get("http://user:pw@example.com:8080/a/b?q=1&r=2")
                .header("Host", "wrong.example")
                .header("Proxy-Connection", "keep-alive")
                .header("Proxy-Authorization", "Basic YWxpY2U6cHc=")
                .header("Connection", "keep-alive, X-Private")
                .header("Keep-Alive", "timeout=5")
                .header("TE", "trailers")
                .header("Trailer", "Expires")
                .header("Upgrade", "websocket")
                .header("X-Private", "secret")
                .header("Accept", "*/*")
                .body(())
                .unwrap(),
        );
        let dest = into_origin_form(&mut p).unwrap();
        assert_eq!(
            dest,
            Destination {
                target: Target::Host("example.com".into()),
                port: 8080
            }
        );
        assert_eq!(p.uri, "/a/b?q=1&r=2");
        assert_eq!(p.headers["host"], "example.com:8080");
        for gone in HOP_BY_HOP.iter().chain(&["x-private"]) {
            assert!(!p.headers.contains_key(*gone), "{gone} was forwarded");
        }
        assert_eq!(p.headers["accept"], "*/*");
        assert_eq!(p.method, Method::GET);
    }

    #[test]
    fn absolute_form_defaults_to_port_80_and_path_slash() {
        let mut p = parts(Request::post("http://example.com").body(()).unwrap());
        let dest = into_origin_form(&mut p).unwrap();
        assert_eq!(dest.port, 80);
        assert_eq!(p.uri, "/");
        assert_eq!(p.headers["host"], "example.com");
        assert_eq!(p.method, Method::POST);
    }

    #[test]
    fn literal_ips_stay_ips_and_names_stay_unresolved() {
        let mut p = parts(Request::get("http://127.0.0.1:81/x").body(()).unwrap());
        let dest = into_origin_form(&mut p).unwrap();
        assert_eq!(dest.target, Target::Ip("127.0.0.1".parse().unwrap()));
        assert_eq!(dest.to_string(), "127.0.0.1:81");
        let mut p = parts(Request::get("http://[::1]/").body(()).unwrap());
        let dest = into_origin_form(&mut p).unwrap();
        assert_eq!(dest.target, Target::Ip("::1".parse().unwrap()));
        assert_eq!(p.headers["host"], "[::1]");
        assert_eq!(target_of("localhost"), Target::Host("localhost".into()));
    }

    #[test]
    fn non_proxy_requests_are_bad_requests() {
        for uri in ["https://example.com/", "ftp://example.com/", "/index.html"] {
            let mut p = parts(Request::get(uri).body(()).unwrap());
            let r = into_origin_form(&mut p).unwrap_err();
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}");
        }
        let mut p = parts(Request::get("https://example.com/").body(()).unwrap());
        let r = into_origin_form(&mut p).unwrap_err();
        assert!(r.reason.contains("CONNECT"), "{}", r.reason);
        let mut p = parts(Request::get("http://example.com:0/").body(()).unwrap());
        assert_eq!(
            into_origin_form(&mut p).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn connect_needs_host_and_port() {
        let uri: Uri = "example.com:443".parse().unwrap();
        assert_eq!(
            connect_destination(&uri).unwrap(),
            Destination {
                target: Target::Host("example.com".into()),
                port: 443
            }
        );
        let uri: Uri = "[2001:db8::1]:8443".parse().unwrap();
        assert_eq!(
            connect_destination(&uri).unwrap().target,
            Target::Ip("2001:db8::1".parse().unwrap())
        );
        for bad in ["/path", "example.com:0"] {
            let uri: Uri = bad.parse().unwrap();
            assert_eq!(
                connect_destination(&uri).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
    }

    #[test]
    fn error_kinds_map_to_statuses() {
        assert_eq!(http_status(ErrorKind::ExitPolicy), StatusCode::FORBIDDEN);
        assert_eq!(
            http_status(ErrorKind::Disabled),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(http_status(ErrorKind::Timeout), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(http_status(ErrorKind::BadRequest), StatusCode::BAD_REQUEST);
        for kind in [
            ErrorKind::ConnectionRefused,
            ErrorKind::HostUnreachable,
            ErrorKind::CircuitFailed,
            ErrorKind::NotReady,
            ErrorKind::Protocol,
            ErrorKind::Internal,
        ] {
            assert_eq!(http_status(kind), StatusCode::BAD_GATEWAY, "{kind:?}");
        }
    }

    #[test]
    fn refusals_name_the_reason() {
        let dest = Destination {
            target: Target::Ip("10.0.0.1".parse().unwrap()),
            port: 80,
        };
        let r = Refusal::from_client_error(
            &ClientError::Stream(StreamError::Refused(EndReason::ExitPolicy)),
            &dest,
        );
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(r.reason.contains("policy") && r.reason.contains("10.0.0.1:80"));
        let r = Refusal::from_client_error(&ClientError::Disabled, &dest);
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            r.reason.contains("proxying is switched off"),
            "{}",
            r.reason
        );
        let r = Refusal::from_client_error(
            &ClientError::Stream(StreamError::Refused(EndReason::ConnectRefused)),
            &dest,
        );
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        assert!(r.reason.contains("refused"), "{}", r.reason);
        let r = Refusal::from_client_error(&ClientError::Stream(StreamError::Timeout), &dest);
        assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
        let resp = Refusal::bad_request("nope").into_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(resp.headers()[CONTENT_TYPE], "text/plain; charset=utf-8");
    }

    #[test]
    fn proxy_authorization_selects_the_isolation_group() {
        let mut h = HeaderMap::new();
        assert_eq!(isolation_from(&h).unwrap(), IsolationKey::default());
        // "alice:pw", as curl -x http://alice:pw@PROXY sends it.
        h.insert(
            hyper::header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic YWxpY2U6cHc="),
        );
        assert_eq!(
            isolation_from(&h).unwrap(),
            IsolationKey::from_credentials(b"alice", b"pw")
        );
        // "bob:" — empty password.
        h.insert(
            hyper::header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("basic Ym9iOg=="),
        );
        assert_eq!(
            isolation_from(&h).unwrap(),
            IsolationKey::from_credentials(b"bob", b"")
        );
        for bad in ["Bearer abc", "Basic !!!", "Basic Ym9i", "Basic"] {
            h.insert(
                hyper::header::PROXY_AUTHORIZATION,
                HeaderValue::from_static(bad),
            );
            assert_eq!(
                isolation_from(&h).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
    }
}
