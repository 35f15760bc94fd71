//! Established sessions, cached in memory: a frame costs one lookup and one
//! AEAD, no re-validation. Sessions are never persisted: after a restart,
//! new handshakes make new keys, so no nonce can repeat.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use openred_core::session::{Role, Session, SessionId};
use openred_core::{NodeId, SignedRecord, UnixTime};

/// One live session with a peer.
pub struct LiveSession {
    /// The peer.
    pub peer: NodeId,
    /// The peer's record as carried by the token (where to reach it).
    pub peer_record: SignedRecord,
    /// When the handshake finished.
    pub established_at: UnixTime,
    /// The frame layer (sealing is lock-free; opening locks internally).
    pub session: Session,
    /// The responder counts the session as confirmed after the initiator's
    /// first authenticated frame.
    pub confirmed: AtomicBool,
    /// Unix seconds of the last authenticated frame either way.
    pub last_activity: AtomicU64,
}

impl LiveSession {
    /// The session's ID.
    pub fn id(&self) -> SessionId {
        self.session.session_id()
    }

    /// Which side of the handshake this node was.
    pub fn role(&self) -> Role {
        self.session.role()
    }

    /// Marks activity at `now`.
    pub fn touch(&self, now: UnixTime) {
        self.last_activity.fetch_max(now.0, Ordering::Relaxed);
    }
}

/// The session table.
#[derive(Default)]
pub struct SessionTable {
    by_id: RwLock<HashMap<SessionId, Arc<LiveSession>>>,
    by_peer: RwLock<HashMap<NodeId, SessionId>>,
}

impl SessionTable {
    /// Installs a session; it becomes the one used to reach its peer.
    pub fn insert(&self, session: LiveSession) -> Arc<LiveSession> {
        let session = Arc::new(session);
        let id = session.id();
        self.by_id
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, session.clone());
        self.by_peer
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(session.peer, id);
        session
    }

    /// The session with this ID.
    pub fn get(&self, id: &SessionId) -> Option<Arc<LiveSession>> {
        self.by_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// The current session with a peer.
    pub fn with_peer(&self, peer: &NodeId) -> Option<Arc<LiveSession>> {
        let id = *self
            .by_peer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)?;
        self.get(&id)
    }

    /// Every session.
    pub fn all(&self) -> Vec<Arc<LiveSession>> {
        let mut all: Vec<_> = self
            .by_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|s| (s.peer, s.established_at));
        all
    }

    /// Ends sessions established before `cutoff`: a stolen epoch key opens
    /// later epochs until the next handshake, so no session outlives its
    /// maximum age; the next use makes a new handshake. Returns how many.
    pub fn end_older_than(&self, cutoff: UnixTime) -> usize {
        let mut by_id = self.by_id.write().unwrap_or_else(|e| e.into_inner());
        let before = by_id.len();
        by_id.retain(|_, s| s.established_at >= cutoff);
        let ended = before - by_id.len();
        drop(by_id);
        if ended > 0 {
            let by_id = self.by_id.read().unwrap_or_else(|e| e.into_inner());
            self.by_peer
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|_, id| by_id.contains_key(id));
        }
        ended
    }

    /// Drops sessions established before `cutoff` that a newer session
    /// with the same peer has replaced, or that saw no activity since.
    pub fn purge_idle(&self, cutoff: UnixTime) -> usize {
        let current: Vec<SessionId> = self
            .by_peer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .copied()
            .collect();
        let mut by_id = self.by_id.write().unwrap_or_else(|e| e.into_inner());
        let before = by_id.len();
        by_id.retain(|id, s| {
            current.contains(id) || s.last_activity.load(Ordering::Relaxed) >= cutoff.0
        });
        before - by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openred_core::session::{EpochConfig, Suite};
    use openred_core::{AgreementSecret, ApiUrl, IdentityKeypair, NodeRecord};

    fn live(peer_seed: u8, established: u64, h: u8) -> LiveSession {
        let key = IdentityKeypair::from_secret_bytes(&[peer_seed; 32]);
        let record = NodeRecord::sign(
            &key,
            AgreementSecret::from_secret_bytes([peer_seed; 32]).public(),
            ApiUrl::parse_origin("https://peer.example.com").unwrap(),
            1,
            UnixTime(0),
            UnixTime(10),
        );
        LiveSession {
            peer: key.node_id(),
            peer_record: record,
            established_at: UnixTime(established),
            session: Session::new(
                Role::Initiator,
                Suite::ChaCha20Poly1305,
                &[h; 32],
                &[1; 32],
                &[2; 32],
                UnixTime(established),
                EpochConfig::default(),
            ),
            confirmed: AtomicBool::new(true),
            last_activity: AtomicU64::new(established),
        }
    }

    #[test]
    fn sessions_past_their_maximum_age_end_and_the_peer_needs_a_new_handshake() {
        let table = SessionTable::default();
        let old = table.insert(live(1, 100, 1));
        let young = table.insert(live(2, 500, 2));
        assert_eq!(table.end_older_than(UnixTime(200)), 1);
        assert!(table.get(&old.id()).is_none());
        assert!(table.with_peer(&old.peer).is_none());
        assert!(table.with_peer(&young.peer).is_some());
    }

    #[test]
    fn a_newer_session_replaces_the_old_one_for_its_peer() {
        let table = SessionTable::default();
        let first = table.insert(live(1, 100, 1));
        let second = table.insert(live(1, 200, 2));
        assert_eq!(
            table.with_peer(&first.peer).map(|s| s.id()),
            Some(second.id())
        );
        // The replaced one goes once idle.
        assert_eq!(table.purge_idle(UnixTime(150)), 1);
        assert!(table.get(&first.id()).is_none());
    }
}
