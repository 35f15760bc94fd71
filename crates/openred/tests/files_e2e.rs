//! File sharing between two `openred node run` daemons (each confined, with
//! its crypto agent): the CLI shares, lists, fetches and revokes; a large
//! file crosses in constant memory (peak RSS of both daemons measured); a
//! download resumes after the sender, then the receiver, is killed with
//! SIGKILL in the middle.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const MIB: u64 = 1024 * 1024;

/// A directory and two initialised nodes in one temporary folder, with the
/// folders for shared and received files made before the nodes start (a
/// confined node reaches only folders that existed when it started).
struct Setup {
    dir: tempfile::TempDir,
    _directory: Daemon,
    directory: String,
    key: String,
    config: PathBuf,
    a: PathBuf,
    b: PathBuf,
    a_id: String,
    shared: PathBuf,
    out: PathBuf,
}

impl Setup {
    fn new(files_settings: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (directory_daemon, directory, key) =
            directory_daemon(&dir.path().join("directory"), "127.0.0.1:0");
        let config = dir.path().join("node.toml");
        std::fs::write(
            &config,
            format!(
                "[modules.messaging]\nretry_base_ms = 50\nretry_max_ms = 500\n\n\
                 [modules.files]\nretry_base_ms = 50\nretry_max_ms = 500\n{files_settings}\n"
            ),
        )
        .unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for data in [&a, &b] {
            ok(openred()
                .args(["node", "init", "--data"])
                .arg(data)
                .output()
                .unwrap());
        }
        let a_id = node_id(&a);
        let (shared, out) = (dir.path().join("shared"), dir.path().join("out"));
        std::fs::create_dir(&shared).unwrap();
        std::fs::create_dir(&out).unwrap();
        Setup {
            dir,
            _directory: directory_daemon,
            directory,
            key,
            config,
            a,
            b,
            a_id,
            shared,
            out,
        }
    }

    fn run(&self, data: &Path, listen: &str) -> (Daemon, Vec<String>) {
        let mut c = node_run_on(data, &self.directory, listen);
        c.args(["--directory-key", &self.key])
            .arg("--config")
            .arg(&self.config)
            .arg("--download-dir")
            .arg(&self.out);
        start(c, "admin on ")
    }

    fn cli(&self, data: &Path) -> std::process::Command {
        let mut c = openred();
        c.arg("--data").arg(data);
        c
    }
}

fn node_id(data: &Path) -> String {
    ok(openred()
        .args(["node", "id", "--data"])
        .arg(data)
        .output()
        .unwrap())
    .trim()
    .to_owned()
}

async fn wait_registered(data: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(data)["registered"] != true {
        assert!(Instant::now() < deadline, "the node did not register");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A file of `size` bytes of varied contents, written a MiB at a time.
fn make_file(path: &Path, size: u64, seed: u64) -> String {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut hasher = blake3::Hasher::new();
    let mut block = vec![0u8; MIB as usize];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut left = size;
    while left > 0 {
        for word in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
        }
        let n = left.min(MIB) as usize;
        file.write_all(&block[..n]).unwrap();
        hasher.update(&block[..n]);
        left -= n as u64;
    }
    file.flush().unwrap();
    hasher.finalize().to_hex().to_string()
}

fn hash_of(path: &Path) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(std::fs::File::open(path).unwrap())
        .unwrap();
    hasher.finalize().to_hex().to_string()
}

/// The peak resident memory of a process, from `/proc/PID/status`.
fn vm_hwm(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// `openred file share` on A for B; returns the file ID.
fn share(setup: &Setup, path: &Path, b_id: &str, extra: &[&str]) -> String {
    let out = ok(setup
        .cli(&setup.a)
        .args(["--json", "file", "share"])
        .arg(path)
        .args(["--to", b_id])
        .args(extra)
        .output()
        .unwrap());
    let created: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["offered"], json!([b_id]));
    created["share"]["file_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shares_fetches_and_revokes_and_a_large_file_crosses_in_constant_memory() {
    let setup = Setup::new("");
    let (a, _) = setup.run(&setup.a, "127.0.0.1:0");
    let (b, _) = setup.run(&setup.b, "127.0.0.1:0");
    wait_registered(&setup.a).await;
    wait_registered(&setup.b).await;
    let b_id = node_id(&setup.b);

    // A small file first, then one 16 times larger: the peak memory of
    // either daemon must not follow the size.
    let mut peaks = Vec::new();
    for (name, size) in [("small.bin", 16 * MIB), ("large.bin", 256 * MIB)] {
        let path = setup.shared.join(name);
        let hash = make_file(&path, size, size);
        let file_id = share(
            &setup,
            &path,
            &b_id,
            &["--expires", "1h", "--max-downloads", "2"],
        );

        // The offer shows on B, the share on A.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let list: Value = serde_json::from_str(&ok(setup
                .cli(&setup.b)
                .args(["--json", "file", "list"])
                .output()
                .unwrap()))
            .unwrap();
            if list["offers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o["file_id"] == file_id.as_str() && o["name"] == name)
            {
                break;
            }
            assert!(Instant::now() < deadline, "no offer on B: {list}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // Not a terminal: JSON progress events, then `done`.
        let out = setup.out.join(name);
        let started = Instant::now();
        let fetched = ok(setup
            .cli(&setup.b)
            .args(["file", "fetch", &setup.a_id, &file_id, "--out"])
            .arg(&out)
            .output()
            .unwrap());
        let elapsed = started.elapsed();
        let events: Vec<Value> = fetched
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(events
            .iter()
            .all(|e| e["event"] == "progress" || e["event"] == "done"));
        assert_eq!(events.last().unwrap()["event"], "done", "{fetched}");
        assert_eq!(hash_of(&out), hash, "{name}");
        peaks.push((vm_hwm(a.0.id()), vm_hwm(b.0.id())));
        eprintln!(
            "{name}: {} MiB in {:.2} s; peak RSS A {} MiB, B {} MiB",
            size / MIB,
            elapsed.as_secs_f64(),
            peaks.last().unwrap().0 / MIB,
            peaks.last().unwrap().1 / MIB
        );

        let shares: Value = serde_json::from_str(&ok(setup
            .cli(&setup.a)
            .args(["--json", "file", "list"])
            .output()
            .unwrap()))
        .unwrap();
        let listed = shares["shares"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["file_id"] == file_id.as_str())
            .unwrap()
            .clone();
        assert_eq!(listed["downloads"], 1);
        assert_eq!(listed["max_downloads"], 2);
    }
    let ((a_small, b_small), (a_large, b_large)) = (peaks[0], peaks[1]);
    for (who, small, large) in [("sender", a_small, a_large), ("receiver", b_small, b_large)] {
        assert!(large <= 64 * MIB, "{who}: peak RSS {} MiB", large / MIB);
        assert!(
            large < small + 16 * MIB,
            "{who}: peak RSS grew from {} to {} MiB with the file",
            small / MIB,
            large / MIB
        );
    }

    // Revoked: a new fetch is refused, with the reason.
    let path = setup.shared.join("revoked.bin");
    make_file(&path, MIB, 7);
    let file_id = share(&setup, &path, &b_id, &[]);
    ok(setup
        .cli(&setup.a)
        .args(["file", "revoke", &file_id])
        .output()
        .unwrap());
    let refused = setup
        .cli(&setup.b)
        .args(["file", "fetch", &setup.a_id, &file_id, "--out"])
        .arg(setup.out.join("revoked.bin"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("revoked"), "{stderr}");
    assert!(!setup.out.join("revoked.bin").exists());

    // A folder the node was not given to write downloads to: refused
    // before anything is asked of the peer (the confined node could not
    // write there anyway).
    let path = setup.shared.join("elsewhere.bin");
    make_file(&path, MIB, 8);
    let file_id = share(&setup, &path, &b_id, &[]);
    let elsewhere = setup.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let refused = setup
        .cli(&setup.b)
        .args(["file", "fetch", &setup.a_id, &file_id, "--out"])
        .arg(elsewhere.join("elsewhere.bin"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("outside_download_dirs"), "{stderr}");
    assert!(!elsewhere.join("elsewhere.bin").exists());

    // Bad input from the CLI: a clear error, nothing shared.
    let bad = setup
        .cli(&setup.a)
        .args(["file", "share"])
        .arg(setup.dir.path().join("missing"))
        .args(["--to", &b_id, "--expires", "10 parsecs"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

/// Starts a throttled download of a 48 MiB file from A to B through B's
/// admin API; returns the file's hash, where it goes, and the transfer ID.
async fn start_download(setup: &Setup, b: &Admin, b_id: &str) -> (String, PathBuf, String) {
    let path = setup.shared.join("resumed.bin");
    let hash = make_file(&path, 48 * MIB, 42);
    let file_id = share(setup, &path, b_id, &[]);
    let out = setup.out.join("resumed.bin");
    let view = b
        .post(
            "/admin/v1/files/fetch",
            &json!({"node_id": setup.a_id, "file_id": file_id, "out": out}),
        )
        .await;
    (hash, out, view["transfer_id"].as_str().unwrap().to_owned())
}

/// Waits until B's transfer has verified at least `bytes`.
async fn wait_progress(b: &Admin, transfer_id: &str, bytes: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = b
            .get(&format!("/admin/v1/files/transfers/{transfer_id}"))
            .await;
        if view["done_bytes"].as_u64().unwrap_or(0) >= bytes || view["state"] == "done" {
            return view;
        }
        assert!(Instant::now() < deadline, "no progress: {view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_done(b: &Admin, transfer_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let view = b
            .get(&format!("/admin/v1/files/transfers/{transfer_id}"))
            .await;
        if view["state"] == "done" {
            return view;
        }
        assert!(view["state"] != "failed", "{view}");
        assert!(Instant::now() < deadline, "not done: {view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 16 MiB/s from the sender, so that a 48 MiB download takes about 3 s
/// and can be interrupted in the middle.
const THROTTLED: &str = "upload_bytes_per_s = 16777216";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_resumes_after_the_sender_is_killed() {
    let setup = Setup::new(THROTTLED);
    let (a, a_lines) = setup.run(&setup.a, "127.0.0.1:0");
    let a_listen = field(&a_lines, "listening on http://").to_owned();
    let (_b, b_lines) = setup.run(&setup.b, "127.0.0.1:0");
    wait_registered(&setup.a).await;
    wait_registered(&setup.b).await;
    let b = Admin::of(&setup.b, &b_lines);
    let (hash, out, transfer_id) = start_download(&setup, &b, &node_id(&setup.b)).await;

    let before = wait_progress(&b, &transfer_id, 8 * MIB).await;
    assert_eq!(before["state"], "running", "killed too late: {before}");
    let mut a = a;
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    // A again, at the same address; B resumes by itself.
    let (_a, _) = setup.run(&setup.a, &a_listen);
    let view = wait_done(&b, &transfer_id).await;
    assert_eq!(hash_of(&out), hash);
    assert!(view["attempts"].as_u64().unwrap() >= 2, "{view}");
    assert!(
        view["resumed_from"].as_u64().unwrap() >= 8 * MIB,
        "resumed from the last verified chunk, not from the start: {view}"
    );
    assert!(!setup.out.join("resumed.bin.openred-part").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_resumes_after_the_receiver_is_killed() {
    let setup = Setup::new(THROTTLED);
    let (_a, _) = setup.run(&setup.a, "127.0.0.1:0");
    let (b, b_lines) = setup.run(&setup.b, "127.0.0.1:0");
    let b_listen = field(&b_lines, "listening on http://").to_owned();
    wait_registered(&setup.a).await;
    wait_registered(&setup.b).await;
    let b_admin = Admin::of(&setup.b, &b_lines);
    let (hash, out, transfer_id) = start_download(&setup, &b_admin, &node_id(&setup.b)).await;

    let before = wait_progress(&b_admin, &transfer_id, 8 * MIB).await;
    assert_eq!(before["state"], "running", "killed too late: {before}");
    let mut b = b;
    b.0.kill().unwrap();
    b.0.wait().unwrap();
    // The partial file holds what was verified.
    let part = setup.out.join("resumed.bin.openred-part");
    assert!(std::fs::metadata(&part).unwrap().len() >= 8 * MIB);

    // B again: it resumes the download it had recorded, from its partial
    // file, with a new session and a fresh link.
    let (_b, b_lines) = setup.run(&setup.b, &b_listen);
    let b_admin = Admin::of(&setup.b, &b_lines);
    let view = wait_done(&b_admin, &transfer_id).await;
    assert_eq!(hash_of(&out), hash);
    assert!(
        view["resumed_from"].as_u64().unwrap() >= 8 * MIB,
        "resumed from the last verified chunk, not from the start: {view}"
    );
    assert!(!part.exists());
    // Asking again to fetch it is refused: it is there, never replaced.
    let again = setup
        .cli(&setup.b)
        .args(["file", "fetch", &setup.a_id])
        .arg(view["file_id"].as_str().unwrap())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("out_exists"));
}
