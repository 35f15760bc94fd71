//! The messaging module: end-to-end encrypted messages between nodes.
//!
//! - **Receiving** (`POST /p2p/message`): a session frame carrying
//!   [`WireMessage`]. The receiver checks it, drops a duplicate by message
//!   ID, persists it to its inbox (group commits: concurrent messages share
//!   one transaction), and only then answers [`Receipt`].
//! - **Sending**: the message goes to the outbox first (committed before
//!   any attempt), then a worker per peer delivers the peer's messages in
//!   seq order, many in flight at once, and marks them delivered when the
//!   peer acknowledges. Failures are retried with exponential back-off and
//!   jitter, across restarts of either side, peer outages and directory
//!   outages (a session is renewed peer to peer; a new introduction is
//!   asked for only when no session is left). A message the peer refuses
//!   for good (too large, malformed) fails with the peer's reason; one not
//!   delivered within `ttl_s` fails too.
//! - The receiver's inbox lists each peer's messages in the sender's order
//!   (seq), whatever order concurrent deliveries arrived in.
//! - The inbox has quotas per peer (messages, bytes) and in all (bytes):
//!   a message over one is refused inside the authenticated receipt
//!   (`inbox_full`, `node_storage_full`), and the sender fails it with
//!   that reason instead of retrying. The owner frees room by deleting
//!   messages (`POST /admin/v1/messages/inbox/delete`).
//!
//! Settings (`[modules.messaging]`): see [`Settings`].

pub mod api;
pub mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use openred_core::session::SessionId;
use openred_core::NodeId;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch, Notify};

use self::store::{MessageId, MessageStore, Received};
use super::{BoxFuture, Mailbox, Metric, Module, ModuleContext, Note};
use crate::error::NodeError;
use crate::peer::Peers;

/// The module's name.
pub const NAME: &str = "messaging";
/// The P2P route.
pub const MESSAGE_PATH: &str = openred_core::routes::node::MESSAGE;

/// The module's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The largest body, in bytes, sent or accepted (default 64 KiB).
    pub max_body_bytes: usize,
    /// Messages in flight to one peer at once (default 64).
    pub in_flight_per_peer: usize,
    /// The first retry waits about this long (default 250 ms); each
    /// failure doubles it, with jitter.
    pub retry_base_ms: u64,
    /// The longest wait between retries (default 60 s).
    pub retry_max_ms: u64,
    /// A message not delivered within this many seconds fails (default 7
    /// days).
    pub ttl_s: u64,
    /// Messages one peer may have in this node's inbox (default 100,000);
    /// more are refused with `inbox_full` until the owner deletes some.
    pub max_inbox_messages_per_peer: u64,
    /// Bytes (bodies and media types) one peer may have in this node's
    /// inbox (default 64 MiB); more are refused with `inbox_full`.
    pub max_inbox_bytes_per_peer: u64,
    /// Bytes the whole inbox may hold, all peers together (default 512
    /// MiB); more are refused with `node_storage_full`.
    pub max_inbox_bytes_total: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_body_bytes: 64 * 1024,
            in_flight_per_peer: 64,
            retry_base_ms: 250,
            retry_max_ms: 60_000,
            ttl_s: 7 * 24 * 3600,
            max_inbox_messages_per_peer: 100_000,
            max_inbox_bytes_per_peer: 64 << 20,
            max_inbox_bytes_total: 512 << 20,
        }
    }
}

impl Settings {
    /// The inbox quotas.
    pub fn quota(&self) -> store::Quota {
        store::Quota {
            messages_per_peer: self.max_inbox_messages_per_peer,
            bytes_per_peer: self.max_inbox_bytes_per_peer,
            bytes_total: self.max_inbox_bytes_total,
        }
    }
}

/// A message inside a session frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireMessage {
    /// 32 hex digits, chosen by the sender.
    pub message_id: String,
    /// The sender's sequence number for this receiver, from 1.
    pub seq: u64,
    /// Unix seconds, by the sender's clock.
    pub sent_at: u64,
    /// A media type such as `text/plain; charset=utf-8`.
    pub content_type: String,
    /// The text.
    pub body: String,
}

/// [`WireMessage`] as the sender writes it, borrowing its text.
#[derive(Serialize)]
struct WireMessageRef<'a> {
    message_id: &'a str,
    seq: u64,
    sent_at: u64,
    content_type: &'a str,
    body: &'a str,
}

/// Counts what is written to it.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The most messages one frame carries.
pub const MAX_BATCH_MESSAGES: usize = 64;

/// Several messages in one frame: how the sender delivers a backlog (one
/// AEAD, one request and one commit for the lot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireBatch {
    /// 1 to [`MAX_BATCH_MESSAGES`] messages.
    pub messages: Vec<WireMessage>,
}

/// The answer to a batch: one result per message, in the answer frame, so
/// that refusals are authenticated too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchReceipt {
    /// One per message of the batch.
    pub results: Vec<MessageResult>,
}

/// What became of one message of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageResult {
    /// The message.
    pub message_id: String,
    /// Stored (or stored before): in the receiver's inbox.
    pub received: bool,
    /// Why not, for a refused message: `bad_message`, `message_too_large`,
    /// `inbox_full` (the sender's share of the receiver's inbox is full) or
    /// `node_storage_full` (the receiver's inbox is full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The explanation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl MessageResult {
    fn received(message_id: String) -> MessageResult {
        MessageResult {
            message_id,
            received: true,
            error: None,
            message: None,
        }
    }

    fn refused(message_id: String, error: &openred_http::ApiError) -> MessageResult {
        MessageResult {
            message_id,
            received: false,
            error: Some(error.code().as_str().to_owned()),
            message: Some(error.message().to_owned()),
        }
    }
}

/// The receiver's acknowledgement: the message is in its inbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Always true: any failure is an error answer instead.
    pub received: bool,
    /// The acknowledged message.
    pub message_id: String,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    duplicates: AtomicU64,
    over_quota: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    attempts: AtomicU64,
}

/// What the module needs once the node runs.
struct Running {
    me: std::sync::Weak<Messaging>,
    context: ModuleContext,
    store: MessageStore,
    stop: watch::Receiver<bool>,
}

/// Why a message was not accepted for sending.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The body is over `max_body_bytes`.
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    /// Encoded (JSON escapes grow control characters sixfold), the message
    /// would not fit in a frame.
    #[error("the encoded message would not fit in a frame")]
    FrameTooLarge,
    /// The media type is not acceptable.
    #[error("content_type must be 1 to 127 printable ASCII characters")]
    ContentType,
    /// A node does not message itself.
    #[error("a node cannot message itself")]
    ToSelf,
    /// The module is not running (the node does not serve yet).
    #[error("the messaging module has not started")]
    NotStarted,
    /// The node stops.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The outbox could not be written.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The messaging module.
pub struct Messaging {
    settings: Settings,
    running: OnceLock<Running>,
    workers: Mutex<HashMap<NodeId, Arc<Notify>>>,
    events: broadcast::Sender<Arc<Received>>,
    counters: Counters,
}

/// Checks a media type: 1 to 127 visible ASCII characters or spaces.
pub fn valid_content_type(text: &str) -> bool {
    !text.is_empty() && text.len() <= 127 && text.bytes().all(|b| (0x20..0x7f).contains(&b))
}

impl Messaging {
    /// The module with `settings` (JSON; defaults where absent).
    pub fn new(settings: Option<&serde_json::Value>) -> Result<Messaging, String> {
        let settings: Settings = match settings {
            Some(value) => serde_json::from_value(value.clone()).map_err(|e| e.to_string())?,
            None => Settings::default(),
        };
        // Deliveries in flight at once arrive in any order; the receiver's
        // replay window (1024 frames by default) must cover them.
        if settings.in_flight_per_peer == 0
            || settings.in_flight_per_peer > 512
            || settings.max_body_bytes == 0
            || settings.retry_base_ms == 0
            || settings.retry_max_ms < settings.retry_base_ms
        {
            return Err("in_flight_per_peer must be 1 to 512, max_body_bytes and retry_base_ms at least 1, and retry_max_ms at least retry_base_ms".into());
        }
        if settings.max_inbox_messages_per_peer == 0
            || settings.max_inbox_bytes_per_peer == 0
            || settings.max_inbox_bytes_total < settings.max_inbox_bytes_per_peer
        {
            return Err("max_inbox_messages_per_peer and max_inbox_bytes_per_peer must be at least 1, and max_inbox_bytes_total at least max_inbox_bytes_per_peer".into());
        }
        Ok(Messaging {
            settings,
            running: OnceLock::new(),
            workers: Mutex::new(HashMap::new()),
            events: broadcast::channel(1024).0,
            counters: Counters::default(),
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn running(&self) -> Result<&Running, NodeError> {
        self.running
            .get()
            .ok_or(NodeError::Busy("the messaging module has not started"))
    }

    /// The module's tables (once the node serves).
    pub fn store(&self) -> Option<&MessageStore> {
        self.running.get().map(|r| &r.store)
    }

    /// New inbox messages, as they are committed.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Received>> {
        self.events.subscribe()
    }

    /// Puts a message in the outbox (committed when this returns) and
    /// wakes the peer's delivery worker. Returns the outbox entry.
    pub async fn send(
        &self,
        node: &Peers,
        peer: NodeId,
        content_type: &str,
        text: &str,
    ) -> Result<store::Outgoing, SendError> {
        if peer == node.node_id() {
            return Err(SendError::ToSelf);
        }
        if !valid_content_type(content_type) {
            return Err(SendError::ContentType);
        }
        if text.len() > self.settings.max_body_bytes {
            return Err(SendError::TooLarge(self.settings.max_body_bytes));
        }
        let message_id = MessageId::random()?;
        let created_at = node.clock().now().0;
        // The size of its JSON in a frame, counted without writing it out.
        let mut encoded = ByteCount(0);
        serde_json::to_writer(
            &mut encoded,
            &WireMessageRef {
                message_id: &message_id.to_string(),
                seq: u64::from(u32::MAX),
                sent_at: created_at,
                content_type,
                body: text,
            },
        )
        .map_err(|_| SendError::FrameTooLarge)?;
        if encoded.0 + 2 * MESSAGE_PATH.len() + 64 > node.max_frame_bytes() {
            return Err(SendError::FrameTooLarge);
        }
        let store = self.store().ok_or(SendError::NotStarted)?.clone();
        let me = self.running()?.me.clone();
        let message = store::NewMessage {
            message_id,
            peer,
            created_at,
            content_type: content_type.to_owned(),
            body: text.to_owned(),
        };
        // Committed and handed to the worker even if the caller goes away
        // meanwhile (a client that disconnects): a committed message is
        // never left unattempted.
        let seq = tokio::spawn(async move {
            let seq = store.enqueue(message).await?;
            if let Some(me) = me.upgrade() {
                me.kick(peer, true);
            }
            Ok::<_, crate::store::StoreError>(seq)
        })
        .await
        .map_err(|_| SendError::NotStarted)??;
        Ok(store::Outgoing {
            message_id,
            peer,
            seq,
            created_at,
            content_type: content_type.to_owned(),
            body: text.to_owned(),
            state: store::DeliveryState::Queued,
            attempts: 0,
            last_error: None,
            delivered_at: None,
        })
    }

    /// Wakes the worker of `peer`, starting one if `start` and there is
    /// none.
    fn kick(&self, peer: NodeId, start: bool) {
        let Some(running) = self.running.get() else {
            return;
        };
        let Some(me) = running.me.upgrade() else {
            return;
        };
        let mut workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(notify) = workers.get(&peer) {
            notify.notify_one();
            return;
        }
        if !start {
            return;
        }
        let notify = Arc::new(Notify::new());
        workers.insert(peer, notify.clone());
        tokio::spawn(me.peer_worker(running.context.clone(), peer, notify, running.stop.clone()));
    }

    /// Delivers `peer`'s messages until none is left, then waits to be
    /// woken; on failure, waits with back-off (or until woken) and retries.
    async fn peer_worker(
        self: Arc<Self>,
        context: ModuleContext,
        peer: NodeId,
        notify: Arc<Notify>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut failures = 0u32;
        loop {
            if *stop.borrow() {
                return;
            }
            let wait = if !context.is_enabled() {
                None
            } else {
                let Some(node) = context.peers() else { return };
                match self.deliver_pending(&node, &peer).await {
                    Ok(()) => {
                        if failures > 0 {
                            if let Ok(running) = self.running() {
                                let _ = running.store.note_error(&peer, None).await;
                            }
                        }
                        failures = 0;
                        None
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        let wait = self.backoff(failures);
                        tracing::debug!(%peer, error = %e, retry_in_ms = wait.as_millis() as u64, "message delivery failed");
                        if let Ok(running) = self.running() {
                            let _ = running.store.note_error(&peer, Some(&e.to_string())).await;
                        }
                        Some(wait)
                    }
                }
            };
            tokio::select! {
                _ = notify.notified() => {}
                _ = stop.wait_for(|s| *s) => return,
                _ = sleep_or_forever(wait) => {}
            }
        }
    }

    /// The wait after `failures` failures in a row: exponential, capped,
    /// with full jitter in its upper half.
    fn backoff(&self, failures: u32) -> Duration {
        let base = self.settings.retry_base_ms;
        let ceiling = base
            .saturating_mul(1u64 << failures.saturating_sub(1).min(32))
            .min(self.settings.retry_max_ms);
        let mut random = [0u8; 8];
        let _ = getrandom::fill(&mut random);
        let jitter = u64::from_le_bytes(random) % (ceiling / 2 + 1);
        Duration::from_millis(ceiling / 2 + jitter)
    }

    /// Sends every undelivered message to `peer`, in seq order, with up to
    /// `in_flight_per_peer` frames at once. The window is refilled as each
    /// frame is answered, the outbox is read ahead while frames travel,
    /// and acknowledgements are committed in the background, so that the
    /// bookkeeping never stops the sends. Returns the first failure that
    /// calls for a retry, after every answer has been recorded.
    async fn deliver_pending(&self, node: &Peers, peer: &NodeId) -> Result<(), NodeError> {
        let running = self.running()?;
        let (store, me) = (running.store.clone(), running.me.upgrade());
        let me = me.ok_or(NodeError::Busy("the messaging module has stopped"))?;
        let live = node.session_for(peer).await?;
        let window = self.settings.in_flight_per_peer;
        let budget = node.max_frame_bytes().saturating_sub(1024);
        let mut waiting = Waiting::default();
        let mut in_flight = tokio::task::JoinSet::new();
        let mut marking = tokio::task::JoinSet::new();
        let mut delivered = Vec::new();
        let mut unacknowledged = Vec::new();
        let mut retry: Option<NodeError> = None;
        loop {
            if retry.is_none() && waiting.wants_more(window) {
                let page = store.pending(peer, waiting.after, READ_AHEAD).await?;
                waiting.add(page, READ_AHEAD);
            }
            while retry.is_none() && in_flight.len() < window {
                let Some(frame) = waiting.next_frame(window - in_flight.len(), budget)? else {
                    break;
                };
                self.counters
                    .attempts
                    .fetch_add(frame.len() as u64, Ordering::Relaxed);
                let (node, live) = (node.clone(), live.clone());
                in_flight.spawn(async move {
                    let outcome = send_frame(&node, &live, &frame).await;
                    (frame, outcome)
                });
            }
            let Some(joined) = in_flight.join_next().await else {
                break;
            };
            match joined {
                Ok((frame, Ok(results))) => {
                    for (entry, result) in frame.iter().zip(results) {
                        match result {
                            Ok(()) => delivered.push(entry.row),
                            Err(reason) => {
                                store.mark_failed(&entry.id, &reason).await?;
                                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                Ok((frame, Err(e))) => match (refusal(&e), frame.as_slice()) {
                    (Some(reason), [entry]) => {
                        store.mark_failed(&entry.id, &reason).await?;
                        self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        unacknowledged.extend(frame.iter().map(|entry| entry.row));
                        retry.get_or_insert(e);
                    }
                },
                Err(e) => {
                    retry.get_or_insert(NodeError::Malformed("a delivery task failed"));
                    tracing::warn!(error = %e, "a delivery task failed");
                }
            }
            if delivered.len() >= MARK_BATCH {
                me.mark_in_background(node, &mut marking, std::mem::take(&mut delivered));
            }
        }
        me.mark_in_background(node, &mut marking, delivered);
        while let Some(marked) = marking.join_next().await {
            marked.map_err(|_| NodeError::Malformed("recording acknowledgements failed"))??;
        }
        if let Some(e) = retry {
            store.mark_sent(&unacknowledged).await?;
            node.recover(&live, &e).await;
            return Err(e);
        }
        Ok(())
    }

    /// Commits acknowledgements without waiting: the next frames go out
    /// meanwhile. They join the outbox writer's queue, which commits in
    /// order.
    fn mark_in_background(
        self: &Arc<Self>,
        node: &Peers,
        marking: &mut tokio::task::JoinSet<Result<(), NodeError>>,
        ids: Vec<store::RowId>,
    ) {
        let (Some(running), false) = (self.running.get(), ids.is_empty()) else {
            return;
        };
        let (me, store) = (self.clone(), running.store.clone());
        let now = node.clock().now();
        marking.spawn(async move {
            store.mark_delivered(&ids, now).await?;
            me.counters
                .delivered
                .fetch_add(ids.len() as u64, Ordering::Relaxed);
            Ok(())
        });
    }

    /// Fails what was not delivered in time, every minute.
    async fn expiry_loop(self: Arc<Self>, context: ModuleContext, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let Some(node) = context.peers() else {
                return;
            };
            // Switched off, the module leaves its outbox as it is.
            if !context.is_enabled() {
                continue;
            }
            if let Err(e) = self.expire_now(&node).await {
                tracing::warn!(error = %e, "expiring old messages failed");
            }
        }
    }
}

impl Messaging {
    /// Fails every message not delivered within `ttl_s` (the expiry task
    /// does this every minute); returns how many.
    pub async fn expire_now(&self, node: &Peers) -> Result<u64, NodeError> {
        let cutoff = node.clock().now().minus(self.settings.ttl_s);
        let reason = format!("not delivered within {} s", self.settings.ttl_s);
        let expired = self.running()?.store.expire(cutoff, &reason).await?;
        self.counters.failed.fetch_add(expired, Ordering::Relaxed);
        Ok(expired)
    }
}

async fn sleep_or_forever(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

/// A message on its way: its ID, its outbox row, its JSON.
struct Entry {
    id: MessageId,
    row: store::RowId,
    json: Vec<u8>,
}

/// The messages of one frame.
type Frame = Vec<Entry>;

/// How many outbox rows one read takes.
const READ_AHEAD: usize = 512;
/// Read ahead while fewer bytes than this wait (bodies can be 64 KiB).
const READ_AHEAD_BYTES: usize = 8 << 20;
/// Acknowledgements committed together.
const MARK_BATCH: usize = 1024;

/// The messages read from the outbox and not sent yet, in seq order.
#[derive(Default)]
struct Waiting {
    messages: std::collections::VecDeque<store::Pending>,
    bytes: usize,
    /// The highest seq read so far.
    after: u64,
    /// The last read found fewer rows than it asked for.
    drained: bool,
}

impl Waiting {
    /// Whether to read the outbox again: fewer messages wait than fill
    /// the window with full frames, and the outbox may hold more (or
    /// nothing waits: something may have been queued since).
    fn wants_more(&self, window: usize) -> bool {
        self.messages.len() < window * MAX_BATCH_MESSAGES
            && self.bytes < READ_AHEAD_BYTES
            && (!self.drained || self.messages.is_empty())
    }

    fn add(&mut self, page: Vec<store::Pending>, asked: usize) {
        self.drained = page.len() < asked;
        if let Some(last) = page.last() {
            self.after = last.seq;
        }
        self.bytes += page.iter().map(|m| m.body.len()).sum::<usize>();
        self.messages.extend(page);
    }

    /// The next frame, when `free` frames may go out: what waits is spread
    /// over them (a small burst goes out at once), at most
    /// [`MAX_BATCH_MESSAGES`] and a frame's worth of bytes each (a backlog
    /// goes in full frames).
    fn next_frame(&mut self, free: usize, budget: usize) -> Result<Option<Frame>, NodeError> {
        let per_frame = self
            .messages
            .len()
            .div_ceil(free.max(1))
            .clamp(1, MAX_BATCH_MESSAGES);
        let mut frame: Frame = Vec::new();
        let mut bytes = 0;
        while frame.len() < per_frame {
            let Some(message) = self.messages.front() else {
                break;
            };
            let json = serde_json::to_vec(&WireMessageRef {
                message_id: &message.message_id.to_string(),
                seq: message.seq,
                sent_at: message.created_at,
                content_type: &message.content_type,
                body: &message.body,
            })
            .map_err(|_| NodeError::Malformed("encoding"))?;
            if !frame.is_empty() && bytes + json.len() + 1 > budget {
                break;
            }
            bytes += json.len() + 1;
            self.bytes -= message.body.len();
            frame.push(Entry {
                id: message.message_id,
                row: message.row,
                json,
            });
            self.messages.pop_front();
        }
        Ok((!frame.is_empty()).then_some(frame))
    }
}

/// One delivery: messages in a frame of `live` (a batch), the receipt
/// back: for each message in the frame's order, delivered, or refused for
/// good with the peer's reason.
async fn send_frame(
    node: &Peers,
    live: &crate::peer::sessions::LiveSession,
    frame: &[Entry],
) -> Result<Vec<Result<(), String>>, NodeError> {
    let mut payload = b"{\"messages\":[".to_vec();
    for (i, entry) in frame.iter().enumerate() {
        if i > 0 {
            payload.push(b',');
        }
        payload.extend_from_slice(&entry.json);
    }
    payload.extend_from_slice(b"]}");
    let answer = node.exchange(live, MESSAGE_PATH, &payload).await?;
    let receipt: BatchReceipt =
        serde_json::from_slice(&answer).map_err(|_| NodeError::Malformed("the peer's receipt"))?;
    match_receipt(frame.iter().map(|entry| entry.id), receipt)
}

/// Reads a receipt for the messages `ids`: the receiver answers in the
/// frame's order, one result per message. For each, delivered, or refused
/// for good with the peer's reason; a receipt for other messages, in
/// another order, or with a refusal that gives no reason is refused whole
/// (the frame is retried).
fn match_receipt(
    ids: impl ExactSizeIterator<Item = MessageId>,
    receipt: BatchReceipt,
) -> Result<Vec<Result<(), String>>, NodeError> {
    if receipt.results.len() != ids.len() {
        return Err(NodeError::Malformed("a receipt for other messages"));
    }
    ids.zip(receipt.results)
        .map(|(id, result)| {
            if MessageId::parse(&result.message_id) != Some(id) {
                return Err(NodeError::Malformed("a receipt for other messages"));
            }
            match (result.received, result.error.as_deref()) {
                (true, _) => Ok(Ok(())),
                (
                    false,
                    Some(
                        code @ ("bad_message" | "message_too_large" | "inbox_full"
                        | "node_storage_full"),
                    ),
                ) => Ok(Err(format!(
                    "refused by the peer: {code}: {}",
                    super::printable(result.message.as_deref().unwrap_or(""), 200)
                ))),
                (false, _) => Err(NodeError::Malformed("a refusal without a reason")),
            }
        })
        .collect()
}

/// A frame of one message this node cannot seal (too large) fails that
/// message. The peer refuses a message for good only inside its receipt
/// (authenticated, see [`send_frame`]); a plain error answer to a whole
/// frame, which anyone on the path could forge, is retried.
fn refusal(e: &NodeError) -> Option<String> {
    match e {
        NodeError::Frame(openred_core::session::FrameError::TooLarge { .. }) => {
            Some("too large for a frame".into())
        }
        _ => None,
    }
}

impl Module for Messaging {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "end-to-end encrypted messages, with a durable inbox and outbox"
    }

    fn p2p_routes(self: Arc<Self>) -> axum::Router<Peers> {
        api::p2p_routes(self)
    }

    fn admin_routes(self: Arc<Self>) -> axum::Router<Peers> {
        api::admin_routes(self)
    }

    fn start(self: Arc<Self>, context: ModuleContext, stop: watch::Receiver<bool>) {
        let Some(node) = context.peers() else { return };
        let store = MessageStore::new(node.store().clone());
        let _ = self.running.set(Running {
            me: Arc::downgrade(&self),
            context: context.clone(),
            store: store.clone(),
            stop: stop.clone(),
        });
        tokio::spawn(self.clone().expiry_loop(context, stop));
        // Whatever the last run left undelivered goes out again.
        let this = self.clone();
        tokio::spawn(async move {
            match store.peers_with_pending().await {
                Ok(peers) => {
                    for peer in peers {
                        this.kick(peer, true);
                    }
                }
                Err(e) => tracing::error!(error = %e, "reading the outbox failed"),
            }
        });
    }

    fn on_session_established(&self, _peers: &Peers, peer: NodeId, _session: SessionId) {
        // A worker waiting out a back-off for this peer goes at once.
        if let Some(notify) = self
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&peer)
        {
            notify.notify_one();
        }
    }

    fn on_enabled(&self, _peers: &Peers) {
        for notify in self
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            notify.notify_one();
        }
    }

    fn mailbox(self: Arc<Self>) -> Option<Arc<dyn Mailbox>> {
        Some(self)
    }

    fn metrics(&self) -> Vec<Metric> {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            Metric::counter(
                "received_total",
                "messages stored in the inbox",
                load(&c.received),
            ),
            Metric::counter(
                "duplicates_total",
                "messages received again and dropped",
                load(&c.duplicates),
            ),
            Metric::counter(
                "over_quota_total",
                "messages refused because the inbox quota of their sender or of the node was full",
                load(&c.over_quota),
            ),
            Metric::counter(
                "delivered_total",
                "messages the peer acknowledged",
                load(&c.delivered),
            ),
            Metric::counter("failed_total", "messages given up on", load(&c.failed)),
            Metric::counter("attempts_total", "delivery attempts", load(&c.attempts)),
            Metric::gauge(
                "peer_workers",
                "peers with a delivery worker",
                self.workers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .len() as f64,
            ),
        ]
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Other modules' short notes (files' offers) go through the outbox and
/// come from the inbox like any message.
impl Mailbox for Messaging {
    fn send<'a>(
        &'a self,
        peers: &'a Peers,
        peer: NodeId,
        content_type: &'a str,
        body: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            Messaging::send(self, peers, peer, content_type, body)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }

    fn received<'a>(
        &'a self,
        content_type: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Note>, String>> {
        Box::pin(async move {
            let Some(store) = self.store() else {
                return Ok(Vec::new());
            };
            let inbox = store
                .inbox(None, limit, 0)
                .await
                .map_err(|e| e.to_string())?;
            Ok(inbox
                .into_iter()
                .filter(|m| m.content_type == content_type)
                .map(|m| Note {
                    peer: m.peer,
                    content_type: m.content_type,
                    body: m.body,
                    received_at: m.received_at,
                })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openred_core::error_code::ErrorCode;

    fn ids(n: usize) -> Vec<MessageId> {
        (0..n).map(|_| MessageId::random().unwrap()).collect()
    }

    fn receipt(results: Vec<MessageResult>) -> BatchReceipt {
        BatchReceipt { results }
    }

    #[test]
    fn a_receipt_must_answer_the_frames_messages_in_order() {
        let ids = ids(3);
        let ok = |id: &MessageId| MessageResult::received(id.to_string());
        let good = receipt(ids.iter().map(ok).collect());
        assert_eq!(
            match_receipt(ids.iter().copied(), good).unwrap(),
            vec![Ok(()), Ok(()), Ok(())]
        );
        // Swapped, short, long, or naming another message: refused whole.
        let swapped = receipt(vec![ok(&ids[1]), ok(&ids[0]), ok(&ids[2])]);
        let short = receipt(vec![ok(&ids[0]), ok(&ids[1])]);
        let long = receipt(ids.iter().chain(&ids[..1]).map(ok).collect());
        let other = receipt(vec![
            ok(&ids[0]),
            ok(&ids[1]),
            ok(&MessageId::random().unwrap()),
        ]);
        for bad in [swapped, short, long, other] {
            assert!(matches!(
                match_receipt(ids.iter().copied(), bad),
                Err(NodeError::Malformed("a receipt for other messages"))
            ));
        }
    }

    #[test]
    fn a_refusal_counts_only_with_a_known_reason() {
        let ids = ids(2);
        let refused = |code: ErrorCode| {
            let error = openred_http::ApiError::new(code, "no\u{7}pe");
            MessageResult::refused(ids[1].to_string(), &error)
        };
        let with_reason = receipt(vec![
            MessageResult::received(ids[0].to_string()),
            refused(ErrorCode::MessageTooLarge),
        ]);
        let results = match_receipt(ids.iter().copied(), with_reason).unwrap();
        assert_eq!(results[0], Ok(()));
        // The peer's text is shown without its control characters.
        assert_eq!(
            results[1],
            Err("refused by the peer: message_too_large: no\\u{7}pe".to_owned())
        );
        let unknown = receipt(vec![
            MessageResult::received(ids[0].to_string()),
            refused(ErrorCode::RateLimited),
        ]);
        assert!(matches!(
            match_receipt(ids.iter().copied(), unknown),
            Err(NodeError::Malformed("a refusal without a reason"))
        ));
    }
}
