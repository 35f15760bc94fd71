//! Two directory instances sharing one PostgreSQL database never let an
//! older `seq` win, whatever the interleaving.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use common::{Backend, Harness, TestNode, T0};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_registrations_on_two_replicas_keep_the_highest_seq() {
    let Some(backend) = Backend::postgres("concurrent_registrations_on_two_replicas").await else {
        return;
    };
    let a = Arc::new(Harness::new(backend).await);
    let b = Arc::new(a.reopen().await);
    let node = Arc::new(TestNode::new(77));
    const N: u64 = 120;

    // A watcher reads the stored seq throughout: it must never go down.
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (a, done, id) = (a.clone(), done.clone(), node.key.node_id());
        tokio::spawn(async move {
            let mut last = 0;
            let mut reads = 0;
            while !done.load(Ordering::SeqCst) {
                if let Some(stored) = a.directory.store().node(&id).await.unwrap() {
                    assert!(
                        stored.seq >= last,
                        "seq went back from {last} to {}",
                        stored.seq
                    );
                    last = stored.seq;
                    reads += 1;
                }
                tokio::task::yield_now().await;
            }
            reads
        })
    };

    // Every seq is sent to one replica or the other, in a shuffled order,
    // all at once.
    let mut order: Vec<u64> = (1..=N).collect();
    order.sort_by_key(|s| blake3::hash(&s.to_be_bytes()).as_bytes()[0]);
    let mut tasks = Vec::new();
    for seq in order {
        let (a, b, node) = (a.clone(), b.clone(), node.clone());
        tasks.push(tokio::spawn(async move {
            let record = node.record(seq, T0);
            let status = if seq % 2 == 0 {
                a.register(&record).await.status
            } else {
                let body = common::register_body(&record).to_string();
                let peer = "198.51.100.3:3".parse().unwrap();
                common::send(
                    &b,
                    "POST",
                    "/api/v3/nodes/register",
                    Some(&body),
                    "application/json",
                    peer,
                )
                .await
                .status
            };
            (seq, status)
        }));
    }
    let mut accepted = Vec::new();
    for task in tasks {
        let (seq, status) = task.await.unwrap();
        match status {
            StatusCode::OK => accepted.push(seq),
            StatusCode::CONFLICT => {}
            other => panic!("seq {seq}: unexpected {other}"),
        }
    }
    done.store(true, Ordering::SeqCst);
    let reads = watcher.await.unwrap();
    assert!(reads > 0);
    let stored = a
        .directory
        .store()
        .node(&node.key.node_id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.seq, N, "the highest seq wins");
    assert!(accepted.contains(&N));
    let record = stored.record.unwrap();
    assert_eq!(
        record.record().seq,
        N,
        "the stored record is the one with the highest seq"
    );
}
