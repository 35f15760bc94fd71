//! What the tests of the real binary share: running `openred`, daemons
//! killed when dropped, and reading what they print.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// `openred`, logging warnings only, with no data directory from the
/// environment.
pub fn openred() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_openred"));
    c.env("OPENRED_LOG", "warn").env_remove("OPENRED_DATA");
    c
}

pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a daemon and returns it with the stdout lines up to `until`.
pub fn start(mut command: Command, until: &str) -> (Daemon, Vec<String>) {
    let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        let line = lines
            .next()
            .expect("the daemon printed its address")
            .unwrap();
        let done = line.starts_with(until);
        seen.push(line);
        if done {
            break;
        }
    }
    (Daemon(child), seen)
}

pub fn field<'a>(lines: &'a [String], prefix: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in {lines:?}"))
}

/// A directory daemon on `listen` (e.g. `127.0.0.1:0`) with its data in
/// `data`: the daemon, its URL and its key's fingerprint.
pub fn directory_daemon(data: &Path, listen: &str) -> (Daemon, String, String) {
    let mut c = openred();
    c.args([
        "directory",
        "serve",
        "--listen",
        listen,
        "--danger-allow-private-addresses",
        "--data",
    ])
    .arg(data);
    let (daemon, lines) = start(c, "listening on ");
    let url = field(&lines, "listening on ").to_owned();
    let fingerprint = field(&lines, "directory key fingerprint: ").to_owned();
    (daemon, url, fingerprint)
}

/// `openred node run` on a free loopback port, with the danger flag.
pub fn node_run(data: &Path, directory: &str) -> Command {
    node_run_on(data, directory, "127.0.0.1:0")
}

/// `openred node run` listening on `listen`, with the danger flag.
pub fn node_run_on(data: &Path, directory: &str, listen: &str) -> Command {
    let mut c = openred();
    c.args([
        "node",
        "run",
        "--listen",
        listen,
        "--danger-allow-private-addresses",
        "--directory",
        directory,
    ])
    .arg("--data")
    .arg(data);
    c
}

/// `openred node init --data DATA`: the new node's ID.
pub fn init_node(data: &Path) -> String {
    ok(openred()
        .args(["node", "init", "--data"])
        .arg(data)
        .output()
        .unwrap())
    .trim()
    .to_owned()
}

/// A node daemon: the process, its data directory, its node ID.
pub type NodeDaemon = (Daemon, PathBuf, String);

/// A directory daemon and one node daemon per name under `root`, each
/// pinning the directory's key, all registered: the directory, its key's
/// fingerprint and the nodes.
pub fn registered_nodes(root: &Path, names: &[&str]) -> (Daemon, String, Vec<NodeDaemon>) {
    let (directory, directory_url, fingerprint) =
        directory_daemon(&root.join("directory"), "127.0.0.1:0");
    let mut nodes = Vec::new();
    for name in names {
        let data = root.join(name);
        let id = init_node(&data);
        let mut c = node_run(&data, &directory_url);
        c.args(["--directory-key", &fingerprint]);
        nodes.push((start(c, "admin on ").0, data, id));
    }
    // --listen 127.0.0.1:0 picks a free port; the public URL is derived from
    // the bound address. Wait until all registered.
    let deadline = Instant::now() + Duration::from_secs(20);
    for (_, data, _) in &nodes {
        while status(data)["registered"] != true {
            assert!(Instant::now() < deadline, "node did not register");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    (directory, fingerprint, nodes)
}

/// `openred status --json` of the node running on `data`.
pub fn status(data: &Path) -> Value {
    let out = ok(openred()
        .arg("--data")
        .arg(data)
        .args(["status", "--json"])
        .output()
        .unwrap());
    serde_json::from_str(&out).unwrap()
}

/// A node's admin API, from its data folder and the lines it printed.
pub struct Admin {
    pub http: ::reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Admin {
    pub fn of(data: &Path, lines: &[String]) -> Admin {
        Admin {
            http: ::reqwest::Client::builder()
                .no_proxy()
                // Below the node's keep-alive limit (its header timeout).
                .pool_idle_timeout(std::time::Duration::from_secs(5))
                .build()
                .unwrap(),
            base: field(lines, "admin on ").to_owned(),
            token: std::fs::read_to_string(data.join("admin.token"))
                .unwrap()
                .trim()
                .to_owned(),
        }
    }

    pub async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, body: &Value) -> Value {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }
}

/// A tiny blocking GET returning JSON, without pulling in reqwest's
/// blocking feature: a current-thread runtime per call.
pub mod reqwest {
    pub fn blocking_get(url: &str) -> serde_json::Value {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            ::reqwest::get(url)
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        })
    }
}
