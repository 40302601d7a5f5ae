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
use veil_accounts::Accounts;
use veil_accounts::clock::SystemClock;
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
    #[error(transparent)]
    Accounts(#[from] veil_accounts::OpenError),
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
    pub accounts: Arc<Accounts>,
    stop: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
    purge: JoinHandle<()>,
}

/// Starts signaling, accounts and the SFU in this process, linked in memory.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::new()?);
    let listener = bind(config.signaling.http_addr).await?;
    let http_addr = local_addr(&listener, config.signaling.http_addr)?;
    let accounts = open_accounts(config, http_addr, metrics.clone()).await?;
    // Grants live for a minute, so a fresh key per start costs nothing.
    let signer = GrantSigner::generate().map_err(StartError::GrantKey)?;
    let sfu = Sfu::start(config.sfu.clone(), signer.verifier(), metrics.clone()).await?;
    let signaling = Signaling::new(
        config.signaling.clone(),
        signer,
        Arc::new(sfu.clone()),
        metrics.clone(),
        accounts.clone(),
    );
    let (stop, server) = serve_on(listener, signaling.router());
    let purge = accounts.spawn_purge_job();
    Ok(Running {
        http_addr,
        sfu,
        signaling,
        metrics,
        accounts,
        stop,
        server,
        purge,
    })
}

/// Opens the accounts store; links in e-mails point at the bound HTTP address unless
/// a public URL is configured.
pub async fn open_accounts(
    config: &Config,
    http_addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> Result<Arc<Accounts>, StartError> {
    let mut accounts = config.accounts.clone();
    if accounts.public_url.is_empty() {
        accounts.public_url = format!("http://{http_addr}");
    }
    Ok(Accounts::open(accounts, Arc::new(SystemClock), metrics).await?)
}

type Served = (
    SocketAddr,
    oneshot::Sender<()>,
    JoinHandle<std::io::Result<()>>,
);

/// Serves `router` on `addr` until the returned sender fires.
pub(crate) async fn serve(addr: SocketAddr, router: axum::Router) -> Result<Served, StartError> {
    let listener = bind(addr).await?;
    let bound = local_addr(&listener, addr)?;
    let (stop, server) = serve_on(listener, router);
    Ok((bound, stop, server))
}

pub(crate) async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, StartError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })
}

pub(crate) fn local_addr(
    listener: &tokio::net::TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, StartError> {
    listener
        .local_addr()
        .map_err(|source| StartError::Listen { addr, source })
}

/// Serves `router` on a bound listener until the returned sender fires.
pub(crate) fn serve_on(
    listener: tokio::net::TcpListener,
    router: axum::Router,
) -> (oneshot::Sender<()>, JoinHandle<std::io::Result<()>>) {
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
    (stop, server)
}

impl Running {
    /// Base URL of the HTTP API.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// Closes every session and stops serving.
    pub async fn stop(self) -> std::io::Result<()> {
        self.purge.abort();
        self.sfu.shutdown().await;
        let _ = self.stop.send(());
        self.server.await.unwrap_or(Ok(()))
    }
}
