//! The crypto agent's frame decoder on arbitrary bytes: it must never
//! panic, and whatever it accepts must survive encoding and decoding again
//! unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use openred_node::agent::proto::{self, Request, Response};

fuzz_target!(|data: &[u8]| {
    // As the agent reads a stream: a length prefix, then the body.
    if let Some((prefix, rest)) = data.split_first_chunk::<4>() {
        if let Ok(len) = proto::body_len(*prefix) {
            if let Some(body) = rest.get(..len) {
                if let Ok((id, request)) = proto::decode::<Request>(body) {
                    let again = proto::encode(id, &request).expect("an accepted request encodes");
                    let back = proto::decode::<Request>(&again[4..]).expect("its encoding decodes");
                    assert_eq!(back, (id, request), "decode and encode disagree");
                }
            }
        }
    }
    // A body on its own, as either side would parse it.
    let _ = proto::decode::<Request>(data);
    let _ = proto::decode::<Response>(data);
    let _ = proto::body_id(data);
});
