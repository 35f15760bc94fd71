//! The messaging module's routes: the P2P receiver, and the owner's
//! admin API (send, inbox, outbox, a live stream of new messages).

use openred_core::error_code::ErrorCode;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post};
use axum::{Json, Router};
use openred_core::NodeId;
use openred_http::ApiError;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

use super::store::{DeliveryState, MessageId, Outgoing, Received, Refusal, Stored};
use super::{
    valid_content_type, BatchReceipt, MessageResult, Messaging, Receipt, SendError, WireBatch,
    WireMessage, MAX_BATCH_MESSAGES, MESSAGE_PATH,
};
use crate::peer::sessions::LiveSession;
use crate::peer::{framed, Peers};

type Shared = State<Peers>;

/// `POST /p2p/message`.
pub(super) fn p2p_routes(module: Arc<Messaging>) -> Router<Peers> {
    Router::new().route(
        MESSAGE_PATH,
        framed(MESSAGE_PATH, move |peers, live, payload| {
            receive(module.clone(), peers, live, payload)
        }),
    )
}

/// The admin routes under `/admin/v1/messages`.
pub(super) fn admin_routes(module: Arc<Messaging>) -> Router<Peers> {
    let (m1, m2, m3, m4, m5, m6) = (
        module.clone(),
        module.clone(),
        module.clone(),
        module.clone(),
        module.clone(),
        module,
    );
    Router::new()
        .route(
            "/admin/v1/messages",
            post(move |state: Shared, body| send(m1.clone(), state, body)),
        )
        .route(
            "/admin/v1/messages/inbox",
            get(move |query| inbox(m2.clone(), query)),
        )
        .route(
            "/admin/v1/messages/outbox",
            get(move |query| outbox(m3.clone(), query)),
        )
        .route(
            "/admin/v1/messages/outbox/{message_id}",
            get(move |id| outgoing(m4.clone(), id)),
        )
        .route("/admin/v1/messages/stream", get(move || stream(m5.clone())))
        .route(
            "/admin/v1/messages/inbox/delete",
            post(move |body| delete_inbox(m6.clone(), body)),
        )
}

fn bad_message(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadMessage, message)
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        ErrorCode::MessageTooLarge,
        format!("the body is larger than {max} bytes"),
    )
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal("messaging storage", e)
}

fn not_started() -> ApiError {
    ApiError::new(
        ErrorCode::NotStarted,
        "the messaging module has not started yet",
    )
}

/// One message checked: what to store, or why not.
fn check(
    module: &Messaging,
    message: WireMessage,
    peer: openred_core::NodeId,
    now: u64,
) -> Result<Received, ApiError> {
    let message_id = MessageId::parse(&message.message_id)
        .ok_or_else(|| bad_message("message_id must be 32 hex digits"))?;
    if message.seq == 0 || i64::try_from(message.seq).is_err() {
        return Err(bad_message("seq must be between 1 and 2^63 - 1"));
    }
    if i64::try_from(message.sent_at).is_err() {
        return Err(bad_message("sent_at must be below 2^63"));
    }
    if !valid_content_type(&message.content_type) {
        return Err(bad_message(
            "content_type must be 1 to 127 printable ASCII characters",
        ));
    }
    let max = module.settings.max_body_bytes;
    if message.body.len() > max {
        return Err(too_large(max));
    }
    Ok(Received {
        peer,
        message_id,
        seq: message.seq,
        sent_at: message.sent_at,
        received_at: now,
        content_type: message.content_type,
        body: message.body,
    })
}

/// A frame carries one message, or a batch of them.
enum Incoming {
    Batch(WireBatch),
    One(WireMessage),
}

impl Incoming {
    /// Reads a batch (what senders send) or a single message. Not with
    /// `#[serde(untagged)]`, which buffers every value of the frame and
    /// parses it twice; the error shown is that of the form the frame
    /// looks like (a batch if it has a `messages` field).
    fn parse(payload: &[u8]) -> Result<Incoming, ApiError> {
        let batch = match serde_json::from_slice::<WireBatch>(payload) {
            Ok(batch) => return Ok(Incoming::Batch(batch)),
            Err(e) => e,
        };
        match serde_json::from_slice::<WireMessage>(payload) {
            Ok(one) => Ok(Incoming::One(one)),
            Err(one) => {
                let looks_like_batch = serde_json::from_slice::<serde_json::Value>(payload)
                    .is_ok_and(|v| v.get("messages").is_some());
                Err(bad_message(
                    if looks_like_batch { batch } else { one }.to_string(),
                ))
            }
        }
    }
}

/// The refusal of a message over an inbox quota.
fn over_quota(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::PeerFull => ApiError::new(
            ErrorCode::InboxFull,
            "your messages fill this node's inbox quota for you; its owner must delete some first",
        ),
        Refusal::NodeFull => ApiError::new(
            ErrorCode::NodeStorageFull,
            "this node's inbox is full; its owner must delete messages first",
        ),
    }
}

/// Stores checked messages (one job of a group commit) within the inbox
/// quotas and counts them; answers once all are committed, per message:
/// stored (now or before), or refused over a quota.
async fn store_all(
    module: &Messaging,
    messages: Vec<Received>,
) -> Result<Vec<Result<(), ApiError>>, ApiError> {
    let store = module.store().ok_or_else(not_started)?;
    let messages: Vec<Arc<Received>> = messages.into_iter().map(Arc::new).collect();
    let quota = module.settings.quota();
    let stored = store
        .receive_within(messages.clone(), &quota)
        .await
        .map_err(internal)?;
    let mut results = Vec::with_capacity(stored.len());
    for (message, stored) in messages.into_iter().zip(stored) {
        results.push(match stored {
            Stored::New => {
                module.counters.received.fetch_add(1, Ordering::Relaxed);
                let _ = module.events.send(message);
                Ok(())
            }
            Stored::Duplicate => {
                module.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Stored::Refused(refusal) => {
                module.counters.over_quota.fetch_add(1, Ordering::Relaxed);
                Err(over_quota(refusal))
            }
        });
    }
    Ok(results)
}

async fn receive(
    module: Arc<Messaging>,
    state: Peers,
    live: Arc<LiveSession>,
    payload: Vec<u8>,
) -> Result<Vec<u8>, ApiError> {
    let incoming = Incoming::parse(&payload)?;
    let now = state.clock().now().0;
    let answer = match incoming {
        Incoming::One(message) => {
            let received = check(&module, message, live.peer, now)?;
            let message_id = received.message_id.to_string();
            // Persist, then acknowledge.
            for result in store_all(&module, vec![received]).await? {
                result?;
            }
            serde_json::to_vec(&Receipt {
                received: true,
                message_id,
            })
        }
        Incoming::Batch(batch) => {
            if batch.messages.is_empty() || batch.messages.len() > MAX_BATCH_MESSAGES {
                return Err(bad_message(format!(
                    "a batch carries 1 to {MAX_BATCH_MESSAGES} messages"
                )));
            }
            // Each message is stored or refused on its own; the refusals
            // travel in the answer frame, authenticated.
            let mut results = Vec::with_capacity(batch.messages.len());
            let mut accepted = Vec::new();
            // Where each accepted message's result goes.
            let mut places = Vec::new();
            for message in batch.messages {
                let message_id = message.message_id.clone();
                match check(&module, message, live.peer, now) {
                    Ok(received) => {
                        places.push(results.len());
                        results.push(MessageResult::received(message_id));
                        accepted.push(received);
                    }
                    Err(e) => results.push(MessageResult::refused(message_id, &e)),
                }
            }
            for (place, stored) in places.into_iter().zip(store_all(&module, accepted).await?) {
                if let Err(e) = stored {
                    let message_id = std::mem::take(&mut results[place].message_id);
                    results[place] = MessageResult::refused(message_id, &e);
                }
            }
            serde_json::to_vec(&BatchReceipt { results })
        }
    };
    answer.map_err(internal)
}

/// `POST /admin/v1/messages`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// The peer.
    #[schema(value_type = openred_core::wire::NodeIdText)]
    pub node_id: NodeId,
    /// The text.
    pub text: String,
    /// Its media type (default `text/plain; charset=utf-8`).
    #[serde(default)]
    pub content_type: Option<String>,
}

/// A message in the outbox, as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxView {
    /// Its ID.
    pub message_id: String,
    /// To whom.
    pub node_id: String,
    /// Its place in the order of messages to this peer.
    pub seq: u64,
    /// `queued`, `sent`, `delivered` or `failed`.
    pub state: DeliveryState,
    /// Attempts so far.
    pub attempts: u64,
    /// Why the last attempt failed, or why the message failed.
    pub last_error: Option<String>,
    /// When it was written (Unix seconds).
    pub created_at: u64,
    /// When the peer acknowledged it.
    pub delivered_at: Option<u64>,
    /// Its media type.
    pub content_type: String,
    /// Its text.
    pub text: String,
}

impl From<Outgoing> for OutboxView {
    fn from(m: Outgoing) -> OutboxView {
        OutboxView {
            message_id: m.message_id.to_string(),
            node_id: m.peer.to_string(),
            seq: m.seq,
            state: m.state,
            attempts: m.attempts,
            last_error: m.last_error,
            created_at: m.created_at,
            delivered_at: m.delivered_at,
            content_type: m.content_type,
            text: m.body,
        }
    }
}

/// A message in the inbox, as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InboxView {
    /// Its ID.
    pub message_id: String,
    /// Who sent it.
    pub node_id: String,
    /// Its place in the sender's order.
    pub seq: u64,
    /// The sender's clock when it was written.
    pub sent_at: u64,
    /// This node's clock when it was stored.
    pub received_at: u64,
    /// Its media type.
    pub content_type: String,
    /// Its text.
    pub text: String,
}

impl From<&Received> for InboxView {
    fn from(m: &Received) -> InboxView {
        InboxView {
            message_id: m.message_id.to_string(),
            node_id: m.peer.to_string(),
            seq: m.seq,
            sent_at: m.sent_at,
            received_at: m.received_at,
            content_type: m.content_type.clone(),
            text: m.body.clone(),
        }
    }
}

async fn send(
    module: Arc<Messaging>,
    State(state): Shared,
    body: Result<Json<SendRequest>, JsonRejection>,
) -> Result<Json<OutboxView>, ApiError> {
    let Json(request) = body?;
    let peer = request.node_id;
    let content_type = request
        .content_type
        .as_deref()
        .unwrap_or("text/plain; charset=utf-8");
    // Persisted before the first attempt: an acknowledged send is never lost.
    let sent = module
        .send(&state, peer, content_type, &request.text)
        .await
        .map_err(|e| match e {
            SendError::TooLarge(max) => too_large(max),
            SendError::FrameTooLarge => ApiError::new(ErrorCode::MessageTooLarge, e.to_string()),
            SendError::ContentType => bad_message(e.to_string()),
            SendError::ToSelf => ApiError::new(ErrorCode::ToSelf, e.to_string()),
            SendError::NotStarted => not_started(),
            SendError::Node(e) => e.to_api(),
            SendError::Store(e) => internal(e),
        })?;
    Ok(Json(sent.into()))
}

/// `?peer=ID&limit=N`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this peer's messages.
    pub peer: Option<String>,
    /// At most this many (default 100, at most 10,000).
    pub limit: Option<usize>,
    /// Skip this many first (for the next page).
    pub offset: Option<usize>,
}

fn limit(query: &ListQuery) -> Result<usize, ApiError> {
    match query.limit.unwrap_or(100) {
        n @ 1..=10_000 => Ok(n),
        _ => Err(ApiError::new(
            ErrorCode::BadLimit,
            "limit must be between 1 and 10000",
        )),
    }
}

async fn inbox(
    module: Arc<Messaging>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<InboxView>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::new(ErrorCode::BadQuery, e.body_text()))?;
    let peer = query
        .peer
        .as_deref()
        .map(NodeId::parse)
        .transpose()
        .map_err(|e| ApiError::new(ErrorCode::BadNodeId, e.to_string()))?;
    let store = module.store().ok_or_else(not_started)?;
    let messages = store
        .inbox(peer.as_ref(), limit(&query)?, query.offset.unwrap_or(0))
        .await
        .map_err(internal)?;
    Ok(Json(messages.iter().map(InboxView::from).collect()))
}

async fn outbox(
    module: Arc<Messaging>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<OutboxView>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::new(ErrorCode::BadQuery, e.body_text()))?;
    if query.peer.is_some() {
        return Err(ApiError::new(
            ErrorCode::BadQuery,
            "the outbox takes no peer filter",
        ));
    }
    let store = module.store().ok_or_else(not_started)?;
    let messages = store
        .outbox(limit(&query)?, query.offset.unwrap_or(0))
        .await
        .map_err(internal)?;
    Ok(Json(messages.into_iter().map(OutboxView::from).collect()))
}

async fn outgoing(
    module: Arc<Messaging>,
    Path(id): Path<String>,
) -> Result<Json<OutboxView>, ApiError> {
    let id = MessageId::parse(&id)
        .ok_or_else(|| ApiError::new(ErrorCode::BadMessageId, "32 hex digits expected"))?;
    let store = module.store().ok_or_else(not_started)?;
    store
        .outgoing_by_id(&id)
        .await
        .map_err(internal)?
        .map(|m| Json(m.into()))
        .ok_or_else(|| ApiError::new(ErrorCode::UnknownMessage, "no such message in the outbox"))
}

/// `POST /admin/v1/messages/inbox/delete`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteInbox {
    /// The peer whose messages go.
    pub node_id: NodeId,
    /// Which of its messages (1 to 10,000); all of them if absent.
    #[serde(default)]
    pub message_ids: Option<Vec<String>>,
}

/// The answer to [`DeleteInbox`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InboxDeleted {
    /// Messages deleted.
    pub deleted: u64,
}

/// Deletes inbox messages: their room in the peer's quota and the
/// node's is free at once.
async fn delete_inbox(
    module: Arc<Messaging>,
    body: Result<Json<DeleteInbox>, JsonRejection>,
) -> Result<Json<InboxDeleted>, ApiError> {
    let Json(request) = body?;
    let peer = request.node_id;
    let ids = match &request.message_ids {
        None => None,
        Some(ids) if ids.is_empty() || ids.len() > 10_000 => {
            return Err(ApiError::new(
                ErrorCode::BadMessageIds,
                "name 1 to 10000 message IDs, or none for all of the peer's messages",
            ))
        }
        Some(ids) => Some(
            ids.iter()
                .map(|id| {
                    MessageId::parse(id).ok_or_else(|| {
                        ApiError::new(ErrorCode::BadMessageId, "32 hex digits expected")
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let store = module.store().ok_or_else(not_started)?;
    let deleted = store
        .delete_inbox(&peer, ids.as_deref())
        .await
        .map_err(internal)?;
    Ok(Json(InboxDeleted { deleted }))
}

/// Server-sent events: one `message` event (an [`InboxView`]) per new
/// inbox message, in the order they were committed; a `lagged` event if
/// the client fell behind and missed some (it can read the inbox).
async fn stream(
    module: Arc<Messaging>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let events = module.subscribe();
    let stream = futures_util::stream::unfold(events, |mut events| async move {
        let event = match events.recv().await {
            Ok(message) => Event::default()
                .event("message")
                .json_data(InboxView::from(message.as_ref()))
                .unwrap_or_else(|_| Event::default().event("error")),
            Err(RecvError::Lagged(missed)) => {
                Event::default().event("lagged").data(missed.to_string())
            }
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), events))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
