//! The JSON bodies of every directory route (`openred_core::wire`) and
//! every P2P route a node serves (the files and messaging modules' peer
//! bodies), on arbitrary bytes. The first byte picks the type, the rest is
//! the body. Parsing must never panic, and a body that parses must write
//! back to JSON that parses again to the same JSON (no value the parser
//! accepts is lost or changed on the way out).

#![no_main]

use libfuzzer_sys::fuzz_target;
use openred_core::wire::{self, *};
use openred_node::modules::files::{DownloadRequest, FileGrant, FileOffer, FileRequest};
use openred_node::modules::messaging::{
    BatchReceipt, MessageResult, Receipt, WireBatch, WireMessage,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn round_trip<T: Serialize + DeserializeOwned>(body: &[u8]) {
    let Ok(value) = serde_json::from_slice::<T>(body) else {
        return;
    };
    let first = serde_json::to_vec(&value).expect("a parsed body serialises");
    let again: T = serde_json::from_slice(&first).expect("what we write parses back");
    let second = serde_json::to_vec(&again).expect("serialises again");
    assert_eq!(
        first,
        second,
        "{} does not round-trip",
        std::any::type_name::<T>()
    );
}

/// Every binary field is base64url: its decoder must not panic either, and
/// what it accepts must encode back to the same text.
fn base64(body: &[u8]) {
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    if let Ok(bytes) = wire::b64_decode(text) {
        assert_eq!(
            wire::b64_encode(&bytes),
            text,
            "two base64 texts for one value"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&tag, body)) = data.split_first() else {
        return;
    };
    match tag % 28 {
        0 => round_trip::<ErrorBody>(body),
        1 => round_trip::<NodeStatus>(body),
        2 => round_trip::<RegisterRequest>(body),
        3 => round_trip::<RegisterResponse>(body),
        4 => round_trip::<NodeEntry>(body),
        5 => round_trip::<DiscoverResponse>(body),
        6 => round_trip::<DeregisterRequest>(body),
        7 => round_trip::<DeregisterResponse>(body),
        8 => round_trip::<NodeCounts>(body),
        9 => round_trip::<HealthResponse>(body),
        10 => round_trip::<ConnectionRequest>(body),
        11 => round_trip::<ConnectionResponse>(body),
        12 => round_trip::<TokenPush>(body),
        13 => round_trip::<TokenAccepted>(body),
        14 => round_trip::<ReachabilityChallenge>(body),
        15 => round_trip::<ReachabilityProof>(body),
        16 => round_trip::<HandshakeRequest>(body),
        17 => round_trip::<HandshakeResponse>(body),
        18 => round_trip::<FileRequest>(body),
        19 => round_trip::<FileGrant>(body),
        20 => round_trip::<DownloadRequest>(body),
        21 => round_trip::<FileOffer>(body),
        22 => round_trip::<WireMessage>(body),
        23 => round_trip::<WireBatch>(body),
        24 => round_trip::<BatchReceipt>(body),
        25 => round_trip::<MessageResult>(body),
        26 => round_trip::<Receipt>(body),
        _ => base64(body),
    }
});
