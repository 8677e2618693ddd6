//! The SOCKS5 front end's handshake: fast-socks5's server protocol, driven exactly as
//! `anonnet_proxy::serve_socks` drives it (no-auth or username/password, then the command),
//! over an in-memory duplex whose client side sends the fuzz input and then EOF.
//!
//! `serve_socks` itself takes a `TcpStream` and a live `Client`, so this replays its
//! handshake code rather than calling it; keep the two in step. After the command the real
//! code asks the client for a stream — here the target is converted to `Target` as there,
//! and a non-CONNECT command or a refused CONNECT gets the error reply.
//! Nothing may panic and the handshake must end (Ok or Err) once the input is exhausted.
#![no_main]

use anonnet_proxy::socks_reply;
use anonnet_wire::Target;
use fast_socks5::server::{
    AuthMethodSuccessState as _, Socks5ServerProtocol, StandardAuthentication,
    StandardAuthenticationStarted,
};
use fast_socks5::util::target_addr::TargetAddr;
use fast_socks5::{ReplyError, Socks5Command};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
}

/// `serve_socks` up to the point where it needs the client. `refuse`: answer a CONNECT with
/// an error reply (as when the client cannot open the stream) instead of success.
async fn handshake(tcp: DuplexStream, refuse: bool) -> Result<(), String> {
    let started = Socks5ServerProtocol::start(tcp)
        .negotiate_auth(StandardAuthentication::allow_no_auth(true))
        .await
        .map_err(|e| e.to_string())?;
    let proto = match started {
        StandardAuthenticationStarted::NoAuthentication(a) => Socks5ServerProtocol::finish_auth(a),
        StandardAuthenticationStarted::PasswordAuthentication(a) => {
            let (user, pass, a) = a
                .read_username_password()
                .await
                .map_err(|e| e.to_string())?;
            let _ = (user.len(), pass.len());
            a.accept().await.map_err(|e| e.to_string())?.finish_auth()
        }
    };
    let (proto, cmd, target) = proto.read_command().await.map_err(|e| e.to_string())?;
    if cmd != Socks5Command::TCPConnect {
        proto
            .reply_error(&ReplyError::CommandNotSupported)
            .await
            .map_err(|e| e.to_string())?;
        return Err(format!("unsupported command {cmd:?}"));
    }
    let (target, port) = match target {
        TargetAddr::Ip(sa) => (Target::Ip(sa.ip()), sa.port()),
        TargetAddr::Domain(host, port) => (Target::Host(host), port),
    };
    let _ = (target.to_string(), port);
    if refuse {
        let reply = socks_reply(anonnet_client::ErrorKind::ConnectionRefused);
        proto.reply_error(&reply).await.map_err(|e| e.to_string())?;
        Err("refused".into())
    } else {
        proto
            .reply_success(std::net::SocketAddr::from(([0, 0, 0, 0], 0)))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

fuzz_target!(|data: &[u8]| {
    let refuse = data.len() % 2 == 1;
    RT.with(|rt| {
        rt.block_on(async {
            let (mut app, proxy) = tokio::io::duplex(64 * 1024);
            let app_side = async {
                let _ = app.write_all(data).await;
                let _ = app.shutdown().await;
                let mut sink = Vec::new();
                let _ = app.read_to_end(&mut sink).await;
            };
            let server = async move {
                let _ = handshake(proxy, refuse).await;
            };
            tokio::join!(server, app_side);
        })
    });
});
