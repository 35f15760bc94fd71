//! `openred demo`: a directory and three nodes on loopback, in temporary
//! data directories, through the whole flow: registration, an introduction
//! and handshake for every pair, an encrypted ping over each session, the
//! renewal of one session by a fresh handshake inside it, messages
//! between the nodes, a file shared by one node and fetched by another
//! (after the sharer has challenged the fetcher to re-prove its identity),
//! and the owner's password + TOTP login to a node's admin API. Prints
//! a summary and exits 0; `--keep` leaves them running.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use openred::testnet::{LocalNetwork, LocalNode};
use openred_node::modules::auth::Auth;
use openred_node::modules::files::transfers::TransferState;
use openred_node::modules::files::{Files, ShareRequest};
use openred_node::modules::messaging::store::DeliveryState;
use openred_node::modules::messaging::Messaging;
use openred_node::{owner, NodeState};

use crate::config::shutdown_signal;

fn messaging(state: &NodeState) -> anyhow::Result<&Messaging> {
    state
        .modules()
        .get::<Messaging>()
        .context("the messaging module")
}

/// Waits until nothing in `state`'s outbox is still on its way.
async fn wait_delivered(state: &NodeState) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let outbox = messaging(state)?
            .store()
            .context("the messaging module runs")?
            .outbox(1000, 0)
            .await?;
        if outbox.iter().all(|m| m.state == DeliveryState::Delivered) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("messages not delivered within 20 s: {outbox:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn files(state: &NodeState) -> anyhow::Result<&Files> {
    state.modules().get::<Files>().context("the files module")
}

/// `from` shares a small file with `to`, which fetches it.
async fn share_a_file(
    from: &LocalNode,
    to: &LocalNode,
    root: &std::path::Path,
) -> anyhow::Result<()> {
    let shared = root.join("shared");
    let received = root.join("received");
    std::fs::create_dir_all(&shared)?;
    std::fs::create_dir_all(&received)?;
    let path = shared.join("hello.txt");
    let text = "Hello from alice: this file travelled in encrypted chunks.\n".repeat(200);
    std::fs::write(&path, &text)?;
    let started = Instant::now();
    let (share, _) = files(&from.state)?
        .share(
            &from.state.peers(),
            ShareRequest {
                path,
                peers: vec![to.state.node_id()],
                expires_in_s: Some(600),
                max_downloads: Some(1),
            },
        )
        .await
        .context("alice sharing a file")?;
    let transfer = files(&to.state)?
        .fetch(
            &to.state.peers(),
            from.state.node_id(),
            share.file_id,
            received.clone(),
        )
        .await
        .context("bob fetching alice's file")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(
        transfer.state(),
        TransferState::Done | TransferState::Failed
    ) {
        if Instant::now() > deadline {
            bail!("the file did not arrive within 20 s: {:?}", transfer.view());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if transfer.state() != TransferState::Done {
        bail!("the file transfer failed: {:?}", transfer.view());
    }
    let got = std::fs::read_to_string(received.join("hello.txt"))?;
    if got != text {
        bail!("the file received differs from the one shared");
    }
    println!(
        "{} shared hello.txt ({} bytes, blake3 {}…) with {}; {} fetched and verified it in {:.1} ms",
        from.name,
        share.size(),
        &data_encoding_hex(&share.blake3)[..16],
        to.name,
        to.name,
        started.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}

/// What the auth module's policy did during the file transfer: `from`
/// challenged `to` before granting the download.
fn show_proof(from: &LocalNode, to: &LocalNode) -> anyhow::Result<()> {
    let auth = from
        .state
        .modules()
        .get::<Auth>()
        .context("the auth module")?;
    let proof = auth
        .proofs(&from.state.peers())
        .into_iter()
        .find(|p| p.peer == to.state.node_id().to_string())
        .context("no proof of the fetcher's identity was asked for")?;
    println!(
        "  before granting it, {} challenged {} to re-prove its identity in session {}…: signature verified",
        from.name,
        to.name,
        &proof.session_id[..8]
    );
    Ok(())
}

/// The owner of `node` sets a password and a TOTP secret, logs in to the
/// admin API with both, reads its status with the session cookie, and logs
/// out.
async fn owner_login(node: &LocalNode) -> anyhow::Result<()> {
    let data = node.state.data_dir();
    let password = "demo password, not a real one";
    owner::login::set_password(data, password)?;
    let enrollment = owner::login::enroll_totp(data, &node.state.node_id().to_string())?;
    let now = node.state.clock().now().0;
    let code = owner::login::totp_code(&enrollment.secret, now).map_err(anyhow::Error::msg)?;
    // Below the nodes' keep-alive limit (their header timeout).
    let http = reqwest::Client::builder()
        .pool_idle_timeout(std::time::Duration::from_secs(5))
        .build()?;
    let started = Instant::now();
    let login = http
        .post(format!("{}/admin/v1/login", node.admin_url))
        .json(&serde_json::json!({ "password": password, "totp": code }))
        .send()
        .await?;
    if !login.status().is_success() {
        bail!("the owner's login failed: {}", login.text().await?);
    }
    let cookie = login
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("the login set no cookie")?
        .to_owned();
    let took = started.elapsed();
    let status = http
        .get(format!("{}/admin/v1/status", node.admin_url))
        .header(reqwest::header::COOKIE, &cookie)
        .send()
        .await?;
    if !status.status().is_success() {
        bail!("the session cookie did not open the admin API");
    }
    http.post(format!("{}/admin/v1/logout", node.admin_url))
        .header(reqwest::header::COOKIE, &cookie)
        .send()
        .await?;
    let after = http
        .get(format!("{}/admin/v1/status", node.admin_url))
        .header(reqwest::header::COOKIE, &cookie)
        .send()
        .await?;
    if after.status() != reqwest::StatusCode::UNAUTHORIZED {
        bail!("the session outlived its logout");
    }
    println!(
        "{}'s owner logged in with a password (Argon2id) and a TOTP code in {:.1} ms, \
         read the status with the session cookie, and logged out",
        node.name,
        took.as_secs_f64() * 1000.0
    );
    Ok(())
}

fn data_encoding_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs the demo.
pub async fn run(keep: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    // Three nodes, each pinned to the directory's key, each with its keys
    // in its own crypto agent (started from this executable).
    let network = LocalNetwork::builder()
        .temp_prefix("openred-demo-")
        .named(["alice", "bob", "carol"])
        .start()
        .await?;
    let directory = &network.directory;
    println!(
        "directory  {}  key {}",
        directory.url, directory.fingerprint
    );
    let nodes = &network.nodes;
    for n in nodes {
        println!("node {:<5}  {}  {}", n.name, n.url, n.id());
    }
    println!(
        "all three nodes registered in {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    // Each node's keys are in its own sandboxed agent process.
    let agents: Vec<String> = nodes
        .iter()
        .map(|n| match n.state.crypto().agent_process() {
            Some((pid, _)) => format!("{} pid {pid}", n.name),
            None => format!("{} in process", n.name),
        })
        .collect();
    println!("keys held by crypto agents: {}", agents.join(", "));
    println!();

    // Introduce every pair, then ping over each session.
    println!(
        "{:<15}  {:>16}  {:>14}  {:<18}  session",
        "pair", "introduction ms", "ping rtt ms", "suite"
    );
    for (i, j) in [(0, 1), (0, 2), (1, 2)] {
        let (a, b) = (&nodes[i], &nodes[j]);
        let connected = network
            .introduce(a, b)
            .await
            .with_context(|| format!("{} connecting to {}", a.name, b.name))?;
        let rtt = a.state.ping(&b.state.node_id()).await?;
        let back = b.state.ping(&a.state.node_id()).await?;
        let suite = a
            .state
            .session_suite(&b.state.node_id())
            .map(|s| s.to_string())
            .unwrap_or_default();
        println!(
            "{:<15}  {:>16.2}  {:>6.2} / {:>5.2}  {:<18}  {}",
            format!("{} → {}", a.name, b.name),
            connected.elapsed.as_secs_f64() * 1000.0,
            rtt.as_secs_f64() * 1000.0,
            back.as_secs_f64() * 1000.0,
            suite,
            connected.session_id
        );
    }
    // A renewal: a fresh handshake inside the live session, which the
    // lifecycle runs before a session's maximum age; no directory involved.
    let (a, b) = (&nodes[0], &nodes[1]);
    let live = a
        .state
        .sessions()
        .with_peer(&b.state.node_id())
        .context("alice's session with bob")?;
    let renewing = Instant::now();
    let renewed = a.state.renew(&live).await.context("renewing alice → bob")?;
    let rtt = b.state.ping(&a.state.node_id()).await?;
    println!();
    println!(
        "{} → {} renewed without the directory in {:.2} ms: session {} → {}, then bob's ping {:.2} ms",
        a.name,
        b.name,
        renewing.elapsed().as_secs_f64() * 1000.0,
        live.id(),
        renewed.id(),
        rtt.as_secs_f64() * 1000.0
    );
    // Messages: through each sender's outbox, acknowledged once in the
    // receiver's inbox.
    println!();
    let sending = Instant::now();
    let notes = [
        (0, 1, "hello bob, this is alice"),
        (1, 0, "hi alice! bob here"),
        (2, 0, "carol says hello to alice"),
        (2, 1, "and to bob"),
    ];
    for (from, to, text) in notes {
        let (a, b) = (&nodes[from], &nodes[to]);
        messaging(&a.state)?
            .send(
                &a.state.peers(),
                b.state.node_id(),
                "text/plain; charset=utf-8",
                text,
            )
            .await
            .with_context(|| format!("{} sending to {}", a.name, b.name))?;
    }
    for n in nodes {
        wait_delivered(&n.state).await?;
    }
    println!(
        "{} messages delivered in {:.1} ms:",
        notes.len(),
        sending.elapsed().as_secs_f64() * 1000.0
    );
    for n in nodes {
        let store = messaging(&n.state)?
            .store()
            .context("the messaging module runs")?;
        for m in store.inbox(None, 100, 0).await? {
            let from = nodes
                .iter()
                .find(|x| x.state.node_id() == m.peer)
                .map_or("?", |x| x.name.as_str());
            println!("  {:<6} ← {:<6} #{}  {}", n.name, from, m.seq, m.body);
        }
    }
    // A file: alice shares it with bob (bob gets an offer through
    // messaging), bob fetches it in encrypted chunks, verified with BLAKE3.
    println!();
    share_a_file(&nodes[0], &nodes[1], network.root()).await?;
    show_proof(&nodes[0], &nodes[1])?;
    println!();
    owner_login(&nodes[2]).await?;
    println!();
    println!(
        "3 introductions, 3 sessions, 7 encrypted pings, 1 renewal, {} messages, 1 file, 1 login in {:.0} ms in all",
        notes.len(),
        started.elapsed().as_secs_f64() * 1000.0
    );

    if keep {
        println!();
        println!("--keep: running until ctrl-c. Try:");
        for n in nodes {
            println!(
                "  openred --data {} status      # {} (admin {}, p2p {})",
                n.state.data_dir().display(),
                n.name,
                n.admin_url,
                n.url
            );
        }
        shutdown_signal().await;
    }
    network.shutdown().await?;
    Ok(())
}
