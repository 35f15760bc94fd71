//! `openred --data DIR admin set-password | totp-enroll | unlock` and
//! `openred --data DIR auth challenge | proofs`.
//!
//! The credentials are written into the data directory directly, so they
//! can be set before the node first runs; the running node reads them at
//! each login (see `openred_node::owner::login`).

use std::io::{BufRead, IsTerminal};
use std::path::Path;

use anyhow::{bail, Context};
use clap::Subcommand;
use qrcode::render::unicode::Dense1x2;
use qrcode::QrCode;

/// `openred admin` subcommands.
#[derive(Subcommand)]
pub enum AdminCommand {
    /// Set the password of the owner's login to the admin API (stored as an
    /// Argon2id hash). Asked twice on a terminal; read as one line from
    /// standard input otherwise.
    SetPassword,
    /// Make a new TOTP secret for the owner's login and print it as an
    /// otpauth URI and a QR code for an authenticator app. It replaces the
    /// previous secret at once.
    TotpEnroll,
    /// Lift a login lock-out after repeated failures (through the running
    /// node, with the bearer token).
    Unlock,
}

/// `openred auth` subcommands.
#[derive(Subcommand)]
pub enum AuthCommand {
    /// Ask a peer to prove its identity now, inside the session.
    Challenge {
        /// The peer's node ID.
        node_id: String,
    },
    /// The peers' proofs this node holds.
    Proofs,
}

/// Runs an `admin` subcommand.
pub async fn admin(data: &Path, command: AdminCommand, json: bool) -> anyhow::Result<()> {
    match command {
        AdminCommand::SetPassword => {
            let password = read_password()?;
            openred_node::owner::login::set_password(data, &password)?;
            if json {
                println!("{}", serde_json::json!({ "password_set": true }));
            } else {
                println!("password set: log in at POST /admin/v1/login with it and a TOTP code");
            }
            Ok(())
        }
        AdminCommand::TotpEnroll => {
            let account = openred_node::agent::identity::public_key(data)
                .context("reading the node's public key (run `openred node init` first)")?
                .node_id()
                .to_string();
            let enrollment = openred_node::owner::login::enroll_totp(data, &account)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&enrollment)?);
                return Ok(());
            }
            let qr = QrCode::new(enrollment.uri.as_bytes()).context("drawing the QR code")?;
            let drawing = qr
                .render::<Dense1x2>()
                .dark_color(Dense1x2::Light)
                .light_color(Dense1x2::Dark)
                .quiet_zone(true)
                .build();
            println!("{drawing}");
            println!("Scan this with an authenticator app, or enter the secret by hand.");
            println!("otpauth URI: {}", enrollment.uri);
            println!("secret:      {}", enrollment.secret);
            println!("It replaces any earlier secret now.");
            Ok(())
        }
        AdminCommand::Unlock => crate::client::unlock_login(data, json).await,
    }
}

/// The password: twice without echo on a terminal, one line otherwise.
fn read_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("new password: ")?;
        let second = rpassword::prompt_password("again: ")?;
        if first != second {
            bail!("the two passwords differ");
        }
        return Ok(first);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}
