//! The node's listeners under connection floods: slowloris on the P2P
//! port, one source address hogging it, a full P2P listener. Health and
//! the admin API must keep answering, and half-sent requests must be cut.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use in_process::Network;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// The deadline for health and `status` during a flood.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// A connection from `source` (any 127.0.0.0/8 address) to `target`.
async fn connect_from(source: Ipv4Addr, target: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
    socket.connect(target).await.unwrap()
}

/// `per_source` slowloris connections from each of `sources`: each sends
/// the start of a request head, then nothing.
async fn slowloris(target: SocketAddr, sources: &[Ipv4Addr], per_source: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(sources.len() * per_source);
    for source in sources {
        for _ in 0..per_source {
            let mut stream = connect_from(*source, target).await;
            stream
                .write_all(b"GET /api/v3/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap();
            held.push(stream);
        }
    }
    held
}

/// Waits until the server has closed `stream` (EOF or reset), whatever it
/// wrote first; panics after `deadline`.
async fn closed_by_server(stream: &mut TcpStream, deadline: Instant) -> Vec<u8> {
    let mut answer = Vec::new();
    match tokio::time::timeout_at(deadline, stream.read_to_end(&mut answer)).await {
        Ok(_) => answer,
        Err(_) => panic!("the server left a connection open past the deadline"),
    }
}

/// A client whose connections come from `source`.
fn client_from(source: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        // Below the servers' keep-alive limit (their header timeout), so a
        // pooled connection is never reused as the server closes it.
        .pool_idle_timeout(std::time::Duration::from_secs(5))
        .no_proxy()
        .local_address(IpAddr::V4(source))
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

/// One of the node's listener counters, from its metrics.
fn listener_metric(node: &in_process::TestNode, family: &str, listener: &str) -> u64 {
    connection_metric(node, &format!("{family}{{listener=\"{listener}\"}}"))
}

/// `openred_node_connections_NAME_AND_LABELS`, from the node's metrics.
fn connection_metric(node: &in_process::TestNode, name_and_labels: &str) -> u64 {
    let line = format!("openred_node_connections_{name_and_labels} ");
    let text = node.render_metrics();
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no {line} in the metrics"));
    value.trim().parse().unwrap()
}

async fn wait_accepted(node: &in_process::TestNode, listener: &str, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while listener_metric(node, "accepted_total", listener) < count {
        assert!(
            Instant::now() < deadline,
            "the {listener} listener accepted {count} connections within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GET `url` from `client`, timed; the answer must be a 200.
async fn timed_get(client: &reqwest::Client, url: &str, bearer: Option<&str>) -> Duration {
    let start = Instant::now();
    let mut request = client.get(url);
    if let Some(token) = bearer {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let _ = response.bytes().await.unwrap();
    let took = start.elapsed();
    assert_eq!(status, 200, "{url}");
    took
}

fn p2p_address(node: &in_process::TestNode) -> SocketAddr {
    node.config().listen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_the_p2p_port_leaves_health_and_status_answering_and_is_cut_at_the_header_timeout(
) {
    let _ = openred_http::raise_open_files_limit();
    let net = Network::start().await;
    let header_timeout = 8;
    let node = net
        .node_with("target", |c| {
            c.header_read_timeout_s = header_timeout;
            // Only the header timeout may cut them within the deadline.
            c.idle_timeout_s = 600;
        })
        .await;
    let target = p2p_address(&node);
    let before = listener_metric(&node, "accepted_total", "p2p");
    // 2,000 half-sent heads, 100 from each of 20 loopback addresses (under
    // the per-source cap, so that every one is held by the server).
    let sources: Vec<Ipv4Addr> = (1..=20).map(|i| Ipv4Addr::new(127, 0, 1, i)).collect();
    let mut flood = slowloris(target, &sources, 100).await;
    let flooded_at = Instant::now();
    wait_accepted(&node, "p2p", before + 2000).await;

    let outsider = client_from(Ipv4Addr::new(127, 0, 0, 1));
    let health = timed_get(&outsider, &node.p2p("/api/v3/health"), None).await;
    assert!(health < ANSWER_WITHIN, "health took {health:?}");
    let status = timed_get(
        &outsider,
        &node.admin("/admin/v1/status"),
        Some(&node.admin_token()),
    )
    .await;
    assert!(status < ANSWER_WITHIN, "status took {status:?}");

    // Every half-sent head is cut by the server: the client reads EOF.
    let deadline = flooded_at + Duration::from_secs(header_timeout + 60);
    for stream in &mut flood {
        closed_by_server(stream, deadline).await;
    }
    assert!(listener_metric(&node, "header_timeouts_total", "p2p") >= 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_over_its_connection_cap_is_refused_while_another_is_served() {
    let net = Network::start().await;
    let node = net
        .node_with("target", |c| c.max_connections_per_address = 4)
        .await;
    let target = p2p_address(&node);
    let hog = Ipv4Addr::new(127, 0, 2, 1);
    let before = listener_metric(&node, "accepted_total", "p2p");
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from(hog, target).await);
    }
    wait_accepted(&node, "p2p", before + 4).await;

    // The fifth from the same address: a 503 at once, then closed.
    let mut fifth = connect_from(hog, target).await;
    let answer = closed_by_server(&mut fifth, Instant::now() + Duration::from_secs(30)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("\"error\":\"too_many_connections\""),
        "{answer}"
    );
    assert_eq!(
        connection_metric(
            &node,
            "refused_total{listener=\"p2p\",reason=\"address_full\"}"
        ),
        1
    );

    // Another address is served meanwhile.
    let other = client_from(Ipv4Addr::new(127, 0, 2, 2));
    let took = timed_get(&other, &node.p2p("/api/v3/health"), None).await;
    assert!(took < ANSWER_WITHIN, "health took {took:?}");

    // A connection closed gives its slot back to its address.
    drop(held.pop());
    let hog_client = client_from(hog);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match hog_client.get(node.p2p("/api/v3/health")).send().await {
            Ok(r) if r.status() == 200 => break,
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "the freed slot is reused within 30 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_p2p_listener_refuses_at_once_and_leaves_the_admin_api_its_own_connections() {
    let net = Network::start().await;
    let node = net
        .node_with("target", |c| {
            c.max_connections = 40;
            c.max_connections_per_address = 10;
        })
        .await;
    let target = p2p_address(&node);
    // The directory's kept-alive connection from the reachability proof
    // would hold a slot: wait until the header timeout has closed it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while listener_metric(&node, "open", "p2p") > 0 {
        assert!(
            Instant::now() < deadline,
            "idle connections closed within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = listener_metric(&node, "accepted_total", "p2p");
    let sources: Vec<Ipv4Addr> = (1..=4).map(|i| Ipv4Addr::new(127, 0, 3, i)).collect();
    let _flood = slowloris(target, &sources, 10).await;
    wait_accepted(&node, "p2p", before + 40).await;

    // A newcomer from a fresh address finds the P2P listener full.
    let mut newcomer = connect_from(Ipv4Addr::new(127, 0, 3, 9), target).await;
    let answer = closed_by_server(&mut newcomer, Instant::now() + Duration::from_secs(30)).await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 503"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(
        connection_metric(
            &node,
            "refused_total{listener=\"p2p\",reason=\"listener_full\"}"
        ),
        1
    );
    // The admin listener has its own cap.
    let took = timed_get(
        &client_from(Ipv4Addr::LOCALHOST),
        &node.admin("/admin/v1/status"),
        Some(&node.admin_token()),
    )
    .await;
    assert!(took < ANSWER_WITHIN, "status took {took:?}");
}

#[tokio::test]
async fn an_oversized_raw_frame_is_refused_with_a_json_413() {
    let net = Network::start().await;
    let node = net.node("target").await;
    let too_big = vec![0u8; node.config().max_frame_bytes + 8192];
    for path in ["/p2p/ping", "/p2p/message"] {
        let answer = in_process::post_bytes(&net.http, &node.p2p(path), too_big.clone()).await;
        in_process::assert_refused(&answer, 413, "body_too_large");
    }
}
