//! The messaging module between nodes in process: delivery and its
//! guarantees (persist before acknowledging, duplicates dropped, the
//! sender's order kept, retries across outages and restarts), refusals,
//! the module switch, and the live stream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use std::time::{Duration, Instant};

use in_process::*;
use openred_core::session::Session;
use openred_node::modules::messaging::store::{DeliveryState, MessageId};
use openred_node::modules::messaging::{Messaging, WireMessage};
use openred_node::peer::frames::labelled;
use openred_node::{NodeConfig, NodeState};
use serde_json::json;

const MESSAGE: &str = "/p2p/message";

/// Retries within tens of milliseconds, so that outages in tests are short.
fn quick_retries(config: &mut NodeConfig) {
    config.module_settings.insert(
        "messaging".into(),
        json!({ "retry_base_ms": 20, "retry_max_ms": 200 }),
    );
}

fn messaging(node: &NodeState) -> &Messaging {
    node.modules()
        .get::<Messaging>()
        .expect("the messaging module")
}

async fn send(from: &TestNode, to: &TestNode, text: &str) -> MessageId {
    messaging(from)
        .send(&from.peers(), to.id(), "text/plain; charset=utf-8", text)
        .await
        .expect("the message is queued")
        .message_id
}

/// Waits until `from`'s outbox holds no message still on its way.
async fn wait_delivered(from: &NodeState, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let outbox = messaging(from)
            .store()
            .unwrap()
            .outbox(100_000, 0)
            .await
            .unwrap();
        let delivered = outbox
            .iter()
            .filter(|m| m.state == DeliveryState::Delivered)
            .count();
        if delivered >= count {
            assert_eq!(delivered, count, "no more than sent");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{delivered} of {count} delivered; states: {:?}",
            outbox
                .iter()
                .map(|m| (m.state, m.last_error.clone()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `to`'s inbox from `from`: the texts in the order listed.
async fn inbox_texts(to: &NodeState, from: &TestNode) -> Vec<String> {
    messaging(to)
        .store()
        .unwrap()
        .inbox(Some(&from.id()), 100_000, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect()
}

fn numbered(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("message {i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_arrive_once_in_the_senders_order_and_are_marked_delivered() {
    let net = Network::start().await;
    let a = net.node_with("a", quick_retries).await;
    let b = net.node_with("b", quick_retries).await;
    let texts = numbered(300);
    for text in &texts {
        send(&a, &b, text).await;
    }
    wait_delivered(&a, texts.len()).await;
    assert_eq!(inbox_texts(&b, &a).await, texts);
    let seqs: Vec<u64> = messaging(&b)
        .store()
        .unwrap()
        .inbox(Some(&a.id()), 1000, 0)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(seqs, (1..=300).collect::<Vec<u64>>());
    let outbox = messaging(&a)
        .store()
        .unwrap()
        .outbox(1000, 0)
        .await
        .unwrap();
    assert!(outbox
        .iter()
        .all(|m| m.delivered_at.is_some() && m.attempts >= 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_sends_lists_and_refuses_bad_requests() {
    let net = Network::start().await;
    let a = net.node_with("a", quick_retries).await;
    let b = net.node_with("b", quick_retries).await;
    let token = a.admin_token();
    let sent = a
        .admin_post(
            &net.http,
            "/admin/v1/messages",
            Some(&token),
            &json!({"node_id": b.id().to_string(), "text": "hello b"}),
        )
        .await;
    assert_eq!(sent.status, 200, "{}", String::from_utf8_lossy(&sent.body));
    assert_eq!(sent.json["state"], "queued");
    assert_eq!(sent.json["seq"], 1);
    let id = sent.json["message_id"].as_str().unwrap().to_owned();
    wait_delivered(&a, 1).await;
    let state = get(
        &net.http,
        &a.admin(&format!("/admin/v1/messages/outbox/{id}")),
        Some(&token),
    )
    .await;
    assert_eq!(state.json["state"], "delivered");
    let inbox = get(
        &net.http,
        &b.admin(&format!("/admin/v1/messages/inbox?peer={}", a.id())),
        Some(&b.admin_token()),
    )
    .await;
    assert_eq!(inbox.json[0]["text"], "hello b");
    assert_eq!(inbox.json[0]["node_id"], a.id().to_string());

    let post = |body: serde_json::Value| {
        let (a, net, token) = (&a, &net, token.clone());
        async move {
            a.admin_post(&net.http, "/admin/v1/messages", Some(&token), &body)
                .await
        }
    };
    let big = "x".repeat(64 * 1024 + 1);
    assert_refused(
        &post(json!({"node_id": b.id().to_string(), "text": big})).await,
        413,
        "message_too_large",
    );
    assert_refused(
        &post(json!({"node_id": "nope", "text": "x"})).await,
        400,
        "bad_node_id",
    );
    assert_refused(
        &post(json!({"node_id": a.id().to_string(), "text": "x"})).await,
        400,
        "self",
    );
    assert_refused(
        &post(json!({"node_id": b.id().to_string(), "text": "x", "content_type": "bad\ntype"}))
            .await,
        400,
        "bad_message",
    );
    assert_refused(
        &post(json!({"node_id": b.id().to_string(), "txt": "x"})).await,
        422,
        "bad_json",
    );
    assert_refused(
        &get(
            &net.http,
            &a.admin("/admin/v1/messages/outbox/zz"),
            Some(&token),
        )
        .await,
        400,
        "bad_message_id",
    );
    assert_refused(
        &get(
            &net.http,
            &a.admin("/admin/v1/messages/inbox?limit=0"),
            Some(&token),
        )
        .await,
        400,
        "bad_limit",
    );
    assert_refused(
        &get(&net.http, &a.admin("/admin/v1/messages/inbox"), None).await,
        401,
        "unauthorized",
    );
    // Nothing refused reached the outbox.
    assert_eq!(
        messaging(&a)
            .store()
            .unwrap()
            .outbox(100, 0)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// A by-hand session with B, and a frame carrying `message`.
fn message_frame(
    session: &Session,
    now: openred_core::UnixTime,
    message: &serde_json::Value,
) -> Vec<u8> {
    let plaintext = labelled(MESSAGE, false, &serde_json::to_vec(message).unwrap());
    session.seal(&plaintext, now).unwrap()
}

async fn session_with(net: &Network, a: &TestNode, b: &TestNode) -> Session {
    let intro = introduce(a, b.id(), net.now()).await;
    let (pending, request) = genuine_message_1(a, &intro);
    let answer = post_json(&net.http, &b.p2p("/p2p/handshake"), &request).await;
    finish_by_hand(pending, &answer, net.now(), a.config().epoch)
}

fn wire(id: &str, seq: u64, body: &str) -> serde_json::Value {
    serde_json::to_value(WireMessage {
        message_id: id.to_owned(),
        seq,
        sent_at: 1,
        content_type: "text/plain".into(),
        body: body.into(),
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_acknowledged_and_dropped_and_bad_messages_refused() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;
    let session = session_with(&net, &a, &b).await;
    let url = b.p2p(MESSAGE);
    let id = "00112233445566778899aabbccddeeff";
    for _ in 0..3 {
        // A retry: a new frame with the same message.
        let request = message_frame(&session, net.now(), &wire(id, 1, "once"));
        let answer = post_bytes(&net.http, &url, request.clone()).await;
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        let receipt = answer_payload(&session, MESSAGE, &request, &answer.body, net.now());
        let receipt: serde_json::Value = serde_json::from_slice(&receipt).unwrap();
        assert_eq!(receipt, json!({"received": true, "message_id": id}));
    }
    assert_eq!(inbox_texts(&b, &a).await, vec!["once"]);
    // The same frame twice: the second is a replay, refused before any
    // work.
    let frame = message_frame(
        &session,
        net.now(),
        &wire("abababababababababababababababab", 2, "twice"),
    );
    assert_eq!(post_bytes(&net.http, &url, frame.clone()).await.status, 200);
    assert_refused(&post_bytes(&net.http, &url, frame).await, 400, "bad_frame");
    assert_eq!(inbox_texts(&b, &a).await, vec!["once", "twice"]);
    let metrics = b.modules().views();
    let duplicates = metrics[0]
        .metrics
        .iter()
        .find(|m| m.name == "duplicates_total")
        .unwrap();
    assert_eq!(duplicates.value, 2.0);

    let refused = |message: serde_json::Value| {
        let frame = message_frame(&session, net.now(), &message);
        let (net, url) = (&net, url.clone());
        async move { post_bytes(&net.http, &url, frame).await }
    };
    let big = "y".repeat(64 * 1024 + 1);
    assert_refused(
        &refused(wire("ffffffffffffffffffffffffffffffff", 2, &big)).await,
        413,
        "message_too_large",
    );
    assert_refused(&refused(wire("not hex", 2, "x")).await, 400, "bad_message");
    assert_refused(
        &refused(wire("ffffffffffffffffffffffffffffffff", 0, "x")).await,
        400,
        "bad_message",
    );
    let mut extra = wire("eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", 2, "x");
    extra["admin"] = json!(true);
    assert_refused(&refused(extra).await, 400, "bad_message");
    let mut control = wire("eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", 2, "x");
    control["content_type"] = json!("text/plain\r\nX: y");
    assert_refused(&refused(control).await, 400, "bad_message");
    assert_refused(&refused(json!("not an object")).await, 400, "bad_message");
    // A message sealed for the ping route, and no frame at all.
    let ping = session.seal(&ping_payload(), net.now()).unwrap();
    assert_refused(&post_bytes(&net.http, &url, ping).await, 400, "wrong_route");
    assert_refused(
        &post_bytes(&net.http, &url, b"{}".to_vec()).await,
        400,
        "bad_frame",
    );
    assert_eq!(
        inbox_texts(&b, &a).await,
        vec!["once", "twice"],
        "nothing refused was stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_offline_for_a_while_gets_everything_when_it_is_back() {
    let net = Network::start().await;
    let a = net.node_with("a", quick_retries).await;
    let mut b = net.node_with("b", quick_retries).await;
    send(&a, &b, "before").await;
    wait_delivered(&a, 1).await;
    let config = b.state.config().clone();
    b.stop().await;
    for text in numbered(20) {
        send(&a, &b, &text).await;
    }
    // While B is away, the messages wait with the reason.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = messaging(&a).store().unwrap().outbox(100, 0).await.unwrap();
    assert!(waiting
        .iter()
        .filter(|m| m.state != DeliveryState::Delivered)
        .all(|m| m.last_error.is_some() && m.state == DeliveryState::Sent));
    // B comes back on the same address (its sessions are gone: it
    // restarted), and everything arrives, once, in order.
    let b = net.relaunch(&b.name.clone(), config).await;
    wait_delivered(&a, 21).await;
    let mut expected = vec!["before".to_owned()];
    expected.extend(numbered(20));
    assert_eq!(inbox_texts(&b, &a).await, expected);
    // The attempts count the failed ones and the acknowledged one.
    let outbox = messaging(&a).store().unwrap().outbox(100, 0).await.unwrap();
    let waited: Vec<_> = outbox.iter().filter(|m| m.body != "before").collect();
    assert_eq!(waited.len(), 20);
    assert!(waited
        .iter()
        .all(|m| m.state == DeliveryState::Delivered && m.last_error.is_none() && m.attempts >= 2));
    assert!(outbox.iter().any(|m| m.body == "before" && m.attempts == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_restarted_with_a_full_outbox_delivers_it() {
    let net = Network::start().await;
    let mut a = net.node_with("a", quick_retries).await;
    let mut b = net.node_with("b", quick_retries).await;
    let b_config = b.state.config().clone();
    b.stop().await;
    for text in numbered(30) {
        send(&a, &b, &text).await;
    }
    // A stops with all 30 in its outbox, then B, then A come back.
    let a_config = a.state.config().clone();
    a.stop().await;
    let b = net.relaunch("b", b_config).await;
    let a = net.relaunch("a", a_config).await;
    wait_delivered(&a, 30).await;
    assert_eq!(inbox_texts(&b, &a).await, numbered(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_directory_down_an_established_session_carries_the_messages() {
    let net = Network::start().await;
    let a = net.node_with("a", quick_retries).await;
    let b = net.node_with("b", quick_retries).await;
    a.connect(b.id()).await.unwrap();
    net.stop_directory().await;
    for text in numbered(50) {
        send(&a, &b, &text).await;
    }
    wait_delivered(&a, 50).await;
    assert_eq!(inbox_texts(&b, &a).await, numbered(50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ending_in_the_middle_is_replaced_and_nothing_is_lost() {
    let net = Network::start().await;
    let short = |c: &mut NodeConfig| {
        quick_retries(c);
        c.epoch.epoch_len_s = 300;
        c.session_max_age_s = 600;
    };
    let a = net.node_with("a", short).await;
    let b = net.node_with("b", short).await;
    for text in numbered(10) {
        send(&a, &b, &text).await;
    }
    wait_delivered(&a, 10).await;
    let first = a.sessions().with_peer(&b.id()).unwrap().id();
    // The session reaches its maximum age, unused (so not renewed).
    net.clock.advance(600);
    assert_eq!(a.state.run_lifecycle().await.ended, 1);
    assert_eq!(b.state.run_lifecycle().await.ended, 1);
    let more: Vec<String> = (11..=20).map(|i| format!("message {i}")).collect();
    for text in &more {
        send(&a, &b, text).await;
    }
    wait_delivered(&a, 20).await;
    assert_ne!(
        a.sessions().with_peer(&b.id()).unwrap().id(),
        first,
        "a new introduction"
    );
    assert_eq!(inbox_texts(&b, &a).await, numbered(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switched_off_module_answers_404_and_its_messages_wait_until_it_is_back() {
    let net = Network::start().await;
    let a = net.node_with("a", quick_retries).await;
    let b = net.node_with("b", quick_retries).await;
    let b_token = b.admin_token();
    let switch = |on: bool| {
        let action = if on { "enable" } else { "disable" };
        let (b, net, token) = (&b, &net, b_token.clone());
        async move {
            b.admin_post(
                &net.http,
                &format!("/admin/v1/modules/messaging/{action}"),
                Some(&token),
                &json!({}),
            )
            .await
        }
    };
    let off = switch(false).await;
    assert_eq!((off.status, &off.json["enabled"]), (200, &json!(false)));
    assert_refused(
        &get(
            &net.http,
            &b.admin("/admin/v1/messages/inbox"),
            Some(&b_token),
        )
        .await,
        404,
        "module_disabled",
    );
    let status = get(&net.http, &b.admin("/admin/v1/status"), Some(&b_token)).await;
    assert_eq!(status.json["modules"][0]["name"], "messaging");
    assert_eq!(status.json["modules"][0]["enabled"], false);
    send(&a, &b, "while off").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = messaging(&a).store().unwrap().outbox(10, 0).await.unwrap();
    assert!(
        waiting[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("module_disabled"),
        "{waiting:?}"
    );
    assert!(inbox_texts(&b, &a).await.is_empty());
    assert_eq!(switch(true).await.json["enabled"], true);
    wait_delivered(&a, 1).await;
    assert_eq!(inbox_texts(&b, &a).await, vec!["while off"]);
    assert_refused(
        &switch_unknown(&net, &b, &b_token).await,
        404,
        "unknown_module",
    );
}

async fn switch_unknown(net: &Network, b: &TestNode, token: &str) -> Answer {
    b.admin_post(
        &net.http,
        "/admin/v1/modules/nope/enable",
        Some(token),
        &json!({}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_shows_new_messages_as_they_are_stored() {
    let net = Network::start().await;
    let a = net.node_with("a", quick_retries).await;
    let b = net.node_with("b", quick_retries).await;
    let mut stream = net
        .http
        .get(b.admin("/admin/v1/messages/stream"))
        .header("authorization", format!("Bearer {}", b.admin_token()))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    send(&a, &b, "live").await;
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.contains("\"text\":\"live\"") {
        assert!(Instant::now() < deadline, "no event in: {seen}");
        let chunk = tokio::time::timeout(Duration::from_secs(30), stream.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("event: message"), "{seen}");
    assert!(seen.contains(&a.id().to_string()), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_the_database_cannot_hold_are_refused_without_hurting_other_peers() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;
    let c = net.node("c").await;
    let from_a = session_with(&net, &a, &b).await;
    let from_c = session_with(&net, &c, &b).await;
    let url = b.p2p(MESSAGE);
    let mut huge_seq = wire("11111111111111111111111111111111", 1, "x");
    huge_seq["seq"] = json!(u64::MAX);
    let mut huge_time = wire("22222222222222222222222222222222", 1, "x");
    huge_time["sent_at"] = json!(u64::MAX);
    // A's bad messages and C's good one, at the same time.
    let (bad_seq, bad_time, good) = tokio::join!(
        post_bytes(
            &net.http,
            &url,
            message_frame(&from_a, net.now(), &huge_seq)
        ),
        post_bytes(
            &net.http,
            &url,
            message_frame(&from_a, net.now(), &huge_time)
        ),
        post_bytes(
            &net.http,
            &url,
            message_frame(
                &from_c,
                net.now(),
                &wire("33333333333333333333333333333333", 1, "fine")
            )
        ),
    );
    assert_refused(&bad_seq, 400, "bad_message");
    assert_refused(&bad_time, 400, "bad_message");
    assert_eq!(good.status, 200);
    assert!(inbox_texts(&b, &a).await.is_empty());
    assert_eq!(inbox_texts(&b, &c).await, vec!["fine"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_whose_caller_goes_away_is_still_delivered() {
    let net = Network::start().await;
    let a = net.node_with("a", quick_retries).await;
    let b = net.node_with("b", quick_retries).await;
    // The caller gives up at once, as a client disconnecting would.
    let _ = tokio::time::timeout(
        Duration::from_nanos(1),
        messaging(&a).send(&a.peers(), b.id(), "text/plain", "orphan"),
    )
    .await;
    wait_delivered(&a, 1).await;
    assert_eq!(inbox_texts(&b, &a).await, vec!["orphan"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_not_delivered_in_time_fails_and_is_not_sent_later() {
    let net = Network::start().await;
    let ttl = |c: &mut NodeConfig| {
        c.module_settings.insert(
            "messaging".into(),
            json!({ "retry_base_ms": 20, "retry_max_ms": 100, "ttl_s": 10 }),
        );
    };
    let a = net.node_with("a", ttl).await;
    let mut b = net.node_with("b", ttl).await;
    let b_config = b.state.config().clone();
    b.stop().await;
    send(&a, &b, "too late").await;
    net.clock.advance(11);
    assert_eq!(messaging(&a).expire_now(&a.peers()).await.unwrap(), 1);
    let outbox = messaging(&a).store().unwrap().outbox(10, 0).await.unwrap();
    assert_eq!(outbox[0].state, DeliveryState::Failed);
    assert_eq!(
        outbox[0].last_error.as_deref(),
        Some("not delivered within 10 s")
    );
    let b = net.relaunch("b", b_config).await;
    send(&a, &b, "on time").await;
    wait_delivered(&a, 1).await;
    assert_eq!(inbox_texts(&b, &a).await, vec!["on time"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_switched_off_keeps_its_outbox_until_switched_on() {
    let net = Network::start().await;
    let a = net.node_with("a", quick_retries).await;
    let b = net.node_with("b", quick_retries).await;
    a.modules().set_enabled("messaging", false).unwrap();
    send(&a, &b, "held").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let outbox = messaging(&a).store().unwrap().outbox(10, 0).await.unwrap();
    assert_eq!(
        outbox[0].state,
        DeliveryState::Queued,
        "nothing attempted while off"
    );
    assert!(inbox_texts(&b, &a).await.is_empty());
    a.modules().set_enabled("messaging", true).unwrap();
    wait_delivered(&a, 1).await;
    assert_eq!(inbox_texts(&b, &a).await, vec!["held"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_large_once_escaped_is_refused_at_send() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;
    // 60,000 control characters: under the 64 KiB body limit, but six
    // times larger as JSON escapes, over the 256 KiB frame.
    let escaped = "\u{1}".repeat(60_000);
    assert!(matches!(
        messaging(&a)
            .send(&a.peers(), b.id(), "text/plain", &escaped)
            .await,
        Err(openred_node::modules::messaging::SendError::FrameTooLarge)
    ));
    assert!(messaging(&a)
        .store()
        .unwrap()
        .outbox(10, 0)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_answered_message_by_message_inside_the_frame() {
    let net = Network::start().await;
    let a = net.node("a").await;
    let b = net.node("b").await;
    let session = session_with(&net, &a, &b).await;
    let url = b.p2p(MESSAGE);
    let batch = json!({ "messages": [
        wire("a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0", 1, "first"),
        wire("a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1", 0, "bad seq"),
        wire("a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2", 3, "third"),
    ]});
    let request = message_frame(&session, net.now(), &batch);
    let answer = post_bytes(&net.http, &url, request.clone()).await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let receipt = answer_payload(&session, MESSAGE, &request, &answer.body, net.now());
    let receipt: serde_json::Value = serde_json::from_slice(&receipt).unwrap();
    let results = receipt["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["received"], true);
    assert_eq!(
        (&results[1]["received"], &results[1]["error"]),
        (&json!(false), &json!("bad_message"))
    );
    assert_eq!(results[2]["received"], true);
    assert_eq!(inbox_texts(&b, &a).await, vec!["first", "third"]);
    for bad in [
        json!({ "messages": [] }),
        json!({ "messages": vec![wire("b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0", 1, "x"); 65] }),
    ] {
        let answer = post_bytes(&net.http, &url, message_frame(&session, net.now(), &bad)).await;
        assert_refused(&answer, 400, "bad_message");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_receiver_refuses_fails_with_its_reason_and_the_rest_arrive() {
    let net = Network::start().await;
    let a = net.node_with("a", quick_retries).await;
    let small = |c: &mut NodeConfig| {
        c.module_settings
            .insert("messaging".into(), json!({ "max_body_bytes": 10 }));
    };
    let b = net.node_with("b", small).await;
    let long = send(&a, &b, "longer than ten bytes").await;
    send(&a, &b, "short").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let outbox = messaging(&a).store().unwrap().outbox(10, 0).await.unwrap();
        let done = outbox
            .iter()
            .all(|m| matches!(m.state, DeliveryState::Delivered | DeliveryState::Failed));
        if done {
            let refused = outbox.iter().find(|m| m.message_id == long).unwrap();
            assert_eq!(refused.state, DeliveryState::Failed);
            assert!(
                refused
                    .last_error
                    .as_deref()
                    .unwrap_or("")
                    .contains("message_too_large"),
                "{refused:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{outbox:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(inbox_texts(&b, &a).await, vec!["short"]);
}

/// Waits until every message of `from`'s outbox is delivered or failed;
/// the outbox.
async fn settled(from: &NodeState) -> Vec<openred_node::modules::messaging::store::Outgoing> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let outbox = messaging(from)
            .store()
            .unwrap()
            .outbox(10_000, 0)
            .await
            .unwrap();
        if outbox
            .iter()
            .all(|m| matches!(m.state, DeliveryState::Delivered | DeliveryState::Failed))
        {
            return outbox;
        }
        assert!(Instant::now() < deadline, "{outbox:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The messages of an outbox that failed with `code` in their reason.
fn failed_with(outbox: &[openred_node::modules::messaging::store::Outgoing], code: &str) -> usize {
    outbox
        .iter()
        .filter(|m| {
            m.state == DeliveryState::Failed && m.last_error.as_deref().unwrap_or("").contains(code)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_grow_the_inbox_past_its_quota_and_deleting_frees_room() {
    let net = Network::start().await;
    let quota = |c: &mut NodeConfig| {
        c.module_settings.insert(
            "messaging".into(),
            json!({
                "retry_base_ms": 20, "retry_max_ms": 200,
                "max_inbox_messages_per_peer": 5,
                "max_inbox_bytes_per_peer": 1000,
            }),
        );
    };
    let a = net.node_with("a", quick_retries).await;
    let c = net.node_with("c", quick_retries).await;
    let b = net.node_with("b", quota).await;

    // Eight messages: five fit, three are refused inside the receipt and
    // fail with the reason, instead of being retried for ever.
    for i in 1..=8 {
        send(&a, &b, &format!("message {i}")).await;
    }
    let outbox = settled(&a).await;
    assert_eq!(
        outbox
            .iter()
            .filter(|m| m.state == DeliveryState::Delivered)
            .count(),
        5
    );
    assert_eq!(failed_with(&outbox, "inbox_full"), 3, "{outbox:?}");
    assert_eq!(inbox_texts(&b, &a).await.len(), 5);
    // Another peer is not hurt: the quota is per peer.
    send(&c, &b, "from c").await;
    wait_delivered(&c, 1).await;

    // A retry of a message stored before (its receipt lost) is still
    // acknowledged while the quota is full: it takes no room.
    let stored = messaging(&b)
        .store()
        .unwrap()
        .inbox(Some(&a.id()), 1, 0)
        .await
        .unwrap()
        .remove(0);
    let session = session_with(&net, &a, &b).await;
    let retry =
        json!({ "messages": [wire(&stored.message_id.to_string(), stored.seq, &stored.body)] });
    let request = message_frame(&session, net.now(), &retry);
    let answer = post_bytes(&net.http, &b.p2p(MESSAGE), request.clone()).await;
    assert_eq!(answer.status, 200);
    let receipt = answer_payload(&session, MESSAGE, &request, &answer.body, net.now());
    let receipt: serde_json::Value = serde_json::from_slice(&receipt).unwrap();
    assert_eq!(receipt["results"][0]["received"], json!(true), "{receipt}");

    // The count survives a restart (read from the database once).
    let b = net.restart(b).await;
    send(&a, &b, "after the restart").await;
    let outbox = settled(&a).await;
    assert_eq!(failed_with(&outbox, "inbox_full"), 4, "{outbox:?}");

    // The owner deletes two of A's messages: room for two more.
    let token = b.admin_token();
    let first_two: Vec<String> = messaging(&b)
        .store()
        .unwrap()
        .inbox(Some(&a.id()), 2, 0)
        .await
        .unwrap()
        .iter()
        .map(|m| m.message_id.to_string())
        .collect();
    let deleted = b
        .admin_post(
            &net.http,
            "/admin/v1/messages/inbox/delete",
            Some(&token),
            &json!({ "node_id": a.id().to_string(), "message_ids": first_two }),
        )
        .await;
    assert_eq!(deleted.status, 200, "{:?}", deleted.json);
    assert_eq!(deleted.json["deleted"], json!(2));
    let three = ["third 1", "third 2", "third 3"];
    for text in three {
        send(&a, &b, text).await;
    }
    let outbox = settled(&a).await;
    assert_eq!(failed_with(&outbox, "inbox_full"), 5, "{outbox:?}");
    let texts = inbox_texts(&b, &a).await;
    assert_eq!(texts.len(), 5);
    // Two of the three took the room, the third was refused: which one
    // is whichever frame arrived last (frames to one peer travel
    // concurrently, so arrival order is not the sending order).
    let stored: Vec<_> = three
        .iter()
        .filter(|t| texts.contains(&t.to_string()))
        .collect();
    assert_eq!(stored.len(), 2, "{texts:?}");
    let refused: Vec<_> = outbox
        .iter()
        .filter(|m| m.state == DeliveryState::Failed && three.contains(&m.body.as_str()))
        .map(|m| m.body.as_str())
        .collect();
    assert_eq!(refused.len(), 1, "{outbox:?}");
    assert!(!texts.contains(&refused[0].to_owned()), "{texts:?}");

    // The byte quota: 1000 bytes per peer. All of A's go; one message
    // just under the byte quota fits, one byte more does not.
    let all = b
        .admin_post(
            &net.http,
            "/admin/v1/messages/inbox/delete",
            Some(&token),
            &json!({ "node_id": a.id().to_string() }),
        )
        .await;
    assert_eq!(all.json["deleted"], json!(5));
    let media = "text/plain; charset=utf-8".len();
    send(&a, &b, &"x".repeat(1000 - media + 1)).await;
    send(&a, &b, &"y".repeat(1000 - media)).await;
    let outbox = settled(&a).await;
    assert_eq!(failed_with(&outbox, "inbox_full"), 6, "{outbox:?}");
    assert_eq!(inbox_texts(&b, &a).await, vec!["y".repeat(1000 - media)]);
    // Bad deletions are 4xx.
    for bad in [
        json!({ "node_id": "nobody" }),
        json!({ "node_id": a.id().to_string(), "message_ids": [] }),
        json!({ "node_id": a.id().to_string(), "message_ids": ["xyz"] }),
    ] {
        let answer = b
            .admin_post(
                &net.http,
                "/admin/v1/messages/inbox/delete",
                Some(&token),
                &bad,
            )
            .await;
        assert_eq!(answer.status, 400, "{bad}: {:?}", answer.json);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_inbox_has_a_cap_that_peers_cannot_pass_together() {
    let net = Network::start().await;
    let cap = |c: &mut NodeConfig| {
        c.module_settings.insert(
            "messaging".into(),
            json!({ "max_inbox_bytes_per_peer": 200, "max_inbox_bytes_total": 300 }),
        );
    };
    let a = net.node_with("a", quick_retries).await;
    let c = net.node_with("c", quick_retries).await;
    let b = net.node_with("b", cap).await;
    let media = "text/plain; charset=utf-8".len();
    send(&a, &b, &"a".repeat(150 - media)).await;
    wait_delivered(&a, 1).await;
    send(&c, &b, &"c".repeat(150 - media)).await;
    wait_delivered(&c, 1).await;
    // Both peers are within their own quota, the node is full.
    send(&a, &b, "one more").await;
    send(&c, &b, "one more").await;
    for sender in [&a, &c] {
        let outbox = settled(sender).await;
        assert_eq!(failed_with(&outbox, "node_storage_full"), 1, "{outbox:?}");
    }
    // Settings that cannot work are refused at start.
    for bad in [
        json!({ "max_inbox_messages_per_peer": 0 }),
        json!({ "max_inbox_bytes_per_peer": 100, "max_inbox_bytes_total": 99 }),
    ] {
        assert!(Messaging::new(Some(&bad)).is_err(), "{bad}");
    }
}
