//! How many messages one WebSocket may send: a token bucket per connection, so a
//! flooding client is slowed with a typed error while its room stays healthy. Pure:
//! the caller passes the time in. And how many WebSockets one address may hold open
//! ([`SocketQuota`]), so one machine cannot tie up sockets and memory for everyone.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Messages per second a connection may sustain.
pub const MESSAGES_PER_SECOND: f64 = 50.0;
/// Messages a connection may send in one burst (a join with a burst of ICE candidates).
pub const BURST: f64 = 200.0;
/// At most one `rate_limited` reply per this interval, so refusing costs little.
pub const REPLY_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct MessageQuota {
    tokens: f64,
    last: Instant,
    last_reply: Option<Instant>,
}

/// What to do with one incoming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Drop it and tell the client.
    RefuseAndReply,
    /// Drop it silently (already told within [`REPLY_INTERVAL`]).
    Refuse,
}

impl MessageQuota {
    pub fn new(now: Instant) -> Self {
        MessageQuota {
            tokens: BURST,
            last: now,
            last_reply: None,
        }
    }

    pub fn check(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * MESSAGES_PER_SECOND).min(BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        match self.last_reply {
            Some(t) if now.saturating_duration_since(t) < REPLY_INTERVAL => Verdict::Refuse,
            _ => {
                self.last_reply = Some(now);
                Verdict::RefuseAndReply
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_pass_floods_are_refused_then_recover() {
        let t0 = Instant::now();
        let mut q = MessageQuota::new(t0);
        for _ in 0..BURST as usize {
            assert_eq!(q.check(t0), Verdict::Allow);
        }
        assert_eq!(q.check(t0), Verdict::RefuseAndReply);
        assert_eq!(q.check(t0), Verdict::Refuse);
        // 100 ms later five tokens have come back.
        let t1 = t0 + Duration::from_millis(100);
        for _ in 0..5 {
            assert_eq!(q.check(t1), Verdict::Allow);
        }
        assert_eq!(q.check(t1), Verdict::Refuse);
        let t2 = t0 + Duration::from_millis(1100);
        assert_eq!(q.check(t2), Verdict::Allow);
    }

    #[test]
    fn steady_traffic_under_the_rate_always_passes() {
        let t0 = Instant::now();
        let mut q = MessageQuota::new(t0);
        for i in 0..10_000u64 {
            let t = t0 + Duration::from_millis(25 * i); // 40 per second
            assert_eq!(q.check(t), Verdict::Allow);
        }
    }
}

/// Open WebSockets per client address: IPv4 as is, IPv6 by its /64 (one subscriber
/// usually holds a whole /64). Addresses are kept only while they have a socket open.
pub struct SocketQuota {
    max: usize,
    open: OpenSockets,
}

/// Open sockets by address group; shared with the permits that give them back.
type OpenSockets = Arc<Mutex<HashMap<u128, usize>>>;

/// One open socket's place in its address's count; given back when dropped.
pub struct SocketPermit {
    slot: Option<(OpenSockets, u128)>,
}

/// The address already holds as many sockets as allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManySockets;

fn address_group(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4)),
            // Tagged so that no /64 can collide with an IPv4 address.
            None => (u128::from(v6) >> 64) | (1 << 127),
        },
    }
}

fn lock(open: &Mutex<HashMap<u128, usize>>) -> std::sync::MutexGuard<'_, HashMap<u128, usize>> {
    open.lock().unwrap_or_else(|e| e.into_inner())
}

impl SocketQuota {
    /// At most `max` sockets per address; 0 = no cap.
    pub fn new(max: usize) -> Self {
        SocketQuota {
            max,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Counts a new socket from `ip`, or refuses it. An unspecified address (served
    /// without connection information, as in-process tests are) is not counted.
    pub fn try_open(&self, ip: IpAddr) -> Result<SocketPermit, TooManySockets> {
        if self.max == 0 || ip.is_unspecified() {
            return Ok(SocketPermit { slot: None });
        }
        let key = address_group(ip);
        let mut open = lock(&self.open);
        let count = open.entry(key).or_insert(0);
        if *count >= self.max {
            return Err(TooManySockets);
        }
        *count += 1;
        Ok(SocketPermit {
            slot: Some((self.open.clone(), key)),
        })
    }

    /// Sockets `ip`'s address group holds open now.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        lock(&self.open)
            .get(&address_group(ip))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for SocketPermit {
    fn drop(&mut self) {
        if let Some((open, key)) = self.slot.take() {
            let mut open = lock(&open);
            if let Some(count) = open.get_mut(&key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    open.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod socket_tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn sockets_are_capped_per_address_and_given_back() {
        let quota = SocketQuota::new(2);
        let a = quota.try_open(ip("192.0.2.1")).unwrap();
        let _b = quota.try_open(ip("192.0.2.1")).unwrap();
        assert_eq!(quota.try_open(ip("192.0.2.1")).err(), Some(TooManySockets));
        // Another address has its own count; the same address mapped into IPv6 does not.
        assert!(quota.try_open(ip("192.0.2.2")).is_ok());
        assert!(quota.try_open(ip("::ffff:192.0.2.1")).is_err());
        drop(a);
        assert_eq!(quota.open_from(ip("192.0.2.1")), 1);
        let _c = quota.try_open(ip("192.0.2.1")).unwrap();
        // IPv6: one /64 shares one count.
        let _d = quota.try_open(ip("2001:db8:1:2::1")).unwrap();
        let _e = quota.try_open(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert!(quota.try_open(ip("2001:db8:1:2::3")).is_err());
        assert!(quota.try_open(ip("2001:db8:1:3::1")).is_ok());
    }

    #[test]
    fn a_closed_address_is_forgotten_and_zero_means_no_cap() {
        let quota = SocketQuota::new(1);
        drop(quota.try_open(ip("198.51.100.7")).unwrap());
        assert!(lock(&quota.open).is_empty());
        let open = SocketQuota::new(0);
        let held: Vec<_> = (0..500)
            .map(|_| open.try_open(ip("198.51.100.7")).unwrap())
            .collect();
        assert_eq!(held.len(), 500);
        assert_eq!(open.open_from(ip("198.51.100.7")), 0);
    }
}
