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
