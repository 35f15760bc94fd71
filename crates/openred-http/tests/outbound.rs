//! The outbound client against servers on 127.0.0.1 started by each test.
//! No traffic leaves the machine.

#![allow(clippy::unwrap_used)]

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use openred_core::ApiUrl;
use openred_http::{HostQuota, OutboundClient, OutboundConfig, OutboundError};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Default)]
struct Hits {
    all: AtomicUsize,
    target: AtomicUsize,
    /// Requests to `/held` being served now, and the most at once.
    held_now: AtomicUsize,
    held_max: AtomicUsize,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Ping {
    nonce: String,
    n: u32,
}

/// Starts the test server on 127.0.0.1, port 0.
async fn server() -> (u16, Arc<Hits>) {
    let hits = Arc::new(Hits::default());
    let app = Router::new()
        .route(
            "/echo",
            post(|State(h): State<Arc<Hits>>, Json(ping): Json<Ping>| async move {
                h.all.fetch_add(1, Ordering::SeqCst);
                Json(Ping {
                    nonce: format!("re:{}", ping.nonce),
                    n: ping.n + 1,
                })
            }),
        )
        .route(
            "/bytes",
            post(
                |State(h): State<Arc<Hits>>, headers: HeaderMap, body: axum::body::Bytes| async move {
                    h.all.fetch_add(1, Ordering::SeqCst);
                    let ct = headers
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    format!("{ct} {}", body.len())
                },
            ),
        )
        .route(
            "/hit",
            get(|State(h): State<Arc<Hits>>| async move {
                h.all.fetch_add(1, Ordering::SeqCst);
                "ok"
            }),
        )
        .route(
            "/missing",
            get(|State(h): State<Arc<Hits>>| async move {
                h.all.fetch_add(1, Ordering::SeqCst);
                (StatusCode::NOT_FOUND, "no such thing")
            }),
        )
        .route(
            "/redirect",
            get(|State(h): State<Arc<Hits>>| async move {
                h.all.fetch_add(1, Ordering::SeqCst);
                (StatusCode::FOUND, [(header::LOCATION, "/target")], "")
            }),
        )
        .route(
            "/target",
            get(|State(h): State<Arc<Hits>>| async move {
                h.all.fetch_add(1, Ordering::SeqCst);
                h.target.fetch_add(1, Ordering::SeqCst);
                "target"
            }),
        )
        .route(
            "/big",
            get(|State(h): State<Arc<Hits>>| async move {
                h.all.fetch_add(1, Ordering::SeqCst);
                vec![b'x'; 1024 * 1024].into_response()
            }),
        )
        .route(
            "/held",
            get(|State(h): State<Arc<Hits>>| async move {
                h.all.fetch_add(1, Ordering::SeqCst);
                let now = h.held_now.fetch_add(1, Ordering::SeqCst) + 1;
                h.held_max.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                h.held_now.fetch_sub(1, Ordering::SeqCst);
                "held"
            }),
        )
        .route(
            "/slow",
            get(|State(h): State<Arc<Hits>>| async move {
                h.all.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        )
        .with_state(hits.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (port, hits)
}

fn private_client() -> OutboundClient {
    OutboundClient::new(OutboundConfig {
        allow_private: true,
        ..OutboundConfig::default()
    })
    .unwrap()
}

fn local(port: u16) -> ApiUrl {
    ApiUrl::parse_origin(&format!("http://127.0.0.1:{port}")).unwrap()
}

#[tokio::test]
async fn non_global_and_plain_http_urls_are_refused_before_connecting() {
    let (port, hits) = server().await;
    let client = OutboundClient::new(OutboundConfig::default()).unwrap();
    for url in [
        format!("http://127.0.0.1:{port}"),
        format!("https://127.0.0.1:{port}"),
        "https://127.0.0.1".to_owned(),
        "https://10.0.0.1".to_owned(),
        format!("https://[::1]:{port}"),
        format!("https://[::ffff:127.0.0.1]:{port}"),
        format!("https://localhost:{port}"),
        "https://localhost".to_owned(),
        format!("http://node.example.com:{port}"),
    ] {
        let origin = ApiUrl::parse_origin(&url).unwrap();
        let get = client.get(&origin, "/hit").await;
        assert!(
            matches!(get, Err(OutboundError::Policy(_))),
            "{url}: {get:?}"
        );
        let post = client
            .post_json(
                &origin,
                "/echo",
                &Ping {
                    nonce: "a".into(),
                    n: 1,
                },
            )
            .await;
        assert!(
            matches!(post, Err(OutboundError::Policy(_))),
            "{url}: {post:?}"
        );
        let bytes = client
            .post_bytes(
                &origin,
                "/bytes",
                vec![1u8, 2, 3],
                "application/octet-stream",
            )
            .await;
        assert!(
            matches!(bytes, Err(OutboundError::Policy(_))),
            "{url}: {bytes:?}"
        );
    }
    assert_eq!(
        hits.all.load(Ordering::SeqCst),
        0,
        "the server saw a request"
    );
    // The texts say why without naming what was found.
    let err = client
        .get(
            &ApiUrl::parse_origin("http://node.example.com").unwrap(),
            "/",
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("https"), "{err}");
    let err = client
        .get(&ApiUrl::parse_origin("https://10.0.0.1").unwrap(), "/")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("public"), "{err}");
}

#[tokio::test]
async fn json_round_trip_and_any_status_is_an_answer() {
    let (port, hits) = server().await;
    let client = private_client();
    let origin = local(port);

    let response = client
        .post_json(
            &origin,
            "/echo",
            &Ping {
                nonce: "abc".into(),
                n: 41,
            },
        )
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    assert!(response.is_success());
    assert_eq!(
        response.json::<Ping>().unwrap(),
        Ping {
            nonce: "re:abc".into(),
            n: 42
        }
    );

    let response = client
        .post_bytes(&origin, "/bytes", vec![7u8; 10], "application/octet-stream")
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(&response.body[..], b"application/octet-stream 10");

    let response = client.get(&origin, "/missing").await.unwrap();
    assert_eq!(response.status, 404);
    assert!(!response.is_success());
    assert_eq!(&response.body[..], b"no such thing");
    assert_eq!(hits.all.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn redirects_are_returned_not_followed() {
    let (port, hits) = server().await;
    let client = private_client();
    let response = client.get(&local(port), "/redirect").await.unwrap();
    assert_eq!(response.status, 302);
    // Give a (wrongly) following client time to reach the target.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(hits.target.load(Ordering::SeqCst), 0);
    assert_eq!(hits.all.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn announced_large_bodies_are_refused() {
    let (port, _hits) = server().await;
    let client = private_client();
    let err = client.get(&local(port), "/big").await.unwrap_err();
    assert_eq!(err, OutboundError::TooLarge);
    // Under a larger cap the same body is read whole.
    let client = OutboundClient::new(OutboundConfig {
        allow_private: true,
        max_response_bytes: 2 * 1024 * 1024,
        ..OutboundConfig::default()
    })
    .unwrap();
    let response = client.get(&local(port), "/big").await.unwrap();
    assert_eq!(response.body.len(), 1024 * 1024);
}

/// A raw server that streams an endless chunked body, with no length
/// announced, and reports how many body bytes it managed to write.
async fn endless_server() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let written = Arc::new(AtomicUsize::new(0));
    let counter = written.clone();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        if stream.write_all(head).await.is_err() {
            return;
        }
        let mut chunk = format!("{:x}\r\n", 16 * 1024).into_bytes();
        chunk.extend(std::iter::repeat_n(b'y', 16 * 1024));
        chunk.extend_from_slice(b"\r\n");
        while stream.write_all(&chunk).await.is_ok() {
            counter.fetch_add(16 * 1024, Ordering::SeqCst);
        }
    });
    (port, written)
}

#[tokio::test]
async fn endless_bodies_are_cut_at_the_cap() {
    let (port, written) = endless_server().await;
    let client = private_client();
    let start = Instant::now();
    let err = client.get(&local(port), "/").await.unwrap_err();
    // An endless body can only end this way if the client stopped reading:
    // a buffering client would run into the 10 s request timeout instead.
    assert_eq!(err, OutboundError::TooLarge);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // The server could only write what the cap plus socket buffers took.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = written.load(Ordering::SeqCst);
    assert!(sent < 64 * 1024 * 1024, "the server wrote {sent} bytes");
}

#[tokio::test]
async fn slow_peers_time_out_quickly() {
    let (port, _hits) = server().await;
    let client = OutboundClient::new(OutboundConfig {
        allow_private: true,
        request_timeout: Duration::from_millis(300),
        ..OutboundConfig::default()
    })
    .unwrap();
    let start = Instant::now();
    let err = client.get(&local(port), "/slow").await.unwrap_err();
    assert!(
        matches!(err, OutboundError::Timeout | OutboundError::Unreachable),
        "{err:?}"
    );
    assert_eq!(err, OutboundError::Timeout);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn closed_ports_are_unreachable_without_details() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let client = private_client();
    for origin in [
        local(port),
        ApiUrl::parse_origin(&format!("http://localhost:{port}")).unwrap(),
    ] {
        let err = client.get(&origin, "/hit").await.unwrap_err();
        assert_eq!(err, OutboundError::Unreachable, "{origin}");
        let text = err.to_string();
        assert_eq!(text, "the peer is unreachable");
        assert!(!text.contains("127.0.0.1") && !text.contains(&port.to_string()));
        let debug = format!("{err:?}");
        assert!(!debug.contains("127.0.0.1") && !debug.contains(&port.to_string()));
    }
}

#[tokio::test]
async fn tls_failures_are_unreachable_without_details() {
    // https to a plain-HTTP server: the TLS handshake fails (this also
    // exercises the rustls/ring set-up: no provider panic).
    let (port, _hits) = server().await;
    let client = private_client();
    let origin = ApiUrl::parse_origin(&format!("https://127.0.0.1:{port}")).unwrap();
    let err = client.get(&origin, "/hit").await.unwrap_err();
    assert_eq!(err, OutboundError::Unreachable);
    assert_eq!(err.to_string(), "the peer is unreachable");
}

#[tokio::test]
async fn rate_limited_per_host_after_the_burst() {
    let (port, hits) = server().await;
    let (other_port, other_hits) = server().await;
    let client = OutboundClient::new(OutboundConfig {
        allow_private: true,
        per_host: HostQuota {
            per_second: NonZeroU32::new(1).unwrap(),
            burst: NonZeroU32::new(3).unwrap(),
        },
        ..OutboundConfig::default()
    })
    .unwrap();
    for _ in 0..3 {
        assert_eq!(client.get(&local(port), "/hit").await.unwrap().status, 200);
    }
    assert_eq!(
        client.get(&local(port), "/hit").await.unwrap_err(),
        OutboundError::RateLimited
    );
    assert_eq!(
        client
            .post_json(
                &local(port),
                "/echo",
                &Ping {
                    nonce: "x".into(),
                    n: 0
                }
            )
            .await
            .unwrap_err(),
        OutboundError::RateLimited
    );
    assert_eq!(hits.all.load(Ordering::SeqCst), 3);
    // Another host:port has its own budget; clones share the limits.
    let clone = client.clone();
    assert_eq!(
        clone.get(&local(other_port), "/hit").await.unwrap().status,
        200
    );
    assert_eq!(other_hits.all.load(Ordering::SeqCst), 1);
    assert_eq!(
        clone.get(&local(port), "/hit").await.unwrap_err(),
        OutboundError::RateLimited
    );
}

/// Six requests at once to one host, through a client allowing `bound`
/// connections per host: returns the most the server saw at once.
async fn most_at_once(bound: usize) -> usize {
    let (port, hits) = server().await;
    let client = OutboundClient::new(OutboundConfig {
        allow_private: true,
        max_connections_per_host: bound,
        ..OutboundConfig::default()
    })
    .unwrap();
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let client = client.clone();
        requests.spawn(async move { client.get(&local(port), "/held").await });
    }
    while let Some(answer) = requests.join_next().await {
        assert_eq!(
            answer.unwrap().unwrap().status,
            200,
            "every request is served"
        );
    }
    assert_eq!(hits.all.load(Ordering::SeqCst), 6);
    hits.held_max.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_host_are_bounded_and_requests_over_the_bound_wait() {
    assert!(
        most_at_once(2).await <= 2,
        "at most two connections to the host"
    );
    // The server does see concurrency when the bound allows it.
    assert!(most_at_once(100).await > 2);
}
