//! Veil's headless participant and load generator.
//!
//! Owns a real WebRTC client on the same `webrtc` crate as the SFU, joining through the
//! public HTTP API and WebSocket exactly as a browser does, publishing synthetic audio and
//! VP8-shaped video and recording what it receives; the integration tests and the load
//! generator both use it.
//!
//! Must never: talk to anything but the Veil server it is pointed at, or use a real
//! media key outside tests.

pub mod abuse;
pub mod depacketize;
pub mod e2ee;
pub mod histogram;
pub mod load;
pub mod media;
pub mod participant;
pub mod payload;
pub mod purge;
pub mod relay;
pub mod report;
pub mod sframe;
pub mod soak;
pub mod usage;
