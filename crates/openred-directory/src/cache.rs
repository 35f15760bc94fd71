//! The in-memory lookup cache. Single-node lookups, the bulk of a
//! directory's load, are answered from here without touching the database.
//!
//! The database stays the source of truth: every local write updates the
//! cache after it commits. With several replicas sharing PostgreSQL, other
//! replicas' writes are picked up when an entry is older than the configured
//! time to live, or on a miss.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openred_core::wire::b64_encode;
use openred_core::{NodeId, UnixTime};

use crate::store::StoredNode;

/// What a lookup needs, prepared once per write.
#[derive(Debug)]
pub struct CachedNode {
    /// The node's ID, in text form.
    pub node_id: String,
    /// Its API origin.
    pub api_url: String,
    /// The signed record, base64url.
    pub record: String,
    /// When it was last seen.
    pub last_seen: UnixTime,
    /// When its record expires.
    pub expires_at: UnixTime,
}

impl CachedNode {
    /// Prepares a stored, registered node; `None` if it has deregistered.
    pub fn from_stored(node: &StoredNode) -> Option<CachedNode> {
        let record = node.record.as_ref()?;
        Some(CachedNode {
            node_id: node.node_id.to_string(),
            api_url: record.record().api_url.to_string(),
            record: b64_encode(record.as_bytes()),
            last_seen: node.last_seen,
            expires_at: record.record().expires_at,
        })
    }
}

struct Slot {
    node: Arc<CachedNode>,
    loaded: Instant,
}

/// The cache.
pub struct RecordCache {
    map: RwLock<HashMap<NodeId, Slot>>,
    ttl: Option<Duration>,
}

impl RecordCache {
    /// An empty cache whose entries live for `ttl` (`None`: forever).
    pub fn new(ttl: Option<Duration>) -> RecordCache {
        RecordCache {
            map: RwLock::new(HashMap::new()),
            ttl,
        }
    }

    /// The cached node if present and fresh.
    pub fn get(&self, node_id: &NodeId) -> Option<Arc<CachedNode>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let slot = map.get(node_id)?;
        if let Some(ttl) = self.ttl {
            if slot.loaded.elapsed() > ttl {
                return None;
            }
        }
        Some(slot.node.clone())
    }

    /// Records the committed state of a node: cached if registered,
    /// removed if deregistered.
    pub fn put(&self, node: &StoredNode) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        match CachedNode::from_stored(node) {
            Some(cached) => {
                map.insert(
                    node.node_id,
                    Slot {
                        node: Arc::new(cached),
                        loaded: Instant::now(),
                    },
                );
            }
            None => {
                map.remove(&node.node_id);
            }
        }
    }

    /// Forgets a node.
    pub fn remove(&self, node_id: &NodeId) {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(node_id);
    }

    /// Number of cached nodes.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}
