//! End to end through the real binary: `node init`/`id`, a directory and two
//! `node run` daemons on loopback, and the client subcommands.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

#[test]
fn init_prints_the_id_alone_refuses_to_overwrite_and_keeps_keys_private() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n");
    let out = ok(openred()
        .arg("node")
        .arg("init")
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap());
    let id = out.trim();
    assert_eq!(out, format!("{id}\n"), "the ID alone on one line");
    assert_eq!(id.len(), 58);
    let again = openred()
        .args(["node", "init", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
    let shown = ok(openred()
        .args(["node", "id", "--data"])
        .arg(&data)
        .output()
        .unwrap());
    assert_eq!(shown.trim(), id);
    for file in ["identity.key", "agreement.key"] {
        let mode = std::fs::metadata(data.join("keys").join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
}

/// `openred node run` on a free loopback port, private addresses allowed.
#[test]
fn two_node_daemons_meet_through_a_directory_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let (directory, fingerprint, nodes) = registered_nodes(dir.path(), &["a", "b"]);
    for (_, data, _) in &nodes {
        assert_eq!(status(data)["directory_key"], fingerprint.as_str());
    }
    let (a, b) = (&nodes[0], &nodes[1]);
    let mode = std::fs::metadata(a.1.join("admin.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the admin token is private");

    let peers = ok(openred()
        .arg("--data")
        .arg(&a.1)
        .args(["peers", "--json"])
        .output()
        .unwrap());
    let peers: Value = serde_json::from_str(&peers).unwrap();
    let listed = peers.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{peers}");
    assert_eq!(listed[0]["node_id"], b.2.as_str());
    assert_eq!(listed[0]["verified"], true);

    let connected = ok(openred()
        .arg("--data")
        .arg(&a.1)
        .args(["connect", &b.2, "--json"])
        .output()
        .unwrap());
    let connected: Value = serde_json::from_str(&connected).unwrap();
    let session = connected["session_id"].as_str().unwrap().to_owned();
    let pinged = ok(openred()
        .arg("--data")
        .arg(&b.1)
        .args(["ping", &a.2])
        .output()
        .unwrap());
    assert!(pinged.contains("encrypted ping"), "{pinged}");

    for (data, role) in [(&a.1, "initiator"), (&b.1, "responder")] {
        let s = status(data);
        let sessions = s["sessions"].as_array().unwrap();
        assert_eq!(sessions.len(), 1, "{s}");
        assert_eq!(sessions[0]["session_id"], session.as_str());
        assert_eq!(sessions[0]["role"], role);
        assert_eq!(sessions[0]["confirmed"], true);
    }
    let text = ok(openred()
        .arg("--data")
        .arg(&a.1)
        .arg("status")
        .output()
        .unwrap());
    // The peer table: a header, then the session's row with its epochs,
    // last contact and round trip (the connect's ping measured one).
    assert!(text.contains("LAST CONTACT"), "{text}");
    let row = text.lines().find(|l| l.contains(&session)).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert!(cells.contains(&"0/0"), "{row}");
    assert!(row.contains(" s ago") && row.ends_with(" ms"), "{row}");

    // With the directory gone, the session renews through the real agents:
    // a fresh handshake carried by the session itself.
    drop(directory);
    let renewed = ok(openred()
        .arg("--data")
        .arg(&a.1)
        .args(["renew", &b.2, "--json"])
        .output()
        .unwrap());
    let renewed: Value = serde_json::from_str(&renewed).unwrap();
    assert_eq!(renewed["previous_session_id"], session.as_str());
    let fresh = renewed["session_id"].as_str().unwrap();
    assert_ne!(fresh, session);
    for (from, to) in [(&a.1, &b.2), (&b.1, &a.2)] {
        let pinged = ok(openred()
            .arg("--data")
            .arg(from)
            .args(["ping", to, "--json"])
            .output()
            .unwrap());
        assert!(pinged.contains("rtt_ms"), "{pinged}");
    }
    for data in [&a.1, &b.1] {
        let s = status(data);
        let sessions = s["sessions"].as_array().unwrap();
        assert!(sessions.iter().any(|x| x["session_id"] == fresh), "{s}");
    }

    // Messages from the command line, still without the directory.
    let cli = |data: &std::path::Path, args: &[&str]| {
        ok(openred()
            .arg("--data")
            .arg(data)
            .args(args)
            .output()
            .unwrap())
    };
    let sent = cli(&a.1, &["msg", "send", &b.2, "hello from the CLI"]);
    let (message_id, state) = sent.trim().split_once(' ').unwrap();
    assert_eq!((message_id.len(), state), (32, "queued"), "{sent}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let outbox: Value = serde_json::from_str(&cli(&a.1, &["msg", "outbox", "--json"])).unwrap();
        if outbox[0]["state"] == "delivered" {
            assert_eq!(outbox[0]["message_id"], message_id);
            break;
        }
        assert!(Instant::now() < deadline, "not delivered: {outbox}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let inbox: Value =
        serde_json::from_str(&cli(&b.1, &["msg", "inbox", "--peer", &a.2, "--json"])).unwrap();
    assert_eq!(inbox[0]["text"], "hello from the CLI");
    assert!(cli(&b.1, &["msg", "inbox"]).contains("hello from the CLI"));
    // Modules from the command line: off, listed off, on again.
    assert_eq!(
        cli(&b.1, &["module", "disable", "messaging"]).trim(),
        "module messaging is off"
    );
    assert!(cli(&b.1, &["status"]).contains("module     messaging off"));
    let refused = openred()
        .arg("--data")
        .arg(&b.1)
        .args(["msg", "inbox"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("module_disabled"));
    assert_eq!(
        cli(&b.1, &["module", "enable", "messaging"]).trim(),
        "module messaging is on"
    );

    // A client without the right token is refused.
    std::fs::write(a.1.join("admin.token"), "wrong").unwrap();
    let refused = openred()
        .arg("--data")
        .arg(&a.1)
        .arg("status")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unauthorized"));
}

#[test]
fn a_node_keeps_serving_while_the_directory_is_down_then_registers_and_deregisters_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // A port with nothing behind it yet: the directory comes later.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let directory_url = format!("http://127.0.0.1:{port}");
    let data = dir.path().join("n");
    let id = ok(openred()
        .args(["node", "init", "--data"])
        .arg(&data)
        .output()
        .unwrap());
    let id = id.trim().to_owned();
    // No --directory-key: the node trusts the key on first use.
    let c = node_run(&data, &directory_url);
    let (mut node, lines) = start(c, "admin on ");
    let p2p = field(&lines, "listening on ").to_owned();

    // The directory is down: the node is not registered, but serves peers.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(status(&data)["registered"], false);
    let health = reqwest::blocking_get(&format!("{p2p}/api/v3/health"));
    assert_eq!(health["status"], "ok");
    assert_eq!(health["node_id"], id.as_str());
    // Live, not ready: the checks ran at start, the real agent answered.
    assert_eq!(health["ready"], false, "{health}");
    assert_eq!(
        health["checks"],
        serde_json::json!({"agent": true, "database": true, "directory": false})
    );

    let (_directory, _, fingerprint) =
        directory_daemon(&dir.path().join("directory"), &format!("127.0.0.1:{port}"));
    // Back-off is 1, 2, 4… s: registration follows within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&data)["registered"] != true {
        assert!(
            Instant::now() < deadline,
            "no registration after the directory came up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        status(&data)["directory_key"],
        fingerprint.as_str(),
        "pinned on first use"
    );
    let found = reqwest::blocking_get(&format!("{directory_url}/api/v3/nodes/{id}"));
    assert_eq!(found["node_id"], id.as_str());

    // SIGTERM: the node deregisters and exits 0.
    assert!(Command::new("kill")
        .args(["-TERM", &node.0.id().to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = node.0.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success());
    let gone = reqwest::blocking_get(&format!("{directory_url}/api/v3/nodes/{id}"));
    assert_eq!(gone["error"], "unknown_node");
}

/// Asks the running node (a test build) to try something from inside.
fn node_probe(data: &Path, admin: &str, probe: Value) -> (bool, String) {
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let address = admin.strip_prefix("http://").unwrap();
    let body = probe.to_string();
    // A plain HTTP/1.1 exchange: enough for one JSON call.
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "POST /admin/v1/probe HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        token.trim(),
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, json) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let answer: Value = serde_json::from_str(json).unwrap();
    (
        answer["succeeded"].as_bool().unwrap(),
        answer["detail"].to_string(),
    )
}

#[test]
fn the_node_daemon_cannot_read_its_keys_nor_reach_into_its_agent() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n");
    init_node(&data);
    // Nobody listens at that directory: the node keeps retrying, which is
    // enough here.
    let c = node_run(&data, "http://127.0.0.1:9");
    let (_node, lines) = start(c, "admin on ");
    let admin = field(&lines, "admin on ").to_owned();

    let view = status(&data);
    let p = &view["protections"];
    assert_eq!(p["agent_mode"], "process", "{p}");
    assert!(p["agent_pid"].as_u64().unwrap() > 0, "{p}");
    for who in ["node", "agent"] {
        assert_eq!(p[who]["no_new_privs"], true, "{who}: {p}");
        assert_eq!(p[who]["dumpable"], false, "{who}: {p}");
        assert_eq!(p[who]["seccomp"], true, "{who}: {p}");
        // Both confine themselves before any second thread exists, so
        // Landlock covers the whole process (never "partial").
        let state = p[who]["landlock"]["state"].as_str().unwrap();
        assert!(state == "enforced" || state == "unsupported", "{who}: {p}");
    }
    let landlock = p["node"]["landlock"]["state"].as_str().unwrap();

    // The database, in a folder beside the keys, is the node's to use.
    let (worked, detail) = node_probe(
        &data,
        &admin,
        serde_json::json!({ "read_file": data.join("state/node.db") }),
    );
    assert!(worked, "the node cannot read its own database: {detail}");
    // The key files are not, though the node created them.
    for key in ["identity.key", "agreement.key"] {
        let (worked, _) = node_probe(
            &data,
            &admin,
            serde_json::json!({ "read_file": data.join("keys").join(key) }),
        );
        if landlock == "unsupported" {
            println!("skipped: Landlock is not supported by this kernel");
        } else {
            assert!(!worked, "the confined node read its {key}");
        }
    }
    // Nor can it look into the agent's memory (a ptrace access check),
    // although it runs as the same user (root, here).
    let (worked, detail) = node_probe(&data, &admin, serde_json::json!("agent_memory"));
    assert!(!worked, "the node opened the agent's memory");
    assert!(
        detail.contains("denied") || detail.contains("not permitted"),
        "{detail}"
    );

    // And `status` says so in words.
    let text = ok(openred()
        .arg("--data")
        .arg(&data)
        .arg("status")
        .output()
        .unwrap());
    assert!(text.contains("seccomp"), "{text}");
    // Signals are scoped where the kernel can (Landlock ABI 6).
    let abi = p["node"]["landlock"]["abi"].as_u64().unwrap_or(0);
    for who in ["node", "agent"] {
        assert_eq!(p[who]["landlock_scoped"], abi >= 6, "{who}: {p}");
    }
    if abi >= 6 {
        assert!(text.contains("signals scoped"), "{text}");
    }
}

/// The key-theft path: a confined node put another program at the path the
/// launcher was started from, killed the agent, and had the launcher start
/// the replacement outside every sandbox. The launcher now starts agents
/// only from the file it runs itself, opened before it confined itself.
#[test]
fn a_program_replaced_at_its_path_is_never_run_by_the_launcher() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let program = bin.join("openred");
    if std::fs::hard_link(env!("CARGO_BIN_EXE_openred"), &program).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_openred"), &program).unwrap();
    }
    let original = std::fs::metadata(&program).unwrap();
    let data = dir.path().join("n");
    init_node(&data);
    let mut run = Command::new(&program);
    run.env("OPENRED_LOG", "warn")
        .env_remove("OPENRED_DATA")
        .args([
            "node",
            "run",
            "--listen",
            "127.0.0.1:0",
            "--danger-allow-private-addresses",
            "--directory",
            "http://127.0.0.1:9",
            "--data",
        ])
        .arg(&data);
    let (_node, _) = start(run, "admin on ");
    let first = status(&data)["protections"]["agent_pid"].as_u64().unwrap();

    // The replacement leaves a mark if it ever runs.
    let mark = dir.path().join("the-replacement-ran");
    let replacement = bin.join("openred.new");
    std::fs::write(
        &replacement,
        format!("#!/bin/sh\necho ran > '{}'\nexit 1\n", mark.display()),
    )
    .unwrap();
    std::fs::set_permissions(&replacement, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&replacement, &program).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(first).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    // A new agent answers: `status` asks it for its protections.
    let deadline = Instant::now() + Duration::from_secs(30);
    let second = loop {
        let view = status(&data);
        let pid = view["protections"]["agent_pid"].as_u64().unwrap_or(0);
        if pid != 0 && pid != first && view["protections"]["agent"]["seccomp"] == true {
            break pid;
        }
        assert!(Instant::now() < deadline, "no new agent: {view}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!mark.exists(), "the replacement program ran");
    match std::fs::metadata(format!("/proc/{second}/exe")) {
        Ok(exe) => assert_eq!(
            (exe.dev(), exe.ino()),
            (original.dev(), original.ino()),
            "the new agent runs another file than the original program"
        ),
        // The agent is not dumpable: only root may look at its image.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            println!("skipped: the new agent's image (needs root): {e}")
        }
        Err(e) => panic!("/proc/{second}/exe: {e}"),
    }
}

/// `--agent-user`: a node running as root starts its agent as another user,
/// which owns the key folder; the node itself still cannot read the keys.
#[test]
fn a_root_node_runs_its_agent_as_the_agent_user() {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::Uid::effective().is_root() {
        println!("skipped: --agent-user needs root");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The agent user must be able to reach the key folder.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let data = dir.path().join("n");
    init_node(&data);
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o711)).unwrap();
    let mut run = node_run(&data, "http://127.0.0.1:9");
    run.args(["--agent-user", "nobody"]);
    let (_node, lines) = start(run, "admin on ");
    let admin = field(&lines, "admin on ").to_owned();

    let view = status(&data);
    let p = &view["protections"];
    assert_eq!(p["agent"]["uid"], nobody.uid.as_raw(), "{p}");
    assert_eq!(p["node"]["uid"], 0, "{p}");
    let keys = data.join("keys");
    for entry in std::fs::read_dir(&keys).unwrap() {
        let meta = entry.unwrap().metadata().unwrap();
        assert_eq!(meta.uid(), nobody.uid.as_raw());
    }
    assert_eq!(std::fs::metadata(&keys).unwrap().mode() & 0o777, 0o700);
    // The agent answers (status asked it for its protections); and the
    // node, root as it is, still cannot read the keys.
    assert!(p["agent_pid"].as_u64().unwrap() > 0, "{p}");
    assert_eq!(p["agent"]["seccomp"], true, "{p}");
    let landlock = p["node"]["landlock"]["state"].as_str().unwrap();
    let (worked, _) = node_probe(
        &data,
        &admin,
        serde_json::json!({ "read_file": keys.join("identity.key") }),
    );
    if landlock != "unsupported" {
        assert!(!worked, "the root node read a key file of the agent user");
    }

    // Without search permission on the way, the node says so and stops.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = node_run(&data, "http://127.0.0.1:9")
        .args(["--agent-user", "nobody"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot search this folder"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The passphrase that wraps the master key was left in the environment of
/// the node, its launcher and its agent, where a compromised node process
/// reads it (`/proc/self/environ`). Only the launcher keeps it, in memory.
#[test]
fn the_passphrase_is_scrubbed_from_every_process_environment() {
    let secret = "correct horse battery staple 4417";
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n");
    ok(openred()
        .env("OPENRED_PASSPHRASE", secret)
        .args(["node", "init", "--data"])
        .arg(&data)
        .output()
        .unwrap());
    let mut run = node_run(&data, "http://127.0.0.1:9");
    run.env("OPENRED_PASSPHRASE", secret);
    let (node, _) = start(run, "admin on ");
    let agent = status(&data)["protections"]["agent_pid"].as_u64().unwrap();
    let agent_stat = std::fs::read_to_string(format!("/proc/{agent}/stat")).unwrap();
    let launcher: u64 = agent_stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    for (who, pid) in [
        ("node", u64::from(node.0.id())),
        ("launcher", launcher),
        ("agent", agent),
    ] {
        match std::fs::read(format!("/proc/{pid}/environ")) {
            Ok(environ) => {
                let text = String::from_utf8_lossy(&environ);
                assert!(
                    !text.contains(secret),
                    "the {who}'s environment holds the passphrase"
                );
                assert!(
                    text.contains("OPENRED_LOG="),
                    "{who}: not the expected process"
                );
            }
            // Not dumpable: only root may read it.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                println!("skipped: the {who}'s environment (needs root): {e}")
            }
            Err(e) => panic!("{who}: {e}"),
        }
    }
    // The agent restarted by the launcher still opens the wrapped key.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(agent).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view = status(&data);
        let pid = view["protections"]["agent_pid"].as_u64().unwrap_or(0);
        if pid != 0 && pid != agent && view["protections"]["agent"]["seccomp"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "no new agent: {view}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
