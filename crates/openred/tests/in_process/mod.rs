//! Test harness: a directory and nodes in process on 127.0.0.1, sharing one
//! manual clock, each test on its own network (an `openred::testnet`
//! network, with the keys in process and the directory's token pushes
//! recorded); plus the initiator's side of an introduction done by hand,
//! so that tests can capture, replay and alter what travels.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Debug;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openred::testnet::{Agents, Launch, LocalNetwork, LocalNode};
use openred_core::handshake::{self, Authority, HandshakeContext, InitiatorHandshake};
use openred_core::id::Fingerprint;
use openred_core::session::{EpochConfig, Role, Session, Suite};
use openred_core::token::{LinkKey, LinkSigningKey, OpenedToken, Role as TokenRole, TokenEnvelope};
use openred_core::wire::{b64_decode, ConnectionIdBytes, HandshakeRequest, NoiseMessage};
use openred_core::wire::{ReachabilityChallenge, ReachabilityProof, TokenPush};
use openred_core::{
    AgreementSecret, ApiUrl, Clock, IdentityKeypair, IdentityPublicKey, ManualClock, NodeId,
    UnixTime,
};
use openred_directory::transport::{BoxFuture, NodeTransport, OutboundTransport, Unreachable};
use openred_directory::Config as DirectoryConfig;
use openred_node::error::NodeError;
use openred_node::modules::Module;
use openred_node::{NodeConfig, NodeKeys, NodeState};
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpListener;

/// How long a node may take to register.
const REGISTRATION_DEADLINE: Duration = Duration::from_secs(30);

/// The real current Unix time, where every network's clock starts.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the system clock is after 1970")
        .as_secs()
}

/// 32 random bytes.
pub fn random32() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).unwrap();
    bytes
}

/// 16 random bytes.
pub fn random16() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).unwrap();
    bytes
}

/// A plain HTTP client for the tests' own requests (no proxy from the
/// environment: everything goes to 127.0.0.1).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        // Below the servers' keep-alive limit (their header timeout), so a
        // pooled connection is never reused as the server closes it.
        .pool_idle_timeout(std::time::Duration::from_secs(5))
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

/// An HTTP answer: status, raw body, and the body as JSON (`Null` if it is
/// not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub json: Value,
}

impl Answer {
    /// Reads a reqwest response.
    pub async fn from_reqwest(response: reqwest::Response) -> Answer {
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap().to_vec();
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Answer { status, body, json }
    }

    /// The error code of an error answer.
    pub fn code(&self) -> Option<&str> {
        self.json["error"].as_str()
    }

    /// The error message of an error answer.
    pub fn message(&self) -> &str {
        self.json["message"].as_str().unwrap_or("")
    }
}

/// `POST url` with a JSON body.
pub async fn post_json(http: &reqwest::Client, url: &str, body: &impl Serialize) -> Answer {
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).unwrap())
        .send()
        .await
        .unwrap();
    Answer::from_reqwest(response).await
}

/// `POST url` with raw bytes (a frame).
pub async fn post_bytes(http: &reqwest::Client, url: &str, body: Vec<u8>) -> Answer {
    let response = http
        .post(url)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    Answer::from_reqwest(response).await
}

/// `GET url`, with a bearer token if given.
pub async fn get(http: &reqwest::Client, url: &str, bearer: Option<&str>) -> Answer {
    let mut request = http.get(url);
    if let Some(token) = bearer {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    Answer::from_reqwest(request.send().await.unwrap()).await
}

/// Asserts an answer is the refusal `status` with the JSON `error` `code`.
#[track_caller]
pub fn assert_refused(answer: &Answer, status: u16, code: &str) {
    assert_eq!(
        (answer.status, answer.code()),
        (status, Some(code)),
        "expected {status} {code}, got {} {}",
        answer.status,
        String::from_utf8_lossy(&answer.body)
    );
}

/// Asserts a node operation failed because the directory answered `status`
/// with `code`.
#[track_caller]
pub fn assert_directory_refused<T: Debug>(result: Result<T, NodeError>, status: u16, code: &str) {
    match result {
        Err(NodeError::Directory {
            status: s, code: c, ..
        }) if s == status && c.as_str() == code => {}
        other => panic!("expected the directory to refuse with {status} {code}, got {other:?}"),
    }
}

/// Asserts a node operation failed because the peer answered `status` with
/// `code`.
#[track_caller]
pub fn assert_peer_refused<T: Debug>(result: Result<T, NodeError>, status: u16, code: &str) {
    match result {
        Err(NodeError::Peer {
            status: s, code: c, ..
        }) if s == status && c.as_str() == code => {}
        other => panic!("expected the peer to refuse with {status} {code}, got {other:?}"),
    }
}

/// The directory's real transport, keeping a copy of every token it
/// pushes: how a test intercepts token_b on its way, to replay or alter it.
struct Recording {
    inner: OutboundTransport,
    pushed: Pushed,
}

/// Every token the directory pushed, as it pushed it.
type Pushed = Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

impl NodeTransport for Recording {
    fn challenge<'a>(
        &'a self,
        url: &'a ApiUrl,
        body: &'a ReachabilityChallenge,
    ) -> BoxFuture<'a, Result<ReachabilityProof, Unreachable>> {
        self.inner.challenge(url, body)
    }

    fn push_token<'a>(
        &'a self,
        url: &'a ApiUrl,
        body: &'a TokenPush,
    ) -> BoxFuture<'a, Result<(), Unreachable>> {
        self.pushed.lock().unwrap().push(body.token.0.clone());
        self.inner.push_token(url, body)
    }
}

/// A directory on 127.0.0.1 and the clock it shares with its nodes: a
/// [`LocalNetwork`] of no node at first, to which each test adds its own.
pub struct Network {
    local: LocalNetwork,
    pushed: Pushed,
    pub clock: Arc<ManualClock>,
    /// `http://127.0.0.1:PORT`.
    pub directory_base: String,
    pub directory_url: ApiUrl,
    pub fingerprint: Fingerprint,
    pub directory_key: IdentityPublicKey,
    pub http: reqwest::Client,
}

impl Network {
    /// A directory with the danger flag and without rate limits.
    pub async fn start() -> Network {
        Network::start_with(|_| {}).await
    }

    /// As [`Network::start`], with the directory's configuration adjusted.
    pub async fn start_with(tweak: impl FnOnce(&mut DirectoryConfig) + Send + 'static) -> Network {
        let clock = Arc::new(ManualClock::new(UnixTime(unix_now())));
        let pushed = Pushed::default();
        let local = LocalNetwork::builder()
            .clock(clock.clone() as Arc<dyn Clock>)
            // These tests run nodes inside the test process, with no agent
            // program to start; the binary's own tests run the real agent.
            .agents(Agents::InProcess)
            .directory_config(|config| {
                config.rate_limits.enabled = false;
                // Every test node reaches the directory from 127.0.0.1.
                config.max_connections_per_address = config.max_connections;
                tweak(config);
            })
            .directory_transport({
                let pushed = pushed.clone();
                move |inner| Arc::new(Recording { inner, pushed }) as Arc<dyn NodeTransport>
            })
            .node_config(|config| {
                // Every test node and client connects from 127.0.0.1: one
                // source here stands for a whole network.
                config.max_connections_per_address = config.max_connections;
            })
            .start()
            .await
            .unwrap();
        let directory = &local.directory;
        Network {
            pushed,
            clock,
            directory_base: directory.base.clone(),
            directory_url: directory.url.clone(),
            fingerprint: directory.fingerprint,
            directory_key: directory.public_key,
            http: http_client(),
            local,
        }
    }

    /// Stops the directory; its port then refuses connections.
    pub async fn stop_directory(&self) {
        self.local.stop_directory();
        let health = self.directory("/api/v3/health");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.http.get(&health).send().await.is_ok() {
            assert!(Instant::now() < deadline, "the directory stops within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// token_b of `connection_id`, exactly as the directory pushed it.
    pub fn pushed_token(&self, connection_id: &[u8; 16]) -> Vec<u8> {
        self.pushed
            .lock()
            .unwrap()
            .iter()
            .find(|bytes| {
                TokenEnvelope::decode(bytes).is_ok_and(|e| e.connection_id() == *connection_id)
            })
            .cloned()
            .expect("the directory pushed a token for this connection")
    }

    /// The directory's database, for tests that fill it without going
    /// through registration.
    pub fn directory_database(&self) -> openred_directory::Database {
        self.local.directory.database.clone()
    }

    /// The directory's private key, read from its data folder: how a test
    /// plays a compromised or misconfigured directory.
    pub fn directory_keypair(&self) -> IdentityKeypair {
        let path = self.local.directory.data_dir.join("directory.key");
        let text = std::fs::read_to_string(path).unwrap();
        let text = text.trim();
        let secret: Vec<u8> = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect();
        let key = IdentityKeypair::from_secret_bytes(&secret.try_into().unwrap());
        assert_eq!(key.public(), self.directory_key);
        key
    }

    /// The network's time.
    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }

    /// A directory endpoint.
    pub fn directory(&self, path: &str) -> String {
        format!("{}{path}", self.directory_base)
    }

    /// A new node with the default configuration, registered.
    pub async fn node(&self, name: &str) -> TestNode {
        self.node_with(name, |_| {}).await
    }

    /// A new node, its configuration adjusted, registered.
    pub async fn node_with(&self, name: &str, tweak: impl FnOnce(&mut NodeConfig)) -> TestNode {
        let node = self.spawn_node(name, tweak).await;
        node.wait_registered().await;
        node
    }

    /// A new node with the built-in modules and `extra` ones, its
    /// configuration adjusted, registered.
    pub async fn node_with_modules(
        &self,
        name: &str,
        tweak: impl FnOnce(&mut NodeConfig),
        extra: Vec<Arc<dyn Module>>,
    ) -> TestNode {
        let launch = Launch {
            modules: extra,
            ..Launch::default()
        };
        let node = TestNode(self.local.add_node(name, tweak, launch).await.unwrap());
        node.wait_registered().await;
        node
    }

    /// A new node, serving, without waiting for its registration.
    pub async fn spawn_node(&self, name: &str, tweak: impl FnOnce(&mut NodeConfig)) -> TestNode {
        TestNode(
            self.local
                .add_node(name, tweak, Launch::default())
                .await
                .unwrap(),
        )
    }

    /// Stops `node` (it deregisters) and opens it again on the same data
    /// directory, on new ports; waits for its registration.
    pub async fn restart(&self, mut node: TestNode) -> TestNode {
        let config = node.state.config().clone();
        node.stop().await;
        let name = node.name.clone();
        let node = TestNode(
            self.local
                .relaunch(&name, config, Launch::default())
                .await
                .unwrap(),
        );
        node.wait_registered().await;
        node
    }

    /// Starts a stopped node again with `config`, on the same P2P address
    /// (as a node with a fixed public URL restarts); waits for its
    /// registration.
    pub async fn relaunch(&self, name: &str, config: NodeConfig) -> TestNode {
        let launch = Launch {
            p2p: Some(bind_again(config.listen).await),
            ..Launch::default()
        };
        let node = TestNode(self.local.relaunch(name, config, launch).await.unwrap());
        node.wait_registered().await;
        node
    }

    /// A new node whose record publishes `public` (e.g. a relay in front
    /// of its P2P listener, bound by the caller), registered.
    pub async fn node_published_at(
        &self,
        name: &str,
        tweak: impl FnOnce(&mut NodeConfig),
        p2p: TcpListener,
        public: &str,
    ) -> TestNode {
        let launch = Launch {
            p2p: Some(p2p),
            public_url: Some(ApiUrl::parse_origin(public).unwrap()),
            ..Launch::default()
        };
        let node = TestNode(self.local.add_node(name, tweak, launch).await.unwrap());
        node.wait_registered().await;
        node
    }
}

/// Binds `address` again, waiting for the port to be released.
async fn bind_again(address: std::net::SocketAddr) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(address).await {
            Ok(listener) => return listener,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "cannot bind {address} again: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A node serving on 127.0.0.1: a [`LocalNode`] with the tests' checks.
pub struct TestNode(LocalNode);

impl Deref for TestNode {
    type Target = LocalNode;

    fn deref(&self) -> &LocalNode {
        &self.0
    }
}

impl TestNode {
    /// The peer layer's handle, as the node's modules get it.
    pub fn peers(&self) -> openred_node::peer::Peers {
        self.state.peers()
    }

    /// The admin API's bearer token, from the data directory.
    pub fn admin_token(&self) -> String {
        self.0.admin_token().unwrap()
    }

    /// An admin endpoint, at the address the node wrote in its data
    /// directory.
    pub fn admin(&self, path: &str) -> String {
        let address =
            std::fs::read_to_string(openred_node::owner::admin::address_path(&self.data_dir))
                .unwrap();
        format!("http://{}{path}", address.trim())
    }

    /// `POST` to an admin endpoint with a JSON body and a bearer token.
    pub async fn admin_post(
        &self,
        http: &reqwest::Client,
        path: &str,
        bearer: Option<&str>,
        body: &impl Serialize,
    ) -> Answer {
        let mut request = http
            .post(self.admin(path))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body).unwrap());
        if let Some(token) = bearer {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        Answer::from_reqwest(request.send().await.unwrap()).await
    }

    /// Switches one of this node's modules on or off through its admin API.
    pub async fn switch_module(&self, http: &reqwest::Client, module: &str, on: bool) -> Answer {
        let action = if on { "enable" } else { "disable" };
        self.admin_post(
            http,
            &format!("/admin/v1/modules/{module}/{action}"),
            Some(&self.admin_token()),
            &serde_json::json!({}),
        )
        .await
    }

    /// Every entry of the node's audit log, once what is queued is written.
    pub async fn audit_entries(&self) -> Vec<openred_node::audit::AuditEntryView> {
        self.audit().flush().await.unwrap();
        self.audit().read(0, 10_000).await.unwrap().entries
    }

    /// Waits until the node has registered with the directory.
    pub async fn wait_registered(&self) {
        if self.0.wait_registered(REGISTRATION_DEADLINE).await.is_err() {
            panic!(
                "node {} did not register within {REGISTRATION_DEADLINE:?}",
                self.name
            );
        }
    }

    /// Stops serving (deregistering first) and waits until it has stopped.
    pub async fn stop(&mut self) {
        tokio::time::timeout(Duration::from_secs(30), self.0.stop())
            .await
            .expect("the node stops within 30 s")
            .expect("the node serves without I/O errors and its task does not panic");
    }
}

/// The value of a module's metric `name` on `node`.
pub fn module_metric(node: &NodeState, module: &str, name: &str) -> f64 {
    node.modules()
        .views()
        .into_iter()
        .find(|m| m.name == module)
        .unwrap()
        .metrics
        .into_iter()
        .find(|m| m.name == name)
        .unwrap()
        .value
}

/// The plaintext of an encrypted ping: its route's label, then `ping`
/// and 8 random bytes.
pub fn ping_payload() -> Vec<u8> {
    let mut payload = b"ping".to_vec();
    payload.extend_from_slice(&random16()[..8]);
    openred_node::peer::frames::labelled("/p2p/ping", false, &payload)
}

/// The payload of `answer`, the answer on `path` to `request` (a frame
/// sealed in `session`): it must authenticate as bound to that request.
#[track_caller]
pub fn answer_payload(
    session: &Session,
    path: &str,
    request: &[u8],
    answer: &[u8],
    now: UnixTime,
) -> Vec<u8> {
    let request_seq = openred_core::session::FrameHeader::parse(request)
        .unwrap()
        .0
        .seq;
    openred_node::peer::frames::open_answer(session, path, request_seq, answer, now)
        .expect("the answer to this request, on this route")
}

/// An introduction asked for by hand: token_a, opened by the initiator.
pub struct Intro {
    pub connection_id: [u8; 16],
    pub expires_at: UnixTime,
    pub token_a: TokenEnvelope,
    pub opened: OpenedToken,
}

impl Intro {
    /// token_a's half of the link key.
    pub fn link(&self) -> &LinkSigningKey {
        match &self.opened.link {
            LinkKey::Signing(key) => key,
            LinkKey::Verifying(_) => panic!("token_a carries the signing half"),
        }
    }

    /// The target's static (agreement) key, from its record in token_a.
    pub fn target_static(&self) -> [u8; 32] {
        self.opened.peer_record.record().agreement_key.0
    }

    /// What both sides agree on before the handshake.
    pub fn context(&self, offer: &[Suite]) -> HandshakeContext {
        let intro = &self.opened.introduction;
        HandshakeContext {
            connection_id: intro.connection_id,
            initiator: intro.initiator,
            target: intro.target,
            authority: Authority::Introduction {
                link_public: self.opened.link.verifying_bytes(),
            },
            offer: offer.to_vec(),
        }
    }
}

/// A node's private keys, read from its data directory as an attacker
/// holding them (or a test forging what the node would send) would.
pub trait KeysOnDisk {
    /// The keys.
    fn keys(&self) -> NodeKeys;
}

impl KeysOnDisk for NodeState {
    fn keys(&self) -> NodeKeys {
        NodeKeys::load(self.data_dir()).expect("the node's keys are on disk")
    }
}

/// `a` asks the directory to meet `target` (the directory pushes token_b
/// to it) and opens token_a.
pub async fn introduce(a: &NodeState, target: NodeId, now: UnixTime) -> Intro {
    let token_a = a
        .directory()
        .request_connection(a.outbound(), a.store(), a.crypto(), &target, now)
        .await
        .expect("the directory introduces");
    let opened = token_a
        .open(&a.node_id(), &a.keys().agreement_secret())
        .expect("token_a opens for its initiator");
    assert_eq!(opened.role, TokenRole::Initiator);
    Intro {
        connection_id: token_a.connection_id(),
        expires_at: opened.introduction.expires_at,
        token_a,
        opened,
    }
}

/// Noise message 1 for `context`, from the static key pair
/// (`local_secret`, `local_public`), with a proof signed by `proof_key`,
/// as the body of `POST /p2p/handshake`.
pub fn message_1(
    local_secret: &[u8; 32],
    local_public: &[u8; 32],
    target_static: &[u8; 32],
    context: &HandshakeContext,
    proof_key: &LinkSigningKey,
) -> (InitiatorHandshake, HandshakeRequest) {
    let (pending, message) = handshake::initiate(
        local_secret,
        local_public,
        target_static,
        context,
        random32(),
        |hash| proof_key.sign_handshake_proof(hash),
    )
    .expect("message 1 is built");
    let request = HandshakeRequest {
        connection_id: ConnectionIdBytes(context.connection_id),
        suites: context.offer.iter().map(|s| s.id()).collect(),
        message: NoiseMessage(message),
    };
    (pending, request)
}

/// The initiator's genuine message 1 for `intro`.
pub fn genuine_message_1(a: &NodeState, intro: &Intro) -> (InitiatorHandshake, HandshakeRequest) {
    message_1(
        &a.keys().agreement_secret(),
        &a.keys().agreement_public().0,
        &intro.target_static(),
        &intro.context(&a.config().suites),
        intro.link(),
    )
}

/// A static key pair that is nobody's agreement key.
pub fn stranger_static() -> ([u8; 32], [u8; 32]) {
    let secret = AgreementSecret::from_secret_bytes(random32());
    (*secret.secret_bytes(), secret.public().0)
}

/// An identity key nobody registered.
pub fn stranger_identity() -> IdentityKeypair {
    IdentityKeypair::from_secret_bytes(&random32())
}

/// Finishes a handshake done by hand with the target's answer: the
/// initiator's session, whose ID must be the one the target announced.
pub fn finish_by_hand(
    pending: InitiatorHandshake,
    answer: &Answer,
    now: UnixTime,
    epoch: EpochConfig,
) -> Session {
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.json["session_established"], Value::Bool(true));
    let reply = b64_decode(answer.json["message"].as_str().unwrap()).unwrap();
    let result = pending.finish(&reply).expect("message 2 authenticates");
    let session = Session::new(
        Role::Initiator,
        result.suite,
        &result.handshake_hash,
        &result.i2r,
        &result.r2i,
        now,
        epoch,
    );
    assert_eq!(
        answer.json["session_id"].as_str(),
        Some(session.session_id().to_string().as_str())
    );
    session
}
