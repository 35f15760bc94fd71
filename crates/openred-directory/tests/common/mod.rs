//! Test harness: a directory in process on a chosen backend, driven with
//! `oneshot`, under a manual clock.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use openred_core::keys::SignatureContext;
use openred_core::wire::b64_encode;
use openred_core::wire::{
    reachability_message, ReachabilityChallenge, ReachabilityProof, TokenPush,
};
use openred_core::{
    AgreementSecret, ApiUrl, IdentityKeypair, ManualClock, NodeRecord, SignedRecord, UnixTime,
};
use openred_directory::transport::{BoxFuture, NodeTransport, Unreachable};
use openred_directory::{Config, Database, Directory};
use serde_json::Value;
use sqlx::Connection;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};
use tower::ServiceExt;

/// The time every test starts at.
pub const T0: u64 = 1_800_000_000;

/// Where the directory stores its records.
#[derive(Clone)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

impl Backend {
    /// A fresh PostgreSQL database for one test, or `None` (with a note on
    /// the terminal, which test capture does not swallow) when
    /// `OPENRED_TEST_POSTGRES_URL` is unset.
    pub async fn postgres(test: &str) -> Option<Backend> {
        let Ok(base) = std::env::var("OPENRED_TEST_POSTGRES_URL") else {
            let _ = writeln!(
                std::io::stderr(),
                "skipped: {test} on PostgreSQL (set OPENRED_TEST_POSTGRES_URL, see README)"
            );
            return None;
        };
        let mut conn = sqlx::PgConnection::connect(&base)
            .await
            .expect("OPENRED_TEST_POSTGRES_URL is set but PostgreSQL does not answer");
        let mut name = [0u8; 8];
        getrandom::fill(&mut name).unwrap();
        let name = format!("openred_t_{}", data_encoding::HEXLOWER.encode(&name));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let (prefix, _) = base.rsplit_once('/').expect("URL ends with /dbname");
        Some(Backend::Postgres(format!("{prefix}/{name}")))
    }
}

/// A node for tests: its keys and record builder.
pub struct TestNode {
    pub key: IdentityKeypair,
    pub agreement: AgreementSecret,
    pub url: String,
}

impl TestNode {
    /// The agreement secret's bytes, to open tokens sealed to this node.
    pub fn agreement_secret(&self) -> [u8; 32] {
        *self.agreement.secret_bytes()
    }

    pub fn new(seed: u8) -> TestNode {
        TestNode {
            key: IdentityKeypair::from_secret_bytes(&[seed; 32]),
            agreement: AgreementSecret::from_secret_bytes([seed ^ 0x55; 32]),
            url: format!("https://node{seed}.example.com"),
        }
    }

    pub fn id(&self) -> String {
        self.key.node_id().to_string()
    }

    pub fn record_at(&self, seq: u64, issued_at: u64, expires_at: u64, url: &str) -> SignedRecord {
        NodeRecord::sign(
            &self.key,
            self.agreement.public(),
            ApiUrl::parse_origin(url).unwrap(),
            seq,
            UnixTime(issued_at),
            UnixTime(expires_at),
        )
    }

    pub fn record(&self, seq: u64, now: u64) -> SignedRecord {
        self.record_at(seq, now, now + 86_400, &self.url.clone())
    }
}

/// The JSON body of a registration.
pub fn register_body(record: &SignedRecord) -> Value {
    serde_json::json!({ "record": b64_encode(record.as_bytes()) })
}

/// Plays every test node at whatever URL it registers: answers the
/// reachability challenge with the node's key (or with the key of the
/// "owner" of a URL, to simulate someone else's server), and records token
/// pushes. URLs marked dead answer nothing.
#[derive(Default)]
pub struct FakeNodes {
    pub fingerprint: OnceLock<String>,
    pub dead: Mutex<HashSet<String>>,
    pub owners: Mutex<HashMap<String, u8>>,
    pub challenges: Mutex<Vec<String>>,
    pub pushes: Mutex<Vec<(String, TokenPush)>>,
    /// When set, reachability proofs name this directory fingerprint instead
    /// of the directory's own: a proof made for another directory.
    pub proof_fingerprint: Mutex<Option<String>>,
}

impl FakeNodes {
    fn seed_of(node_id: &str) -> Option<u8> {
        (0..=255u8).find(|s| TestNode::new(*s).id() == node_id)
    }
}

impl NodeTransport for FakeNodes {
    fn challenge<'a>(
        &'a self,
        url: &'a ApiUrl,
        body: &'a ReachabilityChallenge,
    ) -> BoxFuture<'a, Result<ReachabilityProof, Unreachable>> {
        Box::pin(async move {
            self.challenges.lock().unwrap().push(url.to_string());
            if self.dead.lock().unwrap().contains(url.as_str()) {
                return Err(Unreachable);
            }
            let owner = self.owners.lock().unwrap().get(url.as_str()).copied();
            let seed = owner
                .or_else(|| FakeNodes::seed_of(&body.node_id.to_string()))
                .ok_or(Unreachable)?;
            let node = TestNode::new(seed);
            let fingerprint = self
                .proof_fingerprint
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_else(|| self.fingerprint.get().unwrap().clone());
            let message = reachability_message(
                &body.challenge.0,
                &node.key.node_id(),
                &fingerprint,
                url.as_str(),
            );
            Ok(ReachabilityProof {
                node_id: body.node_id,
                signature: openred_core::wire::SignatureBytes(
                    node.key.sign(SignatureContext::ReachabilityProof, &message),
                ),
            })
        })
    }

    fn push_token<'a>(
        &'a self,
        url: &'a ApiUrl,
        body: &'a TokenPush,
    ) -> BoxFuture<'a, Result<(), Unreachable>> {
        Box::pin(async move {
            if self.dead.lock().unwrap().contains(url.as_str()) {
                return Err(Unreachable);
            }
            self.pushes
                .lock()
                .unwrap()
                .push((url.to_string(), body.clone()));
            Ok(())
        })
    }
}

/// A directory under test.
pub struct Harness {
    pub directory: Directory,
    pub nodes: Arc<FakeNodes>,
    pub clock: Arc<ManualClock>,
    pub config: Config,
    pub tmp: tempfile::TempDir,
    peer: SocketAddr,
}

/// An HTTP answer.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: Value,
    pub text: String,
}

impl Answer {
    /// The error code of a JSON error body.
    pub fn code(&self) -> &str {
        self.json["error"].as_str().unwrap_or("<no error code>")
    }
}

impl Harness {
    /// A directory with test defaults: rate limits off.
    pub async fn new(backend: Backend) -> Harness {
        Harness::with(backend, |_| {}).await
    }

    /// A directory whose configuration `tweak` adjusts.
    pub async fn with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Harness {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = Config::new("127.0.0.1:0".parse().unwrap(), tmp.path().to_path_buf());
        config.rate_limits.enabled = false;
        if let Backend::Postgres(url) = &backend {
            config.database = Database::Postgres(url.clone());
        }
        tweak(&mut config);
        let clock = Arc::new(ManualClock::new(UnixTime(T0)));
        let nodes = Arc::new(FakeNodes::default());
        let directory =
            Directory::open_with_transport(config.clone(), clock.clone(), nodes.clone())
                .await
                .unwrap();
        nodes
            .fingerprint
            .set(directory.fingerprint().to_string())
            .unwrap();
        Harness {
            directory,
            nodes,
            clock,
            config,
            tmp,
            peer: "198.51.100.7:40000".parse().unwrap(),
        }
    }

    /// Opens a second directory on the same data and database.
    pub async fn reopen(&self) -> Directory {
        Directory::open_with_transport(self.config.clone(), self.clock.clone(), self.nodes.clone())
            .await
            .unwrap()
    }

    pub fn now(&self) -> u64 {
        self.clock.now_secs()
    }

    /// Sends a request from the harness's peer address.
    pub async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> Answer {
        let body = body.map(|b| b.to_string());
        self.raw(method, uri, body.as_deref(), "application/json", self.peer)
            .await
    }

    /// Sends a raw request from `peer`.
    pub async fn raw(
        &self,
        method: &str,
        uri: &str,
        body: Option<&str>,
        content_type: &str,
        peer: SocketAddr,
    ) -> Answer {
        send(&self.directory, method, uri, body, content_type, peer).await
    }

    pub async fn register(&self, record: &SignedRecord) -> Answer {
        self.call(
            "POST",
            "/api/v3/nodes/register",
            Some(register_body(record)),
        )
        .await
    }

    pub async fn lookup(&self, node_id: &str) -> Answer {
        self.call("GET", &format!("/api/v3/nodes/{node_id}"), None)
            .await
    }
}

/// Sends a request to `directory` from `peer`, without a socket.
pub async fn send(
    directory: &Directory,
    method: &str,
    uri: &str,
    body: Option<&str>,
    content_type: &str,
    peer: SocketAddr,
) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    if body.is_some() {
        request = request.header("content-type", content_type);
    }
    let request = request
        .body(body.map(|b| Body::from(b.to_owned())).unwrap_or_default())
        .unwrap();
    let response = directory
        .router()
        .layer(MockConnectInfo(peer))
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        json,
        text,
    }
}

/// Reads a manual clock as seconds.
pub trait ClockSecs {
    fn now_secs(&self) -> u64;
}

impl ClockSecs for ManualClock {
    fn now_secs(&self) -> u64 {
        openred_core::Clock::now(self).0
    }
}

/// Defines each listed test twice: on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::common::Backend::Sqlite).await } )*
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() {
                   if let Some(backend) = $crate::common::Backend::postgres(stringify!($name)).await {
                       super::$name(backend).await
                   }
               } )*
        }
    };
}
