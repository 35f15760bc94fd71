//! The accept loop when the process runs out of descriptors: `accept`
//! fails (EMFILE), and the listener counts it and goes on serving once
//! descriptors are free again. Alone in its test binary, since it lowers
//! the whole process's limit on open files for a moment.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use openred_http::{serve, ListenerStats, ServeLimits};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_exhaustion_fails_accepts_without_ending_the_listener() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let stats = Arc::new(ListenerStats::default());
    let router = Router::new().route("/", get(|| async { "ok" }));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        router,
        ServeLimits::default(),
        stats.clone(),
        async move {
            let _ = stopped.await;
        },
    ));

    // Leave the process a few dozen descriptors, and take them all with
    // client connections: the server's accepts then find none.
    let original = getrlimit(Resource::Nofile);
    let open_now = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(open_now + 64),
            maximum: original.maximum,
        },
    )
    .unwrap();
    let mut hoard = Vec::new();
    while let Ok(stream) = TcpStream::connect(address).await {
        hoard.push(stream);
        assert!(hoard.len() < 1000, "the descriptor limit holds");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats.counts().accept_errors == 0 {
        assert!(Instant::now() < deadline, "accept fails within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    setrlimit(Resource::Nofile, original).unwrap();
    drop(hoard);

    // The listener is still there, and serves.
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        if answer.starts_with(b"HTTP/1.1 200") || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(!server.is_finished(), "the accept loop is still running");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
