//! The owner's login to the admin API: a password (an Argon2id hash) plus
//! a TOTP code (RFC 6238), giving an expiring session cookie. The bearer
//! token file keeps working beside it, for the CLI.
//!
//! - The credentials live in `DATA/owner/` (0700; files 0600), written by
//!   `openred --data DIR admin set-password` and `admin totp-enroll`
//!   whether or not the node runs: the node reads them at each login. A
//!   folder of its own because the confined node can only open files
//!   created after it started inside folders that existed before (see
//!   `sandbox::confine_node`).
//! - One login attempt is checked at a time, so that parallel guesses
//!   cannot slip past the back-off. After [`BACKOFF_AFTER`] failures in a
//!   row each attempt must wait (1 s, doubling, at most
//!   [`MAX_BACKOFF_S`]); after [`LOCKOUT_AFTER`] the login is locked for
//!   [`LOCKOUT_S`] (the bearer token still works, and `admin unlock`
//!   lifts it). Attempts refused this way are not checked at all. The
//!   count is kept in the database: a restart does not reset it.
//! - A TOTP code is good for its 30 s step and the steps either side (the
//!   clocks of a phone and a server drift). The last step used is stored
//!   before the login is answered, and a code of that step or an earlier
//!   one is refused: a code cannot be used twice.
//! - A session is 32 random bytes in an `HttpOnly; SameSite=Strict`
//!   cookie; the node keeps only their BLAKE3 hashes, in memory (a restart
//!   logs everyone out). Logout forgets it at once.
//! - Every login that was checked, good or bad, goes into the audit log
//!   (`admin_login`) with its reason; attempts refused before any check
//!   are counted in the log's `unauthenticated_failures` entries. The
//!   answer to a failed login does not say which factor was wrong.

use openred_core::error_code::ErrorCode;
use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::http::{header, HeaderMap, HeaderValue};
use openred_core::UnixTime;
use openred_http::ApiError;
use serde::{Deserialize, Serialize};
use totp_rs::{Algorithm, TOTP};
use zeroize::Zeroizing;

use crate::audit::{Event, EventKind};
use crate::peer::PeerLayer;

/// The session cookie's name.
pub const COOKIE: &str = "openred_admin";
/// How long a login lasts.
pub const SESSION_TTL_S: u64 = 3600;
/// At most this many sessions; the oldest go first.
const MAX_SESSIONS: usize = 64;
/// Failures in a row before each attempt must wait.
pub const BACKOFF_AFTER: u32 = 3;
/// The longest wait between two attempts before the lock-out.
pub const MAX_BACKOFF_S: u64 = 60;
/// Failures in a row that lock the login.
pub const LOCKOUT_AFTER: u32 = 10;
/// How long a lock-out lasts.
pub const LOCKOUT_S: u64 = 900;
/// The shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// The longest password accepted (Argon2 takes any length; this bounds the
/// work a request can ask for).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// TOTP parameters: those every authenticator app expects.
const TOTP_DIGITS: usize = 6;
const TOTP_STEP_S: u64 = 30;
const TOTP_SECRET_BYTES: usize = 20;

const FAILURES_SETTING: &str = "owner.login_failures";
const TOTP_STEP_SETTING: &str = "owner.totp_last_step";

/// The folder of the owner's credentials.
pub fn owner_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("owner")
}

fn password_path(data_dir: &Path) -> PathBuf {
    owner_dir(data_dir).join("password")
}

fn totp_path(data_dir: &Path) -> PathBuf {
    owner_dir(data_dir).join("totp")
}

/// Creates `DATA/owner` (0700) if missing.
pub fn prepare_dir(data_dir: &Path) -> io::Result<()> {
    let dir = owner_dir(data_dir);
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
    }
    Ok(())
}

/// Writes `contents` to `path` (0600) through a temporary file and a
/// rename, so a reader sees the old file or the new one, never half.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Why a credential was not set.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The password is too short or too long.
    #[error("{0}")]
    Password(String),
    /// Writing the file failed.
    #[error("writing the owner's credentials: {0}")]
    Io(#[from] io::Error),
    /// Hashing failed.
    #[error("hashing the password: {0}")]
    Hash(String),
}

/// Sets the owner's password: stores its Argon2id hash (the crate's
/// defaults: 19 MiB, 2 passes, one lane, a random 128-bit salt) in the
/// PHC string format.
pub fn set_password(data_dir: &Path, password: &str) -> Result<(), CredentialError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(CredentialError::Password(format!(
            "a password has at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(CredentialError::Password(format!(
            "a password has at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| CredentialError::Hash(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| CredentialError::Hash(e.to_string()))?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| CredentialError::Hash(e.to_string()))?
        .to_string();
    prepare_dir(data_dir)?;
    write_private(&password_path(data_dir), hash.as_bytes())?;
    Ok(())
}

/// A new TOTP secret, as an authenticator app takes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enrollment {
    /// The secret in base32 (for typing in by hand).
    pub secret: String,
    /// The `otpauth://totp/…` URI (what the QR code holds).
    pub uri: String,
}

fn totp(secret: Vec<u8>) -> Result<TOTP, String> {
    TOTP::new(Algorithm::SHA1, TOTP_DIGITS, 0, TOTP_STEP_S, secret).map_err(|e| e.to_string())
}

/// Makes and stores a new TOTP secret (160 random bits, SHA-1, 6 digits,
/// 30 s: RFC 6238's parameters, which every authenticator app supports).
/// It replaces the old one at once. `account` names the node in the app.
pub fn enroll_totp(data_dir: &Path, account: &str) -> Result<Enrollment, CredentialError> {
    let mut secret = Zeroizing::new(vec![0u8; TOTP_SECRET_BYTES]);
    getrandom::fill(&mut secret).map_err(|e| CredentialError::Hash(e.to_string()))?;
    let encoded = Zeroizing::new(data_encoding::BASE32_NOPAD.encode(&secret));
    prepare_dir(data_dir)?;
    write_private(&totp_path(data_dir), encoded.as_bytes())?;
    let label = percent_encode(&format!("OpenRed:{account}"));
    Ok(Enrollment {
        secret: encoded.to_string(),
        uri: format!(
            "otpauth://totp/{label}?secret={}&issuer=OpenRed&algorithm=SHA1&digits={TOTP_DIGITS}&period={TOTP_STEP_S}",
            encoded.as_str()
        ),
    })
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The TOTP code of the owner's secret at `time`, as an authenticator app
/// would show it (for tests and scripts that hold the secret).
pub fn totp_code(secret_base32: &str, time: u64) -> Result<String, String> {
    let secret = data_encoding::BASE32_NOPAD
        .decode(secret_base32.trim().as_bytes())
        .map_err(|e| e.to_string())?;
    Ok(totp(secret)?.generate(time))
}

/// The failures in a row, as stored.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Failures {
    count: u32,
    last_at: u64,
    locked_until: u64,
}

impl Failures {
    /// Seconds to wait before the next attempt, if it must wait.
    fn wait(&self, now: UnixTime) -> Option<(u64, &'static str)> {
        if self.locked_until > now.0 {
            return Some((self.locked_until - now.0, "locked_out"));
        }
        if self.count >= BACKOFF_AFTER && self.count < LOCKOUT_AFTER {
            let shift = (self.count - BACKOFF_AFTER).min(16);
            let delay = (1u64 << shift).min(MAX_BACKOFF_S);
            let ready = self.last_at.saturating_add(delay);
            if ready > now.0 {
                return Some((ready - now.0, "backoff"));
            }
        }
        None
    }
}

/// A login request.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LoginRequest {
    /// The owner's password.
    pub password: String,
    /// The current TOTP code.
    pub totp: String,
}

/// The answer to a login.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginView {
    /// When the session ends (Unix seconds).
    pub expires_at: u64,
}

/// The header a request authenticated by the login cookie must carry when
/// it is not a `GET` or `HEAD`. A page of another origin cannot add a
/// custom header without a CORS preflight, which the admin API never
/// grants; a plain HTML form cannot add one at all. `SameSite=Strict`
/// alone is not enough: browsers treat every port of a host as the same
/// site, so a page served by another program on this host could post a
/// form with the owner's cookie.
pub const REQUEST_HEADER: &str = "x-openred-request";

/// Whether a request authenticated by the login cookie may go on (see
/// [`REQUEST_HEADER`]).
pub fn cookie_request_allowed(method: &axum::http::Method, headers: &HeaderMap) -> bool {
    matches!(*method, axum::http::Method::GET | axum::http::Method::HEAD)
        || headers.contains_key(REQUEST_HEADER)
}

/// The session cookie's name for the node `node_id`: cookies are shared by
/// every port of a host, so two nodes on one machine need two names.
pub fn cookie_name(node_id: &openred_core::NodeId) -> String {
    format!("{COOKIE}_{}", &node_id.to_string()[..12])
}

struct Session {
    expires_at: UnixTime,
    /// Of the credentials the login checked: a new password or TOTP secret
    /// ends every session opened with the old ones.
    credentials: [u8; 32],
}

/// The owner's sessions and the login's one-at-a-time gate.
pub struct OwnerLogin {
    cookie: String,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    gate: tokio::sync::Mutex<()>,
}

/// The values of every cookie `name` in `headers` (a browser may send
/// several of one name, from other paths).
fn cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value)
        })
}

fn session_key(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
}

fn login_failed() -> ApiError {
    ApiError::new(ErrorCode::LoginFailed, "wrong password or code")
}

/// The owner's credentials as stored: the password's PHC string and the
/// TOTP secret, and a hash of both.
struct Credentials {
    hash: String,
    secret: Zeroizing<String>,
    fingerprint: [u8; 32],
}

fn fingerprint(hash: &[u8], secret: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key("openred v1 owner credentials");
    hasher.update(&(hash.len() as u64).to_be_bytes());
    hasher.update(hash);
    hasher.update(secret);
    *hasher.finalize().as_bytes()
}

/// Reads the credentials; `None` if either file is missing or unreadable.
fn read_credentials(data_dir: &Path) -> Option<Credentials> {
    let hash = fs::read_to_string(password_path(data_dir)).ok()?;
    let secret = Zeroizing::new(fs::read_to_string(totp_path(data_dir)).ok()?);
    let fingerprint = fingerprint(hash.as_bytes(), secret.as_bytes());
    Some(Credentials {
        hash,
        secret,
        fingerprint,
    })
}

fn storage(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal("node storage", e)
}

impl OwnerLogin {
    /// The login of the node `node_id` (which names its cookie).
    pub fn new(node_id: &openred_core::NodeId) -> OwnerLogin {
        OwnerLogin {
            cookie: cookie_name(node_id),
            sessions: Mutex::new(HashMap::new()),
            gate: tokio::sync::Mutex::new(()),
        }
    }

    /// A `Set-Cookie` value.
    fn set_cookie(&self, value: &str, max_age: u64) -> HeaderValue {
        HeaderValue::from_str(&format!(
            "{}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict",
            self.cookie
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("openred_admin=; Max-Age=0"))
    }

    /// Whether `headers` carry the cookie of a live session opened with the
    /// credentials stored now.
    pub fn session_valid(&self, state: &PeerLayer, headers: &HeaderMap, now: UnixTime) -> bool {
        let keys: Vec<[u8; 32]> = cookies(headers, &self.cookie).map(session_key).collect();
        if keys.is_empty() {
            return false;
        }
        let current = read_credentials(state.data_dir()).map(|c| c.fingerprint);
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.retain(|_, s| s.expires_at > now && Some(s.credentials) == current);
        keys.iter().any(|key| sessions.contains_key(key))
    }

    /// Whether `headers` carry a session cookie of this node at all.
    pub fn has_cookie(&self, headers: &HeaderMap) -> bool {
        cookies(headers, &self.cookie).next().is_some()
    }

    async fn failures(state: &PeerLayer, now: UnixTime) -> Result<Failures, ApiError> {
        let stored = state
            .store()
            .setting(FAILURES_SETTING)
            .await
            .map_err(storage)?;
        Ok(match stored {
            None => Failures::default(),
            Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                // Fail closed: a record that does not parse locks the login
                // (the bearer token's `admin unlock` rewrites it).
                tracing::error!(error = %e, "the login failure record does not parse; locking the login");
                Failures {
                    count: LOCKOUT_AFTER,
                    last_at: now.0,
                    locked_until: now.0 + LOCKOUT_S,
                }
            }),
        })
    }

    async fn save_failures(state: &PeerLayer, failures: &Failures) -> Result<(), ApiError> {
        let bytes = serde_json::to_vec(failures).map_err(|e| ApiError::internal("json", e))?;
        state
            .store()
            .set_setting(FAILURES_SETTING, &bytes)
            .await
            .map_err(storage)
    }

    async fn last_step(state: &PeerLayer) -> Result<Option<u64>, ApiError> {
        let stored = state
            .store()
            .setting(TOTP_STEP_SETTING)
            .await
            .map_err(storage)?;
        Ok(stored
            .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
            .map(u64::from_be_bytes))
    }

    /// `POST /admin/v1/login`: checks the password and the code, and
    /// answers a session cookie. Run it to its end (the admin route runs
    /// it in a task of its own): a check cut short would record nothing.
    pub async fn login(
        &self,
        state: &PeerLayer,
        request: LoginRequest,
    ) -> Result<(HeaderMap, LoginView), ApiError> {
        let _one_at_a_time = self.gate.lock().await;
        let now = state.clock().now();
        // Attempts refused before the credentials are checked (too early,
        // malformed, nothing set up) cost the caller nothing, so they are
        // counted, not an entry each; checked failures (`bad_password`,
        // `bad_code`, `code_reused`) are paced by the back-off and each
        // get an entry.
        let audit = |reason: &'static str| {
            state
                .audit()
                .count_unauthenticated(EventKind::AdminLogin, reason);
        };
        let mut failures = Self::failures(state, now).await?;
        if let Some((retry_after, reason)) = failures.wait(now) {
            audit(reason);
            let code = if reason == "locked_out" {
                ErrorCode::LoginLocked
            } else {
                ErrorCode::LoginBackoff
            };
            return Err(ApiError::new(
                code,
                format!("too many failed logins; try again in {retry_after} s"),
            )
            .with_retry_after(retry_after));
        }
        if request.password.len() > MAX_PASSWORD_BYTES || request.totp.len() > 64 {
            audit("bad_request");
            return Err(ApiError::new(
                ErrorCode::BadLogin,
                format!("a password has at most {MAX_PASSWORD_BYTES} bytes, a code 6 digits"),
            ));
        }
        let not_set_up = |reason: &'static str, message: &str| {
            audit(reason);
            ApiError::new(
                ErrorCode::LoginNotSetUp,
                format!(
                    "{message}: `openred --data DIR admin set-password` and `admin totp-enroll`"
                ),
            )
        };
        let Some(credentials) = read_credentials(state.data_dir()) else {
            return Err(not_set_up(
                "not_set_up",
                "set a password and a TOTP secret first",
            ));
        };
        // Stored credentials that do not parse are the owner's problem to
        // fix, not a failed guess: they are not counted.
        let Ok(hash) = PasswordHash::new(credentials.hash.trim()).map(|h| h.serialize()) else {
            return Err(not_set_up(
                "credentials_unreadable",
                "the stored password hash does not parse; set it again",
            ));
        };
        let Some(totp) = stored_totp(&credentials.secret) else {
            return Err(not_set_up(
                "credentials_unreadable",
                "the stored TOTP secret does not parse; enroll again",
            ));
        };
        let current_step = now.0 / TOTP_STEP_S;
        let last_step = Self::last_step(state).await?;
        if last_step.is_some_and(|last| last > current_step + 1) {
            // The node's clock went back past the last login: every code
            // would look reused. Not the owner's failure.
            audit("clock_behind");
            return Err(ApiError::new(
                ErrorCode::ClockBehind,
                "the node's clock is behind the last login's; fix the clock, or run \
                 `openred --data DIR admin unlock`",
            ));
        }
        let password = Zeroizing::new(request.password);
        let password_ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(hash.as_str()).is_ok_and(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
        })
        .await
        .map_err(|e| ApiError::internal("password check", e))?;
        let step = matching_step(&totp, request.totp.trim(), now.0);
        let reason = match (password_ok, step) {
            (false, _) => Some("bad_password"),
            (true, None) => Some("bad_code"),
            (true, Some(step)) if last_step.is_some_and(|last| step <= last) => Some("code_reused"),
            (true, Some(_)) => None,
        };
        if let Some(reason) = reason {
            failures.count = failures.count.saturating_add(1);
            failures.last_at = now.0;
            if failures.count >= LOCKOUT_AFTER {
                failures.locked_until = now.0 + LOCKOUT_S;
            }
            Self::save_failures(state, &failures).await?;
            state
                .audit()
                .record(Event::failed(EventKind::AdminLogin).reason(reason));
            return Err(login_failed());
        }
        let step = step.unwrap_or_default();
        // Persist, then answer: the code is spent before it opens a
        // session.
        state
            .store()
            .set_setting(TOTP_STEP_SETTING, &step.to_be_bytes())
            .await
            .map_err(storage)?;
        if failures.count > 0 || failures.locked_until > 0 {
            Self::save_failures(state, &Failures::default()).await?;
        }
        let mut token = [0u8; 32];
        getrandom::fill(&mut token).map_err(|e| ApiError::internal("randomness", e))?;
        let token = Zeroizing::new(data_encoding::HEXLOWER.encode(&token));
        let expires_at = UnixTime(now.0 + SESSION_TTL_S);
        {
            let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
            sessions.retain(|_, s| s.expires_at > now);
            while sessions.len() >= MAX_SESSIONS {
                let Some(oldest) = sessions
                    .iter()
                    .min_by_key(|(_, s)| s.expires_at)
                    .map(|(k, _)| *k)
                else {
                    break;
                };
                sessions.remove(&oldest);
            }
            sessions.insert(
                session_key(&token),
                Session {
                    expires_at,
                    credentials: credentials.fingerprint,
                },
            );
        }
        state
            .audit()
            .record(Event::ok(EventKind::AdminLogin).detail("method", "password_totp".to_owned()));
        let mut headers = HeaderMap::new();
        headers.insert(header::SET_COOKIE, self.set_cookie(&token, SESSION_TTL_S));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok((
            headers,
            LoginView {
                expires_at: expires_at.0,
            },
        ))
    }

    /// `POST /admin/v1/logout`: forgets the sessions of the cookies sent,
    /// and clears the cookie.
    pub fn logout(&self, headers: &HeaderMap) -> HeaderMap {
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        for token in cookies(headers, &self.cookie) {
            sessions.remove(&session_key(token));
        }
        let mut out = HeaderMap::new();
        out.insert(header::SET_COOKIE, self.set_cookie("", 0));
        out
    }

    /// Lifts a lock-out and the back-off (`admin unlock`, behind the
    /// bearer token), and forgets a last TOTP step that lies ahead of the
    /// clock (after the clock was set back).
    pub async fn unlock(&self, state: &PeerLayer) -> Result<(), ApiError> {
        let _one_at_a_time = self.gate.lock().await;
        Self::save_failures(state, &Failures::default()).await?;
        let current_step = state.clock().now().0 / TOTP_STEP_S;
        if Self::last_step(state)
            .await?
            .is_some_and(|last| last > current_step + 1)
        {
            // Forgotten, not moved: codes of the steps the clock has not
            // reached yet could be played again once it does, which the
            // owner accepts by unlocking (a wrong clock already made them
            // valid once).
            state
                .store()
                .set_setting(TOTP_STEP_SETTING, &0u64.to_be_bytes())
                .await
                .map_err(storage)?;
        }
        Ok(())
    }
}

/// The TOTP generator of a stored base32 secret.
fn stored_totp(secret_base32: &str) -> Option<TOTP> {
    let secret = Zeroizing::new(
        data_encoding::BASE32_NOPAD
            .decode(secret_base32.trim().as_bytes())
            .ok()?,
    );
    totp(secret.to_vec()).ok()
}

/// The TOTP step whose code is `code`, among the current step and the ones
/// either side, compared in constant time.
fn matching_step(totp: &TOTP, code: &str, now: u64) -> Option<u64> {
    if code.len() != TOTP_DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let current = now / TOTP_STEP_S;
    let mut found = None;
    for step in [current.saturating_sub(1), current, current + 1] {
        let expected = totp.generate(step * TOTP_STEP_S);
        if constant_time_eq(expected.as_bytes(), code.as_bytes()) {
            found = Some(step);
        }
    }
    found
}

/// Whether `a` and `b` are equal, in a time that does not depend on where
/// they differ (tokens and codes compared with what a client sent).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_6238_test_vector() {
        // RFC 6238 appendix B, SHA-1, the 20-byte ASCII secret
        // "12345678901234567890", T = 59: 94287082 (8 digits); the 6-digit
        // code is its last six.
        let secret = data_encoding::BASE32_NOPAD.encode(b"12345678901234567890");
        assert_eq!(totp_code(&secret, 59).unwrap(), "287082");
        assert_eq!(totp_code(&secret, 1111111109).unwrap(), "081804");
        let totp = stored_totp(&secret).unwrap();
        assert_eq!(matching_step(&totp, "287082", 59), Some(1));
        assert_eq!(matching_step(&totp, "287082", 59 + 30), Some(1));
        assert_eq!(matching_step(&totp, "287082", 59 + 60), None);
        assert_eq!(matching_step(&totp, "28708", 59), None);
        assert_eq!(matching_step(&totp, "28708a", 59), None);
        assert!(stored_totp("not base32!").is_none());
    }

    #[test]
    fn backoff_doubles_then_locks() {
        let at = |count, last_at| Failures {
            count,
            last_at,
            locked_until: 0,
        };
        assert_eq!(at(2, 100).wait(UnixTime(100)), None);
        assert_eq!(at(3, 100).wait(UnixTime(100)), Some((1, "backoff")));
        assert_eq!(at(3, 100).wait(UnixTime(101)), None);
        assert_eq!(at(5, 100).wait(UnixTime(101)), Some((3, "backoff")));
        assert_eq!(at(9, 100).wait(UnixTime(100)), Some((60, "backoff")));
        let locked = Failures {
            count: 10,
            last_at: 100,
            locked_until: 100 + LOCKOUT_S,
        };
        assert_eq!(locked.wait(UnixTime(200)), Some((800, "locked_out")));
        assert_eq!(locked.wait(UnixTime(100 + LOCKOUT_S)), None);
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; openred_admin=abc; b=2; openred_admin=def"),
        );
        let all = |name| cookies(&headers, name).collect::<Vec<_>>();
        assert_eq!(all(COOKIE), vec!["abc", "def"]);
        assert_eq!(all("b"), vec!["2"]);
        assert!(all("openred").is_empty());
    }

    #[test]
    fn passwords_are_stored_as_argon2id_hashes_and_short_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            set_password(dir.path(), "short"),
            Err(CredentialError::Password(_))
        ));
        set_password(dir.path(), "a long enough password").unwrap();
        let stored = fs::read_to_string(password_path(dir.path())).unwrap();
        assert!(stored.starts_with("$argon2id$"), "{stored}");
        assert!(!stored.contains("a long enough password"));
        let parsed = PasswordHash::new(&stored).unwrap();
        assert!(Argon2::default()
            .verify_password(b"a long enough password", &parsed)
            .is_ok());
        assert!(Argon2::default()
            .verify_password(b"a long enough passworD", &parsed)
            .is_err());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(password_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn enrollment_gives_a_uri_an_app_reads() {
        let dir = tempfile::tempdir().unwrap();
        let enrollment = enroll_totp(dir.path(), "node 1/x").unwrap();
        assert_eq!(enrollment.secret.len(), 32);
        assert!(enrollment
            .uri
            .starts_with("otpauth://totp/OpenRed%3Anode%201%2Fx?secret="));
        assert!(enrollment
            .uri
            .ends_with("&issuer=OpenRed&algorithm=SHA1&digits=6&period=30"));
        assert!(enrollment
            .uri
            .contains(&format!("?secret={}&", enrollment.secret)));
        let code = totp_code(&enrollment.secret, 1_000_000).unwrap();
        let stored = fs::read_to_string(totp_path(dir.path())).unwrap();
        assert_eq!(
            matching_step(&stored_totp(&stored).unwrap(), &code, 1_000_000),
            Some(1_000_000 / 30)
        );
    }
}
