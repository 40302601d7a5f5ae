//! Veil's control plane and the single entry point for browsers: the HTTP API, the
//! WebSocket that carries SDP, ICE and (later) E2EE blobs between a client and its
//! media session, and the room directory that mints short-lived join grants.
//!
//! Must never: parse or keep an E2EE blob or media key; log or export an IP address,
//! a display name or a room id; talk to anything but its own components (P9).

pub mod api;
pub mod cluster;
pub mod connection;
pub mod message;
pub mod proxy;
pub mod quota;
pub mod room;
pub mod web;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use veil_accounts::Accounts;
use veil_metrics::Metrics;
use veil_sfu::SfuControl;
use veil_sfu::grant::GrantSigner;

use crate::room::RoomDirectory;

/// Signaling settings; defaults run on a laptop.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignalingConfig {
    /// Where the HTTP API and WebSocket listen.
    pub http_addr: std::net::SocketAddr,
    /// Lifetime of a join grant.
    pub grant_ttl_secs: u64,
    /// A room id stays valid this long after creation.
    pub room_ttl_secs: u64,
    pub max_rooms: usize,
    pub max_participants_per_room: usize,
    /// `veil signaling` only: where SFU nodes connect (UDP, QUIC).
    pub node_addr: std::net::SocketAddr,
    /// `veil signaling` only: SHA-256 fingerprints of the SFU nodes' link certificates
    /// (each node prints its own at start). Only these nodes can register.
    pub node_fingerprints: Vec<String>,
    /// `veil signaling` only: where signaling keeps its own link certificate.
    pub identity_dir: std::path::PathBuf,
    /// A WebSocket that has not joined (or resumed) this long after opening is closed
    /// with a `join_timeout` error, so idle sockets cannot pile up.
    pub join_timeout_secs: u64,
    /// WebSockets one client address (IPv4, or IPv6 /64) may hold open at once; more
    /// are refused with 429 `too_many_connections`. 0 = no cap.
    pub max_sockets_per_address: usize,
    /// Reverse proxies whose `X-Forwarded-For` is believed, so that the per-address
    /// limits (sockets, log-ins, sign-ups) count clients, not the proxy.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Default for SignalingConfig {
    fn default() -> Self {
        SignalingConfig {
            http_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
            grant_ttl_secs: 60,
            room_ttl_secs: 24 * 3600,
            max_rooms: 10_000,
            max_participants_per_room: 100,
            node_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 7890)),
            node_fingerprints: Vec::new(),
            identity_dir: "data/signaling-link".into(),
            join_timeout_secs: 10,
            max_sockets_per_address: 100,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Shared state of the signaling service.
pub struct Signaling {
    pub config: SignalingConfig,
    pub signer: GrantSigner,
    pub rooms: RoomDirectory,
    pub sfu: Arc<dyn SfuControl>,
    pub metrics: Arc<Metrics>,
    /// Participants whose WebSocket dropped, waiting to resume.
    pub resumes: connection::Resumes,
    /// Open WebSockets per client address.
    pub sockets: quota::SocketQuota,
    /// Who may create meetings, and where usage records go.
    pub accounts: Arc<Accounts>,
}

impl Signaling {
    pub fn new(
        config: SignalingConfig,
        signer: GrantSigner,
        sfu: Arc<dyn SfuControl>,
        metrics: Arc<Metrics>,
        accounts: Arc<Accounts>,
    ) -> Arc<Self> {
        let rooms = RoomDirectory::new(
            config.max_rooms,
            config.max_participants_per_room,
            Duration::from_secs(config.room_ttl_secs),
        );
        let sockets = quota::SocketQuota::new(config.max_sockets_per_address);
        let signaling = Arc::new(Signaling {
            config,
            signer,
            rooms,
            sfu,
            metrics,
            resumes: connection::Resumes::default(),
            sockets,
            accounts,
        });
        // A closed account's meetings end with it (P4: closure is immediate).
        let weak = Arc::downgrade(&signaling);
        signaling.accounts.on_close(Arc::new(move |account: &str| {
            if let Some(signaling) = weak.upgrade() {
                signaling.rooms.end_meetings_of(account);
            }
        }));
        signaling
    }

    /// Every route of the public surface this service serves.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/api/rooms", post(api::create_room))
            .route("/api/rooms/{room}/join", post(api::join_room))
            .route("/ws", get(connection::upgrade))
            .route("/healthz", get(api::healthz))
            .route("/metrics", get(api::metrics))
            .route("/api/openapi.json", get(api::openapi))
            .merge(web::router())
            .fallback(api::not_found)
            .with_state(self.clone())
            .merge(veil_accounts::http::router(self.accounts.clone()))
            .layer(axum::middleware::from_fn_with_state(
                Arc::new(self.config.trusted_proxies.clone()),
                proxy::client_behind_proxy,
            ))
    }
}
