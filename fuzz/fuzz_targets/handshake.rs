//! The responder side of the Noise KK handshake (`openred_core::handshake`),
//! which a node runs on message 1 from any peer that holds a token. The
//! fuzzer picks the context bound in the prologue (connection ID, what
//! authorises the handshake, the suite offer and what the responder
//! accepts), then one of:
//!
//! 0. an arbitrary message 1;
//! 1. an honest message 1, with or without bytes changed: unchanged it must
//!    succeed (unless no suite is in common) and both sides must agree on
//!    keys, hash and suite; changed it must fail;
//! 2. a message 1 whose encrypted payload is the fuzzer's (the Noise layer
//!    driven directly, with the same prologue): the responder must accept
//!    exactly the canonical payload with a valid proof, nothing else.
//!
//! Nothing may panic, and a success always picks a suite from both the
//! offer and the accepted list.

#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use openred_core::handshake::{
    initiate, parse_offer, respond, Authority, HandshakeContext, NOISE_PARAMS,
};
use openred_core::keys::SignatureContext;
use openred_core::session::Suite;
use openred_core::IdentityKeypair;
use openred_fuzz::{node, Fixture};
use std::sync::OnceLock;

struct Keys {
    a: Fixture,
    b: Fixture,
    link: IdentityKeypair,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        a: node(1),
        b: node(2),
        link: IdentityKeypair::from_secret_bytes(&[9; 32]),
    })
}

/// The prologue as `HandshakeContext` builds it (see the module doc of
/// `openred_core::handshake`). If the two ever differ, mode 2's canonical
/// payload stops being accepted and the target fails loudly.
fn prologue(context: &HandshakeContext) -> Vec<u8> {
    let (label, bound): (&[u8], &[u8; 32]) = match &context.authority {
        Authority::Introduction { link_public } => (b"openred/v1/handshake-prologue", link_public),
        Authority::Renewal { previous } => (b"openred/v1/renewal-prologue", previous),
    };
    let mut p = label.to_vec();
    p.push(0);
    p.extend_from_slice(&context.connection_id);
    p.extend_from_slice(context.initiator.as_bytes());
    p.extend_from_slice(context.target.as_bytes());
    p.extend_from_slice(bound);
    p.push(context.offer.len() as u8);
    p.extend(context.offer.iter().map(|s| s.id()));
    p
}

/// The ephemeral seeds of A and B: fixed, so that an input replays
/// exactly (the committed seed scripts read no seed bytes).
const SEED_A: [u8; 32] = [0xa1; 32];
const SEED_B: [u8; 32] = [0xb2; 32];

fn verify_proof(hash: &[u8; 32], proof: &[u8; 64]) -> bool {
    keys()
        .link
        .public()
        .verify(SignatureContext::HandshakeProof, hash, proof)
        .is_ok()
}

fn suites(u: &mut Unstructured) -> Result<Vec<Suite>> {
    let bits: u8 = u.arbitrary()?;
    Ok([Suite::ChaCha20Poly1305, Suite::Aes256Gcm]
        .into_iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, s)| s)
        .collect())
}

fn run(u: &mut Unstructured) -> Result<()> {
    let k = keys();
    let (a, b) = (&k.a.record.record().node_id, &k.b.record.record().node_id);
    let offer_len = u.int_in_range(0..=10)?;
    let offer = match parse_offer(u.bytes(offer_len)?) {
        Ok(offer) => offer,
        // parse_offer is itself a decoder of bytes sent in the clear.
        Err(_) => return Ok(()),
    };
    let authority = if u.arbitrary::<bool>()? {
        Authority::Introduction {
            link_public: k.link.public().to_bytes(),
        }
    } else {
        Authority::Renewal {
            previous: u.arbitrary()?,
        }
    };
    let context = HandshakeContext {
        connection_id: u.arbitrary()?,
        initiator: *a,
        target: if u.ratio(1, 50)? { *a } else { *b },
        authority,
        offer,
    };
    let accepted = suites(u)?;
    let a_secret = k.a.agreement.secret_bytes();
    let b_secret = k.b.agreement.secret_bytes();
    let (a_public, b_public) = (k.a.agreement.public().0, k.b.agreement.public().0);
    let answer = |message: &[u8]| {
        let result = respond(
            &b_secret,
            &b_public,
            &a_public,
            &context,
            message,
            &accepted,
            SEED_B,
            verify_proof,
        );
        if let Ok((done, _)) = &result {
            assert!(context.offer.contains(&done.suite) && accepted.contains(&done.suite));
        }
        result
    };
    let common = context.offer.iter().any(|s| accepted.contains(s));

    match u.int_in_range(0..=2u8)? {
        0 => {
            let len = u.int_in_range(0..=1100)?;
            let _ = answer(u.bytes(len)?);
        }
        1 => {
            let sign = |h: &[u8; 32]| k.link.sign(SignatureContext::HandshakeProof, h);
            let Ok((pending, mut m1)) =
                initiate(&a_secret, &a_public, &b_public, &context, SEED_A, sign)
            else {
                assert!(
                    context.initiator == context.target,
                    "initiate refused a valid context"
                );
                return Ok(());
            };
            let changed = !m1.is_empty() && u.arbitrary::<bool>()?;
            if changed {
                let at = u.choose_index(m1.len())?;
                m1[at] ^= u.int_in_range(1..=255)?;
            }
            match answer(&m1) {
                Ok((done_b, m2)) => {
                    assert!(!changed, "an altered message 1 was accepted");
                    let done_a = pending
                        .finish(&m2)
                        .expect("the initiator accepts message 2");
                    assert_eq!(done_a.handshake_hash, done_b.handshake_hash);
                    assert_eq!(*done_a.i2r, *done_b.i2r);
                    assert_eq!(*done_a.r2i, *done_b.r2i);
                    assert_eq!(done_a.suite, done_b.suite);
                }
                Err(e) => assert!(changed || !common, "an honest message 1 failed: {e}"),
            }
        }
        _ => {
            if context.initiator == context.target {
                return Ok(());
            }
            let params = NOISE_PARAMS
                .parse()
                .expect("the node's Noise parameters parse");
            let prologue = prologue(&context);
            let mut state = snow::Builder::new(params)
                .local_private_key(&a_secret[..])
                .and_then(|b| b.remote_public_key(&b_public))
                .and_then(|b| b.prologue(&prologue))
                .and_then(|b| b.build_initiator())
                .expect("a Noise initiator builds");
            let before: [u8; 32] = state.get_handshake_hash().try_into().expect("32 bytes");
            let proof = k.link.sign(SignatureContext::HandshakeProof, &before);
            let proof_len = match context.authority {
                Authority::Introduction { .. } => 64,
                Authority::Renewal { .. } => 0,
            };
            let mut canonical = vec![1];
            canonical.extend_from_slice(&proof[..proof_len]);
            canonical.push(context.offer.len() as u8);
            canonical.extend(context.offer.iter().map(|s| s.id()));

            let payload = if u.arbitrary::<bool>()? {
                canonical.clone()
            } else {
                let len = u.int_in_range(0..=200)?;
                let mut payload = u.bytes(len)?.to_vec();
                // Give the fuzzer the valid proof to build on.
                if u.arbitrary::<bool>()? && payload.len() > proof_len {
                    payload[1..=proof_len].copy_from_slice(&proof[..proof_len]);
                }
                payload
            };
            let mut m1 = vec![0u8; 2048];
            let n = state
                .write_message(&payload, &mut m1)
                .expect("a short payload fits");
            m1.truncate(n);
            let result = answer(&m1);
            if payload == canonical && common {
                assert!(
                    result.is_ok(),
                    "the canonical payload was refused: {:?}",
                    result.err()
                );
            } else {
                assert!(
                    result.is_err(),
                    "a non-canonical payload was accepted: {payload:?}"
                );
            }
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
