//! Connection tokens: the linked pair the directory mints for an introduction.
//!
//! When node A (the *initiator*) asks the directory to be introduced to node B
//! (the *target*), the directory draws a fresh connection ID and an ephemeral
//! Ed25519 key pair, the *link key*, and mints two tokens:
//!
//! - `token_a`, for A ([`Role::Initiator`], role byte 1), carries the
//!   **signing** half of the link key (its 32-byte secret seed) and B's
//!   signed record;
//! - `token_b`, for B ([`Role::Target`], role byte 2), carries the
//!   **verifying** half (its 32-byte public key) and A's signed record.
//!
//! The tokens are *linked* (two halves of one key pair) and *different* (one
//! secret, one public). A proves that it holds token_a by signing the Noise
//! handshake hash with the link key under
//! [`SignatureContext::HandshakeProof`]; B checks that proof with token_b's
//! half. A stolen token_b proves nothing, and token_a is only readable by A.
//!
//! # Envelope, version 1
//!
//! All integers are big-endian.
//!
//! ```text
//! offset   size  field
//!      0      1  version (1)
//!      1      1  role (1 = initiator, 2 = target)
//!      2     16  connection_id
//!     18     32  initiator node ID
//!     50     32  target node ID
//!     82      8  issued_at (Unix seconds)
//!     90      8  expires_at (Unix seconds)
//!                -- end of header (98 bytes) --
//!     98     32  enc: HPKE encapsulated key
//!    130      2  ct_len n
//!    132      n  ct: HPKE ciphertext, tag included
//!  132+n     64  Ed25519 signature by the directory over bytes [0, 132+n)
//!                under the "openred/v1/token-envelope" context label
//! ```
//!
//! The ciphertext is HPKE (RFC 9180) base mode, suite DHKEM(X25519,
//! HKDF-SHA256) / HKDF-SHA256 / ChaCha20-Poly1305, sealed to the agreement key
//! in the recipient's signed record, with
//!
//! - `info = "openred/v1/token" || role || initiator || target`, so a token
//!   sealed for one role or one pair of nodes never opens as another, and
//! - `aad = header`, so the directory's clear-text claims (connection ID,
//!   node IDs, times) cannot be changed without breaking decryption, even by
//!   someone who could re-sign the envelope.
//!
//! The sealed plaintext is:
//!
//! ```text
//! version (1) || key_half [32] || record_len u16 || peer record bytes
//! ```
//!
//! where `key_half` is the link signing seed (initiator) or the link
//! verifying key (target), and the peer record is the other node's
//! [`SignedRecord`], byte for byte.
//!
//! # Who checks what
//!
//! - [`TokenEnvelope::decode`] parses strictly (exact lengths, no trailing
//!   bytes, known version and role) and does no cryptography.
//! - [`TokenEnvelope::verify`] checks the directory's signature.
//! - [`TokenEnvelope::open`] checks that the token is addressed to the caller
//!   *before* any public-key work, decrypts, and verifies the peer record and
//!   that it names the other party. It does not check the directory signature
//!   (call `verify` first) nor the time (call
//!   [`Introduction::check_unexpired`]); single use is the node's job.
//!
//! Like the rest of the core, nothing here reads the clock or draws random
//! bytes: the directory passes the link secret, the connection ID, the times
//! and a CSPRNG (for the HPKE ephemeral keys) in.

use std::fmt;

use hpke::aead::{AeadTag, ChaCha20Poly1305};
use hpke::inout::InOutBuf;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use zeroize::{Zeroize, Zeroizing};

use crate::id::NodeId;
use crate::keys::{
    AgreementPublicKey, IdentityKeypair, IdentityPublicKey, SignatureContext, SIGNATURE_LEN,
};
use crate::record::{SignedRecord, MAX_RECORD_LEN};
use crate::time::UnixTime;

/// The `rand_core` version whose [`CryptoRng`](rand_core::CryptoRng) the
/// minting functions take (the one `hpke` uses), re-exported so that callers
/// name the same trait without tracking hpke's dependency themselves.
pub use hpke::rand_core;

/// The envelope version this code writes and reads.
pub const TOKEN_VERSION: u8 = 1;

/// The longest an introduction may live, from `issued_at` to `expires_at`:
/// the protocol's cap. The directory refuses a configuration above it, and
/// a node refuses a token beyond it on receipt and when it opens one, so a
/// directory (compromised, or misconfigured) cannot hand out tokens that
/// outlive the tombstones kept against their replay.
pub const MAX_TOKEN_LIFETIME_S: u64 = 300;

/// How far a token's `issued_at` may be ahead of a node's clock (the
/// directory's clock being ahead): the directory's default skew for
/// records. A node's tombstones outlive the token's expiry by this much,
/// so a clock stepped back by up to it cannot reopen a replay.
pub const TOKEN_CLOCK_SKEW_S: u64 = 300;
/// The version of the sealed plaintext.
const PLAINTEXT_VERSION: u8 = 1;
/// Prefix of the HPKE `info` string; role and node IDs follow.
const HPKE_INFO_LABEL: &[u8] = b"openred/v1/token";

type Kem = X25519HkdfSha256;
type Kdf = HkdfSha256;
type Aead = ChaCha20Poly1305;

/// Length of the clear-text header (also the HPKE associated data).
pub const HEADER_LEN: usize = 1 + 1 + 16 + 32 + 32 + 8 + 8;
const ENC_LEN: usize = 32;
const CT_LEN_OFFSET: usize = HEADER_LEN + ENC_LEN;
const CT_OFFSET: usize = CT_LEN_OFFSET + 2;
/// ChaCha20-Poly1305 tag.
const TAG_LEN: usize = 16;
/// version || key_half || record_len.
const PLAINTEXT_PREFIX_LEN: usize = 1 + 32 + 2;
/// Bounds on `ct_len`: at least one record byte, at most the longest record.
const MIN_CT_LEN: usize = PLAINTEXT_PREFIX_LEN + 1 + TAG_LEN;
const MAX_CT_LEN: usize = PLAINTEXT_PREFIX_LEN + MAX_RECORD_LEN + TAG_LEN;
/// The longest encoded envelope, for size limits on the wire.
pub const MAX_ENVELOPE_LEN: usize = CT_OFFSET + MAX_CT_LEN + SIGNATURE_LEN;

/// Which side of the introduction a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// token_a: for the node that asked for the introduction (A). Carries the
    /// link signing key.
    Initiator = 1,
    /// token_b: for the node A asked to reach (B). Carries the link verifying
    /// key.
    Target = 2,
}

impl Role {
    /// The role's byte on the wire.
    pub fn to_byte(self) -> u8 {
        self as u8
    }

    /// Parses the role byte.
    pub fn from_byte(byte: u8) -> Option<Role> {
        match byte {
            1 => Some(Role::Initiator),
            2 => Some(Role::Target),
            _ => None,
        }
    }
}

/// Why a token was refused (at minting, decoding, verifying or opening).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Wrong length, a length field that does not add up, or an unknown role.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// An envelope or plaintext version this code does not know.
    #[error("unsupported token version {0}")]
    Version(u8),
    /// Initiator and target are the same node.
    #[error("a node cannot be introduced to itself")]
    SameNode,
    /// The token expires before (or when) it is issued.
    #[error("the token expires before it is issued")]
    Lifetime,
    /// The directory's signature does not verify.
    #[error("the token's directory signature does not verify")]
    Signature,
    /// The token is addressed to another node (or to the other role).
    #[error("the token is not addressed to this node")]
    WrongNode,
    /// The token is the other role's half of the pair.
    #[error("the token is the {0:?}'s, not the one this node expects")]
    WrongRole(Role),
    /// The token introduces another pair of nodes than the one asked for.
    #[error("the token introduces another pair of nodes")]
    OtherIntroduction,
    /// HPKE decryption failed: the token was altered or sealed to another key.
    #[error("the token could not be decrypted with this node's key")]
    Decrypt,
    /// The peer record inside the token is invalid or names the wrong node.
    #[error("the token's peer record is invalid or does not name the other node")]
    PeerRecord,
    /// A handshake proof does not verify with the link key.
    #[error("the handshake proof does not verify with the token's link key")]
    Proof,
    /// The token's `expires_at` has passed.
    #[error("the token expired at {0}")]
    Expired(UnixTime),
    /// The token lives longer than the protocol allows
    /// ([`MAX_TOKEN_LIFETIME_S`]), or was issued further ahead of this
    /// node's clock than [`TOKEN_CLOCK_SKEW_S`].
    #[error("the token lives from {issued_at} to {expires_at}, beyond the protocol's cap of {MAX_TOKEN_LIFETIME_S} s (clock skew {TOKEN_CLOCK_SKEW_S} s) at {now}")]
    TooLongLived {
        /// The token's `issued_at`.
        issued_at: UnixTime,
        /// The token's `expires_at`.
        expires_at: UnixTime,
        /// This node's time.
        now: UnixTime,
    },
    /// HPKE refused to seal (e.g. a recipient agreement key of low order).
    #[error("HPKE sealing failed: {0}")]
    Hpke(String),
}

/// What a node expects of a token it is handed ([`TokenEnvelope::accept`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// The half: the target receives a push, the initiator an answer.
    pub role: Role,
    /// This node.
    pub me: NodeId,
    /// The other node, when this node chose it (the initiator asked for
    /// an introduction to it); `None` for the target, which learns it
    /// from the token.
    pub peer: Option<NodeId>,
}

/// What the directory asserts about an introduction: the clear-text header
/// of both tokens (they differ only in the role byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Introduction {
    /// Random ID of this introduction; the target burns it on first use.
    pub connection_id: [u8; 16],
    /// The node that asked (A).
    pub initiator: NodeId,
    /// The node A asked to reach (B).
    pub target: NodeId,
    /// When the directory minted the tokens.
    pub issued_at: UnixTime,
    /// After this, the tokens must not be used.
    pub expires_at: UnixTime,
}

impl Introduction {
    /// Checks that the introduction has not expired at `now`.
    pub fn check_unexpired(&self, now: UnixTime) -> Result<(), TokenError> {
        if now >= self.expires_at {
            return Err(TokenError::Expired(self.expires_at));
        }
        Ok(())
    }

    /// Checks that the introduction lives at most [`MAX_TOKEN_LIFETIME_S`]
    /// from its issue, and was not issued further ahead of `now` than
    /// [`TOKEN_CLOCK_SKEW_S`]: together, it expires at most
    /// `MAX_TOKEN_LIFETIME_S + TOKEN_CLOCK_SKEW_S` after `now`. Without the
    /// second bound a token "issued" in a year would pass the first.
    pub fn check_lifetime(&self, now: UnixTime) -> Result<(), TokenError> {
        let lifetime = self.expires_at.0.saturating_sub(self.issued_at.0);
        if lifetime > MAX_TOKEN_LIFETIME_S || self.issued_at > now.plus(TOKEN_CLOCK_SKEW_S) {
            return Err(TokenError::TooLongLived {
                issued_at: self.issued_at,
                expires_at: self.expires_at,
                now,
            });
        }
        Ok(())
    }

    /// The node a token in `role` is for.
    fn addressee(&self, role: Role) -> &NodeId {
        match role {
            Role::Initiator => &self.initiator,
            Role::Target => &self.target,
        }
    }

    /// The node whose record a token in `role` carries.
    fn peer(&self, role: Role) -> &NodeId {
        match role {
            Role::Initiator => &self.target,
            Role::Target => &self.initiator,
        }
    }

    fn encode_header(&self, role: Role) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN);
        out.push(TOKEN_VERSION);
        out.push(role.to_byte());
        out.extend_from_slice(&self.connection_id);
        out.extend_from_slice(self.initiator.as_bytes());
        out.extend_from_slice(self.target.as_bytes());
        out.extend_from_slice(&self.issued_at.0.to_be_bytes());
        out.extend_from_slice(&self.expires_at.0.to_be_bytes());
        out
    }

    /// HPKE `info`: binds the key schedule to the role and both node IDs.
    fn hpke_info(&self, role: Role) -> Vec<u8> {
        let mut out = Vec::with_capacity(HPKE_INFO_LABEL.len() + 1 + 64);
        out.extend_from_slice(HPKE_INFO_LABEL);
        out.push(role.to_byte());
        out.extend_from_slice(self.initiator.as_bytes());
        out.extend_from_slice(self.target.as_bytes());
        out
    }
}

/// The two tokens of one introduction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPair {
    /// token_a, returned to the initiator.
    pub for_initiator: TokenEnvelope,
    /// token_b, pushed to the target.
    pub for_target: TokenEnvelope,
}

/// Mints the linked pair of tokens for an introduction of `initiator` to
/// `target`.
///
/// `link_secret` seeds the ephemeral Ed25519 link key and `connection_id`
/// names the introduction; both must be fresh random bytes, as must the
/// output of `rng` (used for the HPKE ephemeral keys).
#[allow(clippy::too_many_arguments)]
pub fn mint_pair(
    directory: &IdentityKeypair,
    initiator: &SignedRecord,
    target: &SignedRecord,
    connection_id: [u8; 16],
    mut link_secret: [u8; 32],
    issued_at: UnixTime,
    expires_at: UnixTime,
    rng: &mut impl rand_core::CryptoRng,
) -> Result<TokenPair, TokenError> {
    // Copy the seed into the signing key, then wipe the argument's copy; the
    // key itself zeroizes on drop.
    let link = LinkSigningKey::from_seed(&link_secret);
    link_secret.zeroize();

    let intro = Introduction {
        connection_id,
        initiator: initiator.record().node_id,
        target: target.record().node_id,
        issued_at,
        expires_at,
    };
    if intro.initiator == intro.target {
        return Err(TokenError::SameNode);
    }
    if expires_at <= issued_at {
        return Err(TokenError::Lifetime);
    }

    let for_initiator = seal_token(
        directory,
        &intro,
        Role::Initiator,
        &initiator.record().agreement_key,
        &link.seed(),
        target.as_bytes(),
        rng,
    )?;
    let for_target = seal_token(
        directory,
        &intro,
        Role::Target,
        &target.record().agreement_key,
        &link.verifying_bytes(),
        initiator.as_bytes(),
        rng,
    )?;
    Ok(TokenPair {
        for_initiator,
        for_target,
    })
}

/// Builds, seals and signs one envelope. Takes the pieces separately (rather
/// than records) so that tests can mint deliberately wrong tokens.
fn seal_token(
    directory: &IdentityKeypair,
    intro: &Introduction,
    role: Role,
    recipient: &AgreementPublicKey,
    key_half: &[u8; 32],
    peer_record: &[u8],
    rng: &mut impl rand_core::CryptoRng,
) -> Result<TokenEnvelope, TokenError> {
    let record_len =
        u16::try_from(peer_record.len()).map_err(|_| TokenError::Malformed("peer record"))?;
    let header = intro.encode_header(role);

    // The plaintext holds the link seed for the initiator, so it lives in a
    // zeroizing buffer, allocated once at its final size (a reallocation
    // would leave an unwiped copy behind). It is encrypted in place.
    let mut buffer = Zeroizing::new(Vec::with_capacity(PLAINTEXT_PREFIX_LEN + peer_record.len()));
    buffer.push(PLAINTEXT_VERSION);
    buffer.extend_from_slice(key_half);
    buffer.extend_from_slice(&record_len.to_be_bytes());
    buffer.extend_from_slice(peer_record);

    let recipient_key = <Kem as hpke::Kem>::PublicKey::from_bytes(&recipient.0)
        .map_err(|e| TokenError::Hpke(e.to_string()))?;
    let (enc, tag) = hpke::single_shot_seal_inout_detached_with_rng::<Aead, Kdf, Kem>(
        &OpModeS::Base,
        &recipient_key,
        &intro.hpke_info(role),
        InOutBuf::from(buffer.as_mut_slice()),
        &header,
        rng,
    )
    .map_err(|e| TokenError::Hpke(e.to_string()))?;

    let ct_len = buffer.len() + TAG_LEN;
    let ct_len_field = u16::try_from(ct_len).map_err(|_| TokenError::Malformed("ciphertext"))?;
    let mut out = Vec::with_capacity(CT_OFFSET + ct_len + SIGNATURE_LEN);
    out.extend_from_slice(&header);
    out.extend_from_slice(&enc.to_bytes());
    out.extend_from_slice(&ct_len_field.to_be_bytes());
    out.extend_from_slice(&buffer);
    out.extend_from_slice(&tag.to_bytes());
    let signature = directory.sign(SignatureContext::TokenEnvelope, &out);
    out.extend_from_slice(&signature);

    // Re-parse what we wrote: the envelope type then only ever holds bytes
    // that `decode` accepts, however it was made.
    TokenEnvelope::decode(&out)
}

/// A parsed (not yet verified) token envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEnvelope {
    introduction: Introduction,
    role: Role,
    bytes: Vec<u8>,
}

impl TokenEnvelope {
    /// Parses an encoded envelope. Accepts exactly one byte string per
    /// envelope (fixed offsets, exact length, no trailing bytes) and does no
    /// cryptography.
    pub fn decode(bytes: &[u8]) -> Result<TokenEnvelope, TokenError> {
        if bytes.len() < CT_OFFSET + MIN_CT_LEN + SIGNATURE_LEN {
            return Err(TokenError::Malformed("too short"));
        }
        if bytes.len() > MAX_ENVELOPE_LEN {
            return Err(TokenError::Malformed("too long"));
        }
        if bytes[0] != TOKEN_VERSION {
            return Err(TokenError::Version(bytes[0]));
        }
        let role = Role::from_byte(bytes[1]).ok_or(TokenError::Malformed("unknown role"))?;
        let ct_len = usize::from(u16::from_be_bytes([
            bytes[CT_LEN_OFFSET],
            bytes[CT_LEN_OFFSET + 1],
        ]));
        if !(MIN_CT_LEN..=MAX_CT_LEN).contains(&ct_len)
            || CT_OFFSET + ct_len + SIGNATURE_LEN != bytes.len()
        {
            return Err(TokenError::Malformed("ciphertext length"));
        }
        let introduction = Introduction {
            connection_id: array_at(bytes, 2)?,
            initiator: NodeId::from_bytes(array_at(bytes, 18)?),
            target: NodeId::from_bytes(array_at(bytes, 50)?),
            issued_at: UnixTime(u64::from_be_bytes(array_at(bytes, 82)?)),
            expires_at: UnixTime(u64::from_be_bytes(array_at(bytes, 90)?)),
        };
        // The directory never mints these, so no valid envelope has them.
        if introduction.initiator == introduction.target {
            return Err(TokenError::SameNode);
        }
        if introduction.expires_at <= introduction.issued_at {
            return Err(TokenError::Lifetime);
        }
        Ok(TokenEnvelope {
            introduction,
            role,
            bytes: bytes.to_vec(),
        })
    }

    /// The encoded envelope, to send as is.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The directory's clear-text claims. Only trustworthy after
    /// [`verify`](Self::verify) (and, for the binding to the sealed content,
    /// [`open`](Self::open)).
    pub fn introduction(&self) -> &Introduction {
        &self.introduction
    }

    /// Which side this token is for.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The introduction's connection ID (the key for single-use tracking).
    pub fn connection_id(&self) -> [u8; 16] {
        self.introduction.connection_id
    }

    fn header(&self) -> &[u8] {
        &self.bytes[..HEADER_LEN]
    }

    fn signed_part_len(&self) -> usize {
        self.bytes.len() - SIGNATURE_LEN
    }

    /// Whether a node takes this token: the one place that question is
    /// answered, for both halves of the pair (the target's route that
    /// receives a push, the initiator's directory client that receives the
    /// answer). In order: signed by `directory` (the key the node pinned),
    /// the half for `expected.role`, addressed to `expected.me` (and, for
    /// the initiator, introducing it to `expected.peer`), a lifetime within
    /// the protocol's cap, not expired at `now`. Cheap checks only: no
    /// public-key work but the one signature check, no opening (the agent
    /// opens, and checks the addressee again on its own).
    pub fn accept(
        &self,
        directory: &IdentityPublicKey,
        expected: &Expected,
        now: UnixTime,
    ) -> Result<&Introduction, TokenError> {
        self.verify(directory)?;
        if self.role() != expected.role {
            return Err(TokenError::WrongRole(self.role()));
        }
        let intro = self.introduction();
        if *intro.addressee(expected.role) != expected.me {
            return Err(TokenError::WrongNode);
        }
        if let Some(peer) = expected.peer {
            let other = match expected.role {
                Role::Initiator => &intro.target,
                Role::Target => &intro.initiator,
            };
            if *other != peer {
                return Err(TokenError::OtherIntroduction);
            }
        }
        intro.check_lifetime(now)?;
        intro.check_unexpired(now)?;
        Ok(intro)
    }

    /// Checks the directory's signature over the envelope.
    pub fn verify(&self, directory_key: &IdentityPublicKey) -> Result<(), TokenError> {
        let (signed, signature) = self.bytes.split_at(self.signed_part_len());
        directory_key
            .verify(SignatureContext::TokenEnvelope, signed, signature)
            .map_err(|_| TokenError::Signature)
    }

    /// Opens the token as node `me`, holding the X25519 secret whose public
    /// half is in `me`'s record.
    ///
    /// Does not check the directory signature ([`verify`](Self::verify)) nor
    /// expiry ([`Introduction::check_unexpired`]).
    pub fn open(
        &self,
        me: &NodeId,
        my_agreement_secret: &[u8; 32],
    ) -> Result<OpenedToken, TokenError> {
        let intro = &self.introduction;
        // Cheap check first: no public-key work for a token meant for
        // someone else (or for the other side of the introduction).
        if intro.addressee(self.role) != me {
            return Err(TokenError::WrongNode);
        }

        let enc = &self.bytes[HEADER_LEN..CT_LEN_OFFSET];
        let ct = &self.bytes[CT_OFFSET..self.signed_part_len()];
        // decode guarantees ct.len() >= MIN_CT_LEN > TAG_LEN.
        let (ct_body, tag) = ct.split_at(ct.len() - TAG_LEN);

        // Every HPKE failure is reported alike: a wrong key and a tampered
        // token must look the same to whoever probes us.
        let secret = <Kem as hpke::Kem>::PrivateKey::from_bytes(my_agreement_secret)
            .map_err(|_| TokenError::Decrypt)?;
        let enc =
            <Kem as hpke::Kem>::EncappedKey::from_bytes(enc).map_err(|_| TokenError::Decrypt)?;
        let tag = AeadTag::<Aead>::from_bytes(tag).map_err(|_| TokenError::Decrypt)?;
        // Decrypt in place in a zeroizing buffer: the initiator's plaintext
        // holds the link seed.
        let mut plaintext = Zeroizing::new(ct_body.to_vec());
        hpke::single_shot_open_inout_detached::<Aead, Kdf, Kem>(
            &OpModeR::Base,
            &secret,
            &enc,
            &intro.hpke_info(self.role),
            InOutBuf::from(plaintext.as_mut_slice()),
            self.header(),
            &tag,
        )
        .map_err(|_| TokenError::Decrypt)?;

        let (key_half, record_bytes) = parse_plaintext(&plaintext)?;
        let link = match self.role {
            Role::Initiator => LinkKey::Signing(LinkSigningKey::from_seed(&key_half)),
            Role::Target => LinkKey::Verifying(LinkVerifyingKey::from_bytes(&key_half)?),
        };
        let peer_record = SignedRecord::decode(record_bytes).map_err(|_| TokenError::PeerRecord)?;
        if &peer_record.record().node_id != intro.peer(self.role) {
            return Err(TokenError::PeerRecord);
        }
        Ok(OpenedToken {
            introduction: *intro,
            role: self.role,
            link,
            peer_record,
        })
    }
}

/// Splits the sealed plaintext into the key half and the peer record bytes.
/// The key half comes back zeroizing, as it may be the link seed.
fn parse_plaintext(plaintext: &[u8]) -> Result<(Zeroizing<[u8; 32]>, &[u8]), TokenError> {
    let (prefix, record) = plaintext
        .split_at_checked(PLAINTEXT_PREFIX_LEN)
        .ok_or(TokenError::Malformed("sealed content too short"))?;
    if prefix[0] != PLAINTEXT_VERSION {
        return Err(TokenError::Version(prefix[0]));
    }
    let key_half = Zeroizing::new(array_at::<32>(prefix, 1)?);
    let record_len = usize::from(u16::from_be_bytes(array_at(prefix, 33)?));
    if record.len() != record_len {
        return Err(TokenError::Malformed("sealed record length"));
    }
    Ok((key_half, record))
}

/// `N` bytes of `bytes` at `at`, or `Malformed` if they are not all there.
fn array_at<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], TokenError> {
    bytes
        .get(at..at.saturating_add(N))
        .and_then(|slice| slice.try_into().ok())
        .ok_or(TokenError::Malformed("truncated field"))
}

/// A token after decryption: what its holder learns.
#[derive(Debug)]
pub struct OpenedToken {
    /// The directory's claims, now known to be bound to the sealed content.
    pub introduction: Introduction,
    /// Which side the token was for.
    pub role: Role,
    /// This side's half of the link key.
    pub link: LinkKey,
    /// The other node's signed record (verified, and naming the other node).
    pub peer_record: SignedRecord,
}

/// One half of an introduction's link key.
#[derive(Debug)]
pub enum LinkKey {
    /// The initiator's half: signs the handshake proof.
    Signing(LinkSigningKey),
    /// The target's half: verifies the handshake proof.
    Verifying(LinkVerifyingKey),
}

impl LinkKey {
    /// The public half (which the handshake prologue binds), whichever half
    /// this is.
    pub fn verifying_bytes(&self) -> [u8; 32] {
        match self {
            LinkKey::Signing(key) => key.verifying_bytes(),
            LinkKey::Verifying(key) => key.verifying_bytes(),
        }
    }
}

/// The link key's signing half, carried by token_a. Zeroized on drop.
pub struct LinkSigningKey(
    // An Ed25519 key pair with the context-label signing of every other key
    // in OpenRed; ed25519-dalek's `zeroize` feature wipes it on drop.
    IdentityKeypair,
);

impl LinkSigningKey {
    fn from_seed(seed: &[u8; 32]) -> LinkSigningKey {
        LinkSigningKey(IdentityKeypair::from_secret_bytes(seed))
    }

    fn seed(&self) -> Zeroizing<[u8; 32]> {
        self.0.secret_bytes()
    }

    /// Signs the handshake hash under [`SignatureContext::HandshakeProof`],
    /// proving possession of token_a.
    pub fn sign_handshake_proof(&self, handshake_hash: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.0
            .sign(SignatureContext::HandshakeProof, handshake_hash)
    }

    /// The public half.
    pub fn verifying_key(&self) -> LinkVerifyingKey {
        LinkVerifyingKey(self.0.public())
    }

    /// The public half's 32 bytes.
    pub fn verifying_bytes(&self) -> [u8; 32] {
        self.0.public().to_bytes()
    }
}

impl fmt::Debug for LinkSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LinkSigningKey({}, secret hidden)",
            data_encoding::HEXLOWER.encode(&self.verifying_bytes())
        )
    }
}

/// The link key's verifying half, carried by token_b.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LinkVerifyingKey(IdentityPublicKey);

impl LinkVerifyingKey {
    /// Parses a link verifying key. Rejects invalid and small-order points,
    /// which no honest directory produces.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<LinkVerifyingKey, TokenError> {
        let weak = ed25519_dalek::VerifyingKey::from_bytes(bytes)
            .map(|key| key.is_weak())
            .unwrap_or(true);
        if weak {
            return Err(TokenError::Malformed("link verifying key"));
        }
        IdentityPublicKey::from_bytes(bytes)
            .map(LinkVerifyingKey)
            .map_err(|_| TokenError::Malformed("link verifying key"))
    }

    /// Checks an initiator's proof over `handshake_hash`, made under
    /// [`SignatureContext::HandshakeProof`]. Strict verification: rejects
    /// malleable signatures.
    pub fn verify_handshake_proof(
        &self,
        handshake_hash: &[u8],
        signature: &[u8],
    ) -> Result<(), TokenError> {
        self.0
            .verify(SignatureContext::HandshakeProof, handshake_hash, signature)
            .map_err(|_| TokenError::Proof)
    }

    /// The key's 32 bytes.
    pub fn verifying_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }
}

impl fmt::Debug for LinkVerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LinkVerifyingKey({})",
            data_encoding::HEXLOWER.encode(&self.verifying_bytes())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::AgreementSecret;
    use crate::record::NodeRecord;
    use crate::url::ApiUrl;
    use proptest::prelude::*;

    /// A deterministic CSPRNG for tests.
    struct TestRng;

    impl TestRng {
        #[allow(clippy::new_ret_no_self)]
        fn new(seed: u8) -> crate::random::SeededRng {
            crate::random::SeededRng::new([seed; 32])
        }
    }

    struct Node {
        key: IdentityKeypair,
        agreement: AgreementSecret,
        record: SignedRecord,
    }

    impl Node {
        fn new(seed: u8) -> Node {
            let key = IdentityKeypair::from_secret_bytes(&[seed; 32]);
            let agreement = AgreementSecret::from_secret_bytes([seed.wrapping_add(100); 32]);
            let record = NodeRecord::sign(
                &key,
                agreement.public(),
                ApiUrl::parse_origin(&format!("https://node{seed}.example.com")).unwrap(),
                1,
                UnixTime(1_000),
                UnixTime(100_000),
            );
            Node {
                key,
                agreement,
                record,
            }
        }

        fn id(&self) -> NodeId {
            self.key.node_id()
        }

        fn open(&self, token: &TokenEnvelope) -> Result<OpenedToken, TokenError> {
            token.open(&self.id(), &self.agreement.secret_bytes())
        }
    }

    const ISSUED: UnixTime = UnixTime(10_000);
    const EXPIRES: UnixTime = UnixTime(10_300);
    const HASH: &[u8] = b"noise handshake hash before message 1";

    fn directory() -> IdentityKeypair {
        IdentityKeypair::from_secret_bytes(&[42; 32])
    }

    fn mint(a: &Node, b: &Node, link: u8) -> TokenPair {
        mint_pair(
            &directory(),
            &a.record,
            &b.record,
            [link; 16],
            [link; 32],
            ISSUED,
            EXPIRES,
            &mut TestRng::new(link),
        )
        .unwrap()
    }

    /// Rewrites an envelope with `edit` and re-signs it with `key`, as a
    /// directory (or a thief holding its key) could.
    fn resign(
        token: &TokenEnvelope,
        key: &IdentityKeypair,
        edit: impl FnOnce(&mut Vec<u8>),
    ) -> TokenEnvelope {
        let mut bytes = token.as_bytes()[..token.signed_part_len()].to_vec();
        edit(&mut bytes);
        let sig = key.sign(SignatureContext::TokenEnvelope, &bytes);
        bytes.extend_from_slice(&sig);
        TokenEnvelope::decode(&bytes).unwrap()
    }

    #[test]
    fn a_token_is_accepted_only_as_its_own_half_for_its_own_nodes_while_live() {
        let (a, b, c) = (Node::new(1), Node::new(2), Node::new(3));
        let pair = mint(&a, &b, 7);
        let dir = directory().public();
        let now = UnixTime(ISSUED.0 + 10);
        let initiator = Expected {
            role: Role::Initiator,
            me: a.id(),
            peer: Some(b.id()),
        };
        let target = Expected {
            role: Role::Target,
            me: b.id(),
            peer: None,
        };
        let intro = pair.for_initiator.accept(&dir, &initiator, now).unwrap();
        assert_eq!((intro.initiator, intro.target), (a.id(), b.id()));
        pair.for_target.accept(&dir, &target, now).unwrap();
        // Forged: signed by another key.
        let thief = IdentityKeypair::from_secret_bytes(&[9; 32]).public();
        assert_eq!(
            pair.for_target.accept(&thief, &target, now),
            Err(TokenError::Signature)
        );
        // The other half, played back to the other side.
        assert_eq!(
            pair.for_initiator.accept(&dir, &target, now),
            Err(TokenError::WrongRole(Role::Initiator))
        );
        assert_eq!(
            pair.for_target.accept(&dir, &initiator, now),
            Err(TokenError::WrongRole(Role::Target))
        );
        // Wrong node: a token pushed to C, or handed to C.
        let at_c = Expected {
            me: c.id(),
            ..target
        };
        assert_eq!(
            pair.for_target.accept(&dir, &at_c, now),
            Err(TokenError::WrongNode)
        );
        // An answer introducing A to C when A asked for B.
        let asked_c = Expected {
            peer: Some(c.id()),
            ..initiator
        };
        assert_eq!(
            pair.for_initiator.accept(&dir, &asked_c, now),
            Err(TokenError::OtherIntroduction)
        );
        // Expired, at and after `expires_at`.
        for late in [EXPIRES, UnixTime(EXPIRES.0 + 1)] {
            assert_eq!(
                pair.for_target.accept(&dir, &target, late),
                Err(TokenError::Expired(EXPIRES))
            );
        }
        // Too long lived, even when signed by the directory: a token
        // "issued" far ahead of this node's clock.
        let early = UnixTime(ISSUED.0 - TOKEN_CLOCK_SKEW_S - 1);
        assert!(matches!(
            pair.for_target.accept(&dir, &target, early),
            Err(TokenError::TooLongLived { .. })
        ));
    }

    #[test]
    fn round_trip_both_roles() {
        let (a, b) = (Node::new(1), Node::new(2));
        let pair = mint(&a, &b, 7);
        let dir = directory().public();

        let token_a = TokenEnvelope::decode(pair.for_initiator.as_bytes()).unwrap();
        assert_eq!(token_a, pair.for_initiator);
        assert_eq!(token_a.role(), Role::Initiator);
        assert_eq!(token_a.connection_id(), [7; 16]);
        token_a.verify(&dir).unwrap();
        let opened_a = a.open(&token_a).unwrap();
        assert_eq!(opened_a.role, Role::Initiator);
        assert_eq!(opened_a.peer_record, b.record);
        assert!(matches!(opened_a.link, LinkKey::Signing(_)));

        let token_b = TokenEnvelope::decode(pair.for_target.as_bytes()).unwrap();
        assert_eq!(token_b.role(), Role::Target);
        token_b.verify(&dir).unwrap();
        let opened_b = b.open(&token_b).unwrap();
        assert_eq!(opened_b.role, Role::Target);
        assert_eq!(opened_b.peer_record, a.record);
        assert!(matches!(opened_b.link, LinkKey::Verifying(_)));

        let expected = Introduction {
            connection_id: [7; 16],
            initiator: a.id(),
            target: b.id(),
            issued_at: ISSUED,
            expires_at: EXPIRES,
        };
        assert_eq!(token_a.introduction(), &expected);
        assert_eq!(opened_a.introduction, expected);
        assert_eq!(opened_b.introduction, expected);
        // Both sides agree on the public half, which the prologue binds.
        assert_eq!(
            opened_a.link.verifying_bytes(),
            opened_b.link.verifying_bytes()
        );
        assert!(token_a.as_bytes().len() <= MAX_ENVELOPE_LEN);
    }

    #[test]
    fn the_two_halves_are_linked() {
        let (a, b) = (Node::new(1), Node::new(2));
        let pair = mint(&a, &b, 7);
        let other = mint(&a, &b, 8);
        let LinkKey::Signing(signing) = a.open(&pair.for_initiator).unwrap().link else {
            panic!("token_a carries the signing half");
        };
        let LinkKey::Verifying(verifying) = b.open(&pair.for_target).unwrap().link else {
            panic!("token_b carries the verifying half");
        };
        let LinkKey::Verifying(other_verifying) = b.open(&other.for_target).unwrap().link else {
            panic!("token_b carries the verifying half");
        };
        assert_eq!(signing.verifying_key(), verifying);

        let proof = signing.sign_handshake_proof(HASH);
        assert_eq!(verifying.verify_handshake_proof(HASH, &proof), Ok(()));
        assert_eq!(
            other_verifying.verify_handshake_proof(HASH, &proof),
            Err(TokenError::Proof)
        );
    }

    #[test]
    fn token_a_does_not_carry_the_seed_in_clear() {
        let (a, b) = (Node::new(1), Node::new(2));
        let pair = mint(&a, &b, 7);
        let bytes = pair.for_initiator.as_bytes();
        assert!(!bytes.windows(32).any(|w| w == [7u8; 32]));
    }

    #[test]
    fn minting_is_deterministic_given_its_inputs() {
        let (a, b) = (Node::new(1), Node::new(2));
        assert_eq!(mint(&a, &b, 7), mint(&a, &b, 7));
        assert_ne!(mint(&a, &b, 7).for_initiator, mint(&a, &b, 8).for_initiator);
    }

    #[test]
    fn a_proof_for_another_hash_or_context_fails() {
        let (a, b) = (Node::new(1), Node::new(2));
        let pair = mint(&a, &b, 7);
        let LinkKey::Signing(signing) = a.open(&pair.for_initiator).unwrap().link else {
            panic!("token_a carries the signing half");
        };
        let verifying = signing.verifying_key();
        let proof = signing.sign_handshake_proof(b"another handshake");
        assert_eq!(
            verifying.verify_handshake_proof(HASH, &proof),
            Err(TokenError::Proof)
        );
        // The same key signing the same hash under another label.
        let other_context = signing.0.sign(SignatureContext::AuthChallenge, HASH);
        assert_eq!(
            verifying.verify_handshake_proof(HASH, &other_context),
            Err(TokenError::Proof)
        );
        assert_eq!(
            verifying.verify_handshake_proof(HASH, &proof[..63]),
            Err(TokenError::Proof)
        );
    }

    #[test]
    fn an_envelope_signed_by_another_key_is_refused() {
        let (a, b) = (Node::new(1), Node::new(2));
        let pair = mint(&a, &b, 7);
        let impostor = IdentityKeypair::from_secret_bytes(&[43; 32]);
        let forged = resign(&pair.for_target, &impostor, |_| {});
        assert_eq!(forged.verify(&impostor.public()), Ok(()));
        assert_eq!(
            forged.verify(&directory().public()),
            Err(TokenError::Signature)
        );
        // And the genuine one does not verify under the impostor's key.
        assert_eq!(
            pair.for_target.verify(&impostor.public()),
            Err(TokenError::Signature)
        );
    }

    #[test]
    fn a_changed_header_fails_to_open_even_when_re_signed() {
        let (a, b) = (Node::new(1), Node::new(2));
        let pair = mint(&a, &b, 7);
        let dir = directory();
        // (field, a byte inside it): each change keeps the header well formed.
        let edits = [("connection_id", 2), ("issued_at", 89), ("expires_at", 97)];
        for (field, at) in edits {
            for (token, node) in [(&pair.for_initiator, &a), (&pair.for_target, &b)] {
                let changed = resign(token, &dir, |h| h[at] ^= 1);
                assert_eq!(changed.verify(&dir.public()), Ok(()), "{field}");
                assert_eq!(
                    node.open(&changed).unwrap_err(),
                    TokenError::Decrypt,
                    "{field}"
                );
            }
        }
    }

    #[test]
    fn a_token_opens_only_for_its_addressee() {
        let (a, b, c) = (Node::new(1), Node::new(2), Node::new(3));
        let pair = mint(&a, &b, 7);
        assert_eq!(
            b.open(&pair.for_initiator).unwrap_err(),
            TokenError::WrongNode
        );
        assert_eq!(
            c.open(&pair.for_initiator).unwrap_err(),
            TokenError::WrongNode
        );
        assert_eq!(a.open(&pair.for_target).unwrap_err(), TokenError::WrongNode);
        assert_eq!(c.open(&pair.for_target).unwrap_err(), TokenError::WrongNode);
        // The right ID with the wrong secret.
        assert_eq!(
            pair.for_target
                .open(&b.id(), &c.agreement.secret_bytes())
                .unwrap_err(),
            TokenError::Decrypt
        );
    }

    #[test]
    fn a_flipped_role_does_not_open() {
        // token_b relabelled as an initiator token, re-signed: A now passes
        // the addressee check only if it is named as initiator, which it is,
        // but the token was sealed to B's key and for the target role.
        let (a, b) = (Node::new(1), Node::new(2));
        let pair = mint(&a, &b, 7);
        let relabelled = resign(&pair.for_target, &directory(), |h| h[1] = 1);
        assert_eq!(relabelled.role(), Role::Initiator);
        assert_eq!(a.open(&relabelled).unwrap_err(), TokenError::Decrypt);
    }

    #[test]
    fn a_stolen_token_readdressed_to_the_thief_is_refused() {
        let (a, b, c) = (Node::new(1), Node::new(2), Node::new(3));
        let pair = mint(&a, &b, 7);
        // C rewrites the target to itself. It cannot re-sign as the
        // directory, so the signature no longer verifies...
        let mut bytes = pair.for_target.as_bytes().to_vec();
        bytes[50..82].copy_from_slice(c.id().as_bytes());
        let stolen = TokenEnvelope::decode(&bytes).unwrap();
        assert_eq!(
            stolen.verify(&directory().public()),
            Err(TokenError::Signature)
        );
        // ...and even skipping that check, C cannot decrypt it.
        assert_eq!(c.open(&stolen).unwrap_err(), TokenError::Decrypt);
        // Nor could it with the directory's key: HPKE is bound to B.
        let resigned = resign(&pair.for_target, &directory(), |h| {
            h[50..82].copy_from_slice(c.id().as_bytes())
        });
        assert_eq!(c.open(&resigned).unwrap_err(), TokenError::Decrypt);
    }

    #[test]
    fn a_peer_record_naming_the_wrong_node_is_refused() {
        let (a, b, c) = (Node::new(1), Node::new(2), Node::new(3));
        let intro = Introduction {
            connection_id: [7; 16],
            initiator: a.id(),
            target: b.id(),
            issued_at: ISSUED,
            expires_at: EXPIRES,
        };
        let dir = directory();
        let link = LinkSigningKey::from_seed(&[7; 32]);
        let mut rng = TestRng::new(7);
        // token_b carrying C's record instead of A's.
        let token = seal_token(
            &dir,
            &intro,
            Role::Target,
            &b.record.record().agreement_key,
            &link.verifying_bytes(),
            c.record.as_bytes(),
            &mut rng,
        )
        .unwrap();
        assert_eq!(b.open(&token).unwrap_err(), TokenError::PeerRecord);
        // A record that does not verify.
        let mut broken = a.record.as_bytes().to_vec();
        broken[100] ^= 1;
        let token = seal_token(
            &dir,
            &intro,
            Role::Target,
            &b.record.record().agreement_key,
            &link.verifying_bytes(),
            &broken,
            &mut rng,
        )
        .unwrap();
        assert_eq!(b.open(&token).unwrap_err(), TokenError::PeerRecord);
        // A verifying half that is not a usable key.
        let token = seal_token(
            &dir,
            &intro,
            Role::Target,
            &b.record.record().agreement_key,
            &[0; 32],
            a.record.as_bytes(),
            &mut rng,
        )
        .unwrap();
        assert_eq!(
            b.open(&token).unwrap_err(),
            TokenError::Malformed("link verifying key")
        );
    }

    #[test]
    fn expiry() {
        let (a, b) = (Node::new(1), Node::new(2));
        let intro = *mint(&a, &b, 7).for_target.introduction();
        assert_eq!(intro.check_unexpired(ISSUED), Ok(()));
        assert_eq!(intro.check_unexpired(EXPIRES.minus(1)), Ok(()));
        assert_eq!(
            intro.check_unexpired(EXPIRES),
            Err(TokenError::Expired(EXPIRES))
        );
        assert_eq!(
            intro.check_unexpired(EXPIRES.plus(1)),
            Err(TokenError::Expired(EXPIRES))
        );
    }

    #[test]
    fn a_token_living_beyond_the_cap_or_issued_in_the_future_is_too_long_lived() {
        let intro = |issued: u64, expires: u64| Introduction {
            connection_id: [1; 16],
            initiator: Node::new(1).record.record().node_id,
            target: Node::new(2).record.record().node_id,
            issued_at: UnixTime(issued),
            expires_at: UnixTime(expires),
        };
        let now = 1_000_000;
        let cap = MAX_TOKEN_LIFETIME_S;
        // At the cap, and issued up to the skew ahead of this node's clock.
        assert_eq!(intro(now, now + cap).check_lifetime(UnixTime(now)), Ok(()));
        let ahead = now + TOKEN_CLOCK_SKEW_S;
        assert_eq!(
            intro(ahead, ahead + cap).check_lifetime(UnixTime(now)),
            Ok(())
        );
        for (issued, expires) in [
            (now, now + cap + 1),
            (now - 3600, now + 100 * 365 * 86_400),
            // A lifetime within the cap, "issued" in a year.
            (now + 365 * 86_400, now + 365 * 86_400 + 60),
            (ahead + 1, ahead + 2),
        ] {
            assert!(
                matches!(
                    intro(issued, expires).check_lifetime(UnixTime(now)),
                    Err(TokenError::TooLongLived { .. })
                ),
                "{issued}..{expires} is refused at {now}"
            );
        }
    }

    #[test]
    fn minting_refuses_a_self_introduction_and_a_bad_lifetime() {
        let (a, b) = (Node::new(1), Node::new(2));
        let dir = directory();
        let mut rng = TestRng::new(1);
        let result = mint_pair(
            &dir, &a.record, &a.record, [1; 16], [1; 32], ISSUED, EXPIRES, &mut rng,
        );
        assert_eq!(result.unwrap_err(), TokenError::SameNode);
        for expires in [ISSUED, ISSUED.minus(1)] {
            let result = mint_pair(
                &dir, &a.record, &b.record, [1; 16], [1; 32], ISSUED, expires, &mut rng,
            );
            assert_eq!(result.unwrap_err(), TokenError::Lifetime);
        }
    }

    #[test]
    fn minting_refuses_a_low_order_agreement_key() {
        let (a, b) = (Node::new(1), Node::new(2));
        let bad = NodeRecord::sign(
            &b.key,
            AgreementPublicKey([0; 32]),
            ApiUrl::parse_origin("https://b.example.com").unwrap(),
            1,
            UnixTime(1_000),
            UnixTime(100_000),
        );
        let result = mint_pair(
            &directory(),
            &a.record,
            &bad,
            [1; 16],
            [1; 32],
            ISSUED,
            EXPIRES,
            &mut TestRng::new(1),
        );
        assert!(matches!(result, Err(TokenError::Hpke(_))));
    }

    #[test]
    fn decode_rejects_bad_version_role_and_header() {
        let (a, b) = (Node::new(1), Node::new(2));
        let good = mint(&a, &b, 7).for_target.as_bytes().to_vec();
        let with = |i: usize, v: u8| {
            let mut bytes = good.clone();
            bytes[i] = v;
            TokenEnvelope::decode(&bytes)
        };
        assert_eq!(with(0, 2).unwrap_err(), TokenError::Version(2));
        assert_eq!(
            with(1, 0).unwrap_err(),
            TokenError::Malformed("unknown role")
        );
        assert_eq!(
            with(1, 3).unwrap_err(),
            TokenError::Malformed("unknown role")
        );
        let mut same = good.clone();
        same.copy_within(18..50, 50);
        assert_eq!(
            TokenEnvelope::decode(&same).unwrap_err(),
            TokenError::SameNode
        );
        let mut lifetime = good.clone();
        lifetime.copy_within(82..90, 90);
        assert_eq!(
            TokenEnvelope::decode(&lifetime).unwrap_err(),
            TokenError::Lifetime
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn any_flipped_byte_fails_decode_or_verify(
            index in any::<prop::sample::Index>(),
            flip in 1u8..=255,
            initiator_side in any::<bool>(),
        ) {
            let (a, b) = (Node::new(1), Node::new(2));
            let pair = mint(&a, &b, 7);
            let token = if initiator_side { &pair.for_initiator } else { &pair.for_target };
            let mut bytes = token.as_bytes().to_vec();
            let i = index.index(bytes.len());
            bytes[i] ^= flip;
            let rejected = match TokenEnvelope::decode(&bytes) {
                Err(_) => true,
                Ok(t) => t.verify(&directory().public()).is_err(),
            };
            prop_assert!(rejected, "byte {} flipped by {:#x} went through", i, flip);
        }

        #[test]
        fn truncation_and_extension_fail(
            cut in 1usize..400,
            extra in prop::collection::vec(any::<u8>(), 1..10),
        ) {
            let (a, b) = (Node::new(1), Node::new(2));
            let bytes = mint(&a, &b, 7).for_initiator.as_bytes().to_vec();
            let cut = cut.min(bytes.len());
            prop_assert!(TokenEnvelope::decode(&bytes[..bytes.len() - cut]).is_err());
            let mut longer = bytes;
            longer.extend_from_slice(&extra);
            prop_assert!(TokenEnvelope::decode(&longer).is_err());
        }

        #[test]
        fn arbitrary_bytes_are_rejected_without_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..800),
        ) {
            prop_assert!(TokenEnvelope::decode(&bytes).is_err());
        }

        #[test]
        fn well_formed_garbage_never_verifies_or_opens(
            enc in any::<[u8; 32]>(),
            ct in prop::collection::vec(any::<u8>(), MIN_CT_LEN..=MAX_CT_LEN),
            signature in prop::collection::vec(any::<u8>(), SIGNATURE_LEN),
        ) {
            // A genuine header, then random contents of the right shape:
            // decode accepts it, and verify and open must fail cleanly.
            let (a, b) = (Node::new(1), Node::new(2));
            let mut bytes = mint(&a, &b, 7).for_target.as_bytes()[..HEADER_LEN].to_vec();
            bytes.extend_from_slice(&enc);
            bytes.extend_from_slice(&u16::try_from(ct.len()).unwrap().to_be_bytes());
            bytes.extend_from_slice(&ct);
            bytes.extend_from_slice(&signature);
            let token = TokenEnvelope::decode(&bytes).unwrap();
            prop_assert_eq!(token.verify(&directory().public()), Err(TokenError::Signature));
            prop_assert_eq!(b.open(&token).unwrap_err(), TokenError::Decrypt);
        }
    }
}
