//! The `veil` package: assembles the parts into one running service (the all-in-one
//! `veil` command) and owns the typed configuration.
//!
//! Must never: add behaviour of its own beyond wiring — each part's rules live in its
//! crate — or open a connection to anything outside Veil's own components.

pub mod config;
pub mod split;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use veil_metrics::Metrics;
use veil_sfu::grant::GrantSigner;
use veil_sfu::{Sfu, StartError as SfuStartError};
use veil_signaling::Signaling;

pub use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("metrics: {0}")]
    Metrics(#[from] veil_metrics::MetricsError),
    #[error("grant signing key: {0}")]
    GrantKey(veil_sfu::grant::GrantError),
    #[error("SFU: {0}")]
    Sfu(#[from] SfuStartError),
    #[error("node link: {0}")]
    Link(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running all-in-one Veil.
pub struct Running {
    pub http_addr: SocketAddr,
    pub sfu: Sfu,
    pub signaling: Arc<Signaling>,
    pub metrics: Arc<Metrics>,
    stop: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
}

/// Starts signaling and the SFU in this process, linked in memory.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::new()?);
    // Grants live for a minute, so a fresh key per start costs nothing.
    let signer = GrantSigner::generate().map_err(StartError::GrantKey)?;
    let sfu = Sfu::start(config.sfu.clone(), signer.verifier(), metrics.clone()).await?;
    let signaling = Signaling::new(
        config.signaling.clone(),
        signer,
        Arc::new(sfu.clone()),
        metrics.clone(),
    );
    let (http_addr, stop, server) = serve(config.signaling.http_addr, signaling.router()).await?;
    Ok(Running {
        http_addr,
        sfu,
        signaling,
        metrics,
        stop,
        server,
    })
}

type Served = (
    SocketAddr,
    oneshot::Sender<()>,
    JoinHandle<std::io::Result<()>>,
);

/// Serves `router` on `addr` until the returned sender fires.
pub(crate) async fn serve(addr: SocketAddr, router: axum::Router) -> Result<Served, StartError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| StartError::Listen { addr, source })?;
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = stopped.await;
        })
        .await
    });
    Ok((bound, stop, server))
}

impl Running {
    /// Base URL of the HTTP API.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// Closes every session and stops serving.
    pub async fn stop(self) -> std::io::Result<()> {
        self.sfu.shutdown().await;
        let _ = self.stop.send(());
        self.server.await.unwrap_or(Ok(()))
    }
}
