//! Abuse limits on sign-up, log-in, verification and password reset, per client
//! address and per email, held in memory only: an address is reduced to a bucket key
//! (IPv4 as is, IPv6 by its /64) that lives only as long as its bucket and is never
//! written anywhere (P2). Pure: the caller passes the time in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// What a limit guards; each action has its own budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    SignUp,
    LogIn,
    Verify,
    PasswordReset,
}

/// A budget: `burst` attempts at once, one more every `refill`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub burst: u32,
    pub refill: Duration,
}

impl Action {
    /// Budgets per client address and per email. Log-in is the tightest per email,
    /// so guessing one person's password is slow from anywhere.
    pub fn budgets(self) -> (Budget, Budget) {
        let per = |burst, secs| Budget {
            burst,
            refill: Duration::from_secs(secs),
        };
        match self {
            Action::SignUp => (per(5, 600), per(3, 3600)),
            Action::LogIn => (per(20, 30), per(5, 60)),
            Action::Verify => (per(20, 30), per(10, 60)),
            Action::PasswordReset => (per(5, 600), per(3, 3600)),
        }
    }
}

/// Whom a bucket counts. Never stored or logged.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    V4(u32),
    /// The first 64 bits of an IPv6 address.
    V6Prefix(u64),
    /// An email, normalised (trimmed, lowercase).
    Email(String),
}

fn address_key(ip: IpAddr) -> Key {
    match ip {
        IpAddr::V4(v4) => Key::V4(u32::from(v4)),
        // One subscriber usually holds a whole /64; counting addresses inside it
        // separately would make the limit trivial to sidestep.
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Key::V4(u32::from(v4)),
            None => Key::V6Prefix((u128::from(v6) >> 64) as u64),
        },
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The answer to one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Refused; the `Retry-After` to send.
    Limited {
        retry_after: Duration,
    },
}

/// Token buckets per (action, address) and (action, email).
#[derive(Debug, Default)]
pub struct RateLimits {
    buckets: HashMap<(Action, Key), Bucket>,
}

impl RateLimits {
    pub fn new() -> Self {
        RateLimits::default()
    }

    /// Counts one attempt of `action` from `ip` (and for `email`, when the request
    /// names one). Both budgets must allow it; a refused attempt costs nothing.
    pub fn check(
        &mut self,
        action: Action,
        ip: IpAddr,
        email: Option<&str>,
        now: Instant,
    ) -> Verdict {
        let (per_address, per_email) = action.budgets();
        let mut keys = vec![((action, address_key(ip)), per_address)];
        if let Some(email) = email {
            keys.push(((action, Key::Email(email.trim().to_lowercase())), per_email));
        }
        let mut wait = Duration::ZERO;
        for (key, budget) in &keys {
            let bucket = self.refreshed(key, *budget, now);
            if bucket.tokens < 1.0 {
                let missing = 1.0 - bucket.tokens;
                wait = wait.max(budget.refill.mul_f64(missing));
            }
        }
        if wait > Duration::ZERO {
            // Whole seconds, rounded up: what Retry-After can say.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Verdict::Limited {
                retry_after: Duration::from_secs(secs.max(1)),
            };
        }
        for (key, _) in keys {
            if let Some(bucket) = self.buckets.get_mut(&key) {
                bucket.tokens -= 1.0;
            }
        }
        Verdict::Allowed
    }

    fn refreshed(&mut self, key: &(Action, Key), budget: Budget, now: Instant) -> Bucket {
        let bucket = self.buckets.entry(key.clone()).or_insert(Bucket {
            tokens: f64::from(budget.burst),
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        let rate = 1.0 / budget.refill.as_secs_f64().max(f64::MIN_POSITIVE);
        bucket.tokens = (bucket.tokens + elapsed * rate).min(f64::from(budget.burst));
        bucket.last = now;
        *bucket
    }

    /// Forgets buckets that are full again (they hold no information), so memory
    /// stays bounded by recent activity.
    pub fn sweep(&mut self, now: Instant) {
        self.buckets.retain(|(action, key), bucket| {
            let (per_address, per_email) = action.budgets();
            let budget = match key {
                Key::V4(_) | Key::V6Prefix(_) => per_address,
                Key::Email(_) => per_email,
            };
            let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
            let refilled = bucket.tokens + elapsed / budget.refill.as_secs_f64();
            refilled < f64::from(budget.burst)
        });
    }

    /// Buckets held (for tests and a gauge).
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn login_is_limited_per_email_from_any_address() {
        let t0 = Instant::now();
        let mut limits = RateLimits::new();
        for i in 0..5 {
            let from = ip(&format!("198.51.100.{i}"));
            assert_eq!(
                limits.check(Action::LogIn, from, Some("Ann@Example.org"), t0),
                Verdict::Allowed
            );
        }
        // A sixth guess, from yet another address and another spelling: refused.
        let v = limits.check(
            Action::LogIn,
            ip("203.0.113.9"),
            Some(" ann@example.ORG"),
            t0,
        );
        assert_eq!(
            v,
            Verdict::Limited {
                retry_after: Duration::from_secs(60)
            }
        );
        // Another person is unaffected.
        assert_eq!(
            limits.check(Action::LogIn, ip("203.0.113.9"), Some("bo@example.org"), t0),
            Verdict::Allowed
        );
        // A minute later one more attempt is allowed.
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(
            limits.check(
                Action::LogIn,
                ip("203.0.113.9"),
                Some("ann@example.org"),
                t1
            ),
            Verdict::Allowed
        );
    }

    #[test]
    fn ipv6_counts_by_slash_64() {
        let t0 = Instant::now();
        let mut limits = RateLimits::new();
        for i in 0..5 {
            let from = ip(&format!("2001:db8:1:2::{i:x}"));
            assert_eq!(
                limits.check(Action::SignUp, from, None, t0),
                Verdict::Allowed
            );
        }
        // Same /64, different host bits: the same budget.
        assert!(matches!(
            limits.check(Action::SignUp, ip("2001:db8:1:2:ffff::1"), None, t0),
            Verdict::Limited { .. }
        ));
        // Next /64: a budget of its own.
        assert_eq!(
            limits.check(Action::SignUp, ip("2001:db8:1:3::1"), None, t0),
            Verdict::Allowed
        );
        // An IPv4-mapped address is the IPv4 address.
        assert_eq!(
            address_key(ip("::ffff:192.0.2.1")),
            address_key(ip("192.0.2.1"))
        );
        assert_ne!(address_key(ip("::c000:201")), address_key(ip("192.0.2.1")));
    }

    #[test]
    fn refused_attempts_cost_nothing_and_actions_are_separate() {
        let t0 = Instant::now();
        let mut limits = RateLimits::new();
        let from = ip("192.0.2.7");
        for _ in 0..5 {
            assert_eq!(
                limits.check(Action::SignUp, from, None, t0),
                Verdict::Allowed
            );
        }
        for _ in 0..100 {
            assert!(matches!(
                limits.check(Action::SignUp, from, None, t0),
                Verdict::Limited { .. }
            ));
        }
        // One refill period later exactly one attempt is back, despite the refusals.
        let later = t0 + Duration::from_secs(600);
        assert_eq!(
            limits.check(Action::SignUp, from, None, later),
            Verdict::Allowed
        );
        assert!(matches!(
            limits.check(Action::SignUp, from, None, later),
            Verdict::Limited { .. }
        ));
        assert_eq!(
            limits.check(Action::LogIn, from, None, later),
            Verdict::Allowed
        );
    }

    #[test]
    fn full_buckets_are_forgotten() {
        let t0 = Instant::now();
        let mut limits = RateLimits::new();
        limits.check(Action::LogIn, ip("192.0.2.1"), Some("a@example.org"), t0);
        assert_eq!(limits.len(), 2);
        limits.sweep(t0 + Duration::from_secs(1));
        assert_eq!(limits.len(), 2);
        limits.sweep(t0 + Duration::from_secs(3600));
        assert!(limits.is_empty());
    }
}
