//! SSRC, sequence number and timestamp rewriting for one forwarded stream.
//!
//! One [`SequenceRewriter`] per (subscriber, forwarded track): the subscriber
//! sees one SSRC with contiguous sequence numbers and monotonic timestamps,
//! even when the SFU switches the source between simulcast layers, each of
//! which has its own SSRC, sequence space and timestamp base.

use std::time::{Duration, Instant};

/// After this many packets past a switch point, the "older than the switch"
/// check is retired: beyond it, 16-bit comparisons against the switch point
/// would start to give wrong answers, and no pre-switch packet is still in
/// flight anyway.
const SWITCH_GUARD_PACKETS: u16 = 0x4000;

/// How long a source we switched away from is remembered, so that its late
/// packets are dropped instead of being read as a switch back. Kept short:
/// its sequence numbers must not have moved far enough for a 16-bit
/// comparison to wrap.
const RETIRED_TTL: Duration = Duration::from_secs(3);

/// Simulcast has at most a handful of layers; this bounds memory regardless.
const MAX_RETIRED: usize = 4;

/// Largest timestamp step on a switch; a bigger one would read as a step
/// backwards under RFC 3550's modular comparison.
const MAX_TS_STEP: u64 = i32::MAX as u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    pub ssrc: u32,
    pub sequence_number: u16,
    pub timestamp: u32,
}

#[derive(Debug, Clone, Copy)]
struct Current {
    source_ssrc: u32,
    seq_offset: u16,
    ts_offset: u32,
    /// Highest source sequence number forwarded from this source.
    highest_in_seq: u16,
    /// Out timestamp of that packet, and when it arrived.
    highest_out_ts: u32,
    highest_at: Instant,
    /// Source sequence number of the first packet after a switch to this
    /// source; older packets would reuse out sequence numbers already sent.
    switch_seq: Option<u16>,
}

#[derive(Debug, Clone, Copy)]
struct Retired {
    ssrc: u32,
    highest_in_seq: u16,
    at: Instant,
}

/// Maps packets from whichever source is current onto one outgoing stream.
#[derive(Debug, Clone)]
pub struct SequenceRewriter {
    out_ssrc: u32,
    clock_rate: u32,
    current: Option<Current>,
    retired: Vec<Retired>,
}

impl SequenceRewriter {
    pub fn new(out_ssrc: u32, clock_rate: u32) -> Self {
        Self {
            out_ssrc,
            clock_rate,
            current: None,
            retired: Vec::new(),
        }
    }

    pub fn out_ssrc(&self) -> u32 {
        self.out_ssrc
    }

    /// `now` is the packet's arrival time (injected; the module never reads a
    /// clock). Returns None for a packet that must be dropped.
    ///
    /// A packet from a source other than the current one is taken as a layer
    /// switch (the caller switches only at a key frame), unless it is a late
    /// packet from a source switched away from within the last few seconds
    /// and not newer than the last one forwarded from it: that is dropped.
    pub fn rewrite(
        &mut self,
        source_ssrc: u32,
        sequence_number: u16,
        timestamp: u32,
        now: Instant,
    ) -> Option<Rewritten> {
        let Some(cur) = self.current.as_mut() else {
            // First packet ever: identity mapping.
            self.current = Some(Current {
                source_ssrc,
                seq_offset: 0,
                ts_offset: 0,
                highest_in_seq: sequence_number,
                highest_out_ts: timestamp,
                highest_at: now,
                switch_seq: None,
            });
            return Some(self.out(sequence_number, timestamp));
        };

        if cur.source_ssrc == source_ssrc {
            let delta = sequence_number.wrapping_sub(cur.highest_in_seq) as i16;
            if delta <= 0
                && let Some(switch_seq) = cur.switch_seq
            {
                let behind = delta.unsigned_abs();
                let since_switch = cur.highest_in_seq.wrapping_sub(switch_seq);
                if behind > since_switch {
                    return None;
                }
            }
            let seq = sequence_number.wrapping_add(cur.seq_offset);
            let ts = timestamp.wrapping_add(cur.ts_offset);
            if delta > 0 {
                cur.highest_in_seq = sequence_number;
                cur.highest_out_ts = ts;
                cur.highest_at = now;
                if let Some(switch_seq) = cur.switch_seq
                    && sequence_number.wrapping_sub(switch_seq) >= SWITCH_GUARD_PACKETS
                {
                    cur.switch_seq = None;
                }
            }
            return Some(self.out(seq, ts));
        }

        self.retired
            .retain(|r| now.saturating_duration_since(r.at) < RETIRED_TTL);
        if let Some(r) = self.retired.iter().find(|r| r.ssrc == source_ssrc)
            && !seq_newer(sequence_number, r.highest_in_seq)
        {
            return None;
        }

        // Layer switch: continue the outgoing stream right after its highest packet.
        let highest_out_seq = cur.highest_in_seq.wrapping_add(cur.seq_offset);
        let out_seq = highest_out_seq.wrapping_add(1);
        let out_ts = cur.highest_out_ts.wrapping_add(elapsed_ticks(
            self.clock_rate,
            now.saturating_duration_since(cur.highest_at),
        ));

        let old = Retired {
            ssrc: cur.source_ssrc,
            highest_in_seq: cur.highest_in_seq,
            at: now,
        };
        *cur = Current {
            source_ssrc,
            seq_offset: out_seq.wrapping_sub(sequence_number),
            ts_offset: out_ts.wrapping_sub(timestamp),
            highest_in_seq: sequence_number,
            highest_out_ts: out_ts,
            highest_at: now,
            switch_seq: Some(sequence_number),
        };
        self.retired
            .retain(|r| r.ssrc != source_ssrc && r.ssrc != old.ssrc);
        if self.retired.len() >= MAX_RETIRED {
            self.retired.remove(0);
        }
        self.retired.push(old);
        Some(self.out(out_seq, out_ts))
    }

    fn out(&self, sequence_number: u16, timestamp: u32) -> Rewritten {
        Rewritten {
            ssrc: self.out_ssrc,
            sequence_number,
            timestamp,
        }
    }
}

/// Media clock ticks for `elapsed`, at least 1 so timestamps strictly
/// increase across a switch.
fn elapsed_ticks(clock_rate: u32, elapsed: Duration) -> u32 {
    let ticks = elapsed.as_nanos() * u128::from(clock_rate) / 1_000_000_000;
    let ticks = u64::try_from(ticks)
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_TS_STEP);
    // In range by the clamp above.
    ticks as u32
}

/// RFC 1982-style comparison: is `a` newer than `b` in 16-bit sequence space.
/// Exactly half the space apart is ambiguous and counts as newer in neither
/// direction.
pub fn seq_newer(a: u16, b: u16) -> bool {
    (a.wrapping_sub(b) as i16) > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: u32 = 0xdead_beef;
    const Q: u32 = 111;
    const H: u32 = 222;
    const F: u32 = 333;

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    fn r(seq: u16, ts: u32) -> Option<Rewritten> {
        Some(Rewritten {
            ssrc: OUT,
            sequence_number: seq,
            timestamp: ts,
        })
    }

    #[test]
    fn identity_at_start() {
        let t0 = Instant::now();
        let mut rw = SequenceRewriter::new(OUT, 90_000);
        assert_eq!(rw.out_ssrc(), OUT);
        assert_eq!(rw.rewrite(Q, 1234, 567_890, t0), r(1234, 567_890));
        assert_eq!(rw.rewrite(Q, 1235, 570_860, ms(t0, 33)), r(1235, 570_860));
    }

    #[test]
    fn gap_and_reorder_preserved() {
        let t0 = Instant::now();
        let mut rw = SequenceRewriter::new(OUT, 90_000);
        assert_eq!(rw.rewrite(Q, 10, 1000, t0), r(10, 1000));
        // 11 and 12 lost (NACK must still see the gap), 13 arrives.
        assert_eq!(rw.rewrite(Q, 13, 4000, t0), r(13, 4000));
        // Late 11 and 12 still map through.
        assert_eq!(rw.rewrite(Q, 12, 4000, t0), r(12, 4000));
        assert_eq!(rw.rewrite(Q, 11, 1000, t0), r(11, 1000));
        // Even older than the first packet: nothing was sent before it.
        assert_eq!(rw.rewrite(Q, 9, 1000, t0), r(9, 1000));
    }

    #[test]
    fn wrap_around_with_offset() {
        let t0 = Instant::now();
        let mut rw = SequenceRewriter::new(OUT, 90_000);
        rw.rewrite(Q, 100, 10, t0);
        // Switch to a source near the wrap in both spaces.
        assert_eq!(rw.rewrite(H, 65_534, u32::MAX - 1, ms(t0, 10)), r(101, 910));
        assert_eq!(rw.rewrite(H, 65_535, u32::MAX, ms(t0, 20)), r(102, 911));
        assert_eq!(rw.rewrite(H, 0, 0, ms(t0, 30)), r(103, 912));
        assert_eq!(rw.rewrite(H, 1, 1, ms(t0, 40)), r(104, 913));
        // Reordered across the wrap is still forwarded, not seen as pre-switch.
        assert_eq!(rw.rewrite(H, 65_535, u32::MAX, ms(t0, 41)), r(102, 911));
    }

    #[test]
    fn output_wraps() {
        let t0 = Instant::now();
        let mut rw = SequenceRewriter::new(OUT, 90_000);
        assert_eq!(rw.rewrite(Q, 65_535, u32::MAX, t0), r(65_535, u32::MAX));
        // Switch right at the wrap of the outgoing stream.
        assert_eq!(rw.rewrite(H, 500, 7, ms(t0, 1)), r(0, 89));
        assert_eq!(rw.rewrite(H, 501, 8, ms(t0, 2)), r(1, 90));
    }

    #[test]
    fn switch_q_h_q_is_contiguous_and_monotonic() {
        let t0 = Instant::now();
        let mut rw = SequenceRewriter::new(OUT, 90_000);
        let mut outs = Vec::new();
        // Each layer has its own sequence space and timestamp base.
        for i in 0..5u16 {
            let t = u64::from(i) * 33;
            let ts = 1_000 + u32::from(i) * 2970;
            outs.push(rw.rewrite(Q, 40_000 + i, ts, ms(t0, t)).unwrap());
        }
        for i in 0..5u16 {
            let t = 165 + u64::from(i) * 33;
            let ts = 3_000_000_000 + u32::from(i) * 2970;
            outs.push(rw.rewrite(H, 7 + i, ts, ms(t0, t)).unwrap());
        }
        for i in 0..5u16 {
            let t = 330 + u64::from(i) * 33;
            let ts = 1_000 + (10 + u32::from(i)) * 2970;
            outs.push(rw.rewrite(Q, 40_010 + i, ts, ms(t0, t)).unwrap());
        }
        for pair in outs.windows(2) {
            assert_eq!(
                pair[1].sequence_number,
                pair[0].sequence_number.wrapping_add(1)
            );
            // Frames here are one packet each, 33 ms apart at 90 kHz, so every
            // step, including both switches, is 2970 ticks.
            assert_eq!(pair[1].timestamp.wrapping_sub(pair[0].timestamp), 2970);
            assert_eq!(pair[1].ssrc, OUT);
        }
        assert_eq!(outs[0].sequence_number, 40_000);
        assert_eq!(outs[14].sequence_number, 40_014);
    }

    #[test]
    fn switch_timestamp_is_at_least_one_tick() {
        let t0 = Instant::now();
        let mut rw = SequenceRewriter::new(OUT, 90_000);
        rw.rewrite(Q, 1, 5_000, t0);
        // Same instant: still strictly after.
        assert_eq!(rw.rewrite(H, 1, 0, t0), r(2, 5_001));
        // 10 µs at 90 kHz is 0.9 ticks: rounds down, then clamps to 1.
        let t1 = t0 + Duration::from_micros(10);
        assert_eq!(rw.rewrite(F, 1, 0, t1), r(3, 5_002));
        // 1 s at 48 kHz for an audio-rate clock.
        let mut audio = SequenceRewriter::new(OUT, 48_000);
        audio.rewrite(Q, 1, 0, t0);
        assert_eq!(audio.rewrite(H, 9, 77, ms(t0, 1000)), r(2, 48_000));
    }

    #[test]
    fn huge_elapsed_time_still_steps_forward() {
        let t0 = Instant::now();
        let mut rw = SequenceRewriter::new(OUT, 90_000);
        rw.rewrite(Q, 1, 0, t0);
        // 20 hours at 90 kHz overflows u32; the step must stay "forward".
        let out = rw
            .rewrite(H, 1, 0, t0 + Duration::from_secs(20 * 3600))
            .unwrap();
        assert_eq!(out.timestamp, i32::MAX as u32);
    }

    #[test]
    fn stale_packets_from_old_layer_are_dropped() {
        let t0 = Instant::now();
        let mut rw = SequenceRewriter::new(OUT, 90_000);
        for i in 0..5u16 {
            rw.rewrite(Q, 100 + i, u32::from(i) * 2970, ms(t0, u64::from(i) * 33));
        }
        assert_eq!(rw.rewrite(H, 900, 50_000, ms(t0, 165)), r(105, 14_850));
        // Late packets of the old layer, including the last one forwarded.
        assert_eq!(rw.rewrite(Q, 104, 11_880, ms(t0, 170)), None);
        assert_eq!(rw.rewrite(Q, 102, 5_940, ms(t0, 171)), None);
        // The new layer carries on undisturbed.
        assert_eq!(rw.rewrite(H, 901, 52_970, ms(t0, 198)), r(106, 17_820));
    }

    #[test]
    fn packet_older_than_switch_point_is_dropped() {
        let t0 = Instant::now();
        let mut rw = SequenceRewriter::new(OUT, 90_000);
        rw.rewrite(Q, 100, 0, t0);
        assert_eq!(rw.rewrite(H, 900, 50_000, ms(t0, 33)), r(101, 2970));
        assert_eq!(rw.rewrite(H, 902, 50_000, ms(t0, 34)), r(103, 2970));
        // 899 would map onto 100, already sent from the old layer.
        assert_eq!(rw.rewrite(H, 899, 47_030, ms(t0, 35)), None);
        // A late packet at or after the switch point is forwarded.
        assert_eq!(rw.rewrite(H, 901, 50_000, ms(t0, 36)), r(102, 2970));
        assert_eq!(rw.rewrite(H, 900, 50_000, ms(t0, 37)), r(101, 2970));
    }

    #[test]
    fn switch_guard_retires_after_many_packets() {
        let t0 = Instant::now();
        let mut rw = SequenceRewriter::new(OUT, 90_000);
        rw.rewrite(Q, 0, 0, t0);
        rw.rewrite(H, 0, 0, ms(t0, 1));
        // Walk a whole sequence cycle: back at the switch point's number, a
        // still-armed guard would read any late packet as pre-switch.
        let mut seq = 0u16;
        for _ in 0..65_536 {
            seq = seq.wrapping_add(1);
            assert!(rw.rewrite(H, seq, 0, ms(t0, 2)).is_some());
        }
        // Reordered by one must still be forwarded, not read as pre-switch.
        let late = seq.wrapping_sub(1);
        assert_eq!(
            rw.rewrite(H, late, 0, ms(t0, 3)).map(|o| o.sequence_number),
            Some(late.wrapping_add(1))
        );
    }

    #[test]
    fn retired_source_is_forgotten_after_ttl() {
        let t0 = Instant::now();
        let mut rw = SequenceRewriter::new(OUT, 90_000);
        rw.rewrite(Q, 100, 0, t0);
        rw.rewrite(H, 5, 0, ms(t0, 10));
        // Long after, Q's counter may sit anywhere; a switch back must work.
        let out = rw.rewrite(Q, 50, 0, ms(t0, 10_000)).unwrap();
        assert_eq!(out.sequence_number, 102);
    }

    #[test]
    fn switch_back_retires_the_other_layer() {
        let t0 = Instant::now();
        let mut rw = SequenceRewriter::new(OUT, 90_000);
        rw.rewrite(Q, 100, 0, t0);
        rw.rewrite(H, 5, 0, ms(t0, 33));
        rw.rewrite(Q, 110, 0, ms(t0, 66));
        // H is now the retired one: its late packets drop, Q continues.
        assert_eq!(rw.rewrite(H, 5, 0, ms(t0, 70)), None);
        assert_eq!(rw.rewrite(Q, 111, 1, ms(t0, 99)), r(103, 5941));
    }

    #[test]
    fn seq_newer_edges() {
        assert!(seq_newer(1, 0));
        assert!(!seq_newer(0, 1));
        assert!(!seq_newer(5, 5));
        assert!(seq_newer(0, 65_535));
        assert!(!seq_newer(65_535, 0));
        assert!(seq_newer(32_767, 0));
        assert!(!seq_newer(0, 32_767));
        // Exactly half apart: newer in neither direction.
        assert!(!seq_newer(32_768, 0));
        assert!(!seq_newer(0, 32_768));
        assert!(seq_newer(100, 100u16.wrapping_sub(32_767)));
        assert!(!seq_newer(100, 100u16.wrapping_sub(32_768)));
    }
}
