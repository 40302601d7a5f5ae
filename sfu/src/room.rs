//! Rooms: who is in a room and what they publish. A room is known only by its opaque
//! id; it holds no names and lives exactly as long as it has members.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::UnboundedSender;

use crate::participant::SessionCmd;
use crate::signal::SessionId;
use crate::track::Producer;

/// A participant's place in a room: how to reach its session.
#[derive(Clone)]
pub struct Member {
    pub session: SessionId,
    pub commands: UnboundedSender<SessionCmd>,
    pub can_subscribe: bool,
}

#[derive(Default)]
struct RoomState {
    members: HashMap<String, Member>,
    producers: HashMap<String, Arc<Producer>>,
}

pub struct Room {
    pub id: String,
    state: Mutex<RoomState>,
}

impl Room {
    pub fn new(id: String) -> Self {
        Room {
            id,
            state: Mutex::new(RoomState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RoomState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a member. Returns the member it replaces (same participant joining again)
    /// and the tracks it should subscribe to.
    pub fn join(&self, participant: &str, member: Member) -> (Option<Member>, Vec<Arc<Producer>>) {
        let mut state = self.state();
        let existing = if member.can_subscribe {
            state
                .producers
                .values()
                .filter(|p| p.publisher != participant)
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let replaced = state.members.insert(participant.to_string(), member);
        (replaced, existing)
    }

    /// Removes a member (only if `session` is still the one registered) together with
    /// everything it published. Returns the removed producers and the members to tell.
    pub fn leave(
        &self,
        participant: &str,
        session: SessionId,
    ) -> (Vec<Arc<Producer>>, Vec<Member>) {
        let mut state = self.state();
        if state
            .members
            .get(participant)
            .is_some_and(|m| m.session == session)
        {
            state.members.remove(participant);
        }
        let owned: Vec<String> = state
            .producers
            .iter()
            .filter(|(_, p)| p.session == session)
            .map(|(id, _)| id.clone())
            .collect();
        let removed = owned
            .iter()
            .filter_map(|id| state.producers.remove(id))
            .collect();
        (removed, state.members.values().cloned().collect())
    }

    /// Publishes a track. Returns the members that should subscribe to it.
    pub fn add_producer(&self, producer: Arc<Producer>) -> Vec<Member> {
        let mut state = self.state();
        let subscribers = state
            .members
            .iter()
            .filter(|(id, m)| **id != producer.publisher && m.can_subscribe)
            .map(|(_, m)| m.clone())
            .collect();
        state.producers.insert(producer.id.clone(), producer);
        subscribers
    }

    /// Unpublishes a track. Returns the members to tell, if it was still published.
    pub fn remove_producer(&self, id: &str) -> Option<(Arc<Producer>, Vec<Member>)> {
        let mut state = self.state();
        let producer = state.producers.remove(id)?;
        Some((producer, state.members.values().cloned().collect()))
    }

    pub fn is_empty(&self) -> bool {
        self.state().members.is_empty()
    }

    pub fn member_count(&self) -> usize {
        self.state().members.len()
    }

    pub fn producer_count(&self) -> usize {
        self.state().producers.len()
    }
}
