//! `openred demo`, the README's main command, through the real binary: a
//! directory, three nodes with their crypto agents, every introduction, the
//! pings and a renewal, messages, a file shared and fetched, then a clean
//! exit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn the_demo_runs_the_whole_flow_and_exits_cleanly() {
    let out = Command::new(env!("CARGO_BIN_EXE_openred"))
        .arg("demo")
        .env("OPENRED_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {}: {stdout}\n{stderr}",
        out.status
    );
    let line = |prefix: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{stdout}"))
            .to_owned()
    };
    assert!(line("all three nodes registered").ends_with(" ms"));
    // Every node's keys are in an agent process of its own.
    let agents = line("keys held by crypto agents: ");
    for name in ["alice", "bob", "carol"] {
        assert!(agents.contains(&format!("{name} pid ")), "{agents}");
    }
    for pair in ["alice → bob", "alice → carol", "bob → carol"] {
        let row = line(pair);
        let session = row.split_whitespace().last().unwrap();
        assert_eq!(session.len(), 32, "a session ID ends the row: {row}");
    }
    // The renewal makes a new session for alice → bob.
    let renewed = line("alice → bob renewed without the directory");
    let first = line("alice → bob  ");
    let old = first.split_whitespace().last().unwrap();
    assert!(renewed.contains(&format!("session {old} → ")), "{renewed}");
    // Four messages, each in its receiver's inbox once.
    assert!(line("4 messages delivered in ").ends_with(" ms:"));
    for (to, from, text) in [
        ("bob", "alice", "hello bob, this is alice"),
        ("alice", "bob", "hi alice! bob here"),
        ("alice", "carol", "carol says hello to alice"),
        ("bob", "carol", "and to bob"),
    ] {
        let shown: Vec<&str> = stdout
            .lines()
            .filter(|l| {
                l.trim_start().starts_with(to)
                    && l.contains(&format!("← {from}"))
                    && l.ends_with(text)
            })
            .collect();
        assert_eq!(shown.len(), 1, "{to} ← {from}: {text} in:\n{stdout}");
    }
    // A file shared by alice, fetched and verified by bob.
    let file = line("alice shared hello.txt (");
    assert!(
        file.contains("with bob; bob fetched and verified it in "),
        "{file}"
    );
    // Before granting it, alice had bob re-prove his identity.
    let proof = line("  before granting it, alice challenged bob to re-prove its identity");
    assert!(proof.ends_with(": signature verified"), "{proof}");
    // carol's owner logs in with a password and a TOTP code, and out.
    let login = line("carol's owner logged in with a password (Argon2id) and a TOTP code in ");
    assert!(
        login.ends_with("read the status with the session cookie, and logged out"),
        "{login}"
    );
    line("3 introductions, 3 sessions, 7 encrypted pings, 1 renewal, 4 messages, 1 file, 1 login in ");
    assert!(!stderr.contains("ERROR"), "{stderr}");
}
