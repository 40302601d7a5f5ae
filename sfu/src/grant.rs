//! Ed25519 join grants: the token format, signing (used by signaling) and
//! verification (used by the SFU, which holds only the public key).
//!
//! Token: `v1.` + base64url(JSON grant) + `.` + base64url(signature over
//! `v1.<payload_b64>`), both base64 parts without padding.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// Version prefix; bumping it lets a future format be told apart without guessing.
const PREFIX: &str = "v1.";
/// Upper bound on token size, so a hostile client cannot make us decode megabytes.
const MAX_TOKEN_LEN: usize = 2048;
const PUBLIC_KEY_LEN: usize = 32;
const SIGNATURE_LEN: usize = 64;
const MAX_ID_LEN: usize = 64;

/// What a participant is allowed to do in one room, until `expires`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// Unknown fields are refused so a grant never silently carries permissions
// this build does not understand.
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub room: String,
    pub participant: String,
    pub can_publish: bool,
    pub can_subscribe: bool,
    /// Unix seconds; the grant is no longer valid from this second on.
    pub expires: u64,
}

/// Why a grant was refused. Messages carry nothing from the token, so they are
/// safe to log and to send back to the client.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum GrantError {
    #[error("no grant was presented")]
    Missing,
    #[error("grant is malformed")]
    Malformed,
    #[error("grant has expired")]
    Expired,
    #[error("grant signature is not valid")]
    Forged,
    #[error("grant is for another room")]
    WrongRoom,
    #[error("grant key is not valid")]
    Key,
}

impl GrantError {
    /// Stable machine-readable code for signaling replies and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            GrantError::Missing => "grant_missing",
            GrantError::Malformed => "grant_malformed",
            GrantError::Expired => "grant_expired",
            GrantError::Forged => "grant_forged",
            GrantError::WrongRoom => "grant_wrong_room",
            GrantError::Key => "grant_key",
        }
    }
}

/// Holds the private key; lives with signaling, never in the SFU.
pub struct GrantSigner {
    key_pair: Ed25519KeyPair,
    // ring does not hand the document back, so keep it for saving to disk.
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for GrantSigner {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantSigner").finish_non_exhaustive()
    }
}

impl GrantSigner {
    /// A fresh random key pair.
    pub fn generate() -> Result<Self, GrantError> {
        let rng = SystemRandom::new();
        let document = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| GrantError::Key)?;
        Self::from_pkcs8(document.as_ref())
    }

    /// Loads a key pair saved with [`GrantSigner::pkcs8`].
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, GrantError> {
        let key_pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| GrantError::Key)?;
        Ok(Self {
            key_pair,
            pkcs8: pkcs8.to_vec(),
        })
    }

    /// The PKCS#8 document, for saving to disk.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The raw 32-byte public key, which is all the SFU needs.
    pub fn public_key(&self) -> Vec<u8> {
        self.key_pair.public_key().as_ref().to_vec()
    }

    pub fn verifier(&self) -> GrantVerifier {
        let mut public_key = [0u8; PUBLIC_KEY_LEN];
        public_key.copy_from_slice(self.key_pair.public_key().as_ref());
        GrantVerifier { public_key }
    }

    /// Signs `grant` and returns the token.
    pub fn sign(&self, grant: &Grant) -> String {
        // Serializing plain strings, bools and an integer cannot fail; if it
        // somehow did, the empty payload would be refused as Malformed by the
        // verifier rather than granting anything.
        let json = serde_json::to_vec(grant).unwrap_or_default();
        let signed = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json));
        let signature = self.key_pair.sign(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }
}

/// Checks tokens against one public key; cheap to clone into each session.
#[derive(Debug, Clone)]
pub struct GrantVerifier {
    public_key: [u8; PUBLIC_KEY_LEN],
}

impl GrantVerifier {
    /// `public_key` is the raw 32-byte Ed25519 public key.
    pub fn new(public_key: &[u8]) -> Result<Self, GrantError> {
        let public_key: [u8; PUBLIC_KEY_LEN] =
            public_key.try_into().map_err(|_| GrantError::Key)?;
        Ok(Self { public_key })
    }

    /// `token`: None = Missing. `room`: when Some, the grant's room must equal
    /// it (else WrongRoom). `now_unix`: injected clock.
    pub fn verify(
        &self,
        token: Option<&str>,
        room: Option<&str>,
        now_unix: u64,
    ) -> Result<Grant, GrantError> {
        let token = match token {
            Some(t) if !t.is_empty() => t,
            _ => return Err(GrantError::Missing),
        };
        if token.len() > MAX_TOKEN_LEN {
            return Err(GrantError::Malformed);
        }
        let body = token.strip_prefix(PREFIX).ok_or(GrantError::Malformed)?;
        let mut parts = body.split('.');
        let (Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(GrantError::Malformed);
        };
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| GrantError::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .map_err(|_| GrantError::Malformed)?;
        if signature.len() != SIGNATURE_LEN {
            return Err(GrantError::Malformed);
        }

        // Authenticate before parsing: the JSON parser never sees bytes an
        // attacker could choose freely.
        let signed_len = PREFIX.len() + payload_b64.len();
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(&token.as_bytes()[..signed_len], &signature)
            .map_err(|_| GrantError::Forged)?;

        let grant: Grant = serde_json::from_slice(&payload).map_err(|_| GrantError::Malformed)?;
        if !valid_id(&grant.room) || !valid_id(&grant.participant) {
            return Err(GrantError::Malformed);
        }
        if now_unix >= grant.expires {
            return Err(GrantError::Expired);
        }
        if let Some(room) = room
            && room != grant.room
        {
            return Err(GrantError::WrongRoom);
        }
        Ok(grant)
    }
}

/// Ids (room, participant) are 1..=64 chars of [A-Za-z0-9_-]; used by verify
/// and available to callers.
pub fn valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn grant() -> Grant {
        Grant {
            room: "room-1".into(),
            participant: "alice_01".into(),
            can_publish: true,
            can_subscribe: false,
            expires: NOW + 60,
        }
    }

    /// Signs arbitrary payload bytes as a well-formed, correctly signed token,
    /// to reach the checks that run after the signature.
    fn sign_raw(signer: &GrantSigner, payload: &[u8]) -> String {
        let signed = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(payload));
        let sig = signer.key_pair.sign(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    fn setup() -> (GrantSigner, GrantVerifier) {
        let signer = GrantSigner::generate().unwrap();
        let verifier = signer.verifier();
        (signer, verifier)
    }

    #[test]
    fn round_trip() {
        let (signer, verifier) = setup();
        let token = signer.sign(&grant());
        assert!(token.starts_with("v1."));
        assert_eq!(token.matches('.').count(), 2);
        assert_eq!(verifier.verify(Some(&token), None, NOW), Ok(grant()));
        assert_eq!(
            verifier.verify(Some(&token), Some("room-1"), NOW),
            Ok(grant())
        );
    }

    #[test]
    fn verifier_from_public_key_bytes() {
        let (signer, _) = setup();
        let public = signer.public_key();
        assert_eq!(public.len(), 32);
        let verifier = GrantVerifier::new(&public).unwrap();
        let token = signer.sign(&grant());
        assert_eq!(verifier.verify(Some(&token), None, NOW), Ok(grant()));
    }

    #[test]
    fn missing() {
        let (_, verifier) = setup();
        assert_eq!(verifier.verify(None, None, NOW), Err(GrantError::Missing));
        assert_eq!(
            verifier.verify(Some(""), None, NOW),
            Err(GrantError::Missing)
        );
    }

    #[test]
    fn other_key_is_forged() {
        let (signer, _) = setup();
        let (_, other_verifier) = setup();
        let token = signer.sign(&grant());
        assert_eq!(
            other_verifier.verify(Some(&token), None, NOW),
            Err(GrantError::Forged)
        );
    }

    #[test]
    fn flipped_payload_byte_is_forged() {
        let (signer, verifier) = setup();
        let token = signer.sign(&grant());
        let parts: Vec<&str> = token.split('.').collect();
        let mut payload = URL_SAFE_NO_PAD.decode(parts[1]).unwrap();
        // Still valid JSON-ish bytes, but the signature check must catch it first.
        payload[5] ^= 0x01;
        let tampered = format!("v1.{}.{}", URL_SAFE_NO_PAD.encode(&payload), parts[2]);
        assert_eq!(
            verifier.verify(Some(&tampered), None, NOW),
            Err(GrantError::Forged)
        );
    }

    #[test]
    fn escalated_grant_with_old_signature_is_forged() {
        let (signer, verifier) = setup();
        let token = signer.sign(&grant());
        let sig = token.rsplit('.').next().unwrap();
        let mut better = grant();
        better.can_subscribe = true;
        let json = serde_json::to_vec(&better).unwrap();
        let tampered = format!("v1.{}.{sig}", URL_SAFE_NO_PAD.encode(json));
        assert_eq!(
            verifier.verify(Some(&tampered), None, NOW),
            Err(GrantError::Forged)
        );
    }

    #[test]
    fn flipped_signature_byte_is_forged() {
        let (signer, verifier) = setup();
        let token = signer.sign(&grant());
        let (signed, sig_b64) = token.rsplit_once('.').unwrap();
        let mut sig = URL_SAFE_NO_PAD.decode(sig_b64).unwrap();
        sig[10] ^= 0x80;
        let tampered = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig));
        assert_eq!(
            verifier.verify(Some(&tampered), None, NOW),
            Err(GrantError::Forged)
        );
    }

    #[test]
    fn truncated_is_malformed() {
        let (signer, verifier) = setup();
        let token = signer.sign(&grant());
        // Dropping the last chars shortens the signature below 64 bytes.
        let short = &token[..token.len() - 4];
        assert_eq!(
            verifier.verify(Some(short), None, NOW),
            Err(GrantError::Malformed)
        );
        // Cut inside the payload: only two parts remain.
        let cut = &token[..10];
        assert_eq!(
            verifier.verify(Some(cut), None, NOW),
            Err(GrantError::Malformed)
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let (signer, verifier) = setup();
        let token = signer.sign(&grant());
        let body = token.strip_prefix("v1.").unwrap();
        let cases = [
            "garbage".to_string(),
            "v1.".to_string(),
            "v1..".to_string(),
            "v1.a.b.c".to_string(),
            format!("v2.{body}"),
            format!("{token}.extra"),
            format!("v1.!!!!.{}", body.split('.').nth(1).unwrap()),
            format!("v1.{}.***", body.split('.').next().unwrap()),
            "v1.".to_string() + &"A".repeat(3000),
        ];
        for case in &cases {
            assert_eq!(
                verifier.verify(Some(case), None, NOW),
                Err(GrantError::Malformed),
                "case {case:?}"
            );
        }
    }

    #[test]
    fn too_long_is_malformed_even_if_signed() {
        let (signer, verifier) = setup();
        let mut g = grant();
        g.participant = "p".repeat(2000);
        let token = signer.sign(&g);
        assert!(token.len() > MAX_TOKEN_LEN);
        assert_eq!(
            verifier.verify(Some(&token), None, NOW),
            Err(GrantError::Malformed)
        );
    }

    #[test]
    fn signed_but_not_a_grant_is_malformed() {
        let (signer, verifier) = setup();
        let unknown_field = br#"{"room":"r","participant":"p","can_publish":true,"can_subscribe":true,"expires":9999999999,"admin":true}"#;
        let missing_field =
            br#"{"room":"r","participant":"p","can_publish":true,"expires":9999999999}"#;
        for payload in [
            &b"not json"[..],
            &b""[..],
            &b"[]"[..],
            &unknown_field[..],
            &missing_field[..],
        ] {
            let token = sign_raw(&signer, payload);
            assert_eq!(
                verifier.verify(Some(&token), None, NOW),
                Err(GrantError::Malformed),
                "payload {:?}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn invalid_ids_are_malformed() {
        let (signer, verifier) = setup();
        for (room, participant) in [
            ("", "alice"),
            ("room", ""),
            ("room 1", "alice"),
            ("room", "al/ice"),
            ("röom", "alice"),
        ] {
            let mut g = grant();
            g.room = room.into();
            g.participant = participant.into();
            let token = signer.sign(&g);
            assert_eq!(
                verifier.verify(Some(&token), None, NOW),
                Err(GrantError::Malformed),
                "{room:?}/{participant:?}"
            );
        }
    }

    #[test]
    fn expiry_boundary() {
        let (signer, verifier) = setup();
        let token = signer.sign(&grant());
        let expires = grant().expires;
        assert!(verifier.verify(Some(&token), None, expires - 1).is_ok());
        assert_eq!(
            verifier.verify(Some(&token), None, expires),
            Err(GrantError::Expired)
        );
        assert_eq!(
            verifier.verify(Some(&token), None, expires + 1000),
            Err(GrantError::Expired)
        );
    }

    #[test]
    fn wrong_room() {
        let (signer, verifier) = setup();
        let token = signer.sign(&grant());
        assert_eq!(
            verifier.verify(Some(&token), Some("room-2"), NOW),
            Err(GrantError::WrongRoom)
        );
        // Expiry is reported before the room, so an old token reveals nothing more.
        assert_eq!(
            verifier.verify(Some(&token), Some("room-2"), NOW + 3600),
            Err(GrantError::Expired)
        );
    }

    #[test]
    fn pkcs8_round_trip() {
        let (signer, _) = setup();
        let restored = GrantSigner::from_pkcs8(signer.pkcs8()).unwrap();
        assert_eq!(restored.public_key(), signer.public_key());
        let token = restored.sign(&grant());
        assert_eq!(
            signer.verifier().verify(Some(&token), None, NOW),
            Ok(grant())
        );
    }

    #[test]
    fn bad_keys() {
        assert_eq!(
            GrantSigner::from_pkcs8(b"not a key").unwrap_err(),
            GrantError::Key
        );
        assert_eq!(GrantVerifier::new(&[0u8; 31]).unwrap_err(), GrantError::Key);
        assert_eq!(GrantVerifier::new(&[0u8; 33]).unwrap_err(), GrantError::Key);
        assert!(GrantVerifier::new(&[0u8; 32]).is_ok());
    }

    #[test]
    fn valid_id_rules() {
        assert!(valid_id("a"));
        assert!(valid_id("Room_1-b"));
        assert!(valid_id(&"x".repeat(64)));
        assert!(!valid_id(&"x".repeat(65)));
        assert!(!valid_id(""));
        assert!(!valid_id("a.b"));
        assert!(!valid_id("a b"));
        assert!(!valid_id("é"));
    }

    #[test]
    fn codes_and_messages() {
        let all = [
            (GrantError::Missing, "grant_missing"),
            (GrantError::Malformed, "grant_malformed"),
            (GrantError::Expired, "grant_expired"),
            (GrantError::Forged, "grant_forged"),
            (GrantError::WrongRoom, "grant_wrong_room"),
            (GrantError::Key, "grant_key"),
        ];
        for (error, code) in all {
            assert_eq!(error.code(), code);
            let message = error.to_string();
            assert!(!message.is_empty() && message.len() < 40, "{message}");
        }
    }
}
