//! The node's side of the directory: pinning its key, registering,
//! heartbeats, deregistering, asking for introductions and looking peers
//! up. Every call goes through the one outbound client.

use std::sync::RwLock;

use openred_core::error_code::ErrorCode;
use openred_core::id::Fingerprint;
use openred_core::routes::directory as routes;
use openred_core::token::{Expected, Role, TokenEnvelope};
use openred_core::wire::{
    ConnectionRequest, ConnectionResponse, DiscoverResponse, ErrorBody, HealthResponse, NodeEntry,
    NonceBytes, RecordBytes, RegisterRequest, RegisterResponse, SignatureBytes,
};
use openred_core::{ApiUrl, IdentityPublicKey, NodeId, SignedRecord, UnixTime};
use openred_http::{OutboundClient, Response};

use crate::agent::Crypto;
use crate::error::NodeError;
use crate::store::NodeStore;

const PINNED_KEY_SETTING: &str = "directory_key";

/// The directory as the node sees it.
pub struct DirectoryClient {
    url: ApiUrl,
    configured: Option<Fingerprint>,
    pinned: RwLock<Option<IdentityPublicKey>>,
}

impl DirectoryClient {
    /// A client for the directory at `url`, pinned to `configured` if given.
    pub fn new(url: ApiUrl, configured: Option<Fingerprint>) -> DirectoryClient {
        DirectoryClient {
            url,
            configured,
            pinned: RwLock::new(None),
        }
    }

    /// The directory's origin.
    pub fn url(&self) -> &ApiUrl {
        &self.url
    }

    /// The pinned key, if any yet.
    pub fn pinned(&self) -> Option<IdentityPublicKey> {
        *self.pinned.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads the pinned key from the store, or fetches the directory's key
    /// and pins it: checked against `--directory-key` when configured,
    /// trusted on first use (with a warning) otherwise. From then on only
    /// that key is accepted.
    pub async fn pin(
        &self,
        outbound: &OutboundClient,
        store: &NodeStore,
    ) -> Result<IdentityPublicKey, NodeError> {
        if let Some(key) = self.pinned() {
            return Ok(key);
        }
        if let Some(bytes) = store.setting(PINNED_KEY_SETTING).await? {
            let key = key_from(&bytes)?;
            self.check_configured(&key)?;
            *self.pinned.write().unwrap_or_else(|e| e.into_inner()) = Some(key);
            return Ok(key);
        }
        let health: HealthResponse =
            expect_ok(outbound.get(&self.url, routes::HEALTH).await?, true)?;
        let key = key_from(&health.directory_public_key.0)?;
        if key.directory_fingerprint().to_string() != health.directory_key {
            return Err(NodeError::Malformed("the directory's fingerprint"));
        }
        self.check_configured(&key)?;
        if self.configured.is_none() {
            tracing::warn!(
                fingerprint = %key.directory_fingerprint(),
                "trusting the directory's key on first use; pin it with --directory-key to be sure"
            );
        }
        store
            .set_setting(PINNED_KEY_SETTING, &key.to_bytes())
            .await?;
        *self.pinned.write().unwrap_or_else(|e| e.into_inner()) = Some(key);
        Ok(key)
    }

    /// Whether the directory answers its health route now, with the key
    /// this node pinned (if it pinned one yet).
    pub async fn check(&self, outbound: &OutboundClient) -> Result<(), NodeError> {
        let health: HealthResponse =
            expect_ok(outbound.get(&self.url, routes::HEALTH).await?, true)?;
        match self.pinned() {
            Some(key) if key.directory_fingerprint().to_string() != health.directory_key => Err(
                NodeError::Malformed("the directory answers with another key than the pinned one"),
            ),
            _ => Ok(()),
        }
    }

    fn check_configured(&self, key: &IdentityPublicKey) -> Result<(), NodeError> {
        match &self.configured {
            Some(pinned) if *pinned != key.directory_fingerprint() => {
                Err(NodeError::DirectoryKeyMismatch {
                    pinned: pinned.to_string(),
                    found: key.directory_fingerprint().to_string(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Signs and sends the node's record with a fresh `seq`.
    pub async fn register(
        &self,
        outbound: &OutboundClient,
        store: &NodeStore,
        crypto: &Crypto,
        public_url: &ApiUrl,
        now: UnixTime,
        lifetime_s: u64,
    ) -> Result<RegisterResponse, NodeError> {
        let seq = store.next_record_seq(now).await?;
        let record = crypto
            .sign_record(public_url, seq, now, now.plus(lifetime_s))
            .await?;
        let body = RegisterRequest {
            record: RecordBytes(record.as_bytes().to_vec()),
        };
        expect_ok(
            outbound
                .post_json(&self.url, routes::REGISTER, &body)
                .await?,
            true,
        )
    }

    /// Asks the directory to forget this node.
    pub async fn deregister(
        &self,
        outbound: &OutboundClient,
        store: &NodeStore,
        crypto: &Crypto,
        now: UnixTime,
    ) -> Result<(), NodeError> {
        let seq = store.next_record_seq(now).await?;
        let body = crypto.deregistration(seq, now).await?;
        let _: serde_json::Value = expect_ok(
            outbound
                .post_json(&self.url, routes::DEREGISTER, &body)
                .await?,
            true,
        )?;
        Ok(())
    }

    /// Asks to be introduced to `target`; returns token_a, accepted by the
    /// core's rules ([`TokenEnvelope::accept`]) at `now`.
    pub async fn request_connection(
        &self,
        outbound: &OutboundClient,
        store: &NodeStore,
        crypto: &Crypto,
        target: &NodeId,
        now: UnixTime,
    ) -> Result<TokenEnvelope, NodeError> {
        let directory_key = self.pin(outbound, store).await?;
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|_| NodeError::Malformed("randomness"))?;
        let me = crypto.node_id();
        let signature = crypto.sign_connection_request(target, &nonce, now).await?;
        let body = ConnectionRequest {
            from: me,
            target: *target,
            nonce: NonceBytes(nonce),
            issued_at: now.0,
            signature: SignatureBytes(signature),
        };
        let answer: ConnectionResponse = expect_ok(
            outbound
                .post_json(&self.url, routes::REQUEST_CONNECTION, &body)
                .await?,
            true,
        )?;
        let envelope = TokenEnvelope::decode(&answer.token.0)?;
        // The core's rules for the initiator's half: signed by the pinned
        // key, token_a, for this node, introducing it to `target`, live.
        let expected = Expected {
            role: Role::Initiator,
            me,
            peer: Some(*target),
        };
        envelope.accept(&directory_key, &expected, now)?;
        Ok(envelope)
    }

    /// Lists the directory's nodes (all pages), verifying every record and
    /// remembering the highest `seq` per node. Records older than one seen
    /// before are reported as rolled back.
    pub async fn discover(
        &self,
        outbound: &OutboundClient,
        store: &NodeStore,
        now: UnixTime,
    ) -> Result<Vec<(NodeEntry, Result<SignedRecord, NodeError>)>, NodeError> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        let mut limit = Some(page_limit(outbound.max_response_bytes()));
        loop {
            let mut query = Vec::new();
            if let Some(limit) = limit {
                query.push(("limit", limit.to_string()));
            }
            if let Some(c) = &cursor {
                query.push(("cursor", c.clone()));
            }
            let answer = outbound
                .get_with_query(&self.url, routes::DISCOVER, &query)
                .await?;
            let page: DiscoverResponse = match expect_ok(answer, true) {
                Ok(page) => page,
                // A directory whose largest page is smaller than ours: its
                // own default page size, from then on.
                Err(e) if e.directory_code() == Some(ErrorCode::BadLimit) && limit.is_some() => {
                    limit = None;
                    continue;
                }
                Err(e) => return Err(e),
            };
            for entry in page.nodes {
                let checked = verify_entry(&entry, store, now).await;
                out.push((entry, checked));
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        Ok(out)
    }

    /// Looks one node up, verifies its record and remembers its `seq`.
    pub async fn lookup(
        &self,
        outbound: &OutboundClient,
        store: &NodeStore,
        node_id: &NodeId,
        now: UnixTime,
    ) -> Result<SignedRecord, NodeError> {
        let id = node_id.to_string();
        let page: DiscoverResponse = expect_ok(
            outbound
                .get_with_query(&self.url, routes::DISCOVER, &[("node_id", id)])
                .await?,
            true,
        )?;
        let entry = page
            .nodes
            .into_iter()
            .next()
            .ok_or(NodeError::Malformed("an empty lookup"))?;
        verify_entry(&entry, store, now).await
    }
}

/// The most entries a directory may put in one page, in the protocol.
const MAX_PAGE_ENTRIES: usize = 500;

/// The page size whose answer fits `answer_cap` bytes even if every entry is
/// as large as an entry can be (a 255-byte URL, escaped, and its record):
/// a page of 500 ordinary entries is some 230 KB, past a node's 64 KiB
/// answer cap, and would fail the whole listing.
fn page_limit(answer_cap: usize) -> usize {
    // `{"nodes":[` … `],"next_cursor":"…"}` with a 44-character cursor.
    const ENVELOPE: usize = 128;
    let node_id = NodeId::from_bytes([0; 32]).to_string().len();
    let record = (openred_core::record::MAX_RECORD_LEN * 4).div_ceil(3);
    let entry = r#"{"node_id":"","api_url":"","last_seen":,"status":"inactive","record":""},"#
        .len()
        + node_id
        + 2 * openred_core::url::MAX_URL_LEN
        + u64::MAX.to_string().len()
        + record;
    (answer_cap.saturating_sub(ENVELOPE) / entry).clamp(1, MAX_PAGE_ENTRIES)
}

async fn verify_entry(
    entry: &NodeEntry,
    store: &NodeStore,
    now: UnixTime,
) -> Result<SignedRecord, NodeError> {
    let record =
        SignedRecord::decode(&entry.record.0).map_err(|_| NodeError::Malformed("a record"))?;
    if record.record().node_id != entry.node_id {
        return Err(NodeError::Malformed("a record under another node ID"));
    }
    record
        .check_unexpired(now)
        .map_err(|_| NodeError::Malformed("an expired record"))?;
    if !store.remember_peer(&record, now).await? {
        return Err(NodeError::RolledBackRecord(entry.node_id.to_string()));
    }
    Ok(record)
}

fn key_from(bytes: &[u8]) -> Result<IdentityPublicKey, NodeError> {
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| NodeError::Malformed("the directory's public key"))?;
    IdentityPublicKey::from_bytes(&bytes)
        .map_err(|_| NodeError::Malformed("the directory's public key"))
}

/// Decodes a 2xx JSON answer, or turns an error body into a
/// [`NodeError::Directory`] (or `Peer`).
pub fn expect_ok<T: serde::de::DeserializeOwned>(
    response: Response,
    from_directory: bool,
) -> Result<T, NodeError> {
    if response.is_success() {
        return response.json().map_err(|_| {
            NodeError::Malformed(if from_directory {
                "the directory"
            } else {
                "the peer"
            })
        });
    }
    let (code, message) = match response.json::<ErrorBody>() {
        Ok(body) => (body.error, body.message),
        // Not one of ours (a proxy's page, say): the status is all there is.
        Err(_) => (ErrorCode::Unrecognized, format!("HTTP {}", response.status)),
    };
    Err(if from_directory {
        NodeError::Directory {
            status: response.status,
            code,
            message,
        }
    } else {
        NodeError::Peer {
            status: response.status,
            code,
            message,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use openred_core::wire::NodeStatus;
    use openred_core::{AgreementSecret, IdentityKeypair, NodeRecord};

    #[test]
    fn a_page_of_the_largest_entries_fits_the_answer_cap() {
        let url = format!(
            "https://{}.{}.{}.{}.example.com:65535",
            "a".repeat(50),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(50)
        );
        assert_eq!(url.len(), openred_core::url::MAX_URL_LEN);
        let key = IdentityKeypair::from_secret_bytes(&[9; 32]);
        let record = NodeRecord::sign(
            &key,
            AgreementSecret::from_secret_bytes([9; 32]).public(),
            ApiUrl::parse_canonical(&url).unwrap(),
            u64::MAX,
            UnixTime(u64::MAX - 1),
            UnixTime(u64::MAX),
        );
        let entry = NodeEntry {
            node_id: key.node_id(),
            api_url: url,
            last_seen: u64::MAX,
            status: NodeStatus::Inactive,
            record: RecordBytes(record.as_bytes().to_vec()),
        };
        let cap = 64 * 1024;
        let limit = page_limit(cap);
        let page = DiscoverResponse {
            nodes: vec![entry; limit],
            next_cursor: Some(openred_core::wire::b64_encode(&[1u8; 33])),
        };
        let size = serde_json::to_vec(&page).unwrap().len();
        assert!(size <= cap, "{limit} entries: {size} bytes");
        // Not needlessly small either: 600 nodes take at most a dozen pages.
        assert!(limit >= 50, "{limit}");
        assert_eq!(page_limit(10), 1);
        assert_eq!(page_limit(usize::MAX), MAX_PAGE_ENTRIES);
    }
}
