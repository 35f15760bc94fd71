//! The admin API for the node's owner, on its own (loopback by default)
//! listener, authenticated by a bearer token kept in a 0600 file in the
//! data directory. The client subcommands (`openred --data DIR …`) find the
//! address and the token there.

use openred_core::error_code::ErrorCode;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use openred_http::ApiError;
use serde::{Deserialize, Serialize};

use crate::audit::{AuditView, Event, EventKind};
use crate::error::NodeError;
use crate::owner::login::constant_time_eq;
pub use crate::peer::{peer_id, PeerRequest};
use crate::state::NodeState;

const TOKEN_FILE: &str = "admin.token";
const ADDRESS_FILE: &str = "admin.addr";

/// The admin token file of a data directory.
pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(TOKEN_FILE)
}

/// The file where a running node writes its admin address.
pub fn address_path(data_dir: &Path) -> PathBuf {
    data_dir.join(ADDRESS_FILE)
}

/// A token is 32 random bytes in lowercase hex.
const TOKEN_HEX_LEN: usize = 64;

/// Reads the admin token, creating it (0600, 32 random bytes in hex) if
/// missing or empty. A token file that holds anything else is refused:
/// a short or empty token would open the admin API to a guess, or to a
/// request with no token at all.
pub fn load_or_create_token(data_dir: &Path) -> io::Result<String> {
    let path = token_path(data_dir);
    match OpenOptions::new().read(true).open(&path) {
        Ok(mut file) => {
            let mut text = String::new();
            file.read_to_string(&mut text)?;
            let token = text.trim();
            if token.is_empty() {
                // What a crash while the file was first written would
                // leave (the new file is written whole and renamed in now).
                return create_token(&path);
            }
            if token.len() != TOKEN_HEX_LEN || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is not an admin token (64 hex digits); delete it to make a new one",
                        path.display()
                    ),
                ));
            }
            Ok(token.to_owned())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_token(&path),
        Err(e) => Err(e),
    }
}

fn create_token(path: &Path) -> io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(io::Error::other)?;
    let token = data_encoding::HEXLOWER.encode(&bytes);
    crate::owner::login::write_private(path, token.as_bytes())?;
    Ok(token)
}

/// Records where the admin API listens, for the client subcommands. The
/// file is rewritten in place (the confined node cannot create a file to
/// rename over it), so it is left alone when it says this already: a
/// client reading it then never sees it truncated.
pub fn write_address(data_dir: &Path, address: SocketAddr) -> io::Result<()> {
    let path = address_path(data_dir);
    let text = address.to_string();
    if fs::read_to_string(&path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    fs::write(path, text)
}

/// Creates the address file if missing, so that it exists before the node
/// confines itself (it is rewritten in place once the API listens).
pub fn touch_address_file(data_dir: &Path) -> io::Result<()> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(address_path(data_dir))
        .map(|_| ())
}

/// The admin routes, behind the bearer-token check.
pub fn routes(state: Arc<NodeState>) -> Router {
    let router = Router::new();
    // Test builds only: lets a test see the node's confinement from inside.
    #[cfg(feature = "agent-probes")]
    let router = router.route("/admin/v1/probe", post(probe));
    router
        .route("/admin/v1/status", get(status))
        .route("/admin/v1/peers", get(peers))
        .route("/admin/v1/connect", post(connect))
        .route("/admin/v1/ping", post(ping))
        .route("/admin/v1/renew", post(renew))
        .route("/admin/v1/modules", get(modules))
        .route("/admin/v1/modules/{name}/{action}", post(switch_module))
        .route("/admin/v1/audit", get(audit))
        .route("/admin/v1/login/unlock", post(unlock))
        .merge(state.modules.admin_router(&state.peer))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        // A login and a logout need no session: they are how one gets and
        // ends one.
        .route("/admin/v1/login", post(login))
        .route("/admin/v1/logout", post(logout))
        .route("/admin/v1/openapi.json", get(openapi))
        .layer(axum::middleware::from_fn(local_host_only))
        .with_state(state)
}

/// Refuses a request whose `Host` is a name other than `localhost`: the
/// admin API is reached at an address (the CLI uses the one in
/// `admin.addr`), and a page whose domain was rebound to 127.0.0.1 (DNS
/// rebinding) sends its own name, so it cannot reach the API, guess logins
/// or lock the owner out.
async fn local_host_only(request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    if host.is_some_and(|h| !is_local_host(h)) {
        return axum::response::IntoResponse::into_response(ApiError::new(
            ErrorCode::BadHost,
            "the admin API answers only requests addressed to an IP address or localhost",
        ));
    }
    next.run(request).await
}

/// Whether a `Host` header names an IP address or `localhost` (with or
/// without a port).
fn is_local_host(host: &str) -> bool {
    if host.parse::<SocketAddr>().is_ok() || host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = host
        .rsplit_once(':')
        .filter(|(_, port)| port.parse::<u16>().is_ok())
        .map_or(host, |(name, _)| name);
    let name = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// `POST /admin/v1/login`: password + TOTP code, answered with a session
/// cookie (see [`crate::owner::login`]).
async fn login(
    State(state): State<Arc<NodeState>>,
    body: Result<Json<crate::owner::login::LoginRequest>, JsonRejection>,
) -> Result<(axum::http::HeaderMap, Json<crate::owner::login::LoginView>), ApiError> {
    let Json(request) = body?;
    // In a task of its own: a client that hangs up must not cancel a check
    // half-way (the failure would go unrecorded and the one-at-a-time lock
    // be released while the password hash still runs).
    let task = tokio::spawn(async move { state.owner_login.login(&state, request).await });
    let (headers, view) = task
        .await
        .map_err(|e| ApiError::internal("login task", e))??;
    Ok((headers, Json(view)))
}

/// `GET /admin/v1/openapi.json`: this API's document, without
/// authentication (see [`crate::owner::openapi`]).
async fn openapi() -> ([(header::HeaderName, &'static str); 1], &'static str) {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::owner::openapi::json(),
    )
}

/// `POST /admin/v1/logout`: ends the cookie's session.
async fn logout(
    State(state): State<Arc<NodeState>>,
    headers: axum::http::HeaderMap,
) -> (axum::http::HeaderMap, Json<serde_json::Value>) {
    (
        state.owner_login.logout(&headers),
        Json(serde_json::json!({ "logged_out": true })),
    )
}

/// How a request to the admin API was authenticated (a request extension
/// set by `authenticate`, for the routes that care).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminCredential {
    /// The bearer token of `DATA/admin.token`: whoever holds it can read
    /// the node's files, so it may do everything.
    BearerToken,
    /// A login session cookie (password + TOTP): day-to-day use, but no
    /// credential operation (see `docs/AUTH.md`).
    LoginCookie,
}

/// Refuses a credential operation to a cookie session: a stolen or
/// left-open browser session must not be able to keep itself alive or
/// open the way for more guesses.
fn require_bearer(credential: AdminCredential, what: &str) -> Result<(), ApiError> {
    match credential {
        AdminCredential::BearerToken => Ok(()),
        AdminCredential::LoginCookie => Err(ApiError::new(
            ErrorCode::BearerTokenRequired,
            format!("{what} needs the admin bearer token; a login session may not do it"),
        )),
    }
}

/// `POST /admin/v1/login/unlock`: lifts a login lock-out (bearer token
/// only: the lock-out protects the password, so a cookie session must not
/// lift it for more guesses).
async fn unlock(
    State(state): State<Arc<NodeState>>,
    axum::Extension(credential): axum::Extension<AdminCredential>,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_bearer(credential, "lifting a login lock-out")?;
    state.owner_login.unlock(&state).await?;
    Ok(Json(serde_json::json!({ "unlocked": true })))
}

async fn authenticate(
    State(state): State<Arc<NodeState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let bearer_ok = !presented.is_empty()
        && constant_time_eq(presented.as_bytes(), state.admin_token.as_bytes());
    let session_ok = !bearer_ok
        && state
            .owner_login
            .session_valid(&state, request.headers(), state.clock.now());
    if session_ok
        && !crate::owner::login::cookie_request_allowed(request.method(), request.headers())
    {
        return axum::response::IntoResponse::into_response(ApiError::new(
            ErrorCode::MissingRequestHeader,
            format!(
                "a request that changes something and is authenticated by the login cookie \
                 needs the header {}: 1",
                crate::owner::login::REQUEST_HEADER
            ),
        ));
    }
    if !bearer_ok && !session_ok {
        // Not awaited: an unauthenticated caller must not hold the API up.
        // Password logins record `admin_login` in `owner::login`.
        let reason = if !presented.is_empty() {
            "bad_token"
        } else if state.owner_login.has_cookie(request.headers()) {
            "bad_session"
        } else {
            "no_token"
        };
        // Counted, not an entry each: whoever can reach the listener could
        // otherwise grow the log by a line per request.
        state
            .audit
            .count_unauthenticated(EventKind::AdminLogin, reason);
        return axum::response::IntoResponse::into_response(ApiError::new(
            ErrorCode::Unauthorized,
            "a valid admin bearer token or login session is required",
        ));
    }
    request.extensions_mut().insert(if bearer_ok {
        AdminCredential::BearerToken
    } else {
        AdminCredential::LoginCookie
    });
    next.run(request).await
}

/// One session, as `status` shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct SessionView {
    /// The peer.
    pub peer: String,
    /// The session ID.
    pub session_id: String,
    /// `initiator` or `responder`.
    pub role: String,
    /// The negotiated suite.
    pub suite: String,
    /// Seconds since the handshake.
    pub age_s: u64,
    /// The sender's epoch.
    pub send_epoch: u32,
    /// The receiver's epoch.
    pub recv_epoch: u32,
    /// Whether the peer's first frame arrived (responder side).
    pub confirmed: bool,
    /// Seconds since the last authenticated frame either way.
    pub last_contact_s: u64,
    /// The last ping's round trip in milliseconds (the monitoring module
    /// pings every peer periodically; `openred ping` too).
    pub rtt_ms: Option<f64>,
}

/// `GET /admin/v1/status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatusView {
    /// This node.
    pub node_id: String,
    /// Its public URL.
    pub public_url: String,
    /// The directory's URL.
    pub directory: String,
    /// The pinned directory fingerprint, if pinned yet.
    pub directory_key: Option<String>,
    /// Whether the last registration succeeded.
    pub registered: bool,
    /// Live sessions.
    pub sessions: Vec<SessionView>,
    /// The node's and the agent's protections.
    pub protections: ProtectionsView,
    /// The modules, their state and metrics.
    pub modules: Vec<crate::modules::ModuleView>,
    /// The last readiness checks, with their errors (`None` before the
    /// first).
    #[serde(default)]
    pub readiness: Option<crate::health::Readiness>,
}

/// What protects the keys, as `status` shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProtectionsView {
    /// `process` (the sandboxed agent) or `in-process (danger)`.
    pub agent_mode: String,
    /// The agent's process ID and restarts, when it is a process.
    pub agent_pid: Option<u32>,
    /// How many times the agent was restarted.
    pub agent_restarts: u64,
    /// What the agent applied to itself (None: it does not answer now).
    pub agent: Option<serde_json::Value>,
    /// What the node process applied to itself (None: it did not confine
    /// itself, e.g. nodes inside `openred demo`).
    pub node: Option<crate::agent::sandbox::Protections>,
}

async fn status(State(state): State<Arc<NodeState>>) -> Json<StatusView> {
    let agent = state
        .crypto
        .agent_status()
        .await
        .ok()
        .and_then(|json| serde_json::from_str(&json).ok());
    let process = state.crypto.agent_process();
    let protections = ProtectionsView {
        agent_mode: if state.crypto.is_separate_process() {
            "process".into()
        } else {
            "in-process (danger)".into()
        },
        agent_pid: process.map(|(pid, _)| pid),
        agent_restarts: process.map(|(_, r)| r).unwrap_or(0),
        agent,
        node: state.confinement.get().cloned(),
    };
    let now = state.clock.now();
    let sessions = state
        .sessions
        .all()
        .iter()
        .map(|s| SessionView {
            peer: s.peer.to_string(),
            session_id: s.id().to_string(),
            role: format!("{:?}", s.role()).to_lowercase(),
            suite: s.session.suite().to_string(),
            age_s: now.0.saturating_sub(s.established_at.0),
            send_epoch: s.session.send_epoch(),
            recv_epoch: s.session.recv_epoch(),
            confirmed: s.confirmed.load(Ordering::Relaxed),
            last_contact_s: now
                .0
                .saturating_sub(s.last_activity.load(Ordering::Relaxed)),
            rtt_ms: match s.rtt_us.load(Ordering::Relaxed) {
                0 => None,
                us => Some(us as f64 / 1e3),
            },
        })
        .collect();
    Json(StatusView {
        node_id: state.crypto.node_id().to_string(),
        public_url: state.config.public_url.to_string(),
        directory: state.config.directory_url.to_string(),
        directory_key: state
            .directory
            .pinned()
            .map(|k| k.directory_fingerprint().to_string()),
        registered: state.registered.load(Ordering::SeqCst),
        sessions,
        protections,
        modules: state.modules.views(),
        readiness: state.readiness(),
    })
}

/// One peer, as `peers` shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct PeerView {
    /// The peer's ID.
    pub node_id: String,
    /// Its API URL.
    pub api_url: String,
    /// `active` or `inactive`.
    pub status: String,
    /// Its record's seq (the highest seen).
    pub seq: Option<u64>,
    /// Whether its record verified (and was not older than one seen).
    pub verified: bool,
    /// Why not, if not.
    pub problem: Option<String>,
}

async fn peers(State(state): State<Arc<NodeState>>) -> Result<Json<Vec<PeerView>>, ApiError> {
    let now = state.clock.now();
    let entries = state
        .directory
        .discover(&state.outbound, &state.store, now)
        .await
        .map_err(|e| e.to_api())?;
    let me = state.crypto.node_id();
    Ok(Json(
        entries
            .into_iter()
            .filter(|(entry, _)| entry.node_id != me)
            .map(|(entry, checked)| PeerView {
                node_id: entry.node_id.to_string(),
                api_url: entry.api_url,
                status: format!("{:?}", entry.status).to_lowercase(),
                seq: checked.as_ref().ok().map(|r| r.record().seq),
                verified: checked.is_ok(),
                problem: checked.err().map(|e| e.to_string()),
            })
            .collect(),
    ))
}

/// The answer to `connect`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConnectView {
    /// The peer.
    pub node_id: String,
    /// The new session.
    pub session_id: String,
    /// From the introduction request to the confirmed session.
    pub elapsed_ms: f64,
}

async fn connect(
    State(state): State<Arc<NodeState>>,
    body: Result<Json<PeerRequest>, JsonRejection>,
) -> Result<Json<ConnectView>, ApiError> {
    let peer = peer_id(body)?;
    if peer == state.crypto.node_id() {
        return Err(ApiError::new(
            ErrorCode::ToSelf,
            "a node cannot connect to itself",
        ));
    }
    let connected = state.connect(peer).await.map_err(|e| e.to_api())?;
    Ok(Json(ConnectView {
        node_id: connected.peer.to_string(),
        session_id: connected.session_id.to_string(),
        elapsed_ms: connected.elapsed.as_secs_f64() * 1000.0,
    }))
}

/// The answer to `ping`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PingView {
    /// The peer.
    pub node_id: String,
    /// The encrypted round trip.
    pub rtt_ms: f64,
}

async fn ping(
    State(state): State<Arc<NodeState>>,
    body: Result<Json<PeerRequest>, JsonRejection>,
) -> Result<Json<PingView>, ApiError> {
    let peer = peer_id(body)?;
    let rtt = state.ping(&peer).await.map_err(|e| e.to_api())?;
    Ok(Json(PingView {
        node_id: peer.to_string(),
        rtt_ms: rtt.as_secs_f64() * 1000.0,
    }))
}

async fn modules(State(state): State<Arc<NodeState>>) -> Json<Vec<crate::modules::ModuleView>> {
    Json(state.modules.views())
}

/// `POST /admin/v1/modules/{name}/enable|disable`: the module's state
/// after the switch.
async fn switch_module(
    State(state): State<Arc<NodeState>>,
    axum::extract::Path((name, action)): axum::extract::Path<(String, String)>,
) -> Result<Json<crate::modules::ModuleView>, ApiError> {
    let on = match action.as_str() {
        "enable" => true,
        "disable" => false,
        _ => {
            return Err(ApiError::new(
                ErrorCode::UnknownAction,
                "the action is enable or disable",
            ))
        }
    };
    let was_on = state
        .modules
        .set_enabled(&name, on)
        .map_err(|e| ApiError::new(ErrorCode::UnknownModule, e.to_string()))?;
    // The owner's action is answered only once it is in the audit log.
    let kind = if on {
        EventKind::ModuleEnabled
    } else {
        EventKind::ModuleDisabled
    };
    state
        .audit
        .record_awaited(Event::ok(kind).reason(&name).detail("was_enabled", was_on))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, module = %name, "a module switch could not be audited");
            ApiError::new(
                ErrorCode::AuditUnavailable,
                "the module was switched, but the audit log could not record it",
            )
        })?;
    state
        .modules
        .views()
        .into_iter()
        .find(|m| m.name == name)
        .map(Json)
        .ok_or_else(|| ApiError::new(ErrorCode::UnknownModule, "no such module"))
}

/// The query of `GET /admin/v1/audit`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Entries from this time on (Unix seconds); all by default.
    pub since: Option<u64>,
    /// The last this many of them at most (default 1000, at most 10,000).
    pub limit: Option<usize>,
}

pub use crate::audit::MAX_AUDIT_ENTRIES;

/// `GET /admin/v1/audit?since=UNIX_S&limit=N`: the log's entries with
/// their sealed details opened, for the owner. Written entries only: what
/// was recorded before the request is flushed first.
async fn audit(
    State(state): State<Arc<NodeState>>,
    query: Result<axum::extract::Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditView>, ApiError> {
    let axum::extract::Query(query) =
        query.map_err(|e| ApiError::new(ErrorCode::BadQuery, e.body_text()))?;
    let limit = query.limit.unwrap_or(1000);
    if limit == 0 || limit > MAX_AUDIT_ENTRIES {
        return Err(ApiError::new(
            ErrorCode::BadLimit,
            format!("limit is between 1 and {MAX_AUDIT_ENTRIES}"),
        ));
    }
    let unavailable = |e: crate::audit::AuditError| {
        tracing::error!(error = %e, "reading the audit log failed");
        ApiError::new(
            ErrorCode::AuditUnavailable,
            "the audit log cannot be read now",
        )
    };
    state.audit.flush().await.map_err(unavailable)?;
    let view = state
        .audit
        .read(query.since.unwrap_or(0), limit)
        .await
        .map_err(unavailable)?;
    Ok(Json(view))
}

/// The answer to `renew`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RenewView {
    /// The peer.
    pub node_id: String,
    /// The session that authorised the renewal.
    pub previous_session_id: String,
    /// The new session, now used to reach the peer.
    pub session_id: String,
    /// The renewal's duration: handshake and first frame.
    pub elapsed_ms: f64,
}

/// Renews the session with a peer now, without the directory, as the
/// lifecycle does before a session's maximum age.
async fn renew(
    State(state): State<Arc<NodeState>>,
    body: Result<Json<PeerRequest>, JsonRejection>,
) -> Result<Json<RenewView>, ApiError> {
    let peer = peer_id(body)?;
    let live = state
        .sessions
        .with_peer(&peer)
        .ok_or_else(|| NodeError::NoSession(peer.to_string()).to_api())?;
    let started = std::time::Instant::now();
    let renewed = state.renew(&live).await.map_err(|e| e.to_api())?;
    Ok(Json(RenewView {
        node_id: peer.to_string(),
        previous_session_id: live.id().to_string(),
        session_id: renewed.id().to_string(),
        elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
    }))
}

/// What a test asks the node process to try (test builds only).
#[cfg(feature = "agent-probes")]
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeProbe {
    /// Read this file.
    ReadFile(String),
    /// Open the agent's memory through /proc (a ptrace access check).
    AgentMemory,
}

#[cfg(feature = "agent-probes")]
async fn probe(
    State(state): State<Arc<NodeState>>,
    Json(probe): Json<NodeProbe>,
) -> Json<serde_json::Value> {
    let outcome = match probe {
        NodeProbe::ReadFile(path) => fs::read(&path).map(|_| ()),
        NodeProbe::AgentMemory => match state.crypto.agent_process() {
            Some((pid, _)) => fs::File::open(format!("/proc/{pid}/mem")).map(|_| ()),
            None => Err(io::Error::other("no agent process")),
        },
    };
    Json(serde_json::json!({
        "succeeded": outcome.is_ok(),
        "detail": outcome.err().map(|e| e.to_string()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_token_file_is_replaced_and_a_malformed_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let made = load_or_create_token(dir.path()).unwrap();
        assert_eq!(made.len(), TOKEN_HEX_LEN);
        assert_eq!(load_or_create_token(dir.path()).unwrap(), made);
        // What a crash during the first write would leave: an empty token
        // would let a request without any token in.
        fs::write(token_path(dir.path()), "").unwrap();
        let remade = load_or_create_token(dir.path()).unwrap();
        assert_eq!(remade.len(), TOKEN_HEX_LEN);
        assert_ne!(remade, made);
        fs::write(token_path(dir.path()), "abc").unwrap();
        assert!(load_or_create_token(dir.path()).is_err());
    }

    #[test]
    fn only_addresses_and_localhost_are_local_hosts() {
        for host in [
            "127.0.0.1:7801",
            "127.0.0.1",
            "[::1]:7801",
            "::1",
            "[::1]",
            "localhost",
            "LOCALHOST:80",
            "10.1.2.3:9",
        ] {
            assert!(is_local_host(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:7801",
            "localhost.evil.example",
            "",
            "127.0.0.1.evil",
        ] {
            assert!(!is_local_host(host), "{host}");
        }
    }
}
