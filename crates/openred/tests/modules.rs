//! The module system, through the example module of
//! `examples/echo_module.rs`: its routes, admin routes, suites, middleware,
//! session hook and metrics, the run-time switch, and the registry's
//! checks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../examples/echo_module.rs"]
mod echo_module;
mod in_process;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use echo_module::{Echo, ECHO_PATH};
use in_process::*;
use openred_core::session::Suite;
use openred_node::modules::{self, Module, ModuleError, Modules};
use openred_node::{NodeConfig, NodeState};
use serde_json::json;

fn chacha_only(config: &mut NodeConfig) {
    config.suites = vec![Suite::ChaCha20Poly1305];
}

fn metric(node: &NodeState, module: &str, name: &str) -> f64 {
    module_metric(node, module, name)
}

async fn echo_nodes(net: &Network) -> (TestNode, TestNode) {
    let a = net
        .node_with_modules("a", chacha_only, vec![Arc::new(Echo::default())])
        .await;
    let b = net
        .node_with_modules("b", chacha_only, vec![Arc::new(Echo::default())])
        .await;
    (a, b)
}

async fn switch(net: &Network, node: &TestNode, module: &str, on: bool) -> Answer {
    node.switch_module(&net.http, module, on).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_brings_routes_suites_middleware_hooks_and_metrics() {
    let net = Network::start().await;
    let (a, b) = echo_nodes(&net).await;
    // The module switches AES-256-GCM on, after the configured suite.
    assert_eq!(a.suites(), vec![Suite::ChaCha20Poly1305, Suite::Aes256Gcm]);
    let echoed = a
        .admin_post(
            &net.http,
            "/admin/v1/echo",
            Some(&a.admin_token()),
            &json!({"node_id": b.id().to_string(), "text": "hi"}),
        )
        .await;
    assert_eq!(
        echoed.status,
        200,
        "{}",
        String::from_utf8_lossy(&echoed.body)
    );
    assert_eq!(echoed.json["answer"], "echo: hi");
    assert_eq!(metric(&b, "echo", "echoes_total"), 1.0);
    assert_eq!(metric(&a, "echo", "sessions_total"), 1.0);
    assert_eq!(metric(&b, "echo", "sessions_total"), 1.0);
    // The middleware saw B's P2P requests (token push, handshake, echo)
    // and marked the answers.
    assert!(metric(&b, "echo", "p2p_requests_total") >= 3.0);
    let health = get(&net.http, &b.p2p("/api/v3/health"), None).await;
    assert_eq!(health.status, 200);
    let response = net.http.get(b.p2p("/api/v3/health")).send().await.unwrap();
    assert_eq!(response.headers()["x-openred-echo"], "seen");
    // status lists the built-in modules and the example.
    let status = get(
        &net.http,
        &a.admin("/admin/v1/status"),
        Some(&a.admin_token()),
    )
    .await;
    let names: Vec<&str> = status.json["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["messaging", "files", "monitoring", "auth", "echo"]
    );
    assert_eq!(status.json["modules"][4]["suites"], json!(["aes-256-gcm"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switched_off_module_is_gone_until_switched_on_again() {
    let net = Network::start().await;
    let (a, b) = echo_nodes(&net).await;
    let live = a.session_for(&b.id()).await.unwrap();
    let off = switch(&net, &b, "echo", false).await;
    assert_eq!((off.status, &off.json["enabled"]), (200, &json!(false)));
    // Its P2P route answers 404 with a JSON error, before any frame work.
    assert_peer_refused(
        a.exchange(&live, ECHO_PATH, b"x").await,
        404,
        "module_disabled",
    );
    // Its admin route too.
    assert_refused(
        &b.admin_post(
            &net.http,
            "/admin/v1/echo",
            Some(&b.admin_token()),
            &json!({"node_id": a.id().to_string(), "text": "x"}),
        )
        .await,
        404,
        "module_disabled",
    );
    // Its suite is no longer offered, its middleware counts nothing, its
    // hook hears nothing.
    assert_eq!(b.suites(), vec![Suite::ChaCha20Poly1305]);
    let seen = metric(&b, "echo", "p2p_requests_total");
    let sessions = metric(&b, "echo", "sessions_total");
    let c = net.node("c").await;
    c.connect(b.id()).await.unwrap();
    let response = net.http.get(b.p2p("/api/v3/health")).send().await.unwrap();
    assert!(response.headers().get("x-openred-echo").is_none());
    assert_eq!(metric(&b, "echo", "p2p_requests_total"), seen);
    assert_eq!(metric(&b, "echo", "sessions_total"), sessions);
    // Nothing else is affected.
    b.ping(&c.id()).await.unwrap();

    assert_eq!(switch(&net, &b, "echo", true).await.json["enabled"], true);
    assert_eq!(
        a.exchange(&live, ECHO_PATH, b"back").await.unwrap(),
        b"echo: back"
    );
    assert_refused(&switch(&net, &b, "nope", true).await, 404, "unknown_module");
    let bad_action = b
        .admin_post(
            &net.http,
            "/admin/v1/modules/echo/toggle",
            Some(&b.admin_token()),
            &json!({}),
        )
        .await;
    assert_refused(&bad_action, 404, "unknown_action");
    assert_refused(
        &b.admin_post(
            &net.http,
            "/admin/v1/modules/echo/disable",
            None,
            &json!({}),
        )
        .await,
        401,
        "unauthorized",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configuration_decides_which_modules_start_on() {
    let net = Network::start().await;
    let b = net
        .node_with_modules(
            "b",
            |c| c.modules = Some(BTreeSet::from(["echo".to_owned()])),
            vec![Arc::new(Echo::default())],
        )
        .await;
    assert!(b.modules().is_enabled("echo"));
    assert!(!b.modules().is_enabled("messaging"));
    assert_refused(
        &get(
            &net.http,
            &b.admin("/admin/v1/messages/inbox"),
            Some(&b.admin_token()),
        )
        .await,
        404,
        "module_disabled",
    );
}

struct Named(&'static str);

impl Module for Named {
    fn name(&self) -> &'static str {
        self.0
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[test]
fn the_registry_refuses_bad_names_repeats_and_unknown_settings() {
    let named = |names: &[&'static str]| -> Vec<Arc<dyn Module>> {
        names
            .iter()
            .map(|n| Arc::new(Named(n)) as Arc<dyn Module>)
            .collect()
    };
    assert!(Modules::new(named(&["one", "two-2"]), None).is_ok());
    assert_eq!(
        Modules::new(named(&["one", "one"]), None).err(),
        Some(ModuleError::BadName("one".into()))
    );
    for bad in ["", "Upper", "sp ace", "slash/"] {
        let leaked: &'static str = Box::leak(bad.to_owned().into_boxed_str());
        assert!(matches!(
            Modules::new(named(&[leaked]), None),
            Err(ModuleError::BadName(_))
        ));
    }
    let on = BTreeSet::from(["three".to_owned()]);
    assert_eq!(
        Modules::new(named(&["one"]), Some(&on)).err(),
        Some(ModuleError::Unknown("three".into()))
    );
    let registry = Modules::new(
        named(&["one", "two"]),
        Some(&BTreeSet::from(["two".to_owned()])),
    )
    .unwrap();
    assert!(!registry.is_enabled("one") && registry.is_enabled("two"));
    assert!(registry.get::<Named>().is_some());
    assert!(registry.get::<Echo>().is_none());

    let unknown = BTreeMap::from([("nope".to_owned(), json!({}))]);
    assert!(matches!(
        modules::builtin(&unknown),
        Err(ModuleError::Unknown(_))
    ));
    let typo = BTreeMap::from([("messaging".to_owned(), json!({"max_body": 1}))]);
    assert!(matches!(
        modules::builtin(&typo),
        Err(ModuleError::Settings("messaging", _))
    ));
    let zero = BTreeMap::from([("messaging".to_owned(), json!({"in_flight_per_peer": 0}))]);
    assert!(matches!(
        modules::builtin(&zero),
        Err(ModuleError::Settings("messaging", _))
    ));
}
