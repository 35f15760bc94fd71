//! End to end: the real `openred` binary serving a directory on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openred_core::wire::{b64_decode, b64_encode};
use openred_core::{AgreementSecret, ApiUrl, IdentityKeypair, NodeRecord, SignedRecord, UnixTime};
use serde_json::{json, Value};

struct Server {
    child: Child,
    base: String,
    fingerprint: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data: &std::path::Path, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_openred"))
        .args(["directory", "serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(extra)
        .env("OPENRED_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the openred binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut fingerprint = String::new();
    let base = loop {
        let line = lines.next().expect("a line on stdout").unwrap();
        if let Some(fp) = line.strip_prefix("directory key fingerprint: ") {
            fingerprint = fp.to_owned();
        }
        if let Some(url) = line.strip_prefix("listening on ") {
            break url.to_owned();
        }
    };
    Server {
        child,
        base,
        fingerprint,
    }
}

/// Serves `POST /api/v3/reachability` on a loopback port, signing the
/// directory's challenges with `key`; returns the origin.
async fn answer_reachability(key: IdentityKeypair, directory: String) -> String {
    use axum::routing::post;
    use axum::Json;
    use openred_core::keys::SignatureContext;
    use openred_core::wire::{
        reachability_message, ReachabilityChallenge, ReachabilityProof, SignatureBytes,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let origin = url.clone();
    let key = std::sync::Arc::new(key);
    let app = axum::Router::new().route(
        "/api/v3/reachability",
        post(move |Json(c): Json<ReachabilityChallenge>| {
            let (key, directory, origin) = (key.clone(), directory.clone(), origin.clone());
            async move {
                let message =
                    reachability_message(&c.challenge.0, &key.node_id(), &directory, &origin);
                Json(ReachabilityProof {
                    node_id: c.node_id,
                    signature: SignatureBytes(
                        key.sign(SignatureContext::ReachabilityProof, &message),
                    ),
                })
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_registers_looks_up_and_shuts_down_gracefully() {
    let data = tempfile::tempdir().unwrap();
    let mut server = start(data.path(), &["--danger-allow-private-addresses"]);
    let http = reqwest::Client::builder()
        .pool_idle_timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap();

    let health: Value = http
        .get(format!("{}/api/v3/health", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["directory_key"], server.fingerprint.as_str());

    let key = IdentityKeypair::from_secret_bytes(&[42; 32]);
    let agreement = AgreementSecret::from_secret_bytes([43; 32]);
    // The directory accepts a URL only once the node answers its challenge
    // there: a minimal node that does just that.
    let url = answer_reachability(
        IdentityKeypair::from_secret_bytes(&[42; 32]),
        server.fingerprint.clone(),
    )
    .await;
    let t = now();
    let record = NodeRecord::sign(
        &key,
        agreement.public(),
        ApiUrl::parse_origin(&url).unwrap(),
        1,
        UnixTime(t),
        UnixTime(t + 3600),
    );
    let answer = http
        .post(format!("{}/api/v3/nodes/register", server.base))
        .json(&json!({ "record": b64_encode(record.as_bytes()) }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);

    let entry: Value = http
        .get(format!("{}/api/v3/nodes/{}", server.base, key.node_id()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let served = b64_decode(entry["record"].as_str().unwrap()).unwrap();
    assert_eq!(SignedRecord::decode(&served).unwrap(), record);

    // SIGTERM: the server finishes and exits 0.
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status {exit}");

    // The record survived the restart; the key did too.
    let again = start(data.path(), &["--danger-allow-private-addresses"]);
    assert_eq!(again.fingerprint, server.fingerprint);
    let answer = http
        .get(format!("{}/api/v3/nodes/{}", again.base, key.node_id()))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
}

#[test]
fn refuses_an_invalid_configuration_with_a_clear_message() {
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("bad.toml");
    std::fs::write(&config, "[directory]\nheartbeat_interval_s = 0\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_openred"))
        .args(["directory", "serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("heartbeat_interval_s"), "{stderr}");
}
