//! The crypto agent's overhead: a signature through the agent process next
//! to the same request handled in this process, in one run.
//!
//! ```text
//! cargo build --release -p openred --bin openred --example bench_agent
//! target/release/examples/bench_agent [--samples 2000] [--rounds 5]
//!     [--paced-samples 500] [--pause-us 1000]
//!     [--concurrency 1,4,16] [--seconds 1] [--agent-program PATH]
//!     [--summary FILE]
//! ```
//!
//! Creates one node identity in a fresh temporary folder, then holds two
//! [`Crypto`] handles on the same keys: `Crypto::start_agent` (the launcher
//! and an agent process, from the `openred` binary, as a node runs it) and
//! `Crypto::in_process` (the agent's request handler called in this
//! process: `danger_in_process_crypto`). Both answer the same typed
//! requests with the same code; the difference between them is the IPC.
//!
//! In each of `--rounds` rounds, every measurement runs once per mode, the
//! order of the modes alternating from round to round, so that both see the
//! same drift of a shared machine:
//!
//! - **latency**: `--samples` sequential calls of `sign_connection_request`
//!   (the headline), `agent_status` (a round trip with no private-key work)
//!   and `sign_record` (whose answer the node decodes and verifies), each
//!   call timed alone; then `--paced-samples` calls of
//!   `sign_connection_request`, each after `--pause-us` of idling, as a
//!   node calls its agent during introductions (a few calls, then
//!   nothing);
//! - **throughput**: `C` tasks calling `sign_connection_request` in a loop
//!   for `--seconds`, for each `C` of `--concurrency`, with the CPU time of
//!   this process and of the agent process;
//! - **references**: raw Ed25519 signing with `NodeKeys::sign` (no request
//!   handling), and socket round trips of 80 bytes each way with no work
//!   at the far end, in this process: between two threads; from a tokio
//!   task to a thread; from a tokio task to a reader thread that hands
//!   each frame to a worker thread, as the agent does. They split the
//!   agent's round trip into wake-ups.
//!
//! The verdict: agent overhead p50 = agent p50 − in-process p50 of
//! `sign_connection_request`, against `--target-us` (30 µs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/stats.rs"]
mod support_stats;
use support_stats::{stats, Stats};

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use openred::SystemClock;
use openred_core::wire::connection_request_message;
use openred_core::{ApiUrl, Clock, NodeId, UnixTime};
use openred_node::agent::identity::NodeSignature;
use openred_node::agent::Crypto;
use openred_node::NodeKeys;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
#[command(about = "Crypto agent overhead: signatures through the agent vs in process")]
struct Args {
    /// Timed calls per operation, mode and round (latency).
    #[arg(long, default_value_t = 2000)]
    samples: usize,
    /// Timed calls after an idle pause, per mode and round (0: skip).
    #[arg(long, default_value_t = 500)]
    paced_samples: usize,
    /// The idle pause before each paced call, in microseconds (the tokio
    /// timer rounds it up to whole milliseconds).
    #[arg(long, default_value_t = 1000)]
    pause_us: u64,
    /// Rounds; each runs every measurement once per mode.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Concurrent callers for the throughput runs, comma-separated.
    #[arg(long, default_value = "1,4,16", value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Seconds per throughput run (per concurrency, mode and round).
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Untimed calls per mode before the first round.
    #[arg(long, default_value_t = 500)]
    warmup: usize,
    /// The `openred` binary that runs the launcher and the agent (default:
    /// `openred` in the parent of this example's folder, i.e.
    /// `target/release/openred`).
    #[arg(long)]
    agent_program: Option<PathBuf>,
    /// Where to create the temporary folder with the keys.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The overhead target, in microseconds.
    #[arg(long, default_value_t = 30.0)]
    target_us: f64,
    /// Append `agent<TAB>metric<TAB>value` lines to this file.
    #[arg(long)]
    summary: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Agent,
    InProcess,
}

impl Mode {
    fn key(self) -> &'static str {
        match self {
            Mode::Agent => "agent",
            Mode::InProcess => "inproc",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Mode::Agent => "agent process",
            Mode::InProcess => "in process",
        }
    }
}

#[derive(Clone, Copy)]
enum Op {
    SignConnectionRequest,
    Status,
    SignRecord,
}

impl Op {
    const ALL: [Op; 3] = [Op::SignConnectionRequest, Op::Status, Op::SignRecord];

    fn key(self) -> &'static str {
        match self {
            Op::SignConnectionRequest => "sign",
            Op::Status => "status",
            Op::SignRecord => "record",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Op::SignConnectionRequest => "sign_connection_request",
            Op::Status => "agent_status (no signing)",
            Op::SignRecord => "sign_record (+ decode, verify)",
        }
    }
}

fn print_header() {
    println!(
        "{:<46} {:>7} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8}",
        "µs", "n", "min", "p50", "p90", "p99", "max", "mean"
    );
}

fn print_row(what: &str, s: &Stats) {
    println!(
        "{what:<46} {:>7} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>8.1}",
        s.n, s.min, s.p50, s.p90, s.p99, s.max, s.mean
    );
}

fn list(values: &[f64], decimals: usize) -> String {
    values
        .iter()
        .map(|v| format!("{v:.decimals$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// User + system CPU seconds of every thread of process `pid` ("self" for
/// this one), from `/proc/PID/stat`. The agent is not dumpable, but its
/// `stat` stays readable.
fn process_cpu(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`, which may contain spaces: utime and stime
    // are fields 14 and 15 of the whole line, 12 and 13 after the `)`.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    // USER_HZ is 100 on every Linux ABI in use.
    Some((utime + stime) / 100.0)
}

/// What one mode is run with.
struct Subject {
    mode: Mode,
    crypto: Arc<Crypto>,
    /// The agent's pid, for its CPU time.
    agent_pid: Option<u32>,
}

/// Inputs that change on every call, so that no layer can answer from a
/// cache: a fresh nonce (a counter) and the clock.
struct Inputs {
    target: NodeId,
    url: ApiUrl,
    counter: AtomicU64,
}

impl Inputs {
    fn nonce(&self) -> [u8; 16] {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&n.to_be_bytes());
        nonce[8..].copy_from_slice(b"bench-ag");
        nonce
    }
}

fn now() -> UnixTime {
    SystemClock.now()
}

/// One call of `op`, timed; the inputs are prepared before the clock starts.
async fn call(crypto: &Crypto, op: Op, inputs: &Inputs) -> anyhow::Result<Duration> {
    let issued_at = now();
    Ok(match op {
        Op::SignConnectionRequest => {
            let nonce = inputs.nonce();
            let t0 = Instant::now();
            let s = crypto
                .sign_connection_request(&inputs.target, &nonce, issued_at)
                .await?;
            let elapsed = t0.elapsed();
            std::hint::black_box(s);
            elapsed
        }
        Op::Status => {
            let t0 = Instant::now();
            let s = crypto.agent_status().await?;
            let elapsed = t0.elapsed();
            std::hint::black_box(s);
            elapsed
        }
        Op::SignRecord => {
            let seq = inputs.counter.fetch_add(1, Ordering::Relaxed) + 1;
            let t0 = Instant::now();
            let r = crypto
                .sign_record(&inputs.url, seq, issued_at, issued_at.plus(3600))
                .await?;
            let elapsed = t0.elapsed();
            std::hint::black_box(r);
            elapsed
        }
    })
}

/// Throughput: `callers` tasks sign in a loop until the deadline.
struct Throughput {
    per_s: f64,
    /// CPU µs per signature in this process.
    node_cpu_us: Option<f64>,
    /// CPU µs per signature in the agent process.
    agent_cpu_us: Option<f64>,
    /// Latencies of the calls made under this load.
    latencies: Vec<Duration>,
}

async fn throughput(
    subject: &Subject,
    inputs: &Arc<Inputs>,
    callers: usize,
    seconds: f64,
) -> anyhow::Result<Throughput> {
    let agent_pid = subject.agent_pid.map(|p| p.to_string());
    let node_before = process_cpu("self");
    let agent_before = agent_pid.as_deref().and_then(process_cpu);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::with_capacity(callers);
    for _ in 0..callers {
        let crypto = subject.crypto.clone();
        let inputs = inputs.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let issued_at = now();
            // In process, a call never yields, so the first tasks to run
            // keep the runtime's workers until the deadline: the count is
            // still the rate the workers sign at.
            while Instant::now() < deadline {
                let nonce = inputs.nonce();
                let t0 = Instant::now();
                let s = crypto
                    .sign_connection_request(&inputs.target, &nonce, issued_at)
                    .await?;
                latencies.push(t0.elapsed());
                std::hint::black_box(s);
            }
            anyhow::Ok((latencies, Instant::now()))
        }));
    }
    let mut latencies = Vec::new();
    let mut last = started;
    for task in tasks {
        let (mine, ended) = task.await??;
        latencies.extend(mine);
        last = last.max(ended);
    }
    let elapsed = (last - started).as_secs_f64();
    let node_after = process_cpu("self");
    let agent_after = agent_pid.as_deref().and_then(process_cpu);
    let count = latencies.len().max(1) as f64;
    let per_sig = |before: Option<f64>, after: Option<f64>| match (before, after) {
        (Some(b), Some(a)) => Some((a - b) / count * 1e6),
        _ => None,
    };
    Ok(Throughput {
        per_s: latencies.len() as f64 / elapsed,
        node_cpu_us: per_sig(node_before, node_after),
        agent_cpu_us: per_sig(agent_before, agent_after),
        latencies,
    })
}

/// Round trips of `size` bytes each way between two threads of this
/// process over a Unix socket pair, blocking I/O, no work at the far end:
/// two thread wake-ups, the kernel's floor under any IPC round trip.
fn thread_ping_pong(samples: usize, size: usize) -> anyhow::Result<Vec<Duration>> {
    let (mut near, mut far) = StdUnixStream::pair()?;
    let echo = std::thread::spawn(move || {
        let mut buf = vec![0u8; size];
        while far.read_exact(&mut buf).is_ok() {
            if far.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let mut buf = vec![7u8; size];
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t0 = Instant::now();
        near.write_all(&buf)?;
        near.read_exact(&mut buf)?;
        out.push(t0.elapsed());
    }
    drop(near);
    let _ = echo.join();
    Ok(out)
}

/// The same from a tokio task (the runtime's reactor on the near side, as
/// for the agent's client) to an echo thread.
async fn tokio_ping_pong(samples: usize, size: usize) -> anyhow::Result<Vec<Duration>> {
    let (near, mut far) = StdUnixStream::pair()?;
    near.set_nonblocking(true)?;
    let mut near = tokio::net::UnixStream::from_std(near)?;
    let echo = std::thread::spawn(move || {
        let mut buf = vec![0u8; size];
        while far.read_exact(&mut buf).is_ok() {
            if far.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let out = time_round_trips(&mut near, size, samples).await?;
    drop(near);
    let _ = echo.join();
    Ok(out)
}

/// The same from a tokio task to the agent's shape at the far end: a reader
/// thread that passes each frame over a channel to a worker thread, which
/// writes the answer (`agent::process::serve`), still with no work. The
/// difference to [`tokio_ping_pong`] is the price of that hand-off.
async fn handoff_ping_pong(samples: usize, size: usize) -> anyhow::Result<Vec<Duration>> {
    let (near, mut far) = StdUnixStream::pair()?;
    near.set_nonblocking(true)?;
    let mut near = tokio::net::UnixStream::from_std(near)?;
    let mut answer = far.try_clone()?;
    let (jobs, queue) = std::sync::mpsc::sync_channel::<Vec<u8>>(64);
    let worker = std::thread::spawn(move || {
        while let Ok(frame) = queue.recv() {
            if answer.write_all(&frame).is_err() {
                break;
            }
        }
    });
    let reader = std::thread::spawn(move || loop {
        let mut frame = vec![0u8; size];
        if far.read_exact(&mut frame).is_err() || jobs.send(frame).is_err() {
            break;
        }
    });
    let out = time_round_trips(&mut near, size, samples).await?;
    drop(near);
    let _ = reader.join();
    let _ = worker.join();
    Ok(out)
}

/// Pooled results of one measurement in one mode.
#[derive(Default)]
struct Series {
    samples: Vec<Duration>,
    /// p50 of each round, µs.
    round_p50: Vec<f64>,
}

impl Series {
    fn add(&mut self, samples: Vec<Duration>) {
        self.round_p50.push(stats(&samples, 1e6).p50);
        self.samples.extend(samples);
    }
}

#[derive(Default)]
struct Load {
    per_s: Vec<f64>,
    node_cpu_us: Vec<f64>,
    agent_cpu_us: Vec<f64>,
    latencies: Vec<Duration>,
}

/// The frame sizes of a `sign_connection_request` round trip, rounded: a
/// request of about 70 bytes, an answer of about 80.
const FRAME_BYTES: usize = 80;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.samples == 0 || args.rounds == 0 {
        bail!("--samples and --rounds must be at least 1");
    }
    if args.concurrency.contains(&0) {
        bail!("--concurrency values must be at least 1");
    }

    let program = support_stats::openred_program(args.agent_program.as_ref())
        .context("locating the openred binary")?;
    if !program.exists() {
        bail!(
            "{} is missing: build it (cargo build --release -p openred --bin openred) or pass --agent-program",
            program.display()
        );
    }

    let mut builder = tempfile::Builder::new();
    builder.prefix("openred-bench-agent-");
    let root = match &args.data_dir {
        Some(dir) => builder.tempdir_in(dir),
        None => builder.tempdir(),
    }
    .context("creating a temporary folder")?;
    let data = root.path().join("node");
    let keys = NodeKeys::create(&data)?;
    let key_dir = openred_node::agent::identity::key_dir(&data);

    let agent = Crypto::start_agent(&program, &key_dir)
        .await
        .map_err(|e| anyhow::anyhow!("starting the agent from {}: {e}", program.display()))?;
    let in_process = Crypto::in_process(NodeKeys::load(&data)?, Arc::new(SystemClock)).await?;
    if agent.node_id() != keys.node_id() || in_process.node_id() != keys.node_id() {
        bail!("the two modes do not hold the same keys");
    }
    let agent_pid = agent.agent_process().map(|(pid, _)| pid);
    println!(
        "agent: {} (pid {}), protections {}",
        program.display(),
        agent_pid.map_or("?".into(), |p| p.to_string()),
        agent.agent_protections()
    );
    println!(
        "runtime: tokio multi-thread, {} workers; {} CPUs",
        tokio::runtime::Handle::current().metrics().num_workers(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let inputs = Arc::new(Inputs {
        // Any node but this one: the agent refuses to sign for itself.
        target: NodeId::from_bytes([0x42; 32]),
        url: ApiUrl::parse_origin("https://node.example.org")?,
        counter: AtomicU64::new(1),
    });

    // Both modes must produce the very signature `NodeKeys::sign` makes
    // (Ed25519 is deterministic): the same work, checked before timing it.
    let issued_at = now();
    let nonce = inputs.nonce();
    let expected = keys.sign(
        NodeSignature::ConnectionRequest,
        &connection_request_message(&keys.node_id(), &inputs.target, &nonce, issued_at),
    );
    for crypto in [&agent, &in_process] {
        let s = crypto
            .sign_connection_request(&inputs.target, &nonce, issued_at)
            .await?;
        if s != expected {
            bail!("a mode signed something else than NodeKeys::sign");
        }
    }

    let subjects = [
        Subject {
            mode: Mode::Agent,
            crypto: Arc::new(agent),
            agent_pid,
        },
        Subject {
            mode: Mode::InProcess,
            crypto: Arc::new(in_process),
            agent_pid: None,
        },
    ];

    // Warm-up: the agent's pages and threads, the allocator, the caches.
    for subject in &subjects {
        for op in Op::ALL {
            for _ in 0..args.warmup {
                call(&subject.crypto, op, &inputs).await?;
            }
        }
    }
    println!(
        "{} rounds; per round and mode: {} calls per operation, {} after a {} µs pause, {} s per concurrency {:?}; warm-up {}",
        args.rounds,
        args.samples,
        args.paced_samples,
        args.pause_us,
        args.seconds,
        args.concurrency,
        args.warmup
    );

    // [mode][op]
    let mut latency: Vec<Vec<Series>> = (0..2)
        .map(|_| Op::ALL.iter().map(|_| Series::default()).collect())
        .collect();
    let mut paced: Vec<Series> = (0..2).map(|_| Series::default()).collect();
    let mut raw = Series::default();
    let mut floor_threads = Series::default();
    let mut floor_tokio = Series::default();
    let mut floor_handoff = Series::default();
    // [mode][concurrency index]
    let mut loads: Vec<Vec<Load>> = (0..2)
        .map(|_| args.concurrency.iter().map(|_| Load::default()).collect())
        .collect();
    let raw_message =
        connection_request_message(&keys.node_id(), &inputs.target, &nonce, issued_at);

    let run_started = Instant::now();
    for round in 0..args.rounds {
        // Alternate which mode goes first, measurement by measurement.
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for (k, op) in Op::ALL.iter().enumerate() {
            for &m in &order {
                let mut samples = Vec::with_capacity(args.samples);
                for _ in 0..args.samples {
                    samples.push(call(&subjects[m].crypto, *op, &inputs).await?);
                }
                latency[m][k].add(samples);
            }
        }
        if args.paced_samples > 0 {
            for &m in &order {
                let mut samples = Vec::with_capacity(args.paced_samples);
                for _ in 0..args.paced_samples {
                    tokio::time::sleep(Duration::from_micros(args.pause_us)).await;
                    samples
                        .push(call(&subjects[m].crypto, Op::SignConnectionRequest, &inputs).await?);
                }
                paced[m].add(samples);
            }
        }

        // Raw Ed25519 signing, no request handling: the work both modes do.
        let mut samples = Vec::with_capacity(args.samples);
        for _ in 0..args.samples {
            let t0 = Instant::now();
            let s = keys.sign(NodeSignature::ConnectionRequest, &raw_message);
            samples.push(t0.elapsed());
            std::hint::black_box(s);
        }
        raw.add(samples);

        floor_threads.add(thread_ping_pong(args.samples, FRAME_BYTES)?);
        floor_tokio.add(tokio_ping_pong(args.samples, FRAME_BYTES).await?);
        floor_handoff.add(handoff_ping_pong(args.samples, FRAME_BYTES).await?);

        for (c, &callers) in args.concurrency.iter().enumerate() {
            for &m in &order {
                let t = throughput(&subjects[m], &inputs, callers, args.seconds).await?;
                let load = &mut loads[m][c];
                load.per_s.push(t.per_s);
                load.node_cpu_us.extend(t.node_cpu_us);
                load.agent_cpu_us.extend(t.agent_cpu_us);
                load.latencies.extend(t.latencies);
            }
        }
        println!(
            "round {}/{} done ({:.1} s)",
            round + 1,
            args.rounds,
            run_started.elapsed().as_secs_f64()
        );
    }

    // The agent must still be the first one: a restart would put its
    // start-up inside the timings.
    if let Some((pid, restarts)) = subjects[0].crypto.agent_process() {
        if restarts > 0 || Some(pid) != agent_pid {
            bail!("the agent restarted during the run ({restarts} restarts)");
        }
    }

    let mut summary = String::new();
    let mut put = |k: &str, v: f64| {
        let _ = writeln!(summary, "agent\t{k}\t{v:.3}");
    };

    println!();
    println!(
        "Latency of one call, sequential ({} rounds x {} samples, pooled; per-round p50 below)",
        args.rounds, args.samples
    );
    print_header();
    for (k, op) in Op::ALL.iter().enumerate() {
        for m in [0, 1] {
            let s = stats(&latency[m][k].samples, 1e6);
            print_row(&format!("{}, {}", op.label(), subjects[m].mode.label()), &s);
            let prefix = format!("{}_{}", op.key(), subjects[m].mode.key());
            put(&format!("{prefix}_p50_us"), s.p50);
            put(&format!("{prefix}_p90_us"), s.p90);
            put(&format!("{prefix}_p99_us"), s.p99);
        }
    }
    let paced_p50: Vec<f64> = if args.paced_samples > 0 {
        [0, 1]
            .iter()
            .map(|&m| {
                let s = stats(&paced[m].samples, 1e6);
                print_row(
                    &format!("sign_conn_req after idling, {}", subjects[m].mode.label()),
                    &s,
                );
                let prefix = format!("sign_paced_{}", subjects[m].mode.key());
                put(&format!("{prefix}_p50_us"), s.p50);
                put(&format!("{prefix}_p90_us"), s.p90);
                put(&format!("{prefix}_p99_us"), s.p99);
                s.p50
            })
            .collect()
    } else {
        Vec::new()
    };
    let raw_stats = stats(&raw.samples, 1e6);
    print_row("raw Ed25519 sign (NodeKeys::sign), reference", &raw_stats);
    let threads_stats = stats(&floor_threads.samples, 1e6);
    print_row(
        &format!("socket round trip {FRAME_BYTES} B, thread <-> thread"),
        &threads_stats,
    );
    let tokio_stats = stats(&floor_tokio.samples, 1e6);
    print_row(
        &format!("socket round trip {FRAME_BYTES} B, tokio task <-> thread"),
        &tokio_stats,
    );
    let handoff_stats = stats(&floor_handoff.samples, 1e6);
    print_row(
        &format!("socket round trip {FRAME_BYTES} B, tokio -> reader -> worker"),
        &handoff_stats,
    );
    let raw_per_s = 1e6 / raw_stats.mean;
    put("raw_sign_p50_us", raw_stats.p50);
    put("raw_sign_per_s", raw_per_s);
    put("floor_threads_rtt_p50_us", threads_stats.p50);
    put("floor_tokio_rtt_p50_us", tokio_stats.p50);
    put("floor_handoff_rtt_p50_us", handoff_stats.p50);

    println!();
    println!("p50 per round (µs):");
    for (k, op) in Op::ALL.iter().enumerate() {
        for m in [0, 1] {
            println!(
                "  {:<46} {}",
                format!("{}, {}", op.label(), subjects[m].mode.label()),
                list(&latency[m][k].round_p50, 1)
            );
        }
    }
    if args.paced_samples > 0 {
        for m in [0, 1] {
            println!(
                "  {:<46} {}",
                format!("sign_conn_req after idling, {}", subjects[m].mode.label()),
                list(&paced[m].round_p50, 1)
            );
        }
    }
    println!("  {:<46} {}", "raw Ed25519 sign", list(&raw.round_p50, 1));
    println!(
        "  {:<46} {}",
        "socket round trip, thread <-> thread",
        list(&floor_threads.round_p50, 1)
    );
    println!(
        "  {:<46} {}",
        "socket round trip, tokio task <-> thread",
        list(&floor_tokio.round_p50, 1)
    );
    println!(
        "  {:<46} {}",
        "socket round trip, tokio -> reader -> worker",
        list(&floor_handoff.round_p50, 1)
    );

    // The headline.
    let sign = Op::SignConnectionRequest as usize;
    let agent_p50 = stats(&latency[0][sign].samples, 1e6).p50;
    let inproc_p50 = stats(&latency[1][sign].samples, 1e6).p50;
    let overhead = agent_p50 - inproc_p50;
    let per_round: Vec<f64> = latency[0][sign]
        .round_p50
        .iter()
        .zip(&latency[1][sign].round_p50)
        .map(|(a, i)| a - i)
        .collect();
    let status = Op::Status as usize;
    let status_overhead =
        stats(&latency[0][status].samples, 1e6).p50 - stats(&latency[1][status].samples, 1e6).p50;
    put("overhead_p50_us", overhead);
    put(
        "overhead_round_min_us",
        per_round.iter().copied().fold(f64::INFINITY, f64::min),
    );
    put(
        "overhead_round_max_us",
        per_round.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    put("status_overhead_p50_us", status_overhead);
    if let [a, i] = paced_p50[..] {
        put("paced_overhead_p50_us", a - i);
    }
    put("target_us", args.target_us);
    let met = overhead <= args.target_us;
    put("overhead_met", if met { 1.0 } else { 0.0 });

    println!();
    println!("Throughput of sign_connection_request, C concurrent callers ({} s per run; median of {} rounds)", args.seconds, args.rounds);
    println!(
        "{:>4} {:>12} {:>12} {:>7} {:>24} {:>12} {:>14} {:>14}",
        "C",
        "agent /s",
        "in-proc /s",
        "ratio",
        "agent CPU µs/sig (n+a)",
        "in-proc CPU",
        "agent call p50",
        "agent call p99"
    );
    for (c, &callers) in args.concurrency.iter().enumerate() {
        let a = &loads[0][c];
        let i = &loads[1][c];
        let a_rate = median(&a.per_s);
        let i_rate = median(&i.per_s);
        let a_node = median(&a.node_cpu_us);
        let a_agent = median(&a.agent_cpu_us);
        let i_node = median(&i.node_cpu_us);
        let a_lat = stats(&a.latencies, 1e6);
        println!(
            "{callers:>4} {a_rate:>12.0} {i_rate:>12.0} {:>7.2} {:>24} {:>12.1} {:>14.1} {:>14.1}",
            a_rate / i_rate,
            format!("{:.1} ({a_node:.1}+{a_agent:.1})", a_node + a_agent),
            i_node,
            a_lat.p50,
            a_lat.p99
        );
        println!(
            "     rounds: agent {} /s; in process {} /s",
            list(&a.per_s, 0),
            list(&i.per_s, 0)
        );
        put(&format!("tput_agent_c{callers}_per_s"), a_rate);
        put(&format!("tput_inproc_c{callers}_per_s"), i_rate);
        put(&format!("cpu_agent_c{callers}_node_us"), a_node);
        put(&format!("cpu_agent_c{callers}_agent_us"), a_agent);
        put(&format!("cpu_inproc_c{callers}_us"), i_node);
        put(&format!("lat_agent_c{callers}_p50_us"), a_lat.p50);
        put(&format!("lat_agent_c{callers}_p99_us"), a_lat.p99);
    }
    println!(
        "raw Ed25519 signing, one thread: {raw_per_s:.0} /s (from the mean of the reference samples)"
    );

    println!();
    println!(
        "agent overhead p50 = {agent_p50:.1} − {inproc_p50:.1} = {overhead:.1} µs per signature (rounds: {}); target ≤ {:.0} µs: {}",
        list(&per_round, 1),
        args.target_us,
        if met { "met" } else { "MISSED" }
    );
    println!(
        "  of which a round trip with no signing (agent_status): {status_overhead:.1} µs; socket round trips with no work: {:.1} µs (thread <-> thread), {:.1} µs (tokio task <-> thread), {:.1} µs (tokio task -> reader thread -> worker thread, the agent's shape)",
        threads_stats.p50, tokio_stats.p50, handoff_stats.p50
    );
    if let [a, i] = paced_p50[..] {
        println!(
            "  after {} µs of idling (tokio timer: at least 1 ms): {a:.1} − {i:.1} = {:.1} µs",
            args.pause_us,
            a - i
        );
    }

    if let Some(path) = &args.summary {
        append(path, &summary)?;
    }
    // Dropping the agent's handle closes the launcher's socket: it stops the
    // agent and exits, and the drop waits for it.
    drop(subjects);
    Ok(())
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Times `samples` round trips of `size` bytes from a tokio task over
/// `near`, to whatever echoes at the far end.
async fn time_round_trips(
    near: &mut tokio::net::UnixStream,
    size: usize,
    samples: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut buf = vec![7u8; size];
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t0 = Instant::now();
        near.write_all(&buf).await?;
        near.read_exact(&mut buf).await?;
        out.push(t0.elapsed());
    }
    Ok(out)
}
