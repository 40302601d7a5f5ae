//! Veil's end-to-end key management (docs/e2ee.md), the Rust twin of `web/keys.js`.
//!
//! Owns: the room secret from the link's fragment and the MAC key derived from it; this
//! participant's identity (an ECDSA P-256 key pair) announced in a MAC'd `hello`; one
//! pairwise channel per other member (a fresh ECDH P-256 key pair each side, signed with
//! the identity key, → HKDF-SHA256 → AES-256-GCM); this sender's media key, sent to every
//! verified member over those channels and replaced (new key, next KID) when anyone
//! leaves; the receivers' key rings; the security code.
//!
//! Must never: send the room secret, a private key, a pair key or a media key anywhere
//! except a media key inside a pairwise-encrypted `key` blob; log or print any of them;
//! accept a member whose `hello` does not carry a valid MAC, or a `pair`/`key` message
//! that is not bound to a verified member.
//!
//! Why ECDSA identities and one ECDH key pair per pair: `ring` lets an ECDH private key
//! be used for exactly one agreement, so a single announced ECDH key cannot reach every
//! member; signing each per-pair ECDH key with one announced identity key keeps one key
//! per member for the MAC and the security code.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::KeyPair as _;
use ring::{aead, agreement, digest, hkdf, hmac, signature};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::sframe::{Codec, Encryptor, KeyRing, SframeError};

/// Protocol version inside every blob.
pub const VERSION: u32 = 1;
/// Bytes of a fresh room secret.
pub const SECRET_LEN: usize = 16;
/// Bytes of a media (SFrame base) key.
pub const MEDIA_KEY_LEN: usize = 16;
/// Largest blob signaling relays (base64 text).
pub const MAX_BLOB_BYTES: usize = 16 * 1024;
const LABEL: &str = "veil-e2ee/1 ";

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum E2eeError {
    #[error("the room secret is not base64url of 16 to 64 bytes")]
    BadSecret,
    #[error("the blob is not a valid e2ee message")]
    Malformed,
    #[error("unsupported e2ee message version")]
    Version,
    #[error("the message names a different sender or recipient than its envelope")]
    Misaddressed,
    #[error("the hello's MAC does not verify (wrong room secret or forged)")]
    BadMac,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("no verified identity for participant")]
    UnknownPeer,
    #[error("the key message does not decrypt")]
    BadKeyMessage,
    #[error("cryptographic operation failed")]
    Crypto,
    #[error(transparent)]
    Sframe(#[from] SframeError),
}

/// A blob to send through signaling as `{"type":"e2ee","to":…,"blob":…}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// `None`: every other participant in the room.
    pub to: Option<String>,
    pub blob: String,
}

/// The JSON inside a blob (base64url of its UTF-8 text), tagged by `t`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case", deny_unknown_fields)]
enum Message {
    Hello {
        v: u32,
        from: String,
        /// base64url of the 65-byte uncompressed ECDSA P-256 identity public key.
        id: String,
        /// A reply to someone else's hello (does not ask for a reply).
        ack: bool,
        /// base64url HMAC-SHA256(mac_key, transcript("hello", room, from, id)).
        mac: String,
    },
    Pair {
        v: u32,
        from: String,
        to: String,
        /// base64url of the 65-byte uncompressed ECDH P-256 public key for this pair.
        #[serde(rename = "pub")]
        pub_key: String,
        /// base64url ECDSA P-256 SHA-256 signature (r ‖ s, 64 bytes) by the identity
        /// key over transcript("pair", room, from, to, pub).
        sig: String,
    },
    Key {
        v: u32,
        from: String,
        to: String,
        /// The sender's SFrame KID for this media key.
        kid: u64,
        /// base64url 12-byte AES-GCM nonce.
        iv: String,
        /// base64url AES-256-GCM(pair key, iv, media key,
        /// aad = transcript("key", room, from, to, kid as 8 bytes BE)).
        ct: String,
    },
}

impl Message {
    fn version(&self) -> u32 {
        match self {
            Message::Hello { v, .. } | Message::Pair { v, .. } | Message::Key { v, .. } => *v,
        }
    }
}

/// `"veil-e2ee/1 " + label`, then each part as a 4-byte big-endian length and its bytes.
pub fn transcript(label: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    let l = format!("{LABEL}{label}");
    out.extend_from_slice(&(l.len() as u32).to_be_bytes());
    out.extend_from_slice(l.as_bytes());
    for p in parts {
        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn hkdf32(salt: &[u8], ikm: &[u8], info: &[u8]) -> Result<[u8; 32], E2eeError> {
    let mut out = [0u8; 32];
    hkdf::Salt::new(hkdf::HKDF_SHA256, salt)
        .extract(ikm)
        .expand(&[info], Len(32))
        .and_then(|okm| okm.fill(&mut out))
        .map_err(|_| E2eeError::Crypto)?;
    Ok(out)
}

/// A fresh room secret for a meeting link's fragment (base64url, no padding).
pub fn generate_secret() -> Result<String, E2eeError> {
    let mut s = [0u8; SECRET_LEN];
    SystemRandom::new()
        .fill(&mut s)
        .map_err(|_| E2eeError::Crypto)?;
    Ok(B64.encode(s))
}

/// Keys derived from the room secret and the room id; never leave this process.
struct RoomKeys {
    mac: hmac::Key,
    pair_salt: [u8; 32],
}

impl RoomKeys {
    fn derive(secret: &str, room: &str) -> Result<Self, E2eeError> {
        let raw = B64
            .decode(secret.trim_start_matches('#'))
            .map_err(|_| E2eeError::BadSecret)?;
        if !(SECRET_LEN..=64).contains(&raw.len()) {
            return Err(E2eeError::BadSecret);
        }
        let salt = format!("{LABEL}room").into_bytes();
        let mac = hkdf32(&salt, &raw, &transcript("mac", &[room.as_bytes()]))?;
        let pair_salt = hkdf32(&salt, &raw, &transcript("pair-salt", &[room.as_bytes()]))?;
        Ok(RoomKeys {
            mac: hmac::Key::new(hmac::HMAC_SHA256, &mac),
            pair_salt,
        })
    }
}

/// The pair key both sides of a pair derive from their ECDH output.
fn pair_key(
    pair_salt: &[u8],
    shared: &[u8],
    room: &str,
    (a, a_pub): (&str, &[u8]),
    (b, b_pub): (&str, &[u8]),
) -> Result<aead::LessSafeKey, E2eeError> {
    // Both sides order the pair the same way: by participant id bytes.
    let ((lo, lo_pub), (hi, hi_pub)) = if a.as_bytes() <= b.as_bytes() {
        ((a, a_pub), (b, b_pub))
    } else {
        ((b, b_pub), (a, a_pub))
    };
    let info = transcript(
        "pair-key",
        &[
            room.as_bytes(),
            lo.as_bytes(),
            hi.as_bytes(),
            lo_pub,
            hi_pub,
        ],
    );
    let key = hkdf32(pair_salt, shared, &info)?;
    let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, &key).map_err(|_| E2eeError::Crypto)?;
    Ok(aead::LessSafeKey::new(unbound))
}

/// The security code for a set of identity public keys: SHA-256 over them sorted,
/// first 8 bytes as a big-endian integer mod 10^12, as `dddd dddd dddd`.
pub fn security_code_for(identities: &[&[u8]]) -> String {
    let mut sorted: Vec<&[u8]> = identities.to_vec();
    sorted.sort();
    sorted.dedup();
    let digest = digest::digest(&digest::SHA256, &transcript("code", &sorted));
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    let n = u64::from_be_bytes(first) % 1_000_000_000_000;
    let s = format!("{n:012}");
    format!("{} {} {}", &s[0..4], &s[4..8], &s[8..12])
}

/// What this participant knows about one other member.
struct Peer {
    identity: Vec<u8>,
    /// Our ECDH private key for this pair until it is used (ring allows one use).
    our_pair: Option<agreement::EphemeralPrivateKey>,
    /// Our signed `pair` message, kept to resend if the peer asks again.
    our_pair_blob: String,
    /// The peer's ECDH public key for this pair, once its `pair` verified.
    their_pair_pub: Option<Vec<u8>>,
    key: Option<aead::LessSafeKey>,
    /// The peer's media keys, by KID.
    ring: KeyRing,
    /// A `key` message that arrived before the pair key; retried when it exists.
    pending_key: Option<(u64, Vec<u8>, Vec<u8>)>,
}

/// One participant's E2EE state in one room.
pub struct E2ee {
    room: String,
    me: String,
    keys: RoomKeys,
    rng: SystemRandom,
    identity: signature::EcdsaKeyPair,
    peers: HashMap<String, Peer>,
    /// `hello`s from participants not (yet) verified, for the "cannot decrypt" state.
    rejected: HashMap<String, E2eeError>,
    media_key: [u8; MEDIA_KEY_LEN],
    kid: u64,
    encryptor: Arc<Encryptor>,
    /// Every media key held so far, kept only for the test that proves none of them
    /// reaches the server.
    #[cfg(feature = "key-audit")]
    held: Vec<HeldKey>,
}

/// A media key this participant held: its own (`owner` = itself) or a member's.
/// Only with the `key-audit` feature, which exists for tests alone.
#[cfg(feature = "key-audit")]
#[derive(Clone)]
pub struct HeldKey {
    pub owner: String,
    pub kid: u64,
    pub key: [u8; MEDIA_KEY_LEN],
}

impl std::fmt::Debug for E2ee {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2ee")
            .field("me", &self.me)
            .field("kid", &self.kid)
            .field("peers", &self.peers.len())
            .finish()
    }
}

impl E2ee {
    /// `secret` is the link's fragment (with or without `#`), `room` the room id and
    /// `me` this participant's id from `joined`.
    pub fn new(secret: &str, room: &str, me: &str) -> Result<Self, E2eeError> {
        let keys = RoomKeys::derive(secret, room)?;
        let rng = SystemRandom::new();
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .map_err(|_| E2eeError::Crypto)?;
        let identity = signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .map_err(|_| E2eeError::Crypto)?;
        let mut media_key = [0u8; MEDIA_KEY_LEN];
        rng.fill(&mut media_key).map_err(|_| E2eeError::Crypto)?;
        let encryptor = Arc::new(Encryptor::new(0, &media_key)?);
        Ok(E2ee {
            room: room.to_string(),
            me: me.to_string(),
            keys,
            rng,
            identity,
            peers: HashMap::new(),
            rejected: HashMap::new(),
            media_key,
            kid: 0,
            encryptor,
            #[cfg(feature = "key-audit")]
            held: vec![HeldKey {
                owner: me.to_string(),
                kid: 0,
                key: media_key,
            }],
        })
    }

    pub fn participant(&self) -> &str {
        &self.me
    }

    /// This participant's identity public key (65 bytes, uncompressed point).
    pub fn identity(&self) -> &[u8] {
        self.identity.public_key().as_ref()
    }

    /// The current sender: encrypt every outgoing frame (all tracks) with it.
    pub fn encryptor(&self) -> Arc<Encryptor> {
        self.encryptor.clone()
    }

    pub fn kid(&self) -> u64 {
        self.kid
    }

    /// Members whose `hello` verified, sorted.
    pub fn members(&self) -> Vec<String> {
        let mut m: Vec<String> = self.peers.keys().cloned().collect();
        m.sort();
        m
    }

    /// Whether a media key from `participant` has arrived (its frames can decrypt).
    pub fn has_key_from(&self, participant: &str) -> bool {
        self.peers
            .get(participant)
            .is_some_and(|p| !p.ring.is_empty())
    }

    /// Why `participant`'s last hello was refused, if it was.
    pub fn rejected(&self, participant: &str) -> Option<&E2eeError> {
        self.rejected.get(participant)
    }

    /// The code to compare aloud: the same on every screen iff all keys agree.
    pub fn security_code(&self) -> String {
        let mut ids: Vec<&[u8]> = self.peers.values().map(|p| p.identity.as_slice()).collect();
        ids.push(self.identity());
        security_code_for(&ids)
    }

    /// The first message after `joined`: announce this participant to everyone.
    pub fn start(&self) -> Vec<Outgoing> {
        vec![Outgoing {
            to: None,
            blob: self.hello(false),
        }]
    }

    fn hello(&self, ack: bool) -> String {
        let id = self.identity().to_vec();
        let tag = hmac::sign(
            &self.keys.mac,
            &transcript("hello", &[self.room.as_bytes(), self.me.as_bytes(), &id]),
        );
        encode(&Message::Hello {
            v: VERSION,
            from: self.me.clone(),
            id: B64.encode(&id),
            ack,
            mac: B64.encode(tag.as_ref()),
        })
    }

    /// Handles a blob relayed from `from`; returns what to send in reply.
    pub fn handle(&mut self, from: &str, blob: &str) -> Result<Vec<Outgoing>, E2eeError> {
        let msg = decode(blob)?;
        if msg.version() != VERSION {
            return Err(E2eeError::Version);
        }
        match msg {
            Message::Hello {
                from: claimed,
                id,
                ack,
                mac,
                ..
            } => {
                let result = self.on_hello(from, &claimed, &id, ack, &mac);
                match &result {
                    Ok(_) => {
                        self.rejected.remove(from);
                    }
                    Err(e) => {
                        self.rejected.insert(from.to_string(), e.clone());
                    }
                }
                result
            }
            Message::Pair {
                from: claimed,
                to,
                pub_key,
                sig,
                ..
            } => self.on_pair(from, &claimed, &to, &pub_key, &sig),
            Message::Key {
                from: claimed,
                to,
                kid,
                iv,
                ct,
                ..
            } => {
                if claimed != from || to != self.me {
                    return Err(E2eeError::Misaddressed);
                }
                let iv = B64.decode(iv).map_err(|_| E2eeError::Malformed)?;
                let ct = B64.decode(ct).map_err(|_| E2eeError::Malformed)?;
                self.on_key(from, kid, iv, ct)?;
                Ok(Vec::new())
            }
        }
    }

    fn on_hello(
        &mut self,
        from: &str,
        claimed: &str,
        id: &str,
        ack: bool,
        mac: &str,
    ) -> Result<Vec<Outgoing>, E2eeError> {
        if claimed != from || from == self.me {
            return Err(E2eeError::Misaddressed);
        }
        let id = B64.decode(id).map_err(|_| E2eeError::Malformed)?;
        let mac = B64.decode(mac).map_err(|_| E2eeError::Malformed)?;
        hmac::verify(
            &self.keys.mac,
            &transcript("hello", &[self.room.as_bytes(), from.as_bytes(), &id]),
            &mac,
        )
        .map_err(|_| E2eeError::BadMac)?;
        let mut out = Vec::new();
        let known = self.peers.get(from).is_some_and(|p| p.identity == id);
        if !known {
            // A new member, or a new identity under a known id: start a fresh pair.
            let peer = self.new_peer(from, id)?;
            self.peers.insert(from.to_string(), peer);
        }
        if !ack {
            out.push(Outgoing {
                to: Some(from.to_string()),
                blob: self.hello(true),
            });
        }
        // Send (or resend, if it may have been lost) our half of the pair.
        if let Some(peer) = self.peers.get(from)
            && (!known || !ack || peer.key.is_none())
        {
            out.push(Outgoing {
                to: Some(from.to_string()),
                blob: peer.our_pair_blob.clone(),
            });
        }
        Ok(out)
    }

    fn new_peer(&self, to: &str, identity: Vec<u8>) -> Result<Peer, E2eeError> {
        let private = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &self.rng)
            .map_err(|_| E2eeError::Crypto)?;
        let public = private
            .compute_public_key()
            .map_err(|_| E2eeError::Crypto)?;
        let public = public.as_ref().to_vec();
        let sig = self
            .identity
            .sign(
                &self.rng,
                &transcript(
                    "pair",
                    &[
                        self.room.as_bytes(),
                        self.me.as_bytes(),
                        to.as_bytes(),
                        &public,
                    ],
                ),
            )
            .map_err(|_| E2eeError::Crypto)?;
        let blob = encode(&Message::Pair {
            v: VERSION,
            from: self.me.clone(),
            to: to.to_string(),
            pub_key: B64.encode(&public),
            sig: B64.encode(sig.as_ref()),
        });
        Ok(Peer {
            identity,
            our_pair: Some(private),
            our_pair_blob: blob,
            their_pair_pub: None,
            key: None,
            ring: KeyRing::new(),
            pending_key: None,
        })
    }

    fn on_pair(
        &mut self,
        from: &str,
        claimed: &str,
        to: &str,
        pub_key: &str,
        sig: &str,
    ) -> Result<Vec<Outgoing>, E2eeError> {
        if claimed != from || to != self.me {
            return Err(E2eeError::Misaddressed);
        }
        let their_pub = B64.decode(pub_key).map_err(|_| E2eeError::Malformed)?;
        let sig = B64.decode(sig).map_err(|_| E2eeError::Malformed)?;
        let room = self.room.clone();
        let me = self.me.clone();
        let peer = self.peers.get_mut(from).ok_or(E2eeError::UnknownPeer)?;
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &peer.identity)
            .verify(
                &transcript(
                    "pair",
                    &[room.as_bytes(), from.as_bytes(), me.as_bytes(), &their_pub],
                ),
                &sig,
            )
            .map_err(|_| E2eeError::BadSignature)?;
        if peer.their_pair_pub.is_some() {
            // One pair per identity: a repeat (resend) changes nothing.
            return Ok(Vec::new());
        }
        let private = peer.our_pair.take().ok_or(E2eeError::Crypto)?;
        let our_pub = private
            .compute_public_key()
            .map_err(|_| E2eeError::Crypto)?
            .as_ref()
            .to_vec();
        let peer_key = agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, &their_pub);
        let pair_salt = self.keys.pair_salt;
        let key = agreement::agree_ephemeral(private, &peer_key, |shared| {
            pair_key(
                &pair_salt,
                shared,
                &room,
                (&me, &our_pub),
                (from, &their_pub),
            )
        })
        .map_err(|_| E2eeError::Malformed)??;
        peer.key = Some(key);
        peer.their_pair_pub = Some(their_pub);
        if let Some((kid, iv, ct)) = peer.pending_key.take() {
            // Best effort: a key that still fails is dropped like any bad message.
            let _ = self.on_key(from, kid, iv, ct);
        }
        // The channel is up: give this member our current media key.
        Ok(vec![self.key_message(from)?])
    }

    fn on_key(&mut self, from: &str, kid: u64, iv: Vec<u8>, ct: Vec<u8>) -> Result<(), E2eeError> {
        let aad = transcript(
            "key",
            &[
                self.room.as_bytes(),
                from.as_bytes(),
                self.me.as_bytes(),
                &kid.to_be_bytes(),
            ],
        );
        let peer = self.peers.get_mut(from).ok_or(E2eeError::UnknownPeer)?;
        let Some(key) = &peer.key else {
            peer.pending_key = Some((kid, iv, ct));
            return Ok(());
        };
        let nonce: [u8; 12] = iv.try_into().map_err(|_| E2eeError::Malformed)?;
        let mut buf = ct;
        let media_key = key
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(&aad),
                &mut buf,
            )
            .map_err(|_| E2eeError::BadKeyMessage)?;
        if media_key.len() != MEDIA_KEY_LEN {
            return Err(E2eeError::BadKeyMessage);
        }
        peer.ring.insert(kid, media_key)?;
        #[cfg(feature = "key-audit")]
        if let Ok(key) = <[u8; MEDIA_KEY_LEN]>::try_from(&*media_key) {
            self.held.push(HeldKey {
                owner: from.to_string(),
                kid,
                key,
            });
        }
        Ok(())
    }

    /// Our current media key for `to`, encrypted with the pair key.
    fn key_message(&self, to: &str) -> Result<Outgoing, E2eeError> {
        let peer = self.peers.get(to).ok_or(E2eeError::UnknownPeer)?;
        let key = peer.key.as_ref().ok_or(E2eeError::UnknownPeer)?;
        let mut iv = [0u8; 12];
        self.rng.fill(&mut iv).map_err(|_| E2eeError::Crypto)?;
        let aad = transcript(
            "key",
            &[
                self.room.as_bytes(),
                self.me.as_bytes(),
                to.as_bytes(),
                &self.kid.to_be_bytes(),
            ],
        );
        let mut buf = self.media_key.to_vec();
        key.seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(iv),
            aead::Aad::from(&aad),
            &mut buf,
        )
        .map_err(|_| E2eeError::Crypto)?;
        Ok(Outgoing {
            to: Some(to.to_string()),
            blob: encode(&Message::Key {
                v: VERSION,
                from: self.me.clone(),
                to: to.to_string(),
                kid: self.kid,
                iv: B64.encode(iv),
                ct: B64.encode(&buf),
            }),
        })
    }

    /// `participant` left: forget it and rotate, so it cannot read what follows.
    /// Returns the new key for every remaining member.
    pub fn peer_left(&mut self, participant: &str) -> Result<Vec<Outgoing>, E2eeError> {
        self.rejected.remove(participant);
        if self.peers.remove(participant).is_none() {
            return Ok(Vec::new());
        }
        self.rotate()
    }

    /// A new media key under the next KID, sent to every member with a channel. The
    /// new [`E2ee::encryptor`] is in use from now on.
    pub fn rotate(&mut self) -> Result<Vec<Outgoing>, E2eeError> {
        let mut media_key = [0u8; MEDIA_KEY_LEN];
        self.rng
            .fill(&mut media_key)
            .map_err(|_| E2eeError::Crypto)?;
        self.kid += 1;
        self.media_key = media_key;
        self.encryptor = Arc::new(Encryptor::new(self.kid, &media_key)?);
        #[cfg(feature = "key-audit")]
        self.held.push(HeldKey {
            owner: self.me.clone(),
            kid: self.kid,
            key: media_key,
        });
        let mut to: Vec<&String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.key.is_some())
            .map(|(id, _)| id)
            .collect();
        to.sort();
        to.into_iter().map(|id| self.key_message(id)).collect()
    }

    /// Decrypts a frame from `from` (the track's stream id).
    pub fn decrypt_frame(
        &mut self,
        from: &str,
        codec: Codec,
        frame: &[u8],
    ) -> Result<Vec<u8>, E2eeError> {
        let peer = self.peers.get_mut(from).ok_or(E2eeError::UnknownPeer)?;
        Ok(peer.ring.decrypt_frame(codec, frame)?)
    }

    /// Every media key held so far (own and members'), for tests that search the
    /// server for them. Only with the `key-audit` feature.
    #[cfg(feature = "key-audit")]
    pub fn held_keys(&self) -> Vec<HeldKey> {
        self.held.clone()
    }

    /// Encrypts an outgoing frame with the current key.
    pub fn encrypt_frame(&self, codec: Codec, frame: &[u8]) -> Result<Vec<u8>, E2eeError> {
        Ok(self.encryptor.encrypt_frame(codec, frame)?)
    }
}

fn encode(msg: &Message) -> String {
    // Serialising these plain structs cannot fail; an empty blob would be refused by
    // every receiver anyway.
    B64.encode(serde_json::to_vec(msg).unwrap_or_default())
}

fn decode(blob: &str) -> Result<Message, E2eeError> {
    if blob.len() > MAX_BLOB_BYTES {
        return Err(E2eeError::Malformed);
    }
    let raw = B64.decode(blob).map_err(|_| E2eeError::Malformed)?;
    serde_json::from_slice(&raw).map_err(|_| E2eeError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A relay that behaves like signaling: broadcast to everyone else, or to one.
    struct Room {
        members: Vec<E2ee>,
        queue: VecDeque<(String, Outgoing)>,
    }

    impl Room {
        fn new() -> Self {
            Room {
                members: Vec::new(),
                queue: VecDeque::new(),
            }
        }

        fn join(&mut self, secret: &str, id: &str) {
            let p = E2ee::new(secret, "room1", id).unwrap();
            for o in p.start() {
                self.queue.push_back((id.to_string(), o));
            }
            self.members.push(p);
            self.run();
        }

        fn leave(&mut self, id: &str) {
            self.members.retain(|m| m.me != id);
            for i in 0..self.members.len() {
                let out = self.members[i].peer_left(id).unwrap();
                let me = self.members[i].me.clone();
                for o in out {
                    self.queue.push_back((me.clone(), o));
                }
            }
            self.run();
        }

        fn run(&mut self) {
            while let Some((from, o)) = self.queue.pop_front() {
                let targets: Vec<usize> = (0..self.members.len())
                    .filter(|i| {
                        let m = &self.members[*i];
                        m.me != from && o.to.as_ref().is_none_or(|t| *t == m.me)
                    })
                    .collect();
                for i in targets {
                    let me = self.members[i].me.clone();
                    // Refused messages are dropped, as a client does.
                    if let Ok(out) = self.members[i].handle(&from, &o.blob) {
                        for r in out {
                            self.queue.push_back((me.clone(), r));
                        }
                    }
                }
            }
        }

        fn get(&mut self, id: &str) -> &mut E2ee {
            self.members.iter_mut().find(|m| m.me == id).unwrap()
        }
    }

    fn key_frame() -> Vec<u8> {
        let mut f = vec![0x50, 0x2a, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01];
        f.extend([7u8; 64]);
        f
    }

    #[test]
    fn members_exchange_keys_and_agree_on_the_code() {
        let secret = generate_secret().unwrap();
        let mut room = Room::new();
        room.join(&secret, "alice");
        room.join(&secret, "bob");
        room.join(&secret, "carol");
        let code = room.get("alice").security_code();
        assert_eq!(room.get("bob").security_code(), code);
        assert_eq!(room.get("carol").security_code(), code);
        assert_eq!(code.len(), 14);
        for a in ["alice", "bob", "carol"] {
            let sealed = room.get(a).encrypt_frame(Codec::Vp8, &key_frame()).unwrap();
            assert_eq!(&sealed[3..6], &[0x9d, 0x01, 0x2a]);
            for b in ["alice", "bob", "carol"] {
                if a != b {
                    assert!(room.get(b).has_key_from(a), "{b} has {a}'s key");
                    let pt = room.get(b).decrypt_frame(a, Codec::Vp8, &sealed).unwrap();
                    assert_eq!(pt, key_frame());
                }
            }
        }
    }

    #[test]
    fn a_wrong_secret_gets_no_key_and_a_different_code() {
        let secret = generate_secret().unwrap();
        let mut room = Room::new();
        room.join(&secret, "alice");
        room.join(&secret, "bob");
        room.join(&generate_secret().unwrap(), "mallory");
        let sealed = room
            .get("alice")
            .encrypt_frame(Codec::Opus, &[1, 2, 3])
            .unwrap();
        assert_eq!(
            room.get("mallory")
                .decrypt_frame("alice", Codec::Opus, &sealed),
            Err(E2eeError::UnknownPeer)
        );
        assert_eq!(
            room.get("alice").rejected("mallory"),
            Some(&E2eeError::BadMac)
        );
        assert_eq!(room.get("alice").members(), vec!["bob".to_string()]);
        let code = room.get("alice").security_code();
        assert_eq!(room.get("bob").security_code(), code);
        assert_ne!(room.get("mallory").security_code(), code);
        // Bob is unaffected.
        assert!(
            room.get("bob")
                .decrypt_frame("alice", Codec::Opus, &sealed)
                .is_ok()
        );
    }

    #[test]
    fn leaving_rotates_so_the_departed_cannot_read_on() {
        let secret = generate_secret().unwrap();
        let mut room = Room::new();
        room.join(&secret, "alice");
        room.join(&secret, "bob");
        room.join(&secret, "carol");
        let before = room.get("alice").encrypt_frame(Codec::Opus, &[1]).unwrap();
        assert!(
            room.get("carol")
                .decrypt_frame("alice", Codec::Opus, &before)
                .is_ok()
        );
        // Carol leaves but keeps everything she had.
        let carol_at = room.members.iter().position(|m| m.me == "carol").unwrap();
        let mut carol = room.members.remove(carol_at);
        room.leave("carol");
        assert_eq!(room.get("alice").kid(), 1);
        assert_eq!(room.get("bob").kid(), 1);
        let after = room.get("alice").encrypt_frame(Codec::Opus, &[2]).unwrap();
        assert!(
            room.get("bob")
                .decrypt_frame("alice", Codec::Opus, &after)
                .is_ok()
        );
        assert_eq!(
            carol.decrypt_frame("alice", Codec::Opus, &after),
            Err(E2eeError::Sframe(SframeError::UnknownKid(1)))
        );
        // Bob and Alice still agree, now without Carol.
        let code = room.get("alice").security_code();
        assert_eq!(room.get("bob").security_code(), code);
        assert_ne!(carol.security_code(), code);
    }

    #[test]
    fn the_server_cannot_forge_or_redirect() {
        let secret = generate_secret().unwrap();
        let mut alice = E2ee::new(&secret, "room1", "alice").unwrap();
        let bob = E2ee::new(&secret, "room1", "bob").unwrap();
        let hello = bob.start().remove(0).blob;
        // Relayed as if from someone else: the MAC binds the sender.
        assert_eq!(alice.handle("eve", &hello), Err(E2eeError::Misaddressed));
        // A hello for another room does not verify.
        let other_room = E2ee::new(&secret, "room2", "bob").unwrap();
        assert_eq!(
            alice.handle("bob", &other_room.start().remove(0).blob),
            Err(E2eeError::BadMac)
        );
        assert_eq!(alice.handle("bob", "%%%"), Err(E2eeError::Malformed));
        assert_eq!(
            alice.handle("bob", &B64.encode(br#"{"t":"hello"}"#)),
            Err(E2eeError::Malformed)
        );
        assert!(alice.handle("bob", &hello).is_ok());
        assert_eq!(
            E2ee::new("short", "r", "p").err(),
            Some(E2eeError::BadSecret)
        );
    }

    #[test]
    fn security_code_ignores_order() {
        let a = [1u8; 65];
        let b = [2u8; 65];
        assert_eq!(security_code_for(&[&a, &b]), security_code_for(&[&b, &a]));
        assert_ne!(security_code_for(&[&a, &b]), security_code_for(&[&a]));
    }

    fn fixture_path(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../web/test/fixtures")
            .join(name)
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn to_hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn key_aad(room: &str, from: &str, to: &str, kid: u64) -> Vec<u8> {
        transcript(
            "key",
            &[
                room.as_bytes(),
                from.as_bytes(),
                to.as_bytes(),
                &kid.to_be_bytes(),
            ],
        )
    }

    /// Blobs made by `web/keys.js` (fixtures/keys-js.json) verify here.
    #[test]
    fn js_key_fixture_verifies() {
        let text = std::fs::read_to_string(fixture_path("keys-js.json")).unwrap();
        let f: serde_json::Value = serde_json::from_str(&text).unwrap();
        let s = |k: &str| f[k].as_str().unwrap().to_string();
        let (room, from, to) = (s("room"), s("from"), s("to"));
        let mut me = E2ee::new(&s("secret"), &room, &to).unwrap();
        assert_eq!(me.handle(&from, &s("hello")).unwrap().len(), 2);
        // The JS identity's ECDSA signature (r ‖ s) verifies; the reply is our key.
        let out = me.handle(&from, &s("pair")).unwrap();
        assert_eq!(out.len(), 1);
        let mut stranger = E2ee::new(&generate_secret().unwrap(), &room, &to).unwrap();
        assert_eq!(stranger.handle(&from, &s("hello")), Err(E2eeError::BadMac));

        // The key message under the pair key derived from the fixture's ECDH output.
        let mut me = E2ee::new(&s("secret"), &room, &to).unwrap();
        me.handle(&from, &s("hello")).unwrap();
        let key = pair_key(
            &me.keys.pair_salt,
            &hex(&s("shared")),
            &room,
            (&from, &hex(&s("from_pair_pub"))),
            (&to, &hex(&s("to_pair_pub"))),
        )
        .unwrap();
        me.peers.get_mut(&from).unwrap().key = Some(key);
        assert!(me.handle(&from, &s("key")).unwrap().is_empty());
        let kid = f["kid"].as_u64().unwrap();
        let sender = Encryptor::new(kid, &hex(&s("media_key"))).unwrap();
        let sealed = sender.encrypt_frame(Codec::Opus, &[1, 2, 3]).unwrap();
        assert_eq!(
            me.decrypt_frame(&from, Codec::Opus, &sealed).unwrap(),
            vec![1, 2, 3]
        );

        let ids: Vec<Vec<u8>> = f["code_identities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| hex(v.as_str().unwrap()))
            .collect();
        let ids: Vec<&[u8]> = ids.iter().map(|v| v.as_slice()).collect();
        assert_eq!(security_code_for(&ids), s("code"));
    }

    fn make_rust_fixture(js: &serde_json::Value) -> serde_json::Value {
        let secret = generate_secret().unwrap();
        let room = "cross-room";
        let (from, to) = ("rust-bob", "js-alice");
        let mut me = E2ee::new(&secret, room, from).unwrap();
        let hello = me.start().remove(0).blob;
        let alice = E2ee::new(&secret, room, to).unwrap();
        let replies = me.handle(to, &alice.start().remove(0).blob).unwrap();
        let pair = replies[1].blob.clone();
        assert!(matches!(decode(&pair).unwrap(), Message::Pair { .. }));
        // ECDH against the JS fixture's test key; JS checks it gets the same secret.
        let rng = SystemRandom::new();
        let x = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng).unwrap();
        let x_pub = x.compute_public_key().unwrap().as_ref().to_vec();
        let y_pub = hex(js["to_pair_pub"].as_str().unwrap());
        let shared = agreement::agree_ephemeral(
            x,
            &agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, &y_pub),
            |k| k.to_vec(),
        )
        .unwrap();
        let key = pair_key(
            &me.keys.pair_salt,
            &shared,
            room,
            (from, &x_pub),
            (to, &y_pub),
        )
        .unwrap();
        let mut media_key = [0u8; 16];
        rng.fill(&mut media_key).unwrap();
        let mut iv = [0u8; 12];
        rng.fill(&mut iv).unwrap();
        let kid = 7;
        let mut ct = media_key.to_vec();
        key.seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(iv),
            aead::Aad::from(key_aad(room, from, to, kid)),
            &mut ct,
        )
        .unwrap();
        let key_blob = encode(&Message::Key {
            v: VERSION,
            from: from.into(),
            to: to.into(),
            kid,
            iv: B64.encode(iv),
            ct: B64.encode(&ct),
        });
        let ids = [
            me.identity().to_vec(),
            alice.identity().to_vec(),
            x_pub.clone(),
        ];
        let id_refs: Vec<&[u8]> = ids.iter().map(|v| v.as_slice()).collect();
        serde_json::json!({
            "about": "Key management blobs made by bench/src/e2ee.rs (js_key_fixture test module); test keys only",
            "secret": secret,
            "room": room,
            "from": from,
            "to": to,
            "hello": hello,
            "pair": pair,
            "from_pair_pub": to_hex(&x_pub),
            "to_pair_pub": to_hex(&y_pub),
            "shared": to_hex(&shared),
            "key": key_blob,
            "media_key": to_hex(&media_key),
            "kid": kid,
            "code_identities": ids.iter().map(|v| to_hex(v)).collect::<Vec<_>>(),
            "code": security_code_for(&id_refs),
        })
    }

    /// fixtures/keys-rust.json (checked by web/test/keys-cross.test.mjs) is consistent;
    /// `VEIL_WRITE_FIXTURES=1` remakes it against the current keys-js.json.
    #[test]
    fn rust_key_fixture_is_consistent() {
        let path = fixture_path("keys-rust.json");
        if std::env::var_os("VEIL_WRITE_FIXTURES").is_some() {
            let js: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(fixture_path("keys-js.json")).unwrap(),
            )
            .unwrap();
            let f = make_rust_fixture(&js);
            std::fs::write(&path, serde_json::to_string_pretty(&f).unwrap() + "\n").unwrap();
        }
        let f: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let s = |k: &str| f[k].as_str().unwrap().to_string();
        let mut alice = E2ee::new(&s("secret"), &s("room"), &s("to")).unwrap();
        assert_eq!(alice.handle(&s("from"), &s("hello")).unwrap().len(), 2);
        assert_eq!(alice.handle(&s("from"), &s("pair")).unwrap().len(), 1);
    }
}
