//! The rooms signaling knows: which ids exist and who joined under which display name.
//! Held in memory only; a room is forgotten when it expires.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoomError {
    #[error("no such room")]
    NotFound,
    #[error("too many rooms are open")]
    Full,
    #[error("the room has reached its participant limit")]
    RoomFull,
}

struct RoomRecord {
    created: Instant,
    /// participant id → display name, for the participant list.
    participants: HashMap<String, String>,
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

    pub fn create(&self, now: Instant) -> Result<String, RoomError> {
        let mut rooms = self.rooms();
        let ttl = self.ttl;
        rooms.retain(|_, r| now.saturating_duration_since(r.created) < ttl);
        if rooms.len() >= self.max_rooms {
            return Err(RoomError::Full);
        }
        let id = new_room_id();
        rooms.insert(
            id.clone(),
            RoomRecord {
                created: now,
                participants: HashMap::new(),
            },
        );
        Ok(id)
    }

    /// Admits a new participant id into an existing, unexpired room.
    pub fn join(&self, room: &str, display_name: &str, now: Instant) -> Result<String, RoomError> {
        let mut rooms = self.rooms();
        let record = rooms.get_mut(room).ok_or(RoomError::NotFound)?;
        if now.saturating_duration_since(record.created) >= self.ttl {
            rooms.remove(room);
            return Err(RoomError::NotFound);
        }
        if record.participants.len() >= self.max_participants {
            return Err(RoomError::RoomFull);
        }
        let participant = new_participant_id();
        record
            .participants
            .insert(participant.clone(), display_name.to_string());
        Ok(participant)
    }

    /// Forgets a participant once its session ended.
    pub fn leave(&self, room: &str, participant: &str) {
        if let Some(record) = self.rooms().get_mut(room) {
            record.participants.remove(participant);
        }
    }

    pub fn len(&self) -> usize {
        self.rooms().len()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms().is_empty()
    }
}

/// A display name: 1–64 characters after trimming, no control characters.
pub fn clean_display_name(raw: &str) -> Option<String> {
    let name = raw.trim();
    let ok = !name.is_empty() && name.chars().count() <= 64 && !name.chars().any(char::is_control);
    ok.then(|| name.to_string())
}

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
        let a = dir.create(t0).unwrap();
        dir.create(t0).unwrap();
        assert_eq!(dir.create(t0), Err(RoomError::Full));
        assert!(dir.join(&a, "Ann", t0).is_ok());
        assert!(dir.join(&a, "Bo", t0).is_ok());
        assert_eq!(dir.join(&a, "Cy", t0), Err(RoomError::RoomFull));
        let later = t0 + Duration::from_secs(11);
        assert_eq!(dir.join(&a, "Dee", later), Err(RoomError::NotFound));
        assert!(dir.create(later).is_ok());
        assert_eq!(dir.len(), 1);
        assert_eq!(dir.join("nope", "X", t0), Err(RoomError::NotFound));
    }

    #[test]
    fn display_names_are_checked() {
        assert_eq!(clean_display_name("  Ann "), Some("Ann".into()));
        assert_eq!(clean_display_name("   "), None);
        assert_eq!(clean_display_name("a\u{7}b"), None);
        assert_eq!(clean_display_name(&"x".repeat(65)), None);
        assert_eq!(clean_display_name(&"é".repeat(64)), Some("é".repeat(64)));
    }
}
