//! SFrame (RFC 9605) with the cipher suite AES_128_GCM_SHA256_128, the Rust twin of
//! `web/sframe.js`.
//!
//! Owns: the SFrame header encoding (§4.3), key and salt derivation (§4.4.2),
//! encryption and decryption (§4.4.3, §4.4.4), Veil's media frame layout
//! (`clear codec prefix ‖ SFrame header ‖ ciphertext ‖ tag`, the clear prefix passed to
//! SFrame as its `metadata`, so it is authenticated with the header), a sender's frame
//! counter, and a receiver's key ring with replay protection.
//!
//! Must never: log, print or serialise a key; accept a frame that fails authentication
//! or repeats a counter; use one base key for two senders (each sender picks its own,
//! see `e2ee.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use ring::{aead, hkdf};
use thiserror::Error;

/// The only cipher suite Veil uses: AES_128_GCM_SHA256_128 (RFC 9605 §8.1).
pub const CIPHER_SUITE: u16 = 0x0004;
/// AEAD.Nk: AES-128 key size.
pub const KEY_LEN: usize = 16;
/// AEAD.Nn: nonce size.
pub const NONCE_LEN: usize = 12;
/// AEAD.Nt: authentication tag size.
pub const TAG_LEN: usize = 16;
/// Longest SFrame header: config byte, 8-byte KID, 8-byte CTR.
pub const MAX_HEADER_LEN: usize = 17;
/// VP8 bytes left clear on a key frame: the 3-byte frame tag, the start code and the
/// dimensions, so the SFU can spot key frames.
pub const VP8_KEY_FRAME_CLEAR: usize = 10;
/// VP8 bytes left clear on any other frame: the 3-byte frame tag.
pub const VP8_DELTA_FRAME_CLEAR: usize = 3;
/// Counters a receiver remembers per key; wide enough for audio and video frames that
/// share one sender counter to arrive out of order relative to each other.
pub const REPLAY_WINDOW: u64 = 1024;
/// Keys kept per sender, so frames in flight across a rotation still decrypt.
pub const KEYS_PER_SENDER: usize = 4;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum SframeError {
    #[error("the SFrame header is truncated")]
    TruncatedHeader,
    #[error("the frame is too short to hold its clear prefix, SFrame header and tag")]
    FrameTooShort,
    #[error("no key for KID {0}")]
    UnknownKid(u64),
    #[error("the frame failed authentication")]
    Authentication,
    #[error("counter {0} was already seen or is too old")]
    Replay(u64),
    #[error("a base key must not be empty")]
    EmptyKey,
    #[error("the sender's frame counter is exhausted; rotate the key")]
    CounterExhausted,
    #[error("key derivation failed")]
    Derivation,
}

/// The media a frame carries, which decides how many leading bytes stay clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// VP8: 10 bytes clear on key frames, 3 otherwise.
    Vp8,
    /// Opus: nothing clear.
    Opus,
}

/// How many leading bytes of a VP8 frame stay clear. Bit 0 of the first byte is the
/// inverse key frame flag (RFC 6386 §9.1): 0 means a key frame. Works on the plaintext
/// and on the encrypted frame alike, because that byte is always clear.
pub fn vp8_clear_prefix_len(frame: &[u8]) -> usize {
    match frame.first() {
        Some(b) if b & 0x01 == 0 => VP8_KEY_FRAME_CLEAR,
        _ => VP8_DELTA_FRAME_CLEAR,
    }
}

/// How many leading bytes of a frame of `codec` stay clear.
pub fn clear_prefix_len(codec: Codec, frame: &[u8]) -> usize {
    match codec {
        Codec::Vp8 => vp8_clear_prefix_len(frame),
        Codec::Opus => 0,
    }
}

/// An SFrame header (RFC 9605 §4.3): key id and counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kid: u64,
    pub ctr: u64,
}

/// Bytes needed for `v` in big-endian without leading zero bytes (at least one).
fn min_len(v: u64) -> usize {
    let bytes = (64 - v.leading_zeros() as usize).div_ceil(8);
    bytes.max(1)
}

impl Header {
    /// Appends the encoded header to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let mut config = 0u8;
        let kid_len = if self.kid < 8 {
            config |= (self.kid as u8) << 4;
            0
        } else {
            let n = min_len(self.kid);
            config |= 0x80 | (((n - 1) as u8) << 4);
            n
        };
        let ctr_len = if self.ctr < 8 {
            config |= self.ctr as u8;
            0
        } else {
            let n = min_len(self.ctr);
            config |= 0x08 | ((n - 1) as u8);
            n
        };
        out.push(config);
        out.extend_from_slice(&self.kid.to_be_bytes()[8 - kid_len..]);
        out.extend_from_slice(&self.ctr.to_be_bytes()[8 - ctr_len..]);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_HEADER_LEN);
        self.encode_into(&mut out);
        out
    }

    /// Parses a header at the start of `buf`; returns it and its encoded length.
    pub fn decode(buf: &[u8]) -> Result<(Header, usize), SframeError> {
        let config = *buf.first().ok_or(SframeError::TruncatedHeader)?;
        let mut pos = 1;
        let mut field = |extended: bool, bits: u8| -> Result<u64, SframeError> {
            if !extended {
                return Ok(u64::from(bits));
            }
            let n = usize::from(bits) + 1;
            let bytes = buf.get(pos..pos + n).ok_or(SframeError::TruncatedHeader)?;
            pos += n;
            Ok(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
        };
        let kid = field(config & 0x80 != 0, (config >> 4) & 0x07)?;
        let ctr = field(config & 0x08 != 0, config & 0x07)?;
        Ok((Header { kid, ctr }, pos))
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// `"SFrame 1.0 Secret " + label + KID (8 bytes BE) + cipher suite (2 bytes BE)`.
fn label(kind: &str, kid: u64) -> Vec<u8> {
    let mut l = Vec::with_capacity(33);
    l.extend_from_slice(b"SFrame 1.0 Secret ");
    l.extend_from_slice(kind.as_bytes());
    l.extend_from_slice(&kid.to_be_bytes());
    l.extend_from_slice(&CIPHER_SUITE.to_be_bytes());
    l
}

/// RFC 9605 §4.4.2 `derive_key_salt`: returns `(sframe_key, sframe_salt)`.
pub fn derive_key_salt(
    kid: u64,
    base_key: &[u8],
) -> Result<([u8; KEY_LEN], [u8; NONCE_LEN]), SframeError> {
    if base_key.is_empty() {
        return Err(SframeError::EmptyKey);
    }
    let secret = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(base_key);
    let mut key = [0u8; KEY_LEN];
    let mut salt = [0u8; NONCE_LEN];
    let key_label = label("key ", kid);
    let salt_label = label("salt ", kid);
    secret
        .expand(&[&key_label], Len(KEY_LEN))
        .and_then(|okm| okm.fill(&mut key))
        .map_err(|_| SframeError::Derivation)?;
    secret
        .expand(&[&salt_label], Len(NONCE_LEN))
        .and_then(|okm| okm.fill(&mut salt))
        .map_err(|_| SframeError::Derivation)?;
    Ok((key, salt))
}

/// The key and salt derived from one base key for one KID.
pub struct SframeKey {
    kid: u64,
    key: aead::LessSafeKey,
    salt: [u8; NONCE_LEN],
}

impl std::fmt::Debug for SframeKey {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SframeKey").field("kid", &self.kid).finish()
    }
}

impl SframeKey {
    pub fn derive(kid: u64, base_key: &[u8]) -> Result<Self, SframeError> {
        let (key, salt) = derive_key_salt(kid, base_key)?;
        let unbound =
            aead::UnboundKey::new(&aead::AES_128_GCM, &key).map_err(|_| SframeError::Derivation)?;
        Ok(SframeKey {
            kid,
            key: aead::LessSafeKey::new(unbound),
            salt,
        })
    }

    pub fn kid(&self) -> u64 {
        self.kid
    }

    /// `sframe_salt XOR CTR`, the counter big-endian in the low bytes.
    pub fn nonce(&self, ctr: u64) -> [u8; NONCE_LEN] {
        let mut nonce = self.salt;
        for (n, c) in nonce[NONCE_LEN - 8..].iter_mut().zip(ctr.to_be_bytes()) {
            *n ^= c;
        }
        nonce
    }

    /// RFC 9605 `encrypt(CTR, KID, metadata, plaintext)`: appends
    /// `header ‖ ciphertext ‖ tag` to `out`, with `aad = header ‖ metadata`.
    pub fn encrypt_into(
        &self,
        ctr: u64,
        metadata: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SframeError> {
        let start = out.len();
        Header { kid: self.kid, ctr }.encode_into(out);
        let header_end = out.len();
        let mut aad = Vec::with_capacity(header_end - start + metadata.len());
        aad.extend_from_slice(&out[start..header_end]);
        aad.extend_from_slice(metadata);
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(self.nonce(ctr)),
                aead::Aad::from(&aad),
                &mut out[header_end..],
            )
            .map_err(|_| SframeError::Authentication)?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// RFC 9605 `encrypt`, returning `header ‖ ciphertext ‖ tag`.
    pub fn encrypt(
        &self,
        ctr: u64,
        metadata: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SframeError> {
        let mut out = Vec::with_capacity(MAX_HEADER_LEN + plaintext.len() + TAG_LEN);
        self.encrypt_into(ctr, metadata, plaintext, &mut out)?;
        Ok(out)
    }

    /// RFC 9605 `decrypt(metadata, sframe_ciphertext)` for a ciphertext whose header
    /// names this key; returns the header and the plaintext.
    pub fn decrypt(
        &self,
        metadata: &[u8],
        sframe_ciphertext: &[u8],
    ) -> Result<(Header, Vec<u8>), SframeError> {
        let (header, header_len) = Header::decode(sframe_ciphertext)?;
        if header.kid != self.kid {
            return Err(SframeError::UnknownKid(header.kid));
        }
        let plaintext = self.open(header, header_len, metadata, sframe_ciphertext)?;
        Ok((header, plaintext))
    }

    fn open(
        &self,
        header: Header,
        header_len: usize,
        metadata: &[u8],
        sframe_ciphertext: &[u8],
    ) -> Result<Vec<u8>, SframeError> {
        if sframe_ciphertext.len() < header_len + TAG_LEN {
            return Err(SframeError::FrameTooShort);
        }
        let (head, body) = sframe_ciphertext.split_at(header_len);
        let mut aad = Vec::with_capacity(header_len + metadata.len());
        aad.extend_from_slice(head);
        aad.extend_from_slice(metadata);
        let mut buf = body.to_vec();
        let len = self
            .key
            .open_in_place(
                aead::Nonce::assume_unique_for_key(self.nonce(header.ctr)),
                aead::Aad::from(&aad),
                &mut buf,
            )
            .map_err(|_| SframeError::Authentication)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// A sender's current key and frame counter. One per participant, shared by all its
/// tracks (audio, camera, screen): they use the same base key, so they must draw from
/// one counter or nonces would repeat.
#[derive(Debug)]
pub struct Encryptor {
    key: SframeKey,
    next_ctr: AtomicU64,
}

impl Encryptor {
    pub fn new(kid: u64, base_key: &[u8]) -> Result<Self, SframeError> {
        Ok(Encryptor {
            key: SframeKey::derive(kid, base_key)?,
            next_ctr: AtomicU64::new(0),
        })
    }

    pub fn kid(&self) -> u64 {
        self.key.kid
    }

    /// Encrypts one encoded frame into `clear prefix ‖ header ‖ ciphertext ‖ tag`.
    pub fn encrypt_frame(&self, codec: Codec, frame: &[u8]) -> Result<Vec<u8>, SframeError> {
        let prefix = clear_prefix_len(codec, frame);
        // A frame shorter than its prefix is not valid VP8; the receiver could not find
        // the same split, so refuse it rather than send something undecryptable.
        if frame.len() < prefix || frame.is_empty() {
            return Err(SframeError::FrameTooShort);
        }
        let ctr = self
            .next_ctr
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_add(1))
            .map_err(|_| SframeError::CounterExhausted)?;
        let (clear, rest) = frame.split_at(prefix);
        let mut out = Vec::with_capacity(frame.len() + MAX_HEADER_LEN + TAG_LEN);
        out.extend_from_slice(clear);
        self.key.encrypt_into(ctr, clear, rest, &mut out)?;
        Ok(out)
    }
}

/// Counters already accepted under one key: the highest one and a bitmap of the
/// [`REPLAY_WINDOW`] below it.
#[derive(Debug, Default, Clone)]
pub struct ReplayWindow {
    highest: Option<u64>,
    seen: [u64; (REPLAY_WINDOW / 64) as usize],
}

impl ReplayWindow {
    fn bit(ctr: u64) -> (usize, u64) {
        let i = ctr % REPLAY_WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    /// Whether `ctr` would be accepted (not seen, not older than the window).
    pub fn check(&self, ctr: u64) -> bool {
        match self.highest {
            None => true,
            Some(h) if ctr > h => true,
            Some(h) if h - ctr >= REPLAY_WINDOW => false,
            Some(_) => {
                let (w, m) = Self::bit(ctr);
                self.seen[w] & m == 0
            }
        }
    }

    /// Records `ctr` as accepted; call only after the frame authenticated.
    pub fn mark(&mut self, ctr: u64) {
        match self.highest {
            Some(h) if ctr <= h => {}
            Some(h) => {
                if ctr - h >= REPLAY_WINDOW {
                    self.seen = Default::default();
                } else {
                    // Forget the counters that fall out of the window as it slides.
                    for c in h + 1..=ctr {
                        let (w, m) = Self::bit(c);
                        self.seen[w] &= !m;
                    }
                }
                self.highest = Some(ctr);
            }
            None => self.highest = Some(ctr),
        }
        let (w, m) = Self::bit(ctr);
        self.seen[w] |= m;
    }
}

/// One sender's keys as a receiver holds them, by KID, with replay protection.
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: HashMap<u64, (SframeKey, ReplayWindow)>,
    /// KIDs in the order they were added, to drop the oldest.
    order: Vec<u64>,
}

impl KeyRing {
    pub fn new() -> Self {
        KeyRing::default()
    }

    /// Adds (or replaces) the base key for `kid`; keeps the newest [`KEYS_PER_SENDER`].
    pub fn insert(&mut self, kid: u64, base_key: &[u8]) -> Result<(), SframeError> {
        let key = SframeKey::derive(kid, base_key)?;
        self.keys.insert(kid, (key, ReplayWindow::default()));
        self.order.retain(|k| *k != kid);
        self.order.push(kid);
        while self.order.len() > KEYS_PER_SENDER {
            let old = self.order.remove(0);
            self.keys.remove(&old);
        }
        Ok(())
    }

    pub fn remove(&mut self, kid: u64) {
        self.keys.remove(&kid);
        self.order.retain(|k| *k != kid);
    }

    pub fn contains(&self, kid: u64) -> bool {
        self.keys.contains_key(&kid)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Decrypts `clear prefix ‖ header ‖ ciphertext ‖ tag` back to the encoded frame.
    pub fn decrypt_frame(&mut self, codec: Codec, frame: &[u8]) -> Result<Vec<u8>, SframeError> {
        let prefix = clear_prefix_len(codec, frame);
        if frame.len() < prefix + 1 + TAG_LEN {
            return Err(SframeError::FrameTooShort);
        }
        let (clear, sframe) = frame.split_at(prefix);
        let (header, header_len) = Header::decode(sframe)?;
        let (key, window) = self
            .keys
            .get_mut(&header.kid)
            .ok_or(SframeError::UnknownKid(header.kid))?;
        if !window.check(header.ctr) {
            return Err(SframeError::Replay(header.ctr));
        }
        let body = key.open(header, header_len, clear, sframe)?;
        window.mark(header.ctr);
        let mut out = Vec::with_capacity(prefix + body.len());
        out.extend_from_slice(clear);
        out.extend_from_slice(&body);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 9605 Appendix C.1, a selection covering every length of KID and CTR.
    const HEADER_VECTORS: &[(u64, u64, &str)] = &[
        (0x0000000000000000, 0x0000000000000000, "00"),
        (0x0000000000000000, 0x0000000000000001, "01"),
        (0x0000000000000000, 0x00000000000000ff, "08ff"),
        (0x0000000000000000, 0x0000000000000100, "090100"),
        (0x0000000000000000, 0x000000000000ffff, "09ffff"),
        (0x0000000000000000, 0x0000000000010000, "0a010000"),
        (0x0000000000000000, 0x0000000001000000, "0b01000000"),
        (0x0000000000000000, 0x0000000100000000, "0c0100000000"),
        (0x0000000000000000, 0x0000010000000000, "0d010000000000"),
        (0x0000000000000000, 0x0001000000000000, "0e01000000000000"),
        (0x0000000000000000, 0x0100000000000000, "0f0100000000000000"),
        (0x0000000000000000, 0xffffffffffffffff, "0fffffffffffffffff"),
        (0x0000000000000001, 0x0000000000000000, "10"),
        (0x0000000000000001, 0x0000000000000001, "11"),
        (0x0000000000000001, 0x00000000000000ff, "18ff"),
        (0x0000000000000001, 0x0000000000ffffff, "1affffff"),
        (0x00000000000000ff, 0x0000000000000000, "80ff"),
        (0x00000000000000ff, 0x0000000000000001, "81ff"),
        (0x00000000000000ff, 0x00000000000000ff, "88ffff"),
        (0x00000000000000ff, 0x0000000000000100, "89ff0100"),
        (
            0x00000000000000ff,
            0xffffffffffffffff,
            "8fffffffffffffffffff",
        ),
        (0x0000000000000100, 0x0000000000000000, "900100"),
        (0x0000000000000100, 0x00000000000000ff, "980100ff"),
        (0x0000000000000100, 0x0000000000000100, "9901000100"),
        (0x000000000000ffff, 0x0000000000000001, "91ffff"),
        (0x000000000000ffff, 0x0000000000010000, "9affff010000"),
        (0x0000000000010000, 0x0000000000000000, "a0010000"),
        (0x0000000000010000, 0x0000000000000100, "a90100000100"),
        (0x0000000000ffffff, 0x0000000001000000, "abffffff01000000"),
        (0x0000000001000000, 0x0000000000000000, "b001000000"),
        (
            0x0000000001000000,
            0x0000000100000000,
            "bc010000000100000000",
        ),
        (0x00000000ffffffff, 0x0000000000000001, "b1ffffffff"),
        (0x0000000100000000, 0x0000000000000000, "c00100000000"),
        (
            0x0000000100000000,
            0x0000ffffffffffff,
            "cd0100000000ffffffffffff",
        ),
        (0x000000ffffffffff, 0x00000000000000ff, "c8ffffffffffff"),
        (0x0000010000000000, 0x0000000000000000, "d0010000000000"),
        (
            0x0000010000000000,
            0x0001000000000000,
            "de01000000000001000000000000",
        ),
        (0x0000ffffffffffff, 0x0000000000000100, "d9ffffffffffff0100"),
        (0x0001000000000000, 0x0000000000000000, "e001000000000000"),
        (
            0x0001000000000000,
            0x0100000000000000,
            "ef010000000000000100000000000000",
        ),
        (
            0x00ffffffffffffff,
            0x0000000000010000,
            "eaffffffffffffff010000",
        ),
        (0x0100000000000000, 0x0000000000000000, "f00100000000000000"),
        (0x0100000000000000, 0x0000000000000001, "f10100000000000000"),
        (
            0x0100000000000000,
            0x0100000000000000,
            "ff01000000000000000100000000000000",
        ),
        (
            0xffffffffffffffff,
            0x00000000000000ff,
            "f8ffffffffffffffffff",
        ),
        (
            0xffffffffffffffff,
            0xffffffffffffffff,
            "ffffffffffffffffffffffffffffffffff",
        ),
    ];

    #[test]
    fn rfc9605_header_vectors() {
        for (kid, ctr, expected) in HEADER_VECTORS {
            let header = Header {
                kid: *kid,
                ctr: *ctr,
            };
            let encoded = header.encode();
            assert_eq!(encoded, hex(expected), "encode kid {kid:#x} ctr {ctr:#x}");
            let (decoded, len) = Header::decode(&encoded).unwrap();
            assert_eq!(decoded, header);
            assert_eq!(len, encoded.len());
        }
    }

    #[test]
    fn truncated_headers_are_refused() {
        assert_eq!(Header::decode(&[]), Err(SframeError::TruncatedHeader));
        assert_eq!(
            Header::decode(&hex("99012345")[..4]),
            Err(SframeError::TruncatedHeader)
        );
        assert_eq!(
            Header::decode(&hex("ffffffff")),
            Err(SframeError::TruncatedHeader)
        );
    }

    // RFC 9605 Appendix C.3, cipher suite 0x0004.
    const BASE_KEY: &str = "000102030405060708090a0b0c0d0e0f";
    const SFRAME_KEY_LABEL: &str = "534672616d6520312e30205365637265
                                    74206b65792000000000000001230004";
    const SFRAME_SALT_LABEL: &str = "534672616d6520312e30205365637265
                                     742073616c7420000000000000012300
                                     04";
    const SFRAME_SECRET: &str = "d926952ca8b7ec4a95941d1ada3a5203
                                 ceff8cceee34f574d23909eb314c40c0";
    const SFRAME_KEY: &str = "d34f547f4ca4f9a7447006fe7fcbf768";
    const SFRAME_SALT: &str = "75234edefe07819026751816";
    const METADATA: &str = "4945544620534672616d65205747";
    const NONCE: &str = "75234edefe07819026755d71";
    const AAD: &str = "99012345674945544620534672616d65
                       205747";
    const PT: &str = "64726166742d696574662d736672616d
                      652d656e63";
    const CT: &str = "9901234567b7412c2513a1b66dbb4884
                      1bbaf17f598751176ad847681a69c6d0
                      b091c07018ce4adb34eb";
    const KID: u64 = 0x0000000000000123;
    const CTR: u64 = 0x0000000000004567;

    #[test]
    fn rfc9605_sframe_vector_aes_128_gcm_sha256_128() {
        assert_eq!(label("key ", KID), hex(SFRAME_KEY_LABEL));
        assert_eq!(label("salt ", KID), hex(SFRAME_SALT_LABEL));
        // HKDF-Extract with an empty salt is HMAC keyed with zeros (RFC 5869 §2.2).
        let prk = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[]),
            &hex(BASE_KEY),
        );
        assert_eq!(prk.as_ref(), hex(SFRAME_SECRET).as_slice());
        let (key, salt) = derive_key_salt(KID, &hex(BASE_KEY)).unwrap();
        assert_eq!(key.to_vec(), hex(SFRAME_KEY));
        assert_eq!(salt.to_vec(), hex(SFRAME_SALT));

        let k = SframeKey::derive(KID, &hex(BASE_KEY)).unwrap();
        assert_eq!(k.nonce(CTR).to_vec(), hex(NONCE));
        let header = Header { kid: KID, ctr: CTR }.encode();
        let mut aad = header.clone();
        aad.extend_from_slice(&hex(METADATA));
        assert_eq!(aad, hex(AAD));

        let ct = k.encrypt(CTR, &hex(METADATA), &hex(PT)).unwrap();
        assert_eq!(ct, hex(CT));
        let (h, pt) = k.decrypt(&hex(METADATA), &hex(CT)).unwrap();
        assert_eq!(h, Header { kid: KID, ctr: CTR });
        assert_eq!(pt, hex(PT));

        // Any change to the metadata, header or body fails authentication.
        assert_eq!(
            k.decrypt(b"other", &hex(CT)),
            Err(SframeError::Authentication)
        );
        let mut bad = hex(CT);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(
            k.decrypt(&hex(METADATA), &bad),
            Err(SframeError::Authentication)
        );
    }

    #[test]
    fn vp8_prefix_follows_the_key_frame_bit() {
        assert_eq!(vp8_clear_prefix_len(&[0x10, 0x02, 0x00]), 10);
        assert_eq!(vp8_clear_prefix_len(&[0x11, 0x02, 0x00]), 3);
        assert_eq!(vp8_clear_prefix_len(&[]), 3);
        assert_eq!(clear_prefix_len(Codec::Opus, &[0x10]), 0);
    }

    fn vp8_key_frame() -> Vec<u8> {
        let mut f = vec![0x50, 0x2a, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01];
        f.extend((0..200u8).map(|i| i.wrapping_mul(7)));
        f
    }

    #[test]
    fn frames_round_trip_with_the_prefix_clear() {
        let enc = Encryptor::new(3, b"0123456789abcdef").unwrap();
        let mut ring = KeyRing::new();
        ring.insert(3, b"0123456789abcdef").unwrap();

        let key = vp8_key_frame();
        let sealed = enc.encrypt_frame(Codec::Vp8, &key).unwrap();
        assert_eq!(
            &sealed[..10],
            &key[..10],
            "VP8 key frame header stays clear"
        );
        // KID 3 and CTR 0 both fit in the one config byte.
        assert_eq!(sealed[10], 0x30);
        assert_eq!(sealed.len(), key.len() + 1 + TAG_LEN);
        assert_ne!(&sealed[11..sealed.len() - TAG_LEN], &key[10..]);
        assert_eq!(ring.decrypt_frame(Codec::Vp8, &sealed).unwrap(), key);

        let delta = vec![0x31, 0x05, 0x00, 1, 2, 3, 4, 5];
        let sealed = enc.encrypt_frame(Codec::Vp8, &delta).unwrap();
        assert_eq!(&sealed[..3], &delta[..3]);
        assert_eq!(ring.decrypt_frame(Codec::Vp8, &sealed).unwrap(), delta);

        let opus = vec![0xfc, 0xff, 0xfe, 9, 9, 9];
        let sealed = enc.encrypt_frame(Codec::Opus, &opus).unwrap();
        assert_eq!(
            Header::decode(&sealed).unwrap().0,
            Header { kid: 3, ctr: 2 }
        );
        assert_eq!(ring.decrypt_frame(Codec::Opus, &sealed).unwrap(), opus);
    }

    #[test]
    fn the_clear_prefix_is_authenticated() {
        let enc = Encryptor::new(1, b"k").unwrap();
        let mut ring = KeyRing::new();
        ring.insert(1, b"k").unwrap();
        let mut sealed = enc.encrypt_frame(Codec::Vp8, &vp8_key_frame()).unwrap();
        sealed[5] ^= 0x40;
        assert_eq!(
            ring.decrypt_frame(Codec::Vp8, &sealed),
            Err(SframeError::Authentication)
        );
    }

    #[test]
    fn replays_and_unknown_keys_are_refused() {
        let enc = Encryptor::new(9, b"sender key").unwrap();
        let mut ring = KeyRing::new();
        let frames: Vec<Vec<u8>> = (0..3)
            .map(|i| enc.encrypt_frame(Codec::Opus, &[i, 1, 2]).unwrap())
            .collect();
        assert_eq!(
            ring.decrypt_frame(Codec::Opus, &frames[0]),
            Err(SframeError::UnknownKid(9))
        );
        ring.insert(9, b"sender key").unwrap();
        // Out of order is fine, twice is not.
        assert!(ring.decrypt_frame(Codec::Opus, &frames[2]).is_ok());
        assert!(ring.decrypt_frame(Codec::Opus, &frames[0]).is_ok());
        assert_eq!(
            ring.decrypt_frame(Codec::Opus, &frames[0]),
            Err(SframeError::Replay(0))
        );
        assert_eq!(
            ring.decrypt_frame(Codec::Opus, &frames[2]),
            Err(SframeError::Replay(2))
        );
        assert!(ring.decrypt_frame(Codec::Opus, &frames[1]).is_ok());

        // A wrong key with the right KID fails authentication and does not mark the counter.
        let mut other = KeyRing::new();
        other.insert(9, b"another key").unwrap();
        assert_eq!(
            other.decrypt_frame(Codec::Opus, &frames[1]),
            Err(SframeError::Authentication)
        );
    }

    #[test]
    fn replay_window_slides() {
        let mut w = ReplayWindow::default();
        w.mark(5);
        assert!(!w.check(5));
        assert!(w.check(4));
        w.mark(5 + REPLAY_WINDOW);
        assert!(!w.check(5), "fell out of the window");
        assert!(w.check(REPLAY_WINDOW + 4));
        w.mark(REPLAY_WINDOW + 4);
        assert!(!w.check(REPLAY_WINDOW + 4));
        w.mark(10 * REPLAY_WINDOW);
        assert!(w.check(10 * REPLAY_WINDOW - 1));
        assert!(!w.check(10 * REPLAY_WINDOW));
    }

    #[test]
    fn key_ring_keeps_the_newest_keys() {
        let mut ring = KeyRing::new();
        for kid in 0..(KEYS_PER_SENDER as u64 + 2) {
            ring.insert(kid, &[kid as u8 + 1; 16]).unwrap();
        }
        assert!(!ring.contains(0) && !ring.contains(1));
        assert!(ring.contains(KEYS_PER_SENDER as u64 + 1));
        assert_eq!(SframeKey::derive(1, &[]).err(), Some(SframeError::EmptyKey));
    }

    #[test]
    fn short_frames_are_refused() {
        let enc = Encryptor::new(0, b"k").unwrap();
        assert_eq!(
            enc.encrypt_frame(Codec::Vp8, &[0x10, 0, 0]),
            Err(SframeError::FrameTooShort)
        );
        assert_eq!(
            enc.encrypt_frame(Codec::Opus, &[]),
            Err(SframeError::FrameTooShort)
        );
        let mut ring = KeyRing::new();
        assert_eq!(
            ring.decrypt_frame(Codec::Vp8, &[0x11, 0, 0, 0]),
            Err(SframeError::FrameTooShort)
        );
    }

    /// Frames both implementations exchange through committed fixtures: a VP8 key
    /// frame, VP8 delta frames and Opus frames from one sender, counters 0..12.
    fn fixture_plaintexts(seed: u8) -> Vec<(Codec, Vec<u8>)> {
        (0..12u8)
            .map(|i| {
                let body: Vec<u8> = (0..(20 + i as usize * 3))
                    .map(|j| seed ^ (j as u8).wrapping_mul(31).wrapping_add(i))
                    .collect();
                match i % 3 {
                    0 => {
                        let mut f =
                            vec![0x50, 0x2a, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01];
                        f.extend(body);
                        (Codec::Vp8, f)
                    }
                    1 => {
                        let mut f = vec![0x31, 0x05, 0x00];
                        f.extend(body);
                        (Codec::Vp8, f)
                    }
                    _ => (Codec::Opus, body),
                }
            })
            .collect()
    }

    fn fixture_path(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../web/test/fixtures")
            .join(name)
    }

    fn to_hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn codec_name(c: Codec) -> &'static str {
        match c {
            Codec::Vp8 => "vp8",
            Codec::Opus => "opus",
        }
    }

    /// The Rust-made frames in `web/test/fixtures/sframe-rust.json` (decrypted by the
    /// JS tests) are what this code produces; `VEIL_WRITE_FIXTURES=1` rewrites them.
    #[test]
    fn rust_fixture_is_current() {
        let base_key = hex("8f3a6b1e0c9d2f4a7b5e6c1d3f2a9b0e");
        let kid = 0x1234;
        let enc = Encryptor::new(kid, &base_key).unwrap();
        let frames: Vec<serde_json::Value> = fixture_plaintexts(0x5a)
            .into_iter()
            .map(|(codec, pt)| {
                let sealed = enc.encrypt_frame(codec, &pt).unwrap();
                serde_json::json!({
                    "codec": codec_name(codec),
                    "plaintext": to_hex(&pt),
                    "frame": to_hex(&sealed),
                })
            })
            .collect();
        let fixture = serde_json::json!({
            "about": "SFrame frames encrypted by bench/src/sframe.rs (test rust_fixture_is_current)",
            "cipher_suite": CIPHER_SUITE,
            "base_key": to_hex(&base_key),
            "kid": kid,
            "frames": frames,
        });
        let text = serde_json::to_string_pretty(&fixture).unwrap() + "\n";
        let path = fixture_path("sframe-rust.json");
        if std::env::var_os("VEIL_WRITE_FIXTURES").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    /// Frames encrypted by `web/sframe.js` decrypt here.
    #[test]
    fn js_fixture_decrypts() {
        let text = std::fs::read_to_string(fixture_path("sframe-js.json")).unwrap();
        let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut ring = KeyRing::new();
        let kid = fixture["kid"].as_u64().unwrap();
        ring.insert(kid, &hex(fixture["base_key"].as_str().unwrap()))
            .unwrap();
        let frames = fixture["frames"].as_array().unwrap();
        assert!(frames.len() >= 10);
        for f in frames {
            let codec = match f["codec"].as_str().unwrap() {
                "vp8" => Codec::Vp8,
                _ => Codec::Opus,
            };
            let sealed = hex(f["frame"].as_str().unwrap());
            let pt = ring.decrypt_frame(codec, &sealed).unwrap();
            assert_eq!(pt, hex(f["plaintext"].as_str().unwrap()));
            if codec == Codec::Vp8 && pt[0] & 1 == 0 {
                assert_eq!(
                    &sealed[3..6],
                    &[0x9d, 0x01, 0x2a],
                    "key frame start code clear"
                );
            }
        }
        let mut wrong = KeyRing::new();
        wrong.insert(kid, b"not the key").unwrap();
        let first = hex(frames[0]["frame"].as_str().unwrap());
        assert_eq!(
            wrong.decrypt_frame(Codec::Vp8, &first),
            Err(SframeError::Authentication)
        );
    }
}
