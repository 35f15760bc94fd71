//! `openred --data DIR audit verify | show`.
//!
//! `verify` works offline, on the files alone, with the node's public key
//! (`DATA/keys/identity.pub`): no master key, no running node. `show`
//! needs the keys derived from the master key to open sealed details and
//! asks the running node's admin API, so that those keys stay with the
//! node and its agent.

use std::path::Path;

use anyhow::{bail, Context};
use clap::Subcommand;
use openred_core::NodeId;
use openred_node::audit::{self, VerifyError};
use time::format_description::well_known::Rfc3339;

/// `openred audit` subcommands.
#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain, every signature and the signed head, offline
    /// (the node need not run). Exits non-zero and names the first bad
    /// entry when something is wrong.
    Verify {
        /// The node the log must belong to [default: the node whose public
        /// key is in DATA/keys/identity.pub].
        #[arg(long)]
        node_id: Option<String>,
    },
    /// Show the entries, with their sealed details opened (asks the running
    /// node).
    Show {
        /// Entries from this time on: RFC 3339 (2025-01-31T12:00:00Z) or
        /// Unix seconds.
        #[arg(long)]
        since: Option<String>,
        /// The last N entries at most [default: 1000, at most 10,000].
        #[arg(long)]
        limit: Option<usize>,
    },
}

/// Runs an audit subcommand.
pub async fn run(data: &Path, command: AuditCommand, json: bool) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify { node_id } => verify(data, node_id.as_deref(), json),
        AuditCommand::Show { since, limit } => {
            let since = since.as_deref().map(parse_time).transpose()?;
            crate::client::audit_show(data, since, limit, json).await
        }
    }
}

fn verify(data: &Path, node_id: Option<&str>, json: bool) -> anyhow::Result<()> {
    let key =
        openred_node::agent::identity::public_key(data).context("reading the node's public key")?;
    if let Some(expected) = node_id {
        let expected = NodeId::parse(expected).context("--node-id")?;
        if key.node_id() != expected {
            bail!(
                "the public key in {} belongs to {}, not to {expected}",
                data.display(),
                key.node_id()
            );
        }
    }
    match audit::verify_dir(data, key) {
        Ok(report) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": true,
                        "node_id": key.node_id().to_string(),
                        "entries": report.entries,
                        "head_lag": report.head_lag,
                    })
                );
            } else {
                println!(
                    "audit log of {} verified: {} entries, chain, signatures and signed head intact",
                    key.node_id(),
                    report.entries
                );
                if report.head_lag > 0 {
                    println!(
                        "note: the last {} entries come after the signed head (the node stopped \
                         before rewriting it); they are signed, and the node signs a new head \
                         when it starts",
                        report.head_lag
                    );
                }
            }
            Ok(())
        }
        Err(VerifyError::Bad(problem)) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": false,
                        "line": problem.line,
                        "seq": problem.seq,
                        "reason": problem.reason,
                    })
                );
            }
            bail!("the audit log does not verify: {problem}")
        }
        Err(e) => Err(e.into()),
    }
}

/// RFC 3339 or Unix seconds.
pub fn parse_time(text: &str) -> anyhow::Result<u64> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(seconds);
    }
    let time = time::OffsetDateTime::parse(text, &Rfc3339)
        .with_context(|| format!("{text:?} is neither RFC 3339 nor Unix seconds"))?;
    u64::try_from(time.unix_timestamp()).context("a time before 1970")
}

/// Unix seconds as RFC 3339 (UTC).
pub fn format_time(seconds: u64) -> String {
    i64::try_from(seconds)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| seconds.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc_3339_or_unix_seconds() {
        assert_eq!(parse_time("1700000000").unwrap(), 1_700_000_000);
        assert_eq!(parse_time("2023-11-14T22:13:20Z").unwrap(), 1_700_000_000);
        assert_eq!(
            parse_time("2023-11-15T00:13:20+02:00").unwrap(),
            1_700_000_000
        );
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("1969-12-31T23:59:59Z").is_err());
        assert_eq!(format_time(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
