//! The OpenAPI document matches the routes the server has.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::{Backend, Harness, TestNode};
use openred_core::wire::{b64_decode, b64_encode};
use regex::Regex;
use serde_json::Value;

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

/// The schema named `name` in the document.
fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    &doc["components"]["schemas"][name]
}

/// The regex of a schema's `pattern`.
fn pattern(doc: &Value, name: &str) -> Regex {
    let text = schema(doc, name)["pattern"]
        .as_str()
        .unwrap_or_else(|| panic!("schema {name} has no pattern"));
    Regex::new(text).unwrap()
}

/// What schemathesis found: the document said `string` where the server
/// wants a node ID, base64 of a set length or a signature, so a fuzzer (or a
/// client generated from the document) sent values the server refused. The
/// document now states each form, and each form accepts what the server
/// itself writes and refuses what its decoders refuse.
#[tokio::test]
async fn a_client_built_from_the_document_sends_the_forms_the_server_accepts() {
    let h = Harness::new(Backend::Sqlite).await;
    let doc = h.call("GET", "/api/v3/openapi.json", None).await.json;

    // The request fields refer to the precise forms.
    let fields = |name: &str| schema(&doc, name)["properties"].clone();
    let reference = |form: &str| format!("#/components/schemas/{form}");
    let register = fields("RegisterRequest");
    assert_eq!(register["record"]["$ref"], reference("SignedRecordBytes"));
    let connection = fields("ConnectionRequest");
    for (field, form) in [
        ("from", "NodeId"),
        ("target", "NodeId"),
        ("nonce", "Base64Url16"),
        ("signature", "Signature"),
        ("issued_at", "UnixSeconds"),
    ] {
        assert_eq!(connection[field]["$ref"], reference(form), "{field}");
    }
    let deregister = fields("DeregisterRequest");
    for (field, form) in [
        ("node_id", "NodeId"),
        ("seq", "Seq"),
        ("signature", "Signature"),
    ] {
        assert_eq!(deregister[field]["$ref"], reference(form), "{field}");
    }
    assert_eq!(schema(&doc, "Seq")["maximum"], i64::MAX);
    assert_eq!(schema(&doc, "UnixSeconds")["maximum"], u64::MAX);

    // Node IDs: what the server writes matches; a wrong length or an
    // upper-case form (which the server also reads) is outside the pattern.
    let node_id = pattern(&doc, "NodeId");
    for seed in 1..=20 {
        assert!(node_id.is_match(&TestNode::new(seed).id()));
    }
    assert!(!node_id.is_match(&TestNode::new(1).id()[1..]));
    assert!(!node_id.is_match(&TestNode::new(1).id().to_uppercase()));
    assert!(pattern(&doc, "Fingerprint").is_match(&h.directory.fingerprint().to_string()));

    // Fixed-length base64url: every value of the length matches, and a text
    // whose last character carries bits that the decoder refuses does not.
    for (form, len) in [("Base64Url16", 16), ("Base64Url32", 32), ("Signature", 64)] {
        let re = pattern(&doc, form);
        let encoded_len = b64_encode(&vec![0; len]).len();
        assert_eq!(schema(&doc, form)["minLength"], encoded_len, "{form}");
        assert_eq!(schema(&doc, form)["maxLength"], encoded_len, "{form}");
        for fill in 0..=255u8 {
            let value: Vec<u8> = (0..len).map(|i| fill.wrapping_mul(i as u8 + 1)).collect();
            let text = b64_encode(&value);
            assert!(re.is_match(&text), "{form}: {text}");
        }
        let mut text = b64_encode(&vec![0; len]);
        text.pop();
        text.push('B');
        assert!(b64_decode(&text).is_err());
        assert!(
            !re.is_match(&text),
            "{form}: {text} is refused by the decoder"
        );
        assert!(!re.is_match(&b64_encode(&vec![0; len + 1])), "{form}");
    }

    // Records: real ones match; their length is within the bounds.
    let record = pattern(&doc, "SignedRecordBytes");
    let (min, max) = (
        schema(&doc, "SignedRecordBytes")["minLength"]
            .as_u64()
            .unwrap() as usize,
        schema(&doc, "SignedRecordBytes")["maxLength"]
            .as_u64()
            .unwrap() as usize,
    );
    let now = h.now();
    let long_url = format!("https://{}.example", "a".repeat(200));
    for url in ["https://a.example", long_url.as_str()] {
        let text = b64_encode(TestNode::new(3).record_at(1, now, now + 60, url).as_bytes());
        assert!(record.is_match(&text), "{text}");
        assert!((min..=max).contains(&text.len()), "{}", text.len());
    }
    assert!(!record.is_match("AAAAA"), "a length no encoder produces");

    // Cursors: the one the server hands out matches, another version does not.
    for seed in 1..=3 {
        assert_eq!(
            h.register(&TestNode::new(seed).record(1, now)).await.status,
            200
        );
    }
    let page = h.call("GET", "/api/v3/nodes/discover?limit=1", None).await;
    let cursor = page.json["next_cursor"].as_str().unwrap().to_owned();
    let cursor_re = pattern(&doc, "Cursor");
    assert!(cursor_re.is_match(&cursor), "{cursor}");
    let mut other_version = b64_decode(&cursor).unwrap();
    other_version[0] = 2;
    assert!(!cursor_re.is_match(&b64_encode(&other_version)));

    // The page size's bounds are this directory's.
    let limit = doc["paths"]["/api/v3/nodes/discover"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap()
        .clone();
    assert_eq!(limit["schema"]["minimum"], 1);
    assert_eq!(limit["schema"]["maximum"], h.config.max_page_size);
}

/// The three POST routes answered 415 (and 422 for a body of the wrong
/// shape) without documenting it. Each status the body extractor can
/// answer is now in the document, with the JSON error body, and is what
/// the server answers.
#[tokio::test]
async fn every_status_a_post_can_answer_is_documented_with_the_error_body() {
    let h = Harness::new(Backend::Sqlite).await;
    let doc = h.call("GET", "/api/v3/openapi.json", None).await.json;
    for path in [
        "/api/v3/nodes/register",
        "/api/v3/nodes/deregister",
        "/api/v3/tokens/request-connection",
    ] {
        let responses = &doc["paths"][path]["post"]["responses"];
        for status in ["400", "413", "415", "422", "429", "503"] {
            assert_eq!(
                responses[status]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody",
                "{path} {status}"
            );
        }
        let peer = "198.51.100.8:1".parse().unwrap();
        let plain = h.raw("POST", path, Some("{}"), "text/plain", peer).await;
        assert_eq!(plain.status, 415, "{path}");
        assert_eq!(plain.code(), "unsupported_media_type");
        let shape = h
            .call("POST", path, Some(serde_json::json!({"x": 1})))
            .await;
        assert_eq!(shape.status, 422, "{path}");
        assert_eq!(shape.code(), "bad_json");
        let large = "x".repeat(h.config.max_body_bytes + 1);
        let large = h
            .raw("POST", path, Some(&large), "application/json", peer)
            .await;
        assert_eq!(large.status, 413, "{path}");
        assert!(large.json["error"].is_string(), "{path}: {}", large.text);
    }
}

/// Schemathesis sent `"issued_at": 1108465174.0`, an integer by JSON
/// Schema's rules and so by the document's, and the server refused it
/// with 422 as a mistyped field. Whole numbers written as floats are now
/// read as the integers they are (and the request goes on to its real
/// checks); fractions, negatives and values past 2^64 - 1 are still 422.
#[tokio::test]
async fn a_whole_number_written_as_a_float_is_read_as_the_integer_it_is() {
    let h = Harness::new(Backend::Sqlite).await;
    let node = TestNode::new(1);
    let now = h.now();
    assert_eq!(h.register(&node.record(1, now)).await.status, 200);
    let signature = b64_encode(&[0; 64]);
    for (issued_at, status, code) in [
        (serde_json::json!(now as f64), 400, "bad_signature"),
        (serde_json::json!(now), 400, "bad_signature"),
        (serde_json::json!(now as f64 + 0.5), 422, "bad_json"),
        (serde_json::json!(-1.0), 422, "bad_json"),
        (serde_json::json!(1.8446744073709552e19), 422, "bad_json"),
    ] {
        let body = serde_json::json!({
            "node_id": node.id(), "seq": 2.0, "issued_at": issued_at, "signature": signature,
        });
        let a = h.call("POST", "/api/v3/nodes/deregister", Some(body)).await;
        assert_eq!((a.status.as_u16(), a.code()), (status, code), "{issued_at}");
        let body = serde_json::json!({
            "from": node.id(), "target": TestNode::new(2).id(), "nonce": b64_encode(&[0; 16]),
            "issued_at": issued_at, "signature": signature,
        });
        let a = h
            .call("POST", "/api/v3/tokens/request-connection", Some(body))
            .await;
        assert_eq!((a.status.as_u16(), a.code()), (status, code), "{issued_at}");
    }
}
