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
use openred_core::{NodeId, SignedRecord, UnixTime};

use crate::store::StoredNode;

/// What a lookup needs, prepared once per write: the answer itself is
/// rendered here, all but its status (which moves with the clock), so a
/// lookup costs one copy and no serialisation.
#[derive(Debug)]
pub struct CachedNode {
    /// Its API origin.
    pub api_url: String,
    /// When it was last seen.
    pub last_seen: UnixTime,
    /// When its record expires.
    pub expires_at: UnixTime,
    /// The record's `seq`.
    pub seq: u64,
    /// The record itself, verified when it was decoded, so introductions
    /// take it from here without a database read or a second verification.
    pub record: SignedRecord,
    /// The JSON of its `NodeEntry` up to the status value:
    /// `{"node_id":…,"api_url":…,"last_seen":…,"record":…,"status":"`.
    json_prefix: String,
}

impl CachedNode {
    /// Prepares a stored, registered node; `None` if it has deregistered.
    pub fn from_stored(node: &StoredNode) -> Option<CachedNode> {
        let record = node.record.as_ref()?;
        let r = record.record();
        let api_url = r.api_url.to_string();
        // Rendered by serde_json field by field, so every value is escaped
        // exactly as a serialised NodeEntry would be.
        let json_prefix = format!(
            "{{\"node_id\":{},\"api_url\":{},\"last_seen\":{},\"record\":{},\"status\":\"",
            serde_json::Value::from(node.node_id.to_string()),
            serde_json::Value::from(api_url.as_str()),
            node.last_seen.0,
            serde_json::Value::from(b64_encode(record.as_bytes())),
        );
        Some(CachedNode {
            api_url,
            last_seen: node.last_seen,
            expires_at: r.expires_at,
            seq: r.seq,
            record: record.clone(),
            json_prefix,
        })
    }

    /// The node's `NodeEntry` as JSON, with its status.
    pub fn render(&self, active: bool) -> String {
        let suffix = if active { "active\"}" } else { "inactive\"}" };
        let mut out = String::with_capacity(self.json_prefix.len() + suffix.len());
        out.push_str(&self.json_prefix);
        out.push_str(suffix);
        out
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

#[cfg(test)]
mod tests {
    use super::*;
    use openred_core::wire::{NodeEntry, NodeStatus};
    use openred_core::{AgreementSecret, ApiUrl, IdentityKeypair, NodeRecord};

    #[test]
    fn the_rendered_answer_is_a_node_entry() {
        let key = IdentityKeypair::from_secret_bytes(&[4; 32]);
        let record = NodeRecord::sign(
            &key,
            AgreementSecret::from_secret_bytes([5; 32]).public(),
            ApiUrl::parse_origin("https://n.example.com:8443").unwrap(),
            9,
            UnixTime(10),
            UnixTime(20),
        );
        let stored = StoredNode {
            node_id: key.node_id(),
            seq: 9,
            record: Some(record.clone()),
            last_seen: UnixTime(12),
            identity_key: key.public().to_bytes(),
        };
        let cached = CachedNode::from_stored(&stored).unwrap();
        for (active, status) in [(true, NodeStatus::Active), (false, NodeStatus::Inactive)] {
            let entry: NodeEntry = serde_json::from_str(&cached.render(active)).unwrap();
            assert_eq!(entry.node_id, key.node_id());
            assert_eq!(entry.api_url, "https://n.example.com:8443");
            assert_eq!(entry.last_seen, 12);
            assert_eq!(entry.status, status);
            assert_eq!(entry.record.0, record.as_bytes());
        }
    }
}
