//! The accept loop of every OpenRed listener (the directory, the node's P2P
//! and admin APIs): hyper's HTTP/1 connection under the limits a server
//! facing the Internet needs.
//!
//! This module owns, per listener:
//! - a **cap on open connections**, and a **cap per source address** (IPv4:
//!   the address; IPv6: its `/64`, or the configured prefix, since one host
//!   holds a whole prefix). A connection over a cap is answered a canned 503
//!   JSON with a non-blocking write and closed at once, so refusing costs
//!   the accept loop no waiting;
//! - a **header-read timeout** (hyper's, on a Tokio timer): a request's head
//!   must be complete within it from the moment the server waits for one,
//!   after the accept and after each answer on a kept-alive connection, so
//!   it also bounds how long a connection may sit idle between requests;
//! - an **idle timeout**: a connection on which no byte moves either way
//!   while no handler is working (a stalled upload, a client that stops
//!   reading its answer) is closed;
//! - **accept errors** (EMFILE, ENFILE, ECONNABORTED, …) never end the loop:
//!   they are counted, logged at most once a second, and followed by a short
//!   pause when they are about resources;
//! - graceful shutdown as `axum::serve` did it: stop accepting, let each
//!   connection finish its request, wait for all of them.
//!
//! Request body sizes stay bounded by the router's own limits ([`harden`]).
//! What this module must never do: end the accept loop on an error, wait on
//! a refused client, or let one source address hold more than its share.
//!
//! [`harden`]: crate::harden

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

/// How long the loop pauses after an accept error about resources (no
/// descriptors, no memory): long enough not to spin, short enough that a
/// freed descriptor is used within a blink.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(25);

/// The answer to a connection over a cap, written without waiting.
const BUSY_ANSWER: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
content-length: 78\r\n\
retry-after: 1\r\n\
connection: close\r\n\
\r\n\
{\"error\":\"too_many_connections\",\"message\":\"too many connections; retry later\"}";

/// The limits of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeLimits {
    /// Connections open at once on this listener; more are refused.
    pub max_connections: usize,
    /// Connections open at once from one source address (IPv6: one
    /// prefix of `ipv6_prefix_len` bits).
    pub max_connections_per_address: usize,
    /// The IPv6 prefix length that counts as one source (default 64).
    pub ipv6_prefix_len: u8,
    /// How long a request's head may take to arrive, from the moment the
    /// server waits for it (after the accept, or after the previous answer).
    pub header_read_timeout: Duration,
    /// How long nothing may move on a connection while no handler works.
    pub idle_timeout: Duration,
    /// Sources not held to the per-address cap (trusted reverse proxies,
    /// whose connections carry many clients); the listener cap still holds.
    pub uncapped_sources: Vec<IpNet>,
}

impl Default for ServeLimits {
    /// A public listener: 4096 connections, 64 per source, a 10 s header
    /// timeout, a 60 s idle timeout.
    fn default() -> Self {
        ServeLimits {
            max_connections: 4096,
            max_connections_per_address: 64,
            ipv6_prefix_len: 64,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            uncapped_sources: Vec::new(),
        }
    }
}

/// Limits that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid listener limits: {0}")]
pub struct LimitsError(&'static str);

impl ServeLimits {
    /// Checks the values make sense together.
    pub fn validate(&self) -> Result<(), LimitsError> {
        if self.max_connections == 0 {
            return Err(LimitsError("max_connections must be at least 1"));
        }
        if self.max_connections_per_address == 0 {
            return Err(LimitsError(
                "max_connections_per_address must be at least 1",
            ));
        }
        if self.max_connections_per_address > self.max_connections {
            return Err(LimitsError(
                "max_connections_per_address must not exceed max_connections",
            ));
        }
        if !(1..=128).contains(&self.ipv6_prefix_len) {
            return Err(LimitsError("ipv6_prefix_len must be in 1..=128"));
        }
        if self.header_read_timeout.is_zero() || self.idle_timeout.is_zero() {
            return Err(LimitsError(
                "header_read_timeout_s and idle_timeout_s must be at least 1",
            ));
        }
        Ok(())
    }
}

/// What one listener counts, for metrics.
#[derive(Debug, Default)]
pub struct ListenerStats {
    open: AtomicU64,
    accepted: AtomicU64,
    refused_listener_full: AtomicU64,
    refused_address_full: AtomicU64,
    accept_errors: AtomicU64,
    header_timeouts: AtomicU64,
    idle_closed: AtomicU64,
}

/// A snapshot of [`ListenerStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerCounts {
    /// Connections open now.
    pub open: u64,
    /// Connections accepted and served since the start.
    pub accepted: u64,
    /// Connections refused because the listener was full.
    pub refused_listener_full: u64,
    /// Connections refused because their source address was at its cap.
    pub refused_address_full: u64,
    /// Errors from `accept` (descriptors exhausted, aborted handshakes, …).
    pub accept_errors: u64,
    /// Connections closed because a request head did not arrive in time.
    pub header_timeouts: u64,
    /// Connections closed because nothing moved on them.
    pub idle_closed: u64,
}

impl ListenerStats {
    /// The counts now.
    pub fn counts(&self) -> ListenerCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ListenerCounts {
            open: get(&self.open),
            accepted: get(&self.accepted),
            refused_listener_full: get(&self.refused_listener_full),
            refused_address_full: get(&self.refused_address_full),
            accept_errors: get(&self.accept_errors),
            header_timeouts: get(&self.header_timeouts),
            idle_closed: get(&self.idle_closed),
        }
    }
}

impl ListenerCounts {
    /// Appends the counts of `listeners` (name, counts) in the Prometheus
    /// text format, as `PREFIX_connections_*{listener="NAME"}`, each
    /// family's lines together.
    pub fn render(out: &mut String, prefix: &str, listeners: &[(&str, ListenerCounts)]) {
        use std::fmt::Write as _;
        type Family = (
            &'static str,
            &'static str,
            &'static str,
            fn(&ListenerCounts) -> u64,
        );
        const FAMILIES: [Family; 6] = [
            ("open", "gauge", "Connections open now.", |c| c.open),
            ("accepted_total", "counter", "Connections accepted.", |c| {
                c.accepted
            }),
            (
                "accept_errors_total",
                "counter",
                "Errors from accept (descriptors exhausted, aborted connections); serving goes on.",
                |c| c.accept_errors,
            ),
            (
                "header_timeouts_total",
                "counter",
                "Connections closed because a request head did not arrive in time.",
                |c| c.header_timeouts,
            ),
            (
                "idle_closed_total",
                "counter",
                "Connections closed because nothing moved on them.",
                |c| c.idle_closed,
            ),
            (
                "refused_total",
                "counter",
                "Connections refused at once: the listener, or the source address, at its cap.",
                |_| 0,
            ),
        ];
        for (family, kind, help, value) in FAMILIES {
            let name = format!("{prefix}_connections_{family}");
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (listener, counts) in listeners {
                if family == "refused_total" {
                    for (reason, n) in [
                        ("listener_full", counts.refused_listener_full),
                        ("address_full", counts.refused_address_full),
                    ] {
                        let _ = writeln!(
                            out,
                            "{name}{{listener=\"{listener}\",reason=\"{reason}\"}} {n}"
                        );
                    }
                } else {
                    let _ = writeln!(out, "{name}{{listener=\"{listener}\"}} {}", value(counts));
                }
            }
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit, so a
/// server can hold as many connections as the system lets it. Returns the
/// soft limit before and after (`None`: unlimited).
pub fn raise_open_files_limit() -> io::Result<(Option<u64>, Option<u64>)> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return Ok((limit.current, limit.current));
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )?;
    Ok((limit.current, getrlimit(Resource::Nofile).current))
}

/// Serves `router` on `listener` under `limits` until `shutdown`
/// completes; then stops accepting, lets each connection finish its
/// request, and returns once all are closed. Requests carry the peer's
/// address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    stats: Arc<ListenerStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    limits
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let local = listener.local_addr()?;
    let limits = Arc::new(limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let sources = Arc::new(SourceCounts::new(&limits));
    // Tells connections to finish; its receivers' drop tells the loop they
    // have (as axum::serve does).
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    let mut last_error_log: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                let count = stats.accept_errors.fetch_add(1, Ordering::Relaxed) + 1;
                if last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    last_error_log = Some(Instant::now());
                    tracing::warn!(%local, %error, count, "accept failed; serving goes on");
                }
                if !is_per_connection(&error) {
                    tokio::select! {
                        biased;
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            stats.refused_listener_full.fetch_add(1, Ordering::Relaxed);
            refuse(stream);
            continue;
        };
        let Some(source) = sources.enter(remote.ip()) else {
            stats.refused_address_full.fetch_add(1, Ordering::Relaxed);
            refuse(stream);
            continue;
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let connection = Connection {
            stream,
            remote,
            router: router.clone(),
            limits: limits.clone(),
            stats: stats.clone(),
            stop: stop_rx.clone(),
            _slot: slot,
            _source: source,
            _done: done_rx.clone(),
        };
        tokio::spawn(connection.run());
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(done_rx);
    done_tx.closed().await;
    Ok(())
}

/// Errors about one connection (it went away before we took it), after
/// which the next accept can go on at once.
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Answers 503 if the socket takes it now, and closes.
fn refuse(stream: TcpStream) {
    // A fresh socket's send buffer is empty, so this write only fails if
    // the client is already gone; never wait on it.
    let _ = stream.try_write(BUSY_ANSWER);
}

/// One accepted connection and what it holds until it closes.
struct Connection {
    stream: TcpStream,
    remote: SocketAddr,
    router: Router,
    limits: Arc<ServeLimits>,
    stats: Arc<ListenerStats>,
    stop: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
    _source: SourceSlot,
    _done: watch::Receiver<()>,
}

impl Connection {
    async fn run(mut self) {
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Tracked {
            inner: self.stream,
            activity: activity.clone(),
        });
        let service = {
            let activity = activity.clone();
            let router = self.router.clone();
            let remote = self.remote;
            hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let request_guard = Arc::new(RequestGuard::new(activity.clone()));
                if http_body::Body::is_end_stream(request.body()) {
                    request_guard.body_done();
                }
                let (mut parts, body) = request.into_parts();
                parts.extensions.insert(ConnectInfo(remote));
                let body = Body::new(TrackedBody {
                    inner: body,
                    guard: request_guard.clone(),
                });
                let answer = router
                    .clone()
                    .oneshot(axum::http::Request::from_parts(parts, body));
                async move {
                    let response = answer.await;
                    request_guard.finish();
                    response
                }
            })
        };
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .keep_alive(true);
        let mut connection = pin!(builder.serve_connection(io, service));
        let idle = self.limits.idle_timeout;
        let mut stopping = false;
        loop {
            let idle_check = activity.last_moved() + idle;
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        if error.is_timeout() {
                            self.stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
                        }
                        tracing::debug!(remote = %self.remote, %error, "connection ended");
                    }
                    break;
                }
                _ = self.stop.wait_for(|stop| *stop), if !stopping => {
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
                () = tokio::time::sleep_until(idle_check) => {
                    if activity.is_idle(idle) {
                        self.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(remote = %self.remote, "idle connection closed");
                        break;
                    }
                }
            }
        }
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// When bytes last moved on a connection, and how many handlers are at
/// work on a complete request (time they spend is not idleness).
struct Activity {
    start: Instant,
    last_moved_ms: AtomicU64,
    working: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_moved_ms: AtomicU64::new(0),
            working: AtomicUsize::new(0),
        }
    }

    fn moved(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_moved_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last_moved(&self) -> Instant {
        self.start + Duration::from_millis(self.last_moved_ms.load(Ordering::Relaxed))
    }

    fn is_idle(&self, idle: Duration) -> bool {
        self.working.load(Ordering::Relaxed) == 0 && self.last_moved().elapsed() >= idle
    }
}

/// One request's part in [`Activity::working`]: counted from the end of
/// its body until its handler answers. Before the body ends, the client is
/// the one to move; after the answer, the bytes written show progress.
struct RequestGuard {
    activity: Arc<Activity>,
    /// 0: body not complete; 1: counted as working; 2: answered.
    state: AtomicU8,
}

impl RequestGuard {
    fn new(activity: Arc<Activity>) -> RequestGuard {
        RequestGuard {
            activity,
            state: AtomicU8::new(0),
        }
    }

    fn body_done(&self) {
        if self
            .state
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.activity.working.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn finish(&self) {
        if self.state.swap(2, Ordering::AcqRel) == 1 {
            self.activity.working.fetch_sub(1, Ordering::Relaxed);
        }
        // The answer starts now: idleness counts from here.
        self.activity.moved();
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A request body that tells its [`RequestGuard`] when it has ended.
struct TrackedBody {
    inner: Incoming,
    guard: Arc<RequestGuard>,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.guard.body_done(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.guard.body_done(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's socket, noting each byte that moves.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.moved();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Open connections per source (an IPv4 address, an IPv6 prefix).
struct SourceCounts {
    cap: usize,
    ipv6_prefix_len: u8,
    uncapped: Vec<IpNet>,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl SourceCounts {
    fn new(limits: &ServeLimits) -> SourceCounts {
        SourceCounts {
            cap: limits.max_connections_per_address,
            ipv6_prefix_len: limits.ipv6_prefix_len,
            uncapped: limits.uncapped_sources.clone(),
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for one more connection from `ip`, or `None` at the cap.
    fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let ip = ip.to_canonical();
        if self.uncapped.iter().any(|net| net.contains(&ip)) {
            return Some(SourceSlot { counts: None });
        }
        let key = source_key(ip, self.ipv6_prefix_len);
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(key).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            counts: Some((self.clone(), key)),
        })
    }

    fn leave(&self, key: IpAddr) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&key);
            }
        }
    }
}

/// The key a source is counted under: an IPv4 address, or an IPv6 address
/// cut to its first `ipv6_prefix_len` bits. IPv4-mapped IPv6 addresses
/// count as the IPv4 address they carry.
pub fn source_key(ip: IpAddr, ipv6_prefix_len: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u32::from(ipv6_prefix_len.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

/// One connection's place in [`SourceCounts`], given back on drop.
struct SourceSlot {
    counts: Option<(Arc<SourceCounts>, IpAddr)>,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        if let Some((counts, key)) = self.counts.take() {
            counts.leave(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_sources_are_counted_by_prefix_and_ipv4_by_address() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a, 64), source_key(b, 64));
        assert_ne!(source_key(a, 64), source_key(c, 64));
        assert_eq!(source_key(a, 48), source_key(c, 48));
        assert_ne!(source_key(a, 128), source_key(b, 128));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(
            source_key(mapped, 64),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
        let v4: IpAddr = "192.0.2.8".parse().unwrap();
        assert_ne!(source_key(v4, 64), source_key(mapped, 64));
    }

    #[test]
    fn a_source_at_its_cap_is_refused_until_one_of_its_connections_closes() {
        let limits = ServeLimits {
            max_connections_per_address: 2,
            uncapped_sources: vec!["10.0.0.0/8".parse().unwrap()],
            ..ServeLimits::default()
        };
        let counts = Arc::new(SourceCounts::new(&limits));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let first = counts.enter(ip).expect("first");
        let _second = counts.enter(ip).expect("second");
        assert!(counts.enter(ip).is_none(), "third over the cap");
        assert!(counts.enter("192.0.2.2".parse().unwrap()).is_some());
        drop(first);
        assert!(counts.enter(ip).is_some(), "a slot freed by a close");
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let held: Vec<_> = (0..10).map(|_| counts.enter(proxy)).collect();
        assert!(
            held.iter().all(Option::is_some),
            "a trusted proxy is uncapped"
        );
    }

    #[test]
    fn the_busy_answer_has_the_length_it_announces() {
        let text = std::str::from_utf8(BUSY_ANSWER).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "too_many_connections");
    }

    #[test]
    fn limits_that_cannot_work_are_refused() {
        assert!(ServeLimits::default().validate().is_ok());
        for bad in [
            ServeLimits {
                max_connections: 0,
                ..ServeLimits::default()
            },
            ServeLimits {
                max_connections_per_address: 0,
                ..ServeLimits::default()
            },
            ServeLimits {
                max_connections: 10,
                max_connections_per_address: 11,
                ..ServeLimits::default()
            },
            ServeLimits {
                ipv6_prefix_len: 0,
                ..ServeLimits::default()
            },
            ServeLimits {
                header_read_timeout: Duration::ZERO,
                ..ServeLimits::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
