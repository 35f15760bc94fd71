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
//!   session's frames (the node's renewal route), so only the holder of the
//!   session can ask, and the Noise static keys still prove who both ends
//!   are;
//! - the **suite negotiation**: offered in message 1, chosen in message 2,
//!   both encrypted; the choice must come from the offer, with no fallback.
//!
//! After message 2 both sides export the raw split keys and the final
//! handshake hash; the frame layer ([`crate::session`]) takes over.
//!
//! Randomness comes in as an argument: each side's Noise ephemeral key is
//! drawn from [`SeededRng`] over a 32-byte seed the caller took from the
//! operating system, one seed per handshake. Snow is built with a resolver
//! whose only RNG is that stream (never snow's own `OsRng`), so the same
//! seeds give the same messages. The caller looks the connection ID up
//! before calling [`respond`] and burns it before sending message 2.

use std::cell::Cell;

use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use zeroize::Zeroizing;

use crate::random::SeededRng;
use crate::session::Suite;
use crate::token::rand_core::TryRng;
use crate::NodeId;

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

/// Snow's own primitives, with one RNG: the stream of the caller's seed,
/// handed out once. There is no fallback to snow's `OsRng`: asked again, it
/// has no RNG and the build fails.
struct SeededResolver(Cell<Option<[u8; 32]>>);

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        let seed = self.0.take()?;
        Some(Box::new(NoiseRng(SeededRng::new(seed))))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

/// [`SeededRng`] as snow's RNG.
struct NoiseRng(SeededRng);

impl Random for NoiseRng {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.try_fill_bytes(dest).map_err(|never| match never {})
    }
}

fn builder_error(_: snow::Error) -> HandshakeError {
    HandshakeError::Noise
}

fn build(
    local_secret: &[u8; 32],
    remote_public: &[u8; 32],
    prologue: &[u8],
    ephemeral_seed: [u8; 32],
    initiator: bool,
) -> Result<snow::HandshakeState, HandshakeError> {
    let params: snow::params::NoiseParams = NOISE_PARAMS.parse().map_err(builder_error)?;
    let resolver = SeededResolver(Cell::new(Some(ephemeral_seed)));
    let builder = snow::Builder::with_resolver(params, Box::new(resolver))
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

/// Starts the handshake as the initiator: returns message 1. Its ephemeral
/// key comes from `ephemeral_seed` (32 bytes from a CSPRNG, never used
/// again). For an introduction, `sign_proof` signs the pre-message-1
/// handshake hash with token_a's half; a renewal carries no proof and does
/// not call it.
pub fn initiate(
    local_secret: &[u8; 32],
    local_public: &[u8; 32],
    target_public: &[u8; 32],
    context: &HandshakeContext,
    ephemeral_seed: [u8; 32],
    sign_proof: impl FnOnce(&[u8; 32]) -> [u8; 64],
) -> Result<(InitiatorHandshake, Vec<u8>), HandshakeError> {
    if context.initiator == context.target || local_public == target_public {
        return Err(HandshakeError::SelfSession);
    }
    let mut state = build(
        local_secret,
        target_public,
        &context.prologue()?,
        ephemeral_seed,
        true,
    )?;
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
/// that `accepted` allows, and returns message 2 with the session keys.
/// Message 2's ephemeral key comes from `ephemeral_seed` (32 bytes from a
/// CSPRNG, never used again). The caller must burn the connection ID before
/// sending message 2.
#[allow(clippy::too_many_arguments)]
pub fn respond(
    local_secret: &[u8; 32],
    local_public: &[u8; 32],
    initiator_public: &[u8; 32],
    context: &HandshakeContext,
    message: &[u8],
    accepted: &[Suite],
    ephemeral_seed: [u8; 32],
    verify_proof: impl FnOnce(&[u8; 32], &[u8; 64]) -> bool,
) -> Result<(HandshakeResult, Vec<u8>), HandshakeError> {
    if context.initiator == context.target || local_public == initiator_public {
        return Err(HandshakeError::SelfSession);
    }
    if message.len() > MAX_MESSAGE {
        return Err(HandshakeError::Payload("message too long"));
    }
    let mut state = build(
        local_secret,
        initiator_public,
        &context.prologue()?,
        ephemeral_seed,
        false,
    )?;
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
    use crate::keys::SignatureContext;
    use crate::{AgreementSecret, IdentityKeypair};
    use proptest::prelude::*;

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

    /// The link key of every introduction here, but a thief's.
    fn link() -> IdentityKeypair {
        IdentityKeypair::from_secret_bytes(&[9; 32])
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
    /// The initiator's and the responder's ephemeral seeds.
    const SEED_A: [u8; 32] = [0xa1; 32];
    const SEED_B: [u8; 32] = [0xb2; 32];

    /// Message 1 from A (static key 1) to B (static key 2), with an honest
    /// proof by [`link`] when the context is an introduction.
    fn message_1(
        context: &HandshakeContext,
        seed: [u8; 32],
    ) -> Result<(InitiatorHandshake, Vec<u8>), HandshakeError> {
        let (a, b, link) = (side(1), side(2), link());
        initiate(&a.secret, &a.public, &b.public, context, seed, sign(&link))
    }

    /// B's answer to `message`, A being the expected initiator and [`link`]
    /// the expected link key.
    fn answer(
        context: &HandshakeContext,
        message: &[u8],
        accepted: &[Suite],
        seed: [u8; 32],
    ) -> Result<(HandshakeResult, Vec<u8>), HandshakeError> {
        let (a, b, link) = (side(1), side(2), link());
        respond(
            &b.secret,
            &b.public,
            &a.public,
            context,
            message,
            accepted,
            seed,
            verify(&link),
        )
    }

    /// Both messages and both outcomes of an honest handshake in which B
    /// accepts every suite.
    fn honest(
        context: &HandshakeContext,
        seeds: ([u8; 32], [u8; 32]),
    ) -> (Vec<u8>, Vec<u8>, HandshakeResult, HandshakeResult) {
        let (pending, m1) = message_1(context, seeds.0).unwrap();
        let (rb, m2) = answer(context, &m1, &Suite::ALL, seeds.1).unwrap();
        let ra = pending.finish(&m2).unwrap();
        (m1, m2, ra, rb)
    }

    #[test]
    fn both_sides_agree_on_keys_hash_and_suite() {
        let ctx = context(&link(), 7, BOTH.to_vec());
        let (pending, m1) = message_1(&ctx, SEED_A).unwrap();
        let (rb, m2) = answer(&ctx, &m1, &[Suite::Aes256Gcm], SEED_B).unwrap();
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
        let (a, b, m, link) = (side(1), side(2), side(3), link());
        let ctx = context(&link, 7, BOTH.to_vec());
        // M uses its own static key but claims to be A (B expects A's key).
        let (_, m1) = initiate(&m.secret, &m.public, &b.public, &ctx, SEED_A, sign(&link)).unwrap();
        let err = answer(&ctx, &m1, &BOTH, SEED_B);
        assert_eq!(err.err(), Some(HandshakeError::Noise));
        // A talking to M believing it is B: M cannot answer for B's key.
        let (_, m1) = message_1(&ctx, SEED_A).unwrap();
        let err = respond(
            &m.secret,
            &m.public,
            &a.public,
            &ctx,
            &m1,
            &BOTH,
            SEED_B,
            verify(&link),
        );
        assert_eq!(err.err(), Some(HandshakeError::Noise));
    }

    #[test]
    fn a_proof_by_another_link_key_fails() {
        let (a, b) = (side(1), side(2));
        let thief = IdentityKeypair::from_secret_bytes(&[8; 32]);
        let ctx = context(&link(), 7, BOTH.to_vec());
        let (_, m1) =
            initiate(&a.secret, &a.public, &b.public, &ctx, SEED_A, sign(&thief)).unwrap();
        let err = answer(&ctx, &m1, &BOTH, SEED_B);
        assert_eq!(err.err(), Some(HandshakeError::Proof));
    }

    #[test]
    fn a_message_for_another_connection_or_offer_fails() {
        let link = link();
        let ctx = context(&link, 7, BOTH.to_vec());
        let (_, m1) = message_1(&ctx, SEED_A).unwrap();
        let other = context(&link, 8, BOTH.to_vec());
        assert_eq!(
            answer(&other, &m1, &BOTH, SEED_B).err(),
            Some(HandshakeError::Noise),
            "the prologue binds the connection ID"
        );
        // An offer rewritten in transit (AES only, to force it) breaks the prologue.
        let downgraded = context(&link, 7, vec![Suite::Aes256Gcm]);
        let err = answer(&downgraded, &m1, &BOTH, SEED_B);
        assert_eq!(err.err(), Some(HandshakeError::Noise));
    }

    #[test]
    fn tampering_and_no_common_suite_and_self_sessions_fail() {
        let (a, b, link) = (side(1), side(2), link());
        let ctx = context(&link, 7, vec![Suite::ChaCha20Poly1305]);
        let (_, mut m1) = message_1(&ctx, SEED_A).unwrap();
        let last = m1.len() - 1;
        m1[last] ^= 1;
        let err = answer(&ctx, &m1, &BOTH, SEED_B);
        assert_eq!(err.err(), Some(HandshakeError::Noise));

        let (_, m1) = message_1(&ctx, SEED_A).unwrap();
        let err = answer(&ctx, &m1, &[Suite::Aes256Gcm], SEED_B);
        assert_eq!(err.err(), Some(HandshakeError::NoCommonSuite));

        let err = initiate(&a.secret, &a.public, &a.public, &ctx, SEED_A, sign(&link));
        assert_eq!(
            err.err().map(|e| e.to_string()),
            Some(HandshakeError::SelfSession.to_string())
        );
        let mut same = ctx.clone();
        same.target = same.initiator;
        assert!(matches!(
            initiate(&a.secret, &a.public, &b.public, &same, SEED_A, sign(&link)),
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
        let ctx = context(&link(), 7, BOTH.to_vec());
        let (pending, m1) = message_1(&ctx, SEED_A).unwrap();
        let (_, mut m2) = answer(&ctx, &m1, &BOTH, SEED_B).unwrap();
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

    /// A renewal's message 1 from `from` to B, and B's answer as if from A:
    /// neither side may touch a token proof.
    fn renew(
        from: &Side,
        initiator_context: &HandshakeContext,
        responder_context: &HandshakeContext,
        seeds: ([u8; 32], [u8; 32]),
    ) -> Result<(InitiatorHandshake, HandshakeResult, Vec<u8>), HandshakeError> {
        let (a, b) = (side(1), side(2));
        let (pending, m1) = initiate(
            &from.secret,
            &from.public,
            &b.public,
            initiator_context,
            seeds.0,
            no_proof,
        )?;
        let (rb, m2) = respond(
            &b.secret,
            &b.public,
            &a.public,
            responder_context,
            &m1,
            &BOTH,
            seeds.1,
            no_check,
        )?;
        Ok((pending, rb, m2))
    }

    #[test]
    fn a_renewal_agrees_on_fresh_keys_without_a_token() {
        let ctx = renewal(7, BOTH.to_vec());
        let (pending, rb, m2) = renew(&side(1), &ctx, &ctx, (SEED_A, SEED_B)).unwrap();
        let ra = pending.finish(&m2).unwrap();
        assert_eq!(ra.handshake_hash, rb.handshake_hash);
        assert_eq!(*ra.i2r, *rb.i2r);
        assert_ne!(ra.handshake_hash, [7; 32]);
        // Two renewals of one session, with fresh seeds, make unrelated keys
        // (fresh ephemerals).
        let (pending, _, m2) = renew(&side(1), &ctx, &ctx, ([0xa3; 32], [0xb4; 32])).unwrap();
        let again = pending.finish(&m2).unwrap();
        assert_ne!(*again.i2r, *ra.i2r);
    }

    #[test]
    fn a_renewal_is_bound_to_its_session_and_to_both_static_keys() {
        let ctx = renewal(7, BOTH.to_vec());
        // Shown to B as the renewal of another session: the prologue differs.
        let err = renew(&side(1), &ctx, &renewal(8, BOTH.to_vec()), (SEED_A, SEED_B));
        assert_eq!(err.err(), Some(HandshakeError::Noise));
        // Someone holding the session's keys but not A's static key.
        let err = renew(&side(3), &ctx, &ctx, (SEED_A, SEED_B));
        assert_eq!(err.err(), Some(HandshakeError::Noise));
    }

    #[test]
    fn an_introduction_message_is_no_renewal_and_the_other_way_round() {
        let (a, b, link) = (side(1), side(2), link());
        let intro = context(&link, 5, BOTH.to_vec());
        let (_, m1) = message_1(&intro, SEED_A).unwrap();
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
            SEED_B,
            no_check,
        );
        assert_eq!(err.err(), Some(HandshakeError::Noise));
        let (_, m1) = initiate(
            &a.secret,
            &a.public,
            &b.public,
            &as_renewal,
            SEED_A,
            no_proof,
        )
        .unwrap();
        let err = answer(&intro, &m1, &BOTH, SEED_B);
        assert_eq!(err.err(), Some(HandshakeError::Noise));
    }

    #[test]
    fn the_prologue_is_the_documented_layout() {
        // docs/PROTOCOL.md: label || 0 || connection_id || A || B || bound
        // || n || suite ids, where bound is link_public or h_old.
        let link = link();
        let ctx = context(&link, 7, vec![Suite::Aes256Gcm, Suite::ChaCha20Poly1305]);
        let mut expected = b"openred/v1/handshake-prologue\0".to_vec();
        expected.extend([7; 16]);
        expected.extend([1; 32]);
        expected.extend([2; 32]);
        expected.extend(link.public().to_bytes());
        expected.extend([2, 2, 1]);
        assert_eq!(ctx.prologue().unwrap(), expected);

        let mut expected = b"openred/v1/renewal-prologue\0".to_vec();
        expected.extend([5; 16]);
        expected.extend([1; 32]);
        expected.extend([2; 32]);
        expected.extend([8; 32]);
        expected.extend([1, 1]);
        let ctx = renewal(8, vec![Suite::ChaCha20Poly1305]);
        assert_eq!(ctx.prologue().unwrap(), expected);
    }

    #[test]
    fn the_seed_changes_only_where_the_ephemeral_comes_from() {
        // Plain snow, as the node built it before the seed came in, with the
        // ephemeral key the seed stands for (the first 32 bytes of its
        // stream): message 1 is the same, byte for byte, and it reads
        // message 2 to the same handshake hash. So the wire did not change;
        // only where the ephemeral comes from did.
        let (a, b, link) = (side(1), side(2), link());
        let ctx = context(&link, 7, BOTH.to_vec());
        let (m1, m2, ra, rb) = honest(&ctx, (SEED_A, SEED_B));
        let mut ephemeral = [0u8; 32];
        let Ok(()) = SeededRng::new(SEED_A).try_fill_bytes(&mut ephemeral);
        let prologue = ctx.prologue().unwrap();
        let mut plain =
            snow::Builder::with_resolver(NOISE_PARAMS.parse().unwrap(), Box::new(DefaultResolver))
                .local_private_key(&a.secret)
                .unwrap()
                .remote_public_key(&b.public)
                .unwrap()
                .prologue(&prologue)
                .unwrap()
                .fixed_ephemeral_key_for_testing_only(&ephemeral)
                .build_initiator()
                .unwrap();
        let before: [u8; 32] = plain.get_handshake_hash().try_into().unwrap();
        let mut payload = vec![PAYLOAD_VERSION];
        payload.extend(link.sign(SignatureContext::HandshakeProof, &before));
        payload.extend([2, 1, 2]);
        let mut plain_m1 = vec![0u8; MAX_MESSAGE];
        let n = plain.write_message(&payload, &mut plain_m1).unwrap();
        assert_eq!(plain_m1[..n], m1[..]);

        let mut read = vec![0u8; MAX_MESSAGE];
        let n = plain.read_message(&m2, &mut read).unwrap();
        assert_eq!(read[..n], [PAYLOAD_VERSION, Suite::ChaCha20Poly1305.id()]);
        assert_eq!(plain.get_handshake_hash(), rb.handshake_hash);
        assert_eq!(ra.handshake_hash, rb.handshake_hash);
    }

    #[test]
    fn known_answer() {
        // Fixed keys and seeds: both messages' lengths (ephemeral key,
        // payload, tag) and the handshake hash. A change to the protocol
        // name, the prologue, a payload or the seeded RNG moves the hash;
        // `the_seed_changes_only_where_the_ephemeral_comes_from` ties this
        // code to plain snow.
        let (m1, m2, done, _) = honest(&context(&link(), 7, BOTH.to_vec()), (SEED_A, SEED_B));
        assert_eq!((m1.len(), m2.len()), (32 + 68 + 16, 32 + 2 + 16));
        assert_eq!(
            data_encoding::HEXLOWER.encode(&done.handshake_hash),
            "cd6e0c0115223857d04c240e47d7cc748da929a063bc3802fd1e4deb28fe8495"
        );
    }

    // Property tests ------------------------------------------------------

    fn offers() -> impl Strategy<Value = Vec<Suite>> {
        prop::collection::vec(prop::sample::select(Suite::ALL.to_vec()), 1..=MAX_OFFER)
    }

    fn accepted_lists() -> impl Strategy<Value = Vec<Suite>> {
        prop::sample::subsequence(Suite::ALL.to_vec(), 0..=Suite::ALL.len())
    }

    /// An introduction (bound to [`link`]) or a renewal of `bound`.
    fn contexts() -> impl Strategy<Value = HandshakeContext> {
        (
            any::<[u8; 16]>(),
            any::<bool>(),
            any::<[u8; 32]>(),
            offers(),
        )
            .prop_map(
                |(connection_id, introduction, bound, offer)| HandshakeContext {
                    connection_id,
                    initiator: NodeId::from_bytes([1; 32]),
                    target: NodeId::from_bytes([2; 32]),
                    authority: if introduction {
                        Authority::Introduction {
                            link_public: link().public().to_bytes(),
                        }
                    } else {
                        Authority::Renewal { previous: bound }
                    },
                    offer,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn honest_parties_agree_and_the_choice_comes_from_the_offer(
            context in contexts(),
            accepted in accepted_lists(),
            seeds in any::<([u8; 32], [u8; 32])>(),
        ) {
            let (pending, m1) = message_1(&context, seeds.0).unwrap();
            let first_common = context.offer.iter().copied().find(|s| accepted.contains(s));
            match answer(&context, &m1, &accepted, seeds.1) {
                Ok((rb, m2)) => {
                    let ra = pending.finish(&m2).unwrap();
                    prop_assert_eq!(Some(rb.suite), first_common);
                    prop_assert_eq!(ra.suite, rb.suite);
                    prop_assert_eq!(ra.handshake_hash, rb.handshake_hash);
                    prop_assert_eq!(*ra.i2r, *rb.i2r);
                    prop_assert_eq!(*ra.r2i, *rb.r2i);
                    prop_assert_ne!(*ra.i2r, *ra.r2i);
                }
                Err(e) => {
                    prop_assert_eq!(e, HandshakeError::NoCommonSuite);
                    prop_assert_eq!(first_common, None);
                }
            }
        }

        #[test]
        fn the_initiator_takes_only_an_offered_suite(
            context in contexts(),
            chosen in any::<u8>(),
            seeds in any::<([u8; 32], [u8; 32])>(),
        ) {
            // A responder that answers with a suite of its own choosing.
            let (a, b) = (side(1), side(2));
            let (pending, m1) = message_1(&context, seeds.0).unwrap();
            let prologue = context.prologue().unwrap();
            let mut responder = build(&b.secret, &a.public, &prologue, seeds.1, false).unwrap();
            let mut scratch = vec![0u8; MAX_MESSAGE];
            responder.read_message(&m1, &mut scratch).unwrap();
            let mut m2 = vec![0u8; MAX_MESSAGE];
            let n = responder.write_message(&[PAYLOAD_VERSION, chosen], &mut m2).unwrap();
            match pending.finish(&m2[..n]) {
                Ok(done) => {
                    prop_assert_eq!(done.suite.id(), chosen);
                    prop_assert!(context.offer.contains(&done.suite));
                }
                Err(e) => {
                    prop_assert_eq!(e, HandshakeError::Downgrade);
                    prop_assert!(!context.offer.iter().any(|s| s.id() == chosen));
                }
            }
        }

        #[test]
        fn a_changed_byte_in_either_message_fails(
            context in contexts(),
            seeds in any::<([u8; 32], [u8; 32])>(),
            index in any::<prop::sample::Index>(),
            flip in 1u8..=255,
            second in any::<bool>(),
        ) {
            let (pending, mut m1) = message_1(&context, seeds.0).unwrap();
            if second {
                let (_, mut m2) = answer(&context, &m1, &Suite::ALL, seeds.1).unwrap();
                let at = index.index(m2.len());
                m2[at] ^= flip;
                prop_assert_eq!(pending.finish(&m2).err(), Some(HandshakeError::Noise));
            } else {
                let at = index.index(m1.len());
                m1[at] ^= flip;
                let result = answer(&context, &m1, &Suite::ALL, seeds.1);
                prop_assert_eq!(result.err(), Some(HandshakeError::Noise));
            }
        }

        #[test]
        fn a_different_prologue_on_one_side_fails(
            context in contexts(),
            seeds in any::<([u8; 32], [u8; 32])>(),
            component in 0..6u8,
            other_offer in offers(),
            other in any::<[u8; 32]>(),
            responder_side in any::<bool>(),
        ) {
            let mut changed = context.clone();
            match component {
                0 => changed.connection_id[usize::from(other[0] % 16)] ^= other[1] | 1,
                1 => changed.initiator = NodeId::from_bytes([3; 32]),
                2 => changed.target = NodeId::from_bytes([3; 32]),
                3 => {
                    changed.authority = match context.authority {
                        Authority::Introduction { .. } => {
                            Authority::Introduction { link_public: other }
                        }
                        Authority::Renewal { .. } => Authority::Renewal { previous: other },
                    }
                }
                4 => {
                    // The same 32 bytes, bound as the other kind.
                    changed.authority = match context.authority {
                        Authority::Introduction { link_public } => {
                            Authority::Renewal { previous: link_public }
                        }
                        Authority::Renewal { previous } => {
                            Authority::Introduction { link_public: previous }
                        }
                    }
                }
                _ => changed.offer = other_offer,
            }
            prop_assume!(changed.prologue().unwrap() != context.prologue().unwrap());
            let (initiator_context, responder_context) = if responder_side {
                (&context, &changed)
            } else {
                (&changed, &context)
            };
            let (_, m1) = message_1(initiator_context, seeds.0).unwrap();
            let result = answer(responder_context, &m1, &Suite::ALL, seeds.1);
            prop_assert_eq!(result.err(), Some(HandshakeError::Noise));
        }

        #[test]
        fn the_seeds_alone_make_the_messages(
            context in contexts(),
            seeds in any::<([u8; 32], [u8; 32])>(),
            others in any::<([u8; 32], [u8; 32])>(),
        ) {
            prop_assume!(seeds.0 != others.0 && seeds.1 != others.1);
            let (m1, m2, ra, rb) = honest(&context, seeds);
            let (m1_again, m2_again, ra_again, rb_again) = honest(&context, seeds);
            prop_assert_eq!(&m1, &m1_again);
            prop_assert_eq!(&m2, &m2_again);
            prop_assert_eq!(ra.handshake_hash, ra_again.handshake_hash);
            prop_assert_eq!(*rb.i2r, *rb_again.i2r);
            // Another seed on either side: another ephemeral, other keys.
            let (m1_other, m2_same_seed, ra_other, _) = honest(&context, (others.0, seeds.1));
            prop_assert_ne!(&m1_other[..32], &m1[..32]);
            prop_assert_ne!(&m2_same_seed, &m2);
            prop_assert_ne!(ra_other.handshake_hash, ra.handshake_hash);
            prop_assert_ne!(*ra_other.i2r, *ra.i2r);
            let (m1_same, m2_other, ra_other, _) = honest(&context, (seeds.0, others.1));
            prop_assert_eq!(&m1_same, &m1);
            prop_assert_ne!(&m2_other[..32], &m2[..32]);
            prop_assert_ne!(ra_other.handshake_hash, ra.handshake_hash);
            prop_assert_ne!(*ra_other.r2i, *ra.r2i);
        }
    }
}
