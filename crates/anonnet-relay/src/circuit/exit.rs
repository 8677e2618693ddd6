//! Exit streams: connect, resolve, and move bytes between a TCP connection and the
//! circuit under the stream and circuit windows (§6.4, §8.3); streams closed here (§6.6).

use super::*;

pub(super) struct ExitSlot {
    pub(super) data: mpsc::Sender<Bytes>,
    pub(super) token: CancellationToken,
    /// Stream package window towards the client (permits).
    pub(super) package: Arc<Semaphore>,
    /// Stream deliver window for `DATA` from the client.
    pub(super) deliver: Arc<Mutex<StreamDeliverWindow>>,
}

/// Most closed streams whose in-flight cells a circuit tolerates (§6.6); the oldest is
/// forgotten first.
pub(super) const MAX_CLOSED_STREAMS: usize = 512;

/// Exit streams a circuit closed or refused, with the cells from the client still
/// tolerated for each (§6.6): at most a stream window of `DATA`, the `SENDME`s such a window
/// earns, and one `END`. Any other cell for a stream the exit does not have is unexpected.
pub(super) struct ClosedStreams {
    /// Per stream: `DATA` cells and `SENDME`s seen since it closed. An `lru::LruCache` of
    /// at most [`MAX_CLOSED_STREAMS`] read only with `peek`, so its order is the order of
    /// closing and a full table forgets the stream closed first (O(1)). Unbounded for
    /// `lru` and bounded by [`ClosedStreams::insert`]: `LruCache::new(512)` allocated its
    /// whole table with every circuit, 17 KB of an idle circuit's 29 KB
    /// (docs/performance.md, idle circuits).
    pub(super) seen: lru::LruCache<StreamId, (u32, u32)>,
}

impl Default for ClosedStreams {
    fn default() -> Self {
        ClosedStreams {
            seen: lru::LruCache::unbounded(),
        }
    }
}

impl ClosedStreams {
    pub(super) fn insert(&mut self, id: StreamId) {
        if !self.seen.contains(&id) {
            if self.seen.len() >= MAX_CLOSED_STREAMS {
                self.seen.pop_lru();
            }
            self.seen.push(id, (0, 0));
        }
    }

    /// Forget `id` (its `END` arrived, or a new `BEGIN` reuses it); true if it was known.
    pub(super) fn remove(&mut self, id: StreamId) -> bool {
        self.seen.pop(&id).is_some()
    }

    pub(super) fn tolerate_data(&mut self, id: StreamId) -> bool {
        self.seen.peek_mut(&id).is_some_and(|(data, _)| {
            *data += 1;
            *data <= STREAM_WINDOW_MAX
        })
    }

    pub(super) fn tolerate_sendme(&mut self, id: StreamId) -> bool {
        self.seen.peek_mut(&id).is_some_and(|(_, sendmes)| {
            *sendmes += 1;
            *sendmes <= STREAM_WINDOW_MAX / STREAM_INCREMENT
        })
    }
}

/// Map a connect error to the END reason the client turns into a SOCKS reply.
pub(super) fn end_reason_for(e: &std::io::Error) -> EndReason {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => EndReason::ConnectRefused,
        ErrorKind::TimedOut => EndReason::Timeout,
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => EndReason::NoRoute,
        ErrorKind::ConnectionReset => EndReason::ConnReset,
        _ => EndReason::Misc,
    }
}

/// The two ways an exit stream is stopped.
pub(super) struct ExitTokens {
    /// Cancelled when the stream is over for reading: `END` from the client, the
    /// destination's EOF, a failed connect. The forward task forgets cancelled streams.
    pub(super) stream: CancellationToken,
    /// Cancelled when the whole circuit goes: also stops the writer at once.
    pub(super) circuit: CancellationToken,
}

/// The flow-control windows an exit stream works with (§6.4).
pub(super) struct ExitWindows {
    /// The circuit's package window towards the client.
    pub(super) circuit: Arc<Semaphore>,
    /// This stream's package window towards the client.
    pub(super) stream: Arc<Semaphore>,
    /// This stream's deliver window for `DATA` from the client.
    pub(super) deliver: Arc<Mutex<StreamDeliverWindow>>,
}

/// Resolve `host` with the system resolver on tokio's blocking pool, at most
/// [`Limits::max_exit_dns_lookups`](crate::Limits::max_exit_dns_lookups) at once: the slot
/// moves into the blocking task, so a lookup the stream stopped waiting for still holds
/// it until `getaddrinfo` returns.
///
/// # Errors
/// [`EndReason::ResolveFailed`] when the name does not resolve or the relay shuts down.
pub(super) async fn resolve(
    slots: &Arc<tokio::sync::Semaphore>,
    host: String,
    port: u16,
) -> Result<Vec<SocketAddr>, EndReason> {
    let slot = slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| EndReason::ResolveFailed)?;
    let lookup = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
            .map(Iterator::collect::<Vec<_>>)
    });
    match lookup.await {
        Ok(Ok(addrs)) => Ok(addrs),
        _ => Err(EndReason::ResolveFailed),
    }
}

/// Look up the name of `ip` (a reverse lookup, `getnameinfo` with `NI_NAMEREQD`) with the
/// system resolver on tokio's blocking pool, under the same limit of lookups at once as
/// [`resolve`].
///
/// # Errors
/// [`ResolvedAnswer::TransientError`] when the resolver says to try again or the relay
/// shuts down, [`ResolvedAnswer::Error`] when the address has no name (or one that is not a
/// valid host name, §6.2).
async fn reverse(
    slots: &Arc<tokio::sync::Semaphore>,
    ip: std::net::IpAddr,
) -> Result<String, ResolvedAnswer> {
    let slot = slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ResolvedAnswer::TransientError)?;
    let lookup = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        dns_lookup::lookup_addr(&ip)
    });
    match lookup.await {
        Ok(Ok(name)) if anonnet_wire::relay::check_host(&name).is_ok() => Ok(name),
        Ok(Err(e)) if matches!(e.kind(), dns_lookup::LookupErrorKind::Again) => {
            Err(ResolvedAnswer::TransientError)
        }
        Ok(_) => Err(ResolvedAnswer::Error),
        Err(_) => Err(ResolvedAnswer::TransientError),
    }
}

/// Answer a `RESOLVE` on stream `id` (§6.2, §8.3) with one `RESOLVED` or `END`, within the
/// exit's connect timeout, unless `token` (the stream's) is cancelled first:
/// - a host name: its addresses that the exit policy allows on some port, at most
///   [`MAX_RESOLVED_ANSWERS`](anonnet_wire::relay::MAX_RESOLVED_ANSWERS), IPv4 first;
///   `END` EXITPOLICY when it has addresses but the policy allows none (so a name of the
///   exit's own network does not tell the client its addresses);
/// - an address: `END` EXITPOLICY, with no lookup made, when the policy allows it on no
///   port; else its name;
/// - a failed lookup: `RESOLVED` with [`ResolvedAnswer::Error`], a timeout
///   [`ResolvedAnswer::TransientError`].
///
/// Nothing is logged above DEBUG, and never the name or address.
pub(super) async fn resolve_stream(
    shared: Arc<RelayShared>,
    policy: Arc<crate::ExitPolicy>,
    id: StreamId,
    target: Target,
    out: mpsc::Sender<OutCell>,
    token: CancellationToken,
) {
    let _release = token.clone().drop_guard();
    let lookup = async {
        match target {
            Target::Host(host) => {
                let Ok(addrs) = resolve(&shared.dns_lookups, host, 0).await else {
                    return RelayMsg::Resolved(vec![ResolvedAnswer::Error]);
                };
                if addrs.is_empty() {
                    return RelayMsg::Resolved(vec![ResolvedAnswer::Error]);
                }
                let mut ips: Vec<std::net::IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
                ips.sort_by_key(|ip| ip.is_ipv6());
                ips.dedup();
                ips.retain(|ip| policy.allows_address(*ip));
                if ips.is_empty() {
                    return RelayMsg::End(EndReason::ExitPolicy);
                }
                ips.truncate(anonnet_wire::relay::MAX_RESOLVED_ANSWERS);
                RelayMsg::Resolved(ips.into_iter().map(ResolvedAnswer::Ip).collect())
            }
            Target::Ip(ip) => {
                if !policy.allows_address(ip) {
                    return RelayMsg::End(EndReason::ExitPolicy);
                }
                match reverse(&shared.dns_lookups, ip).await {
                    Ok(name) => RelayMsg::Resolved(vec![ResolvedAnswer::Host(name)]),
                    Err(answer) => RelayMsg::Resolved(vec![answer]),
                }
            }
        }
    };
    let answer = tokio::select! {
        r = tokio::time::timeout(shared.limits.connect_timeout, lookup) => {
            r.unwrap_or(RelayMsg::Resolved(vec![ResolvedAnswer::TransientError]))
        }
        () = token.cancelled() => return,
    };
    shared.stats.exit_resolves.fetch_add(1, Ordering::Relaxed);
    debug!(
        stream = id.0,
        error = matches!(&answer, RelayMsg::End(_)),
        "exit answered RESOLVE"
    );
    let _ = out.send(out_cell(RelayCell::new(id, answer))).await;
}

/// Resolve (at the exit), apply the exit policy to the resolved address, connect, then
/// pump bytes both ways until either side ends.
#[allow(clippy::too_many_arguments)]
pub(super) async fn exit_stream(
    shared: Arc<RelayShared>,
    policy: Arc<crate::ExitPolicy>,
    id: StreamId,
    target: Target,
    port: u16,
    mut data_rx: mpsc::Receiver<Bytes>,
    out: mpsc::Sender<OutCell>,
    tokens: ExitTokens,
    windows: ExitWindows,
    max_payload: usize,
) {
    // However this function ends, the stream slot is released.
    let token = tokens.stream.clone();
    let _release = tokens.stream.drop_guard();
    let send = |msg: RelayMsg| {
        let out = out.clone();
        async move {
            let _ = out.send(out_cell(RelayCell::new(id, msg))).await;
        }
    };
    let connect = async {
        let addrs: Vec<SocketAddr> = match &target {
            Target::Ip(ip) => vec![SocketAddr::new(*ip, port)],
            Target::Host(host) => resolve(&shared.dns_lookups, host.clone(), port).await?,
        };
        if addrs.is_empty() {
            return Err(EndReason::ResolveFailed);
        }
        let allowed: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| policy.allows(a.ip(), a.port()))
            .collect();
        if allowed.is_empty() {
            return Err(EndReason::ExitPolicy);
        }
        let mut last = EndReason::Misc;
        for addr in allowed {
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = end_reason_for(&e),
            }
        }
        Err(last)
    };
    let result = tokio::select! {
        r = tokio::time::timeout(shared.limits.connect_timeout, connect) => r.unwrap_or(Err(EndReason::Timeout)),
        () = token.cancelled() => return,
    };
    let tcp = match result {
        Ok(tcp) => tcp,
        Err(reason) => {
            debug!(stream = id.0, ?reason, "exit connect failed");
            send(RelayMsg::End(reason)).await;
            return;
        }
    };
    shared.stats.exit_streams.fetch_add(1, Ordering::Relaxed);
    let _ = tcp.set_nodelay(true);
    send(RelayMsg::Connected).await;
    let (rd, mut wr) = tcp.into_split();
    // The writer sends DATA in order. When the stream ends for reading (the client's END,
    // or the destination's EOF answered with our END) it sends what is already queued and
    // closes; when the circuit goes it stops at once.
    let circuit_token = tokens.circuit;
    let stream_token = token.clone();
    let deliver = windows.deliver.clone();
    let sendme_out = out.clone();
    let writer = tokio::spawn(async move {
        let mut draining = false;
        loop {
            let data = if draining {
                data_rx.try_recv().ok()
            } else {
                tokio::select! {
                    biased;
                    () = circuit_token.cancelled() => None,
                    d = data_rx.recv() => d,
                    () = stream_token.cancelled() => {
                        draining = true;
                        continue;
                    }
                }
            };
            let Some(data) = data else { break };
            if wr.write_all(&data).await.is_err() {
                break;
            }
            // Written to the destination: consumed. Every 50 cells earn the client a
            // stream SENDME (two while the window grows).
            let due = deliver.lock().map(|mut d| d.on_consumed()).unwrap_or(0);
            for _ in 0..due {
                let sendme = RelayCell::new(id, RelayMsg::Sendme(None));
                let _ = sendme_out.send(out_cell(sendme)).await;
            }
        }
        let _ = wr.shutdown().await;
    });
    let reason = 'read: loop {
        // Read first, then take the window permits for each DATA cell the bytes become. A
        // permit is spent only on a cell actually queued: taking them before the read
        // lost one cell of circuit window at every stream's EOF (and on a read error or
        // an END from the client), so after ~1,000 short streams a circuit could carry no
        // more DATA and every later stream on it hung after CONNECTED.
        //
        // One read takes up to EXIT_READ_CELLS cells' worth (one syscall per 998-byte
        // cell was a large part of the exit's CPU), into a buffer allocated only once the
        // socket is readable, so an idle stream holds none; the cells are slices of it.
        let ready = tokio::select! {
            r = rd.readable() => r,
            () = token.cancelled() => break None,
        };
        if let Err(e) = ready {
            break Some(end_reason_for(&e));
        }
        let mut buf = BytesMut::with_capacity(EXIT_READ_CELLS * max_payload);
        match rd.try_read_buf(&mut buf) {
            Ok(0) => break Some(EndReason::Done),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => break Some(end_reason_for(&e)),
        }
        while !buf.is_empty() {
            // While a window is empty the exit holds these cells and reads no more, so
            // the destination's TCP window fills. The stream window first: waiting on it
            // holds nothing the circuit's other streams need.
            let permits = tokio::select! {
                p = async {
                    let s = windows.stream.acquire().await.ok()?;
                    let c = windows.circuit.acquire().await.ok()?;
                    Some((s, c))
                } => p,
                () = token.cancelled() => break 'read None,
            };
            let Some((stream_permit, circuit_permit)) = permits else {
                break 'read None;
            };
            let chunk = buf.split_to(buf.len().min(max_payload)).freeze();
            let n = chunk.len();
            let sent = tokio::select! {
                r = out.send(out_cell(RelayCell::new(id, RelayMsg::Data(chunk)))) => r.is_ok(),
                () = token.cancelled() => false,
            };
            if !sent {
                // Not sent: the permits go back to the windows as they drop.
                break 'read None;
            }
            stream_permit.forget();
            circuit_permit.forget();
            shared
                .stats
                .exit_bytes
                .fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    if let Some(reason) = reason {
        send(RelayMsg::End(reason)).await;
    }
    token.cancel();
    let _ = writer.await;
}
