//! Secrets handed to a person (session cookies, e-mail links) and the ids of accounts:
//! 256-bit random values for secrets, kept server-side only as SHA-256 hashes, so a
//! copy of the database cannot be used to log in or to verify anyone's e-mail.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};

#[derive(Debug, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct RandomError;

fn random<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| RandomError)?;
    Ok(bytes)
}

/// A fresh 256-bit secret, base64url (43 characters).
pub fn secret() -> Result<String, RandomError> {
    Ok(URL_SAFE_NO_PAD.encode(random::<32>()?))
}

/// A fresh 128-bit account id, base64url (22 characters).
pub fn account_id() -> Result<String, RandomError> {
    Ok(URL_SAFE_NO_PAD.encode(random::<16>()?))
}

/// What is stored for a secret: its SHA-256, hex.
pub fn hashed(secret: &str) -> String {
    digest(&SHA256, secret.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `value` has the shape of a secret from [`secret`] (checked before any
/// lookup, so junk never reaches the database).
pub fn well_formed(value: &str) -> bool {
    value.len() == 43
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_distinct_well_formed_and_hashed() {
        let a = secret().unwrap();
        let b = secret().unwrap();
        assert_ne!(a, b);
        assert!(well_formed(&a));
        assert!(!well_formed("short"));
        assert!(!well_formed(&format!("{}!", &a[..42])));
        assert_eq!(hashed(&a).len(), 64);
        assert_ne!(hashed(&a), a);
        assert_eq!(account_id().unwrap().len(), 22);
    }
}
