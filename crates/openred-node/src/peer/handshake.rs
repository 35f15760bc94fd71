//! The Noise KK handshake that turns an introduction into a session.
//!
//! Both static keys are known in advance from the signed records the tokens
//! carry, so KK gives mutual authentication and forward secrecy in two
//! messages. What we add on top, all inside the Noise transcript:
//!
//! - the **prologue** binds the kind of handshake, the connection ID, both
//!   node IDs, what authorises the handshake and the suite offer, so a
//!   message cannot be moved to another introduction or renewal, or have its
//!   offer rewritten;
//! - what **authorises** it ([`Authority`]): for an introduction, the public
//!   half of the directory's token pair, and the initiator's **proof of
//!   possession** of the secret half: a signature over the handshake hash as
//!   it stands before message 1 (it covers the protocol name, the prologue
//!   and both static keys), under the handshake-proof context label, carried
//!   in message 1's payload, which KK already encrypts (after `es, ss`), so
//!   only the target can read it. For a **renewal**, the handshake hash of
//!   the live session that authorises it: the messages travel inside that
//!   session's frames (see `p2p::renew`), so only the holder of the session
//!   can ask, and the Noise static keys still prove who both ends are;
//! - the **suite negotiation**: offered in message 1, chosen in message 2,
//!   both encrypted; the choice must come from the offer, with no fallback.
//!
//! After message 2 both sides export the raw split keys and the final
//! handshake hash; the frame layer (`openred_core::session`) takes over.
//! This module is pure computation; the caller looks the connection ID up
//! before calling [`respond`] and burns it before sending message 2.

use openred_core::session::Suite;
use openred_core::NodeId;
use zeroize::Zeroizing;

/// The Noise protocol name. Changing it changes every handshake hash.
pub const NOISE_PARAMS: &str = "Noise_KK_25519_ChaChaPoly_BLAKE2s";
const PROLOGUE_LABEL: &[u8] = b"openred/v1/handshake-prologue";
const RENEWAL_PROLOGUE_LABEL: &[u8] = b"openred/v1/renewal-prologue";
const PAYLOAD_VERSION: u8 = 1;
/// The most suites an offer may list.
pub const MAX_OFFER: usize = 8;
const MAX_MESSAGE: usize = 1024;

/// Why a handshake failed. Messages never reveal key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The Noise layer refused a message: wrong static key (a man in the
    /// middle), tampering, or a message made for another prologue.
    #[error("the handshake message does not authenticate")]
    Noise,
    /// The payload is malformed.
    #[error("malformed handshake payload: {0}")]
    Payload(&'static str),
    /// The initiator's proof of possession of its token does not verify.
    #[error("the initiator's token proof does not verify")]
    Proof,
    /// The offer is empty, too long, or names an unknown suite.
    #[error("bad suite offer: {0}")]
    Offer(&'static str),
    /// No offered suite is acceptable.
    #[error("no cipher suite in common")]
    NoCommonSuite,
    /// The responder chose a suite that was not offered.
    #[error("the responder chose a suite that was not offered")]
    Downgrade,
    /// A node tried to handshake with itself, or with its own static key.
    #[error("a node cannot open a session with itself")]
    SelfSession,
}

/// What authorises a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Authority {
    /// An introduction by the directory: the public half of the token pair
    /// (token_b's verifying key). The initiator proves it holds the secret
    /// half.
    Introduction {
        /// token_b's verifying key.
        link_public: [u8; 32],
    },
    /// The renewal of a live session between the two nodes, which carries
    /// both messages in its frames: no directory, no token.
    Renewal {
        /// The handshake hash of the session being renewed.
        previous: [u8; 32],
    },
}

/// What both sides agree on before the handshake.
#[derive(Debug, Clone)]
pub struct HandshakeContext {
    /// The introduction's connection ID, or a fresh random one for a
    /// renewal.
    pub connection_id: [u8; 16],
    /// The node that starts the handshake: A, who asked for the
    /// introduction, or the node that renews.
    pub initiator: NodeId,
    /// The other node.
    pub target: NodeId,
    /// What authorises the handshake.
    pub authority: Authority,
    /// The suites the initiator offers, in its order of preference.
    pub offer: Vec<Suite>,
}

impl HandshakeContext {
    fn prologue(&self) -> Result<Vec<u8>, HandshakeError> {
        check_offer(&self.offer)?;
        let (label, bound) = match &self.authority {
            Authority::Introduction { link_public } => (PROLOGUE_LABEL, link_public),
            Authority::Renewal { previous } => (RENEWAL_PROLOGUE_LABEL, previous),
        };
        let mut p = Vec::with_capacity(label.len() + 1 + 16 + 96 + 1 + self.offer.len());
        p.extend_from_slice(label);
        p.push(0);
        p.extend_from_slice(&self.connection_id);
        p.extend_from_slice(self.initiator.as_bytes());
        p.extend_from_slice(self.target.as_bytes());
        p.extend_from_slice(bound);
        p.push(self.offer.len() as u8);
        p.extend(self.offer.iter().map(|s| s.id()));
        Ok(p)
    }
}

fn check_offer(offer: &[Suite]) -> Result<(), HandshakeError> {
    if offer.is_empty() {
        return Err(HandshakeError::Offer("empty"));
    }
    if offer.len() > MAX_OFFER {
        return Err(HandshakeError::Offer("too many suites"));
    }
    Ok(())
}

/// Parses suite IDs as sent in the clear beside message 1.
pub fn parse_offer(ids: &[u8]) -> Result<Vec<Suite>, HandshakeError> {
    let offer = ids
        .iter()
        .map(|id| Suite::from_id(*id).ok_or(HandshakeError::Offer("unknown suite")))
        .collect::<Result<Vec<_>, _>>()?;
    check_offer(&offer)?;
    Ok(offer)
}

/// The outcome of a finished handshake: what the frame layer needs.
pub struct HandshakeResult {
    /// The final handshake hash.
    pub handshake_hash: [u8; 32],
    /// The initiator→responder key.
    pub i2r: Zeroizing<[u8; 32]>,
    /// The responder→initiator key.
    pub r2i: Zeroizing<[u8; 32]>,
    /// The negotiated suite.
    pub suite: Suite,
}

fn builder_error(_: snow::Error) -> HandshakeError {
    HandshakeError::Noise
}

fn build(
    local_secret: &[u8; 32],
    remote_public: &[u8; 32],
    prologue: &[u8],
    initiator: bool,
) -> Result<snow::HandshakeState, HandshakeError> {
    let params: snow::params::NoiseParams = NOISE_PARAMS.parse().map_err(builder_error)?;
    let builder = snow::Builder::new(params)
        .local_private_key(local_secret)
        .map_err(builder_error)?
        .remote_public_key(remote_public)
        .map_err(builder_error)?
        .prologue(prologue)
        .map_err(builder_error)?;
    if initiator {
        builder.build_initiator().map_err(builder_error)
    } else {
        builder.build_responder().map_err(builder_error)
    }
}

fn hash32(state: &snow::HandshakeState) -> Result<[u8; 32], HandshakeError> {
    state
        .get_handshake_hash()
        .try_into()
        .map_err(|_| HandshakeError::Noise)
}

fn finish(
    mut state: snow::HandshakeState,
    suite: Suite,
) -> Result<HandshakeResult, HandshakeError> {
    // The raw split is only meaningful once both messages are through.
    if !state.is_handshake_finished() {
        return Err(HandshakeError::Noise);
    }
    let handshake_hash = hash32(&state)?;
    let (i2r, r2i) = state.dangerously_get_raw_split();
    Ok(HandshakeResult {
        handshake_hash,
        i2r: Zeroizing::new(i2r),
        r2i: Zeroizing::new(r2i),
        suite,
    })
}

/// The initiator between its two messages.
pub struct InitiatorHandshake {
    state: snow::HandshakeState,
    offer: Vec<Suite>,
}

/// Starts the handshake as the initiator: returns message 1. For an
/// introduction, `sign_proof` signs the pre-message-1 handshake hash with
/// token_a's half; a renewal carries no proof and does not call it.
pub fn initiate(
    local_secret: &[u8; 32],
    local_public: &[u8; 32],
    target_public: &[u8; 32],
    context: &HandshakeContext,
    sign_proof: impl FnOnce(&[u8; 32]) -> [u8; 64],
) -> Result<(InitiatorHandshake, Vec<u8>), HandshakeError> {
    if context.initiator == context.target || local_public == target_public {
        return Err(HandshakeError::SelfSession);
    }
    let mut state = build(local_secret, target_public, &context.prologue()?, true)?;
    let mut payload = Vec::with_capacity(2 + 64 + context.offer.len());
    payload.push(PAYLOAD_VERSION);
    if let Authority::Introduction { .. } = context.authority {
        payload.extend_from_slice(&sign_proof(&hash32(&state)?));
    }
    payload.push(context.offer.len() as u8);
    payload.extend(context.offer.iter().map(|s| s.id()));
    let mut message = vec![0u8; MAX_MESSAGE];
    let n = state
        .write_message(&payload, &mut message)
        .map_err(builder_error)?;
    message.truncate(n);
    Ok((
        InitiatorHandshake {
            state,
            offer: context.offer.clone(),
        },
        message,
    ))
}

impl InitiatorHandshake {
    /// Reads message 2 and finishes.
    pub fn finish(mut self, message: &[u8]) -> Result<HandshakeResult, HandshakeError> {
        if message.len() > MAX_MESSAGE {
            return Err(HandshakeError::Payload("message too long"));
        }
        let mut payload = vec![0u8; MAX_MESSAGE];
        let n = self
            .state
            .read_message(message, &mut payload)
            .map_err(builder_error)?;
        let payload = &payload[..n];
        let [version, chosen] = payload else {
            return Err(HandshakeError::Payload(
                "message 2 payload has the wrong length",
            ));
        };
        if *version != PAYLOAD_VERSION {
            return Err(HandshakeError::Payload("unknown payload version"));
        }
        let suite = Suite::from_id(*chosen).ok_or(HandshakeError::Downgrade)?;
        if !self.offer.contains(&suite) {
            return Err(HandshakeError::Downgrade);
        }
        finish(self.state, suite)
    }
}

/// Answers message 1 as the target: for an introduction, verifies the
/// initiator's proof with `verify_proof` (token_b's verifying half; a
/// renewal has no proof and does not call it), picks the first offered suite
/// that `accepted` allows, and returns message 2 with the session keys. The
/// caller must burn the connection ID before sending message 2.
pub fn respond(
    local_secret: &[u8; 32],
    local_public: &[u8; 32],
    initiator_public: &[u8; 32],
    context: &HandshakeContext,
    message: &[u8],
    accepted: &[Suite],
    verify_proof: impl FnOnce(&[u8; 32], &[u8; 64]) -> bool,
) -> Result<(HandshakeResult, Vec<u8>), HandshakeError> {
    if context.initiator == context.target || local_public == initiator_public {
        return Err(HandshakeError::SelfSession);
    }
    if message.len() > MAX_MESSAGE {
        return Err(HandshakeError::Payload("message too long"));
    }
    let mut state = build(local_secret, initiator_public, &context.prologue()?, false)?;
    let before = hash32(&state)?;
    let mut payload = vec![0u8; MAX_MESSAGE];
    let n = state
        .read_message(message, &mut payload)
        .map_err(builder_error)?;
    let payload = &payload[..n];
    let proof_len = match context.authority {
        Authority::Introduction { .. } => 64,
        Authority::Renewal { .. } => 0,
    };
    if payload.len() < 2 + proof_len || payload[0] != PAYLOAD_VERSION {
        return Err(HandshakeError::Payload("message 1 payload is malformed"));
    }
    let (proof, rest) = payload[1..].split_at(proof_len);
    let count = rest[0] as usize;
    let ids = &rest[1..];
    if ids.len() != count {
        return Err(HandshakeError::Payload("suite list length"));
    }
    // The encrypted offer must be the one bound in the prologue.
    if parse_offer(ids)? != context.offer {
        return Err(HandshakeError::Downgrade);
    }
    if let Authority::Introduction { .. } = context.authority {
        let proof: &[u8; 64] = proof
            .try_into()
            .map_err(|_| HandshakeError::Payload("proof length"))?;
        if !verify_proof(&before, proof) {
            return Err(HandshakeError::Proof);
        }
    }
    let suite = context
        .offer
        .iter()
        .copied()
        .find(|s| accepted.contains(s))
        .ok_or(HandshakeError::NoCommonSuite)?;
    let mut reply = vec![0u8; MAX_MESSAGE];
    let n = state
        .write_message(&[PAYLOAD_VERSION, suite.id()], &mut reply)
        .map_err(builder_error)?;
    reply.truncate(n);
    Ok((finish(state, suite)?, reply))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openred_core::keys::SignatureContext;
    use openred_core::{AgreementSecret, IdentityKeypair};

    struct Side {
        secret: [u8; 32],
        public: [u8; 32],
    }

    fn side(seed: u8) -> Side {
        let s = AgreementSecret::from_secret_bytes([seed; 32]);
        Side {
            secret: *s.secret_bytes(),
            public: s.public().0,
        }
    }

    fn context(link: &IdentityKeypair, cid: u8, offer: Vec<Suite>) -> HandshakeContext {
        HandshakeContext {
            connection_id: [cid; 16],
            initiator: NodeId::from_bytes([1; 32]),
            target: NodeId::from_bytes([2; 32]),
            authority: Authority::Introduction {
                link_public: link.public().to_bytes(),
            },
            offer,
        }
    }

    fn sign(link: &IdentityKeypair) -> impl FnOnce(&[u8; 32]) -> [u8; 64] + '_ {
        move |h| link.sign(SignatureContext::HandshakeProof, h)
    }

    fn verify(link: &IdentityKeypair) -> impl FnOnce(&[u8; 32], &[u8; 64]) -> bool + '_ {
        move |h, sig| {
            link.public()
                .verify(SignatureContext::HandshakeProof, h, sig)
                .is_ok()
        }
    }

    const BOTH: [Suite; 2] = [Suite::ChaCha20Poly1305, Suite::Aes256Gcm];

    #[test]
    fn both_sides_agree_on_keys_hash_and_suite() {
        let (a, b, link) = (
            side(1),
            side(2),
            IdentityKeypair::from_secret_bytes(&[9; 32]),
        );
        let ctx = context(&link, 7, BOTH.to_vec());
        let (pending, m1) = initiate(&a.secret, &a.public, &b.public, &ctx, sign(&link)).unwrap();
        let (rb, m2) = respond(
            &b.secret,
            &b.public,
            &a.public,
            &ctx,
            &m1,
            &[Suite::Aes256Gcm],
            verify(&link),
        )
        .unwrap();
        let ra = pending.finish(&m2).unwrap();
        assert_eq!(ra.handshake_hash, rb.handshake_hash);
        assert_eq!(*ra.i2r, *rb.i2r);
        assert_eq!(*ra.r2i, *rb.r2i);
        assert_ne!(*ra.i2r, *ra.r2i);
        assert_eq!(
            ra.suite,
            Suite::Aes256Gcm,
            "the responder's pick from the offer"
        );
        assert_eq!(rb.suite, Suite::Aes256Gcm);
    }

    #[test]
    fn a_man_in_the_middle_with_another_static_key_fails() {
        let (a, b, m, link) = (
            side(1),
            side(2),
            side(3),
            IdentityKeypair::from_secret_bytes(&[9; 32]),
        );
        let ctx = context(&link, 7, BOTH.to_vec());
        // M uses its own static key but claims to be A (B expects A's key).
        let (_, m1) = initiate(&m.secret, &m.public, &b.public, &ctx, sign(&link)).unwrap();
        let err = respond(
            &b.secret,
            &b.public,
            &a.public,
            &ctx,
            &m1,
            &BOTH,
            verify(&link),
        );
        assert_eq!(err.err(), Some(HandshakeError::Noise));
        // A talking to M believing it is B: M cannot answer for B's key.
        let (_, m1) = initiate(&a.secret, &a.public, &b.public, &ctx, sign(&link)).unwrap();
        let err = respond(
            &m.secret,
            &m.public,
            &a.public,
            &ctx,
            &m1,
            &BOTH,
            verify(&link),
        );
        assert_eq!(err.err(), Some(HandshakeError::Noise));
    }

    #[test]
    fn a_proof_by_another_link_key_fails() {
        let (a, b) = (side(1), side(2));
        let link = IdentityKeypair::from_secret_bytes(&[9; 32]);
        let thief = IdentityKeypair::from_secret_bytes(&[8; 32]);
        let ctx = context(&link, 7, BOTH.to_vec());
        let (_, m1) = initiate(&a.secret, &a.public, &b.public, &ctx, sign(&thief)).unwrap();
        let err = respond(
            &b.secret,
            &b.public,
            &a.public,
            &ctx,
            &m1,
            &BOTH,
            verify(&link),
        );
        assert_eq!(err.err(), Some(HandshakeError::Proof));
    }

    #[test]
    fn a_message_for_another_connection_or_offer_fails() {
        let (a, b, link) = (
            side(1),
            side(2),
            IdentityKeypair::from_secret_bytes(&[9; 32]),
        );
        let ctx = context(&link, 7, BOTH.to_vec());
        let (_, m1) = initiate(&a.secret, &a.public, &b.public, &ctx, sign(&link)).unwrap();
        let other = context(&link, 8, BOTH.to_vec());
        let err = respond(
            &b.secret,
            &b.public,
            &a.public,
            &other,
            &m1,
            &BOTH,
            verify(&link),
        );
        assert_eq!(
            err.err(),
            Some(HandshakeError::Noise),
            "the prologue binds the connection ID"
        );
        // An offer rewritten in transit (AES only, to force it) breaks the prologue.
        let downgraded = context(&link, 7, vec![Suite::Aes256Gcm]);
        let err = respond(
            &b.secret,
            &b.public,
            &a.public,
            &downgraded,
            &m1,
            &BOTH,
            verify(&link),
        );
        assert_eq!(err.err(), Some(HandshakeError::Noise));
    }

    #[test]
    fn tampering_and_no_common_suite_and_self_sessions_fail() {
        let (a, b, link) = (
            side(1),
            side(2),
            IdentityKeypair::from_secret_bytes(&[9; 32]),
        );
        let ctx = context(&link, 7, vec![Suite::ChaCha20Poly1305]);
        let (_, mut m1) = initiate(&a.secret, &a.public, &b.public, &ctx, sign(&link)).unwrap();
        let last = m1.len() - 1;
        m1[last] ^= 1;
        let err = respond(
            &b.secret,
            &b.public,
            &a.public,
            &ctx,
            &m1,
            &BOTH,
            verify(&link),
        );
        assert_eq!(err.err(), Some(HandshakeError::Noise));

        let (_, m1) = initiate(&a.secret, &a.public, &b.public, &ctx, sign(&link)).unwrap();
        let err = respond(
            &b.secret,
            &b.public,
            &a.public,
            &ctx,
            &m1,
            &[Suite::Aes256Gcm],
            verify(&link),
        );
        assert_eq!(err.err(), Some(HandshakeError::NoCommonSuite));

        let err = initiate(&a.secret, &a.public, &a.public, &ctx, sign(&link));
        assert_eq!(
            err.err().map(|e| e.to_string()),
            Some(HandshakeError::SelfSession.to_string())
        );
        let mut same = ctx.clone();
        same.target = same.initiator;
        assert!(matches!(
            initiate(&a.secret, &a.public, &b.public, &same, sign(&link)),
            Err(HandshakeError::SelfSession)
        ));
        assert_eq!(parse_offer(&[]).err(), Some(HandshakeError::Offer("empty")));
        assert_eq!(
            parse_offer(&[9]).err(),
            Some(HandshakeError::Offer("unknown suite"))
        );
    }

    #[test]
    fn the_initiator_refuses_a_second_message_that_was_tampered_with() {
        let (a, b, link) = (
            side(1),
            side(2),
            IdentityKeypair::from_secret_bytes(&[9; 32]),
        );
        let ctx = context(&link, 7, BOTH.to_vec());
        let (pending, m1) = initiate(&a.secret, &a.public, &b.public, &ctx, sign(&link)).unwrap();
        let (_, mut m2) = respond(
            &b.secret,
            &b.public,
            &a.public,
            &ctx,
            &m1,
            &BOTH,
            verify(&link),
        )
        .unwrap();
        m2[40] ^= 0x80;
        assert_eq!(pending.finish(&m2).err(), Some(HandshakeError::Noise));
    }

    fn renewal(previous: u8, offer: Vec<Suite>) -> HandshakeContext {
        HandshakeContext {
            connection_id: [5; 16],
            initiator: NodeId::from_bytes([1; 32]),
            target: NodeId::from_bytes([2; 32]),
            authority: Authority::Renewal {
                previous: [previous; 32],
            },
            offer,
        }
    }

    fn no_proof(_: &[u8; 32]) -> [u8; 64] {
        panic!("a renewal carries no token proof")
    }

    fn no_check(_: &[u8; 32], _: &[u8; 64]) -> bool {
        panic!("a renewal checks no token proof")
    }

    #[test]
    fn a_renewal_agrees_on_fresh_keys_without_a_token() {
        let (a, b) = (side(1), side(2));
        let ctx = renewal(7, BOTH.to_vec());
        let (pending, m1) = initiate(&a.secret, &a.public, &b.public, &ctx, no_proof).unwrap();
        let (rb, m2) =
            respond(&b.secret, &b.public, &a.public, &ctx, &m1, &BOTH, no_check).unwrap();
        let ra = pending.finish(&m2).unwrap();
        assert_eq!(ra.handshake_hash, rb.handshake_hash);
        assert_eq!(*ra.i2r, *rb.i2r);
        assert_ne!(ra.handshake_hash, [7; 32]);
        // Two renewals of one session make unrelated keys (fresh ephemerals).
        let (pending, m1) = initiate(&a.secret, &a.public, &b.public, &ctx, no_proof).unwrap();
        let (_, m2) = respond(&b.secret, &b.public, &a.public, &ctx, &m1, &BOTH, no_check).unwrap();
        let again = pending.finish(&m2).unwrap();
        assert_ne!(*again.i2r, *ra.i2r);
    }

    #[test]
    fn a_renewal_is_bound_to_its_session_and_to_both_static_keys() {
        let (a, b, thief) = (side(1), side(2), side(3));
        let ctx = renewal(7, BOTH.to_vec());
        let (_, m1) = initiate(&a.secret, &a.public, &b.public, &ctx, no_proof).unwrap();
        // Shown to B as the renewal of another session: the prologue differs.
        let err = respond(
            &b.secret,
            &b.public,
            &a.public,
            &renewal(8, BOTH.to_vec()),
            &m1,
            &BOTH,
            no_check,
        );
        assert_eq!(err.err(), Some(HandshakeError::Noise));
        // Someone holding the session's keys but not A's static key.
        let (_, forged) =
            initiate(&thief.secret, &thief.public, &b.public, &ctx, no_proof).unwrap();
        let err = respond(
            &b.secret, &b.public, &a.public, &ctx, &forged, &BOTH, no_check,
        );
        assert_eq!(err.err(), Some(HandshakeError::Noise));
    }

    #[test]
    fn an_introduction_message_is_no_renewal_and_the_other_way_round() {
        let (a, b, link) = (
            side(1),
            side(2),
            IdentityKeypair::from_secret_bytes(&[9; 32]),
        );
        let intro = context(&link, 5, BOTH.to_vec());
        let (_, m1) = initiate(&a.secret, &a.public, &b.public, &intro, sign(&link)).unwrap();
        let as_renewal = HandshakeContext {
            authority: Authority::Renewal {
                previous: link.public().to_bytes(),
            },
            ..intro.clone()
        };
        let err = respond(
            &b.secret,
            &b.public,
            &a.public,
            &as_renewal,
            &m1,
            &BOTH,
            no_check,
        );
        assert_eq!(err.err(), Some(HandshakeError::Noise));
        let (_, m1) = initiate(&a.secret, &a.public, &b.public, &as_renewal, no_proof).unwrap();
        let err = respond(
            &b.secret,
            &b.public,
            &a.public,
            &intro,
            &m1,
            &BOTH,
            verify(&link),
        );
        assert_eq!(err.err(), Some(HandshakeError::Noise));
    }
}
