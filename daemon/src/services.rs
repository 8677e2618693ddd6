//! The hidden services a client daemon hosts: those in its config file (`[[service]]`)
//! and those published through the control API, which are remembered in
//! `STATE_DIR/services.json` so that a restart publishes them again with the same keys.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anonnet_client::{Client, HostedService, ServiceConfig, ServiceError};
use anonnet_control::ServiceInfo;
use anonnet_crypto::hs::HsAddress;
use serde::{Deserialize, Serialize};
use tracing::warn;

use anonnet_daemon::config::default_service_key;

/// File in the state directory listing the services published through the control API.
pub const SERVICES_FILE: &str = "services.json";

/// One service published through the control API, as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Saved {
    target: SocketAddr,
    port: u16,
    key_file: PathBuf,
}

/// The daemon's hosted services and where API-published ones are saved.
pub struct Services {
    client: Arc<Client>,
    state_dir: PathBuf,
    /// Services published through the API (saved), by address.
    saved: Mutex<Vec<(HsAddress, Saved)>>,
    /// Saved services that could not start this time (a key file unreadable, a port
    /// taken): saved again as they were, never dropped from the file behind the owner's
    /// back.
    not_started: Mutex<Vec<Saved>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Services {
    /// Publish the configured services and the saved ones.
    ///
    /// # Errors
    /// The first [`ServiceError`] of a configured service (a saved one that fails is only
    /// logged).
    pub fn start(
        client: Arc<Client>,
        state_dir: &Path,
        configured: Vec<ServiceConfig>,
    ) -> Result<Arc<Services>, ServiceError> {
        for c in configured {
            client.publish(c)?;
        }
        let services = Arc::new(Services {
            client,
            state_dir: state_dir.to_path_buf(),
            saved: Mutex::new(Vec::new()),
            not_started: Mutex::new(Vec::new()),
        });
        let path = state_dir.join(SERVICES_FILE);
        let entries: Vec<serde_json::Value> = anonnet_state::load(&path, |b| {
            serde_json::from_slice(b).map_err(|e| format!("is not a list of services: {e}"))
        })
        .unwrap_or_default();
        let total = entries.len();
        let saved: Vec<Saved> = entries
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect();
        for s in saved.iter().cloned() {
            if let Err(e) = services.publish_saved(s.clone()) {
                warn!("a service saved in {SERVICES_FILE} could not start: {e}");
                lock(&services.not_started).push(s);
            }
        }
        if saved.len() < total {
            // Keep the damaged file for its owner; save only the services read.
            let why = format!("has {} entries that are not services", total - saved.len());
            anonnet_state::set_aside(&path, &why, &format!("{} services kept", saved.len()));
            services.save();
        }
        Ok(services)
    }

    fn publish_saved(&self, s: Saved) -> Result<Arc<HostedService>, ServiceError> {
        let hosted = self.client.publish(ServiceConfig {
            target: s.target,
            port: s.port,
            key_file: s.key_file.clone(),
            dark_name: None,
            pow: Some(anonnet_client::host::PowConfig::default()),
        })?;
        lock(&self.saved).push((hosted.address(), s));
        Ok(hosted)
    }

    fn save(&self) {
        let mut list: Vec<Saved> = lock(&self.saved).iter().map(|(_, s)| s.clone()).collect();
        list.extend(lock(&self.not_started).iter().cloned());
        let path = self.state_dir.join(SERVICES_FILE);
        let written = serde_json::to_vec_pretty(&list)
            .map_err(std::io::Error::other)
            .and_then(|b| anonnet_state::write_atomically(&path, &b));
        if let Err(e) = written {
            warn!("cannot save {}: {e}", path.display());
        }
    }

    /// Every hosted service, for the control API.
    pub fn list(&self) -> Vec<ServiceInfo> {
        self.client.services().iter().map(|s| info(s)).collect()
    }

    /// Proof-of-work counters of the hosted services that have it on (protocol §13.9),
    /// for `status --json`.
    pub fn pow(&self) -> Vec<anonnet_control::HsPowInfo> {
        self.client
            .services()
            .iter()
            .filter_map(|s| {
                let p = s.pow_status()?;
                Some(anonnet_control::HsPowInfo {
                    address: s.address().to_host(),
                    suggested_effort: p.suggested_effort,
                    queued: p.queued,
                    served: p.served,
                    dropped: [
                        ("queue_full", p.dropped_queue_full),
                        ("timeout", p.dropped_timeout),
                        ("invalid", p.dropped_invalid),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                    replayed_solutions: p.replayed_solutions,
                    served_by_effort: p.served_by_effort,
                })
            })
            .collect()
    }

    /// Publish `target` (loopback) on `port`; an already hosted target is returned as it
    /// is. The key is kept in the state directory, so publishing the same target again
    /// later gives the same address.
    ///
    /// # Errors
    /// [`PublishError::NotLoopback`] for a non-loopback target,
    /// [`PublishError::Service`] when the service could not start (its key file failed).
    pub fn publish(&self, target: SocketAddr, port: u16) -> Result<ServiceInfo, PublishError> {
        if !target.ip().is_loopback() {
            return Err(PublishError::NotLoopback(target));
        }
        if let Some(s) = self
            .client
            .services()
            .iter()
            .find(|s| s.config().target == target && s.config().port == port)
        {
            return Ok(info(s));
        }
        let saved = Saved {
            target,
            port,
            key_file: default_service_key(&self.state_dir, target),
        };
        let hosted = self.publish_saved(saved)?;
        lock(&self.not_started).retain(|s| s.target != target || s.port != port);
        self.save();
        Ok(info(&hosted))
    }

    /// Stop hosting `address`. False when it is not hosted here.
    pub fn unpublish(&self, address: &HsAddress) -> bool {
        let stopped = self.client.unpublish(address);
        let before = lock(&self.saved).len();
        lock(&self.saved).retain(|(a, _)| a != address);
        if lock(&self.saved).len() != before {
            self.save();
        }
        stopped
    }
}

/// Why [`Services::publish`] refused.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Only local servers can be published.
    #[error("target {0} is not a loopback address: only local servers can be published")]
    NotLoopback(SocketAddr),
    /// The service could not start.
    #[error(transparent)]
    Service(#[from] anonnet_client::ServiceError),
}

impl anonnet_error::HasKind for PublishError {
    /// [`anonnet_error::ErrorKind::BadRequest`] for a non-loopback target, else the
    /// service's kind.
    fn kind(&self) -> anonnet_error::ErrorKind {
        match self {
            PublishError::NotLoopback(_) => anonnet_error::ErrorKind::BadRequest,
            PublishError::Service(e) => e.kind(),
        }
    }
}

fn info(s: &HostedService) -> ServiceInfo {
    ServiceInfo {
        address: s.address().to_host(),
        port: s.config().port,
        target: s.config().target.to_string(),
        published: s.is_published(),
        introductions: s.introductions(),
        introductions_refused_replayed: s.introductions_refused_replayed(),
        introductions_refused_wrong_auth_key: s.introductions_refused_wrong_auth_key(),
        name: s
            .config()
            .dark_name
            .as_ref()
            .map(|n| format!("{n}.dark"))
            .unwrap_or_default(),
    }
}
