//! Writes the committed seed corpus: valid encodings of what each fuzz
//! target decodes, so that the fuzzer starts from inputs that pass the
//! first checks and mutates from there. Deterministic; run from `fuzz/`:
//!
//! ```text
//! cargo run --manifest-path seeds/Cargo.toml
//! ```
//!
//! It shares the targets' fixtures (`fuzz/src/lib.rs`) by path, so the
//! seeds and the targets agree on keys and nodes.
//!
//! It replaces `corpus/<target>/seed-*` and leaves any other file alone.

use std::fs;
use std::path::Path;

use openred_core::session::{EpochConfig, Suite};
use openred_core::UnixTime;
#[path = "../../src/lib.rs"]
#[allow(dead_code)] // the targets read fields the seeds do not
mod fixtures;

use fixtures::{node, session_pair, token_pair};

/// (type tag, body) for the `wire_json` target: one body per route type,
/// in the target's tag order.
const WIRE_BODIES: &[(u8, &str)] = &[
    (
        0,
        r#"{"error":"bad_request","message":"the record is truncated"}"#,
    ),
    (1, r#""active""#),
    (2, r#"{"record":"AQID"}"#),
    (
        3,
        r#"{"node_id":"ab12","status":"inactive","seq":3,"last_seen":1000,"next_heartbeat_s":60}"#,
    ),
    (
        4,
        r#"{"node_id":"ab12","api_url":"https://a.example.com","last_seen":5,"status":"active","record":"AQID"}"#,
    ),
    (
        5,
        r#"{"nodes":[{"node_id":"ab12","api_url":"https://a.example.com","last_seen":5,"status":"active","record":"AQID"}],"next_cursor":"ab12"}"#,
    ),
    (
        6,
        r#"{"node_id":"ab12","seq":7,"issued_at":1000,"signature":"AQID"}"#,
    ),
    (7, r#"{"node_id":"ab12","deregistered":true}"#),
    (8, r#"{"active":2,"inactive":1}"#),
    (
        9,
        r#"{"status":"ok","version":"0.1.0","directory_key":"ab12","directory_public_key":"AQID","nodes":{"active":2,"inactive":1}}"#,
    ),
    (
        10,
        r#"{"from":"ab12","target":"cd34","nonce":"AQID","issued_at":1000,"signature":"AQID"}"#,
    ),
    (
        11,
        r#"{"connection_id":"AQID","expires_at":2000,"token":"AQID"}"#,
    ),
    (12, r#"{"from":"ab12","token":"AQID"}"#),
    (13, r#"{"accepted":true,"connection_id":"AQID"}"#),
    (14, r#"{"node_id":"ab12","challenge":"AQID"}"#),
    (15, r#"{"node_id":"ab12","signature":"AQID"}"#),
    (
        16,
        r#"{"connection_id":"AQID","suites":[1,2],"message":"AQID"}"#,
    ),
    (
        17,
        r#"{"session_established":true,"session_id":"00ff","message":"AQID"}"#,
    ),
    (18, r#"{"file_id":"AQID"}"#),
    (
        19,
        r#"{"file_url":"/p2p/files/x","link_secret":"AQID","expires_at":9,"file_id":"AQID","name":"a.txt","size":5,"blake3":"00ff","chunk_size":65536,"suite":"chacha20-poly1305"}"#,
    ),
    (
        20,
        r#"{"file_url":"/p2p/files/x","from_chunk":0,"client_nonce":"AQID"}"#,
    ),
    (
        21,
        r#"{"file_id":"AQID","name":"a.txt","size":5,"blake3":"00ff","expires_at":9,"max_downloads":3}"#,
    ),
    (
        22,
        r#"{"message_id":"m1","seq":1,"sent_at":1000,"content_type":"text/plain","body":"aGk"}"#,
    ),
    (
        23,
        r#"{"messages":[{"message_id":"m1","seq":1,"sent_at":1000,"content_type":"text/plain","body":"aGk"}]}"#,
    ),
    (
        24,
        r#"{"results":[{"message_id":"m1","received":false,"error":"too_large","message":"no"}]}"#,
    ),
    (25, r#"{"message_id":"m1","received":true}"#),
    (26, r#"{"received":true,"message_id":"m1"}"#),
    (27, "AQIDBAUGBwgJCgsMDQ4PEA"),
];

/// The agent protocol's version byte (`openred_node::agent::proto`).
const AGENT_PROTO_VERSION: u8 = 1;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    if let Err(e) =
        fs::create_dir_all(&dir).and_then(|()| fs::write(dir.join(format!("seed-{name}")), bytes))
    {
        panic!("writing the seed {target}/{name}: {e}");
    }
}

fn main() {
    for n in [1, 2] {
        write(
            "signed_record",
            &format!("node{n}"),
            node(n).record.as_bytes(),
        );
    }

    let pair = token_pair();
    write("token_envelope", "initiator", pair.for_initiator.as_bytes());
    write("token_envelope", "target", pair.for_target.as_bytes());

    // session_frame reads its input both as one frame and as a script:
    // a real frame, and scripts that seal and deliver in turn.
    let (a, _) = session_pair(
        Suite::ChaCha20Poly1305,
        UnixTime(1_000_000),
        EpochConfig::default(),
        0,
    );
    let frame = a
        .seal(b"\x0b/p2p/messagehello", UnixTime(1_000_000))
        .expect("seals");
    write("session_frame", "frame", &frame);
    write(
        "session_frame",
        "seal-deliver",
        &[0, 10, 10, 10, 0, 0, 4, 1, 2, 3, 4, 1, 0, 1, 0, 2, 1, 3, 5],
    );
    write("session_frame", "mixed", &(0u8..=255).collect::<Vec<_>>());

    // file_chunk: a small transfer (size 5, chunk 16 KiB) and a large one.
    let mut small = vec![0u8];
    small.extend_from_slice(&5u64.to_le_bytes());
    small.extend_from_slice(&(16u32 * 1024).to_le_bytes());
    small.extend_from_slice(&[0; 64]);
    write("file_chunk", "small", &small);
    let mut large = vec![1u8];
    large.extend_from_slice(&(1u64 << 40).to_le_bytes());
    large.extend_from_slice(&(1u32 << 20).to_le_bytes());
    large.extend((0u8..=255).cycle().take(300));
    write("file_chunk", "large", &large);

    // handshake: a one-suite offer (1), then each mode.
    for mode in 0u8..3 {
        let mut script = vec![1, 1, 1, 3];
        script.extend_from_slice(&[7; 16]);
        script.extend_from_slice(&[0, 3, mode, 1, 0, 0, 0]);
        script.extend((0u8..=255).take(100));
        write("handshake", &format!("mode{mode}"), &script);
    }

    // agent_frame: `len(4) || version || id(8) || postcard`; Status is
    // variant 0, SignRecord variant 1 (a string, then three varints).
    let frame = |id: u64, payload: &[u8]| {
        let mut body = vec![AGENT_PROTO_VERSION];
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(payload);
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    };
    write("agent_frame", "status", &frame(1, &[0]));
    let url = b"https://a.example.com";
    let mut sign = vec![1, url.len() as u8];
    sign.extend_from_slice(url);
    sign.extend_from_slice(&[7, 0xe8, 0x07, 0xd0, 0x0f]);
    write("agent_frame", "sign-record", &frame(2, &sign));

    for (tag, body) in WIRE_BODIES {
        let mut input = vec![*tag];
        input.extend_from_slice(body.as_bytes());
        write("wire_json", &format!("{tag:02}"), &input);
    }
}
