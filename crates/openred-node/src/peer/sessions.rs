//! Established sessions, cached in memory: a frame costs one lookup and one
//! AEAD, no re-validation. Sessions are never persisted: after a restart,
//! new handshakes make new keys, so no nonce can repeat.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

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
    /// The connection IDs of the renewals this session has authorised (or
    /// is authorising): a renewal's message 1 is answered once.
    renewals: Mutex<Vec<[u8; 16]>>,
    /// Set while this node renews the session, so that one renewal runs at
    /// a time.
    pub renewing: AtomicBool,
    /// The last ping's round trip in microseconds (0: none yet).
    pub rtt_us: AtomicU64,
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
            renewals: Mutex::new(Vec::new()),
            renewing: AtomicBool::new(false),
            rtt_us: AtomicU64::new(0),
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

    /// Reserves the renewal `connection_id`, at most `max` per session:
    /// refused if this session already answered it, or answered `max`.
    pub fn reserve_renewal(
        &self,
        connection_id: [u8; 16],
        max: usize,
        wins_crossing: bool,
    ) -> Result<(), RenewalRefusal> {
        let mut ids = self.renewals.lock().unwrap_or_else(|e| e.into_inner());
        // Under the same lock as `start_own_renewal`: of two renewals
        // crossing, exactly one goes on, whatever the interleaving.
        if wins_crossing && self.renewing.load(Ordering::Acquire) {
            return Err(RenewalRefusal::Crossed);
        }
        if ids.contains(&connection_id) {
            return Err(RenewalRefusal::Replayed);
        }
        if ids.len() >= max {
            return Err(RenewalRefusal::Limit);
        }
        ids.push(connection_id);
        Ok(())
    }

    /// Marks this node's own renewal of the session as running. Refused
    /// while one runs, and once this node has answered a renewal of the
    /// session by the peer: the peer's renewal replaces the session, and a
    /// second one from this side would leave the two nodes on different
    /// sessions.
    pub fn start_own_renewal(&self) -> Result<(), &'static str> {
        let ids = self.renewals.lock().unwrap_or_else(|e| e.into_inner());
        if !ids.is_empty() {
            return Err("the peer has renewed this session");
        }
        if self.renewing.swap(true, Ordering::AcqRel) {
            return Err("this session is being renewed");
        }
        Ok(())
    }

    /// Gives a reservation back: the renewal failed, it counts for nothing.
    pub fn release_renewal(&self, connection_id: &[u8; 16]) {
        self.renewals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id| id != connection_id);
    }

    /// Seconds since the handshake.
    pub fn age(&self, now: UnixTime) -> u64 {
        now.0.saturating_sub(self.established_at.0)
    }
}

/// Why a session refuses to authorise a renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewalRefusal {
    /// This renewal's message 1 was answered already.
    Replayed,
    /// The session has authorised all the renewals it may.
    Limit,
    /// This node renews the session itself, and wins the crossing.
    Crossed,
}

/// The sessions with one peer: the one used to reach it, and a newer one
/// this node answered that waits for the peer's first frame.
#[derive(Clone, Copy)]
struct PeerSessions {
    current: SessionId,
    pending: Option<SessionId>,
}

/// Sessions kept per peer at most. Beyond that, the oldest that neither
/// reaches the peer nor waits to goes: a peer cannot pile sessions up.
pub const MAX_SESSIONS_PER_PEER: usize = 4;

/// What the whole table may hold (`NodeConfig::max_sessions`,
/// `max_peers`): sessions cost memory and key material, and any node the
/// directory introduces can ask for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Sessions held at once.
    pub max_sessions: usize,
    /// Distinct peers with a session.
    pub max_peers: usize,
}

/// Why a new session does not fit in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Capacity {
    /// The table holds `max_sessions` already.
    #[error("this node holds as many sessions as it may; try again later")]
    Sessions,
    /// `max_peers` peers have a session already, and this is a new one.
    #[error("this node has sessions with as many peers as it may; try again later")]
    Peers,
}

impl Capacity {
    /// The error code on the wire.
    pub fn code(self) -> openred_core::error_code::ErrorCode {
        use openred_core::error_code::ErrorCode;
        match self {
            Capacity::Sessions => ErrorCode::TooManySessions,
            Capacity::Peers => ErrorCode::TooManyPeers,
        }
    }
}

#[derive(Default)]
struct Tables {
    by_id: HashMap<SessionId, Arc<LiveSession>>,
    by_peer: HashMap<NodeId, PeerSessions>,
}

impl Tables {
    /// Whether one more session with `peer` fits. A peer at its own
    /// bound replaces one of its sessions, so it never grows the table.
    fn room_for(&self, peer: &NodeId, limits: SessionLimits) -> Result<(), Capacity> {
        let of_peer = self.by_id.values().filter(|s| s.peer == *peer).count();
        if of_peer == 0 {
            let peers: std::collections::HashSet<&NodeId> =
                self.by_id.values().map(|s| &s.peer).collect();
            if peers.len() >= limits.max_peers {
                return Err(Capacity::Peers);
            }
        }
        if self.by_id.len() >= limits.max_sessions && of_peer < MAX_SESSIONS_PER_PEER {
            return Err(Capacity::Sessions);
        }
        Ok(())
    }

    fn is_live(&self, id: &SessionId, peer: &NodeId) -> bool {
        self.by_peer
            .get(peer)
            .is_some_and(|p| p.current == *id || p.pending == Some(*id))
    }

    /// The newest confirmed session with `peer`, if any.
    fn newest_confirmed(&self, peer: &NodeId) -> Option<SessionId> {
        self.by_id
            .values()
            .filter(|s| s.peer == *peer && s.confirmed.load(Ordering::Acquire))
            .max_by_key(|s| s.established_at)
            .map(|s| s.id())
    }
}

/// The session table. One lock for both maps: no lock order to get wrong.
#[derive(Default)]
pub struct SessionTable {
    tables: RwLock<Tables>,
}

impl SessionTable {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tables> {
        self.tables.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Tables> {
        self.tables.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a new session with `peer` would fit now: checked before a
    /// handshake's public-key work. [`SessionTable::try_insert`] checks
    /// again, atomically.
    pub fn room_for(&self, peer: &NodeId, limits: SessionLimits) -> Result<(), Capacity> {
        self.read().room_for(peer, limits)
    }

    /// Installs a session if it fits within `limits` (see
    /// [`SessionTable::insert`]).
    pub fn try_insert(
        &self,
        session: LiveSession,
        limits: SessionLimits,
    ) -> Result<Arc<LiveSession>, Capacity> {
        let mut t = self.write();
        t.room_for(&session.peer, limits)?;
        Ok(Self::insert_into(&mut t, session))
    }

    /// Installs a session. A confirmed one (this node initiated it) becomes
    /// the one used to reach its peer at once. An unconfirmed one (this
    /// node answered it) waits for the peer's first frame if a confirmed
    /// session still reaches the peer: until then the peer may not have it
    /// (message 2 can be lost), so frames keep going over the older one.
    pub fn insert(&self, session: LiveSession) -> Arc<LiveSession> {
        Self::insert_into(&mut self.write(), session)
    }

    fn insert_into(t: &mut Tables, session: LiveSession) -> Arc<LiveSession> {
        let session = Arc::new(session);
        let id = session.id();
        let peer = session.peer;
        t.by_id.insert(id, session.clone());
        let wait = !session.confirmed.load(Ordering::Acquire)
            && t.by_peer
                .get(&peer)
                .and_then(|p| t.by_id.get(&p.current))
                .is_some_and(|current| current.confirmed.load(Ordering::Acquire));
        let entry = t.by_peer.entry(peer).or_insert(PeerSessions {
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
        let mut others: Vec<(UnixTime, SessionId)> = t
            .by_id
            .values()
            .filter(|s| s.peer == peer)
            .map(|s| (s.established_at, s.id()))
            .filter(|(_, sid)| !t.is_live(sid, &peer))
            .collect();
        let live = if t.by_peer[&peer].pending.is_some() {
            2
        } else {
            1
        };
        if others.len() + live > MAX_SESSIONS_PER_PEER {
            others.sort();
            let excess = others.len() + live - MAX_SESSIONS_PER_PEER;
            for (_, old) in others.into_iter().take(excess) {
                t.by_id.remove(&old);
            }
        }
        session
    }

    /// Records the peer's first authenticated frame on `session`. If it is
    /// at least as new as the current session, it replaces it: the waiting
    /// one, or another whose message 2 arrived after all though a later
    /// answer had taken the waiting place. An older one replaces nothing.
    pub fn confirm(&self, session: &LiveSession) {
        if session.confirmed.swap(true, Ordering::AcqRel) {
            return;
        }
        let id = session.id();
        let mut t = self.write();
        let Some(entry) = t.by_peer.get(&session.peer).copied() else {
            // Nothing reaches the peer: this session does now.
            if t.by_id.contains_key(&id) {
                t.by_peer.insert(
                    session.peer,
                    PeerSessions {
                        current: id,
                        pending: None,
                    },
                );
            }
            return;
        };
        if entry.current == id {
            return;
        }
        let newer = t
            .by_id
            .get(&entry.current)
            .is_none_or(|current| session.established_at >= current.established_at);
        if !newer {
            if entry.pending == Some(id) {
                t.by_peer.insert(
                    session.peer,
                    PeerSessions {
                        pending: None,
                        ..entry
                    },
                );
            }
            return;
        }
        if t.by_id.contains_key(&id) {
            let pending = entry.pending.filter(|p| {
                *p != id
                    && t.by_id
                        .get(p)
                        .is_some_and(|p| p.established_at > session.established_at)
            });
            t.by_peer.insert(
                session.peer,
                PeerSessions {
                    current: id,
                    pending,
                },
            );
        }
    }

    /// The session with this ID.
    pub fn get(&self, id: &SessionId) -> Option<Arc<LiveSession>> {
        self.read().by_id.get(id).cloned()
    }

    /// The current session with a peer.
    pub fn with_peer(&self, peer: &NodeId) -> Option<Arc<LiveSession>> {
        let t = self.read();
        let id = t.by_peer.get(peer)?.current;
        t.by_id.get(&id).cloned()
    }

    /// Whether `session` is the one used to reach its peer, or the one
    /// waiting to be.
    pub fn is_live(&self, session: &LiveSession) -> bool {
        self.read().is_live(&session.id(), &session.peer)
    }

    /// Every session.
    pub fn all(&self) -> Vec<Arc<LiveSession>> {
        let mut all: Vec<_> = self.read().by_id.values().cloned().collect();
        all.sort_by_key(|s| (s.peer, s.established_at));
        all
    }

    /// The sessions used to reach each peer.
    pub fn current(&self) -> Vec<Arc<LiveSession>> {
        let t = self.read();
        t.by_peer
            .values()
            .filter_map(|p| t.by_id.get(&p.current).cloned())
            .collect()
    }

    /// Ends sessions established before `cutoff`: a stolen epoch key opens
    /// later epochs until the next handshake, so no session outlives its
    /// maximum age; a renewal or the next use makes a new handshake.
    /// Returns the sessions ended.
    pub fn end_older_than(&self, cutoff: UnixTime) -> Vec<(NodeId, SessionId)> {
        self.remove_where(|_, s| s.established_at < cutoff)
    }

    /// Removes one session (its peer no longer has it).
    pub fn remove(&self, id: &SessionId) -> Vec<(NodeId, SessionId)> {
        self.remove_where(|_, s| s.id() == *id)
    }

    /// Drops sessions this node answered whose peer never sent a first
    /// frame, established before `cutoff`: a peer that handshakes and
    /// walks away holds no room in the table for long.
    pub fn purge_unconfirmed(&self, cutoff: UnixTime) -> Vec<(NodeId, SessionId)> {
        self.remove_where(|_, s| !s.confirmed.load(Ordering::Acquire) && s.established_at < cutoff)
    }

    /// Drops sessions that neither reach their peer nor wait to, are not
    /// newer than the one that does, and saw no activity since `cutoff`.
    pub fn purge_idle(&self, cutoff: UnixTime) -> Vec<(NodeId, SessionId)> {
        self.remove_where(|t, s| {
            let id = s.id();
            let newer_than_current = t
                .by_peer
                .get(&s.peer)
                .and_then(|p| t.by_id.get(&p.current))
                .is_some_and(|current| s.established_at > current.established_at);
            !t.is_live(&id, &s.peer)
                && !newer_than_current
                && s.last_activity.load(Ordering::Relaxed) < cutoff.0
        })
    }

    /// Removes the sessions `doomed` picks and returns them. A peer whose
    /// current session goes falls back on its newest confirmed one, if
    /// any; without one, the next use makes a new handshake.
    fn remove_where(
        &self,
        doomed: impl Fn(&Tables, &LiveSession) -> bool,
    ) -> Vec<(NodeId, SessionId)> {
        let mut t = self.write();
        let removed: Vec<(NodeId, SessionId)> = t
            .by_id
            .values()
            .filter(|s| doomed(&t, s))
            .map(|s| (s.peer, s.id()))
            .collect();
        if removed.is_empty() {
            return removed;
        }
        for (_, id) in &removed {
            t.by_id.remove(id);
        }
        let peers: Vec<NodeId> = t.by_peer.keys().copied().collect();
        for peer in peers {
            let mut entry = t.by_peer[&peer];
            entry.pending = entry.pending.filter(|id| t.by_id.contains_key(id));
            if !t.by_id.contains_key(&entry.current) {
                match t.newest_confirmed(&peer) {
                    Some(next) => {
                        entry.current = next;
                        entry.pending = entry.pending.filter(|p| *p != next);
                    }
                    None => {
                        t.by_peer.remove(&peer);
                        continue;
                    }
                }
            }
            t.by_peer.insert(peer, entry);
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
        // The peer's first frame on an older answered session does not
        // take the current place back.
        let older = table.insert(live_as(Role::Responder, 1, 150, 3));
        table.confirm(&older);
        assert_eq!(
            table.with_peer(&old.peer).map(|s| s.id()),
            Some(answered.id())
        );
    }

    #[test]
    fn a_session_whose_message_2_came_late_is_used_once_the_peer_shows_it_has_it() {
        let table = SessionTable::default();
        let old = table.insert(live(1, 100, 1));
        let first = table.insert(live_as(Role::Responder, 1, 200, 2));
        // A second answer (a retry, or a replay) takes the waiting place.
        let second = table.insert(live_as(Role::Responder, 1, 210, 3));
        assert_eq!(table.with_peer(&old.peer).map(|s| s.id()), Some(old.id()));
        // The peer's frame arrives on the first one: it is newer than the
        // current session, so it is used from now on.
        table.confirm(&first);
        assert_eq!(table.with_peer(&old.peer).map(|s| s.id()), Some(first.id()));
        assert!(table.is_live(&second), "the newer one still waits");
    }

    #[test]
    fn when_the_current_session_ends_only_a_confirmed_one_takes_over() {
        let table = SessionTable::default();
        let old = table.insert(live(1, 100, 1));
        let answered = table.insert(live_as(Role::Responder, 1, 300, 2));
        assert_eq!(table.end_older_than(UnixTime(200)).len(), 1);
        assert!(
            table.with_peer(&old.peer).is_none(),
            "an unconfirmed session may be one the peer never had"
        );
        // Its first frame makes it the one used.
        table.confirm(&answered);
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
        // A confirmed session left behind takes over when the current one ends.
        let a = table.insert(live(3, 100, 4));
        let b = table.insert(live(3, 50, 5));
        assert_eq!(table.with_peer(&a.peer).map(|s| s.id()), Some(b.id()));
        table.remove(&b.id());
        assert_eq!(table.with_peer(&a.peer).map(|s| s.id()), Some(a.id()));
    }

    #[test]
    fn a_peer_cannot_pile_sessions_up() {
        let table = SessionTable::default();
        let current = table.insert(live(1, 100, 1));
        let mut answered = Vec::new();
        for i in 0..10u8 {
            answered.push(table.insert(live_as(Role::Responder, 1, 200 + u64::from(i), 10 + i)));
        }
        let kept: Vec<_> = table.all();
        assert_eq!(kept.len(), MAX_SESSIONS_PER_PEER);
        assert!(table.is_live(&current));
        assert!(table.is_live(answered.last().unwrap()), "the newest waits");
        // An idle session newer than the current one is not purged.
        let newer = kept
            .iter()
            .find(|s| !table.is_live(s) && s.established_at > current.established_at)
            .unwrap();
        table.purge_idle(UnixTime(100_000));
        assert!(table.get(&newer.id()).is_some());
    }

    #[test]
    fn the_table_survives_concurrent_use_without_deadlock() {
        let table = Arc::new(SessionTable::default());
        let (done, finished) = std::sync::mpsc::channel();
        for worker in 0..4u8 {
            let table = table.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                for i in 0..2000u64 {
                    let h = (i % 200) as u8;
                    let s = table.insert(live_as(Role::Responder, worker + 1, i, h));
                    let _ = table.current();
                    let _ = table.with_peer(&s.peer);
                    table.confirm(&s);
                    let _ = table.purge_idle(UnixTime(i / 2));
                    let _ = table.end_older_than(UnixTime(i.saturating_sub(50)));
                }
                let _ = done.send(());
            });
        }
        for _ in 0..4 {
            finished
                .recv_timeout(std::time::Duration::from_secs(120))
                .expect("no worker is stuck on the table's lock");
        }
    }
}
