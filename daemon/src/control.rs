//! The daemon's side of the control API (`docs/control-api.md`): the cookie, the loopback
//! listener on `client.control_listen`, and [`ClientControl`], which answers the API from
//! the running [`Client`]. HTTP, authentication and routing live in `anonnet-control`.

use std::sync::Arc;

use anonnet_client::{Client, ClientEvent, ClientStatus};
use std::net::SocketAddr;

use anonnet_control::server::{HandlerError, HandlerFuture};
use anonnet_control::{
    AvoidedRelay, Bootstrap, CircuitInfo, ConsensusInfo, ControlError, ControlHandler,
    ControlServer, Cookie, Counters, Event, PublishRequest, ServiceInfo, Status, UnpublishRequest,
};
use anonnet_crypto::hs::HsAddress;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tracing::info;

use crate::services::{PublishError, Services};
use crate::Error;
use anonnet_daemon::config::ClientSettings;
use anonnet_error::HasKind;

/// Events queued for control API readers before the slowest misses the oldest (it then gets
/// a `lagged` line; the daemon never waits for it).
const EVENT_QUEUE: usize = 256;

/// Reuse the cookie in `<state_dir>/control.cookie` when valid, else write a new one
/// (0600, [`Cookie::load_or_create_in`]), and bind the control API on
/// `client.control_listen`. Done before the client starts, so a taken port stops the
/// daemon at once with a message naming the key.
///
/// # Errors
/// [`Error::Failed`] naming the file or the address and the config key to change.
pub async fn bind(settings: &ClientSettings) -> Result<ControlServer, Error> {
    let cookie = Cookie::load_or_create_in(&settings.state_dir)
        .map_err(|e| Error::failed(e.kind(), format!("control cookie: {e}")))?;
    let addr = settings.control_listen;
    ControlServer::bind(addr, cookie)
        .await
        .map_err(|e| match e {
            ControlError::Bind { .. } => Error::failed(
                e.kind(),
                format!(
                    "{e}. Port {} is taken: change `client.control_listen` in {}, or set it \
                     to \"auto\" to pick a free port",
                    addr.port(),
                    settings.file.display()
                ),
            ),
            other => Error::failed(
                other.kind(),
                format!(
                    "{other} (`client.control_listen` in {})",
                    settings.file.display()
                ),
            ),
        })
}

/// Serve the control API over `client` in the background.
pub fn spawn(
    server: ControlServer,
    client: Arc<Client>,
    services: Arc<Services>,
) -> JoinHandle<()> {
    info!(addr = %server.local_addr(), "control API listening");
    tokio::spawn(server.serve(ClientControl::new(client, services)))
}

/// [`ControlHandler`] over the client.
pub struct ClientControl {
    client: Arc<Client>,
    services: Arc<Services>,
    events: broadcast::Sender<Event>,
}

impl ClientControl {
    /// A handler for `client`. A task translates the client's events into the control
    /// API's; it ends when the client does.
    pub fn new(client: Arc<Client>, services: Arc<Services>) -> Arc<ClientControl> {
        let (events, _) = broadcast::channel(EVENT_QUEUE);
        let mut from_client = client.events();
        let to_readers = events.clone();
        tokio::spawn(async move {
            loop {
                let event = match from_client.recv().await {
                    Ok(e) => control_event(e),
                    Err(broadcast::error::RecvError::Lagged(missed)) => Event::Lagged { missed },
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                // No reader is fine: the event is dropped.
                let _ = to_readers.send(event);
            }
        });
        Arc::new(ClientControl {
            client,
            services,
            events,
        })
    }
}

impl ControlHandler for ClientControl {
    fn status(&self) -> Status {
        let mut status = control_status(self.client.status());
        status.hs_pow = self.services.pow();
        status
    }

    fn set_proxy(&self, enabled: bool) {
        self.client.set_enabled(enabled);
    }

    fn new_identity(&self) {
        self.client.new_identity();
    }

    fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn services(&self) -> HandlerFuture<'_, Result<Vec<ServiceInfo>, HandlerError>> {
        Box::pin(async { Ok(self.services.list()) })
    }

    fn publish(
        &self,
        request: PublishRequest,
    ) -> HandlerFuture<'_, Result<ServiceInfo, HandlerError>> {
        Box::pin(async move {
            let target: SocketAddr = request.target.parse().map_err(|_| {
                HandlerError::BadRequest(format!(
                    "target {:?} is not IP:PORT, e.g. 127.0.0.1:8080",
                    request.target
                ))
            })?;
            let port = request.port.unwrap_or(80);
            if port == 0 {
                return Err(HandlerError::BadRequest("port 0 is not allowed".into()));
            }
            self.services.publish(target, port).map_err(|e| match e {
                PublishError::NotLoopback(_) => HandlerError::BadRequest(e.to_string()),
                PublishError::Service(_) => HandlerError::FailedAs {
                    kind: e.kind(),
                    message: e.to_string(),
                },
            })
        })
    }

    fn unpublish(&self, request: UnpublishRequest) -> HandlerFuture<'_, Result<(), HandlerError>> {
        Box::pin(async move {
            let address = HsAddress::parse(&request.address)
                .map_err(|e| HandlerError::BadRequest(format!("{}: {e}", request.address)))?;
            if self.services.unpublish(&address) {
                Ok(())
            } else {
                Err(HandlerError::NotFound(format!(
                    "{} is not hosted by this daemon",
                    request.address
                )))
            }
        })
    }
}

/// The client's status in the control API's shape (the same JSON).
fn control_status(s: ClientStatus) -> Status {
    let c = s.counters;
    Status {
        enabled: s.enabled,
        bootstrap: Bootstrap {
            percent: s.bootstrap.percent,
            phase: s.bootstrap.phase,
        },
        relays: s.relays,
        circuits: s
            .circuits
            .into_iter()
            .map(|c| CircuitInfo {
                id: c.id,
                path: c.path,
                addresses: c.addresses,
                age_secs: c.age_secs,
                build_ms: c.build_ms,
                streams: c.streams,
                state: c.state,
                handshakes: c.handshakes,
                protocol: c.protocol,
            })
            .collect(),
        streams: s.streams,
        guards: s.guards,
        vanguards: s
            .vanguards
            .into_iter()
            .map(|v| anonnet_control::Vanguard {
                node_id: v.node_id,
                expires: v.expires,
            })
            .collect(),
        avoided_relays: s
            .avoided_relays
            .into_iter()
            .map(|a| AvoidedRelay {
                node_id: a.node_id,
                failures: a.failures,
                retry_in_secs: a.retry_in_secs,
            })
            .collect(),
        counters: Counters {
            circuits_built: c.circuits_built,
            circuits_built_on_demand: c.circuits_built_on_demand,
            circuit_build_failures: c.circuit_build_failures,
            streams_opened: c.streams_opened,
            stream_failures: c.stream_failures,
            resolves: c.resolves,
            optimistic_streams: c.optimistic_streams,
            hs_prefixes_built: c.hs_prefixes_built,
            hs_prefixes_used: c.hs_prefixes_used,
            bytes_sent: c.bytes_sent,
            bytes_received: c.bytes_received,
            buffered_bytes: c.buffered_bytes,
            hs_descriptor_fetches: c.hs_descriptor_fetches,
            hs_connects: c.hs_connects,
            unexpected_cells: c.unexpected_cells,
        },
        hs_pow: Vec::new(),
        consensus: s.consensus.map(|c| ConsensusInfo {
            valid_after: c.valid_after,
            fresh_until: c.fresh_until,
            valid_until: c.valid_until,
            relays: c.relays,
            signatures: c.signatures,
            authorities: c.authorities,
            digest: c.digest,
        }),
    }
}

/// The client's event in the control API's shape (the same JSON).
fn control_event(e: ClientEvent) -> Event {
    match e {
        ClientEvent::Bootstrap(b) => Event::Bootstrap(Bootstrap {
            percent: b.percent,
            phase: b.phase,
        }),
        ClientEvent::CircuitBuilt { id, path, build_ms } => {
            Event::CircuitBuilt { id, path, build_ms }
        }
        ClientEvent::CircuitClosed { id } => Event::CircuitClosed { id },
        ClientEvent::ProxyEnabled { enabled } => Event::ProxyEnabled { enabled },
        ClientEvent::NewIdentity => Event::NewIdentity,
        ClientEvent::Error { message } => Event::Error { message },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use anonnet_client::CircuitInfo as ClientCircuit;

    /// The control API's JSON is the client's JSON: what the client serializes, the
    /// control types read back unchanged.
    #[test]
    fn control_types_serialize_exactly_like_the_client_types() {
        let status = ClientStatus {
            enabled: false,
            bootstrap: anonnet_client::Bootstrap {
                percent: 40,
                phase: "building first circuit".into(),
            },
            relays: 5,
            circuits: vec![ClientCircuit {
                id: 9,
                path: vec!["ab".repeat(32); 3],
                addresses: vec!["10.1.0.1:4000".into(); 3],
                age_secs: 1.5,
                build_ms: 4.0,
                streams: 2,
                state: "in use".into(),
                handshakes: vec!["x25519+mlkem768".into(); 3],
                protocol: 2,
            }],
            streams: 2,
            guards: vec!["cd".repeat(32)],
            vanguards: vec![anonnet_client::vanguards::VanguardInfo {
                node_id: "12".repeat(32),
                expires: 1_000_000,
            }],
            avoided_relays: vec![anonnet_client::guards::AvoidedRelay {
                node_id: "ef".repeat(32),
                failures: 3,
                retry_in_secs: 12.5,
            }],
            counters: anonnet_client::Counters {
                circuits_built: 1,
                circuits_built_on_demand: 2,
                circuit_build_failures: 3,
                streams_opened: 4,
                stream_failures: 5,
                resolves: 13,
                optimistic_streams: 16,
                hs_prefixes_built: 14,
                hs_prefixes_used: 15,
                bytes_sent: 6,
                bytes_received: 7,
                buffered_bytes: 8,
                hs_descriptor_fetches: 9,
                hs_connects: 10,
                unexpected_cells: 11,
            },
            consensus: Some(anonnet_client::consensus::ConsensusStatus {
                valid_after: 100,
                fresh_until: 130,
                valid_until: 190,
                relays: 7,
                signatures: 2,
                authorities: 3,
                digest: "0a".repeat(32),
            }),
        };
        let client_json = serde_json::to_value(&status).unwrap();
        let mut control_json = serde_json::to_value(control_status(status)).unwrap();
        // `hs_pow` comes from the hosted services, not from the client's status.
        assert_eq!(
            control_json.as_object_mut().unwrap().remove("hs_pow"),
            Some(serde_json::json!([]))
        );
        assert_eq!(client_json, control_json);

        let events = vec![
            ClientEvent::Bootstrap(anonnet_client::Bootstrap {
                percent: 100,
                phase: "ready".into(),
            }),
            ClientEvent::CircuitBuilt {
                id: 1,
                path: vec!["cd".repeat(32)],
                build_ms: 2.5,
            },
            ClientEvent::CircuitClosed { id: 1 },
            ClientEvent::ProxyEnabled { enabled: true },
            ClientEvent::NewIdentity,
            ClientEvent::Error {
                message: "boom".into(),
            },
        ];
        for e in events {
            let client_json = serde_json::to_value(&e).unwrap();
            let control_json = serde_json::to_value(control_event(e)).unwrap();
            assert_eq!(client_json, control_json);
        }
    }
}
