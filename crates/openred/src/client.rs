//! The client subcommands (`openred --data DIR peers | connect | status |
//! ping`): they talk to the running node's admin API, found through the
//! address and bearer-token files in the data directory.

use std::path::Path;

use anyhow::{bail, Context};
use openred_node::audit::AuditView;
use openred_node::modules::auth::ProofView;
use openred_node::modules::files::api::{OfferView, ShareCreated, ShareView};
use openred_node::modules::files::transfers::{TransferState, TransferView};
use openred_node::modules::messaging::api::{InboxView, OutboxView};
use openred_node::modules::printable;
use openred_node::modules::ModuleView;
use openred_node::owner::admin::{
    self, ConnectView, PeerRequest, PeerView, PingView, RenewView, StatusView,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

struct AdminClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl AdminClient {
    fn new(data: &Path) -> anyhow::Result<AdminClient> {
        let address = std::fs::read_to_string(admin::address_path(data)).with_context(|| {
            format!(
                "no running node found in {} (is `openred node run` up?)",
                data.display()
            )
        })?;
        if address.trim().is_empty() {
            bail!(
                "the node in {} is starting; its admin API does not listen yet",
                data.display()
            );
        }
        let token =
            std::fs::read_to_string(admin::token_path(data)).context("reading the admin token")?;
        Ok(AdminClient {
            base: format!("http://{}", address.trim()),
            token: token.trim().to_owned(),
            // Below the node's keep-alive limit (its header timeout).
            http: reqwest::Client::builder()
                .pool_idle_timeout(std::time::Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        })
    }

    async fn answer<T: DeserializeOwned>(response: reqwest::Response) -> anyhow::Result<T> {
        let status = response.status();
        let body: Value = response.json().await.context("reading the node's answer")?;
        if !status.is_success() {
            bail!(
                "{} ({}): {}",
                body["error"].as_str().unwrap_or("error"),
                status.as_u16(),
                body["message"].as_str().unwrap_or("")
            );
        }
        Ok(serde_json::from_value(body)?)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .context("the node's admin API does not answer")?;
        Self::answer(response).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .context("the node's admin API does not answer")?;
        Self::answer(response).await
    }
}

fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `openred peers`.
pub async fn peers(data: &Path, json: bool) -> anyhow::Result<()> {
    let peers: Vec<PeerView> = AdminClient::new(data)?.get("/admin/v1/peers").await?;
    if json {
        return print_json(&peers);
    }
    println!(
        "{:<58}  {:<8}  {:<8}  API URL",
        "NODE ID", "STATUS", "VERIFIED"
    );
    for p in &peers {
        println!(
            "{:<58}  {:<8}  {:<8}  {}",
            p.node_id,
            p.status,
            if p.verified { "yes" } else { "NO" },
            p.api_url
        );
        if let Some(problem) = &p.problem {
            println!("    {problem}");
        }
    }
    Ok(())
}

/// A node ID given on the command line.
fn node_id_arg(text: &str) -> anyhow::Result<openred_core::NodeId> {
    openred_core::NodeId::parse(text).with_context(|| format!("NODE_ID {text:?}"))
}

/// Asks the admin API to act on one peer at `path`; prints the answer as
/// JSON, or as `text` says.
async fn peer_command<V: serde::Serialize + serde::de::DeserializeOwned>(
    data: &Path,
    path: &str,
    node_id: &str,
    json: bool,
    text: impl FnOnce(&V) -> String,
) -> anyhow::Result<()> {
    let body = PeerRequest {
        node_id: node_id_arg(node_id)?,
    };
    let view: V = AdminClient::new(data)?.post(path, &body).await?;
    if json {
        return print_json(&view);
    }
    println!("{}", text(&view));
    Ok(())
}

/// `openred connect NODE_ID`.
pub async fn connect(data: &Path, node_id: &str, json: bool) -> anyhow::Result<()> {
    peer_command(
        data,
        "/admin/v1/connect",
        node_id,
        json,
        |v: &ConnectView| {
            format!(
                "session {} with {} established in {:.1} ms",
                v.session_id, v.node_id, v.elapsed_ms
            )
        },
    )
    .await
}

/// `openred renew NODE_ID`.
pub async fn renew(data: &Path, node_id: &str, json: bool) -> anyhow::Result<()> {
    peer_command(data, "/admin/v1/renew", node_id, json, |v: &RenewView| {
        format!(
            "session {} with {} renewed as {} in {:.1} ms",
            v.previous_session_id, v.node_id, v.session_id, v.elapsed_ms
        )
    })
    .await
}

/// `openred ping NODE_ID`.
pub async fn ping(data: &Path, node_id: &str, json: bool) -> anyhow::Result<()> {
    peer_command(data, "/admin/v1/ping", node_id, json, |v: &PingView| {
        format!("encrypted ping to {}: {:.2} ms", v.node_id, v.rtt_ms)
    })
    .await
}

/// `openred status`.
pub async fn status(data: &Path, json: bool) -> anyhow::Result<()> {
    let view: StatusView = AdminClient::new(data)?.get("/admin/v1/status").await?;
    if json {
        return print_json(&view);
    }
    println!("node       {}", view.node_id);
    println!("public URL {}", view.public_url);
    println!(
        "directory  {} (key {}){}",
        view.directory,
        view.directory_key.as_deref().unwrap_or("not pinned yet"),
        if view.registered {
            ", registered"
        } else {
            ", not registered"
        }
    );
    let p = &view.protections;
    println!(
        "agent      {}{}",
        p.agent_mode,
        match p.agent_pid {
            Some(pid) => format!(", pid {pid}, restarted {} times", p.agent_restarts),
            None => String::new(),
        }
    );
    match &p.agent {
        Some(agent) => println!("  agent    {}", describe_protections(agent)),
        None => println!("  agent    not answering now (restarting?)"),
    }
    match &p.node {
        Some(node) => println!(
            "  node     {}",
            describe_protections(&serde_json::to_value(node)?)
        ),
        None => println!(
            "  node     not confined (in process, e.g. the demo or danger_in_process_crypto)"
        ),
    }
    for m in &view.modules {
        println!(
            "module     {} {}{}",
            m.name,
            if m.enabled { "on" } else { "off" },
            if m.description.is_empty() {
                String::new()
            } else {
                format!("  ({})", m.description)
            }
        );
    }
    match &view.readiness {
        Some(r) => {
            let check = |c: &openred_node::health::Check| match &c.error {
                None => format!("ok ({:.1} ms)", c.took_ms),
                Some(e) => format!("FAILING: {e}"),
            };
            println!(
                "ready      {}  agent {}, database {}, directory {}",
                if r.ready { "yes" } else { "NO" },
                check(&r.agent),
                check(&r.database),
                check(&r.directory)
            );
        }
        None => println!("ready      not checked yet"),
    }
    if view.sessions.is_empty() {
        println!("no sessions");
        return Ok(());
    }
    print!("{}", peer_table(&view.sessions));
    Ok(())
}

/// The sessions as a table: one row per session, columns aligned.
fn peer_table(sessions: &[openred_node::owner::admin::SessionView]) -> String {
    let mut rows = vec![[
        "PEER".to_owned(),
        "SESSION".to_owned(),
        "ROLE".to_owned(),
        "SUITE".to_owned(),
        "AGE".to_owned(),
        "EPOCH".to_owned(),
        "LAST CONTACT".to_owned(),
        "RTT".to_owned(),
    ]];
    for s in sessions {
        rows.push([
            s.peer.clone(),
            format!(
                "{}{}",
                s.session_id,
                if s.confirmed { "" } else { " (unconfirmed)" }
            ),
            s.role.clone(),
            s.suite.clone(),
            format!("{} s", s.age_s),
            format!("{}/{}", s.send_epoch, s.recv_epoch),
            format!("{} s ago", s.last_contact_s),
            s.rtt_ms
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.2} ms")),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// One line for a process's protections, e.g. `seccomp on, Landlock ABI 7
/// enforced, signals scoped, no_new_privs on, not dumpable, uid 0`.
fn describe_protections(p: &serde_json::Value) -> String {
    if p.get("in_process").is_some() {
        return "in the node process: no separate sandbox".into();
    }
    let on = |key: &str| if p[key] == true { "on" } else { "OFF" };
    let landlock = match p["landlock"]["state"].as_str() {
        Some("enforced") => format!("Landlock ABI {} enforced", p["landlock"]["abi"]),
        Some("partial") => format!("Landlock ABI {} partly enforced", p["landlock"]["abi"]),
        Some("unsupported") => "Landlock not supported by this kernel".into(),
        _ => "Landlock not applied".into(),
    };
    let scoped = if p["landlock_scoped"] == true {
        "signals scoped"
    } else {
        "signals NOT scoped"
    };
    format!(
        "seccomp {}, {landlock}, {scoped}, no_new_privs {}, {}, uid {}",
        on("seccomp"),
        on("no_new_privs"),
        if p["dumpable"] == false {
            "not dumpable"
        } else {
            "DUMPABLE"
        },
        p["uid"]
    )
}

/// `openred msg …`.
#[derive(clap::Subcommand)]
pub enum MsgCommand {
    /// Send a text message to a node: prints its message ID and state.
    Send {
        /// The peer's node ID.
        node_id: String,
        /// The text.
        text: String,
    },
    /// The messages received, each peer's in the order it sent them.
    Inbox {
        /// Only this peer's messages.
        #[arg(long)]
        peer: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// The messages sent, newest first, with their delivery state.
    Outbox {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// `openred msg …`.
pub async fn msg(data: &Path, command: MsgCommand, json: bool) -> anyhow::Result<()> {
    let client = AdminClient::new(data)?;
    match command {
        MsgCommand::Send { node_id, text } => {
            let view: OutboxView = client
                .post(
                    "/admin/v1/messages",
                    &serde_json::json!({ "node_id": node_id, "text": text }),
                )
                .await?;
            if json {
                return print_json(&view);
            }
            println!("{} {}", view.message_id, state_name(&view));
        }
        MsgCommand::Inbox { peer, limit } => {
            let mut path = format!("/admin/v1/messages/inbox?limit={limit}");
            if let Some(peer) = peer {
                // Checked here, so that only a node ID reaches the query.
                let peer = openred_core::NodeId::parse(&peer)
                    .map_err(|e| anyhow::anyhow!("--peer: {e}"))?;
                path.push_str(&format!("&peer={peer}"));
            }
            let messages: Vec<InboxView> = client.get(&path).await?;
            // The text comes from a peer: no control character reaches the
            // terminal.
            print_messages(&messages, json, |m| {
                format!(
                    "{}  from {}  #{}  {}",
                    m.message_id,
                    m.node_id,
                    m.seq,
                    printable(&m.text, usize::MAX)
                )
            })?;
        }
        MsgCommand::Outbox { limit } => {
            let messages: Vec<OutboxView> = client
                .get(&format!("/admin/v1/messages/outbox?limit={limit}"))
                .await?;
            print_messages(&messages, json, |m| {
                format!(
                    "{}  to {}  #{}  {}{}  {}",
                    m.message_id,
                    m.node_id,
                    m.seq,
                    state_name(m),
                    m.last_error
                        .as_deref()
                        .map(|e| format!(" ({})", printable(e, 200)))
                        .unwrap_or_default(),
                    printable(&m.text, usize::MAX)
                )
            })?;
        }
    }
    Ok(())
}

/// Prints `messages` as JSON, or a line each (`no messages` if none).
fn print_messages<T: Serialize>(
    messages: &[T],
    json: bool,
    line: impl Fn(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        return print_json(&messages);
    }
    if messages.is_empty() {
        println!("no messages");
    }
    for m in messages {
        println!("{}", line(m));
    }
    Ok(())
}

fn state_name(view: &OutboxView) -> String {
    serde_json::to_value(view.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// `openred module …`.
#[derive(clap::Subcommand)]
pub enum ModuleCommand {
    /// Switch a module on.
    Enable {
        /// The module's name (see `openred status`).
        name: String,
    },
    /// Switch a module off: its routes answer 404 until it is switched on.
    Disable {
        /// The module's name.
        name: String,
    },
}

/// `openred module enable|disable NAME`.
pub async fn module(data: &Path, command: ModuleCommand, json: bool) -> anyhow::Result<()> {
    let (name, action) = match &command {
        ModuleCommand::Enable { name } => (name, "enable"),
        ModuleCommand::Disable { name } => (name, "disable"),
    };
    let view: ModuleView = AdminClient::new(data)?
        .post(
            &format!("/admin/v1/modules/{name}/{action}"),
            &serde_json::json!({}),
        )
        .await?;
    if json {
        return print_json(&view);
    }
    println!(
        "module {} is {}",
        view.name,
        if view.enabled { "on" } else { "off" }
    );
    Ok(())
}

/// `openred admin unlock`.
pub async fn unlock_login(data: &Path, json: bool) -> anyhow::Result<()> {
    let answer: Value = AdminClient::new(data)?
        .post("/admin/v1/login/unlock", &serde_json::json!({}))
        .await?;
    if json {
        return print_json(&answer);
    }
    println!("the login is unlocked");
    Ok(())
}

/// `openred auth challenge NODE_ID | proofs`.
pub async fn auth(
    data: &Path,
    command: crate::owner::AuthCommand,
    json: bool,
) -> anyhow::Result<()> {
    let client = AdminClient::new(data)?;
    let proofs: Vec<ProofView> = match command {
        crate::owner::AuthCommand::Challenge { node_id } => {
            vec![
                client
                    .post(
                        "/admin/v1/auth/challenge",
                        &PeerRequest {
                            node_id: node_id_arg(&node_id)?,
                        },
                    )
                    .await?,
            ]
        }
        crate::owner::AuthCommand::Proofs => client.get("/admin/v1/auth/proofs").await?,
    };
    if json {
        return print_json(&proofs);
    }
    if proofs.is_empty() {
        println!("no proofs held");
    }
    for proof in proofs {
        let took = proof
            .took_ms
            .map(|ms| format!(" in {ms:.2} ms"))
            .unwrap_or_default();
        println!(
            "{} proved its identity{took} (session {}, at {})",
            proof.peer, proof.session_id, proof.proved_at
        );
    }
    Ok(())
}

/// `openred audit show`: the entries with their details opened, through
/// the running node (which holds the keys that open them).
pub async fn audit_show(
    data: &Path,
    since: Option<u64>,
    limit: Option<usize>,
    json: bool,
) -> anyhow::Result<()> {
    let mut path = format!("/admin/v1/audit?since={}", since.unwrap_or(0));
    if let Some(limit) = limit {
        path.push_str(&format!("&limit={limit}"));
    }
    let view: AuditView = AdminClient::new(data)?.get(&path).await?;
    if json {
        return print_json(&view);
    }
    if view.truncated {
        println!("(older entries left out; use --since or --limit)");
    }
    for e in &view.entries {
        let mut line = format!(
            "{:>6}  {}  {} {}",
            e.seq,
            crate::audit::format_time(e.time),
            e.event,
            e.outcome
        );
        if let Some(reason) = &e.reason {
            line.push_str(&format!("  reason={reason}"));
        }
        if let Some(peer) = &e.peer {
            line.push_str(&format!("  peer#{peer}"));
        }
        if let Some(details) = &e.details {
            line.push_str(&format!("  {details}"));
        }
        if let Some(problem) = &e.problem {
            line.push_str(&format!("  ({problem})"));
        }
        println!("{line}");
    }
    if view.unreadable > 0 {
        println!(
            "{} lines could not be read: run `openred audit verify`",
            view.unreadable
        );
    }
    if view.dropped > 0 {
        println!("{} events are waiting to be recorded as lost", view.dropped);
    }
    Ok(())
}
/// `openred file …`.
#[derive(clap::Subcommand)]
pub enum FileCommand {
    /// Share a file with peers: they get an offer through messaging and
    /// can fetch it until it expires.
    Share {
        /// The file (made absolute; the node must be able to read it).
        path: std::path::PathBuf,
        /// A peer allowed to fetch it (repeat for several).
        #[arg(long = "to", required = true)]
        to: Vec<String>,
        /// How long the share lasts: e.g. 90s, 30m, 12h, 7d (default: the
        /// node's setting, 24 h).
        #[arg(long)]
        expires: Option<String>,
        /// Completed downloads allowed, in all.
        #[arg(long)]
        max_downloads: Option<u64>,
    },
    /// The files this node shares, and the offers peers sent it.
    List,
    /// End a share: no new link, and links handed out stop working.
    Revoke {
        /// The share's file ID.
        file_id: String,
    },
    /// Fetch a file a peer shares, with a progress bar (JSON lines with
    /// `--json` or when not on a terminal).
    Fetch {
        /// The owner's node ID.
        node_id: String,
        /// The share's file ID.
        file_id: String,
        /// Where to write it: a new file, or an existing folder (the
        /// owner's name for it is then used, made safe).
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Transfers on this node, both ways, with their progress.
    Transfers,
}

/// Seconds in a duration such as `90`, `90s`, `30m`, `12h`, `7d`, `2w`.
pub fn parse_duration(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .with_context(|| format!("{text:?} is not a duration such as 30m, 12h or 7d"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => bail!("{text:?}: the unit must be s, m, h, d or w"),
    };
    number
        .checked_mul(scale)
        .filter(|s| *s > 0)
        .with_context(|| format!("{text:?} is not a positive duration"))
}

fn absolute(path: &Path) -> anyhow::Result<std::path::PathBuf> {
    std::path::absolute(path).with_context(|| format!("making {} absolute", path.display()))
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `openred file …`.
pub async fn file(data: &Path, command: FileCommand, json: bool) -> anyhow::Result<()> {
    let client = AdminClient::new(data)?;
    match command {
        FileCommand::Share {
            path,
            to,
            expires,
            max_downloads,
        } => {
            let expires_in_s = expires.as_deref().map(parse_duration).transpose()?;
            let created: ShareCreated = client
                .post(
                    "/admin/v1/files/shares",
                    &serde_json::json!({
                        "path": absolute(&path)?,
                        "to": to,
                        "expires_in_s": expires_in_s,
                        "max_downloads": max_downloads,
                    }),
                )
                .await?;
            if json {
                return print_json(&created);
            }
            let s = &created.share;
            println!(
                "{}  {}  {}  blake3 {}",
                s.file_id,
                s.name,
                human_bytes(s.size),
                s.blake3
            );
            for peer in &created.offered {
                println!("  offered to {peer}");
            }
            for peer in &created.not_offered {
                println!("  NOT offered to {peer} (no messaging module): send them the file ID");
            }
        }
        FileCommand::List => {
            let shares: Vec<ShareView> = client.get("/admin/v1/files/shares").await?;
            let offers: Vec<OfferView> = client.get("/admin/v1/files/offers").await?;
            if json {
                return print_json(&serde_json::json!({ "shares": shares, "offers": offers }));
            }
            if shares.is_empty() {
                println!("no shares");
            }
            for s in &shares {
                println!(
                    "{}  {:<9}  {:>10}  downloads {}{}  expires {}  {}",
                    s.file_id,
                    s.state,
                    human_bytes(s.size),
                    s.downloads,
                    s.max_downloads.map(|m| format!("/{m}")).unwrap_or_default(),
                    s.expires_at,
                    s.name
                );
                for peer in &s.peers {
                    println!("    to {peer}");
                }
            }
            if offers.is_empty() {
                println!("no offers received");
            }
            for o in &offers {
                // The name comes from a peer: shown escaped, never used as
                // a path without `--out`.
                println!(
                    "offer from {}: {}  {:>10}  {}  (openred file fetch {} {} --out PATH)",
                    o.node_id,
                    o.file_id,
                    human_bytes(o.size),
                    o.name,
                    o.node_id,
                    o.file_id
                );
            }
        }
        FileCommand::Revoke { file_id } => {
            let share: ShareView = client
                .post(
                    &format!("/admin/v1/files/shares/{}/revoke", path_segment(&file_id)?),
                    &serde_json::json!({}),
                )
                .await?;
            if json {
                return print_json(&share);
            }
            println!("{} {}", share.file_id, share.state);
        }
        FileCommand::Fetch {
            node_id,
            file_id,
            out,
        } => {
            let started: TransferView = client
                .post(
                    "/admin/v1/files/fetch",
                    &serde_json::json!({
                        "node_id": node_id,
                        "file_id": file_id,
                        "out": absolute(&out)?,
                    }),
                )
                .await?;
            follow(&client, started, json).await?;
        }
        FileCommand::Transfers => {
            let transfers: Vec<TransferView> = client.get("/admin/v1/files/transfers").await?;
            if json {
                return print_json(&transfers);
            }
            if transfers.is_empty() {
                println!("no transfers");
            }
            for t in &transfers {
                println!(
                    "{}  {:?}  {:?}  {} / {}  {}/s  {}  {}",
                    t.transfer_id,
                    t.direction,
                    t.state,
                    human_bytes(t.done_bytes),
                    human_bytes(t.size),
                    human_bytes(t.rate_bytes_per_s as u64),
                    t.node_id,
                    t.name
                );
            }
        }
    }
    Ok(())
}

/// A file or transfer ID checked before it goes into a URL path.
fn path_segment(id: &str) -> anyhow::Result<&str> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id)
    } else {
        bail!("{id:?} is not a file ID (32 hex digits)")
    }
}

/// Follows a download until it ends: a progress bar with rate and ETA on a
/// terminal, else (or with `--json`) one JSON event a line.
async fn follow(client: &AdminClient, mut view: TransferView, json: bool) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(view.size);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(printable(&view.name, 40));
        bar
    });
    let path = format!(
        "/admin/v1/files/transfers/{}",
        path_segment(&view.transfer_id)?
    );
    let mut last_line = String::new();
    loop {
        match &bar {
            Some(bar) => bar.set_position(view.done_bytes),
            None => {
                let line = serde_json::to_string(&serde_json::json!({
                    "event": "progress",
                    "transfer_id": view.transfer_id,
                    "state": view.state,
                    "done_bytes": view.done_bytes,
                    "size": view.size,
                    "rate_bytes_per_s": view.rate_bytes_per_s.round(),
                    "eta_s": view.eta_s.map(f64::round),
                    "attempts": view.attempts,
                    "error": view.error,
                }))?;
                if line != last_line {
                    println!("{line}");
                    last_line = line;
                }
            }
        }
        match view.state {
            TransferState::Done => {
                if let Some(bar) = &bar {
                    bar.finish();
                }
                let out = view.out.clone().unwrap_or_default();
                if bar.is_some() {
                    eprintln!("verified (BLAKE3) and written to {out}");
                } else {
                    let done = serde_json::json!({
                        "event": "done",
                        "out": out,
                        "size": view.size,
                        "elapsed_s": view.elapsed_s,
                        "attempts": view.attempts,
                    });
                    println!("{done}");
                }
                return Ok(());
            }
            TransferState::Failed => {
                if let Some(bar) = &bar {
                    bar.abandon();
                }
                bail!(
                    "download failed: {}",
                    printable(view.error.as_deref().unwrap_or("unknown reason"), 300)
                );
            }
            TransferState::Running | TransferState::Retrying => {}
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        view = client.get(&path).await.context(
            "the node stopped answering; the download resumes when it starts again \
             (run the same command to follow it)",
        )?;
    }
}
