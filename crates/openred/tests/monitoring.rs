//! Liveness and readiness, the Prometheus exposition, and peer status:
//! what each reports after real traffic, refusals and outages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use std::time::Duration;

use in_process::*;
use openred_core::wire::{
    ConnectionIdBytes, HandshakeRequest, NoiseMessage, TokenBytes, TokenPush,
};
use openred_node::health;
use openred_node::modules::monitoring::Monitoring;
use openred_node::owner::admin::StatusView;
use serde_json::json;

/// The value of the sample `line` (name and labels) in `text`.
fn sample(text: &str, line: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
}

async fn metrics_of(net: &Network, node: &TestNode) -> String {
    let answer = get(
        &net.http,
        &node.admin("/metrics"),
        Some(&node.admin_token()),
    )
    .await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    String::from_utf8(answer.body).unwrap()
}

async fn status_of(net: &Network, node: &TestNode) -> StatusView {
    let answer = get(
        &net.http,
        &node.admin("/admin/v1/status"),
        Some(&node.admin_token()),
    )
    .await;
    serde_json::from_value(answer.json).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_readiness_from_the_last_checks_and_a_directory_outage() {
    let net = Network::start().await;
    let a = net.node("a").await;
    a.wait_registered().await;
    health::check_now(&a.state).await;
    let answer = get(&net.http, &a.p2p("/api/v3/health"), None).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json["live"], true);
    assert_eq!(answer.json["ready"], true, "{}", answer.json);
    assert_eq!(
        answer.json["checks"],
        json!({"agent": true, "database": true, "directory": true})
    );
    assert_eq!(
        get(&net.http, &a.p2p("/api/v3/health/ready"), None)
            .await
            .status,
        200
    );

    net.stop_directory().await;
    let readiness = health::check_now(&a.state).await;
    assert!(!readiness.ready);
    assert!(readiness.agent.ok && readiness.database.ok && !readiness.directory.ok);
    assert!(readiness.directory.error.is_some());
    let answer = get(&net.http, &a.p2p("/api/v3/health"), None).await;
    assert_eq!(answer.status, 200, "still live");
    assert_eq!(answer.json["status"], "ok");
    assert_eq!(answer.json["ready"], false);
    assert_eq!(answer.json["checks"]["directory"], false);
    // The public answer carries no error text; the owner's status does.
    assert!(!String::from_utf8_lossy(&answer.body).contains("error"));
    let probe = get(&net.http, &a.p2p("/api/v3/health/ready"), None).await;
    assert_eq!(probe.status, 503);
    assert_eq!(probe.json["ready"], false);
    let status = status_of(&net, &a).await;
    let readiness = status.readiness.expect("checked");
    assert!(!readiness.directory.ok && readiness.directory.error.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_handshakes_tokens_traffic_and_refusals_by_reason() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;
    a.state.connect(b.id()).await.unwrap();
    let before = metrics_of(&net, &b).await;
    assert_eq!(
        sample(&before, "openred_node_handshakes_total{role=\"responder\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&before, "openred_node_tokens_received_total"),
        Some(1.0)
    );
    let on_a = metrics_of(&net, &a).await;
    assert_eq!(
        sample(&on_a, "openred_node_handshakes_total{role=\"initiator\"}"),
        Some(1.0)
    );
    assert_eq!(sample(&on_a, "openred_node_sessions"), Some(1.0));
    assert_eq!(sample(&on_a, "openred_node_peers"), Some(1.0));
    assert!(sample(&on_a, "openred_node_agent_call_seconds_count").unwrap() >= 2.0);
    assert_eq!(sample(&on_a, "openred_monitoring_enabled"), Some(1.0));
    assert_eq!(sample(&on_a, "openred_messaging_enabled"), Some(1.0));

    // A token that is not one, and a handshake for an unknown connection:
    // each refused, and counted under the code it was refused with.
    let bad_token = post_json(
        &net.http,
        &b.p2p("/api/v3/tokens/receive"),
        &TokenPush {
            from: a.id(),
            token: TokenBytes(b"not a token".to_vec()),
        },
    )
    .await;
    assert_eq!(bad_token.status, 400);
    let bad_handshake = post_json(
        &net.http,
        &b.p2p("/p2p/handshake"),
        &HandshakeRequest {
            connection_id: ConnectionIdBytes(random16()),
            suites: vec![1],
            message: NoiseMessage(vec![0u8; 96]),
        },
    )
    .await;
    assert!(bad_handshake.status >= 400 && bad_handshake.status < 500);
    let after = metrics_of(&net, &b).await;
    assert_eq!(
        sample(
            &after,
            &format!(
                "openred_node_tokens_rejected_total{{reason=\"{}\"}}",
                bad_token.code().unwrap()
            )
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &after,
            &format!(
                "openred_node_handshakes_failed_total{{reason=\"{}\"}}",
                bad_handshake.code().unwrap()
            )
        ),
        Some(1.0)
    );
    // Traffic: B served the token push, the handshake and the ping, plus
    // the two refusals, and counted their bytes.
    let requests = sample(&after, "openred_node_p2p_requests_total").unwrap();
    assert!(requests >= 5.0, "{requests}");
    assert!(
        sample(&after, "openred_node_p2p_received_bytes_total").unwrap()
            > sample(&before, "openred_node_p2p_received_bytes_total").unwrap()
    );
    assert!(sample(&after, "openred_node_p2p_sent_bytes_total").unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_owner_token_and_the_module_switched_on() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let url = a.admin("/metrics");
    assert_refused(&get(&net.http, &url, None).await, 401, "unauthorized");
    assert_refused(
        &get(&net.http, &url, Some("not-the-token")).await,
        401,
        "unauthorized",
    );
    let off = a.switch_module(&net.http, "monitoring", false).await;
    assert_eq!(off.status, 200);
    assert_refused(
        &get(&net.http, &url, Some(&a.admin_token())).await,
        404,
        "module_disabled",
    );
    a.admin_post(
        &net.http,
        "/admin/v1/modules/monitoring/enable",
        Some(&a.admin_token()),
        &json!({}),
    )
    .await;
    assert_eq!(
        get(&net.http, &url, Some(&a.admin_token())).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_status_shows_the_round_trip_last_contact_age_and_epochs() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;
    let c = net.node("c").await;
    a.state.connect(b.id()).await.unwrap();
    a.state.connect(c.id()).await.unwrap();
    let monitoring = a.state.modules().get::<Monitoring>().unwrap();
    assert_eq!(monitoring.ping_peers(&a.state.peers()).await, 2);
    let status = status_of(&net, &a).await;
    assert_eq!(status.sessions.len(), 2);
    for session in &status.sessions {
        let rtt = session.rtt_ms.expect("measured");
        assert!(rtt > 0.0 && rtt < 5_000.0, "{rtt}");
        assert!(session.last_contact_s <= 1);
        assert_eq!(session.role, "initiator");
    }
    let text = metrics_of(&net, &a).await;
    assert_eq!(
        sample(&text, "openred_node_peer_rtt_seconds_count"),
        Some(4.0)
    );
    assert_eq!(sample(&text, "openred_monitoring_pings_total"), Some(2.0));

    // A peer that is gone fails its ping; the failure is counted.
    let mut c = c;
    c.stop().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(monitoring.ping_peers(&a.state.peers()).await, 1);
    let text = metrics_of(&net, &a).await;
    assert_eq!(
        sample(&text, "openred_monitoring_pings_failed_total"),
        Some(1.0)
    );
}

/// Every metric the node's Grafana dashboard queries is one the node
/// exposes (a renamed metric would leave a panel silently empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_only_metrics_the_node_exposes() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let text = metrics_of(&net, &a).await;
    let exposed: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/openred-node.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queried = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("openred_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                // `openred_.*_enabled` is a pattern over the modules' names.
                if name == "openred_" {
                    continue;
                }
                queried.insert(name);
            }
        }
    }
    assert!(queried.len() >= 15, "{queried:?}");
    for name in &queried {
        let family = name.strip_suffix("_bucket").unwrap_or(name);
        assert!(exposed.contains(family), "{name} is not exposed:\n{text}");
    }
}
