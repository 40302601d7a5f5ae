//! How many messages one WebSocket may send: a token bucket per connection, so a
//! flooding client is slowed with a typed error while its room stays healthy. Pure:
//! the caller passes the time in.

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
