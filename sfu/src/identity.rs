//! Who is on the other end of the node link: each side (signaling, every SFU node) has
//! a self-signed certificate, generated at first start and kept in its data directory,
//! and pins the other side's certificate by its SHA-256 fingerprint from configuration.
//! No certificate authority, no name checks: only a pinned key completes the mutual-TLS
//! handshake, so a forged SFU cannot register and a forged signaling gets no node.

use std::path::Path;
use std::sync::Arc;

use ring::digest::{SHA256, digest};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::wire::ALPN;

/// The name every node link certificate carries (it is not checked; the pin is).
pub const LINK_NAME: &str = "veil-node-link";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read or write the link identity in {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the link identity in {0} is not a valid certificate and key")]
    Invalid(String),
    #[error("cannot generate a certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("a pinned fingerprint is not 64 hex digits: {0}")]
    BadFingerprint(String),
}

/// A certificate and its private key.
pub struct Identity {
    pub cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl std::fmt::Debug for Identity {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a certificate's DER, as lowercase hex: what configuration pins.
pub fn fingerprint(cert: &[u8]) -> String {
    digest(&SHA256, cert)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Normalises a configured fingerprint (colons and case allowed) or refuses it.
pub fn parse_fingerprint(text: &str) -> Result<String, IdentityError> {
    let hex: String = text
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(IdentityError::BadFingerprint(text.to_string()))
    }
}

impl Identity {
    /// A fresh self-signed certificate.
    pub fn generate() -> Result<Identity, IdentityError> {
        let certified = rcgen::generate_simple_self_signed(vec![LINK_NAME.to_string()])
            .map_err(|e| IdentityError::Generate(e.to_string()))?;
        Ok(Identity {
            cert: certified.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()),
        })
    }

    /// Loads `link.crt` / `link.key` (DER) from `dir`, creating them on first start.
    pub fn load_or_create(dir: &Path) -> Result<Identity, IdentityError> {
        let io = |source| IdentityError::Io {
            path: dir.display().to_string(),
            source,
        };
        let cert_path = dir.join("link.crt");
        let key_path = dir.join("link.key");
        if cert_path.exists() && key_path.exists() {
            let cert = std::fs::read(&cert_path).map_err(io)?;
            let key = std::fs::read(&key_path).map_err(io)?;
            if cert.is_empty() || key.is_empty() {
                return Err(IdentityError::Invalid(dir.display().to_string()));
            }
            return Ok(Identity {
                cert: CertificateDer::from(cert),
                key: PrivatePkcs8KeyDer::from(key),
            });
        }
        std::fs::create_dir_all(dir).map_err(io)?;
        let identity = Identity::generate()?;
        std::fs::write(&cert_path, identity.cert.as_ref()).map_err(io)?;
        write_private(&key_path, identity.key.secret_pkcs8_der()).map_err(io)?;
        Ok(identity)
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(self.cert.as_ref())
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// QUIC server configuration for signaling: accepts only clients whose
    /// certificate fingerprint is in `pinned`.
    pub fn server_config(&self, pinned: Vec<String>) -> Result<quinn::ServerConfig, IdentityError> {
        let provider = provider();
        let verifier = Arc::new(Pinned::new(pinned, &provider));
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.key())
            .map_err(tls_err)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(tls_err)?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        config.transport_config(transport());
        Ok(config)
    }

    /// QUIC client configuration for an SFU node: trusts only the signaling
    /// certificate with fingerprint `pinned`, and presents this identity.
    pub fn client_config(&self, pinned: String) -> Result<quinn::ClientConfig, IdentityError> {
        let provider = provider();
        let verifier = Arc::new(Pinned::new(vec![pinned], &provider));
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(vec![self.cert.clone()], self.key())
            .map_err(tls_err)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(tls_err)?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(transport());
        Ok(config)
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}

fn tls_err(e: impl std::fmt::Display) -> IdentityError {
    IdentityError::Tls(e.to_string())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A silent peer is noticed quickly: keep-alives every second, gone after three.
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(std::time::Duration::from_secs(1)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(std::time::Duration::from_secs(3)) {
        t.max_idle_timeout(Some(idle));
    }
    Arc::new(t)
}

/// Accepts exactly the pinned certificates; checks handshake signatures as usual.
#[derive(Debug)]
struct Pinned {
    fingerprints: Vec<String>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Pinned {
    fn new(fingerprints: Vec<String>, provider: &CryptoProvider) -> Self {
        Pinned {
            fingerprints,
            algorithms: provider.signature_verification_algorithms,
        }
    }

    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let seen = fingerprint(cert.as_ref());
        if self.fingerprints.contains(&seen) {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_normalised_and_checked() {
        let f = "AB:".repeat(31) + "AB";
        assert_eq!(parse_fingerprint(&f).unwrap(), "ab".repeat(32));
        assert!(parse_fingerprint("abc").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn identities_persist_and_differ() {
        let dir = std::env::temp_dir().join(format!("veil-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = Identity::load_or_create(&dir).unwrap();
        let again = Identity::load_or_create(&dir).unwrap();
        assert_eq!(a.fingerprint(), again.fingerprint());
        assert_ne!(a.fingerprint(), Identity::generate().unwrap().fingerprint());
        assert_eq!(a.fingerprint().len(), 64);
        assert!(!format!("{a:?}").contains("key:"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    async fn handshake(
        server_pins: Vec<String>,
        client_pin: String,
        client: &Identity,
        server: &Identity,
    ) -> bool {
        let server_config = server.server_config(server_pins).unwrap();
        let endpoint =
            quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let incoming = endpoint.accept().await?;
            incoming.await.ok()
        });
        let mut client_endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        client_endpoint.set_default_client_config(client.client_config(client_pin).unwrap());
        let connected = match client_endpoint.connect(addr, LINK_NAME) {
            Ok(connecting) => connecting.await.is_ok(),
            Err(_) => false,
        };
        let accepted = accept.await.unwrap().is_some();
        connected && accepted
    }

    #[tokio::test]
    async fn only_pinned_peers_complete_the_handshake() {
        let signaling = Identity::generate().unwrap();
        let node = Identity::generate().unwrap();
        let forged = Identity::generate().unwrap();
        assert!(
            handshake(
                vec![node.fingerprint()],
                signaling.fingerprint(),
                &node,
                &signaling
            )
            .await
        );
        // A node whose certificate signaling did not pin.
        assert!(
            !handshake(
                vec![node.fingerprint()],
                signaling.fingerprint(),
                &forged,
                &signaling
            )
            .await
        );
        // A signaling whose certificate the node did not pin.
        assert!(
            !handshake(
                vec![node.fingerprint()],
                signaling.fingerprint(),
                &node,
                &forged
            )
            .await
        );
    }
}
