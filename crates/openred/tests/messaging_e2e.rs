//! Messages between two `openred node run` daemons: the receiver is killed
//! with SIGKILL in the middle of 10,000 messages and started again, and
//! every message ends in its inbox exactly once, in the sender's order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const MESSAGES: usize = 10_000;

/// The messaging module's counter `name` on the node behind `admin`.
async fn metric(admin: &Admin, name: &str) -> f64 {
    let status = admin.get("/admin/v1/status").await;
    status["modules"][0]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .map(|m| m["value"].as_f64().unwrap())
        .unwrap()
}

/// A node's configuration file: retries within half a second, so that the
/// receiver's return is noticed quickly.
fn config_file(dir: &Path) -> PathBuf {
    let file = dir.join("node.toml");
    std::fs::write(
        &file,
        "[modules.messaging]\nretry_base_ms = 50\nretry_max_ms = 500\n",
    )
    .unwrap();
    file
}

fn run_node(
    data: &Path,
    directory: &str,
    key: &str,
    config: &Path,
    listen: &str,
) -> (Daemon, Vec<String>) {
    let mut c = node_run_on(data, directory, listen);
    c.args(["--directory-key", key]).arg("--config").arg(config);
    start(c, "admin on ")
}

async fn wait_registered(data: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(data)["registered"] != true {
        assert!(Instant::now() < deadline, "the node did not register");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_killed_in_the_middle_of_ten_thousand_messages_gets_each_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (_directory, directory, key) =
        directory_daemon(&dir.path().join("directory"), "127.0.0.1:0");
    let config = config_file(dir.path());
    let (a_data, b_data) = (dir.path().join("a"), dir.path().join("b"));
    for data in [&a_data, &b_data] {
        ok(openred()
            .args(["node", "init", "--data"])
            .arg(data)
            .output()
            .unwrap());
    }
    let b_id = ok(openred()
        .args(["node", "id", "--data"])
        .arg(&b_data)
        .output()
        .unwrap())
    .trim()
    .to_owned();
    let (_a, a_lines) = run_node(&a_data, &directory, &key, &config, "127.0.0.1:0");
    let (b, b_lines) = run_node(&b_data, &directory, &key, &config, "127.0.0.1:0");
    // B comes back at the same address, as a node with a fixed URL does.
    let b_listen = field(&b_lines, "listening on http://").to_owned();
    wait_registered(&a_data).await;
    wait_registered(&b_data).await;
    let a = Admin::of(&a_data, &a_lines);
    let b_admin = Admin::of(&b_data, &b_lines);

    // 10,000 messages, 16 senders at once; each answer gives the message's
    // place in A's order to B (its seq).
    let mut senders = tokio::task::JoinSet::new();
    for sender in 0..16 {
        let a = Admin {
            http: a.http.clone(),
            base: a.base.clone(),
            token: a.token.clone(),
        };
        let b_id = b_id.clone();
        senders.spawn(async move {
            let mut sent = Vec::new();
            for i in (sender..MESSAGES).step_by(16) {
                let text = format!("message {i}");
                let answer = a
                    .post(
                        "/admin/v1/messages",
                        &json!({ "node_id": b_id, "text": text }),
                    )
                    .await;
                assert_eq!(answer["state"], "queued");
                sent.push((answer["seq"].as_u64().unwrap(), text));
            }
            sent
        });
    }
    // Kill B with SIGKILL once it has stored some, well before the end.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut b = b;
    loop {
        let received = metric(&b_admin, "received_total").await;
        if received >= 300.0 {
            assert!(
                received < MESSAGES as f64,
                "B was killed too late to test anything"
            );
            break;
        }
        assert!(Instant::now() < deadline, "B received nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.0.kill().unwrap();
    b.0.wait().unwrap();
    let mut by_seq = BTreeMap::new();
    while let Some(sent) = senders.join_next().await {
        for (seq, text) in sent.unwrap() {
            assert!(by_seq.insert(seq, text).is_none(), "seq {seq} given twice");
        }
    }
    assert_eq!(by_seq.len(), MESSAGES);
    assert_eq!(
        by_seq.keys().copied().collect::<Vec<_>>(),
        (1..=MESSAGES as u64).collect::<Vec<_>>()
    );

    // B again, at the same address.
    let (_b, b_lines) = run_node(&b_data, &directory, &key, &config, &b_listen);
    let b_admin = Admin::of(&b_data, &b_lines);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let outbox = a
            .get(&format!("/admin/v1/messages/outbox?limit={MESSAGES}"))
            .await;
        let delivered = outbox
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["state"] == "delivered")
            .count();
        if delivered == MESSAGES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{delivered} of {MESSAGES} delivered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let a_id = ok(openred()
        .args(["node", "id", "--data"])
        .arg(&a_data)
        .output()
        .unwrap())
    .trim()
    .to_owned();
    let inbox = b_admin
        .get(&format!(
            "/admin/v1/messages/inbox?peer={a_id}&limit={MESSAGES}"
        ))
        .await;
    let inbox = inbox.as_array().unwrap();
    assert_eq!(inbox.len(), MESSAGES, "each message exactly once");
    let ids: HashSet<&str> = inbox
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), MESSAGES);
    for (m, (seq, text)) in inbox.iter().zip(&by_seq) {
        assert_eq!(m["seq"].as_u64(), Some(*seq), "in A's order");
        assert_eq!(m["text"].as_str(), Some(text.as_str()));
    }
}
