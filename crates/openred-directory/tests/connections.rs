//! The directory's listener under a slowloris flood, and over-limit bodies
//! on a real socket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use openred_core::time::ManualClock;
use openred_core::UnixTime;
use openred_directory::{Config, Directory};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// A directory serving on 127.0.0.1; it stops when the sender drops.
async fn start(
    tweak: impl FnOnce(&mut Config),
) -> (String, oneshot::Sender<()>, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let mut config = Config::new(address, root.path().join("directory"));
    config.danger_allow_private_addresses = true;
    tweak(&mut config);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let clock = Arc::new(ManualClock::new(UnixTime(now)));
    let directory = Directory::open(config, clock).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(directory.serve(listener, async move {
        let _ = stopped.await;
    }));
    (format!("http://{address}"), stop, root)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        // Below the servers' keep-alive limit (their header timeout), so a
        // pooled connection is never reused as the server closes it.
        .pool_idle_timeout(std::time::Duration::from_secs(5))
        .no_proxy()
        .local_address(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

/// `openred_directory_connections_NAME{listener="api"}`, scraped.
async fn connection_metric(http: &reqwest::Client, base: &str, name: &str) -> u64 {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = format!("openred_directory_connections_{name}{{listener=\"api\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no {line} in the metrics"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_the_directory_leaves_health_answering_and_is_cut_at_the_header_timeout() {
    let _ = openred_http::raise_open_files_limit();
    let header_timeout = 8;
    let (base, _stop, _root) = start(|c| {
        c.header_read_timeout_s = header_timeout;
        // Only the header timeout may cut them within the deadline.
        c.idle_timeout_s = 600;
    })
    .await;
    let target: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let http = client();
    let before = connection_metric(&http, &base, "accepted_total").await;

    // 2,000 half-sent heads, 100 from each of 20 loopback addresses.
    let mut flood = Vec::with_capacity(2000);
    for i in 1..=20 {
        for _ in 0..100 {
            let socket = TcpSocket::new_v4().unwrap();
            socket
                .bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 4, i)), 0))
                .unwrap();
            let mut stream: TcpStream = socket.connect(target).await.unwrap();
            stream
                .write_all(b"GET /api/v3/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap();
            flood.push(stream);
        }
    }
    let flooded_at = Instant::now();
    let deadline = flooded_at + Duration::from_secs(60);
    while connection_metric(&http, &base, "accepted_total").await < before + 2000 {
        assert!(Instant::now() < deadline, "2,000 connections accepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let start = Instant::now();
    let response = http
        .get(format!("{base}/api/v3/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(1), "health took {took:?}");

    let deadline = flooded_at + Duration::from_secs(header_timeout + 60);
    for stream in &mut flood {
        let mut rest = Vec::new();
        // EOF or a reset: either way the server has let go.
        let _closed = tokio::time::timeout_at(deadline, stream.read_to_end(&mut rest))
            .await
            .expect("the server closes a half-sent head");
    }
    assert!(connection_metric(&http, &base, "header_timeouts_total").await >= 2000);
}

#[tokio::test]
async fn an_oversized_body_is_refused_with_a_json_413_on_every_post_route() {
    let (base, _stop, _root) = start(|_| {}).await;
    let http = client();
    let too_big = vec![b' '; 16 * 1024 + 1];
    for path in [
        "/api/v3/nodes/register",
        "/api/v3/nodes/deregister",
        "/api/v3/tokens/request-connection",
    ] {
        let response = http
            .post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(too_big.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 413, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "body_too_large", "{path}");
    }
}
