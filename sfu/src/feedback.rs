//! Which inbound RTCP reaches the application: key-frame requests (PLI, FIR), and the
//! report blocks of receiver reports.
//!
//! In webrtc 0.21 inbound RTCP ends in the interceptor chain unless an interceptor marks
//! it `DeliverToApplication`. NACKs and transport feedback are the interceptors' business
//! (retransmission, bandwidth estimation); a key-frame request is the one thing only the
//! application can answer — the SFU by relaying it to the publisher, a publisher by
//! encoding a key frame. Receiver reports should feed the connection's statistics, but in
//! rtc 0.21.1 the code that would do so (`process_read_rtcp_for_stats`) is never called,
//! so this interceptor also copies their report blocks (loss, jitter) into
//! [`ReceiverReports`] for the SFU's metrics. It sits last in the chain, so every other
//! interceptor has seen the whole packet first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;

use rtc::interceptor::{Attribute, Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

/// Application-most slot (the default interceptors sit well below it).
const SLOT: usize = 14_000;

/// Adds the forwarder to an interceptor registry; the returned reports fill as the
/// peer's receiver reports arrive.
pub fn install(registry: Registry) -> (Registry, Arc<ReceiverReports>) {
    let reports = Arc::new(ReceiverReports::default());
    let forwarder = KeyframeRequestForwarder {
        reports: reports.clone(),
        ..KeyframeRequestForwarder::default()
    };
    (registry.with(Slot::from(SLOT), forwarder), reports)
}

/// One report block: how a remote receiver is receiving one of our streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlock {
    pub ssrc: u32,
    /// Lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Lost since the stream began.
    pub total_lost: u32,
    /// Interarrival jitter in RTP timestamp units.
    pub jitter: u32,
}

/// Report blocks not yet taken by the session; bounded so a silent session cannot
/// make it grow.
#[derive(Debug, Default)]
pub struct ReceiverReports {
    blocks: Mutex<VecDeque<ReportBlock>>,
    /// NACKs received (retransmission requests from the remote receiver).
    nacks: std::sync::atomic::AtomicU64,
}

const MAX_PENDING_BLOCKS: usize = 512;

impl ReceiverReports {
    fn push(&self, block: ReportBlock) {
        let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        if blocks.len() >= MAX_PENDING_BLOCKS {
            blocks.pop_front();
        }
        blocks.push_back(block);
    }

    /// NACKs received since the last call.
    pub fn take_nacks(&self) -> u64 {
        self.nacks.swap(0, std::sync::atomic::Ordering::Relaxed)
    }

    /// Everything received since the last call.
    pub fn take(&self) -> Vec<ReportBlock> {
        let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        blocks.drain(..).collect()
    }
}

/// Whether an RTCP packet asks for a key frame.
pub fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

#[derive(Default)]
pub struct KeyframeRequestForwarder {
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
    reports: Arc<ReceiverReports>,
}

fn report_blocks(packet: &dyn rtc::rtcp::Packet) -> Vec<ReportBlock> {
    let any = packet.as_any();
    let reports = if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
        &rr.reports
    } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
        &sr.reports
    } else {
        return Vec::new();
    };
    reports
        .iter()
        .map(|r| ReportBlock {
            ssrc: r.ssrc,
            fraction_lost: r.fraction_lost,
            total_lost: r.total_lost,
            jitter: r.jitter,
        })
        .collect()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequestForwarder {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = std::time::Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            for block in packets.iter().flat_map(|p| report_blocks(p.as_ref())) {
                self.reports.push(block);
            }
            let nacks = packets
                .iter()
                .filter(|p| p.as_any().is::<TransportLayerNack>())
                .count() as u64;
            if nacks > 0 {
                self.reports
                    .nacks
                    .fetch_add(nacks, std::sync::atomic::Ordering::Relaxed);
            }
            let requests: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                .iter()
                .filter(|p| is_keyframe_request(p.as_ref()))
                .cloned()
                .collect();
            if requests.is_empty() {
                return Ok(());
            }
            msg.message.packet = Packet::Rtcp(requests);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for KeyframeRequestForwarder {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::reception_report::ReceptionReport;

    #[test]
    fn report_blocks_are_read_from_receiver_and_sender_reports() {
        let block = ReceptionReport {
            ssrc: 7,
            fraction_lost: 64,
            total_lost: 12,
            jitter: 900,
            ..Default::default()
        };
        let rr = ReceiverReport {
            ssrc: 1,
            reports: vec![block.clone()],
            ..Default::default()
        };
        let expected = ReportBlock {
            ssrc: 7,
            fraction_lost: 64,
            total_lost: 12,
            jitter: 900,
        };
        assert_eq!(report_blocks(&rr), vec![expected]);
        let sr = SenderReport {
            ssrc: 1,
            reports: vec![block],
            ..Default::default()
        };
        assert_eq!(report_blocks(&sr), vec![expected]);
        let pli = PictureLossIndication::default();
        assert!(report_blocks(&pli).is_empty());
        assert!(is_keyframe_request(&pli));
        assert!(!is_keyframe_request(&rr));
    }

    #[test]
    fn pending_reports_are_bounded() {
        let reports = ReceiverReports::default();
        for i in 0..(MAX_PENDING_BLOCKS as u32 + 10) {
            reports.push(ReportBlock {
                ssrc: i,
                fraction_lost: 0,
                total_lost: 0,
                jitter: 0,
            });
        }
        let taken = reports.take();
        assert_eq!(taken.len(), MAX_PENDING_BLOCKS);
        assert_eq!(taken[0].ssrc, 10);
        assert!(reports.take().is_empty());
    }
}
