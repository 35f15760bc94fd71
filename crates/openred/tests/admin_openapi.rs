//! The admin API's OpenAPI document matches the admin router: every
//! documented operation is routed, every route is documented, and the
//! document states the forms and statuses the routes answer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use std::collections::BTreeSet;

use in_process::*;
use serde_json::Value;

/// Sends `method path` to the node's admin API with the bearer token.
async fn call(net: &Network, node: &TestNode, method: &str, path: &str) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = net
        .http
        .request(method.clone(), node.admin(path))
        .header("authorization", format!("Bearer {}", node.admin_token()));
    if method == reqwest::Method::POST {
        request = request
            .header("content-type", "application/json")
            .body("{}");
    }
    Answer::from_reqwest(request.send().await.unwrap()).await
}

/// An admin API with no document cannot be tried by a tool such as
/// Schemathesis, and a document written beside the routes drifts from them:
/// a route it lacks goes untested, one it invents misleads every client.
/// This probes the live router with each documented operation and with
/// other methods on each documented path.
#[tokio::test]
async fn admin_openapi_document_matches_the_router() {
    let net = Network::start().await;
    let node = net.node("alice").await;

    // Served without a credential, as the document says.
    let doc = get(&net.http, &node.admin("/admin/v1/openapi.json"), None).await;
    assert_eq!(doc.status, 200);
    let doc = doc.json;
    assert_eq!(doc["openapi"], "3.1.0");

    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let expected: BTreeSet<(String, String)> = [
        ("POST", "/admin/v1/login"),
        ("POST", "/admin/v1/logout"),
        ("POST", "/admin/v1/login/unlock"),
        ("GET", "/admin/v1/openapi.json"),
        ("GET", "/admin/v1/status"),
        ("GET", "/admin/v1/peers"),
        ("POST", "/admin/v1/connect"),
        ("POST", "/admin/v1/ping"),
        ("POST", "/admin/v1/renew"),
        ("GET", "/admin/v1/modules"),
        ("POST", "/admin/v1/modules/{name}/{action}"),
        ("GET", "/admin/v1/audit"),
        ("POST", "/admin/v1/auth/challenge"),
        ("GET", "/admin/v1/auth/proofs"),
        ("POST", "/admin/v1/messages"),
        ("GET", "/admin/v1/messages/inbox"),
        ("GET", "/admin/v1/messages/outbox"),
        ("GET", "/admin/v1/messages/outbox/{message_id}"),
        ("GET", "/admin/v1/messages/stream"),
        ("GET", "/admin/v1/files/shares"),
        ("POST", "/admin/v1/files/shares"),
        ("POST", "/admin/v1/files/shares/{file_id}/revoke"),
        ("GET", "/admin/v1/files/offers"),
        ("POST", "/admin/v1/files/fetch"),
        ("GET", "/admin/v1/files/transfers"),
        ("GET", "/admin/v1/files/transfers/{transfer_id}"),
        ("GET", "/metrics"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_owned(), p.to_owned()))
    .collect();
    assert_eq!(documented, expected);

    let fill = |path: &str| {
        path.replace("{name}", "nosuchmodule")
            .replace("{action}", "enable")
            .replace("{message_id}", &"0".repeat(32))
            .replace("{file_id}", &"0".repeat(32))
            .replace("{transfer_id}", &"0".repeat(32))
    };
    for (method, path) in &documented {
        // The event stream never ends: its headers are enough.
        if path.ends_with("/stream") {
            let response = net
                .http
                .get(node.admin(path))
                .header("authorization", format!("Bearer {}", node.admin_token()))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{path}");
            continue;
        }
        let answer = call(&net, &node, method, &fill(path)).await;
        assert_ne!(
            answer.code(),
            Some("no_such_route"),
            "{method} {path} is documented but not routed"
        );
        assert_ne!(answer.code(), Some("method_not_allowed"), "{method} {path}");
        // Every answer is a documented status.
        let op = &doc["paths"][path][method.to_lowercase()];
        assert!(
            op["responses"][answer.status.to_string()].is_object(),
            "{method} {path} answered {} ({:?}), which is not documented",
            answer.status,
            answer.code()
        );
    }
    for (method, path) in &documented {
        let other = if method == "GET" { "POST" } else { "GET" };
        if documented.contains(&(other.to_owned(), path.clone())) {
            continue;
        }
        let answer = call(&net, &node, other, &fill(path)).await;
        assert_eq!(
            answer.code(),
            Some("method_not_allowed"),
            "{other} {path} answers but is undocumented"
        );
    }
    for path in ["/admin/v1", "/admin/v1/nothing", "/admin/v2/status", "/"] {
        assert_eq!(
            call(&net, &node, "GET", path).await.code(),
            Some("no_such_route"),
            "{path}"
        );
    }

    // Authenticated operations say so; the three reached without a
    // credential do not, and the others answer 401 without one.
    for (method, path) in &documented {
        let op = &doc["paths"][path][method.to_lowercase()];
        let open = [
            "/admin/v1/login",
            "/admin/v1/logout",
            "/admin/v1/openapi.json",
        ]
        .contains(&path.as_str());
        assert_eq!(op["security"].is_array(), !open, "{method} {path}");
        if !open && !path.ends_with("/stream") {
            let answer = Answer::from_reqwest(
                net.http
                    .request(
                        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                        node.admin(&fill(path)),
                    )
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(answer.status, 401, "{method} {path}");
        }
    }

    // Bodies name peers in the node-ID form, and every body route documents
    // the statuses of the JSON extractor.
    let schema = |name: &str| doc["components"]["schemas"][name].clone();
    assert_eq!(schema("NodeId")["pattern"], "^[a-z2-7]{58}$");
    for body in ["PeerRequest", "SendRequest", "FetchRequest"] {
        assert_eq!(
            schema(body)["properties"]["node_id"]["$ref"],
            "#/components/schemas/NodeId",
            "{body}"
        );
    }
    for (method, path) in &documented {
        let op: &Value = &doc["paths"][path][method.to_lowercase()];
        if op["requestBody"].is_object() {
            for status in ["400", "413", "415", "422"] {
                assert!(
                    op["responses"][status].is_object(),
                    "{method} {path} {status}"
                );
            }
        }
    }

    // A whole number written as a float is the integer it is (JSON
    // Schema's rule, which the document follows): the share is refused for
    // its path, not as a mistyped field.
    let share = node
        .admin_post(
            &net.http,
            "/admin/v1/files/shares",
            Some(&node.admin_token()),
            &serde_json::json!({"path": "relative", "to": [], "max_downloads": 2.0}),
        )
        .await;
    assert_ne!(share.status, 422, "{:?}", share.json);
    assert_eq!(share.status, 400, "{:?}", share.json);
}
