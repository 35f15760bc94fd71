//! Listing the directory's nodes through the admin API (`openred peers`)
//! and the limits of the route that signs for anyone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use in_process::{assert_refused, get, post_json, Network};
use openred_core::wire::{ChallengeBytes, ReachabilityChallenge};
use openred_core::{AgreementSecret, ApiUrl, IdentityKeypair, NodeRecord};
use openred_directory::store::{Store, Write};
use openred_node::config::{RateQuota, ReachabilityLimits};

/// An origin of exactly 255 bytes (the longest a record holds), unique per
/// `i`.
fn longest_origin(i: u32) -> String {
    let url = format!(
        "https://n{i:04}{}.{}.{}.{}.example.com:65535",
        "a".repeat(45),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(50)
    );
    assert_eq!(url.len(), openred_core::url::MAX_URL_LEN);
    url
}

/// Writes `count` signed records straight into the directory's database,
/// as registrations would have: every other one with the longest URL.
async fn fill_directory(net: &Network, count: u32) -> BTreeSet<String> {
    let store = Store::open(&net.directory_database()).await.unwrap();
    let now = net.now();
    let mut ids = BTreeSet::new();
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..count {
        let mut secret = [0x5a; 32];
        secret[..4].copy_from_slice(&i.to_be_bytes());
        let key = IdentityKeypair::from_secret_bytes(&secret);
        let url = if i % 2 == 0 {
            longest_origin(i)
        } else {
            format!("https://n{i}.example.com")
        };
        let record = NodeRecord::sign(
            &key,
            AgreementSecret::from_secret_bytes(secret).public(),
            ApiUrl::parse_canonical(&url).unwrap(),
            1,
            now,
            now.plus(86_400),
        );
        ids.insert(key.node_id().to_string());
        let store = store.clone();
        writes.spawn(async move { store.upsert_record(&record, now).await });
    }
    while let Some(written) = writes.join_next().await {
        assert_eq!(written.unwrap().unwrap(), Write::Applied);
    }
    store.close().await;
    ids
}

async fn listed_peers(node: &in_process::TestNode) -> Vec<serde_json::Value> {
    // Verifying and remembering 600 records takes a while on a loaded
    // machine: a generous deadline.
    let http = reqwest::Client::builder()
        // Below the servers' keep-alive limit (their header timeout), so a
        // pooled connection is never reused as the server closes it.
        .pool_idle_timeout(std::time::Duration::from_secs(5))
        .no_proxy()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let token = node.admin_token();
    let answer = get(&http, &node.admin("/admin/v1/peers"), Some(token.as_str())).await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    answer.json.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_lists_600_nodes_although_500_records_overflow_the_answer_cap() {
    let net = Network::start().await;
    let expected = fill_directory(&net, 600).await;
    let node = net.node("lister").await;
    let peers = listed_peers(&node).await;
    let listed: BTreeSet<String> = peers
        .iter()
        .map(|p| p["node_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(peers.len(), 600, "every node once");
    assert_eq!(listed, expected);
    assert!(
        peers.iter().all(|p| p["verified"] == true),
        "every record verified"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_sizes_its_pages_even_when_the_directory_does_not_bound_them() {
    // A directory that would send 500 records in one page if asked: the
    // node must ask for pages that fit its 64 KiB answer cap by itself.
    let net = Network::start_with(|c| c.max_page_bytes = 16 * 1024 * 1024).await;
    let expected = fill_directory(&net, 600).await;
    let node = net.node("lister").await;
    let peers = listed_peers(&node).await;
    assert_eq!(peers.len(), 600);
    let listed: BTreeSet<String> = peers
        .iter()
        .map(|p| p["node_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_reachability_challenges_is_rate_limited_per_source_and_in_total() {
    let net = Network::start().await;
    // One request a minute after the bursts: nothing refills while the test
    // runs. The directory's own challenge at registration (from 127.0.0.1)
    // takes one of the global eight.
    let node = net
        .node_with("target", |c| {
            c.reachability_limits = ReachabilityLimits {
                per_source: RateQuota {
                    per_minute: 1,
                    burst: 3,
                },
                global: RateQuota {
                    per_minute: 1,
                    burst: 8,
                },
                ipv6_prefix_len: 64,
            };
        })
        .await;
    let from = |last: u8| {
        reqwest::Client::builder()
            // Below the servers' keep-alive limit (their header timeout), so a
            // pooled connection is never reused as the server closes it.
            .pool_idle_timeout(std::time::Duration::from_secs(5))
            .no_proxy()
            .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap()
    };
    let challenge = ReachabilityChallenge {
        node_id: node.id(),
        challenge: ChallengeBytes([7u8; 32]),
    };
    let url = node.p2p("/api/v3/reachability");
    // One source: three proofs, then 429.
    let first = from(2);
    for _ in 0..3 {
        let answer = post_json(&first, &url, &challenge).await;
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
    }
    let answer = post_json(&first, &url, &challenge).await;
    assert_refused(&answer, 429, "rate_limited");
    // Garbage is refused before it is parsed, so it cannot dodge the limit.
    let answer = post_json(&first, &url, &serde_json::json!({"x": 1})).await;
    assert_refused(&answer, 429, "rate_limited");
    // Other sources have their own budgets, until all sources together
    // have used the global one (eight, less the directory's challenge and
    // the first source's three).
    let mut admitted = 0;
    let mut last = 3;
    loop {
        let answer = post_json(&from(last), &url, &challenge).await;
        last += 1;
        if answer.status == 429 {
            assert_refused(&answer, 429, "rate_limited");
            break;
        }
        assert_eq!(answer.status, 200);
        admitted += 1;
        assert!(admitted <= 4, "the global budget held no more than 8");
    }
    assert!(admitted >= 1, "a fresh source had its own budget");
    let answer = post_json(&from(last), &url, &challenge).await;
    assert_refused(&answer, 429, "rate_limited");
    // The rest of the node keeps answering.
    let health = get(&net.http, &node.p2p("/api/v3/health"), None).await;
    assert_eq!(health.status, 200);
}
