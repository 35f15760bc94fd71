//! The audit log through the real binary: two `node run` daemons with their
//! real agents write it, `audit show` opens it through the admin API, and
//! `audit verify` checks it offline and fails, naming the first bad entry,
//! on every alteration.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

use std::path::Path;
use std::process::Output;

use serde_json::Value;

fn audit(data: &Path, args: &[&str]) -> Output {
    openred()
        .arg("--data")
        .arg(data)
        .arg("audit")
        .args(args)
        .output()
        .unwrap()
}

/// `audit verify` fails, and its message names `place`.
#[track_caller]
fn refused(data: &Path, place: &str) {
    let out = audit(data, &["verify"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("does not verify") && stderr.contains(place),
        "`{stderr}` does not name {place}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("audit")).unwrap();
    std::fs::create_dir_all(to.join("keys")).unwrap();
    for file in ["audit/audit.log", "audit/audit.head", "keys/identity.pub"] {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
    }
}

fn lines(data: &Path) -> Vec<String> {
    std::fs::read_to_string(data.join("audit/audit.log"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(data: &Path, lines: &[String]) {
    std::fs::write(data.join("audit/audit.log"), lines.join("\n") + "\n").unwrap();
}

#[test]
fn the_audit_log_is_written_shown_and_verified_and_alterations_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_directory, _, nodes) = registered_nodes(dir.path(), &["a", "b"]);
    let (a, b) = (&nodes[0].1.clone(), &nodes[1].1.clone());
    let b_id = nodes[1].2.clone();
    ok(openred()
        .arg("--data")
        .arg(a)
        .args(["connect", &b_id])
        .output()
        .unwrap());
    ok(openred()
        .arg("--data")
        .arg(a)
        .args(["module", "disable", "messaging"])
        .output()
        .unwrap());

    // The owner's view: events in order, details opened.
    let shown: Value = serde_json::from_str(&ok(audit(a, &["show", "--json"]))).unwrap();
    let events: Vec<&str> = shown["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "log_started",
            "registration",
            "introduction_requested",
            "handshake",
            "module_disabled"
        ]
    );
    assert_eq!(shown["entries"][3]["details"]["peer_id"], b_id.as_str());
    let text = ok(audit(a, &["show", "--since", "2000-01-01T00:00:00Z"]));
    assert!(
        text.contains("module_disabled ok  reason=messaging"),
        "{text}"
    );
    let future: Value =
        serde_json::from_str(&ok(audit(a, &["show", "--since", "4102444800", "--json"]))).unwrap();
    assert_eq!(future["entries"].as_array().unwrap().len(), 0);
    let bad = audit(a, &["show", "--since", "soon"]);
    assert!(!bad.status.success());
    // The log names the peer by a keyed hash only.
    let raw = std::fs::read_to_string(a.join("audit/audit.log")).unwrap();
    assert!(!raw.contains(&b_id));

    // Offline: the nodes stop, and the check needs no secret.
    drop(nodes);
    for data in [a, b] {
        let out = ok(audit(data, &["verify"]));
        assert!(out.contains("verified"), "{out}");
    }
    let json: Value = serde_json::from_str(&ok(audit(a, &["verify", "--json"]))).unwrap();
    assert_eq!(
        (json["ok"].clone(), json["entries"].clone()),
        (true.into(), 5.into())
    );
    let wrong = audit(a, &["verify", "--node-id", &b_id]);
    assert!(!wrong.status.success());

    let case = |name: &str, alter: &dyn Fn(&Path)| {
        let data = dir.path().join(name);
        copy_dir(a, &data);
        alter(&data);
        data
    };
    // Edited.
    let edited = case("edited", &|d| {
        let mut l = lines(d);
        l[2] = l[2].replace("\"outcome\":\"ok\"", "\"outcome\":\"failed\"");
        write_lines(d, &l);
    });
    refused(&edited, "line 3 (seq 2): the signature does not verify");
    let out = audit(&edited, &["verify", "--json"]);
    assert!(!out.status.success());
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (json["line"].clone(), json["seq"].clone()),
        (3.into(), 2.into())
    );
    // Deleted.
    let deleted = case("deleted", &|d| {
        let mut l = lines(d);
        l.remove(1);
        write_lines(d, &l);
    });
    refused(&deleted, "line 2 (seq 1): found seq 2");
    // Inserted: a line of another node's log.
    let inserted = case("inserted", &|d| {
        let mut l = lines(d);
        l.insert(2, lines(b)[2].clone());
        write_lines(d, &l);
    });
    refused(&inserted, "line 3 (seq 2)");
    // Reordered.
    let swapped = case("swapped", &|d| {
        let mut l = lines(d);
        l.swap(3, 4);
        write_lines(d, &l);
    });
    refused(&swapped, "line 4 (seq 3): found seq 4");
    // Truncated: the head knows.
    let truncated = case("truncated", &|d| {
        let mut l = lines(d);
        l.truncate(3);
        write_lines(d, &l);
    });
    refused(&truncated, "line 4 (seq 3): missing");
    // The head tampered with.
    let head = case("head", &|d| {
        let text = std::fs::read_to_string(d.join("audit/audit.head")).unwrap();
        std::fs::write(
            d.join("audit/audit.head"),
            text.replace("\"entries\":5", "\"entries\":4"),
        )
        .unwrap();
    });
    refused(&head, "audit.head: the signature does not verify");
    // Another node's whole log under this node's name.
    let foreign = case("foreign", &|d| {
        for file in ["audit/audit.log", "audit/audit.head"] {
            std::fs::copy(b.join(file), d.join(file)).unwrap();
        }
    });
    refused(&foreign, "line 1 (seq 0)");
}
