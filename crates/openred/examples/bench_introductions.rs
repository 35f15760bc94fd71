//! Introduction latency: from asking the directory for an introduction to
//! the session being confirmed, over many introductions on loopback.
//!
//! ```text
//! cargo run --release -p openred --example bench_introductions -- --count 1000
//!     [--nodes 10] [--warmup N] [--concurrency 1] [--split 200]
//!     [--data-dir DIR] [--summary FILE]
//! ```
//!
//! Starts, in this process and on free loopback ports, a directory (private
//! addresses allowed, rate limits off) and `--nodes` nodes, each in its own
//! data directory under a fresh temporary folder (in `--data-dir`, else the
//! system's temporary directory: that is where the SQLite files, and their
//! fsyncs, go). Once every node is registered it runs `--count`
//! introductions, cycling over every ordered pair of nodes, and times each
//! `NodeState::connect(peer)` call. That call, and so the timing, covers:
//!
//! 1. A signs a connection request; HTTP POST to the directory, which
//!    verifies it, records the nonce (SQLite write), mints the token pair
//!    (two HPKE seals, Ed25519 signatures) and pushes token_b to B (HTTP
//!    POST; B verifies and HPKE-opens it, remembers A's record and stores
//!    the token: two SQLite writes) before answering A with token_a;
//! 2. A verifies and HPKE-opens token_a and remembers B's record (SQLite);
//! 3. the Noise KK handshake: A builds message 1, HTTP POST to B, which
//!    looks the token up, opens it again, answers and burns the connection
//!    ID (SQLite write) before replying; A tombstones its own half (SQLite
//!    write) and finishes;
//! 4. A's first encrypted ping and B's encrypted pong (HTTP POST), which
//!    confirms the session.
//!
//! Every HTTP request goes through the nodes' and the directory's real
//! outbound clients (kept-alive connections) and real axum servers. With
//! `--split N` (default 200, 0 to skip) it then times parts of that path
//! on their own, N times each: the directory round trip of step 1, A's
//! HPKE open of token_a, the handshake's computation alone (both sides, no
//! I/O), one SQLite write on a node (a tombstone), and a ping.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/stats.rs"]
mod support_stats;
use support_stats::{stats, Stats};

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use openred::testnet::{Agents, LocalNetwork};
use openred::SystemClock;
use openred_core::handshake::{self, Authority, HandshakeContext};
use openred_core::session::{Role, Session};
use openred_core::token::LinkKey;
use openred_core::{Clock, NodeId};
use openred_node::{NodeKeys, NodeState};

#[derive(Parser)]
#[command(about = "Introduction latency on loopback")]
struct Args {
    /// Introductions to time.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Nodes; introductions cycle over every ordered pair.
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// Untimed introductions first (default: one per ordered pair, at most 100).
    #[arg(long)]
    warmup: Option<usize>,
    /// Introductions in flight at once (each worker owns its own pairs).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Most introductions started per second (0: no pacing). Default: 18 per
    /// node, 90% of the outbound client's per-host quota (20/s, burst 40):
    /// every node asks the same directory, and the directory pushes to every
    /// node, so going faster fails with "too many requests to this peer".
    #[arg(long)]
    max_rate: Option<f64>,
    /// Samples of each part of the path, timed on its own (0: skip).
    #[arg(long, default_value_t = 200)]
    split: usize,
    /// Where to create the temporary data folder.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Append `intro<TAB>metric<TAB>value` lines to this file.
    #[arg(long)]
    summary: Option<PathBuf>,
    /// The `openred` binary to start each node's crypto agent with
    /// (default: `openred` next to the folder of this example; see
    /// `--in-process` for none).
    #[arg(long)]
    agent_program: Option<PathBuf>,
    /// Keep the keys in this process (`danger_in_process_crypto`): the
    /// comparison without the agent.
    #[arg(long)]
    in_process: bool,
}

fn print_row(what: &str, s: &Stats) {
    println!(
        "{what:<34} {:>6} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
        s.n, s.min, s.p50, s.p90, s.p99, s.max, s.mean
    );
}

fn print_header() {
    println!(
        "{:<34} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "ms", "n", "min", "p50", "p90", "p99", "max", "mean"
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.nodes < 2 {
        bail!("--nodes must be at least 2");
    }
    let pairs: Vec<(usize, usize)> = (0..args.nodes)
        .flat_map(|a| {
            (0..args.nodes)
                .filter(move |b| *b != a)
                .map(move |b| (a, b))
        })
        .collect();
    if args.concurrency == 0 || args.concurrency > pairs.len() {
        bail!("--concurrency must be between 1 and {}", pairs.len());
    }
    let warmup = args.warmup.unwrap_or(pairs.len().min(100));
    let max_rate = args.max_rate.unwrap_or(18.0 * args.nodes as f64);
    let pacer = Arc::new(Pacer::new(max_rate));

    let agent_program = support_stats::openred_program(args.agent_program.as_ref())
        .context("locating the openred binary")?;
    if args.in_process {
        println!("crypto: in process (danger_in_process_crypto)");
    } else {
        if !agent_program.exists() {
            bail!(
                "{} is missing: build it (cargo build --release -p openred) or pass --agent-program or --in-process",
                agent_program.display()
            );
        }
        println!(
            "crypto: agent processes ({} agent)",
            agent_program.display()
        );
    }
    // The directory: private addresses allowed, rate limits off.
    let network = LocalNetwork::builder()
        .temp_prefix("openred-bench-intro-")
        .temp_dir_in(args.data_dir.clone())
        .directory_config(|c| c.rate_limits.enabled = false)
        .agents(if args.in_process {
            Agents::InProcess
        } else {
            Agents::Processes {
                program: Some(agent_program),
            }
        })
        .nodes(args.nodes)
        .registration_timeout(Duration::from_secs(60))
        .start()
        .await?;
    let states: Vec<Arc<NodeState>> = network.nodes.iter().map(|n| n.state.clone()).collect();
    println!(
        "{} nodes registered; data in {}; {} ordered pairs; warm-up {warmup}, timed {}, concurrency {}",
        args.nodes,
        network.root().display(),
        pairs.len(),
        args.count,
        args.concurrency
    );

    // Warm-up: kept-alive connections, SQLite caches, the allocator.
    let mut warm = Vec::with_capacity(warmup);
    for k in 0..warmup {
        let (a, b) = pairs[k % pairs.len()];
        pacer.wait().await;
        let c = states[a]
            .connect(states[b].node_id())
            .await
            .with_context(|| format!("warm-up introduction {a} -> {b}"))?;
        warm.push(c.elapsed);
    }

    // The timed introductions.
    let cpu_before = process_cpu();
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let mine: Vec<(usize, usize)> = pairs
            .iter()
            .copied()
            .enumerate()
            .filter(|(i, _)| i % args.concurrency == w)
            .map(|(_, p)| p)
            .collect();
        let share = args.count / args.concurrency + usize::from(w < args.count % args.concurrency);
        let states = states.clone();
        let pacer = pacer.clone();
        workers.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(share);
            for k in 0..share {
                let (a, b) = mine[k % mine.len()];
                pacer.wait().await;
                let t0 = Instant::now();
                let c = states[a]
                    .connect(states[b].node_id())
                    .await
                    .with_context(|| format!("introduction {a} -> {b}"))?;
                // `connected.elapsed` is measured inside `connect`; the
                // outer clock adds only the call itself.
                let outer = t0.elapsed();
                out.push((c.established, c.elapsed, outer));
            }
            anyhow::Ok(out)
        }));
    }
    let mut established = Vec::with_capacity(args.count);
    let mut inner = Vec::with_capacity(args.count);
    let mut outer = Vec::with_capacity(args.count);
    for w in workers {
        for (e, i, o) in w.await?? {
            established.push(e);
            inner.push(i);
            outer.push(o);
        }
    }
    let total = started.elapsed();
    let rate = args.count as f64 / total.as_secs_f64();
    let paced = pacer.waited();
    let cpu_per_intro = match (cpu_before, process_cpu()) {
        (Some(a), Some(b)) => Some((b - a) / args.count.max(1) as f64),
        _ => None,
    };

    println!();
    print_header();
    // The issue's figure: from request-connection to the session
    // established (message 2 checked and the session installed on A; B
    // installed it before answering). `connect` then confirms it with a
    // ping, the next two rows.
    let timed = stats(&established, 1e3);
    let confirmed = stats(&outer, 1e3);
    print_row("introduction, to established", &timed);
    print_row("introduction + confirming ping", &confirmed);
    print_row("  the same, inside connect", &stats(&inner, 1e3));
    if !warm.is_empty() {
        print_row("  warm-up introductions", &stats(&warm, 1e3));
    }
    println!(
        "{} introductions in {:.2} s: {:.1} introductions/s (concurrency {})",
        args.count,
        total.as_secs_f64(),
        rate,
        args.concurrency
    );
    if let Some(cpu) = cpu_per_intro {
        println!(
            "CPU: {:.2} ms per introduction (user + system, every thread of this process: directory, nodes and client)",
            cpu * 1e3
        );
    }
    if max_rate > 0.0 {
        println!(
            "pacing: at most {max_rate:.0} introductions/s started; workers waited {:.2} s in all for a slot{}",
            paced.as_secs_f64(),
            // Waits are summed over the workers.
            if paced.as_secs_f64() > 0.05 * total.as_secs_f64() * args.concurrency as f64 {
                " (so the rate above is partly the pacing's)"
            } else {
                ""
            }
        );
    }

    let mut summary = String::new();
    for (k, v) in [
        ("p50_ms", timed.p50),
        ("p90_ms", timed.p90),
        ("p99_ms", timed.p99),
        ("max_ms", timed.max),
        ("mean_ms", timed.mean),
        ("confirmed_p50_ms", confirmed.p50),
        ("confirmed_p99_ms", confirmed.p99),
        ("per_s", rate),
        ("paced_s", paced.as_secs_f64()),
        ("cpu_ms", cpu_per_intro.unwrap_or(f64::NAN) * 1e3),
    ] {
        let _ = writeln!(summary, "intro\t{k}\t{v:.3}");
    }

    if args.split > 0 {
        println!();
        println!(
            "Parts of the path, each timed alone ({} samples, cycling over the pairs):",
            args.split
        );
        print_header();
        let split = split(&states, &pairs, &pacer, args.split).await?;
        for (name, key, samples) in &split {
            let s = stats(samples, 1e3);
            print_row(name, &s);
            let _ = writeln!(summary, "intro\tsplit_{key}_p50_ms\t{:.3}", s.p50);
        }
    }

    if let Some(path) = &args.summary {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        f.write_all(summary.as_bytes())?;
    }

    network.shutdown().await?;
    Ok(())
}

/// One handshake side's ephemeral seed, drawn as the agent draws it (the
/// core's handshake takes its randomness as an argument).
fn seed() -> anyhow::Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("randomness: {e}"))?;
    Ok(seed)
}

/// User + system CPU seconds of the whole process, from `/proc/self/stat`.
fn process_cpu() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the `(comm)`, which may contain spaces: utime and stime
    // are fields 14 and 15 of the whole line, 12 and 13 after the `)`.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    // USER_HZ is 100 on every Linux ABI in use.
    Some((utime + stime) / 100.0)
}

type Parts = Vec<(&'static str, &'static str, Vec<Duration>)>;

/// Spaces out the starts of introductions (outside every timing).
struct Pacer {
    interval: Option<Duration>,
    next: tokio::sync::Mutex<Instant>,
    waited: std::sync::Mutex<Duration>,
}

impl Pacer {
    fn new(max_rate: f64) -> Pacer {
        Pacer {
            interval: (max_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / max_rate)),
            next: tokio::sync::Mutex::new(Instant::now()),
            waited: std::sync::Mutex::new(Duration::ZERO),
        }
    }

    async fn wait(&self) {
        let Some(interval) = self.interval else {
            return;
        };
        let slot = {
            let mut next = self.next.lock().await;
            let slot = (*next).max(Instant::now());
            *next = slot + interval;
            slot
        };
        let now = Instant::now();
        if slot > now {
            *self.waited.lock().unwrap() += slot - now;
            tokio::time::sleep_until(slot.into()).await;
        }
    }

    fn waited(&self) -> Duration {
        *self.waited.lock().unwrap()
    }
}

/// Times parts of an introduction on their own, cycling over the pairs.
async fn split(
    states: &[Arc<NodeState>],
    pairs: &[(usize, usize)],
    pacer: &Pacer,
    n: usize,
) -> anyhow::Result<Parts> {
    let pair = |i: usize| {
        let (a, b) = pairs[i % pairs.len()];
        (&states[a], &states[b])
    };

    // 1. The directory round trip, token_b's push to B included.
    let mut directory = Vec::with_capacity(n);
    let mut last = None;
    for i in 0..n {
        let (a, b) = pair(i);
        pacer.wait().await;
        let now = SystemClock.now();
        let t0 = Instant::now();
        let envelope = a
            .directory()
            .request_connection(a.outbound(), a.store(), a.crypto(), &b.node_id(), now)
            .await?;
        directory.push(t0.elapsed());
        last = Some((envelope, a, b));
    }
    let (envelope_a, a, b) = last.context("no token")?;
    let me: NodeId = a.node_id();
    let peer: NodeId = b.node_id();
    // The raw computations below run on keys read from disk, in this
    // process, whichever mode the nodes use.
    let a_keys = NodeKeys::load(a.data_dir())?;
    let b_keys = NodeKeys::load(b.data_dir())?;

    // 2. A's HPKE open of token_a.
    let mut open = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let opened = envelope_a.open(&me, &a_keys.agreement_secret())?;
        open.push(t0.elapsed());
        std::hint::black_box(opened);
    }

    // 3. The handshake's computation, both sides, no I/O: the link keys of
    // the last token pair (B's half read back from B's store).
    let opened_a = envelope_a.open(&me, &a_keys.agreement_secret())?;
    let connection_id = envelope_a.connection_id();
    let (_, stored) = b.store().token(&connection_id).await?;
    let stored = stored.context("token_b not in B's store")?;
    let verify = openred_core::token::LinkVerifyingKey::from_bytes(&stored.link_public)?;
    let LinkKey::Signing(sign) = &opened_a.link else {
        bail!("unexpected link key half");
    };
    let context = HandshakeContext {
        connection_id,
        initiator: me,
        target: peer,
        authority: Authority::Introduction {
            link_public: opened_a.link.verifying_bytes(),
        },
        offer: a.config().suites.clone(),
    };
    let b_record_key = opened_a.peer_record.record().agreement_key.0;
    let a_record_key = stored.initiator_record.record().agreement_key.0;
    let mut hs = Vec::with_capacity(n);
    for _ in 0..n {
        let now = SystemClock.now();
        let t0 = Instant::now();
        let (pending, m1) = handshake::initiate(
            &a_keys.agreement_secret(),
            &a_keys.agreement_public().0,
            &b_record_key,
            &context,
            seed()?,
            |h| sign.sign_handshake_proof(h),
        )?;
        let (rb, m2) = handshake::respond(
            &b_keys.agreement_secret(),
            &b_keys.agreement_public().0,
            &a_record_key,
            &context,
            &m1,
            &b.config().suites,
            seed()?,
            |h, p| verify.verify_handshake_proof(h, p).is_ok(),
        )?;
        let sb = Session::new(
            Role::Responder,
            rb.suite,
            &rb.handshake_hash,
            &rb.i2r,
            &rb.r2i,
            now,
            b.config().epoch,
        );
        let ra = pending.finish(&m2)?;
        let sa = Session::new(
            Role::Initiator,
            ra.suite,
            &ra.handshake_hash,
            &ra.i2r,
            &ra.r2i,
            now,
            a.config().epoch,
        );
        hs.push(t0.elapsed());
        if sa.session_id() != sb.session_id() {
            bail!("the handshake did not agree");
        }
    }

    // 4. One SQLite commit on a node (WAL, synchronous = FULL): the
    // initiator's tombstone and peer record, for a connection ID no token
    // uses.
    let mut write = Vec::with_capacity(n);
    for i in 0..n {
        let (a, _) = pair(i);
        let mut cid = [0u8; 16];
        cid[..8].copy_from_slice(&(i as u64).to_be_bytes());
        cid[8..].copy_from_slice(b"bench-wr");
        let expires = SystemClock.now().plus(300);
        let t0 = Instant::now();
        a.store()
            .record_introduction(&cid, expires, &opened_a.peer_record, SystemClock.now())
            .await?;
        write.push(t0.elapsed());
    }

    // 5. A ping over an established session.
    let mut ping = Vec::with_capacity(n);
    for i in 0..n {
        let (a, b) = pair(i);
        if a.sessions().with_peer(&b.node_id()).is_none() {
            pacer.wait().await;
            a.connect(b.node_id()).await?;
        }
        pacer.wait().await;
        ping.push(a.ping(&b.node_id()).await?);
    }

    // 6. The transport alone: a GET of B's health endpoint through A's
    // outbound client, the floor under each of the 4 requests.
    let mut http = Vec::with_capacity(n);
    for i in 0..n {
        let (a, b) = pair(i);
        let url = a
            .store()
            .peer(&b.node_id())
            .await?
            .context("B is a known peer")?
            .record()
            .api_url
            .clone();
        pacer.wait().await;
        let t0 = Instant::now();
        let response = a.outbound().get(&url, "/api/v3/health").await?;
        http.push(t0.elapsed());
        if !response.is_success() {
            bail!("health answered {}", response.status);
        }
    }

    Ok(vec![
        ("directory round trip (+ push to B)", "directory", directory),
        ("HPKE open of token_a", "token_open", open),
        ("handshake computation (A+B)", "handshake_cpu", hs),
        ("one SQLite write (node)", "sqlite_write", write),
        ("encrypted ping round trip", "ping", ping),
        ("plain HTTP round trip (GET health)", "http_rtt", http),
    ])
}
