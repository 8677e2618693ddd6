#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod client;
mod cookie;
mod error;
pub mod locate;
pub mod server;
pub mod types;

pub use client::{ControlClient, EventStream, PORTS_FILE, PORTS_KEY};
pub use cookie::{Cookie, COOKIE_FILE, COOKIE_LEN};
pub use error::ControlError;
pub use server::{ControlHandler, ControlServer, HandlerError, HandlerFuture};
pub use types::{
    Ack, AvoidedRelay, Bootstrap, CircuitInfo, ConsensusInfo, Counters, ErrorBody, Event,
    HsPowInfo, ProxyRequest, PublishRequest, ServiceInfo, Status, UnpublishRequest, Vanguard,
};

#[cfg(test)]
mod tests;
