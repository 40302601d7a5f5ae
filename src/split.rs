//! The split deployment: `veil signaling` and `veil sfu` as separate processes, linked
//! over QUIC (see `veil_sfu::wire`). The all-in-one `veil` links the same parts in
//! memory through the same `SfuControl` trait (see [`crate::start`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use veil_metrics::Metrics;
use veil_sfu::Sfu;
use veil_sfu::grant::{GrantSigner, GrantVerifier};
use veil_sfu::identity::{Identity, parse_fingerprint};
use veil_signaling::Signaling;
use veil_signaling::cluster::Cluster;

use crate::{Config, StartError};

/// A running `veil signaling`.
pub struct RunningSignaling {
    pub http_addr: SocketAddr,
    pub node_addr: SocketAddr,
    /// This signaling's link certificate fingerprint, for the nodes' configuration.
    pub fingerprint: String,
    pub signaling: Arc<Signaling>,
    pub cluster: Arc<Cluster>,
    stop: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
    link: JoinHandle<()>,
    purge: JoinHandle<()>,
}

impl RunningSignaling {
    pub async fn stop(self) -> std::io::Result<()> {
        self.link.abort();
        self.purge.abort();
        let _ = self.stop.send(());
        self.server.await.unwrap_or(Ok(()))
    }
}

/// Starts signaling with the node link; the SFU nodes it places rooms on connect later.
pub async fn start_signaling(config: &Config) -> Result<RunningSignaling, StartError> {
    let metrics = Arc::new(Metrics::new()?);
    let signer = GrantSigner::generate().map_err(StartError::GrantKey)?;
    let identity = Identity::load_or_create(&config.signaling.identity_dir)
        .map_err(|e| StartError::Link(e.to_string()))?;
    let pinned = config
        .signaling
        .node_fingerprints
        .iter()
        .map(|f| parse_fingerprint(f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StartError::Link(e.to_string()))?;
    let cluster = Cluster::new(signer.verifier(), &signer.public_key(), metrics.clone());
    let (node_addr, link) = cluster
        .listen(&identity, pinned, config.signaling.node_addr)
        .map_err(StartError::Link)?;
    let listener = crate::bind(config.signaling.http_addr).await?;
    let http_addr = crate::local_addr(&listener, config.signaling.http_addr)?;
    let accounts = crate::open_accounts(config, http_addr, metrics.clone()).await?;
    let signaling = Signaling::new(
        config.signaling.clone(),
        signer,
        cluster.clone(),
        metrics,
        accounts.clone(),
    );
    let (stop, server) = crate::serve_on(listener, signaling.router());
    let purge = accounts.spawn_purge_job();
    Ok(RunningSignaling {
        http_addr,
        node_addr,
        fingerprint: identity.fingerprint(),
        signaling,
        cluster,
        stop,
        server,
        link,
        purge,
    })
}

/// A running `veil sfu`.
pub struct RunningSfu {
    pub sfu: Sfu,
    pub http_addr: SocketAddr,
    /// This node's link certificate fingerprint, for signaling's configuration.
    pub fingerprint: String,
    pub link: JoinHandle<Result<(), veil_sfu::node::NodeError>>,
    stop: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
}

impl RunningSfu {
    pub async fn stop(self) -> std::io::Result<()> {
        self.link.abort();
        self.sfu.shutdown().await;
        let _ = self.stop.send(());
        self.server.await.unwrap_or(Ok(()))
    }
}

#[derive(serde::Serialize)]
struct NodeHealth {
    status: &'static str,
    sessions: usize,
    rooms: usize,
}

/// Starts an SFU node: media on its UDP port, `/metrics` and `/healthz` on its HTTP
/// address, and the link to signaling (which it keeps retrying).
pub async fn start_sfu(config: &Config) -> Result<RunningSfu, StartError> {
    let metrics = Arc::new(Metrics::new()?);
    let identity = Identity::load_or_create(&config.node.identity_dir)
        .map_err(|e| StartError::Link(e.to_string()))?;
    // Until signaling hands over its key, a throwaway key refuses every grant.
    let unregistered = GrantSigner::generate().map_err(StartError::GrantKey)?;
    let verifier: GrantVerifier = unregistered.verifier();
    let sfu = Sfu::start(config.sfu.clone(), verifier, metrics.clone()).await?;
    let fingerprint = identity.fingerprint();
    let link = tokio::spawn(veil_sfu::node::run(
        sfu.clone(),
        identity,
        config.node.clone(),
    ));
    let router = Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move {
                ([("content-type", Metrics::content_type())], m.render()).into_response()
            }),
        )
        .with_state(metrics)
        .merge(Router::new().route(
            "/healthz",
            get({
                let sfu = sfu.clone();
                move || {
                    let stats = sfu.stats();
                    async move {
                        axum::Json(NodeHealth {
                            status: "ok",
                            sessions: stats.sessions,
                            rooms: stats.rooms,
                        })
                    }
                }
            }),
        ));
    let (http_addr, stop, server) = crate::serve(config.sfu.http_addr, router).await?;
    Ok(RunningSfu {
        sfu,
        http_addr,
        fingerprint,
        link,
        stop,
        server,
    })
}
