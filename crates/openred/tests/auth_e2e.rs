//! Authentication through the real binary and two confined `node run`
//! daemons: `auth challenge` between peers, and the owner's credentials set
//! by `admin set-password` and `admin totp-enroll` while the node runs
//! (files it must still be able to read once confined), a login with them,
//! and `admin unlock`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};

use common::*;
use serde_json::Value;

fn cli(data: &Path, args: &[&str]) -> Output {
    openred()
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .unwrap()
}

fn set_password(data: &Path, password: &str) -> Output {
    let mut child = openred()
        .arg("--data")
        .arg(data)
        .args(["admin", "set-password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

async fn login(data: &Path, password: &str, code: &str) -> (u16, Value) {
    let address = std::fs::read_to_string(data.join("admin.addr")).unwrap();
    let response = ::reqwest::Client::builder()
        // Below the servers' keep-alive limit (their header timeout), so a
        // pooled connection is never reused as the server closes it.
        .pool_idle_timeout(std::time::Duration::from_secs(5))
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("http://{}/admin/v1/login", address.trim()))
        .json(&serde_json::json!({ "password": password, "totp": code }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_prove_their_identity_and_the_owner_logs_in_with_credentials_set_by_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (_directory, _, nodes) = registered_nodes(dir.path(), &["a", "b"]);
    let (a, b) = (nodes[0].1.clone(), nodes[1].1.clone());
    let (a_id, b_id) = (nodes[0].2.clone(), nodes[1].2.clone());
    ok(cli(&a, &["connect", &b_id]));

    // a asks b to prove its identity, then lists the proof.
    let proved = ok(cli(&a, &["auth", "challenge", &b_id]));
    assert!(
        proved.starts_with(&format!("{b_id} proved its identity in ")),
        "{proved}"
    );
    let proofs: Value = serde_json::from_str(&ok(cli(&a, &["--json", "auth", "proofs"]))).unwrap();
    assert_eq!(proofs[0]["peer"], b_id.as_str());
    // And the reverse direction, through b's own agent.
    ok(cli(&b, &["auth", "challenge", &a_id]));

    // The owner sets a password (refused when too short) and enrolls a
    // TOTP secret while a runs.
    let short = set_password(&a, "short");
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 10 characters"));
    let password = "a password long enough";
    let out = ok(set_password(&a, password));
    assert!(out.contains("password set"), "{out}");
    let shown = ok(cli(&a, &["admin", "totp-enroll"]));
    let first_secret = shown
        .lines()
        .find_map(|l| l.strip_prefix("secret:"))
        .unwrap()
        .trim()
        .to_owned();
    let uri_line = shown
        .lines()
        .find(|l| l.starts_with("otpauth URI: "))
        .unwrap();
    assert!(
        uri_line.starts_with(&format!(
            "otpauth URI: otpauth://totp/OpenRed%3A{a_id}?secret="
        )),
        "{uri_line}"
    );
    // The QR code is drawn with half-block characters.
    assert!(shown.contains('▀') || shown.contains('▄'), "{shown}");
    let enrolled: Value =
        serde_json::from_str(&ok(cli(&a, &["--json", "admin", "totp-enroll"]))).unwrap();
    let secret = enrolled["secret"].as_str().unwrap();

    // The confined node reads what the CLI wrote: a login works with the
    // newest secret only.
    let stale = openred_node::owner::login::totp_code(&first_secret, now()).unwrap();
    let code = openred_node::owner::login::totp_code(secret, now()).unwrap();
    assert_ne!(stale, code);
    let (status, body) = login(&a, password, &stale).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("login_failed"))
    );
    let (status, body) = login(&a, "a wrong password!!", &code).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("login_failed"))
    );
    let (status, body) = login(&a, password, &code).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["expires_at"].as_u64().unwrap() > now());
    // The same code again: refused.
    let (status, _) = login(&a, password, &code).await;
    assert_eq!(status, 401);
    // `admin unlock` goes through the bearer token (what it lifts is
    // tested in crates/openred/tests/owner_login.rs).
    assert_eq!(
        ok(cli(&a, &["admin", "unlock"])).trim(),
        "the login is unlocked"
    );

    // Both logins and the refusal are in a's audit log.
    let shown: Value = serde_json::from_str(&ok(cli(&a, &["audit", "show", "--json"]))).unwrap();
    let logins: Vec<(String, Option<String>)> = shown["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "admin_login")
        .map(|e| {
            (
                e["outcome"].as_str().unwrap().to_owned(),
                e["reason"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        logins,
        vec![
            ("failed".to_owned(), Some("bad_code".to_owned())),
            ("failed".to_owned(), Some("bad_password".to_owned())),
            ("ok".to_owned(), None),
            ("failed".to_owned(), Some("code_reused".to_owned())),
        ]
    );
}
