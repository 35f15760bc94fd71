//! Prometheus metrics: requests by route and status, latency histograms,
//! registrations and lookups by outcome.
//!
//! The `metrics` facade has one recorder per process, so it is installed
//! once and shared by every directory started in the process (tests start
//! many); each exposition shows the whole process.

use openred_core::routes::directory as routes;
use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The process's Prometheus handle, installing the recorder on first use.
/// `None` if another recorder was installed by someone else.
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&LATENCY_BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .clone()
}

/// Middleware counting every request by matched route, method and status,
/// and timing it.
pub async fn track(request: Request, next: Next) -> Response {
    // Labels are static strings where they can be: a label that needs no
    // allocation keeps the cost of counting a request well below the cost
    // of serving a lookup.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| intern_route(p.as_str()))
        .unwrap_or("unmatched");
    let method = static_method(request.method());
    let start = Instant::now();
    let response = next.run(request).await;
    let status = static_status(response.status().as_u16());
    metrics::counter!("openred_directory_http_requests_total",
        "route" => route, "method" => method, "status" => status)
    .increment(1);
    metrics::histogram!("openred_directory_http_request_duration_seconds", "route" => route)
        .record(start.elapsed().as_secs_f64());
    response
}

/// The routes the directory serves, as static strings for labels.
const ROUTES: [&str; 8] = [
    routes::REGISTER,
    routes::DEREGISTER,
    routes::DISCOVER,
    routes::NODE,
    routes::REQUEST_CONNECTION,
    routes::HEALTH,
    routes::METRICS,
    routes::OPENAPI,
];

fn intern_route(route: &str) -> &'static str {
    ROUTES
        .iter()
        .find(|r| **r == route)
        .copied()
        .unwrap_or("other")
}

fn static_method(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        _ => "other",
    }
}

fn static_status(status: u16) -> &'static str {
    match status {
        200 => "200",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        413 => "413",
        415 => "415",
        422 => "422",
        429 => "429",
        500 => "500",
        501 => "501",
        502 => "502",
        503 => "503",
        _ => "other",
    }
}

/// Counts a registration attempt by outcome (`ok` or the error code).
pub fn registration(outcome: &'static str) {
    metrics::counter!("openred_directory_registrations_total", "outcome" => outcome).increment(1);
}

/// Counts a lookup by outcome (`hit`, `db_hit`, `miss`).
pub fn lookup(outcome: &'static str) {
    metrics::counter!("openred_directory_lookups_total", "outcome" => outcome).increment(1);
}

/// Counts an introduction by outcome (`ok` or the error code).
pub fn introduction(outcome: &'static str) {
    metrics::counter!("openred_directory_introductions_total", "outcome" => outcome).increment(1);
}
