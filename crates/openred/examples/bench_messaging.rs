//! Messaging throughput and latency between two nodes on loopback, next to
//! a bare axum hello-world measured in the same run.
//!
//! ```text
//! cargo build --release -p openred --example bench_messaging
//! target/release/examples/bench_messaging [--messages 50000] [--samples 2000]
//!     [--send-samples 300] [--concurrency 64] [--senders 512] [--body-bytes 100]
//!     [--rounds 1] [--data-dir DIR] [--hello-url URL] [--summary FILE]
//!     [--agent [--agent-program PATH]] [--requests-per-peer-per-s N]
//! ```
//!
//! Starts, in this process and on free loopback ports, a directory and two
//! nodes A and B (private addresses allowed; the keys in process,
//! `danger_in_process_crypto`, unless `--agent`: a message never calls the
//! crypto agent, the session keys live in the node), each with its data in
//! a fresh temporary folder under `--data-dir` (default: the system's
//! temporary directory; that is where the SQLite files and their fsyncs
//! go: WAL, `synchronous = FULL`). The messaging module runs with
//! `in_flight_per_peer = --concurrency`. A connects to B (introduction and
//! handshake, untimed), and beside them an axum server with the
//! `hello_world` example's route (`GET /` answering `Hello, World!`) and a
//! `POST /echo` that answers 100 bytes runs on the same runtime: both ends
//! of every measurement share this process's tokio runtime (one worker per
//! core), as A and B do.
//!
//! Every request goes through A's outbound HTTP client (reqwest, kept-alive
//! HTTP/1.1 connections, the per-peer rate limit and connection bound):
//! only the server side and the work around the request differ. In each
//! of `--rounds` rounds, in this order:
//!
//! 1. **hello**: `GET /` of the axum hello-world;
//! 2. **echo**: `POST /echo` with a body the size of a message frame;
//! 3. **ping**: an encrypted ping over the session (seal, `POST
//!    /p2p/ping`, B opens and seals the pong, A opens it; no storage);
//! 4. **exchange**: one message frame, as the module's delivery sends it:
//!    `WireMessage` to JSON, seal, `POST /p2p/message`, B opens it, checks
//!    it and commits it to its inbox (group commit, fsync) before sealing
//!    the receipt, A opens and checks the receipt;
//! 5. **send → delivered**: `Messaging::send` (A's outbox commit), then
//!    A's delivery worker (mark sent, the exchange, mark delivered: three
//!    more commits on A's side, one on B's), one message at a time, until
//!    A's `delivered_total` grows (polled with `yield_now`: the poll spins
//!    on one core); the time to B's inbox commit is read from B's event
//!    stream;
//! 6. **pipelined messaging**: `--messages` messages sent through
//!    `Messaging::send` by `--senders` concurrent callers (so that outbox
//!    writes share group commits), from the first send until A's
//!    `delivered_total` has grown by `--messages` (every message
//!    acknowledged by B after B's inbox commit, and marked delivered in
//!    A's outbox); from B's side, from the first to the last inbox commit
//!    (`received_total`, polled every millisecond).
//!
//! 1 to 4 are each timed twice: `--samples` sequential round trips (one
//! request at a time, each timed), then `--messages` requests by
//! `--concurrency` concurrent callers (requests/s, and each request's
//! latency under that load). CPU time of the whole process (both nodes,
//! the server, the client) is read from `/proc/self/stat` around each
//! throughput run.
//!
//! With `--hello-url` (the `hello_world` example running in its own
//! process, as `scripts/bench-directory.sh` runs it), hello is also timed
//! against that server.
//!
//! The issue's targets: pipelined messaging at least `--target-rate`
//! (20,000) messages/s, and a round trip p50 of at most `--target-p50-ms`
//! (1 ms); the exchange's p50 is the round trip (seal → POST → B persists
//! → receipt).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/stats.rs"]
mod support_stats;
use support_stats::{stats, Stats};

// No global allocator of its own: the nodes measured here use the system
// allocator, as the `openred` binary does (see its `main.rs`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::body::Bytes;
use axum::routing::{get, post};
use axum::Router;
use clap::Parser;
use openred::testnet::{Agents, LocalNetwork};
use openred_core::{ApiUrl, NodeId};
use openred_node::error::NodeError;
use openred_node::modules::messaging::store::MessageId;
use openred_node::modules::messaging::{Messaging, Receipt, WireMessage, MESSAGE_PATH, NAME};
use openred_node::modules::Module as _;
use openred_node::NodeState;
use tokio::net::TcpListener;

const CONTENT_TYPE: &str = "text/plain; charset=utf-8";

#[derive(Parser)]
#[command(about = "Messaging throughput and latency on loopback, next to axum hello-world")]
struct Args {
    /// Messages in the pipelined run; also the requests of each
    /// concurrent run of hello, echo, ping and exchange.
    #[arg(long, default_value_t = 50_000)]
    messages: usize,
    /// Sequential round trips timed for hello, echo, ping and exchange.
    #[arg(long, default_value_t = 2000)]
    samples: usize,
    /// Messages timed one at a time from `send` to delivered (0: skip).
    #[arg(long, default_value_t = 300)]
    send_samples: usize,
    /// Requests in flight at once: the messaging module's
    /// `in_flight_per_peer`, and the callers of each concurrent run.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Concurrent `Messaging::send` callers in the pipelined run.
    #[arg(long, default_value_t = 512)]
    senders: usize,
    /// Length of each message's text, in bytes.
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    /// Rounds; each runs every measurement once. Rates are the median of
    /// the rounds; latencies pool the samples of every round.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Untimed requests of each kind first (connections, caches).
    #[arg(long, default_value_t = 500)]
    warmup: usize,
    /// Where to create the temporary data folder (default: the system's
    /// temporary directory). `/dev/shm` takes the disk out.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Also time hello against this server (the `hello_world` example in
    /// its own process), e.g. `http://127.0.0.1:PORT`.
    #[arg(long)]
    hello_url: Option<String>,
    /// Append `msg<TAB>metric<TAB>value` lines to this file.
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Keep each node's keys in a crypto agent process (the default keeps
    /// them in process; messages never use them).
    #[arg(long)]
    agent: bool,
    /// The `openred` binary for `--agent` (default: `openred` next to the
    /// folder of this example).
    #[arg(long)]
    agent_program: Option<PathBuf>,
    /// The nodes' per-peer request ceiling (default: the node's default).
    #[arg(long)]
    requests_per_peer_per_s: Option<u32>,
    /// The pipelined target, messages/s.
    #[arg(long, default_value_t = 20_000.0)]
    target_rate: f64,
    /// The round-trip target, p50 in ms.
    #[arg(long, default_value_t = 1.0)]
    target_p50_ms: f64,
    /// Only these measurements, comma-separated, e.g. to profile one:
    /// hello, echo, ping, exchange, send, pipelined, drain (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

impl Args {
    fn wants(&self, what: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == what)
    }
}

fn print_header(unit: &str) {
    println!(
        "{:<44} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        unit, "n", "min", "p50", "p90", "p99", "max", "mean"
    );
}

fn print_row(what: &str, s: &Stats) {
    println!(
        "{what:<44} {:>6} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
        s.n, s.min, s.p50, s.p90, s.p99, s.max, s.mean
    );
}

/// One throughput run.
struct Rate {
    ops: usize,
    elapsed: Duration,
    /// Each request's latency, under the run's load.
    latencies: Vec<Duration>,
    cpu_s: Option<f64>,
    /// Requests the client's per-peer rate limit refused (retried).
    rate_limited: u64,
}

impl Rate {
    fn per_s(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn cpu_us_per_op(&self) -> f64 {
        self.cpu_s
            .map_or(f64::NAN, |c| c * 1e6 / self.ops.max(1) as f64)
    }

    fn cores(&self) -> f64 {
        self.cpu_s
            .map_or(f64::NAN, |c| c / self.elapsed.as_secs_f64())
    }
}

/// The pipelined messaging run.
struct Pipelined {
    messages: usize,
    /// Every `send` returned (the outbox holds them all).
    enqueued: Duration,
    /// A's `delivered_total` grew by `messages`.
    delivered: Duration,
    /// B's first and last inbox commit, from the first send.
    b_first: Duration,
    b_last: Duration,
    /// B's inbox commits in each whole second from its first commit (the
    /// last, partial second left out): how steady the rate was.
    b_seconds: Vec<u64>,
    cpu_s: Option<f64>,
    /// Delivery attempts beyond one per message (retries).
    retries: u64,
}

/// Everything measured, by key, over the rounds.
#[derive(Default)]
struct Results {
    latencies: BTreeMap<&'static str, Vec<Duration>>,
    values: BTreeMap<String, Vec<f64>>,
}

impl Results {
    fn add_latencies(&mut self, key: &'static str, samples: &[Duration]) {
        self.latencies
            .entry(key)
            .or_default()
            .extend_from_slice(samples);
    }

    fn add(&mut self, key: impl Into<String>, value: f64) {
        self.values.entry(key.into()).or_default().push(value);
    }

    fn median(&self, key: &str) -> f64 {
        let Some(v) = self.values.get(key) else {
            return f64::NAN;
        };
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    fn add_rate(&mut self, key: &str, rate: &Rate) {
        self.add(format!("{key}_per_s"), rate.per_s());
        self.add(format!("{key}_cpu_us"), rate.cpu_us_per_op());
        self.add(format!("{key}_cores"), rate.cores());
        self.add(format!("{key}_rate_limited"), rate.rate_limited as f64);
        let load = stats(&rate.latencies, 1e3);
        self.add(format!("{key}_load_p50_ms"), load.p50);
        self.add(format!("{key}_load_p99_ms"), load.p99);
    }
}

fn messaging(state: &NodeState) -> &Messaging {
    state
        .modules()
        .get::<Messaging>()
        .expect("the messaging module")
}

/// A counter of the messaging module (`delivered_total`, ...).
fn metric(state: &NodeState, name: &str) -> u64 {
    messaging(state)
        .metrics()
        .iter()
        .find(|m| m.name == name)
        .map_or(0, |m| m.value as u64)
}

/// User + system CPU seconds of the whole process, from `/proc/self/stat`.
fn process_cpu() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the `(comm)`: utime and stime are 12 and 13 after the `)`.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    // USER_HZ is 100 on every Linux ABI in use.
    Some((utime + stime) / 100.0)
}

fn is_rate_limited(e: &NodeError) -> bool {
    // The outbound client's error type is not re-exported; its text is fixed.
    matches!(e, NodeError::Outbound(_)) && e.to_string().starts_with("too many requests")
}

/// A text of `len` bytes that differs from message to message.
fn text(len: usize, i: u64) -> String {
    let mut t = format!("message {i:010} ");
    while t.len() < len {
        t.push_str("lorem ipsum dolor sit amet, consectetur adipiscing elit ");
    }
    t.truncate(len);
    t
}

/// `n` requests, one at a time, each timed; `op(i)` makes the i-th.
async fn sequential<F, Fut>(n: usize, op: F) -> anyhow::Result<Vec<Duration>>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let mut out = Vec::with_capacity(n);
    let mut i = 0u64;
    while out.len() < n {
        let t0 = Instant::now();
        let done = op(i).await?;
        let took = t0.elapsed();
        i += 1;
        if done {
            out.push(took);
        } else {
            // Rate limited: not a round trip.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Ok(out)
}

/// `n` requests by `callers` concurrent tasks; `op(i)` makes the i-th and
/// answers false if the rate limit refused it (then it is made again).
async fn concurrent<F, Fut>(n: usize, callers: usize, op: F) -> anyhow::Result<Rate>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<bool>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let cpu_before = process_cpu();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..callers {
        let (op, next, limited) = (op.clone(), next.clone(), limited.clone());
        tasks.spawn(async move {
            let mut out = Vec::with_capacity(n / callers + 1);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(out);
                }
                loop {
                    let t0 = Instant::now();
                    if op(i as u64).await? {
                        out.push(t0.elapsed());
                        break;
                    }
                    limited.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        });
    }
    let mut latencies = Vec::with_capacity(n);
    while let Some(joined) = tasks.join_next().await {
        latencies.extend(joined??);
    }
    let elapsed = started.elapsed();
    let cpu_s = match (cpu_before, process_cpu()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    Ok(Rate {
        ops: n,
        elapsed,
        latencies,
        cpu_s,
        rate_limited: limited.load(Ordering::Relaxed),
    })
}

/// A GET of `origin` + `/` through A's client.
async fn hello(a: &NodeState, origin: &ApiUrl) -> anyhow::Result<bool> {
    match a.outbound().get(origin, "/").await {
        Ok(r) if r.is_success() && r.body.as_ref() == b"Hello, World!" => Ok(true),
        Ok(r) => bail!("hello answered {}", r.status),
        Err(e) if e.to_string().starts_with("too many requests") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A POST of `body` to `/echo` through A's client.
async fn echo(a: &NodeState, origin: &ApiUrl, body: Bytes) -> anyhow::Result<bool> {
    match a
        .outbound()
        .post_bytes(origin, "/echo", body, "application/octet-stream")
        .await
    {
        Ok(r) if r.is_success() && r.body.len() == ECHO_ANSWER.len() => Ok(true),
        Ok(r) => bail!("echo answered {}", r.status),
        Err(e) if e.to_string().starts_with("too many requests") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// What `/echo` answers: about the size of a sealed receipt.
const ECHO_ANSWER: [u8; 100] = [b'r'; 100];

async fn ping(a: &NodeState, b: NodeId) -> anyhow::Result<bool> {
    match a.ping(&b).await {
        Ok(_) => Ok(true),
        Err(e) if is_rate_limited(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// One message frame, as the module's `send_one` sends it: a fresh ID, the
/// JSON, the exchange (B commits before it answers), the receipt checked.
async fn exchange(a: &NodeState, b: NodeId, seq: u64, body: &str) -> anyhow::Result<bool> {
    let live = a.session_for(&b).await?;
    let message_id = MessageId::random()?.to_string();
    let wire = WireMessage {
        message_id: message_id.clone(),
        seq,
        sent_at: a.clock().now().0,
        content_type: CONTENT_TYPE.to_owned(),
        body: body.to_owned(),
    };
    let payload = serde_json::to_vec(&wire)?;
    let answer = match a.exchange(&live, MESSAGE_PATH, &payload).await {
        Ok(answer) => answer,
        Err(e) if is_rate_limited(&e) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let receipt: Receipt = serde_json::from_slice(&answer)?;
    if !receipt.received || receipt.message_id != message_id {
        bail!("a receipt for another message");
    }
    Ok(true)
}

/// Waits until `state`'s counter `name` reaches `target`, polling every
/// millisecond; fails after `limit`.
async fn wait_metric(
    state: &NodeState,
    name: &str,
    target: u64,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while metric(state, name) < target {
        if Instant::now() > deadline {
            bail!(
                "{name} is {} after {} s, {target} expected (failed_total {})",
                metric(state, name),
                limit.as_secs(),
                metric(state, "failed_total")
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// `k` messages through `Messaging::send`, one at a time: (send returned,
/// in B's inbox, delivered on A) for each.
async fn send_one_at_a_time(
    a: &Arc<NodeState>,
    b: &Arc<NodeState>,
    k: usize,
    body_bytes: usize,
) -> anyhow::Result<[Vec<Duration>; 3]> {
    let (ma, mb) = (messaging(a), messaging(b));
    let mut events = mb.subscribe();
    let (mut enqueued, mut inbox, mut delivered) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..k {
        let base = metric(a, "delivered_total");
        let body = text(body_bytes, i as u64);
        let t0 = Instant::now();
        let sent = ma
            .send(&a.peers(), b.node_id(), CONTENT_TYPE, &body)
            .await?;
        enqueued.push(t0.elapsed());
        let deadline = t0 + Duration::from_secs(30);
        // B's event comes right after its inbox commit, before the receipt.
        let mut in_b = None;
        while metric(a, "delivered_total") <= base {
            if in_b.is_none() {
                while let Ok(event) = events.try_recv() {
                    if event.message_id == sent.message_id {
                        in_b = Some(t0.elapsed());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("message {i} not delivered within 30 s");
            }
            tokio::task::yield_now().await;
        }
        delivered.push(t0.elapsed());
        if in_b.is_none() {
            while let Ok(event) = events.try_recv() {
                if event.message_id == sent.message_id {
                    // Seen after the delivery: an upper bound.
                    in_b = Some(t0.elapsed());
                }
            }
        }
        inbox.push(in_b.context("B's inbox event is missing")?);
    }
    Ok([enqueued, inbox, delivered])
}

/// Sends every one of `bodies` to `peer` through `Messaging::send`, by
/// `senders` concurrent callers.
async fn fill(
    a: &Arc<NodeState>,
    peer: NodeId,
    bodies: &Arc<Vec<String>>,
    senders: usize,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..senders.min(bodies.len()).max(1) {
        let (a, bodies, next) = (a.clone(), bodies.clone(), next.clone());
        tasks.spawn(async move {
            let m = messaging(&a);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else {
                    return anyhow::Ok(());
                };
                m.send(&a.peers(), peer, CONTENT_TYPE, body).await?;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(())
}

/// The same work in two steps: with A's module switched off (its delivery
/// worker idles), `n` sends fill the outbox; then the module is switched
/// on and the outbox drains. Returns (fill, drain) as throughput runs.
async fn fill_then_drain(
    a: &Arc<NodeState>,
    b: &Arc<NodeState>,
    n: usize,
    senders: usize,
    body_bytes: usize,
) -> anyhow::Result<(Rate, Rate)> {
    let bodies: Arc<Vec<String>> = Arc::new((0..n).map(|i| text(body_bytes, i as u64)).collect());
    let delivered0 = metric(a, "delivered_total");
    let attempts0 = metric(a, "attempts_total");
    let cpu = |before: Option<f64>| match (before, process_cpu()) {
        (Some(x), Some(y)) => Some(y - x),
        _ => None,
    };
    a.modules().set_enabled(NAME, false)?;
    let cpu_before = process_cpu();
    let started = Instant::now();
    let filled = fill(a, b.node_id(), &bodies, senders).await;
    let fill_time = started.elapsed();
    let fill_cpu = cpu(cpu_before);
    a.modules().set_enabled(NAME, true)?;
    filled?;
    if metric(a, "delivered_total") != delivered0 {
        bail!("messages were delivered while the module was off");
    }
    let cpu_before = process_cpu();
    let started = Instant::now();
    wait_metric(
        a,
        "delivered_total",
        delivered0 + n as u64,
        Duration::from_secs(600),
    )
    .await?;
    let drain_time = started.elapsed();
    let retries = (metric(a, "attempts_total") - attempts0).saturating_sub(n as u64);
    Ok((
        Rate {
            ops: n,
            elapsed: fill_time,
            latencies: Vec::new(),
            cpu_s: fill_cpu,
            rate_limited: 0,
        },
        Rate {
            ops: n,
            elapsed: drain_time,
            latencies: Vec::new(),
            cpu_s: cpu(cpu_before),
            rate_limited: retries,
        },
    ))
}

/// `n` messages by `senders` concurrent `send` callers; times until every
/// one is delivered.
async fn pipelined(
    a: &Arc<NodeState>,
    b: &Arc<NodeState>,
    n: usize,
    senders: usize,
    body_bytes: usize,
) -> anyhow::Result<Pipelined> {
    let delivered0 = metric(a, "delivered_total");
    let attempts0 = metric(a, "attempts_total");
    let failed0 = metric(a, "failed_total");
    let received0 = metric(b, "received_total");
    let bodies: Arc<Vec<String>> = Arc::new((0..n).map(|i| text(body_bytes, i as u64)).collect());
    let peer = b.node_id();

    let cpu_before = process_cpu();
    let started = Instant::now();
    // B's side, polled every millisecond.
    let b_times = {
        let b = b.clone();
        tokio::spawn(async move {
            let mut first = None;
            // (when the current whole second began, B's count then).
            let mut second: Option<(Duration, u64)> = None;
            let mut seconds = Vec::new();
            loop {
                let got = metric(&b, "received_total");
                let now = started.elapsed();
                if first.is_none() && got > received0 {
                    first = Some(now);
                    second = Some((now, got));
                }
                if let Some((began, count)) = second {
                    if now >= began + Duration::from_secs(1) {
                        seconds.push(got - count);
                        second = Some((now, got));
                    }
                }
                if got >= received0 + n as u64 {
                    return (first.unwrap_or_default(), now, seconds);
                }
                if now > Duration::from_secs(600) {
                    return (first.unwrap_or_default(), Duration::MAX, seconds);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    fill(a, peer, &bodies, senders).await?;
    let enqueued = started.elapsed();
    wait_metric(
        a,
        "delivered_total",
        delivered0 + n as u64,
        Duration::from_secs(600),
    )
    .await?;
    let delivered = started.elapsed();
    let cpu_s = match (cpu_before, process_cpu()) {
        (Some(x), Some(y)) => Some(y - x),
        _ => None,
    };
    let (b_first, b_last, b_seconds) = b_times.await?;
    if metric(a, "failed_total") != failed0 {
        bail!("some messages failed");
    }
    let attempts = metric(a, "attempts_total") - attempts0;
    Ok(Pipelined {
        messages: n,
        enqueued,
        delivered,
        b_first,
        b_last,
        b_seconds,
        cpu_s,
        retries: attempts.saturating_sub(n as u64),
    })
}

struct Setup {
    a: Arc<NodeState>,
    b: Arc<NodeState>,
    hello: ApiUrl,
    hello_ext: Option<ApiUrl>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.concurrency == 0 || args.senders == 0 || args.rounds == 0 {
        bail!("--concurrency, --senders and --rounds must be at least 1");
    }
    if args.messages == 0 || args.samples == 0 {
        bail!("--messages and --samples must be at least 1");
    }

    // The bare axum server: hello_world's route, and a POST that answers
    // about a receipt's size.
    let (stop_hello, stopped_hello) = tokio::sync::oneshot::channel::<()>();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let hello = ApiUrl::parse_origin(&format!("http://{}", listener.local_addr()?))?;
    let app = Router::new()
        .route("/", get(|| async { "Hello, World!" }))
        .route("/echo", post(|_body: Bytes| async { &ECHO_ANSWER[..] }));
    let hello_task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped_hello.await;
            })
            .await
    });
    let hello_ext = args
        .hello_url
        .as_deref()
        .map(ApiUrl::parse_origin)
        .transpose()
        .context("--hello-url")?;

    let agent_program = support_stats::openred_program(args.agent_program.as_ref())
        .context("locating the openred binary")?;
    if args.agent {
        if !agent_program.exists() {
            bail!(
                "{} is missing: build it (cargo build --release -p openred) or pass --agent-program",
                agent_program.display()
            );
        }
        println!(
            "crypto: agent processes ({} agent); messages do not use them",
            agent_program.display()
        );
    } else {
        println!("crypto: in process (danger_in_process_crypto); messages do not use the keys");
    }
    let requests_per_peer_per_s = args.requests_per_peer_per_s;
    let concurrency = args.concurrency;
    // The directory: private addresses allowed, rate limits off.
    let network = LocalNetwork::builder()
        .temp_prefix("openred-bench-msg-")
        .temp_dir_in(args.data_dir.clone())
        .directory_config(|c| c.rate_limits.enabled = false)
        .agents(if args.agent {
            Agents::Processes {
                program: Some(agent_program),
            }
        } else {
            Agents::InProcess
        })
        .node_config(move |config| {
            if let Some(n) = requests_per_peer_per_s {
                config.requests_per_peer_per_s = n;
            }
            config.module_settings.insert(
                "messaging".into(),
                // Inbox quotas out of the way: the runs send up to millions
                // of messages to one peer.
                serde_json::json!({
                    "in_flight_per_peer": concurrency,
                    "max_inbox_messages_per_peer": u64::MAX,
                    "max_inbox_bytes_per_peer": u64::MAX,
                    "max_inbox_bytes_total": u64::MAX,
                }),
            );
        })
        .named(["a", "b"])
        .registration_timeout(Duration::from_secs(60))
        .start()
        .await?;
    let setup = Setup {
        a: network.nodes[0].state.clone(),
        b: network.nodes[1].state.clone(),
        hello,
        hello_ext,
    };
    let connected = network
        .introduce(&network.nodes[0], &network.nodes[1])
        .await?;
    println!(
        "nodes registered, A connected to B in {:.1} ms (suite {}); data in {}",
        connected.elapsed.as_secs_f64() * 1e3,
        setup
            .a
            .session_suite(&setup.b.node_id())
            .map_or_else(|| "?".to_owned(), |s| s.to_string()),
        network.root().display()
    );
    println!(
        "{} messages of {} bytes per run, {} sequential samples, concurrency {} (in_flight_per_peer), {} send callers, {} round(s), tokio workers: {}",
        args.messages,
        args.body_bytes,
        args.samples,
        args.concurrency,
        args.senders,
        args.rounds,
        tokio::runtime::Handle::current().metrics().num_workers()
    );

    let results = run(&args, &setup).await?;
    report(&args, &results)?;

    let _ = stop_hello.send(());
    network.shutdown().await?;
    hello_task.await??;
    Ok(())
}

/// Runs every round; prints each run as it finishes.
async fn run(args: &Args, setup: &Setup) -> anyhow::Result<Results> {
    let (a, b) = (&setup.a, &setup.b);
    let peer = b.node_id();
    let n = args.messages;
    let c = args.concurrency;
    let body: Arc<str> = text(args.body_bytes, 0).into();
    // A POST body of a message frame's size: the JSON, the label, the
    // frame's header and tag.
    let frame_len = {
        let wire = WireMessage {
            message_id: "0".repeat(32),
            seq: 1,
            sent_at: 0,
            content_type: CONTENT_TYPE.to_owned(),
            body: body.to_string(),
        };
        serde_json::to_vec(&wire)?.len() + 1 + MESSAGE_PATH.len() + 64
    };
    let echo_body = Bytes::from(vec![b'x'; frame_len]);
    let seq = Arc::new(AtomicU64::new(1_000_000_000));
    let mut results = Results::default();

    let mut servers: Vec<(&'static str, &'static str, ApiUrl)> =
        vec![("hello", "axum hello-world (GET /)", setup.hello.clone())];
    if let Some(ext) = &setup.hello_ext {
        servers.push(("hello_ext", "axum hello-world, own process", ext.clone()));
    }

    if !args.wants("hello") {
        servers.clear();
    }

    // Warm-up: connections, caches, the allocator.
    for (_, _, origin) in &servers {
        sequential(args.warmup, |_| hello(a, origin)).await?;
    }
    if args.wants("echo") {
        sequential(args.warmup, |_| echo(a, &setup.hello, echo_body.clone())).await?;
    }
    if args.wants("ping") {
        sequential(args.warmup, |_| ping(a, peer)).await?;
    }
    sequential(args.warmup, |_| {
        exchange(a, peer, seq.fetch_add(1, Ordering::Relaxed), &body)
    })
    .await?;
    concurrent(args.warmup.max(c), c, {
        let (a, seq, body) = (a.clone(), seq.clone(), body.clone());
        move |_| {
            let (a, seq, body) = (a.clone(), seq.clone(), body.clone());
            async move { exchange(&a, peer, seq.fetch_add(1, Ordering::Relaxed), &body).await }
        }
    })
    .await?;

    for round in 1..=args.rounds {
        println!();
        println!("Round {round} of {}", args.rounds);
        println!(
            "{:<44} {:>7} {:>9} {:>8} {:>8} {:>9} {:>6} {:>7}",
            "throughput", "ops", "ops/s", "p50 ms", "p99 ms", "CPU µs/op", "cores", "retried"
        );
        let show = |what: &str, r: &Rate| {
            let load = stats(&r.latencies, 1e3);
            println!(
                "{what:<44} {:>7} {:>9.0} {:>8.3} {:>8.3} {:>9.1} {:>6.2} {:>7}",
                r.ops,
                r.per_s(),
                load.p50,
                load.p99,
                r.cpu_us_per_op(),
                r.cores(),
                r.rate_limited
            );
        };

        for (key, label, origin) in &servers {
            let samples = sequential(args.samples, |_| hello(a, origin)).await?;
            results.add_latencies(key, &samples);
            let rate = concurrent(n, c, {
                let (a, origin) = (a.clone(), origin.clone());
                move |_| {
                    let (a, origin) = (a.clone(), origin.clone());
                    async move { hello(&a, &origin).await }
                }
            })
            .await?;
            show(label, &rate);
            results.add_rate(key, &rate);
        }

        if args.wants("echo") {
            let samples =
                sequential(args.samples, |_| echo(a, &setup.hello, echo_body.clone())).await?;
            results.add_latencies("echo", &samples);
            let rate = concurrent(n, c, {
                let (a, origin, echo_body) = (a.clone(), setup.hello.clone(), echo_body.clone());
                move |_| {
                    let (a, origin, echo_body) = (a.clone(), origin.clone(), echo_body.clone());
                    async move { echo(&a, &origin, echo_body).await }
                }
            })
            .await?;
            show(&format!("axum POST /echo ({frame_len} B body)"), &rate);
            results.add_rate("echo", &rate);
        }

        if args.wants("ping") {
            let samples = sequential(args.samples, |_| ping(a, peer)).await?;
            results.add_latencies("ping", &samples);
            let rate = concurrent(n, c, {
                let a = a.clone();
                move |_| {
                    let a = a.clone();
                    async move { ping(&a, peer).await }
                }
            })
            .await?;
            show("encrypted ping (no storage)", &rate);
            results.add_rate("ping", &rate);
        }

        if args.wants("exchange") {
            let samples = sequential(args.samples, |_| {
                exchange(a, peer, seq.fetch_add(1, Ordering::Relaxed), &body)
            })
            .await?;
            results.add_latencies("exchange", &samples);
            let rate =
                concurrent(n, c, {
                    let (a, seq, body) = (a.clone(), seq.clone(), body.clone());
                    move |_| {
                        let (a, seq, body) = (a.clone(), seq.clone(), body.clone());
                        async move {
                            exchange(&a, peer, seq.fetch_add(1, Ordering::Relaxed), &body).await
                        }
                    }
                })
                .await?;
            show("message exchange (B commits, receipt)", &rate);
            results.add_rate("exchange", &rate);
        }

        if args.send_samples > 0 && args.wants("send") {
            // Every delivered message stays in A's outbox: what a delivery
            // pass reads through grows from round to round.
            let history = metric(a, "delivered_total");
            let [enqueued, inbox, delivered] =
                send_one_at_a_time(a, b, args.send_samples, args.body_bytes).await?;
            let s = stats(&delivered, 1e3);
            println!(
                "{:<44} {:>7} {:>9} {:>8.3} {:>8.3}   (one at a time; A's outbox held {history} delivered messages)",
                "send -> delivered, sequential",
                s.n,
                "",
                s.p50,
                s.p99
            );
            results.add("send_delivered_round_p50_ms", s.p50);
            results.add("send_history", history as f64);
            results.add_latencies("send_enqueued", &enqueued);
            results.add_latencies("send_inbox", &inbox);
            results.add_latencies("send_delivered", &delivered);
        }

        if args.wants("pipelined") {
            pipelined_run(args, a, b, &mut results).await?;
        }

        if args.wants("drain") {
            let (fill, drain) = fill_then_drain(a, b, n, args.senders, args.body_bytes).await?;
            show("  step 1: fill A's outbox (delivery off)", &fill);
            show("  step 2: drain it (send_one + marks on A)", &drain);
            results.add_rate("fill", &fill);
            results.add_rate("drain", &drain);
        }
    }
    Ok(results)
}

/// The pipelined run, printed and added to `results`.
async fn pipelined_run(
    args: &Args,
    a: &Arc<NodeState>,
    b: &Arc<NodeState>,
    results: &mut Results,
) -> anyhow::Result<()> {
    let p = pipelined(a, b, args.messages, args.senders, args.body_bytes).await?;
    let per_s = p.messages as f64 / p.delivered.as_secs_f64();
    let b_span = p.b_last.saturating_sub(p.b_first);
    let b_per_s = p.messages as f64 / b_span.as_secs_f64();
    let enqueue_per_s = p.messages as f64 / p.enqueued.as_secs_f64();
    let cpu_us = p.cpu_s.map_or(f64::NAN, |c| c * 1e6 / p.messages as f64);
    let cores = p.cpu_s.map_or(f64::NAN, |c| c / p.delivered.as_secs_f64());
    println!(
        "{:<44} {:>7} {:>9.0} {:>8} {:>8} {:>9.1} {:>6.2} {:>7}",
        "messaging, pipelined (send -> delivered)",
        p.messages,
        per_s,
        "",
        "",
        cpu_us,
        cores,
        p.retries
    );
    println!(
        "  all {} sends returned after {:.2} s ({:.0}/s into the outbox); delivered after {:.2} s; \
         B committed the first after {:.1} ms, the last after {:.2} s ({:.0}/s from B's side); retries {}",
        p.messages,
        p.enqueued.as_secs_f64(),
        enqueue_per_s,
        p.delivered.as_secs_f64(),
        p.b_first.as_secs_f64() * 1e3,
        p.b_last.as_secs_f64(),
        b_per_s,
        p.retries
    );
    if !p.b_seconds.is_empty() {
        let mut sorted = p.b_seconds.clone();
        sorted.sort_unstable();
        println!(
            "  B's commits per whole second ({} s): min {}, median {}, max {}; in order: {}",
            sorted.len(),
            sorted[0],
            sorted[sorted.len() / 2],
            sorted[sorted.len() - 1],
            p.b_seconds
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        );
        results.add("module_b_min_second", sorted[0] as f64);
    }
    results.add("module_per_s", per_s);
    results.add("module_b_per_s", b_per_s);
    results.add("module_enqueue_per_s", enqueue_per_s);
    results.add("module_seconds", p.delivered.as_secs_f64());
    results.add("module_cpu_us", cpu_us);
    results.add("module_cores", cores);
    results.add("module_retries", p.retries as f64);
    Ok(())
}

/// Prints the latency table, the medians and the verdicts; writes the
/// summary.
fn report(args: &Args, results: &Results) -> anyhow::Result<()> {
    let mut summary = String::new();
    let mut put = |k: &str, v: f64| {
        let _ = writeln!(summary, "msg\t{k}\t{v:.3}");
    };

    println!();
    println!(
        "Round trips, one request at a time ({} round(s) pooled):",
        args.rounds
    );
    print_header("ms");
    let rows: [(&str, &str); 8] = [
        ("hello", "axum hello-world (GET /)"),
        ("hello_ext", "axum hello-world, own process"),
        ("echo", "axum POST /echo (frame-sized body)"),
        ("ping", "encrypted ping (no storage)"),
        ("exchange", "message exchange (B commits, receipt)"),
        ("send_enqueued", "send: outbox commit (send returns)"),
        ("send_inbox", "send -> in B's inbox"),
        ("send_delivered", "send -> delivered on A"),
    ];
    for (key, label) in rows {
        let Some(samples) = results.latencies.get(key) else {
            continue;
        };
        let s = stats(samples, 1e3);
        print_row(label, &s);
        put(&format!("{key}_rtt_p50_ms"), s.p50);
        put(&format!("{key}_rtt_p90_ms"), s.p90);
        put(&format!("{key}_rtt_p99_ms"), s.p99);
        put(&format!("{key}_rtt_mean_ms"), s.mean);
    }
    for (key, values) in &results.values {
        if values.len() > 1 {
            println!(
                "  {key}: rounds {}",
                values
                    .iter()
                    .map(|v| format!("{v:.1}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        put(key, results.median(key));
    }

    let hello_rate = results.median("hello_per_s");
    let module_rate = results.median("module_per_s");
    let exchange_rate = results.median("exchange_per_s");
    let rtt = |k: &str| {
        results
            .latencies
            .get(k)
            .map_or(f64::NAN, |s| stats(s, 1e3).p50)
    };
    let (hello_p50, exchange_p50, delivered_p50) =
        (rtt("hello"), rtt("exchange"), rtt("send_delivered"));
    put("module_vs_hello", module_rate / hello_rate);
    put("exchange_vs_hello", exchange_rate / hello_rate);
    put("exchange_rtt_vs_hello", exchange_p50 / hello_p50);
    put("send_rtt_vs_hello", delivered_p50 / hello_p50);

    println!();
    println!("Messaging vs bare axum (medians of the rounds):");
    println!(
        "  pipelined messaging {module_rate:.0} msg/s, hello-world {hello_rate:.0} req/s at concurrency {}: {:.1}% of hello-world",
        args.concurrency,
        100.0 * module_rate / hello_rate
    );
    println!(
        "  message exchanges {exchange_rate:.0}/s: {:.1}% of hello-world",
        100.0 * exchange_rate / hello_rate
    );
    println!(
        "  round trip p50: exchange {exchange_p50:.3} ms, hello-world {hello_p50:.3} ms: {:.1}x",
        exchange_p50 / hello_p50
    );
    println!(
        "  target >= {:.0} msg/s pipelined: {}",
        args.target_rate,
        if module_rate >= args.target_rate {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "  target round trip p50 <= {} ms (exchange): {}; send -> delivered p50 {delivered_p50:.3} ms: {}",
        args.target_p50_ms,
        if exchange_p50 <= args.target_p50_ms {
            "met"
        } else {
            "MISSED"
        },
        if delivered_p50 <= args.target_p50_ms {
            "met"
        } else {
            "missed"
        },
    );

    if let Some(path) = &args.summary {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        f.write_all(summary.as_bytes())?;
    }
    Ok(())
}
