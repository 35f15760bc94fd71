//! Token envelopes (`openred_core::token`) on arbitrary bytes, as a node
//! reads them from the directory (token_a) or from a token push (token_b).
//! Decoding must never panic and accepts exactly its input; verifying and
//! opening (as the node the token names, with the fixture keys) must answer
//! without panicking, and whatever opens must be consistent with the
//! envelope's clear-text claims.

#![no_main]

use libfuzzer_sys::fuzz_target;
use openred_core::token::{LinkKey, Role, TokenEnvelope};
use openred_core::UnixTime;
use openred_fuzz::{directory, node, Fixture};
use std::sync::OnceLock;

fn nodes() -> &'static [Fixture; 2] {
    static NODES: OnceLock<[Fixture; 2]> = OnceLock::new();
    NODES.get_or_init(|| [node(1), node(2)])
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = TokenEnvelope::decode(data) else {
        return;
    };
    assert_eq!(
        token.as_bytes(),
        data,
        "decode kept other bytes than its input"
    );
    assert_eq!(TokenEnvelope::decode(token.as_bytes()).as_ref(), Ok(&token));
    let intro = *token.introduction();
    assert_ne!(
        intro.initiator, intro.target,
        "a token introducing a node to itself passed"
    );
    assert!(
        intro.expires_at > intro.issued_at,
        "a token expiring before its issue passed"
    );
    let _ = intro.check_unexpired(UnixTime(u64::MAX));
    let _ = token.verify(&directory().public());

    // Open as each fixture node: only the addressee may get further than
    // the cheap check, and what opens names the other side.
    for me in nodes() {
        let my_id = me.record.record().node_id;
        let Ok(opened) = token.open(&my_id, &me.agreement.secret_bytes()) else {
            continue;
        };
        assert_eq!(
            opened.introduction, intro,
            "opened claims differ from the header"
        );
        assert_eq!(opened.role, token.role());
        let (addressee, peer) = match token.role() {
            Role::Initiator => (intro.initiator, intro.target),
            Role::Target => (intro.target, intro.initiator),
        };
        assert_eq!(
            addressee, my_id,
            "a token opened for a node it does not name"
        );
        assert_eq!(
            opened.peer_record.record().node_id,
            peer,
            "the sealed record names a third node"
        );
        match (&opened.link, token.role()) {
            (LinkKey::Signing(_), Role::Initiator) | (LinkKey::Verifying(_), Role::Target) => {}
            _ => panic!("a token carried the wrong half of the link key"),
        }
    }
});
