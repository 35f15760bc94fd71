//! The directory's HTTP API, every endpoint and every rejection, on SQLite
//! and on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use axum::http::StatusCode;
use common::{register_body, Backend, Harness, TestNode, T0};
use openred_core::keys::SignatureContext;
use openred_core::wire::{b64_decode, b64_encode, DeregisterRequest};
use openred_core::{NodeId, SignedRecord, UnixTime};
use openred_directory::Quota;
use serde_json::json;

on_both_backends!(
    register_lookup_discover_and_health,
    heartbeat_is_a_reregistration_with_the_next_seq,
    rejects_forged_and_malformed_records,
    rejects_stale_and_expired_records,
    replayed_and_rolled_back_seq_answer_409_and_change_nothing,
    rejects_bad_json_unknown_fields_and_oversize_bodies,
    url_policy_without_and_with_the_danger_flag,
    unknown_and_malformed_node_ids,
    pagination_covers_every_node_once_and_rejects_bad_cursors,
    listing_can_be_turned_off_but_lookups_stay,
    status_turns_inactive_and_old_records_are_pruned,
    deregistration_is_signed_and_final_for_older_records,
    rate_limits_answer_429_with_retry_after,
    restart_keeps_records_and_key,
    garbage_never_gets_a_5xx,
    concurrent_registrations_share_commits_and_keep_the_highest_seq,
    a_record_signed_to_live_for_a_century_is_refused,
    a_seq_of_2_63_minus_1_cannot_lock_a_node_out,
    rotating_ipv6_addresses_in_one_prefix_share_one_rate_limit_budget,
    a_page_of_the_largest_records_never_passes_the_page_byte_cap,
);

async fn register_lookup_discover_and_health(backend: Backend) {
    let h = Harness::new(backend).await;
    let node = TestNode::new(1);
    let record = node.record(1, T0);
    let a = h.register(&record).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["node_id"], node.id());
    assert_eq!(a.json["status"], "active");
    assert_eq!(a.json["seq"], 1);
    let hb = a.json["next_heartbeat_s"].as_u64().unwrap();
    assert!((270..=330).contains(&hb), "300 s ± 10% jitter, got {hb}");

    let a = h.lookup(&node.id()).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["api_url"], "https://node1.example.com");
    assert_eq!(a.json["last_seen"], T0);
    assert_eq!(a.json["status"], "active");
    // The record is served exactly as signed, and verifies on the client.
    let bytes = b64_decode(a.json["record"].as_str().unwrap()).unwrap();
    assert_eq!(bytes, record.as_bytes());
    let verified = SignedRecord::decode(&bytes).unwrap();
    assert_eq!(verified.record().node_id.to_string(), node.id());

    let a = h
        .call(
            "GET",
            &format!("/api/v3/nodes/discover?node_id={}", node.id()),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["nodes"].as_array().unwrap().len(), 1);
    assert!(a.json.get("next_cursor").is_none());

    let a = h.call("GET", "/api/v3/nodes/discover", None).await;
    assert_eq!(a.json["nodes"][0]["node_id"], node.id());

    let a = h.call("GET", "/api/v3/health", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["status"], "ok");
    assert_eq!(a.json["nodes"]["active"], 1);
    assert_eq!(a.json["nodes"]["inactive"], 0);
    assert_eq!(
        a.json["directory_key"],
        h.directory.fingerprint().to_string()
    );

    let a = h.call("GET", "/metrics", None).await;
    assert!(a.text.contains("openred_directory_registrations_total"));
    assert!(a
        .text
        .contains("openred_directory_http_request_duration_seconds"));
}

async fn heartbeat_is_a_reregistration_with_the_next_seq(backend: Backend) {
    let h = Harness::new(backend).await;
    let node = TestNode::new(2);
    assert_eq!(h.register(&node.record(1, T0)).await.status, StatusCode::OK);
    h.clock.advance(200);
    let a = h.register(&node.record(2, T0 + 200)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["seq"], 2);
    let a = h.lookup(&node.id()).await;
    assert_eq!(a.json["last_seen"], T0 + 200);
    let record =
        SignedRecord::decode(&b64_decode(a.json["record"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(record.record().seq, 2);
}

async fn rejects_forged_and_malformed_records(backend: Backend) {
    let h = Harness::new(backend).await;
    let node = TestNode::new(3);
    let good = node.record(1, T0);
    let sig_at = good.as_bytes().len() - 64;

    // A flipped signature bit.
    let mut bytes = good.as_bytes().to_vec();
    bytes[sig_at + 5] ^= 1;
    let a = post_record_bytes(&h, &bytes).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, "bad_signature")
    );

    // A valid signature by the right key, but made for another context.
    let mut bytes = good.as_bytes()[..sig_at].to_vec();
    let sig = node.key.sign(SignatureContext::Deregistration, &bytes);
    bytes.extend_from_slice(&sig);
    let a = post_record_bytes(&h, &bytes).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, "bad_signature")
    );

    // A changed field (seq) under the old signature.
    let mut bytes = good.as_bytes().to_vec();
    bytes[104] ^= 1;
    let a = post_record_bytes(&h, &bytes).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, "bad_signature")
    );

    // A node ID that does not belong to the key.
    let mut bytes = good.as_bytes().to_vec();
    bytes[1..33].copy_from_slice(TestNode::new(4).key.node_id().as_bytes());
    let a = post_record_bytes(&h, &bytes).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, "node_id_mismatch")
    );

    // Another node's key and ID with our signature: the signature fails.
    let other = TestNode::new(5).record(1, T0);
    let mut bytes = other.as_bytes()[..sig_at.min(other.as_bytes().len() - 64)].to_vec();
    bytes.extend_from_slice(&good.as_bytes()[sig_at..]);
    let a = post_record_bytes(&h, &bytes).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);

    // Truncated, not base64, unknown version.
    let a = post_record_bytes(&h, &good.as_bytes()[..100]).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, "bad_record")
    );
    let a = h
        .call(
            "POST",
            "/api/v3/nodes/register",
            Some(json!({"record": "***"})),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, "bad_record")
    );
    let mut bytes = good.as_bytes().to_vec();
    bytes[0] = 9;
    let a = post_record_bytes(&h, &bytes).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, "bad_record")
    );

    // None of it left a trace.
    assert_eq!(h.lookup(&node.id()).await.status, StatusCode::NOT_FOUND);
    assert_nothing_stored(&h).await;
}

async fn post_record_bytes(h: &Harness, bytes: &[u8]) -> common::Answer {
    h.call(
        "POST",
        "/api/v3/nodes/register",
        Some(json!({ "record": b64_encode(bytes) })),
    )
    .await
}

async fn assert_nothing_stored(h: &Harness) {
    let a = h.call("GET", "/api/v3/health", None).await;
    assert_eq!(a.json["nodes"], json!({"active": 0, "inactive": 0}));
}

async fn rejects_stale_and_expired_records(backend: Backend) {
    let h = Harness::new(backend).await;
    let node = TestNode::new(6);
    let url = node.url.clone();
    // Issued more than the skew (300 s) in the past, or in the future.
    for issued in [T0 - 301, T0 + 301] {
        let a = h
            .register(&node.record_at(1, issued, T0 + 9_999, &url))
            .await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::BAD_REQUEST, "stale_record")
        );
    }
    // Fresh enough but already expired.
    let a = h.register(&node.record_at(1, T0 - 100, T0 - 1, &url)).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, "expired_record")
    );
    // Within the skew on both sides passes.
    let a = h
        .register(&node.record_at(1, T0 - 299, T0 + 10, &url))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
}

async fn replayed_and_rolled_back_seq_answer_409_and_change_nothing(backend: Backend) {
    let h = Harness::new(backend).await;
    let node = TestNode::new(7);
    let r5 = node.record(5, T0);
    assert_eq!(h.register(&r5).await.status, StatusCode::OK);

    // The very same record again: a replay.
    let a = h.register(&r5).await;
    assert_eq!((a.status, a.code()), (StatusCode::CONFLICT, "seq_replay"));
    // A fresh record reusing seq 5 with another URL: also a replay.
    let other = node.record_at(5, T0, T0 + 999, "https://evil.example.com");
    let a = h.register(&other).await;
    assert_eq!((a.status, a.code()), (StatusCode::CONFLICT, "seq_replay"));
    // An older seq: a rollback.
    let a = h
        .register(&node.record_at(4, T0, T0 + 999, "https://evil.example.com"))
        .await;
    assert_eq!((a.status, a.code()), (StatusCode::CONFLICT, "seq_rollback"));

    let a = h.lookup(&node.id()).await;
    assert_eq!(
        b64_decode(a.json["record"].as_str().unwrap()).unwrap(),
        r5.as_bytes()
    );
    assert_eq!(a.json["api_url"], "https://node7.example.com");
}

async fn rejects_bad_json_unknown_fields_and_oversize_bodies(backend: Backend) {
    let h = Harness::new(backend).await;
    let peer = "198.51.100.1:1".parse().unwrap();
    let reg = "/api/v3/nodes/register";
    let a = h
        .raw("POST", reg, Some("{not json"), "application/json", peer)
        .await;
    assert_eq!((a.status, a.code()), (StatusCode::BAD_REQUEST, "bad_json"));
    let a = h
        .raw(
            "POST",
            reg,
            Some(r#"{"record":"AA","admin":true}"#),
            "application/json",
            peer,
        )
        .await;
    assert!(a.status.is_client_error());
    assert_eq!(a.code(), "bad_json");
    assert!(a.json["message"].as_str().unwrap().contains("admin"));
    let a = h
        .raw("POST", reg, Some(r#"{"record":"AA"}"#), "text/plain", peer)
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    let huge = format!(
        r#"{{"record":"{}"}}"#,
        "A".repeat(h.config.max_body_bytes + 1)
    );
    let a = h
        .raw("POST", reg, Some(&huge), "application/json", peer)
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
    );
    let a = h
        .raw(
            "POST",
            "/api/v3/nodes/deregister",
            Some(r#"{"node_id":1}"#),
            "application/json",
            peer,
        )
        .await;
    assert_eq!(a.code(), "bad_json");
    let a = h
        .call("GET", "/api/v3/nodes/discover?limit=abc", None)
        .await;
    assert_eq!((a.status, a.code()), (StatusCode::BAD_REQUEST, "bad_query"));
    let a = h
        .call("GET", "/api/v3/nodes/discover?colour=red", None)
        .await;
    assert_eq!((a.status, a.code()), (StatusCode::BAD_REQUEST, "bad_query"));
    let a = h.call("GET", "/api/v3/nope", None).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::NOT_FOUND, "no_such_route")
    );
    let a = h.call("DELETE", "/api/v3/health", None).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    assert_nothing_stored(&h).await;
}

async fn url_policy_without_and_with_the_danger_flag(backend: Backend) {
    let h = Harness::new(backend.clone()).await;
    let node = TestNode::new(8);
    let cases = [
        ("http://node8.example.com", "url_not_https"),
        ("https://127.0.0.1:8443", "url_not_global"),
        ("https://10.0.0.8", "url_not_global"),
        ("https://192.168.1.8", "url_not_global"),
        ("https://169.254.169.254", "url_not_global"),
        ("https://[::1]:8443", "url_not_global"),
        ("https://[fe80::8]", "url_not_global"),
        ("https://[::ffff:127.0.0.1]", "url_not_global"),
        ("https://localhost:8443", "url_not_global"),
    ];
    for (url, code) in cases {
        let a = h.register(&node.record_at(1, T0, T0 + 999, url)).await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::BAD_REQUEST, code),
            "{url}"
        );
    }
    // A non-canonical URL inside a signed record (path) is refused as bad_url.
    let mut bytes = node
        .record_at(1, T0, T0 + 999, "https://n.example.com")
        .as_bytes()
        .to_vec();
    let at = bytes.len() - 64 - 1;
    bytes[at] = b'/';
    let a = post_record_bytes(&h, &bytes).await;
    assert_eq!((a.status, a.code()), (StatusCode::BAD_REQUEST, "bad_url"));
    assert_nothing_stored(&h).await;

    let dev = Harness::with(backend, |c| c.danger_allow_private_addresses = true).await;
    let a = dev
        .register(&node.record_at(1, T0, T0 + 999, "http://127.0.0.1:8080"))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
}

async fn unknown_and_malformed_node_ids(backend: Backend) {
    let h = Harness::new(backend).await;
    let unknown = TestNode::new(9).id();
    let a = h.lookup(&unknown).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::NOT_FOUND, "unknown_node")
    );
    let a = h
        .call(
            "GET",
            &format!("/api/v3/nodes/discover?node_id={unknown}"),
            None,
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::NOT_FOUND, "unknown_node")
    );
    let mut typo = unknown.clone();
    typo.replace_range(0..1, if typo.starts_with('a') { "b" } else { "a" });
    let a = h.lookup(&typo).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, "bad_node_id")
    );
    let a = h.lookup("short").await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, "bad_node_id")
    );
}

async fn pagination_covers_every_node_once_and_rejects_bad_cursors(backend: Backend) {
    let h = Harness::new(backend).await;
    let mut expected = BTreeSet::new();
    for seed in 10..17 {
        let node = TestNode::new(seed);
        assert_eq!(h.register(&node.record(1, T0)).await.status, StatusCode::OK);
        expected.insert(node.id());
    }
    let mut seen = Vec::new();
    let mut uri = "/api/v3/nodes/discover?limit=3".to_owned();
    loop {
        let a = h.call("GET", &uri, None).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        let page = a.json["nodes"].as_array().unwrap();
        assert!(page.len() <= 3);
        seen.extend(
            page.iter()
                .map(|n| n["node_id"].as_str().unwrap().to_owned()),
        );
        match a.json["next_cursor"].as_str() {
            Some(cursor) => uri = format!("/api/v3/nodes/discover?limit=3&cursor={cursor}"),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort_by_key(|id| *NodeId::parse(id).unwrap().as_bytes());
    assert_eq!(seen, sorted, "pages come in node ID order");
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), expected);

    for bad in [
        "zzz",
        "AAAA",
        &b64_encode(&[2u8; 33]),
        &b64_encode(&[1u8; 10]),
    ] {
        let a = h
            .call("GET", &format!("/api/v3/nodes/discover?cursor={bad}"), None)
            .await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::BAD_REQUEST, "bad_cursor"),
            "{bad}"
        );
    }
    for bad in ["0", "100000"] {
        let a = h
            .call("GET", &format!("/api/v3/nodes/discover?limit={bad}"), None)
            .await;
        assert_eq!((a.status, a.code()), (StatusCode::BAD_REQUEST, "bad_limit"));
    }
}

async fn listing_can_be_turned_off_but_lookups_stay(backend: Backend) {
    let h = Harness::with(backend, |c| c.allow_listing = false).await;
    let node = TestNode::new(20);
    assert_eq!(h.register(&node.record(1, T0)).await.status, StatusCode::OK);
    let a = h.call("GET", "/api/v3/nodes/discover", None).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::FORBIDDEN, "listing_disabled")
    );
    let a = h
        .call(
            "GET",
            &format!("/api/v3/nodes/discover?node_id={}", node.id()),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(h.lookup(&node.id()).await.status, StatusCode::OK);
}

async fn status_turns_inactive_and_old_records_are_pruned(backend: Backend) {
    let h = Harness::new(backend).await;
    let old = TestNode::new(21);
    let fresh = TestNode::new(22);
    assert_eq!(h.register(&old.record(1, T0)).await.status, StatusCode::OK);
    // Past the activity window (900 s) for `old`; `fresh` registers now.
    h.clock.advance(901);
    assert_eq!(
        h.register(&fresh.record(1, T0 + 901)).await.status,
        StatusCode::OK
    );
    assert_eq!(h.lookup(&old.id()).await.json["status"], "inactive");
    assert_eq!(h.lookup(&fresh.id()).await.json["status"], "active");
    let a = h
        .call("GET", "/api/v3/nodes/discover?status=inactive", None)
        .await;
    let ids: Vec<_> = a.json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_id"].clone())
        .collect();
    assert_eq!(ids, vec![json!(old.id())]);
    let a = h
        .call("GET", "/api/v3/nodes/discover?status=active", None)
        .await;
    let ids: Vec<_> = a.json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_id"].clone())
        .collect();
    assert_eq!(ids, vec![json!(fresh.id())]);
    let a = h.call("GET", "/api/v3/health", None).await;
    assert_eq!(a.json["nodes"], json!({"active": 1, "inactive": 1}));

    // Past the retention (30 days) for `old` only.
    h.clock.set(UnixTime(T0 + 30 * 86_400 + 1));
    // `fresh`'s record (valid one day) has expired meanwhile: it is not
    // served, in lookups or listings, until the node registers again.
    let a = h.lookup(&fresh.id()).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::NOT_FOUND, "record_expired")
    );
    let a = h.call("GET", "/api/v3/nodes/discover", None).await;
    assert!(!a.text.contains(&fresh.id()), "{}", a.text);
    let now = T0 + 30 * 86_400 + 1;
    assert_eq!(
        h.register(&fresh.record(2, now)).await.status,
        StatusCode::OK
    );
    assert_eq!(h.directory.prune_once().await.unwrap(), 1);
    assert_eq!(h.lookup(&old.id()).await.status, StatusCode::NOT_FOUND);
    assert_eq!(h.lookup(&fresh.id()).await.status, StatusCode::OK);
    assert!(h
        .directory
        .store()
        .node(&old.key.node_id())
        .await
        .unwrap()
        .is_none());
}

async fn deregistration_is_signed_and_final_for_older_records(backend: Backend) {
    let h = Harness::new(backend).await;
    let node = TestNode::new(23);
    let r3 = node.record(3, T0);
    assert_eq!(h.register(&r3).await.status, StatusCode::OK);
    let dereg = |req: &DeregisterRequest| serde_json::to_value(req).unwrap();
    let path = "/api/v3/nodes/deregister";

    // Signed by someone else.
    let forged = DeregisterRequest {
        node_id: node.key.node_id(),
        ..DeregisterRequest::sign(&TestNode::new(24).key, 4, UnixTime(T0))
    };
    let a = h.call("POST", path, Some(dereg(&forged))).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, "bad_signature")
    );
    // Not newer than the record.
    let a = h
        .call(
            "POST",
            path,
            Some(dereg(&DeregisterRequest::sign(&node.key, 3, UnixTime(T0)))),
        )
        .await;
    assert_eq!((a.status, a.code()), (StatusCode::CONFLICT, "seq_replay"));
    // Stale.
    let a = h
        .call(
            "POST",
            path,
            Some(dereg(&DeregisterRequest::sign(
                &node.key,
                4,
                UnixTime(T0 - 400),
            ))),
        )
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, "stale_request")
    );
    assert_eq!(h.lookup(&node.id()).await.status, StatusCode::OK);

    let good = DeregisterRequest::sign(&node.key, 4, UnixTime(T0));
    let a = h.call("POST", path, Some(dereg(&good))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json["deregistered"], true);
    assert_eq!(h.lookup(&node.id()).await.status, StatusCode::NOT_FOUND);
    let listed = h.call("GET", "/api/v3/nodes/discover", None).await;
    assert_eq!(listed.json["nodes"], json!([]));

    // Replaying the deregistration, or the old record, changes nothing.
    let a = h.call("POST", path, Some(dereg(&good))).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::NOT_FOUND, "unknown_node")
    );
    let a = h.register(&r3).await;
    assert_eq!((a.status, a.code()), (StatusCode::CONFLICT, "seq_rollback"));
    assert_eq!(h.lookup(&node.id()).await.status, StatusCode::NOT_FOUND);
    // A newer record brings the node back.
    assert_eq!(h.register(&node.record(5, T0)).await.status, StatusCode::OK);
    assert_eq!(h.lookup(&node.id()).await.status, StatusCode::OK);
}

async fn rate_limits_answer_429_with_retry_after(backend: Backend) {
    let h = Harness::with(backend, |c| {
        c.rate_limits.enabled = true;
        c.rate_limits.writes_per_address = Quota::new(1, 3);
        c.rate_limits.writes_per_node = Quota::new(1, 2);
        c.rate_limits.lookup_misses_per_address = Quota::new(1, 2);
    })
    .await;
    let a_addr = "198.51.100.1:1".parse().unwrap();
    let b_addr = "198.51.100.2:1".parse().unwrap();
    // Per node: two writes pass, the third is refused even from another address.
    let node = TestNode::new(30);
    assert_eq!(
        reg(&h, &node.record(1, T0), a_addr).await.status,
        StatusCode::OK
    );
    assert_eq!(
        reg(&h, &node.record(2, T0), a_addr).await.status,
        StatusCode::OK
    );
    let a = reg(&h, &node.record(3, T0), b_addr).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    assert!(
        a.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    // Per address: the third write from a_addr is refused, whatever the node.
    let a = reg(&h, &TestNode::new(31).record(1, T0), a_addr).await;
    assert_eq!(a.status, StatusCode::OK);
    let a = reg(&h, &TestNode::new(32).record(1, T0), a_addr).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    assert!(a.headers.contains_key("retry-after"));

    // Lookup misses are limited; hits are not, even after the misses ran out.
    let unknown = TestNode::new(33).id();
    for _ in 0..2 {
        let a = h
            .raw("GET", &format!("/api/v3/nodes/{unknown}"), None, "", a_addr)
            .await;
        assert_eq!(a.status, StatusCode::NOT_FOUND);
    }
    let a = h
        .raw("GET", &format!("/api/v3/nodes/{unknown}"), None, "", a_addr)
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    for _ in 0..50 {
        let a = h
            .raw(
                "GET",
                &format!("/api/v3/nodes/{}", node.id()),
                None,
                "",
                a_addr,
            )
            .await;
        assert_eq!(a.status, StatusCode::OK);
    }
    // Health is never throttled.
    for _ in 0..20 {
        let a = h.raw("GET", "/api/v3/health", None, "", a_addr).await;
        assert_eq!(a.status, StatusCode::OK);
    }
}

async fn reg(h: &Harness, record: &SignedRecord, from: std::net::SocketAddr) -> common::Answer {
    let body = register_body(record).to_string();
    h.raw(
        "POST",
        "/api/v3/nodes/register",
        Some(&body),
        "application/json",
        from,
    )
    .await
}

async fn restart_keeps_records_and_key(backend: Backend) {
    let h = Harness::new(backend).await;
    let node = TestNode::new(40);
    assert_eq!(h.register(&node.record(1, T0)).await.status, StatusCode::OK);
    let again = h.reopen().await;
    assert_eq!(again.fingerprint(), h.directory.fingerprint());
    assert_eq!(
        again.cached_nodes(),
        1,
        "the lookup cache is warmed from the database"
    );
    let stored = again
        .store()
        .node(&node.key.node_id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.seq, 1);
}

async fn garbage_never_gets_a_5xx(backend: Backend) {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::TestRunner;
    let h = Harness::new(backend).await;
    let mut runner = TestRunner::deterministic();
    let strategy = proptest::collection::vec(proptest::num::u8::ANY, 0..400);
    let peer = "198.51.100.9:9".parse().unwrap();
    let routes = [
        ("POST", "/api/v3/nodes/register"),
        ("POST", "/api/v3/nodes/deregister"),
        ("POST", "/api/v3/tokens/request-connection"),
    ];
    for i in 0..200 {
        let bytes = strategy.new_tree(&mut runner).unwrap().current();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let (method, route) = routes[i % routes.len()];
        let body = if i % 2 == 0 {
            text.clone()
        } else {
            json!({ "record": b64_encode(&bytes) }).to_string()
        };
        let a = h
            .raw(method, route, Some(&body), "application/json", peer)
            .await;
        assert!(
            a.status.is_client_error() || a.status == StatusCode::NOT_IMPLEMENTED,
            "{route}: {}",
            a.status
        );
        assert!(
            a.json["error"].is_string() && a.json["message"].is_string(),
            "{}",
            a.text
        );
        let encoded: String = text.bytes().map(|b| format!("%{b:02X}")).collect();
        let a = h
            .call("GET", &format!("/api/v3/nodes/{encoded}"), None)
            .await;
        assert!(a.status.is_client_error(), "lookup: {}", a.status);
        let a = h
            .call(
                "GET",
                &format!("/api/v3/nodes/discover?cursor={encoded}"),
                None,
            )
            .await;
        assert!(a.status.is_client_error(), "cursor: {}", a.status);
    }
    assert_nothing_stored(&h).await;
}

async fn concurrent_registrations_share_commits_and_keep_the_highest_seq(backend: Backend) {
    let h = std::sync::Arc::new(Harness::new(backend).await);
    // Forty nodes registering at once, and one node sending many seqs at
    // once: group commit puts them in shared statements, and a node twice in
    // one batch must still be judged by seq.
    let mut tasks = Vec::new();
    for seed in 100..140u8 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let node = TestNode::new(seed);
            (seed, 1, h.register(&node.record(1, T0)).await.status)
        }));
    }
    for seq in 1..=30u64 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let node = TestNode::new(99);
            (99, seq, h.register(&node.record(seq, T0)).await.status)
        }));
    }
    let mut accepted_99 = Vec::new();
    for task in tasks {
        let (seed, seq, status) = task.await.unwrap();
        if seed == 99 {
            assert!(
                status == StatusCode::OK || status == StatusCode::CONFLICT,
                "seq {seq}: {status}"
            );
            if status == StatusCode::OK {
                accepted_99.push(seq);
            }
        } else {
            assert_eq!(status, StatusCode::OK, "node {seed}");
        }
    }
    assert!(accepted_99.contains(&30), "the highest seq always wins");
    let stored = h
        .directory
        .store()
        .node(&TestNode::new(99).key.node_id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.seq, 30);
    let a = h.call("GET", "/api/v3/health", None).await;
    assert_eq!(a.json["nodes"]["active"], 41);
}

async fn a_record_signed_to_live_for_a_century_is_refused(backend: Backend) {
    let h = Harness::new(backend.clone()).await;
    let node = TestNode::new(50);
    let url = node.url.clone();
    let century = 100 * 365 * 86_400;
    let a = h.register(&node.record_at(1, T0, T0 + century, &url)).await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, "expiry_too_far")
    );
    assert!(a.json["message"].as_str().unwrap().contains("604800"));
    // One second past the cap (7 days, measured from issued_at) is refused
    // too, and nothing was stored.
    let week = h.config.max_record_lifetime_s;
    assert_eq!(week, 7 * 86_400);
    let a = h
        .register(&node.record_at(1, T0 - 200, T0 - 200 + week + 1, &url))
        .await;
    assert_eq!(a.code(), "expiry_too_far");
    assert_nothing_stored(&h).await;
    // Exactly the cap passes, from a node whose clock is behind by up to
    // the skew as well.
    let a = h
        .register(&node.record_at(1, T0 - 200, T0 - 200 + week, &url))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);

    // The cap is the operator's.
    let h = Harness::with(backend, |c| c.max_record_lifetime_s = 3600).await;
    let node = TestNode::new(52);
    let url = node.url.clone();
    let a = h.register(&node.record_at(1, T0, T0 + 3601, &url)).await;
    assert_eq!(a.code(), "expiry_too_far");
    let a = h.register(&node.record_at(1, T0, T0 + 3600, &url)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
}

async fn a_seq_of_2_63_minus_1_cannot_lock_a_node_out(backend: Backend) {
    let h = Harness::new(backend).await;
    let node = TestNode::new(51);
    let skew = h.config.clock_skew_s;
    // The directory's clock in milliseconds plus the skew is the ceiling.
    let ceiling = (T0 + skew + 1) * 1000;
    for seq in [i64::MAX as u64, u64::MAX, ceiling + 1] {
        let a = h.register(&node.record(seq, T0)).await;
        assert_eq!(
            (a.status, a.code()),
            (StatusCode::BAD_REQUEST, "seq_too_far"),
            "seq {seq}"
        );
    }
    assert_nothing_stored(&h).await;
    // The worst a record signed ahead of time can do is take the ceiling;
    // the node's own clock-based seq outruns it once the skew has passed.
    assert_eq!(
        h.register(&node.record(ceiling, T0)).await.status,
        StatusCode::OK
    );
    let honest = |now: u64| node.record(now * 1000, now);
    assert_eq!(h.register(&honest(T0)).await.code(), "seq_rollback");
    h.clock.advance(skew + 2);
    let a = h.register(&honest(h.now())).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);

    // A deregistration cannot take the node's seq out of reach either.
    let path = "/api/v3/nodes/deregister";
    let far = DeregisterRequest::sign(&node.key, i64::MAX as u64, UnixTime(h.now()));
    let a = h
        .call("POST", path, Some(serde_json::to_value(&far).unwrap()))
        .await;
    assert_eq!(
        (a.status, a.code()),
        (StatusCode::BAD_REQUEST, "seq_too_far")
    );
    assert_eq!(h.lookup(&node.id()).await.status, StatusCode::OK);
}

async fn rotating_ipv6_addresses_in_one_prefix_share_one_rate_limit_budget(backend: Backend) {
    let h = Harness::with(backend, |c| {
        c.rate_limits.enabled = true;
        c.rate_limits.writes_per_address = Quota::new(1, 3);
        c.rate_limits.lookup_misses_per_address = Quota::new(1, 3);
    })
    .await;
    let in_prefix = |host: u16| -> std::net::SocketAddr {
        format!("[2001:db8:aa:bb:{host:x}::{host:x}]:4000")
            .parse()
            .unwrap()
    };
    // Twenty writes, each from a fresh address of one /64: per address
    // each would have a full budget; per prefix, at most the burst (plus one
    // refill per second of a slow run) passes.
    let mut refused = 0;
    for i in 0..20u8 {
        let node = TestNode::new(60 + i);
        let a = reg(&h, &node.record(1, T0), in_prefix(u16::from(i) + 1)).await;
        match a.status {
            StatusCode::OK => {}
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(a.code(), "rate_limited");
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", a.text),
        }
    }
    assert!(
        refused > 0,
        "rotating addresses in one /64 escaped the limit"
    );
    // Another /64 has its own budget.
    let a = reg(
        &h,
        &TestNode::new(90).record(1, T0),
        "[2001:db8:aa:bc::1]:4000".parse().unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);

    // Lookups of unknown nodes, likewise.
    let unknown = TestNode::new(91).id();
    let mut refused = 0;
    for i in 0..20u16 {
        let uri = format!("/api/v3/nodes/{unknown}");
        let a = h.raw("GET", &uri, None, "", in_prefix(100 + i)).await;
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            refused += 1;
        } else {
            assert_eq!(a.status, StatusCode::NOT_FOUND);
        }
    }
    assert!(
        refused > 0,
        "rotating addresses in one /64 escaped the limit"
    );
}

/// An origin of exactly 255 bytes (the longest a record holds), unique per
/// `i`.
fn longest_url(i: u32) -> String {
    let filler = |c: char, n: usize| c.to_string().repeat(n);
    let url = format!(
        "https://n{i:04}{}.{}.{}.{}.example.com:65535",
        filler('a', 45),
        filler('b', 63),
        filler('c', 63),
        filler('d', 50)
    );
    assert_eq!(url.len(), openred_core::url::MAX_URL_LEN);
    url
}

async fn a_page_of_the_largest_records_never_passes_the_page_byte_cap(backend: Backend) {
    let h = Harness::new(backend).await;
    let mut expected = BTreeSet::new();
    // 150 records of the largest size: about 1.2 KB each as listed, so a
    // page of 500 would be some 180 KB. Written concurrently, so that they
    // share group commits.
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..150u32 {
        let mut secret = [7u8; 32];
        secret[..4].copy_from_slice(&i.to_be_bytes());
        let key = openred_core::IdentityKeypair::from_secret_bytes(&secret);
        let record = openred_core::NodeRecord::sign(
            &key,
            openred_core::AgreementSecret::from_secret_bytes(secret).public(),
            openred_core::ApiUrl::parse_canonical(&longest_url(i)).unwrap(),
            1,
            UnixTime(T0),
            UnixTime(T0 + 86_400),
        );
        expected.insert(key.node_id().to_string());
        let store = h.directory.store().clone();
        writes.spawn(async move { store.upsert_record(&record, UnixTime(T0)).await });
    }
    while let Some(written) = writes.join_next().await {
        assert_eq!(
            written.unwrap().unwrap(),
            openred_directory::store::Write::Applied
        );
    }
    let cap = h.config.max_page_bytes;
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut uri = "/api/v3/nodes/discover?limit=500".to_owned();
    loop {
        let a = h.call("GET", &uri, None).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert!(a.text.len() <= cap, "a page of {} bytes", a.text.len());
        // Exactly the documented type, as clients decode it.
        serde_json::from_str::<openred_core::wire::DiscoverResponse>(&a.text).unwrap();
        pages += 1;
        let page = a.json["nodes"].as_array().unwrap();
        assert!(!page.is_empty());
        seen.extend(
            page.iter()
                .map(|n| n["node_id"].as_str().unwrap().to_owned()),
        );
        match a.json["next_cursor"].as_str() {
            Some(cursor) => uri = format!("/api/v3/nodes/discover?limit=500&cursor={cursor}"),
            None => break,
        }
    }
    assert!(pages >= 3, "{pages} pages");
    assert_eq!(seen.len(), 150, "every node once");
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), expected);
}
