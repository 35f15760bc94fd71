//! The node's side: [`Crypto`], every private-key operation the node
//! needs, answered by the agent process (or, with
//! `danger_in_process_crypto`, by the same code in process).
//!
//! Requests are multiplexed on the agent's socket by request ID, so many
//! can be in flight. If the agent dies, every waiting request and every new
//! one fails at once with [`CryptoError::Unavailable`] (the node fails
//! closed: no crypto without the agent), the death is logged, and a
//! supervisor asks the launcher for a new agent, retrying with back-off
//! until one answers.

use std::collections::HashMap;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use openred_core::handshake::HandshakeContext;
use openred_core::id::Fingerprint;
use openred_core::token::TokenEnvelope;
use openred_core::wire::DeregisterRequest;
use openred_core::{AgreementPublicKey, ApiUrl, IdentityPublicKey, NodeId, SignedRecord, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::oneshot;

use super::core::AgentCore;
use super::process::Launcher;
use super::proto::{self, ErrorKind, Request, Response, SessionKeys, WireContext};
use crate::agent::identity::NodeKeys;

/// How long one request may wait for the agent.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Back-off between attempts to start a new agent.
const RESTART_BACKOFF: [u64; 6] = [0, 100, 250, 500, 1000, 2000];

/// Why a crypto operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CryptoError {
    /// No agent answers (dead, restarting, or too slow).
    #[error("the crypto agent is unavailable")]
    Unavailable,
    /// The agent refused or failed the request.
    #[error("{kind:?}: {message}")]
    Failed {
        /// What kind of failure.
        kind: ErrorKind,
        /// The agent's explanation.
        message: String,
    },
    /// The agent answered something else than the request calls for.
    #[error("the crypto agent answered out of protocol")]
    Protocol,
}

/// One live agent connection.
struct Connection {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Response>>>,
}

impl Connection {
    /// Wraps `stream` and spawns its reader; `on_close` runs when the agent
    /// is gone, after every waiting request has been failed.
    fn start(
        stream: StdUnixStream,
        on_close: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<Arc<Connection>> {
        stream.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(stream)?;
        let (reader, writer) = stream.into_split();
        // Answers often arrive back to back: one read for several.
        let mut reader = tokio::io::BufReader::with_capacity(16 * 1024, reader);
        let connection = Arc::new(Connection {
            writer: tokio::sync::Mutex::new(writer),
            pending: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&connection);
        tokio::spawn(async move {
            let mut prefix = [0u8; 4];
            loop {
                if reader.read_exact(&mut prefix).await.is_err() {
                    break;
                }
                let Ok(len) = proto::body_len(prefix) else {
                    break;
                };
                let mut body = vec![0u8; len];
                if reader.read_exact(&mut body).await.is_err() {
                    break;
                }
                // An answer that does not parse fails its request (dropping
                // the sender); one without a readable ID ends the connection.
                let decoded = proto::decode::<Response>(&body);
                let id = match &decoded {
                    Ok((id, _)) => *id,
                    Err(_) => match proto::body_id(&body) {
                        Some(id) => id,
                        None => break,
                    },
                };
                let Some(connection) = weak.upgrade() else {
                    break;
                };
                let waiter = connection
                    .pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id);
                if let (Some(waiter), Ok((_, response))) = (waiter, decoded) {
                    let _ = waiter.send(response);
                }
            }
            if let Some(connection) = weak.upgrade() {
                connection
                    .pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clear();
            }
            on_close();
        });
        Ok(connection)
    }

    async fn call(&self, id: u64, request: &Request) -> Result<Response, CryptoError> {
        let frame = proto::encode(id, request).map_err(|_| CryptoError::Protocol)?;
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        let written = self.writer.lock().await.write_all(&frame).await;
        if written.is_err() {
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            return Err(CryptoError::Unavailable);
        }
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(response)) => Ok(response),
            _ => {
                self.pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id);
                Err(CryptoError::Unavailable)
            }
        }
    }
}

/// The agent process and its supervision.
struct AgentProcess {
    launcher: Launcher,
    current: RwLock<Option<Arc<Connection>>>,
    next_id: AtomicU64,
    restarts: AtomicU64,
    pid: AtomicU64,
}

impl AgentProcess {
    /// Starts a new agent through the launcher and installs it. Blocking
    /// parts run on the blocking pool.
    async fn connect(self: &Arc<Self>) -> std::io::Result<()> {
        let this = self.clone();
        let (pid, stream) = tokio::task::spawn_blocking(move || this.launcher.spawn_agent())
            .await
            .map_err(std::io::Error::other)??;
        let weak = Arc::downgrade(self);
        let connection = Connection::start(stream, move || {
            if let Some(agent) = weak.upgrade() {
                agent.died();
            }
        })?;
        self.pid.store(u64::from(pid), Ordering::Relaxed);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(connection);
        Ok(())
    }

    fn died(self: Arc<Self>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = None;
        tracing::error!(
            pid = self.pid.load(Ordering::Relaxed),
            "the crypto agent is gone; crypto fails until a new agent answers"
        );
        tokio::spawn(async move {
            for (attempt, wait) in RESTART_BACKOFF
                .iter()
                .chain(std::iter::repeat(&2000))
                .enumerate()
            {
                tokio::time::sleep(Duration::from_millis(*wait)).await;
                match self.connect().await {
                    Ok(()) => {
                        self.restarts.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            pid = self.pid.load(Ordering::Relaxed),
                            attempt,
                            "a new crypto agent is running"
                        );
                        return;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, attempt, "starting a new crypto agent failed");
                        if e.kind() == std::io::ErrorKind::UnexpectedEof
                            || e.kind() == std::io::ErrorKind::BrokenPipe
                        {
                            tracing::error!(
                                "the agent launcher is gone; no crypto until the node restarts"
                            );
                            return;
                        }
                    }
                }
            }
        });
    }

    async fn call(&self, request: &Request) -> Result<Response, CryptoError> {
        let connection = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(CryptoError::Unavailable)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        connection.call(id, request).await
    }
}

enum Backend {
    Agent(Arc<AgentProcess>),
    InProcess(Box<AgentCore>),
}

/// The node's public keys, learned from the agent at start.
#[derive(Debug, Clone, Copy)]
pub struct PublicKeys {
    /// The node's ID.
    pub node_id: NodeId,
    /// Its Ed25519 key.
    pub identity: IdentityPublicKey,
    /// Its X25519 key.
    pub agreement: AgreementPublicKey,
}

/// Every private-key operation of the node.
pub struct Crypto {
    backend: Backend,
    public: PublicKeys,
    agent_protections: String,
    /// Every call's round trip, for the metrics.
    latency: crate::metrics::Histogram,
}

/// An opened token, as far as the node sees it.
#[derive(Debug, Clone)]
pub struct OpenedToken {
    /// The other node's signed record (verified by decoding).
    pub peer_record: SignedRecord,
    /// The link key's verifying half.
    pub link_public: [u8; 32],
}

/// The initiator's half-done handshake, held by the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitiatorHandle(u64);

fn wire_context(context: &HandshakeContext) -> WireContext {
    WireContext {
        connection_id: context.connection_id,
        initiator: *context.initiator.as_bytes(),
        target: *context.target.as_bytes(),
        authority: context.authority,
        offer: context.offer.iter().map(|s| s.id()).collect(),
    }
}

async fn call(backend: &Backend, request: Request) -> Result<Response, CryptoError> {
    match backend {
        Backend::Agent(agent) => agent.call(&request).await,
        Backend::InProcess(core) => Ok(core.handle(request)),
    }
}

fn failed(response: Response) -> CryptoError {
    match response {
        Response::Error(e) => CryptoError::Failed {
            kind: e.kind,
            message: e.message,
        },
        _ => CryptoError::Protocol,
    }
}

fn signature(response: Response) -> Result<[u8; 64], CryptoError> {
    match response {
        Response::Signature(s) => s.try_into().map_err(|_| CryptoError::Protocol),
        other => Err(failed(other)),
    }
}

impl Crypto {
    /// Starts the launcher (`program agent --launcher`) and a first agent
    /// for the keys in `key_dir`, and learns the public keys.
    pub async fn start_agent(program: &Path, key_dir: &Path) -> Result<Crypto, CryptoError> {
        let launcher = super::process::Executable::open(program)
            .and_then(|program| Launcher::start(&program, key_dir, None))
            .map_err(|e| {
                tracing::error!(error = %e, "could not start the agent launcher");
                CryptoError::Unavailable
            })?;
        Crypto::with_launcher(launcher).await
    }

    /// A first agent from a launcher started earlier.
    pub async fn with_launcher(launcher: Launcher) -> Result<Crypto, CryptoError> {
        let agent = Arc::new(AgentProcess {
            launcher,
            current: RwLock::new(None),
            next_id: AtomicU64::new(1),
            restarts: AtomicU64::new(0),
            pid: AtomicU64::new(0),
        });
        agent.connect().await.map_err(|e| {
            tracing::error!(error = %e, "could not start the crypto agent");
            CryptoError::Unavailable
        })?;
        Crypto::finish_start(Backend::Agent(agent)).await
    }

    /// The same operations in this process: only for platforms without the
    /// kernel features the agent's sandbox needs (`danger_in_process_crypto`).
    /// `clock` bounds the times it signs, as the agent's own clock does.
    pub async fn in_process(
        keys: NodeKeys,
        clock: Arc<dyn openred_core::Clock>,
    ) -> Result<Crypto, CryptoError> {
        let protections = serde_json::json!({ "in_process": true }).to_string();
        Crypto::finish_start(Backend::InProcess(Box::new(AgentCore::new(
            keys,
            protections,
            super::state::SigningState::in_memory(clock),
        ))))
        .await
    }

    async fn finish_start(backend: Backend) -> Result<Crypto, CryptoError> {
        match call(&backend, Request::Status).await? {
            Response::Status {
                protections,
                identity,
                agreement,
            } => {
                let identity =
                    IdentityPublicKey::from_bytes(&identity).map_err(|_| CryptoError::Protocol)?;
                Ok(Crypto {
                    latency: crate::metrics::Histogram::default(),
                    backend,
                    public: PublicKeys {
                        node_id: identity.node_id(),
                        identity,
                        agreement: AgreementPublicKey(agreement),
                    },
                    agent_protections: protections,
                })
            }
            other => Err(failed(other)),
        }
    }

    async fn call(&self, request: Request) -> Result<Response, CryptoError> {
        let start = std::time::Instant::now();
        let answer = call(&self.backend, request).await;
        self.latency.observe(start.elapsed());
        answer
    }

    /// The round trips of the calls so far.
    pub fn latency(&self) -> &crate::metrics::Histogram {
        &self.latency
    }

    /// The node's public keys.
    pub fn public(&self) -> PublicKeys {
        self.public
    }

    /// The node's ID.
    pub fn node_id(&self) -> NodeId {
        self.public.node_id
    }

    /// Whether the agent runs as a separate process.
    pub fn is_separate_process(&self) -> bool {
        matches!(self.backend, Backend::Agent(_))
    }

    /// The agent's process ID and how many times it was restarted.
    pub fn agent_process(&self) -> Option<(u32, u64)> {
        match &self.backend {
            Backend::Agent(a) => Some((
                a.pid.load(Ordering::Relaxed) as u32,
                a.restarts.load(Ordering::Relaxed),
            )),
            Backend::InProcess(_) => None,
        }
    }

    /// Asks the agent for its status now; its protections as JSON.
    pub async fn agent_status(&self) -> Result<String, CryptoError> {
        match self.call(Request::Status).await? {
            Response::Status { protections, .. } => Ok(protections),
            other => Err(failed(other)),
        }
    }

    /// The protections the agent reported at start, as JSON.
    pub fn agent_protections(&self) -> &str {
        &self.agent_protections
    }

    /// Signs this node's record.
    pub async fn sign_record(
        &self,
        api_url: &ApiUrl,
        seq: u64,
        issued_at: UnixTime,
        expires_at: UnixTime,
    ) -> Result<SignedRecord, CryptoError> {
        let response = self
            .call(Request::SignRecord {
                api_url: api_url.to_string(),
                seq,
                issued_at: issued_at.0,
                expires_at: expires_at.0,
            })
            .await?;
        match response {
            Response::Record(bytes) => {
                let record = SignedRecord::decode(&bytes).map_err(|_| CryptoError::Protocol)?;
                // The agent must have signed what was asked, as this node.
                let r = record.record();
                if r.node_id != self.public.node_id || r.seq != seq || &r.api_url != api_url {
                    return Err(CryptoError::Protocol);
                }
                Ok(record)
            }
            other => Err(failed(other)),
        }
    }

    /// A signed deregistration of this node.
    pub async fn deregistration(
        &self,
        seq: u64,
        issued_at: UnixTime,
    ) -> Result<DeregisterRequest, CryptoError> {
        let response = self
            .call(Request::SignDeregistration {
                seq,
                issued_at: issued_at.0,
            })
            .await?;
        Ok(DeregisterRequest {
            node_id: self.public.node_id,
            seq,
            issued_at: issued_at.0,
            signature: openred_core::wire::SignatureBytes(signature(response)?),
        })
    }

    /// Signs a request to be introduced to `target`.
    pub async fn sign_connection_request(
        &self,
        target: &NodeId,
        nonce: &[u8; 16],
        issued_at: UnixTime,
    ) -> Result<[u8; 64], CryptoError> {
        signature(
            self.call(Request::SignConnectionRequest {
                target: *target.as_bytes(),
                nonce: *nonce,
                issued_at: issued_at.0,
            })
            .await?,
        )
    }

    /// Answers the directory's reachability challenge.
    pub async fn sign_reachability(
        &self,
        challenge: &[u8; 32],
        directory: &Fingerprint,
        api_url: &ApiUrl,
    ) -> Result<[u8; 64], CryptoError> {
        signature(
            self.call(Request::SignReachability {
                challenge: *challenge,
                directory: directory.to_string(),
                api_url: api_url.to_string(),
            })
            .await?,
        )
    }

    /// Opens a token envelope addressed to this node. The initiator's link
    /// key stays in the agent for [`Crypto::initiate`].
    pub async fn open_token(&self, envelope: &TokenEnvelope) -> Result<OpenedToken, CryptoError> {
        let response = self
            .call(Request::OpenToken {
                envelope: envelope.as_bytes().to_vec(),
            })
            .await?;
        match response {
            Response::Opened {
                peer_record,
                link_public,
            } => Ok(OpenedToken {
                peer_record: SignedRecord::decode(&peer_record)
                    .map_err(|_| CryptoError::Protocol)?,
                link_public,
            }),
            other => Err(failed(other)),
        }
    }

    /// Message 1 of the initiator's handshake.
    pub async fn initiate(
        &self,
        context: &HandshakeContext,
        peer_static: &[u8; 32],
    ) -> Result<(InitiatorHandle, Vec<u8>), CryptoError> {
        match self
            .call(Request::Initiate {
                context: wire_context(context),
                peer_static: *peer_static,
            })
            .await?
        {
            Response::Initiated { handle, message } => Ok((InitiatorHandle(handle), message)),
            other => Err(failed(other)),
        }
    }

    /// Finishes the initiator's handshake with message 2.
    pub async fn finish(
        &self,
        handle: InitiatorHandle,
        message: &[u8],
    ) -> Result<SessionKeys, CryptoError> {
        match self
            .call(Request::Finish {
                handle: handle.0,
                message: message.to_vec(),
            })
            .await?
        {
            Response::Finished(keys) => Ok(keys),
            other => Err(failed(other)),
        }
    }

    /// Answers message 1 as the target.
    pub async fn respond(
        &self,
        context: &HandshakeContext,
        initiator_static: &[u8; 32],
        message: &[u8],
        accepted: &[openred_core::session::Suite],
    ) -> Result<(SessionKeys, Vec<u8>), CryptoError> {
        match self
            .call(Request::Respond {
                context: wire_context(context),
                initiator_static: *initiator_static,
                message: message.to_vec(),
                accepted: accepted.iter().map(|s| s.id()).collect(),
            })
            .await?
        {
            Response::Responded { keys, message } => Ok((keys, message)),
            other => Err(failed(other)),
        }
    }

    /// The storage key for `purpose`.
    pub async fn storage_key(
        &self,
        purpose: crate::agent::master_key::Purpose,
    ) -> Result<super::proto::StorageKey, CryptoError> {
        match self.call(Request::StorageKey(purpose)).await? {
            Response::StorageKey(key) => Ok(key),
            other => Err(failed(other)),
        }
    }

    /// Signs an audit entry (see [`Request::SignAuditEntry`]).
    pub async fn sign_audit_entry(
        &self,
        seq: u64,
        entry_hash: &[u8; 32],
    ) -> Result<[u8; 64], CryptoError> {
        signature(
            self.call(Request::SignAuditEntry {
                seq,
                entry_hash: *entry_hash,
            })
            .await?,
        )
    }

    /// Answers a peer's auth challenge (see
    /// [`Request::SignAuthChallenge`]).
    pub async fn sign_auth_challenge(
        &self,
        challenger: &NodeId,
        session_id: &[u8; 16],
        challenge: &[u8; 32],
    ) -> Result<[u8; 64], CryptoError> {
        signature(
            self.call(Request::SignAuthChallenge {
                challenger: *challenger.as_bytes(),
                session_id: *session_id,
                challenge: *challenge,
            })
            .await?,
        )
    }

    /// Signs the audit log's head (see [`Request::SignAuditHead`]).
    pub async fn sign_audit_head(
        &self,
        entries: u64,
        last_line_hash: &[u8; 32],
    ) -> Result<[u8; 64], CryptoError> {
        signature(
            self.call(Request::SignAuditHead {
                entries,
                last_line_hash: *last_line_hash,
            })
            .await?,
        )
    }

    /// Test builds: asks the agent to try something its sandbox forbids.
    #[cfg(feature = "agent-probes")]
    pub async fn probe(&self, probe: super::proto::Probe) -> Result<(bool, String), CryptoError> {
        match self.call(Request::Probe(probe)).await? {
            Response::Probed { succeeded, detail } => Ok((succeeded, detail)),
            other => Err(failed(other)),
        }
    }
}
