//! The HTTP handlers of the directory API (`/api/v3/…`), documented for
//! OpenAPI by their annotations, which are also how they are routed.

use openred_core::error_code::ErrorCode;
use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use openred_core::keys::SignatureContext;
use openred_core::random::SeededRng;
use openred_core::token::mint_pair;
use openred_core::wire::{
    b64_decode, connection_request_message, reachability_message, ConnectionRequest,
    ConnectionResponse, DeregisterRequest, DeregisterResponse, DiscoverResponse, ErrorBody,
    HealthResponse, NodeCounts, NodeEntry, NodeStatus, ReachabilityChallenge, RegisterRequest,
    RegisterResponse, TokenPush,
};
use openred_core::wire::{
    ChallengeBytes, ConnectionIdBytes, PublicKeyBytes, RecordBytes, TokenBytes,
};
#[allow(unused_imports)] // Named only in the OpenAPI annotations.
use openred_core::wire::{CursorText, NodeIdText};
use openred_core::{
    IdentityPublicKey, NodeId, NodeRecord, RecordError, SignedRecord, UnixTime, UrlError,
};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::cache::CachedNode;
use crate::metrics;
use crate::server::{AppState, ClientAddress};
use crate::store::{StatusFilter, StoredNode, Write};
use openred_http::ApiError;

type Shared = State<Arc<AppState>>;

/// Register or refresh a node. The heartbeat is the same call with the next
/// `seq`: one code path, one signature check, and the record's `issued_at`
/// becomes the node's signed evidence of liveness.
#[utoipa::path(
    post, path = "/api/v3/nodes/register", tag = "nodes",
    request_body = RegisterRequest,
    responses(
        (status = 200, description = "Registered", body = RegisterResponse),
        (status = 400, description = "Malformed, badly signed, stale or disallowed record", body = ErrorBody),
        (status = 409, description = "seq replayed or rolled back", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody),
        (status = 503, description = "The database does not answer (unavailable)", body = ErrorBody),
    )
)]
pub async fn register(
    State(state): Shared,
    Extension(ClientAddress(client)): Extension<ClientAddress>,
    body: Result<Json<RegisterRequest>, JsonRejection>,
) -> Result<Json<RegisterResponse>, ApiError> {
    let result = register_inner(&state, client, body).await;
    metrics::registration(match &result {
        Ok(_) => "ok",
        Err(e) => e.code().as_str(),
    });
    result.map(Json)
}

async fn register_inner(
    state: &AppState,
    client: IpAddr,
    body: Result<Json<RegisterRequest>, JsonRejection>,
) -> Result<RegisterResponse, ApiError> {
    state.limits.write_from(client)?;
    let Json(body) = body?;
    let record = SignedRecord::decode(&body.record.0).map_err(record_error)?;
    let now = state.clock.now();
    record
        .check_fresh(now, state.config.clock_skew_s)
        .map_err(record_error)?;
    let r = record.record();
    r.api_url
        .check_policy(state.config.danger_allow_private_addresses)
        .map_err(url_error)?;
    check_lifetime(state, r)?;
    check_seq(state, r.seq, now)?;
    state.limits.write_by(&r.node_id)?;
    prove_reachability(state, &record).await?;
    match state
        .store
        .upsert_record(&record, now)
        .await
        .map_err(|e| ApiError::internal("storing a record", e))?
    {
        Write::Applied => {}
        Write::Stale { stored_seq } => return Err(seq_conflict(r.seq, stored_seq)),
    }
    state.cache.put(&crate::store::StoredNode {
        node_id: r.node_id,
        seq: r.seq,
        record: Some(record.clone()),
        last_seen: now,
        identity_key: r.identity_key.to_bytes(),
    });
    Ok(RegisterResponse {
        node_id: r.node_id,
        status: NodeStatus::Active,
        seq: r.seq,
        last_seen: now.0,
        next_heartbeat_s: state.next_heartbeat(&r.node_id, r.seq),
    })
}

/// A new or changed URL is accepted only once the node answers a fresh
/// challenge at that URL with its identity key: nobody can register someone
/// else's server. A replayed or rolled-back `seq` is refused first, so
/// replays cost no outbound call.
async fn prove_reachability(state: &AppState, record: &SignedRecord) -> Result<(), ApiError> {
    let r = record.record();
    // A heartbeat (same URL) is answered from the lookup cache, which holds
    // every committed registration of this instance; the database is read
    // only for nodes the cache does not hold (new, deregistered, or past the
    // cache's time to live with replicas). Either way the conditional write
    // stays the authority on `seq`.
    if let Some(cached) = state.cache.get(&r.node_id) {
        if r.seq <= cached.seq {
            return Err(seq_conflict(r.seq, cached.seq));
        }
        if cached.api_url == r.api_url.as_str() {
            return Ok(());
        }
    } else if let Some(stored) = state
        .store
        .node(&r.node_id)
        .await
        .map_err(|e| ApiError::internal("looking up a node", e))?
    {
        if r.seq <= stored.seq {
            return Err(seq_conflict(r.seq, stored.seq));
        }
        if stored
            .record
            .as_ref()
            .is_some_and(|old| old.record().api_url == r.api_url)
        {
            return Ok(());
        }
    }
    let mut challenge = [0u8; 32];
    getrandom::fill(&mut challenge).map_err(|e| ApiError::internal("randomness", e))?;
    let body = ReachabilityChallenge {
        node_id: r.node_id,
        challenge: ChallengeBytes(challenge),
    };
    let unreachable = || {
        ApiError::new(
            ErrorCode::UrlUnreachable,
            format!("the node did not prove that it answers at {}", r.api_url),
        )
    };
    let proof = state
        .transport
        .challenge(&r.api_url, &body)
        .await
        .map_err(|_| unreachable())?;
    let message = reachability_message(
        &challenge,
        &r.node_id,
        &state.fingerprint.to_string(),
        r.api_url.as_str(),
    );
    if proof.node_id != body.node_id
        || r.identity_key
            .verify(
                SignatureContext::ReachabilityProof,
                &message,
                &proof.signature.0,
            )
            .is_err()
    {
        return Err(unreachable());
    }
    Ok(())
}

/// A record may live at most `max_record_lifetime_s`: one signed to live
/// for a century (by a stolen key, or a node process that fooled its
/// signer) would otherwise be served, and put in tokens, for a century.
fn check_lifetime(state: &AppState, r: &NodeRecord) -> Result<(), ApiError> {
    let cap = state.config.max_record_lifetime_s;
    let lifetime = r.expires_at.0.saturating_sub(r.issued_at.0);
    if lifetime > cap {
        return Err(ApiError::new(
            ErrorCode::ExpiryTooFar,
            format!("the record lives {lifetime} s; this directory accepts at most {cap} s"),
        ));
    }
    Ok(())
}

/// The highest `seq` accepted at `now`: the directory's clock in
/// milliseconds, plus the clock skew. A node numbers its records and
/// deregistrations `max(last + 1, its clock in ms)`, so it never needs
/// more; and a `seq` far ahead (2^63 - 1, say) would otherwise lock the
/// node out for good, since no later record could outrun it. With the
/// ceiling, a `seq` signed ahead of time is outrun by the node's clock
/// within `clock_skew_s`.
fn check_seq(state: &AppState, seq: u64, now: UnixTime) -> Result<(), ApiError> {
    let ceiling = now
        .0
        .saturating_add(state.config.clock_skew_s)
        .saturating_add(1)
        .saturating_mul(1000)
        .min(i64::MAX as u64);
    if seq > ceiling {
        return Err(ApiError::new(
            ErrorCode::SeqTooFar,
            format!(
                "seq {seq} is ahead of the directory's clock in milliseconds (at most {ceiling})"
            ),
        ));
    }
    Ok(())
}

fn seq_conflict(offered: u64, stored: u64) -> ApiError {
    if offered == stored {
        ApiError::new(
            ErrorCode::SeqReplay,
            format!("seq {offered} was already used; the next record needs seq > {stored}"),
        )
    } else {
        ApiError::new(
            ErrorCode::SeqRollback,
            format!("seq {offered} is older than the stored seq {stored}"),
        )
    }
}

fn record_error(e: RecordError) -> ApiError {
    let code = match &e {
        RecordError::Length | RecordError::Version(_) | RecordError::Lifetime => {
            ErrorCode::BadRecord
        }
        RecordError::IdentityKey => ErrorCode::BadIdentityKey,
        RecordError::NodeIdMismatch => ErrorCode::NodeIdMismatch,
        RecordError::Url(inner) => return url_error(inner.clone()),
        RecordError::Signature => ErrorCode::BadSignature,
        RecordError::Stale { .. } => ErrorCode::StaleRecord,
        RecordError::Expired(_) => ErrorCode::ExpiredRecord,
    };
    ApiError::new(code, e.to_string())
}

fn url_error(e: UrlError) -> ApiError {
    let code = match e {
        UrlError::Scheme => ErrorCode::UrlNotHttps,
        UrlError::NonGlobalHost => ErrorCode::UrlNotGlobal,
        _ => ErrorCode::BadUrl,
    };
    ApiError::new(code, e.to_string())
}

/// Query of `discover`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DiscoverQuery {
    /// Look up one node by ID (404 if unknown).
    #[param(value_type = Option<NodeIdText>)]
    node_id: Option<String>,
    /// Only nodes with this status.
    status: Option<NodeStatus>,
    /// Page size, 1 to the configured maximum (the document states this
    /// directory's), default 100 or that maximum if smaller.
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[param(value_type = Option<CursorText>)]
    cursor: Option<String>,
}

const CURSOR_VERSION: u8 = 1;

/// List or look up nodes. Records are returned exactly as the nodes signed
/// them; clients verify them and remember the highest `seq` per node.
#[utoipa::path(
    get, path = "/api/v3/nodes/discover", tag = "nodes",
    params(DiscoverQuery),
    responses(
        (status = 200, description = "A page of nodes", body = DiscoverResponse),
        (status = 400, description = "Bad query, node ID or cursor", body = ErrorBody),
        (status = 403, description = "Listing is turned off on this directory", body = ErrorBody),
        (status = 404, description = "Unknown node (with node_id)", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody),
        (status = 503, description = "The database does not answer (unavailable)", body = ErrorBody),
    )
)]
pub async fn discover(
    State(state): Shared,
    Extension(ClientAddress(client)): Extension<ClientAddress>,
    query: Result<Query<DiscoverQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    state.limits.lookup_from(client)?;
    let Query(query) = query?;
    let now = state.clock.now();
    if let Some(id) = &query.node_id {
        let (cached, active) = lookup(&state, client, id, now).await?;
        let status = if active {
            NodeStatus::Active
        } else {
            NodeStatus::Inactive
        };
        let body = if query.status.is_some_and(|wanted| wanted != status) {
            r#"{"nodes":[]}"#.to_owned()
        } else {
            format!(r#"{{"nodes":[{}]}}"#, cached.render(active))
        };
        return Ok(json_response(body));
    }
    if !state.config.allow_listing {
        return Err(ApiError::new(
            ErrorCode::ListingDisabled,
            "this directory does not publish its node list; look nodes up by node_id",
        ));
    }
    let limit = query.limit.unwrap_or(100.min(state.config.max_page_size));
    if limit == 0 || limit > state.config.max_page_size {
        return Err(ApiError::new(
            ErrorCode::BadLimit,
            format!("limit must be between 1 and {}", state.config.max_page_size),
        ));
    }
    let after = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let cutoff = state.active_cutoff(now);
    let filter = match query.status {
        None => StatusFilter::Any,
        Some(NodeStatus::Active) => StatusFilter::ActiveSince(cutoff),
        Some(NodeStatus::Inactive) => StatusFilter::InactiveBefore(cutoff),
    };
    let rows = state
        .store
        .page(after, filter, limit)
        .await
        .map_err(|e| ApiError::internal("listing nodes", e))?;
    // Expired records are left out of the page (the cursor still moves past
    // them, so pages stay consistent). A page also ends before its JSON
    // would pass `max_page_bytes`, so that it fits a client's answer cap
    // (a node's is 64 KiB) whatever `limit` asked for; the cursor then
    // points after the last node included. The text is what serialising a
    // `DiscoverResponse` gives (clients decode it as one).
    // Each entry is rendered once, measured, and the page is put together
    // from the rendered entries.
    let mut body = String::from(r#"{"nodes":["#);
    let mut count = 0;
    let mut last_consumed = None;
    let mut full = rows.len() == limit as usize;
    for node in &rows {
        if let Some(entry) = listed_entry(node, now, cutoff) {
            let entry = serde_json::to_string(&entry)
                .map_err(|e| ApiError::internal("rendering a node", e))?;
            // One byte for the comma between entries.
            if body.len() + entry.len() + 1 + PAGE_TAIL_BYTES > state.config.max_page_bytes {
                full = true;
                break;
            }
            if count > 0 {
                body.push(',');
            }
            body.push_str(&entry);
            count += 1;
        }
        last_consumed = Some(node.node_id);
    }
    body.push(']');
    if full {
        // `validate` keeps `max_page_bytes` above the largest possible
        // entry, so a page always makes progress.
        let last = last_consumed
            .ok_or_else(|| ApiError::internal("listing nodes", "page budget below one entry"))?;
        body.push_str(r#","next_cursor":""#);
        body.push_str(&encode_cursor(&last));
        body.push('"');
    }
    body.push('}');
    Ok(json_response(body))
}

/// What a page may still add after its last entry:
/// `],"next_cursor":"…"}` with a cursor of 44 characters, rounded up.
const PAGE_TAIL_BYTES: usize = 64;

/// A JSON answer rendered ahead of time.
fn json_response(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn encode_cursor(last: &NodeId) -> String {
    let mut bytes = vec![CURSOR_VERSION];
    bytes.extend_from_slice(last.as_bytes());
    openred_core::wire::b64_encode(&bytes)
}

fn decode_cursor(text: &str) -> Result<NodeId, ApiError> {
    let bad = || {
        ApiError::new(
            ErrorCode::BadCursor,
            "cursor is not one this directory issued",
        )
    };
    let bytes = b64_decode(text).map_err(|_| bad())?;
    if bytes.len() != 33 || bytes[0] != CURSOR_VERSION {
        return Err(bad());
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&bytes[1..]);
    Ok(NodeId::from_bytes(id))
}

/// A listed node, unless deregistered or expired.
fn listed_entry(node: &StoredNode, now: UnixTime, cutoff: UnixTime) -> Option<NodeEntry> {
    let record = node.record.as_ref()?;
    if record.record().expires_at <= now {
        return None;
    }
    Some(NodeEntry {
        node_id: node.node_id,
        api_url: record.record().api_url.to_string(),
        last_seen: node.last_seen.0,
        status: if node.last_seen >= cutoff {
            NodeStatus::Active
        } else {
            NodeStatus::Inactive
        },
        record: RecordBytes(record.as_bytes().to_vec()),
    })
}

/// A single-node lookup: from memory when cached; misses go to the
/// database and are rate limited, since most discovery load is lookups of
/// unknown nodes.
async fn lookup(
    state: &AppState,
    client: IpAddr,
    id_text: &str,
    now: UnixTime,
) -> Result<(Arc<CachedNode>, bool), ApiError> {
    let cutoff = state.active_cutoff(now);
    let node_id = match NodeId::parse(id_text) {
        Ok(id) => id,
        Err(e) => {
            state.limits.lookup_miss_from(client)?;
            metrics::lookup("malformed");
            return Err(ApiError::new(ErrorCode::BadNodeId, e.to_string()));
        }
    };
    if let Some(cached) = state.cache.get(&node_id) {
        metrics::lookup("hit");
        if cached.expires_at <= now {
            return Err(expired(&node_id));
        }
        let active = cached.last_seen >= cutoff;
        return Ok((cached, active));
    }
    state.limits.lookup_miss_from(client)?;
    let stored = state
        .store
        .node(&node_id)
        .await
        .map_err(|e| ApiError::internal("looking up a node", e))?;
    match stored {
        Some(node) if node.record.is_some() => {
            state.cache.put(&node);
            metrics::lookup("db_hit");
            let cached = CachedNode::from_stored(&node).ok_or_else(|| unknown(&node_id))?;
            if cached.expires_at <= now {
                return Err(expired(&node_id));
            }
            let active = cached.last_seen >= cutoff;
            Ok((Arc::new(cached), active))
        }
        _ => {
            if stored.is_some() {
                state.cache.remove(&node_id);
            }
            metrics::lookup("miss");
            Err(unknown(&node_id))
        }
    }
}

/// A record past its `expires_at` is not served: the node stopped
/// refreshing it.
fn expired(node_id: &NodeId) -> ApiError {
    ApiError::new(
        ErrorCode::RecordExpired,
        format!("the record of node {node_id} has expired"),
    )
}

fn unknown(node_id: &NodeId) -> ApiError {
    ApiError::new(
        ErrorCode::UnknownNode,
        format!("no node {node_id} is registered"),
    )
}

/// Look up one node.
#[utoipa::path(
    get, path = "/api/v3/nodes/{node_id}", tag = "nodes",
    params(("node_id" = NodeIdText, Path, description = "The node's ID")),
    responses(
        (status = 200, description = "The node", body = NodeEntry),
        (status = 400, description = "Malformed node ID", body = ErrorBody),
        (status = 404, description = "Unknown node", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody),
        (status = 503, description = "The database does not answer (unavailable)", body = ErrorBody),
    )
)]
pub async fn node(
    State(state): Shared,
    Extension(ClientAddress(client)): Extension<ClientAddress>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    state.limits.lookup_from(client)?;
    let Path(id) = path?;
    let now = state.clock.now();
    let (cached, active) = lookup(&state, client, &id, now).await?;
    Ok(json_response(cached.render(active)))
}

/// Deregister a node, signed by it. The request's `seq` must exceed the
/// stored one, so it cannot be replayed, and no record older than it can be
/// registered again.
#[utoipa::path(
    post, path = "/api/v3/nodes/deregister", tag = "nodes",
    request_body = DeregisterRequest,
    responses(
        (status = 200, description = "Deregistered", body = DeregisterResponse),
        (status = 400, description = "Malformed, badly signed or stale request", body = ErrorBody),
        (status = 404, description = "Unknown node", body = ErrorBody),
        (status = 409, description = "seq replayed or rolled back", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody),
        (status = 503, description = "The database does not answer (unavailable)", body = ErrorBody),
    )
)]
pub async fn deregister(
    State(state): Shared,
    Extension(ClientAddress(client)): Extension<ClientAddress>,
    body: Result<Json<DeregisterRequest>, JsonRejection>,
) -> Result<Json<DeregisterResponse>, ApiError> {
    state.limits.write_from(client)?;
    let Json(body) = body?;
    let node_id = body.node_id;
    let stored = state
        .store
        .node(&node_id)
        .await
        .map_err(|e| ApiError::internal("looking up a node", e))?
        .filter(|n| n.record.is_some())
        .ok_or_else(|| unknown(&node_id))?;
    let key = IdentityPublicKey::from_bytes(&stored.identity_key)
        .map_err(|e| ApiError::internal("stored identity key", e))?;
    body.verify(&key).map_err(|_| {
        ApiError::new(
            ErrorCode::BadSignature,
            "the deregistration is not signed by the node's identity key",
        )
    })?;
    state.limits.write_by(&node_id)?;
    let now = state.clock.now();
    if UnixTime(body.issued_at).distance(now) > state.config.clock_skew_s {
        return Err(ApiError::new(
            ErrorCode::StaleRequest,
            format!(
                "issued_at {} is more than {} s from the directory's time {now}",
                body.issued_at, state.config.clock_skew_s
            ),
        ));
    }
    check_seq(&state, body.seq, now)?;
    match state
        .store
        .deregister(&node_id, body.seq, now)
        .await
        .map_err(|e| ApiError::internal("deregistering", e))?
    {
        Some(Write::Applied) => {}
        Some(Write::Stale { stored_seq }) => return Err(seq_conflict(body.seq, stored_seq)),
        None => return Err(unknown(&node_id)),
    }
    state.cache.remove(&node_id);
    Ok(Json(DeregisterResponse {
        node_id,
        deregistered: true,
    }))
}

/// Ask to be introduced to another node. The directory mints a linked pair
/// of one-time tokens, pushes token_b to the target, returns token_a, and
/// forgets both.
#[utoipa::path(
    post, path = "/api/v3/tokens/request-connection", tag = "tokens",
    request_body = ConnectionRequest,
    responses(
        (status = 200, description = "Introduced: token_a", body = ConnectionResponse),
        (status = 400, description = "Malformed, badly signed or stale request; from == target", body = ErrorBody),
        (status = 404, description = "Requester or target unknown", body = ErrorBody),
        (status = 409, description = "Nonce replayed, or target inactive", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody),
        (status = 502, description = "The target is unreachable", body = ErrorBody),
        (status = 503, description = "The database does not answer (unavailable)", body = ErrorBody),
    )
)]
pub async fn request_connection(
    State(state): Shared,
    Extension(ClientAddress(client)): Extension<ClientAddress>,
    body: Result<Json<ConnectionRequest>, JsonRejection>,
) -> Result<Json<ConnectionResponse>, ApiError> {
    let result = introduce(&state, client, body).await;
    metrics::introduction(match &result {
        Ok(_) => "ok",
        Err(e) => e.code().as_str(),
    });
    result.map(Json)
}

async fn introduce(
    state: &Arc<AppState>,
    client: IpAddr,
    body: Result<Json<ConnectionRequest>, JsonRejection>,
) -> Result<ConnectionResponse, ApiError> {
    state.limits.write_from(client)?;
    let Json(body) = body?;
    let (from, target, nonce, signature) = (body.from, body.target, body.nonce.0, body.signature.0);
    let requester = registered(state, &from).await?;
    let issued_at = UnixTime(body.issued_at);
    requester
        .record()
        .identity_key
        .verify(
            SignatureContext::ConnectionRequest,
            &connection_request_message(&from, &target, &nonce, issued_at),
            &signature,
        )
        .map_err(|_| {
            ApiError::new(
                ErrorCode::BadSignature,
                "the request is not signed by the requester's identity key",
            )
        })?;
    let now = state.clock.now();
    let skew = state.config.clock_skew_s;
    if issued_at.distance(now) > skew {
        return Err(ApiError::new(
            ErrorCode::StaleRequest,
            format!("issued_at {issued_at} is more than {skew} s from the directory's time {now}"),
        ));
    }
    if from == target {
        return Err(ApiError::new(
            ErrorCode::SameNode,
            "a node cannot be introduced to itself",
        ));
    }
    state.limits.introduction(&from, &target)?;
    let (target_record, target_seen) = registered_with_last_seen(state, &target).await?;
    // A token carries the other node's record: never an expired one.
    for record in [&requester, &target_record] {
        if record.check_unexpired(now).is_err() {
            // 409, not the lookup's 404: the node exists, and its next
            // registration makes the introduction possible (DIRECTORY.md).
            return Err(ApiError::new(
                ErrorCode::RecordExpired,
                format!(
                    "the record of {} has expired; it must register again",
                    record.record().node_id
                ),
            )
            .with_status(axum::http::StatusCode::CONFLICT));
        }
    }
    if target_seen < state.active_cutoff(now) {
        return Err(ApiError::new(
            ErrorCode::TargetInactive,
            format!("node {target} has not been seen recently"),
        ));
    }
    let mut connection_id = [0u8; 16];
    let mut link_secret = zeroize::Zeroizing::new([0u8; 32]);
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    for buf in [&mut connection_id[..], &mut link_secret[..], &mut seed[..]] {
        getrandom::fill(buf).map_err(|e| ApiError::internal("randomness", e))?;
    }
    let expires_at = now.plus(state.config.introduction_ttl_s);
    // The nonce is kept until the request could no longer pass the
    // freshness check, in the shared database, so no replica accepts it
    // twice. The pair is minted on a blocking thread while this task waits
    // for the claim's commit, so the public-key work and the commit
    // overlap; nothing leaves the directory before the claim has
    // succeeded. A replay therefore costs one mint, no more: the request
    // was authenticated and rate-limited before.
    let mint = tokio::task::spawn_blocking({
        let state = state.clone();
        let requester = requester.clone();
        let target_record = target_record.clone();
        move || {
            mint_pair(
                &state.key,
                &requester,
                &target_record,
                connection_id,
                *link_secret,
                now,
                expires_at,
                &mut SeededRng::new(*seed),
            )
        }
    });
    let claimed = state
        .store
        .claim_nonce(&from, &nonce, issued_at.plus(skew + 1), now)
        .await
        .map_err(|e| ApiError::internal("claiming a nonce", e))?;
    if !claimed {
        return Err(ApiError::new(
            ErrorCode::NonceReplay,
            "this request was seen already",
        ));
    }
    let pair = mint
        .await
        .map_err(|e| ApiError::internal("minting tokens", e))?
        .map_err(|e| ApiError::internal("minting tokens", e))?;
    let push = TokenPush {
        from,
        token: TokenBytes(pair.for_target.as_bytes().to_vec()),
    };
    if state
        .transport
        .push_token(&target_record.record().api_url, &push)
        .await
        .is_err()
    {
        return Err(ApiError::new(
            ErrorCode::TargetUnreachable,
            format!("node {target} could not be reached"),
        ));
    }
    // Nothing of the pair is kept: the values are dropped (and the link
    // secret zeroized) when this function returns.
    Ok(ConnectionResponse {
        connection_id: ConnectionIdBytes(connection_id),
        expires_at: expires_at.0,
        token: TokenBytes(pair.for_initiator.as_bytes().to_vec()),
    })
}

async fn registered(state: &AppState, node_id: &NodeId) -> Result<SignedRecord, ApiError> {
    registered_with_last_seen(state, node_id)
        .await
        .map(|(r, _)| r)
}

/// A registered node's record and when it was last seen, from the lookup
/// cache when it holds the node (the same freshness rules as lookups).
async fn registered_with_last_seen(
    state: &AppState,
    node_id: &NodeId,
) -> Result<(SignedRecord, UnixTime), ApiError> {
    if let Some(cached) = state.cache.get(node_id) {
        return Ok((cached.record.clone(), cached.last_seen));
    }
    let stored = state
        .store
        .node(node_id)
        .await
        .map_err(|e| ApiError::internal("looking up a node", e))?;
    match stored {
        Some(node) => {
            state.cache.put(&node);
            match node.record {
                Some(record) => Ok((record, node.last_seen)),
                None => Err(unknown(node_id)),
            }
        }
        None => Err(unknown(node_id)),
    }
}

/// Health and node counts. Never rate limited.
#[utoipa::path(
    get, path = "/api/v3/health", tag = "service",
    responses(
        (status = 200, description = "Healthy", body = HealthResponse),
        (status = 503, description = "The database does not answer", body = ErrorBody),
    )
)]
pub async fn health(State(state): Shared) -> Result<Json<HealthResponse>, ApiError> {
    let now = state.clock.now();
    let (active, inactive) = state
        .store
        .counts(state.active_cutoff(now))
        .await
        .map_err(|e| ApiError::internal("health check", e))?;
    Ok(Json(HealthResponse {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        directory_key: state.fingerprint.to_string(),
        directory_public_key: PublicKeyBytes(state.key.public().to_bytes()),
        nodes: NodeCounts { active, inactive },
    }))
}

/// Prometheus metrics.
#[utoipa::path(
    get, path = "/metrics", tag = "service",
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain"))
)]
pub async fn metrics_text(State(state): Shared) -> impl IntoResponse {
    let mut body = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    // The accept loop's counts are this instance's, not the process's.
    openred_http::ListenerCounts::render(
        &mut body,
        "openred_directory",
        &[("api", state.connections.counts())],
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// This document.
#[utoipa::path(
    get, path = "/api/v3/openapi.json", tag = "service",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json"))
)]
pub async fn openapi(State(state): Shared) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi_json.clone(),
    )
}
