//! Established sessions, cached in memory: a frame costs one lookup and one
//! AEAD, no re-validation. Sessions are never persisted: after a restart,
//! new handshakes make new keys, so no nonce can repeat.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
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
    /// The handshake's final hash: a renewal binds it (not secret).
    pub handshake_hash: [u8; 32],
    /// The frame layer (sealing is lock-free; opening locks internally).
    pub session: Session,
    /// The responder counts the session as confirmed after the initiator's
    /// first authenticated frame; see [`SessionTable::confirm`].
    pub confirmed: AtomicBool,
    /// Unix seconds of the last authenticated frame either way.
    pub last_activity: AtomicU64,
    /// Renewals this session has authorised (answered) so far.
    pub renewals: AtomicU32,
    /// Set while this node renews the session, so that one renewal runs at
    /// a time.
    pub renewing: AtomicBool,
}

impl LiveSession {
    /// A session just established at `now`. The handshake's initiator has
    /// seen the responder's message 2 and counts it confirmed at once.
    pub fn new(
        peer_record: SignedRecord,
        session: Session,
        handshake_hash: [u8; 32],
        now: UnixTime,
    ) -> LiveSession {
        let confirmed = session.role() == Role::Initiator;
        LiveSession {
            peer: peer_record.record().node_id,
            peer_record,
            established_at: now,
            handshake_hash,
            session,
            confirmed: AtomicBool::new(confirmed),
            last_activity: AtomicU64::new(now.0),
            renewals: AtomicU32::new(0),
            renewing: AtomicBool::new(false),
        }
    }

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

    /// Seconds since the handshake.
    pub fn age(&self, now: UnixTime) -> u64 {
        now.0.saturating_sub(self.established_at.0)
    }
}

/// The sessions with one peer: the one used to reach it, and a newer one
/// this node answered that waits for the peer's first frame.
#[derive(Clone, Copy)]
struct PeerSessions {
    current: SessionId,
    pending: Option<SessionId>,
}

/// The session table.
#[derive(Default)]
pub struct SessionTable {
    by_id: RwLock<HashMap<SessionId, Arc<LiveSession>>>,
    by_peer: RwLock<HashMap<NodeId, PeerSessions>>,
}

impl SessionTable {
    /// Installs a session. A confirmed one (this node initiated it) becomes
    /// the one used to reach its peer at once. An unconfirmed one (this
    /// node answered it) waits for the peer's first frame if a confirmed
    /// session still reaches the peer: until then the peer may not have it
    /// (message 2 can be lost), so frames keep going over the older one.
    pub fn insert(&self, session: LiveSession) -> Arc<LiveSession> {
        let session = Arc::new(session);
        let id = session.id();
        let mut by_id = self.by_id.write().unwrap_or_else(|e| e.into_inner());
        by_id.insert(id, session.clone());
        let mut by_peer = self.by_peer.write().unwrap_or_else(|e| e.into_inner());
        let wait = !session.confirmed.load(Ordering::Acquire)
            && by_peer
                .get(&session.peer)
                .and_then(|p| by_id.get(&p.current))
                .is_some_and(|current| current.confirmed.load(Ordering::Acquire));
        let entry = by_peer.entry(session.peer).or_insert(PeerSessions {
            current: id,
            pending: None,
        });
        if wait {
            entry.pending = Some(id);
        } else {
            *entry = PeerSessions {
                current: id,
                pending: None,
            };
        }
        session
    }

    /// Records the peer's first authenticated frame on `session`: a
    /// session waiting to replace the current one replaces it now.
    pub fn confirm(&self, session: &LiveSession) {
        if session.confirmed.swap(true, Ordering::AcqRel) {
            return;
        }
        let id = session.id();
        let mut by_peer = self.by_peer.write().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = by_peer.get_mut(&session.peer) {
            if entry.pending == Some(id) {
                *entry = PeerSessions {
                    current: id,
                    pending: None,
                };
            }
        }
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
        let id = self
            .by_peer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)?
            .current;
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

    /// The sessions used to reach each peer.
    pub fn current(&self) -> Vec<Arc<LiveSession>> {
        let by_peer = self.by_peer.read().unwrap_or_else(|e| e.into_inner());
        let by_id = self.by_id.read().unwrap_or_else(|e| e.into_inner());
        by_peer
            .values()
            .filter_map(|p| by_id.get(&p.current).cloned())
            .collect()
    }

    /// Ends sessions established before `cutoff`: a stolen epoch key opens
    /// later epochs until the next handshake, so no session outlives its
    /// maximum age; a renewal or the next use makes a new handshake.
    /// Returns how many.
    pub fn end_older_than(&self, cutoff: UnixTime) -> Vec<(NodeId, SessionId)> {
        self.remove_where(|_, s| s.established_at < cutoff)
    }

    /// Removes one session (its peer no longer has it).
    pub fn remove(&self, id: &SessionId) -> Vec<(NodeId, SessionId)> {
        self.remove_where(|candidate, _| candidate == id)
    }

    /// Drops sessions established before `cutoff` that a newer session
    /// with the same peer has replaced, or that saw no activity since.
    pub fn purge_idle(&self, cutoff: UnixTime) -> Vec<(NodeId, SessionId)> {
        let live: Vec<SessionId> = self
            .by_peer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flat_map(|p| std::iter::once(p.current).chain(p.pending))
            .collect();
        self.remove_where(|id, s| {
            !live.contains(id) && s.last_activity.load(Ordering::Relaxed) < cutoff.0
        })
    }

    /// Removes the sessions `doomed` picks and returns them; a peer whose
    /// current session goes falls back on its pending one, if any.
    fn remove_where(
        &self,
        doomed: impl Fn(&SessionId, &LiveSession) -> bool,
    ) -> Vec<(NodeId, SessionId)> {
        let mut by_id = self.by_id.write().unwrap_or_else(|e| e.into_inner());
        let mut removed = Vec::new();
        by_id.retain(|id, s| {
            let doomed = doomed(id, s);
            if doomed {
                removed.push((s.peer, *id));
            }
            !doomed
        });
        if !removed.is_empty() {
            let mut by_peer = self.by_peer.write().unwrap_or_else(|e| e.into_inner());
            by_peer.retain(|_, p| {
                p.pending = p.pending.filter(|id| by_id.contains_key(id));
                if !by_id.contains_key(&p.current) {
                    match p.pending.take() {
                        Some(next) => p.current = next,
                        None => return false,
                    }
                }
                true
            });
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openred_core::session::{EpochConfig, Suite};
    use openred_core::{AgreementSecret, ApiUrl, IdentityKeypair, NodeRecord};

    fn live_as(role: Role, peer_seed: u8, established: u64, h: u8) -> LiveSession {
        let key = IdentityKeypair::from_secret_bytes(&[peer_seed; 32]);
        let record = NodeRecord::sign(
            &key,
            AgreementSecret::from_secret_bytes([peer_seed; 32]).public(),
            ApiUrl::parse_origin("https://peer.example.com").unwrap(),
            1,
            UnixTime(0),
            UnixTime(10),
        );
        let session = Session::new(
            role,
            Suite::ChaCha20Poly1305,
            &[h; 32],
            &[1; 32],
            &[2; 32],
            UnixTime(established),
            EpochConfig::default(),
        );
        LiveSession::new(record, session, [h; 32], UnixTime(established))
    }

    fn live(peer_seed: u8, established: u64, h: u8) -> LiveSession {
        live_as(Role::Initiator, peer_seed, established, h)
    }

    #[test]
    fn sessions_past_their_maximum_age_end_and_the_peer_needs_a_new_handshake() {
        let table = SessionTable::default();
        let old = table.insert(live(1, 100, 1));
        let young = table.insert(live(2, 500, 2));
        assert_eq!(table.end_older_than(UnixTime(200)).len(), 1);
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
        assert_eq!(table.purge_idle(UnixTime(150)).len(), 1);
        assert!(table.get(&first.id()).is_none());
    }

    #[test]
    fn an_answered_session_waits_for_the_peers_first_frame_before_it_is_used() {
        let table = SessionTable::default();
        let old = table.insert(live(1, 100, 1));
        let answered = table.insert(live_as(Role::Responder, 1, 200, 2));
        assert!(!answered.confirmed.load(Ordering::Relaxed));
        assert_eq!(
            table.with_peer(&old.peer).map(|s| s.id()),
            Some(old.id()),
            "the peer may never have received message 2"
        );
        // Not purged while it waits, even without activity.
        assert!(table.purge_idle(UnixTime(10_000)).is_empty());
        table.confirm(&answered);
        assert_eq!(
            table.with_peer(&old.peer).map(|s| s.id()),
            Some(answered.id())
        );
        // A second confirmation changes nothing.
        table.confirm(&old);
        assert_eq!(
            table.with_peer(&old.peer).map(|s| s.id()),
            Some(answered.id())
        );
    }

    #[test]
    fn when_the_current_session_ends_a_waiting_one_takes_over() {
        let table = SessionTable::default();
        let old = table.insert(live(1, 100, 1));
        let answered = table.insert(live_as(Role::Responder, 1, 300, 2));
        assert_eq!(table.end_older_than(UnixTime(200)).len(), 1);
        assert_eq!(
            table.with_peer(&old.peer).map(|s| s.id()),
            Some(answered.id())
        );
        // With no confirmed session to keep, an answered one is used at once.
        let fresh = table.insert(live_as(Role::Responder, 2, 300, 3));
        assert_eq!(
            table.with_peer(&fresh.peer).map(|s| s.id()),
            Some(fresh.id())
        );
    }
}
