//! The rooms signaling knows: which ids exist, who joined under which display name, and
//! who is present on a WebSocket right now (presence: the participant list, media state
//! and the relay of opaque E2EE blobs between members of one room).
//! Held in memory only; a room is forgotten when it expires.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio::sync::mpsc::Sender;

use crate::message::{MediaState, Peer, ServerMessage};
use veil_sfu::CloseReason;

/// Room messages (presence, E2EE blobs, `closed`) queued for one member's socket at
/// most: room for everyone of a full room joining, announcing its state and sending its
/// key at once (3 × 100 + margin), at most 16 MiB of blobs. A member that lets its queue
/// fill up is not reading: its connection ends it (`slow_client`), and what did not fit
/// is dropped rather than buffered without bound.
pub const ROOM_QUEUE: usize = 1024;

/// SHA-256 of a host key, hex: what is kept of it, here and in the database.
fn key_hash(key: &str) -> String {
    veil_accounts::token::hashed(key)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoomError {
    #[error("no such room")]
    NotFound,
    #[error("too many rooms are open")]
    Full,
    #[error("the room has reached its participant limit")]
    RoomFull,
    #[error("no such participant in this room")]
    UnknownParticipant,
    #[error("only the meeting's host may do that")]
    NotHost,
    #[error("this join grant was already used; ask for a new one")]
    GrantUsed,
}

/// A room just created: its id, and the key that makes a joiner its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedRoom {
    pub room: String,
    pub host_key: String,
}

struct Member {
    display_name: String,
    /// The logged-in account that joined (for its usage record), if any.
    account: Option<String>,
    /// Joined with the room's host key: may remove others and end the meeting.
    host: bool,
    state: MediaState,
    /// The member's WebSocket, while it is connected.
    connection: Option<Sender<ServerMessage>>,
    /// Its join grant has been presented: a grant admits once.
    grant_used: bool,
}

struct RoomRecord {
    created: Instant,
    /// The account that created the room; its closure ends the meeting.
    owner: Option<String>,
    /// SHA-256 of the host key; the key itself is only ever with the creator.
    host_key: String,
    /// participant id → member, for the participant list and the relay.
    participants: HashMap<String, Member>,
}

impl RoomRecord {
    fn member_mut(&mut self, participant: &str) -> Result<&mut Member, RoomError> {
        self.participants
            .get_mut(participant)
            .ok_or(RoomError::UnknownParticipant)
    }

    /// Connected members but `except`, in a stable order.
    fn peers(&self, except: &str) -> Vec<Peer> {
        let mut peers: Vec<Peer> = self
            .participants
            .iter()
            .filter(|(id, m)| *id != except && m.connection.is_some())
            .map(|(id, m)| Peer {
                participant: id.clone(),
                display_name: m.display_name.clone(),
                state: m.state,
            })
            .collect();
        peers.sort_by(|a, b| a.participant.cmp(&b.participant));
        peers
    }

    /// Tells every connected member the meeting has ended.
    fn end(&self) {
        for member in self.participants.values() {
            if let Some(tx) = &member.connection {
                let _ = tx.try_send(ServerMessage::Closed {
                    reason: CloseReason::MeetingEnded,
                });
            }
        }
    }

    /// Sends `msg` to every connected member but `except`.
    fn broadcast(&self, except: &str, msg: &ServerMessage) {
        for (id, member) in &self.participants {
            if id != except
                && let Some(tx) = &member.connection
            {
                let _ = tx.try_send(msg.clone());
            }
        }
    }
}

pub struct RoomDirectory {
    rooms: Mutex<HashMap<String, RoomRecord>>,
    max_rooms: usize,
    max_participants: usize,
    ttl: Duration,
}

/// 128-bit random id, base64url without padding (22 characters).
pub fn new_room_id() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

/// 96-bit random id, base64url without padding (16 characters).
pub fn new_participant_id() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 12]>())
}

impl RoomDirectory {
    pub fn new(max_rooms: usize, max_participants: usize, ttl: Duration) -> Self {
        RoomDirectory {
            rooms: Mutex::new(HashMap::new()),
            max_rooms,
            max_participants,
            ttl,
        }
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<String, RoomRecord>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn create(&self, now: Instant, owner: Option<&str>) -> Result<CreatedRoom, RoomError> {
        let mut rooms = self.rooms();
        let ttl = self.ttl;
        rooms.retain(|_, r| now.saturating_duration_since(r.created) < ttl);
        if rooms.len() >= self.max_rooms {
            return Err(RoomError::Full);
        }
        let id = new_room_id();
        let host_key = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>());
        rooms.insert(
            id.clone(),
            RoomRecord {
                created: now,
                owner: owner.map(str::to_string),
                host_key: key_hash(&host_key),
                participants: HashMap::new(),
            },
        );
        Ok(CreatedRoom { room: id, host_key })
    }

    /// Brings back a room this process does not know but the database does (signaling
    /// restarted while its meeting went on), with nobody in it yet.
    pub fn restore(
        &self,
        room: &str,
        host_key_hash: String,
        owner: Option<&str>,
        created: Instant,
    ) -> Result<(), RoomError> {
        let mut rooms = self.rooms();
        if rooms.contains_key(room) {
            return Ok(());
        }
        if rooms.len() >= self.max_rooms {
            return Err(RoomError::Full);
        }
        rooms.insert(
            room.to_string(),
            RoomRecord {
                created,
                owner: owner.map(str::to_string),
                host_key: host_key_hash,
                participants: HashMap::new(),
            },
        );
        Ok(())
    }

    /// Forgets a room that was never handed out (its creation could not be stored).
    pub fn forget(&self, room: &str) {
        self.rooms().remove(room);
    }

    /// Admits a new participant id into an existing, unexpired room; with the room's
    /// host key, as its host.
    pub fn join(
        &self,
        room: &str,
        display_name: &str,
        host_key: Option<&str>,
        account: Option<&str>,
        now: Instant,
    ) -> Result<String, RoomError> {
        let mut rooms = self.rooms();
        let record = rooms.get_mut(room).ok_or(RoomError::NotFound)?;
        if now.saturating_duration_since(record.created) >= self.ttl {
            rooms.remove(room);
            return Err(RoomError::NotFound);
        }
        if record.participants.len() >= self.max_participants {
            return Err(RoomError::RoomFull);
        }
        let host = match host_key {
            Some(key) if key_hash(key) == record.host_key => true,
            Some(_) => return Err(RoomError::NotHost),
            None => false,
        };
        let participant = new_participant_id();
        record.participants.insert(
            participant.clone(),
            Member {
                display_name: display_name.to_string(),
                account: account.map(str::to_string),
                host,
                state: MediaState::default(),
                connection: None,
                grant_used: false,
            },
        );
        Ok(participant)
    }

    /// Marks the join grant naming `participant` as used: the first presentation
    /// passes, any later one (a replay, or a copy presented elsewhere) gets
    /// [`RoomError::GrantUsed`] instead of taking over the participant.
    pub fn use_grant(&self, room: &str, participant: &str) -> Result<(), RoomError> {
        let mut rooms = self.rooms();
        let member = rooms
            .get_mut(room)
            .ok_or(RoomError::NotFound)?
            .member_mut(participant)?;
        if std::mem::replace(&mut member.grant_used, true) {
            return Err(RoomError::GrantUsed);
        }
        Ok(())
    }

    /// Marks a participant present on `connection`: the others hear it joined, and it
    /// gets the list of those already present.
    pub fn attach(
        &self,
        room: &str,
        participant: &str,
        connection: Sender<ServerMessage>,
    ) -> Result<Vec<Peer>, RoomError> {
        self.connect(room, participant, connection, true)
    }

    /// Points a present participant's presence at a new socket (a resumed
    /// connection); the others hear nothing, as nobody left.
    pub fn reattach(
        &self,
        room: &str,
        participant: &str,
        connection: Sender<ServerMessage>,
    ) -> Result<Vec<Peer>, RoomError> {
        self.connect(room, participant, connection, false)
    }

    fn connect(
        &self,
        room: &str,
        participant: &str,
        connection: Sender<ServerMessage>,
        announce: bool,
    ) -> Result<Vec<Peer>, RoomError> {
        let mut rooms = self.rooms();
        let record = rooms.get_mut(room).ok_or(RoomError::NotFound)?;
        let member = record.member_mut(participant)?;
        member.connection = Some(connection);
        if announce {
            let joined = ServerMessage::ParticipantJoined {
                participant: participant.to_string(),
                display_name: member.display_name.clone(),
            };
            record.broadcast(participant, &joined);
        }
        Ok(record.peers(participant))
    }

    /// The host removes `target`: its connection is told and ends itself (and the
    /// others then hear it left).
    pub fn remove(&self, room: &str, by: &str, target: &str) -> Result<(), RoomError> {
        let mut rooms = self.rooms();
        let record = rooms.get_mut(room).ok_or(RoomError::NotFound)?;
        if !record.participants.get(by).is_some_and(|m| m.host) {
            return Err(RoomError::NotHost);
        }
        if target == by {
            return Err(RoomError::UnknownParticipant);
        }
        let member = record
            .participants
            .get(target)
            .ok_or(RoomError::UnknownParticipant)?;
        match &member.connection {
            Some(tx) => {
                let _ = tx.try_send(ServerMessage::Closed {
                    reason: CloseReason::Removed,
                });
            }
            None => {
                record.participants.remove(target);
            }
        }
        Ok(())
    }

    /// Whether `participant` may act as the meeting's host.
    pub fn check_host(&self, room: &str, participant: &str) -> Result<(), RoomError> {
        let rooms = self.rooms();
        let record = rooms.get(room).ok_or(RoomError::NotFound)?;
        if record.participants.get(participant).is_some_and(|m| m.host) {
            Ok(())
        } else {
            Err(RoomError::NotHost)
        }
    }

    /// The host ends the meeting: everyone is told and the room is gone for good.
    pub fn end_meeting(&self, room: &str, by: &str) -> Result<(), RoomError> {
        let mut rooms = self.rooms();
        let record = rooms.get(room).ok_or(RoomError::NotFound)?;
        if !record.participants.get(by).is_some_and(|m| m.host) {
            return Err(RoomError::NotHost);
        }
        record.end();
        rooms.remove(room);
        Ok(())
    }

    /// Ends every meeting `account` created (its account closed); returns how many.
    pub fn end_meetings_of(&self, account: &str) -> usize {
        let mut rooms = self.rooms();
        let before = rooms.len();
        rooms.retain(|_, record| {
            let owned = record.owner.as_deref() == Some(account);
            if owned {
                record.end();
            }
            !owned
        });
        before - rooms.len()
    }

    /// The account a participant joined as, if logged in.
    pub fn account_of(&self, room: &str, participant: &str) -> Option<String> {
        self.rooms()
            .get(room)?
            .participants
            .get(participant)?
            .account
            .clone()
    }

    /// The others present in a room.
    pub fn peers(&self, room: &str, participant: &str) -> Vec<Peer> {
        self.rooms()
            .get(room)
            .map(|r| r.peers(participant))
            .unwrap_or_default()
    }

    /// Forgets a participant once its session ended; the others hear it left.
    pub fn leave(&self, room: &str, participant: &str) {
        if let Some(record) = self.rooms().get_mut(room)
            && let Some(member) = record.participants.remove(participant)
            && member.connection.is_some()
        {
            let left = ServerMessage::ParticipantLeft {
                participant: participant.to_string(),
            };
            record.broadcast(participant, &left);
        }
    }

    /// Records and announces a participant's media state.
    pub fn set_state(
        &self,
        room: &str,
        participant: &str,
        state: MediaState,
    ) -> Result<(), RoomError> {
        let mut rooms = self.rooms();
        let record = rooms.get_mut(room).ok_or(RoomError::NotFound)?;
        record.member_mut(participant)?.state = state;
        let msg = ServerMessage::ParticipantState {
            participant: participant.to_string(),
            state,
        };
        record.broadcast(participant, &msg);
        Ok(())
    }

    /// Relays an opaque blob from `from` to one connected member of the same room, or
    /// to all the others. The blob is passed on as it came, never looked into.
    pub fn relay_e2ee(
        &self,
        room: &str,
        from: &str,
        to: Option<&str>,
        blob: String,
    ) -> Result<(), RoomError> {
        let rooms = self.rooms();
        let record = rooms.get(room).ok_or(RoomError::NotFound)?;
        let msg = ServerMessage::E2ee {
            from: from.to_string(),
            blob,
        };
        match to {
            None => record.broadcast(from, &msg),
            Some(to) => {
                let target = record
                    .participants
                    .get(to)
                    .filter(|_| to != from)
                    .and_then(|m| m.connection.as_ref())
                    .ok_or(RoomError::UnknownParticipant)?;
                let _ = target.try_send(msg);
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.rooms().len()
    }

    /// Participants connected on a WebSocket, across all rooms.
    pub fn present(&self) -> usize {
        self.rooms()
            .values()
            .flat_map(|r| r.participants.values())
            .filter(|m| m.connection.is_some())
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms().is_empty()
    }
}

/// A display name: the same rule for guests and account holders.
pub use veil_accounts::profile::clean_display_name;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids_are_128_bit_base64url() {
        let id = new_room_id();
        assert_eq!(id.len(), 22);
        assert!(veil_sfu::grant::valid_id(&id));
        assert_ne!(id, new_room_id());
        assert!(veil_sfu::grant::valid_id(&new_participant_id()));
    }

    #[test]
    fn rooms_expire_and_are_bounded() {
        let t0 = Instant::now();
        let dir = RoomDirectory::new(2, 2, Duration::from_secs(10));
        let a = dir.create(t0, None).unwrap().room;
        dir.create(t0, None).unwrap();
        assert_eq!(dir.create(t0, None), Err(RoomError::Full));
        assert!(dir.join(&a, "Ann", None, None, t0).is_ok());
        assert!(dir.join(&a, "Bo", None, None, t0).is_ok());
        assert_eq!(dir.join(&a, "Cy", None, None, t0), Err(RoomError::RoomFull));
        let later = t0 + Duration::from_secs(11);
        assert_eq!(
            dir.join(&a, "Dee", None, None, later),
            Err(RoomError::NotFound)
        );
        assert!(dir.create(later, None).is_ok());
        assert_eq!(dir.len(), 1);
        assert_eq!(
            dir.join("nope", "X", None, None, t0),
            Err(RoomError::NotFound)
        );
    }

    #[test]
    fn a_restored_room_keeps_its_host_key_owner_and_age() {
        let t0 = Instant::now();
        let before = RoomDirectory::new(10, 10, Duration::from_secs(60));
        let created = before.create(t0, Some("acct")).unwrap();
        // A new process: the room comes back from its stored hashes only.
        let after = RoomDirectory::new(1, 10, Duration::from_secs(60));
        assert_eq!(
            after.join(&created.room, "Ann", None, None, t0),
            Err(RoomError::NotFound)
        );
        let stored_hash = key_hash(&created.host_key);
        after
            .restore(&created.room, stored_hash.clone(), Some("acct"), t0)
            .unwrap();
        // Restoring twice (two joins racing) keeps one room.
        after
            .restore(&created.room, stored_hash, Some("acct"), t0)
            .unwrap();
        assert_eq!(after.len(), 1);
        assert_eq!(
            after.restore("other", key_hash("k"), None, t0),
            Err(RoomError::Full)
        );
        assert_eq!(
            after.join(&created.room, "Eve", Some("guess"), None, t0),
            Err(RoomError::NotHost)
        );
        let host = after
            .join(&created.room, "Host", Some(&created.host_key), None, t0)
            .unwrap();
        let guest = after.join(&created.room, "Bo", None, None, t0).unwrap();
        assert_eq!(
            after.check_host(&created.room, &guest),
            Err(RoomError::NotHost)
        );
        assert_eq!(after.check_host(&created.room, &host), Ok(()));
        assert_eq!(
            after.end_meeting(&created.room, &guest),
            Err(RoomError::NotHost)
        );
        assert!(after.end_meeting(&created.room, &host).is_ok());
        // Its age came along: it expires when the original would have.
        after
            .restore(&created.room, key_hash(&created.host_key), Some("acct"), t0)
            .unwrap();
        assert_eq!(after.end_meetings_of("acct"), 1);
        let old = RoomDirectory::new(10, 10, Duration::from_secs(60));
        old.restore("r", key_hash("k"), None, t0).unwrap();
        assert_eq!(
            old.join("r", "Late", None, None, t0 + Duration::from_secs(61)),
            Err(RoomError::NotFound)
        );
        // A room whose creation could not be stored is forgotten.
        before.forget(&created.room);
        assert!(before.is_empty());
    }

    #[test]
    fn only_the_host_removes_and_ends() {
        use tokio::sync::mpsc::channel;
        let t0 = Instant::now();
        let dir = RoomDirectory::new(10, 10, Duration::from_secs(60));
        let created = dir.create(t0, None).unwrap();
        let room = created.room.clone();
        assert_eq!(
            dir.join(&room, "Mallory", Some("wrong-key"), None, t0),
            Err(RoomError::NotHost)
        );
        let host = dir
            .join(&room, "Host", Some(&created.host_key), None, t0)
            .unwrap();
        let ann = dir.join(&room, "Ann", None, None, t0).unwrap();
        let bo = dir.join(&room, "Bo", None, None, t0).unwrap();
        let (host_tx, mut host_rx) = channel(ROOM_QUEUE);
        let (ann_tx, mut ann_rx) = channel(ROOM_QUEUE);
        let (bo_tx, mut bo_rx) = channel(ROOM_QUEUE);
        dir.attach(&room, &host, host_tx).unwrap();
        dir.attach(&room, &ann, ann_tx).unwrap();
        dir.attach(&room, &bo, bo_tx).unwrap();
        drain(&mut host_rx);
        drain(&mut ann_rx);
        assert_eq!(dir.remove(&room, &ann, &bo), Err(RoomError::NotHost));
        assert_eq!(dir.end_meeting(&room, &ann), Err(RoomError::NotHost));
        dir.remove(&room, &host, &bo).unwrap();
        assert_eq!(
            drain(&mut bo_rx),
            vec![ServerMessage::Closed {
                reason: CloseReason::Removed
            }]
        );
        assert!(drain(&mut ann_rx).is_empty());
        dir.end_meeting(&room, &host).unwrap();
        let ended = ServerMessage::Closed {
            reason: CloseReason::MeetingEnded,
        };
        assert_eq!(drain(&mut ann_rx), vec![ended.clone()]);
        assert_eq!(drain(&mut host_rx), vec![ended]);
        assert_eq!(
            dir.join(&room, "Late", None, None, t0),
            Err(RoomError::NotFound)
        );
    }

    fn drain(rx: &mut tokio::sync::mpsc::Receiver<ServerMessage>) -> Vec<ServerMessage> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            out.push(m);
        }
        out
    }

    #[test]
    fn presence_and_relay_stay_inside_one_room() {
        use tokio::sync::mpsc::channel;
        let t0 = Instant::now();
        let dir = RoomDirectory::new(10, 10, Duration::from_secs(60));
        let room = dir.create(t0, None).unwrap().room;
        let other_room = dir.create(t0, None).unwrap().room;
        let ann = dir.join(&room, "Ann", None, None, t0).unwrap();
        let bo = dir.join(&room, "Bo", None, None, t0).unwrap();
        let cy = dir.join(&other_room, "Cy", None, None, t0).unwrap();
        let (ann_tx, mut ann_rx) = channel(ROOM_QUEUE);
        let (bo_tx, mut bo_rx) = channel(ROOM_QUEUE);
        let (cy_tx, mut cy_rx) = channel(ROOM_QUEUE);
        assert!(dir.attach(&room, &ann, ann_tx).unwrap().is_empty());
        let peers = dir.attach(&room, &bo, bo_tx).unwrap();
        assert_eq!(peers.len(), 1);
        assert_eq!(
            (
                peers[0].participant.as_str(),
                peers[0].display_name.as_str()
            ),
            (ann.as_str(), "Ann")
        );
        dir.attach(&other_room, &cy, cy_tx).unwrap();
        assert_eq!(
            drain(&mut ann_rx),
            vec![ServerMessage::ParticipantJoined {
                participant: bo.clone(),
                display_name: "Bo".into()
            }]
        );

        dir.relay_e2ee(&room, &ann, Some(&bo), "blob-1".into())
            .unwrap();
        dir.relay_e2ee(&room, &bo, None, "blob-2".into()).unwrap();
        assert_eq!(
            drain(&mut bo_rx),
            vec![ServerMessage::E2ee {
                from: ann.clone(),
                blob: "blob-1".into()
            }]
        );
        assert_eq!(
            drain(&mut ann_rx),
            vec![ServerMessage::E2ee {
                from: bo.clone(),
                blob: "blob-2".into()
            }]
        );
        // Another room's member is not an addressee, nor is oneself.
        assert_eq!(
            dir.relay_e2ee(&room, &ann, Some(&cy), "x".into()),
            Err(RoomError::UnknownParticipant)
        );
        assert_eq!(
            dir.relay_e2ee(&room, &ann, Some(&ann), "x".into()),
            Err(RoomError::UnknownParticipant)
        );
        assert!(drain(&mut cy_rx).is_empty());

        let muted = MediaState {
            audio_muted: true,
            ..MediaState::default()
        };
        dir.set_state(&room, &ann, muted).unwrap();
        assert_eq!(
            drain(&mut bo_rx),
            vec![ServerMessage::ParticipantState {
                participant: ann.clone(),
                state: muted
            }]
        );
        dir.leave(&room, &bo);
        assert_eq!(
            drain(&mut ann_rx),
            vec![ServerMessage::ParticipantLeft { participant: bo }]
        );
        assert!(drain(&mut cy_rx).is_empty());
    }

    #[test]
    fn closing_an_account_ends_its_meetings_only() {
        let dir = RoomDirectory::new(10, 10, Duration::from_secs(60));
        let t0 = Instant::now();
        let mine = dir.create(t0, Some("acct-a")).unwrap();
        let theirs = dir.create(t0, Some("acct-b")).unwrap().room;
        let ann = dir
            .join(&mine.room, "Ann", None, Some("acct-c"), t0)
            .unwrap();
        assert_eq!(dir.account_of(&mine.room, &ann).as_deref(), Some("acct-c"));
        let (tx, mut rx) = tokio::sync::mpsc::channel(ROOM_QUEUE);
        dir.attach(&mine.room, &ann, tx).unwrap();
        assert_eq!(dir.end_meetings_of("acct-a"), 1);
        assert!(matches!(
            rx.try_recv(),
            Ok(ServerMessage::Closed {
                reason: CloseReason::MeetingEnded
            })
        ));
        assert_eq!(
            dir.join(&mine.room, "Late", None, None, t0),
            Err(RoomError::NotFound)
        );
        assert!(dir.join(&theirs, "Bo", None, None, t0).is_ok());
        assert_eq!(dir.end_meetings_of("acct-a"), 0);
    }
}
