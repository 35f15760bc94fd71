//! The owner's login to the admin API: password + TOTP code, an expiring
//! HttpOnly/SameSite=Strict session cookie, logout, back-off and lock-out
//! (kept across a restart), single-use codes, the audit trail, and the
//! bearer token still working beside it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use std::collections::BTreeMap;

use in_process::*;
use openred_node::owner::login::{
    self as owner, BACKOFF_AFTER, LOCKOUT_AFTER, LOCKOUT_S, SESSION_TTL_S,
};
use serde_json::json;

const PASSWORD: &str = "correct horse battery staple";

struct Owner {
    secret: String,
}

impl Owner {
    fn set_up(node: &TestNode) -> Owner {
        owner::set_password(&node.data_dir, PASSWORD).unwrap();
        let enrollment = owner::enroll_totp(&node.data_dir, &node.id().to_string()).unwrap();
        Owner {
            secret: enrollment.secret,
        }
    }

    fn code(&self, net: &Network) -> String {
        owner::totp_code(&self.secret, net.now().0).unwrap()
    }
}

struct Login {
    status: u16,
    json: serde_json::Value,
    set_cookie: Option<String>,
    retry_after: Option<String>,
}

async fn login(net: &Network, node: &TestNode, password: &str, code: &str) -> Login {
    let response = net
        .http
        .post(node.admin("/admin/v1/login"))
        .json(&json!({ "password": password, "totp": code }))
        .send()
        .await
        .unwrap();
    let header = |name| {
        response
            .headers()
            .get(name)
            .map(|v: &reqwest::header::HeaderValue| v.to_str().unwrap().to_owned())
    };
    let set_cookie = header("set-cookie");
    let retry_after = header("retry-after");
    let status = response.status().as_u16();
    let json = response.json().await.unwrap_or_default();
    Login {
        status,
        json,
        set_cookie,
        retry_after,
    }
}

/// The `name=value` part of a `Set-Cookie`.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

async fn status_with_cookie(net: &Network, node: &TestNode, cookie: &str) -> u16 {
    net.http
        .get(node.admin("/admin/v1/status"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The `admin_login` entries of the audit log: (outcome, reason). Checked
/// logins only: refusals before any check are counted (`counted`).
async fn logins(node: &TestNode) -> Vec<(String, Option<String>)> {
    node.audit_entries()
        .await
        .into_iter()
        .filter(|e| e.event == "admin_login")
        .map(|e| (e.outcome, e.reason))
        .collect()
}

/// The admin failures the log counted (`unauthenticated_failures`
/// entries, summed): reason → count.
async fn counted(node: &TestNode) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for entry in node.audit_entries().await {
        if entry.event != "unauthenticated_failures" {
            continue;
        }
        let details = entry.details.unwrap();
        for (key, n) in details["counts"].as_object().unwrap() {
            if let Some(reason) = key.strip_prefix("admin_login:") {
                *counts.entry(reason.to_owned()).or_default() += n.as_u64().unwrap();
            }
        }
    }
    counts
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

/// `POST /admin/v1/login/unlock` with the bearer token.
async fn unlock(net: &Network, node: &TestNode) -> Answer {
    node.admin_post(
        &net.http,
        "/admin/v1/login/unlock",
        Some(&node.admin_token()),
        &json!({}),
    )
    .await
}

fn failed(reason: &str) -> (String, Option<String>) {
    ("failed".to_owned(), Some(reason.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_gives_an_expiring_strict_cookie_and_logout_ends_it() {
    let net = Network::start().await;
    let node = net.node("a").await;

    // Nothing set up yet.
    let refused = login(&net, &node, PASSWORD, "123456").await;
    assert_eq!(refused.status, 409, "{}", refused.json);
    assert_eq!(refused.json["error"], "login_not_set_up");

    let owner = Owner::set_up(&node);
    let ok = login(&net, &node, PASSWORD, &owner.code(&net)).await;
    assert_eq!(ok.status, 200, "{}", ok.json);
    assert_eq!(ok.json["expires_at"], net.now().0 + SESSION_TTL_S);
    let set_cookie = ok.set_cookie.unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=3600"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let cookie = cookie_pair(&set_cookie);
    // Named after the node: browsers share cookies across a host's ports.
    let name = owner::cookie_name(&node.id());
    assert!(name.starts_with("openred_admin_") && name.len() > "openred_admin_".len());
    assert!(cookie.starts_with(&format!("{name}=")) && cookie.len() == name.len() + 1 + 64);

    // The cookie opens the admin API; without it, or with another value,
    // it stays shut; the bearer token still works.
    assert_eq!(status_with_cookie(&net, &node, &cookie).await, 200);
    assert_eq!(
        status_with_cookie(&net, &node, &format!("{name}={}", "0".repeat(64))).await,
        401
    );
    // Another node's cookie name does not count, whatever its value.
    assert_eq!(
        status_with_cookie(&net, &node, &cookie.replacen(&name, "openred_admin", 1)).await,
        401
    );

    // A request that changes something needs the request header beside
    // the cookie (a cross-site form cannot add one).
    let switch = |with_header: bool| {
        let mut request = net
            .http
            .post(node.admin("/admin/v1/modules/messaging/disable"))
            .header("cookie", &cookie)
            .header("content-type", "application/json")
            .body("{}");
        if with_header {
            request = request.header(owner::REQUEST_HEADER, "1");
        }
        request.send()
    };
    let forged = Answer::from_reqwest(switch(false).await.unwrap()).await;
    assert_refused(&forged, 403, "missing_request_header");
    assert!(node.modules().is_enabled("messaging"));
    let asked = Answer::from_reqwest(switch(true).await.unwrap()).await;
    assert_eq!(asked.status, 200, "{}", asked.json);
    assert!(!node.modules().is_enabled("messaging"));
    let unauthenticated = get(&net.http, &node.admin("/admin/v1/status"), None).await;
    assert_refused(&unauthenticated, 401, "unauthorized");
    let bearer = get(
        &net.http,
        &node.admin("/admin/v1/status"),
        Some(&node.admin_token()),
    )
    .await;
    assert_eq!(bearer.status, 200);

    // Logout ends the session at once and clears the cookie.
    let response = net
        .http
        .post(node.admin("/admin/v1/logout"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let cleared = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cleared.starts_with(&format!("{name}=;")) && cleared.contains("Max-Age=0"));
    assert_eq!(status_with_cookie(&net, &node, &cookie).await, 401);

    // A session expires after its lifetime.
    net.clock.advance(30);
    let again = login(&net, &node, PASSWORD, &owner.code(&net)).await;
    assert_eq!(again.status, 200, "{}", again.json);
    let cookie = cookie_pair(&again.set_cookie.unwrap());
    assert_eq!(status_with_cookie(&net, &node, &cookie).await, 200);
    net.clock.advance(SESSION_TTL_S - 1);
    assert_eq!(status_with_cookie(&net, &node, &cookie).await, 200);
    net.clock.advance(1);
    assert_eq!(status_with_cookie(&net, &node, &cookie).await, 401);

    // A new password ends the sessions opened with the old one.
    net.clock.advance(30);
    let again = login(&net, &node, PASSWORD, &owner.code(&net)).await;
    assert_eq!(again.status, 200, "{}", again.json);
    let cookie = cookie_pair(&again.set_cookie.unwrap());
    assert_eq!(status_with_cookie(&net, &node, &cookie).await, 200);
    owner::set_password(&node.data_dir, "another long password").unwrap();
    assert_eq!(status_with_cookie(&net, &node, &cookie).await, 401);

    assert_eq!(logins(&node).await, vec![("ok".to_owned(), None); 3]);
    // The refusals of requests that proved nothing are counted, not
    // logged one by one: the other node's cookie name and no credential
    // at all are `no_token`.
    assert_eq!(
        counted(&node).await,
        counts(&[("not_set_up", 1), ("bad_session", 4), ("no_token", 2)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_answers_only_requests_addressed_to_an_address_or_localhost() {
    let net = Network::start().await;
    let node = net.node("a").await;
    let with_host = |host: &'static str| {
        net.http
            .get(node.admin("/admin/v1/status"))
            .bearer_auth(node.admin_token())
            .header("host", host)
            .send()
    };
    // A page whose name was rebound to 127.0.0.1 sends its own name.
    let rebound = Answer::from_reqwest(with_host("evil.example").await.unwrap()).await;
    assert_refused(&rebound, 421, "bad_host");
    let login = net
        .http
        .post(node.admin("/admin/v1/login"))
        .header("host", "evil.example:80")
        .json(&json!({ "password": PASSWORD, "totp": "123456" }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status().as_u16(), 421);
    let local = Answer::from_reqwest(with_host("localhost").await.unwrap()).await;
    assert_eq!(local.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_cannot_be_used_twice_nor_a_wrong_factor_pass() {
    let net = Network::start().await;
    let node = net.node("a").await;
    let owner = Owner::set_up(&node);
    let code = owner.code(&net);
    assert_eq!(login(&net, &node, PASSWORD, &code).await.status, 200);
    // The same code again, within its step: refused.
    let replay = login(&net, &node, PASSWORD, &code).await;
    assert_eq!(replay.status, 401);
    assert_eq!(replay.json["error"], "login_failed");
    assert!(replay.set_cookie.is_none());
    // The previous step's code (still inside the drift window) is older
    // than the one used: refused too.
    let previous = owner::totp_code(&owner.secret, net.now().0 - 30).unwrap();
    assert_eq!(login(&net, &node, PASSWORD, &previous).await.status, 401);
    // Wrong password with a fresh code; right password with a wrong code;
    // a code from a minute ago. The answers do not say which factor failed.
    net.clock.advance(60);
    let wrong_password = login(&net, &node, "not the password!", &owner.code(&net)).await;
    assert_eq!(wrong_password.status, 401);
    net.clock.advance(30);
    let wrong_code = login(&net, &node, PASSWORD, "000000").await;
    assert_eq!(wrong_code.status, 401);
    assert_eq!(wrong_password.json, wrong_code.json);
    // A fresh code after the failures (the back-off has passed): accepted,
    // and the counter starts again.
    net.clock.advance(30);
    let code = owner.code(&net);
    assert_eq!(login(&net, &node, PASSWORD, &code).await.status, 200);
    // A restart does not make a used code good again.
    let node = net.restart(node).await;
    assert_eq!(login(&net, &node, PASSWORD, &code).await.status, 401);
    assert_eq!(
        logins(&node).await,
        vec![
            ("ok".to_owned(), None),
            failed("code_reused"),
            failed("code_reused"),
            failed("bad_password"),
            failed("bad_code"),
            ("ok".to_owned(), None),
            failed("code_reused"),
        ]
    );

    // The clock set back past the last login: every code would look
    // reused. Refused without counting as a failure; `unlock` clears it.
    let ahead = net.now();
    net.clock.set(openred_core::UnixTime(ahead.0 - 600));
    let behind = login(&net, &node, PASSWORD, &owner.code(&net)).await;
    assert_eq!(behind.status, 409, "{}", behind.json);
    assert_eq!(behind.json["error"], "clock_behind");
    assert_eq!(unlock(&net, &node).await.status, 200);
    assert_eq!(
        login(&net, &node, PASSWORD, &owner.code(&net)).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_whose_client_hangs_up_is_still_checked_and_counted() {
    use tokio::io::AsyncWriteExt;
    let net = Network::start().await;
    let node = net.node("a").await;
    Owner::set_up(&node);
    let address = std::fs::read_to_string(openred_node::owner::admin::address_path(&node.data_dir))
        .unwrap()
        .trim()
        .to_owned();
    let body = json!({ "password": "wrong password!!", "totp": "123456" }).to_string();
    for attempt in 1..=BACKOFF_AFTER as usize {
        // The whole request, then the connection closed before the answer.
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        let request = format!(
            "POST /admin/v1/login HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        // Long enough for the request to be read and handed to the
        // handler, far shorter than the password check.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        drop(stream);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while logins(&node).await.len() < attempt {
            assert!(
                std::time::Instant::now() < deadline,
                "hung-up attempt {attempt} was never checked"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    assert_eq!(
        logins(&node).await,
        vec![failed("bad_password"); BACKOFF_AFTER as usize]
    );
    // They count: the next attempt must wait.
    let next = login(&net, &node, "wrong password!!", "123456").await;
    assert_eq!(next.status, 429, "{}", next.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_back_off_then_lock_out_even_across_a_restart() {
    let net = Network::start().await;
    let node = net.node("a").await;
    let owner = Owner::set_up(&node);

    // Parallel guesses are checked one at a time: the back-off starts
    // after BACKOFF_AFTER of them, whatever the race.
    let guesses = (0..BACKOFF_AFTER + 2).map(|_| login(&net, &node, "wrong password!", "123456"));
    let answers = futures_util::future::join_all(guesses).await;
    let checked = answers.iter().filter(|a| a.status == 401).count();
    let held = answers.iter().filter(|a| a.status == 429).count();
    assert_eq!((checked, held), (BACKOFF_AFTER as usize, 2));
    let backoff = answers.iter().find(|a| a.status == 429).unwrap();
    assert_eq!(backoff.json["error"], "login_backoff");
    assert_eq!(backoff.retry_after.as_deref(), Some("1"));
    // During the back-off even the right credentials are not checked.
    let held = login(&net, &node, PASSWORD, &owner.code(&net)).await;
    assert_eq!(held.status, 429);

    // Fail on, waiting out each back-off, up to the lock-out.
    for _ in BACKOFF_AFTER..LOCKOUT_AFTER {
        net.clock.advance(61);
        let answer = login(&net, &node, "wrong password!", "123456").await;
        assert_eq!(answer.status, 401, "{}", answer.json);
    }
    net.clock.advance(61);
    let locked = login(&net, &node, PASSWORD, &owner.code(&net)).await;
    assert_eq!(locked.status, 429);
    assert_eq!(locked.json["error"], "login_locked");
    let retry: u64 = locked.retry_after.unwrap().parse().unwrap();
    assert_eq!(retry, LOCKOUT_S - 61);

    // A restart does not lift it.
    let node = net.restart(node).await;
    let locked = login(&net, &node, PASSWORD, &owner.code(&net)).await;
    assert_eq!(locked.status, 429, "{}", locked.json);
    assert_eq!(locked.json["error"], "login_locked");

    // The owner, with the bearer token, lifts it.
    assert_eq!(unlock(&net, &node).await.status, 200);
    let ok = login(&net, &node, PASSWORD, &owner.code(&net)).await;
    assert_eq!(ok.status, 200, "{}", ok.json);
    let unlock_unauthenticated = node
        .admin_post(&net.http, "/admin/v1/login/unlock", None, &json!({}))
        .await;
    assert_refused(&unlock_unauthenticated, 401, "unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_session_cannot_lift_the_back_off_that_protects_the_password() {
    let net = Network::start().await;
    let node = net.node("a").await;
    let owner = Owner::set_up(&node);
    let ok = login(&net, &node, PASSWORD, &owner.code(&net)).await;
    assert_eq!(ok.status, 200, "{}", ok.json);
    let cookie = cookie_pair(&ok.set_cookie.unwrap());
    for _ in 0..BACKOFF_AFTER {
        let answer = login(&net, &node, "wrong password!", "123456").await;
        assert_eq!(answer.status, 401, "{}", answer.json);
    }
    let unlock_with_cookie = |cookie: String| {
        net.http
            .post(node.admin("/admin/v1/login/unlock"))
            .header("cookie", cookie)
            .header(owner::REQUEST_HEADER, "1")
            .json(&json!({}))
            .send()
    };
    let refused = Answer::from_reqwest(unlock_with_cookie(cookie.clone()).await.unwrap()).await;
    assert_refused(&refused, 403, "bearer_token_required");
    // The back-off still holds: the next guess must wait.
    let held = login(&net, &node, "another guess!!", "123456").await;
    assert_eq!(held.status, 429, "{}", held.json);
    // The cookie still works for day-to-day requests, and the bearer
    // token lifts the back-off.
    assert_eq!(status_with_cookie(&net, &node, &cookie).await, 200);
    assert_eq!(unlock(&net, &node).await.status, 200);
    net.clock.advance(30);
    let ok = login(&net, &node, PASSWORD, &owner.code(&net)).await;
    assert_eq!(ok.status, 200, "{}", ok.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_login_bodies_get_a_4xx_json_error() {
    let net = Network::start().await;
    let node = net.node("a").await;
    Owner::set_up(&node);
    let not_json = net
        .http
        .post(node.admin("/admin/v1/login"))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    let answer = Answer::from_reqwest(not_json).await;
    assert!(
        answer.status == 400 || answer.status == 422,
        "{}",
        answer.status
    );
    assert!(answer.code().is_some());
    let huge = "x".repeat(owner::MAX_PASSWORD_BYTES + 1);
    let answer = login(&net, &node, &huge, "123456").await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json["error"], "bad_login");
    // Credentials that do not parse are the owner's to fix: 409, not a
    // counted failure.
    std::fs::write(node.data_dir.join("owner/totp"), "not base32 !").unwrap();
    for _ in 0..BACKOFF_AFTER + 1 {
        let answer = login(&net, &node, PASSWORD, "123456").await;
        assert_eq!(answer.status, 409, "{}", answer.json);
        assert_eq!(answer.json["error"], "login_not_set_up");
    }
    assert_eq!(logins(&node).await, vec![]);
    assert_eq!(
        counted(&node).await,
        counts(&[
            ("bad_request", 1),
            ("credentials_unreadable", BACKOFF_AFTER as u64 + 1)
        ])
    );
}
