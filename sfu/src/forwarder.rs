//! The per-subscriber forwarding decision: which simulcast layer a subscriber gets, when
//! it may switch (only at a key frame), and the header rewrite that keeps its stream
//! contiguous. Pure state machines: no sockets, no clock reads, driven by tests directly.

use std::time::Instant;

use crate::sequence::{Rewritten, SequenceRewriter};
use crate::signal::Layer;

/// Chooses the layer forwarded to one subscriber.
#[derive(Debug, Clone)]
pub struct LayerSelector {
    max: Layer,
    current: Option<Option<Layer>>,
}

/// What to do with one incoming packet for one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Forward,
    /// Forward, and from now on this layer is the one forwarded.
    Switch,
    Drop,
}

impl LayerSelector {
    pub fn new(max: Layer) -> Self {
        LayerSelector { max, current: None }
    }

    pub fn set_max(&mut self, max: Layer) {
        self.max = max;
    }

    pub fn max(&self) -> Layer {
        self.max
    }

    /// The layer now forwarded: `None` before the first key frame, `Some(None)` for a
    /// single-layer track.
    pub fn current(&self) -> Option<Option<Layer>> {
        self.current
    }

    /// The layer this subscriber should be on: the highest available at or below the
    /// cap, or the lowest available when all are above it.
    pub fn target(&self, available: &[Layer]) -> Option<Layer> {
        available
            .iter()
            .copied()
            .filter(|l| *l <= self.max)
            .max()
            .or_else(|| available.iter().copied().min())
    }

    /// Decides for a packet of `layer` (`None` = not simulcast). Video starts and
    /// switches only on a key frame; audio is always forwarded.
    pub fn decide(
        &mut self,
        layer: Option<Layer>,
        keyframe: bool,
        is_video: bool,
        available: &[Layer],
    ) -> Decision {
        let Some(layer_of_packet) = layer else {
            return match self.current {
                Some(_) => Decision::Forward,
                None if !is_video || keyframe => {
                    self.current = Some(None);
                    Decision::Switch
                }
                None => Decision::Drop,
            };
        };
        let target = self.target(available);
        if self.current == Some(Some(layer_of_packet)) {
            return Decision::Forward;
        }
        if target == Some(layer_of_packet) && (keyframe || !is_video) {
            self.current = Some(Some(layer_of_packet));
            return Decision::Switch;
        }
        Decision::Drop
    }

    /// The layer a key frame is needed on, when the subscriber is not yet where it
    /// should be.
    pub fn wants_keyframe(&self, available: &[Layer]) -> Option<Option<Layer>> {
        if available.is_empty() {
            return match self.current {
                None => Some(None),
                Some(_) => None,
            };
        }
        let target = self.target(available)?;
        (self.current != Some(Some(target))).then_some(Some(target))
    }
}

/// Forwarding state of one subscriber for one track: layer choice plus header rewrite.
#[derive(Debug)]
pub struct ForwardState {
    pub selector: LayerSelector,
    rewriter: SequenceRewriter,
}

impl ForwardState {
    pub fn new(out_ssrc: u32, clock_rate: u32, max: Layer) -> Self {
        ForwardState {
            selector: LayerSelector::new(max),
            rewriter: SequenceRewriter::new(out_ssrc, clock_rate),
        }
    }

    /// Full per-packet decision: returns the rewritten SSRC, sequence number and
    /// timestamp to send, or `None` to drop. The payload is never looked at here.
    #[allow(clippy::too_many_arguments)]
    pub fn on_packet(
        &mut self,
        layer: Option<Layer>,
        keyframe: bool,
        is_video: bool,
        available: &[Layer],
        source_ssrc: u32,
        sequence_number: u16,
        timestamp: u32,
        now: Instant,
    ) -> Option<Rewritten> {
        match self.selector.decide(layer, keyframe, is_video, available) {
            Decision::Drop => None,
            Decision::Forward | Decision::Switch => {
                self.rewriter
                    .rewrite(source_ssrc, sequence_number, timestamp, now)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const ALL: &[Layer] = &Layer::ALL;

    #[test]
    fn target_respects_cap_and_availability() {
        let mut s = LayerSelector::new(Layer::Half);
        assert_eq!(s.target(ALL), Some(Layer::Half));
        assert_eq!(
            s.target(&[Layer::Quarter, Layer::Full]),
            Some(Layer::Quarter)
        );
        assert_eq!(s.target(&[Layer::Full]), Some(Layer::Full));
        assert_eq!(s.target(&[]), None);
        s.set_max(Layer::Full);
        assert_eq!(s.target(ALL), Some(Layer::Full));
    }

    #[test]
    fn video_waits_for_key_frame_on_target_layer() {
        let mut s = LayerSelector::new(Layer::Quarter);
        assert_eq!(
            s.decide(Some(Layer::Quarter), false, true, ALL),
            Decision::Drop
        );
        assert_eq!(s.decide(Some(Layer::Full), true, true, ALL), Decision::Drop);
        assert_eq!(s.wants_keyframe(ALL), Some(Some(Layer::Quarter)));
        assert_eq!(
            s.decide(Some(Layer::Quarter), true, true, ALL),
            Decision::Switch
        );
        assert_eq!(
            s.decide(Some(Layer::Quarter), false, true, ALL),
            Decision::Forward
        );
        assert_eq!(s.decide(Some(Layer::Half), true, true, ALL), Decision::Drop);
        assert_eq!(s.wants_keyframe(ALL), None);
    }

    #[test]
    fn raising_the_cap_switches_only_at_a_key_frame() {
        let mut s = LayerSelector::new(Layer::Quarter);
        assert_eq!(
            s.decide(Some(Layer::Quarter), true, true, ALL),
            Decision::Switch
        );
        s.set_max(Layer::Full);
        assert_eq!(s.wants_keyframe(ALL), Some(Some(Layer::Full)));
        // The old layer keeps flowing until the new one has a key frame.
        assert_eq!(
            s.decide(Some(Layer::Quarter), false, true, ALL),
            Decision::Forward
        );
        assert_eq!(
            s.decide(Some(Layer::Full), false, true, ALL),
            Decision::Drop
        );
        assert_eq!(
            s.decide(Some(Layer::Full), true, true, ALL),
            Decision::Switch
        );
        assert_eq!(
            s.decide(Some(Layer::Quarter), false, true, ALL),
            Decision::Drop
        );
        assert_eq!(s.current(), Some(Some(Layer::Full)));
    }

    #[test]
    fn single_layer_audio_and_video() {
        let mut audio = LayerSelector::new(Layer::Full);
        assert_eq!(audio.decide(None, false, false, &[]), Decision::Switch);
        assert_eq!(audio.decide(None, false, false, &[]), Decision::Forward);
        let mut video = LayerSelector::new(Layer::Full);
        assert_eq!(video.wants_keyframe(&[]), Some(None));
        assert_eq!(video.decide(None, false, true, &[]), Decision::Drop);
        assert_eq!(video.decide(None, true, true, &[]), Decision::Switch);
        assert_eq!(video.decide(None, false, true, &[]), Decision::Forward);
        assert_eq!(video.wants_keyframe(&[]), None);
    }

    #[test]
    fn sequence_numbers_stay_contiguous_across_a_switch() {
        let t0 = Instant::now();
        let mut f = ForwardState::new(99, 90_000, Layer::Quarter);
        let mut out = Vec::new();
        // q layer: ssrc 1, seq from 100; f layer: ssrc 3, seq from 5000.
        for i in 0..5u16 {
            let t = t0 + Duration::from_millis(u64::from(i) * 33);
            if let Some(r) = f.on_packet(
                Some(Layer::Quarter),
                i == 0,
                true,
                ALL,
                1,
                100 + i,
                1000 + u32::from(i) * 2970,
                t,
            ) {
                out.push(r);
            }
            assert!(
                f.on_packet(Some(Layer::Full), false, true, ALL, 3, 5000 + i, 7000, t)
                    .is_none()
            );
        }
        f.selector.set_max(Layer::Full);
        let t = t0 + Duration::from_millis(200);
        assert!(
            f.on_packet(Some(Layer::Full), false, true, ALL, 3, 5005, 9000, t)
                .is_none()
        );
        let r = f.on_packet(Some(Layer::Full), true, true, ALL, 3, 5006, 9000, t);
        out.extend(r);
        let r = f.on_packet(Some(Layer::Full), false, true, ALL, 3, 5007, 9000, t);
        out.extend(r);
        assert_eq!(out.len(), 7);
        for pair in out.windows(2) {
            assert_eq!(
                pair[1].sequence_number,
                pair[0].sequence_number.wrapping_add(1)
            );
            assert!(pair[1].timestamp >= pair[0].timestamp);
            assert_eq!(pair[1].ssrc, 99);
        }
    }
}
