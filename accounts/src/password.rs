//! Passwords: what is accepted, and how it is kept — argon2id with OWASP's parameters
//! (19 MiB, two passes, one lane) as a PHC string, rehashed at log-in when the
//! parameters change. The password itself is never stored, logged or returned.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

/// Shortest accepted password, in characters.
pub const MIN_CHARS: usize = 10;
/// Longest accepted password, in bytes: hashing cost must not be the attacker's choice.
pub const MAX_BYTES: usize = 1024;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// Memory in KiB.
    pub memory_kib: u32,
    pub passes: u32,
    pub lanes: u32,
}

impl Cost {
    /// OWASP's recommendation for argon2id.
    pub const OWASP: Cost = Cost {
        memory_kib: 19 * 1024,
        passes: 2,
        lanes: 1,
    };
}

impl Default for Cost {
    fn default() -> Self {
        Cost::OWASP
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PasswordError {
    #[error("a password needs at least {MIN_CHARS} characters")]
    TooShort,
    #[error("a password is at most {MAX_BYTES} bytes")]
    TooLong,
    #[error(
        "the password is too easy to guess: use more than one kind of character or a longer phrase"
    )]
    TooWeak,
    #[error("password hashing failed")]
    Hashing,
}

impl PasswordError {
    /// Stable code for API errors.
    pub fn code(&self) -> &'static str {
        match self {
            PasswordError::TooShort | PasswordError::TooWeak => "weak_password",
            PasswordError::TooLong => "password_too_long",
            PasswordError::Hashing => "internal",
        }
    }
}

/// Refuses passwords that are too short, too long, a single repeated or sequential run,
/// or short strings of digits. Long passphrases of plain words pass: length beats
/// character classes.
pub fn check(password: &str) -> Result<(), PasswordError> {
    if password.len() > MAX_BYTES {
        return Err(PasswordError::TooLong);
    }
    let chars: Vec<char> = password.chars().collect();
    if chars.len() < MIN_CHARS {
        return Err(PasswordError::TooShort);
    }
    let distinct = {
        let mut c = chars.clone();
        c.sort_unstable();
        c.dedup();
        c.len()
    };
    let sequential = chars
        .windows(2)
        .all(|w| (w[1] as i64 - w[0] as i64).abs() <= 1);
    // Digits alone are dates, phone numbers and PINs unless they are long.
    let short_digits = chars.len() < 16 && chars.iter().all(char::is_ascii_digit);
    if distinct < 4 || sequential || short_digits {
        return Err(PasswordError::TooWeak);
    }
    Ok(())
}

fn hasher(cost: Cost) -> Result<Argon2<'static>, PasswordError> {
    let params = Params::new(cost.memory_kib, cost.passes, cost.lanes, None)
        .map_err(|_| PasswordError::Hashing)?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes an accepted password into a PHC string with a fresh random salt.
pub fn hash(password: &str, cost: Cost) -> Result<String, PasswordError> {
    check(password)?;
    hasher(cost)?
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|_| PasswordError::Hashing)
}

/// Whether `password` matches the stored PHC string (with the parameters stored in it).
/// A malformed stored string never matches.
pub fn verify(password: &str, stored: &str) -> bool {
    if password.len() > MAX_BYTES {
        return false;
    }
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// Whether a stored hash was made with other parameters than `cost` (or another
/// algorithm), so it should be replaced at the next successful log-in.
pub fn needs_rehash(stored: &str, cost: Cost) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return true;
    };
    if parsed.algorithm.as_str() != "argon2id" {
        return true;
    }
    match Params::try_from(&parsed) {
        Ok(p) => (p.m_cost(), p.t_cost(), p.p_cost()) != (cost.memory_kib, cost.passes, cost.lanes),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters so the suite stays fast; one test uses the real ones.
    const CHEAP: Cost = Cost {
        memory_kib: 64,
        passes: 1,
        lanes: 1,
    };

    #[test]
    fn weak_and_huge_passwords_are_refused() {
        assert_eq!(check("short1!"), Err(PasswordError::TooShort));
        assert_eq!(check("aaaaaaaaaaaa"), Err(PasswordError::TooWeak));
        assert_eq!(check("abcdefghijkl"), Err(PasswordError::TooWeak));
        assert_eq!(check("123456789012"), Err(PasswordError::TooWeak));
        assert_eq!(check(&"x9".repeat(MAX_BYTES)), Err(PasswordError::TooLong));
        assert!(check("correct horse battery staple").is_ok());
        assert!(check("Tr0ub4dor&3x").is_ok());
        assert_eq!(PasswordError::TooWeak.code(), "weak_password");
    }

    #[test]
    fn hashes_verify_and_never_contain_the_password() {
        let stored = hash("correct horse battery staple", CHEAP).unwrap();
        assert!(
            stored.starts_with("$argon2id$v=19$m=64,t=1,p=1$"),
            "{stored}"
        );
        assert!(!stored.contains("horse"));
        assert!(verify("correct horse battery staple", &stored));
        assert!(!verify("correct horse battery stapler", &stored));
        assert!(!verify("anything", "not a phc string"));
        // Same password, fresh salt: different strings.
        assert_ne!(stored, hash("correct horse battery staple", CHEAP).unwrap());
    }

    #[test]
    fn changed_parameters_call_for_a_rehash() {
        let stored = hash("correct horse battery staple", CHEAP).unwrap();
        assert!(!needs_rehash(&stored, CHEAP));
        assert!(needs_rehash(&stored, Cost::OWASP));
        assert!(needs_rehash(
            "$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
            CHEAP
        ));
        assert!(needs_rehash("garbage", CHEAP));
    }

    #[test]
    fn owasp_parameters_are_the_default() {
        let stored = hash("correct horse battery staple", Cost::default()).unwrap();
        assert!(
            stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{stored}"
        );
        assert!(verify("correct horse battery staple", &stored));
        assert!(!needs_rehash(&stored, Cost::OWASP));
    }
}
