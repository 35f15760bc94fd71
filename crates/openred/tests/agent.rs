//! The crypto agent as a real process of this binary: its sandbox seen
//! from inside (through probes that only test builds answer), its frame
//! decoder under malformed input, and its restart after a crash.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use openred_core::{NodeId, UnixTime};
use openred_node::agent::process::{spawn_with_socket, Executable};
use openred_node::agent::proto::{self, ErrorKind, Probe, Request, Response};
use openred_node::agent::{Crypto, CryptoError};
use openred_node::NodeKeys;

fn program() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_openred"))
}

/// A data directory with a fresh identity; returns it and the key folder.
fn identity() -> (tempfile::TempDir, PathBuf) {
    let data = tempfile::tempdir().unwrap();
    NodeKeys::create(data.path()).unwrap();
    let keys = data.path().join("keys");
    (data, keys)
}

fn protections(json: &str) -> serde_json::Value {
    serde_json::from_str(json).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_runs_confined_and_its_sandbox_holds_from_inside() {
    let (data, keys) = identity();
    let crypto = Crypto::start_agent(&program(), &keys).await.unwrap();
    assert!(crypto.is_separate_process());
    assert_eq!(
        crypto.node_id(),
        NodeKeys::load(data.path()).unwrap().node_id()
    );

    let report = protections(&crypto.agent_status().await.unwrap());
    assert_eq!(report["no_new_privs"], true, "{report}");
    assert_eq!(report["dumpable"], false, "{report}");
    assert_eq!(report["seccomp"], true, "{report}");
    let landlock = report["landlock"]["state"].as_str().unwrap().to_owned();

    // A listener of the test's own: the agent must not reach it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (worked, detail) = crypto.probe(Probe::TcpConnect(address)).await.unwrap();
    assert!(!worked, "the agent opened a TCP connection");
    assert!(!detail.is_empty());

    // Its own key folder is readable; nothing else is.
    let key_file = keys.join("identity.key");
    let (worked, detail) = crypto
        .probe(Probe::ReadFile(key_file.display().to_string()))
        .await
        .unwrap();
    assert!(worked, "the agent cannot read its own keys: {detail}");
    let outside = data.path().join("outside.txt");
    std::fs::write(&outside, b"not for the agent").unwrap();
    for path in [
        outside.as_path(),
        Path::new("/etc/hostname"),
        Path::new("/etc/passwd"),
    ] {
        let (worked, _) = crypto
            .probe(Probe::ReadFile(path.display().to_string()))
            .await
            .unwrap();
        if landlock == "unsupported" {
            println!("skipped: Landlock is not supported by this kernel ({path:?} readable)");
        } else {
            assert!(!worked, "the agent read {path:?} outside its key folder");
        }
    }

    // What it signs is typed: a connection request to itself is refused.
    let refused = crypto
        .sign_connection_request(&crypto.node_id(), &[1; 16], UnixTime(1))
        .await;
    assert!(matches!(
        refused,
        Err(CryptoError::Failed {
            kind: ErrorKind::Refused,
            ..
        })
    ));
    // A handshake cannot be started without a token opened first.
    let context = openred_core::handshake::HandshakeContext {
        connection_id: [9; 16],
        initiator: crypto.node_id(),
        target: NodeId::from_bytes([3; 32]),
        authority: openred_core::handshake::Authority::Introduction {
            link_public: [4; 32],
        },
        offer: vec![openred_core::session::Suite::ChaCha20Poly1305],
    };
    assert!(matches!(
        crypto.initiate(&context, &[5; 32]).await,
        Err(CryptoError::Failed {
            kind: ErrorKind::Refused,
            ..
        })
    ));
}

/// Reads one whole frame from a blocking socket.
fn read_frame(socket: &mut std::os::unix::net::UnixStream) -> (u64, Response) {
    let mut prefix = [0u8; 4];
    socket.read_exact(&mut prefix).unwrap();
    let mut body = vec![0u8; proto::body_len(prefix).unwrap()];
    socket.read_exact(&mut body).unwrap();
    proto::decode(&body).unwrap()
}

fn malformed(response: &Response) -> bool {
    matches!(response, Response::Error(e) if e.kind == ErrorKind::Malformed)
}

#[test]
fn malformed_frames_are_refused_and_the_agent_survives_them() {
    let (_data, keys) = identity();
    let (mut child, mut socket) = spawn_with_socket(
        &Executable::open(&program()).unwrap(),
        &[OsStr::new("agent"), OsStr::new("--keys"), keys.as_os_str()],
        None,
    )
    .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    let status = proto::encode(7, &Request::Status).unwrap();
    let mut wrong_version = status.clone();
    wrong_version[4] = 9;
    let mut unknown_request = status[..13].to_vec();
    unknown_request.push(250);
    unknown_request[..4].copy_from_slice(&10u32.to_be_bytes());
    let mut trailing = status.clone();
    trailing.push(0);
    let trailing_len = (trailing.len() - 4) as u32;
    trailing[..4].copy_from_slice(&trailing_len.to_be_bytes());
    let too_short = [0, 0, 0, 3, 1, 2, 3];
    let mut too_large = ((proto::MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
    too_large.extend(std::iter::repeat_n(0xAB, proto::MAX_FRAME + 1));

    for (name, frame) in [
        ("wrong version", &wrong_version[..]),
        ("unknown request", &unknown_request[..]),
        ("trailing bytes", &trailing[..]),
        ("shorter than a header", &too_short[..]),
        ("over the size limit", &too_large[..]),
    ] {
        socket.write_all(frame).unwrap();
        let (_, response) = read_frame(&mut socket);
        assert!(malformed(&response), "{name}: {response:?}");
    }

    // Still serving, and answers carry their request IDs.
    socket.write_all(&status).unwrap();
    let (id, response) = read_frame(&mut socket);
    assert_eq!(id, 7);
    assert!(matches!(response, Response::Status { .. }), "{response:?}");

    // Closing the socket ends the agent cleanly.
    drop(socket);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "the agent did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_crypto_fails_closed_then_a_new_agent_answers_within_seconds() {
    let (_data, keys) = identity();
    let crypto = Crypto::start_agent(&program(), &keys).await.unwrap();
    let (first_pid, restarts) = crypto.agent_process().unwrap();
    assert_eq!(restarts, 0);

    // The probe kills the agent; its answer never comes.
    assert!(matches!(
        crypto.probe(Probe::Exit).await,
        Err(CryptoError::Unavailable)
    ));

    let started = Instant::now();
    let mut failed_closed = false;
    loop {
        match crypto.agent_status().await {
            Ok(_) => break,
            Err(CryptoError::Unavailable) => failed_closed = true,
            Err(other) => panic!("unexpected error while the agent restarts: {other}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no new agent within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "a new agent answered {} ms after the crash (requests failed meanwhile: {failed_closed})",
        started.elapsed().as_millis()
    );
    let (second_pid, restarts) = crypto.agent_process().unwrap();
    assert_eq!(restarts, 1);
    assert_ne!(second_pid, first_pid);
    // And it works as the first one did.
    let now = wall_clock();
    let record = crypto
        .sign_record(&url(), now.0 * 1000, now, now.plus(60))
        .await
        .unwrap();
    assert_eq!(record.record().node_id, crypto.node_id());
}

fn wall_clock() -> UnixTime {
    UnixTime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
}

fn url() -> openred_core::ApiUrl {
    openred_core::ApiUrl::parse_origin("http://127.0.0.1:9").unwrap()
}

fn refused(result: Result<impl std::fmt::Debug, CryptoError>) -> bool {
    matches!(result, Err(CryptoError::Failed { .. }))
}

/// The agent was a signing oracle for the future: one record with seq
/// 2^63-1 and a 100-year expiry bricked an identity at the directory. Now
/// times must fall near its clock, and what it signed moves only forward,
/// across a restart of the agent process that a compromised node can
/// cause by closing its socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_signs_nothing_for_the_future_nor_anything_again_after_a_restart() {
    let (_data, keys) = identity();
    let crypto = Crypto::start_agent(&program(), &keys).await.unwrap();
    let now = wall_clock();
    let ms = now.0 * 1000;
    let century = now.plus(100 * 365 * 86400);
    assert!(refused(
        crypto
            .sign_record(&url(), i64::MAX as u64, now, century)
            .await
    ));
    assert!(refused(
        crypto
            .sign_record(&url(), i64::MAX as u64, now, now.plus(60))
            .await
    ));
    assert!(refused(crypto.sign_record(&url(), ms, now, century).await));
    assert!(refused(
        crypto
            .sign_record(&url(), ms, now.plus(86400), now.plus(86460))
            .await
    ));
    assert!(refused(crypto.deregistration(ms, now.plus(86400)).await));
    crypto
        .sign_record(&url(), ms, now, now.plus(86400))
        .await
        .unwrap();
    crypto.sign_audit_entry(3, &[1; 32]).await.unwrap();
    crypto.sign_audit_head(4, &[2; 32]).await.unwrap();

    // The node closes the agent (here: the probe makes it exit); the new
    // agent reads what the old one signed.
    assert!(crypto.probe(Probe::Exit).await.is_err());
    let deadline = Instant::now() + Duration::from_secs(10);
    while crypto.agent_status().await.is_err() {
        assert!(Instant::now() < deadline, "no new agent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(crypto.agent_process().unwrap().1, 1);
    assert!(refused(
        crypto.sign_record(&url(), ms, now, now.plus(60)).await
    ));
    assert!(refused(crypto.deregistration(ms, now).await));
    assert!(refused(crypto.sign_audit_entry(2, &[1; 32]).await));
    assert!(refused(crypto.sign_audit_head(3, &[2; 32]).await));
    crypto
        .sign_record(&url(), ms + 1, now, now.plus(60))
        .await
        .unwrap();
    crypto.sign_audit_entry(4, &[3; 32]).await.unwrap();
    crypto.sign_audit_head(5, &[4; 32]).await.unwrap();
    let saved = openred_node::agent::state::read(&keys).unwrap().unwrap();
    assert_eq!(
        (saved.record_seq, saved.audit_seq, saved.audit_head),
        (ms + 1, 4, 5)
    );
}
