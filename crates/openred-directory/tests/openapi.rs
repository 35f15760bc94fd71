//! The OpenAPI document matches the routes the server has.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::{Backend, Harness, TestNode};

#[tokio::test]
async fn every_documented_operation_is_routed_and_every_route_documented() {
    let h = Harness::new(Backend::Sqlite).await;
    let doc = h.call("GET", "/api/v3/openapi.json", None).await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.json["openapi"], "3.1.0");

    let mut documented = BTreeSet::new();
    for (path, item) in doc.json["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    // The public contract (DESIGN.md section 1) plus what a deployment needs.
    let expected: BTreeSet<(String, String)> = [
        ("POST", "/api/v3/nodes/register"),
        ("POST", "/api/v3/nodes/deregister"),
        ("GET", "/api/v3/nodes/discover"),
        ("GET", "/api/v3/nodes/{node_id}"),
        ("POST", "/api/v3/tokens/request-connection"),
        ("GET", "/api/v3/health"),
        ("GET", "/api/v3/openapi.json"),
        ("GET", "/metrics"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_owned(), p.to_owned()))
    .collect();
    assert_eq!(documented, expected);

    // Each documented operation reaches a handler: neither the router's
    // fallback (404 no_such_route) nor its 405 answers it.
    let some_id = TestNode::new(1).id();
    for (method, path) in &documented {
        let uri = path.replace("{node_id}", &some_id);
        let body = (method == "POST").then(|| serde_json::json!({}));
        let a = h.call(method, &uri, body).await;
        assert_ne!(
            a.code(),
            "no_such_route",
            "{method} {path} is documented but not routed"
        );
        assert_ne!(a.code(), "method_not_allowed", "{method} {path}");
    }

    // And the router has nothing undocumented: other methods on documented
    // paths answer 405, unknown paths 404.
    for (method, path) in &documented {
        let other = if method == "GET" { "POST" } else { "GET" };
        if documented.contains(&(other.to_owned(), path.clone())) {
            continue;
        }
        let uri = path.replace("{node_id}", &some_id);
        let a = h.call(other, &uri, None).await;
        assert_eq!(
            a.code(),
            "method_not_allowed",
            "{other} {path} answers but is undocumented"
        );
    }
    for path in [
        "/api/v3/nodes",
        "/api/v3/tokens/receive",
        "/api/v2/health",
        "/",
    ] {
        assert_eq!(
            h.call("GET", path, None).await.code(),
            "no_such_route",
            "{path}"
        );
    }

    // The schemas of the wire types are in the document.
    let schemas = doc.json["components"]["schemas"].as_object().unwrap();
    for name in [
        "RegisterRequest",
        "NodeEntry",
        "DiscoverResponse",
        "ErrorBody",
        "HealthResponse",
    ] {
        assert!(schemas.contains_key(name), "schema {name} missing");
    }
}
