//! The one typed configuration: defaults, then a TOML file, then `VEIL_*` environment
//! variables, then command-line flags (each overrides the one before).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};
use veil_accounts::AccountsConfig;
use veil_sfu::SfuConfig;
use veil_sfu::node::NodeConfig;
use veil_signaling::SignalingConfig;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub signaling: SignalingConfig,
    pub sfu: SfuConfig,
    /// `veil sfu` only: how this SFU node reaches signaling.
    pub node: NodeConfig,
    /// Signaling (and `veil accounts`): the accounts database, mail and deletion rules.
    pub accounts: AccountsConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `veil_sfu=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

/// Crates whose logs can carry peer addresses (ICE candidates, SRTP and QUIC errors
/// name the remote address). They are off unless the filter names them, so Veil's
/// logs never hold an IP address (P2).
pub const ADDRESS_LOGGING_CRATES: &[&str] = &[
    "rtc",
    "rtc_ice",
    "rtc_dtls",
    "rtc_srtp",
    "rtc_sctp",
    "rtc_stun",
    "rtc_turn",
    "rtc_mdns",
    "rtc_interceptor",
    "rtc_datachannel",
    "rtc_rtp",
    "rtc_rtcp",
    "rtc_sdp",
    "rtc_media",
    "rtc_shared",
    "webrtc",
    "quinn",
    "quinn_proto",
    "quinn_udp",
    "rustls",
    "hyper",
    "hyper_util",
    "axum",
    "tungstenite",
    "tokio_tungstenite",
    "reqwest",
];

impl LogConfig {
    /// The `tracing` filter to install: the configured one, with the crates in
    /// [`ADDRESS_LOGGING_CRATES`] turned off unless it names them explicitly.
    pub fn filter(&self) -> String {
        let mut filter = self.level.clone();
        for krate in ADDRESS_LOGGING_CRATES {
            let named = self.level.split(',').any(|d| {
                d.trim().split('=').next().is_some_and(|t| {
                    t.trim() == *krate || t.trim().starts_with(&format!("{krate}::"))
                })
            });
            if !named {
                filter.push_str(&format!(",{krate}=off"));
            }
        }
        filter
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "veil",
    version,
    about = "Self-hostable video meetings; the server relays media it cannot read"
)]
pub struct Cli {
    #[command(flatten)]
    pub overrides: Overrides,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Everything in one process on this machine (the default).
    All,
    /// Signaling (HTTP API, WebSocket, accounts) alone; SFU nodes connect to it.
    Signaling,
    /// An SFU node alone; it connects to signaling (see the `[node]` settings).
    Sfu,
    /// Print the effective configuration as TOML and exit.
    Config,
    /// Operator's account tasks (aggregates and deletion requests only).
    Accounts {
        #[command(subcommand)]
        task: AccountsTask,
    },
    /// Print this role's node-link certificate fingerprint (creating the certificate
    /// on first use), for pinning in the other side's configuration.
    Fingerprint {
        #[arg(value_enum)]
        role: Role,
    },
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum AccountsTask {
    /// Run the purge once: delete closed accounts past their grace period and
    /// sign-ups never verified.
    Purge,
    /// List deletion requests, soonest deadline first.
    ListDue,
    /// Print aggregate counts (no identifiers) as JSON.
    Stats,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Role {
    Signaling,
    Sfu,
}

/// Settings that can also come from flags or `VEIL_*` variables.
#[derive(Debug, Args)]
pub struct Overrides {
    /// TOML configuration file.
    #[arg(long, env = "VEIL_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// HTTP and WebSocket listen address.
    #[arg(long, env = "VEIL_HTTP_ADDR", global = true)]
    pub http_addr: Option<SocketAddr>,
    /// The single UDP address all media uses.
    #[arg(long, env = "VEIL_MEDIA_ADDR", global = true)]
    pub media_addr: Option<SocketAddr>,
    /// Address announced to clients for media (e.g. the public IP).
    #[arg(long, env = "VEIL_ANNOUNCE_IP", global = true)]
    pub announce_ip: Option<IpAddr>,
    /// Log filter.
    #[arg(long, env = "VEIL_LOG", global = true)]
    pub log: Option<String>,
    /// `veil signaling`: where SFU nodes connect (UDP, QUIC).
    #[arg(long, env = "VEIL_NODE_ADDR", global = true)]
    pub node_addr: Option<SocketAddr>,
    /// `veil signaling`: pinned SFU node fingerprints, comma-separated.
    #[arg(
        long,
        env = "VEIL_NODE_FINGERPRINTS",
        global = true,
        value_delimiter = ','
    )]
    pub node_fingerprints: Option<Vec<String>>,
    /// `veil sfu`: signaling's node-link address, `host:port`.
    #[arg(long, env = "VEIL_SIGNALING_ADDR", global = true)]
    pub signaling_addr: Option<String>,
    /// `veil sfu`: signaling's pinned link fingerprint.
    #[arg(long, env = "VEIL_SIGNALING_FINGERPRINT", global = true)]
    pub signaling_fingerprint: Option<String>,
    /// `veil sfu`: this node's name.
    #[arg(long, env = "VEIL_NODE_NAME", global = true)]
    pub node_name: Option<String>,
    /// `veil sfu`: this node's region label.
    #[arg(long, env = "VEIL_REGION", global = true)]
    pub region: Option<String>,
    /// Accounts database: `sqlite://data/veil.db` or `postgres://user@host/db`.
    #[arg(long, env = "VEIL_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// Where people reach Veil (links in e-mails; decides the cookie's Secure flag).
    #[arg(long, env = "VEIL_PUBLIC_URL", global = true)]
    pub public_url: Option<String>,
    /// SMTP relay for account e-mail (without it, mail goes to the outbox folder).
    #[arg(long, env = "VEIL_SMTP_URL", global = true)]
    pub smtp_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration in {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
}

impl Config {
    /// Builds the effective configuration.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut config = match &overrides.config {
            Some(path) => Self::from_file(path)?,
            None => Config::default(),
        };
        if let Some(addr) = overrides.http_addr {
            // This process's HTTP address, whichever role it runs.
            config.signaling.http_addr = addr;
            config.sfu.http_addr = addr;
        }
        if let Some(addr) = overrides.node_addr {
            config.signaling.node_addr = addr;
        }
        if let Some(pins) = &overrides.node_fingerprints {
            config.signaling.node_fingerprints = pins
                .iter()
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect();
        }
        if let Some(addr) = &overrides.signaling_addr {
            config.node.signaling_addr = addr.clone();
        }
        if let Some(pin) = &overrides.signaling_fingerprint {
            config.node.signaling_fingerprint = pin.clone();
        }
        if let Some(name) = &overrides.node_name {
            config.node.name = name.clone();
        }
        if let Some(region) = &overrides.region {
            config.node.region = region.clone();
        }
        if let Some(addr) = overrides.media_addr {
            config.sfu.media_addr = addr;
        }
        if let Some(ip) = overrides.announce_ip {
            config.sfu.announce_ip = Some(ip);
        }
        if let Some(level) = &overrides.log {
            config.log.level = level.clone();
        }
        if let Some(url) = &overrides.database_url {
            config.accounts.database_url = url.clone();
        }
        if let Some(url) = &overrides.public_url {
            config.accounts.public_url = url.clone();
        }
        if let Some(url) = &overrides.smtp_url {
            config.accounts.mail.smtp_url = url.clone();
        }
        Ok(config)
    }

    fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_overrides() -> Overrides {
        Overrides {
            config: None,
            http_addr: None,
            media_addr: None,
            announce_ip: None,
            log: None,
            node_addr: None,
            node_fingerprints: None,
            signaling_addr: None,
            signaling_fingerprint: None,
            node_name: None,
            region: None,
            database_url: None,
            public_url: None,
            smtp_url: None,
        }
    }

    #[test]
    fn dependency_logs_that_name_addresses_are_off_unless_asked_for() {
        let default = LogConfig::default().filter();
        assert!(default.starts_with("info,"));
        assert!(default.contains(",rtc=off"));
        assert!(default.contains(",rtc_ice=off"));
        assert!(default.contains(",quinn=off"));
        let asked = LogConfig {
            level: "info,rtc_ice=debug".into(),
        }
        .filter();
        assert!(!asked.contains("rtc_ice=off"));
        assert!(asked.contains("rtc=off"));
        assert!(tracing_subscriber::EnvFilter::try_new(&default).is_ok());
    }

    #[test]
    fn defaults_listen_on_loopback() {
        let c = Config::load(&no_overrides()).unwrap();
        assert!(c.signaling.http_addr.ip().is_loopback());
        assert!(c.sfu.media_addr.ip().is_loopback());
    }

    #[test]
    fn file_then_flags() {
        let dir = std::env::temp_dir().join(format!("veil-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("veil.toml");
        std::fs::write(
            &path,
            "[signaling]\nhttp_addr = \"127.0.0.1:9000\"\n[sfu]\nmedia_addr = \"127.0.0.1:9001\"\nconnect_timeout = 5\n",
        )
        .unwrap();
        let mut o = no_overrides();
        o.config = Some(path.clone());
        let c = Config::load(&o).unwrap();
        assert_eq!(c.signaling.http_addr.port(), 9000);
        assert_eq!(c.sfu.media_addr.port(), 9001);
        assert_eq!(c.sfu.connect_timeout.as_secs(), 5);
        o.http_addr = Some("127.0.0.1:9100".parse().unwrap());
        assert_eq!(Config::load(&o).unwrap().signaling.http_addr.port(), 9100);
        std::fs::write(&path, "[sfu]\nmedia_adr = \"x\"\n").unwrap();
        let err = Config::load(&o).unwrap_err().to_string();
        assert!(err.contains("media_adr"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
