//! The node's own counters, and their Prometheus text exposition (with the
//! modules' metrics beside them).
//!
//! Counters are per node, not per process (unlike the directory's, which
//! use the `metrics` facade's one global recorder): a test or a benchmark
//! runs several nodes in one process, and each must count its own.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bounds of the latency buckets, in seconds: the agent answers in
/// tens of microseconds, a peer in a millisecond or more.
const BUCKETS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0,
];

/// A latency histogram (Prometheus buckets, cumulative when shown).
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Counts one observation.
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// How many observations.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Counts by a short reason code (error codes of this crate: a bounded
/// set, so the label cannot grow without end).
#[derive(Default)]
pub struct ByReason(Mutex<BTreeMap<&'static str, u64>>);

impl ByReason {
    /// Counts one more `reason`.
    pub fn add(&self, reason: &'static str) {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(reason).or_default() += 1;
    }

    /// The counts now.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The count of `reason`.
    pub fn get(&self, reason: &str) -> u64 {
        self.snapshot().get(reason).copied().unwrap_or(0)
    }
}

/// What the node core counts.
#[derive(Default)]
pub struct NodeMetrics {
    /// Handshakes finished, as initiator.
    pub handshakes_initiated: AtomicU64,
    /// Handshakes finished, as responder.
    pub handshakes_answered: AtomicU64,
    /// Handshakes refused or failed, by reason.
    pub handshakes_failed: ByReason,
    /// Tokens the directory pushed and this node stored.
    pub tokens_received: AtomicU64,
    /// Tokens refused, by reason.
    pub tokens_rejected: ByReason,
    /// Tokens purged unused at their expiry.
    pub tokens_expired: AtomicU64,
    /// Sessions renewed (either side).
    pub sessions_renewed: AtomicU64,
    /// Sessions ended (maximum age, or replaced and idle).
    pub sessions_closed: AtomicU64,
    /// P2P requests served.
    pub p2p_requests: AtomicU64,
    /// Bytes of P2P request bodies received (as announced).
    pub p2p_bytes_in: AtomicU64,
    /// Bytes of P2P answers sent (bodies of known length).
    pub p2p_bytes_out: AtomicU64,
    /// Peer round trips measured over sessions (encrypted pings).
    pub peer_rtt: Histogram,
    /// What the P2P listener's accept loop counts.
    pub p2p_connections: std::sync::Arc<openred_http::ListenerStats>,
    /// What the admin listener's accept loop counts.
    pub admin_connections: std::sync::Arc<openred_http::ListenerStats>,
}

/// Gauges read from the node's state when the metrics are shown.
pub struct Gauges {
    /// Live sessions.
    pub sessions: usize,
    /// Peers with a live session.
    pub peers: usize,
    /// Whether the last registration succeeded.
    pub registered: bool,
    /// Whether the node is ready (see `health`).
    pub ready: bool,
}

impl NodeMetrics {
    /// The Prometheus text exposition: the core's counters, `gauges`, the
    /// agent's latency, and each module's metrics as
    /// `openred_<module>_<name>` with a `module` label on nothing else.
    pub fn render(&self, gauges: &Gauges, agent: &Histogram, modules: &[ModuleView]) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, value: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        gauge(
            &mut out,
            "openred_node_sessions",
            "Live sessions.",
            gauges.sessions as f64,
        );
        gauge(
            &mut out,
            "openred_node_peers",
            "Peers with a live session.",
            gauges.peers as f64,
        );
        gauge(
            &mut out,
            "openred_node_registered",
            "1 if the last registration with the directory succeeded.",
            f64::from(u8::from(gauges.registered)),
        );
        gauge(
            &mut out,
            "openred_node_ready",
            "1 if the agent answers, the database takes writes and the directory answers.",
            f64::from(u8::from(gauges.ready)),
        );
        let _ = writeln!(
            out,
            "# HELP openred_node_handshakes_total Handshakes finished, by role.\n\
             # TYPE openred_node_handshakes_total counter\n\
             openred_node_handshakes_total{{role=\"initiator\"}} {}\n\
             openred_node_handshakes_total{{role=\"responder\"}} {}",
            load(&self.handshakes_initiated),
            load(&self.handshakes_answered)
        );
        by_reason(
            &mut out,
            "openred_node_handshakes_failed_total",
            "Handshakes refused or failed, by reason.",
            &self.handshakes_failed,
        );
        counter(
            &mut out,
            "openred_node_tokens_received_total",
            "Connection tokens received from the directory and stored.",
            load(&self.tokens_received),
        );
        by_reason(
            &mut out,
            "openred_node_tokens_rejected_total",
            "Connection tokens refused, by reason.",
            &self.tokens_rejected,
        );
        counter(
            &mut out,
            "openred_node_tokens_expired_total",
            "Connection tokens purged unused at their expiry.",
            load(&self.tokens_expired),
        );
        counter(
            &mut out,
            "openred_node_sessions_renewed_total",
            "Sessions renewed peer to peer.",
            load(&self.sessions_renewed),
        );
        counter(
            &mut out,
            "openred_node_sessions_closed_total",
            "Sessions ended (maximum age, or replaced and idle).",
            load(&self.sessions_closed),
        );
        counter(
            &mut out,
            "openred_node_p2p_requests_total",
            "P2P requests served.",
            load(&self.p2p_requests),
        );
        counter(
            &mut out,
            "openred_node_p2p_received_bytes_total",
            "Bytes of P2P request bodies received.",
            load(&self.p2p_bytes_in),
        );
        counter(
            &mut out,
            "openred_node_p2p_sent_bytes_total",
            "Bytes of P2P answers sent (bodies of known length).",
            load(&self.p2p_bytes_out),
        );
        openred_http::ListenerCounts::render(
            &mut out,
            "openred_node",
            &[
                ("p2p", self.p2p_connections.counts()),
                ("admin", self.admin_connections.counts()),
            ],
        );
        agent.render(
            &mut out,
            "openred_node_agent_call_seconds",
            "Round trips to the crypto agent.",
        );
        self.peer_rtt.render(
            &mut out,
            "openred_node_peer_rtt_seconds",
            "Encrypted ping round trips to peers.",
        );
        for module in modules {
            let prefix = format!("openred_{}", module.name.replace('-', "_"));
            gauge(
                &mut out,
                &format!("{prefix}_enabled"),
                "1 if the module is switched on.",
                f64::from(u8::from(module.enabled)),
            );
            for metric in &module.metrics {
                let name = format!("{prefix}_{}", metric.name);
                let kind = match metric.kind {
                    MetricKind::Counter => "counter",
                    MetricKind::Gauge => "gauge",
                };
                let _ = writeln!(
                    out,
                    "# HELP {name} {}\n# TYPE {name} {kind}\n{name} {}",
                    metric.help.replace('\n', " "),
                    metric.value
                );
            }
        }
        out
    }
}

fn by_reason(out: &mut String, name: &str, help: &str, counts: &ByReason) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (reason, count) in counts.snapshot() {
        let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {count}");
    }
}

/// One metric a module reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// `snake_case`, unique within the module; shown as
    /// `openred_<module>_<name>`.
    pub name: String,
    /// One line on what it counts.
    pub help: String,
    /// `counter` (only grows) or `gauge`.
    pub kind: MetricKind,
    /// The value now.
    pub value: f64,
}

/// What a [`Metric`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    /// Only grows.
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Metric {
    /// A counter.
    pub fn counter(name: &str, help: &str, value: u64) -> Metric {
        Metric {
            name: name.to_owned(),
            help: help.to_owned(),
            kind: MetricKind::Counter,
            value: value as f64,
        }
    }

    /// A gauge.
    pub fn gauge(name: &str, help: &str, value: f64) -> Metric {
        Metric {
            name: name.to_owned(),
            help: help.to_owned(),
            kind: MetricKind::Gauge,
            value,
        }
    }
}

/// One module, as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModuleView {
    /// Its name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// Whether it is on.
    pub enabled: bool,
    /// Suites it switches on.
    pub suites: Vec<String>,
    /// Its metrics.
    pub metrics: Vec<Metric>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_counts_buckets_cumulatively_and_labels_reasons() {
        let metrics = NodeMetrics::default();
        metrics.handshakes_failed.add("token_expired");
        metrics.handshakes_failed.add("token_expired");
        metrics.handshakes_failed.add("bad_proof");
        metrics.tokens_received.fetch_add(3, Ordering::Relaxed);
        let agent = Histogram::default();
        agent.observe(Duration::from_micros(30));
        agent.observe(Duration::from_micros(700));
        agent.observe(Duration::from_secs(5));
        let gauges = Gauges {
            sessions: 2,
            peers: 1,
            registered: true,
            ready: false,
        };
        let modules = vec![ModuleView {
            name: "messaging".to_owned(),
            description: String::new(),
            enabled: true,
            suites: Vec::new(),
            metrics: vec![Metric::counter("delivered_total", "Delivered.", 7)],
        }];
        let text = metrics.render(&gauges, &agent, &modules);
        for line in [
            "openred_node_sessions 2",
            "openred_node_ready 0",
            "openred_node_handshakes_failed_total{reason=\"token_expired\"} 2",
            "openred_node_handshakes_failed_total{reason=\"bad_proof\"} 1",
            "openred_node_tokens_received_total 3",
            "openred_node_agent_call_seconds_bucket{le=\"0.00005\"} 1",
            "openred_node_agent_call_seconds_bucket{le=\"0.001\"} 2",
            "openred_node_agent_call_seconds_bucket{le=\"2\"} 2",
            "openred_node_agent_call_seconds_bucket{le=\"+Inf\"} 3",
            "openred_node_agent_call_seconds_count 3",
            "openred_messaging_enabled 1",
            "openred_messaging_delivered_total 7",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every sample line belongs to a metric with a TYPE line.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or("");
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{name} has no TYPE"
            );
        }
    }
}
