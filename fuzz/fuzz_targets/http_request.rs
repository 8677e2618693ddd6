//! The HTTP proxy front end's request handling (`anonnet_proxy::http`), two ways:
//!
//! 1. **As served**: the input is the byte stream a local application sends to the proxy.
//!    hyper's HTTP/1 server (configured as `serve_http` configures it) parses it over an
//!    in-memory duplex, and each request goes through what `handle` does before it needs
//!    the network: `isolation_from` (Proxy-Authorization), then `connect_destination`
//!    (CONNECT) or `into_origin_form` (absolute-form), answering with
//!    `Refusal::into_response` on failure.
//! 2. **Directly**: the input's first line `METHOD URI` and `Name: value` lines become an
//!    `http::Request` through `http::Request::builder` (anything the `http` crate accepts,
//!    a superset of what hyper produces), and the same pure functions run on it, plus
//!    `strip_hop_by_hop` and `target_of`.
//!
//! None may panic, and what `into_origin_form` returns must be a usable origin-form head:
//! no scheme or authority left in the URI, exactly one `Host`, no hop-by-hop headers, a
//! port in 1..=65535.
#![no_main]

use std::convert::Infallible;

use anonnet_proxy::http::{
    connect_destination, into_origin_form, isolation_from, strip_hop_by_hop, target_of, ProxyBody,
    Refusal,
};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::header::{HeaderName, HeaderValue, CONNECTION, HOST};
use hyper::http::request::Parts;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const HOP_BY_HOP: [&str; 7] = [
    "proxy-connection",
    "proxy-authorization",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
];

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
}

/// `into_origin_form`, and the checks on what it produced.
fn origin_form_checked(parts: &mut Parts) -> Result<(), Refusal> {
    let named: Vec<String> = parts
        .headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty() && n != "host")
        .collect();
    let dest = into_origin_form(parts)?;
    assert_ne!(dest.port, 0);
    assert!(parts.uri.scheme().is_none(), "scheme left: {}", parts.uri);
    assert!(
        parts.uri.authority().is_none(),
        "authority left: {}",
        parts.uri
    );
    assert!(
        parts.uri.path().starts_with('/') || parts.uri.path() == "*",
        "not origin-form: {}",
        parts.uri
    );
    assert_eq!(parts.headers.get_all(HOST).iter().count(), 1);
    for name in HOP_BY_HOP.iter().map(|s| s.to_string()).chain(named) {
        assert!(!parts.headers.contains_key(name.as_str()), "{name} kept");
    }
    let _ = dest.to_string();
    Ok(())
}

/// What `handle` does before it needs a circuit.
fn pre_network(parts: &mut Parts) -> Result<(), Refusal> {
    isolation_from(&parts.headers)?;
    if parts.method == Method::CONNECT {
        let dest = connect_destination(&parts.uri)?;
        assert_ne!(dest.port, 0);
        Ok(())
    } else {
        origin_form_checked(parts)
    }
}

fn empty() -> ProxyBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

fn as_served(data: &[u8]) {
    RT.with(|rt| {
        rt.block_on(async {
            let (mut app, proxy) = tokio::io::duplex(64 * 1024);
            let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                let (mut parts, _body) = req.into_parts();
                let resp: Response<ProxyBody> = match pre_network(&mut parts) {
                    Ok(()) => Response::new(empty()),
                    Err(refusal) => refusal.into_response(),
                };
                Ok::<_, Infallible>(resp)
            });
            let server = hyper::server::conn::http1::Builder::new()
                .preserve_header_case(true)
                .serve_connection(TokioIo::new(proxy), svc)
                .with_upgrades();
            let app_side = async {
                let _ = app.write_all(data).await;
                let _ = app.shutdown().await;
                let mut sink = Vec::new();
                let _ = app.read_to_end(&mut sink).await;
            };
            let (_served, ()) = tokio::join!(server, app_side);
        })
    });
}

fn directly(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
    let Some(request_line) = lines.next() else {
        return;
    };
    let mut words = request_line.splitn(3, ' ');
    let (Some(method), Some(uri)) = (words.next(), words.next()) else {
        return;
    };
    let _ = target_of(uri);
    let mut builder = Request::builder().method(method).uri(uri);
    for line in lines.take(64) {
        if let Some((name, value)) = line.split_once(':') {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(value.trim().as_bytes()),
            ) {
                builder = builder.header(n, v);
            }
        }
    }
    let Ok(req) = builder.body(()) else {
        return;
    };
    let (mut parts, ()) = req.into_parts();
    let _ = connect_destination(&parts.uri);
    let _ = isolation_from(&parts.headers);
    let mut stripped = parts.headers.clone();
    strip_hop_by_hop(&mut stripped);
    for name in HOP_BY_HOP {
        assert!(!stripped.contains_key(name));
    }
    if let Err(refusal) = origin_form_checked(&mut parts) {
        let _ = refusal.into_response();
    }
}

fuzz_target!(|data: &[u8]| {
    directly(data);
    as_served(data);
});
