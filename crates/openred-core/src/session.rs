//! The frame layer of an established session between two nodes.
//!
//! A Noise KK handshake (run by the crypto agent, outside this crate) ends
//! with a handshake hash `h` and two raw split keys, one per direction.
//! snow's own transport mode needs strictly ordered nonces and carries no
//! associated data, so it cannot serve concurrent HTTP requests; this module
//! turns those exports into independent, concurrently usable frames.
//!
//! # Specification (for review)
//!
//! **Suites.** [`Suite`] is the whole allowlist: ChaCha20-Poly1305 (id 1,
//! the default) and AES-256-GCM (id 2), both as implemented by `ring`. There is no way to name any other cipher. The suite is fixed by
//! the handshake and enters every key derivation and every frame's
//! associated data. A frame whose suite byte differs from the negotiated
//! one is refused ([`FrameError::SuiteMismatch`]); nothing ever falls back
//! to another suite.
//!
//! **Session ID.** The first 16 bytes of
//! `HKDF-SHA256(salt = h, ikm = h, info = "openred/v1/session-id")`. It is
//! public (it routes frames) and binds each frame to one handshake.
//!
//! **Keys.** Per direction `d` (1 = initiator to responder, 2 = responder to
//! initiator):
//!
//! ```text
//! key_0     = HKDF-SHA256(salt = h, ikm = split_key_d,
//!                         info = "openred/v1/frame-key" || suite || d)
//! key_{e+1} = HKDF-Expand(PRK = key_e,
//!                         info = "openred/v1/epoch-ratchet" || suite || d || be32(e+1))
//! ```
//!
//! all 32 bytes. The two directions have unrelated keys, so a frame cannot
//! be reflected back to its sender. The ratchet is one-way (HMAC-SHA256 is
//! a PRF keyed by the old key): an epoch key yields every later key but no
//! earlier one. A stolen key therefore opens no earlier epoch, but opens
//! later ones until the next handshake, which is why sessions are
//! re-handshaken on a schedule. Every key and every AEAD instance built from
//! one is zeroized when dropped, and a superseded epoch key is dropped as
//! soon as it is no longer needed.
//!
//! **Frames.**
//!
//! ```text
//! header (30 bytes, the AEAD associated data):
//!   version u8 (= 1) || suite u8 || session_id [16] || epoch be32 || seq be64
//! frame  = header || AEAD ciphertext || tag (16 bytes)
//! nonce  = 0x00000000 || be64(seq)
//! ```
//!
//! `seq` is a per-direction counter that starts at 0 and never resets, not
//! even across epochs, so a (key, nonce) pair is never used twice. A retry
//! is sealed again under a new `seq`. When `seq` would pass `u64::MAX` the
//! sender refuses to seal ([`FrameError::SeqExhausted`]) rather than wrap.
//! Sessions are never persisted: after a restart the nodes run a new
//! handshake, which gives new keys, so no counter state needs to survive.
//!
//! **Sending** ([`Sender::seal`], `&self`, many concurrent callers): `seq`
//! comes from an atomic counter; a lock guards only the epoch key. When
//! `now >= epoch_start + epoch_len` the sender ratchets to the next epoch
//! (one step, whatever the idle time, so the receiver can always follow),
//! erases the old key and stamps the new epoch in the header.
//!
//! **Receiving** ([`Receiver::open`], `&mut self`), in this order, all
//! before any decryption: header length and version; session ID; suite;
//! size; epoch, which must be the current one, the next one (its key is
//! derived as a candidate, and the receiver moves to it only once a frame
//! of that epoch authenticates), or the previous one while its grace period
//! lasts (`grace_s` from the moment the receiver moved); then the replay
//! window over `seq` (a bitmap of `replay_window` bits: a `seq` already
//! seen, or too far behind the newest one, is refused). Only then the AEAD.
//! A `seq` is marked as seen, and an epoch move made, only after the frame
//! authenticates, so forged frames can neither poison the window nor move
//! the epoch. Any change to any byte of a frame, truncation, splicing
//! between sessions or directions, or replay fails.
//!
//! **Known limits.** The HMAC and SHA-256 states used transiently during a
//! derivation are not zeroized (hmac 0.12 and sha2 0.10 do not offer it);
//! every key this module stores is.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};

use hkdf::hmac::digest::KeyInit;
use hkdf::hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::frame_cipher::FrameCipher;
use crate::time::UnixTime;

/// The frame format version this module writes and accepts.
pub const FRAME_VERSION: u8 = 1;
/// Length of the frame header.
pub const HEADER_LEN: usize = 30;
/// Length of the AEAD tag at the end of every frame.
pub const TAG_LEN: usize = 16;
/// Bytes a frame adds to its plaintext.
pub const FRAME_OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// The largest replay window a session keeps, in frames.
pub const MAX_REPLAY_WINDOW: u64 = 4096;
/// The largest plaintext a session seals or opens unless told otherwise.
pub const DEFAULT_MAX_PLAINTEXT: usize = 1024 * 1024;

const SESSION_ID_LABEL: &[u8] = b"openred/v1/session-id";
const FRAME_KEY_LABEL: &[u8] = b"openred/v1/frame-key";
const RATCHET_LABEL: &[u8] = b"openred/v1/epoch-ratchet";

/// A cipher suite: the allowlist of AEADs a session may use.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[repr(u8)]
pub enum Suite {
    /// ChaCha20-Poly1305 (RFC 8439). The default.
    #[default]
    #[serde(rename = "chacha20-poly1305")]
    ChaCha20Poly1305 = 1,
    /// AES-256-GCM.
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm = 2,
}

impl Suite {
    /// Every allowlisted suite, default first.
    pub const ALL: [Suite; 2] = [Suite::ChaCha20Poly1305, Suite::Aes256Gcm];

    /// The suite with this wire ID, if it is on the allowlist.
    pub fn from_id(id: u8) -> Option<Suite> {
        Suite::ALL.into_iter().find(|s| s.id() == id)
    }

    /// The suite with this name (as [`Suite::name`] spells it).
    pub fn from_name(name: &str) -> Option<Suite> {
        Suite::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The wire ID, as it appears in handshakes, derivations and headers.
    pub fn id(self) -> u8 {
        self as u8
    }

    /// The suite's name, for configuration and logs.
    pub fn name(self) -> &'static str {
        match self {
            Suite::ChaCha20Poly1305 => "chacha20-poly1305",
            Suite::Aes256Gcm => "aes-256-gcm",
        }
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which side of the handshake a node was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The node that sent handshake message 1.
    Initiator,
    /// The node that answered.
    Responder,
}

impl Role {
    /// The other side.
    pub fn peer(self) -> Role {
        match self {
            Role::Initiator => Role::Responder,
            Role::Responder => Role::Initiator,
        }
    }

    /// The direction this side sends in.
    pub fn sending(self) -> Direction {
        match self {
            Role::Initiator => Direction::InitiatorToResponder,
            Role::Responder => Direction::ResponderToInitiator,
        }
    }

    /// The direction this side receives in.
    pub fn receiving(self) -> Direction {
        self.peer().sending()
    }
}

/// One direction of a session; each has its own keys and counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Direction {
    /// Frames from the initiator to the responder.
    InitiatorToResponder = 1,
    /// Frames from the responder to the initiator.
    ResponderToInitiator = 2,
}

impl Direction {
    /// The byte that names the direction in key derivations.
    pub fn id(self) -> u8 {
        self as u8
    }
}

/// A session's public identifier, derived from the handshake hash.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId([u8; 16]);

impl SessionId {
    /// Derives the session ID from the handshake hash.
    pub fn from_handshake_hash(h: &[u8; 32]) -> SessionId {
        let prk = hkdf_extract(h, h);
        let okm = hkdf_expand_32(&prk, &[SESSION_ID_LABEL]);
        let mut id = [0u8; 16];
        for (dst, src) in id.iter_mut().zip(okm.iter()) {
            *dst = *src;
        }
        SessionId(id)
    }

    /// Wraps raw ID bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> SessionId {
        SessionId(bytes)
    }

    /// The ID's bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// A textual session ID was not 32 hexadecimal digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a session ID is 32 hexadecimal digits")]
pub struct SessionIdError;

impl FromStr for SessionId {
    type Err = SessionIdError;

    fn from_str(s: &str) -> Result<SessionId, SessionIdError> {
        let bytes = data_encoding::HEXLOWER_PERMISSIVE
            .decode(s.as_bytes())
            .map_err(|_| SessionIdError)?;
        let bytes: [u8; 16] = bytes.try_into().map_err(|_| SessionIdError)?;
        Ok(SessionId(bytes))
    }
}

/// Why a frame was not sealed or not opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than a header and a tag.
    #[error("frame truncated: {len} bytes, at least {FRAME_OVERHEAD} needed")]
    Truncated {
        /// The frame's length.
        len: usize,
    },
    /// A frame format this node does not speak.
    #[error("unsupported frame version {0}")]
    Version(u8),
    /// The suite byte names no allowlisted suite.
    #[error("unknown cipher suite {0}")]
    UnknownSuite(u8),
    /// The frame belongs to another session.
    #[error("the frame belongs to another session")]
    WrongSession,
    /// The frame names another suite than the negotiated one: a downgrade
    /// attempt or a confused peer. There is no fallback.
    #[error("cipher suite mismatch: the session uses {expected}, the frame claims {found}")]
    SuiteMismatch {
        /// The negotiated suite.
        expected: Suite,
        /// The suite the frame names.
        found: Suite,
    },
    /// The frame's epoch is neither current, next, nor a previous one still
    /// in its grace period.
    #[error("frame epoch {epoch} not accepted (receiver at epoch {current})")]
    EpochRejected {
        /// The epoch the frame claims.
        epoch: u32,
        /// The receiver's current epoch.
        current: u32,
    },
    /// This sequence number was already received.
    #[error("replayed frame (seq {seq})")]
    Replay {
        /// The frame's sequence number.
        seq: u64,
    },
    /// This sequence number is too far behind to tell whether it was seen.
    #[error("frame too old (seq {seq}, newest {newest}, window {window})")]
    TooOld {
        /// The frame's sequence number.
        seq: u64,
        /// The newest sequence number received.
        newest: u64,
        /// The replay window, in frames.
        window: u64,
    },
    /// The frame does not authenticate: altered, forged, or under another key.
    #[error("frame does not authenticate")]
    Authentication,
    /// The sender used up its sequence numbers; a new handshake is needed.
    #[error("sequence numbers exhausted: the session needs a new handshake")]
    SeqExhausted,
    /// The plaintext exceeds the session's limit.
    #[error("frame too large: {len} bytes of plaintext, at most {max}")]
    TooLarge {
        /// The plaintext length (for an incoming frame, its upper bound).
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// A parsed frame header, read before any cryptography.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Frame format version (always [`FRAME_VERSION`] once parsed).
    pub version: u8,
    /// The suite the frame claims.
    pub suite: Suite,
    /// The session the frame claims to belong to.
    pub session_id: SessionId,
    /// The sender's epoch.
    pub epoch: u32,
    /// The sender's sequence number in this direction.
    pub seq: u64,
}

impl FrameHeader {
    /// Splits a frame into its header and the AEAD ciphertext (tag
    /// included), so a receiver can find the session before any crypto.
    /// Checks only the length, the version and that the suite is known.
    pub fn parse(frame: &[u8]) -> Result<(FrameHeader, &[u8]), FrameError> {
        if frame.len() < FRAME_OVERHEAD {
            return Err(FrameError::Truncated { len: frame.len() });
        }
        let (header, body) = frame.split_at(HEADER_LEN);
        let header: &[u8; HEADER_LEN] = header
            .try_into()
            .map_err(|_| FrameError::Truncated { len: frame.len() })?;
        let [version, suite, rest @ ..] = header;
        if *version != FRAME_VERSION {
            return Err(FrameError::Version(*version));
        }
        let suite = Suite::from_id(*suite).ok_or(FrameError::UnknownSuite(*suite))?;
        let mut session_id = [0u8; 16];
        let mut epoch = [0u8; 4];
        let mut seq = [0u8; 8];
        let fields = session_id
            .iter_mut()
            .chain(epoch.iter_mut())
            .chain(seq.iter_mut());
        for (dst, src) in fields.zip(rest) {
            *dst = *src;
        }
        let header = FrameHeader {
            version: *version,
            suite,
            session_id: SessionId(session_id),
            epoch: u32::from_be_bytes(epoch),
            seq: u64::from_be_bytes(seq),
        };
        Ok((header, body))
    }

    /// The header's wire form, which is also the frame's associated data.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let fields = [self.version, self.suite.id()]
            .into_iter()
            .chain(self.session_id.0)
            .chain(self.epoch.to_be_bytes())
            .chain(self.seq.to_be_bytes());
        for (dst, src) in out.iter_mut().zip(fields) {
            *dst = src;
        }
        out
    }
}

/// Epoch timing and the replay window of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EpochConfig {
    /// How long the sender stays in one epoch, in seconds (at least 1).
    pub epoch_len_s: u64,
    /// How long the receiver still accepts the previous epoch after moving
    /// on, in seconds: frames sealed just before a move may arrive late.
    pub grace_s: u64,
    /// How many sequence numbers behind the newest one a frame may be and
    /// still be accepted (1 to [`MAX_REPLAY_WINDOW`]).
    pub replay_window: u64,
}

impl Default for EpochConfig {
    fn default() -> EpochConfig {
        EpochConfig {
            epoch_len_s: 3600,
            grace_s: 120,
            replay_window: 1024,
        }
    }
}

impl EpochConfig {
    /// The configuration a session actually uses: values out of range are
    /// clamped, since an epoch of 0 s would ratchet on every frame and a
    /// window of 0 would refuse everything out of order.
    pub fn normalized(self) -> EpochConfig {
        EpochConfig {
            epoch_len_s: self.epoch_len_s.max(1),
            grace_s: self.grace_s,
            replay_window: self.replay_window.clamp(1, MAX_REPLAY_WINDOW),
        }
    }
}

/// The epoch-0 key of one direction.
pub fn initial_epoch_key(
    h: &[u8; 32],
    split_key: &[u8; 32],
    suite: Suite,
    direction: Direction,
) -> Zeroizing<[u8; 32]> {
    let prk = hkdf_extract(h, split_key);
    hkdf_expand_32(&prk, &[FRAME_KEY_LABEL, &[suite.id(), direction.id()]])
}

/// The key of epoch `next_epoch`, from the key of the epoch before it.
pub fn ratchet_epoch_key(
    key: &[u8; 32],
    suite: Suite,
    direction: Direction,
    next_epoch: u32,
) -> Zeroizing<[u8; 32]> {
    hkdf_expand_32(
        key,
        &[
            RATCHET_LABEL,
            &[suite.id(), direction.id()],
            &next_epoch.to_be_bytes(),
        ],
    )
}

/// The key of `epoch` in one direction, ratcheting from epoch 0. Costs one
/// HMAC per epoch: for tests and tools, never with an epoch from the wire.
pub fn derive_epoch_key(
    h: &[u8; 32],
    split_key: &[u8; 32],
    suite: Suite,
    direction: Direction,
    epoch: u32,
) -> Zeroizing<[u8; 32]> {
    let mut key = initial_epoch_key(h, split_key, suite, direction);
    for e in 1..=epoch {
        key = ratchet_epoch_key(&key, suite, direction, e);
    }
    key
}

/// HMAC-SHA256 under a 32-byte key.
fn hmac_sha256(key: &[u8; 32], parts: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    // HMAC zero-pads a key shorter than the hash block (RFC 2104 section 2),
    // so keying with the padded 64-byte block is HMAC under `key` itself,
    // through the constructor that has no error path.
    let mut block = hkdf::hmac::digest::Key::<Hmac<Sha256>>::default();
    for (dst, src) in block.iter_mut().zip(key) {
        *dst = *src;
    }
    let mut mac = <Hmac<Sha256> as KeyInit>::new(&block);
    block.as_mut_slice().zeroize();
    for part in parts {
        mac.update(part);
    }
    let mut tag = mac.finalize().into_bytes();
    let mut out = Zeroizing::new([0u8; 32]);
    for (dst, src) in out.iter_mut().zip(tag.iter()) {
        *dst = *src;
    }
    tag.as_mut_slice().zeroize();
    out
}

/// HKDF-Extract (RFC 5869 section 2.2) with a 32-byte salt.
fn hkdf_extract(salt: &[u8; 32], ikm: &[u8]) -> Zeroizing<[u8; 32]> {
    hmac_sha256(salt, &[ikm])
}

/// HKDF-Expand (RFC 5869 section 2.3) to 32 bytes, i.e. one block:
/// `T(1) = HMAC(PRK, info || 0x01)`. Written out because the `hkdf` crate's
/// `expand` returns an error for lengths that cannot occur here.
fn hkdf_expand_32(prk: &[u8; 32], info: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let mut parts: Vec<&[u8]> = Vec::with_capacity(info.len() + 1);
    parts.extend_from_slice(info);
    parts.push(&[1]);
    hmac_sha256(prk, &parts)
}

/// An epoch's key, kept to ratchet forward, and its AEAD instance.
struct EpochKeys {
    epoch: u32,
    key: Zeroizing<[u8; 32]>,
    cipher: FrameCipher,
}

impl EpochKeys {
    fn new(suite: Suite, epoch: u32, key: Zeroizing<[u8; 32]>) -> EpochKeys {
        let cipher = FrameCipher::new(suite, &key);
        EpochKeys { epoch, key, cipher }
    }

    /// The next epoch's keys, or `None` at the last representable epoch.
    fn next(&self, suite: Suite, direction: Direction) -> Option<EpochKeys> {
        let epoch = self.epoch.checked_add(1)?;
        let key = ratchet_epoch_key(&self.key, suite, direction, epoch);
        Some(EpochKeys::new(suite, epoch, key))
    }
}

/// The sender's epoch: its keys and when it began.
struct SendEpoch {
    keys: EpochKeys,
    started: UnixTime,
}

impl SendEpoch {
    fn due(&self, now: UnixTime, epoch_len_s: u64) -> bool {
        now >= self.started.plus(epoch_len_s) && self.keys.epoch < u32::MAX
    }
}

/// The sending half of a session. Shared by reference between concurrent
/// requests. Deliberately not `Clone`: two copies would reuse sequence
/// numbers, hence nonces.
pub struct Sender {
    session_id: SessionId,
    suite: Suite,
    role: Role,
    epoch_len_s: u64,
    max_plaintext: usize,
    next_seq: AtomicU64,
    sent: AtomicU64,
    state: RwLock<SendEpoch>,
}

impl Sender {
    /// Seals `plaintext` into a frame, ratcheting to the next epoch first if
    /// the current one has lasted `epoch_len_s` by `now`.
    pub fn seal(&self, plaintext: &[u8], now: UnixTime) -> Result<Vec<u8>, FrameError> {
        self.seal_bound(plaintext, &[], now)
    }

    /// As [`Sender::seal`], with `bound` appended to the header in the
    /// associated data (not sent): the frame opens only with
    /// [`Receiver::open_bound`] and the same bytes. An answer binds its
    /// request's identity this way.
    pub fn seal_bound(
        &self,
        plaintext: &[u8],
        bound: &[u8],
        now: UnixTime,
    ) -> Result<Vec<u8>, FrameError> {
        if plaintext.len() > self.max_plaintext {
            return Err(FrameError::TooLarge {
                len: plaintext.len(),
                max: self.max_plaintext,
            });
        }
        // A CAS loop rather than `fetch_add`: `fetch_add` would wrap at
        // u64::MAX and hand out seq 0 again, i.e. a repeated nonce.
        let seq = self
            .next_seq
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| s.checked_add(1))
            .map_err(|_| FrameError::SeqExhausted)?;

        let state = self.read_state();
        let state = if state.due(now, self.epoch_len_s) {
            drop(state);
            self.advance(now);
            self.read_state()
        } else {
            state
        };

        let header = FrameHeader {
            version: FRAME_VERSION,
            suite: self.suite,
            session_id: self.session_id,
            epoch: state.keys.epoch,
            seq,
        };
        let mut frame = Vec::with_capacity(FRAME_OVERHEAD + plaintext.len());
        frame.extend_from_slice(&header.to_bytes());
        frame.extend_from_slice(plaintext);
        let (header_bytes, body) = frame.split_at_mut(HEADER_LEN);
        let tag = if bound.is_empty() {
            state.keys.cipher.encrypt(seq, header_bytes, body)
        } else {
            // The header has a fixed length, so header || bound never
            // equals another frame's header alone.
            let aad = [&header_bytes[..], bound].concat();
            state.keys.cipher.encrypt(seq, &aad, body)
        };
        drop(state);
        let tag = tag.map_err(|_| {
            frame.zeroize();
            FrameError::TooLarge {
                len: plaintext.len(),
                max: self.max_plaintext,
            }
        })?;
        frame.extend_from_slice(&tag);
        self.sent.fetch_add(1, Ordering::Relaxed);
        Ok(frame)
    }

    /// Ratchets once, unless another caller already did.
    fn advance(&self, now: UnixTime) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        if !state.due(now, self.epoch_len_s) {
            return;
        }
        if let Some(keys) = state.keys.next(self.suite, self.role.sending()) {
            // Assigning drops, hence zeroizes, the old epoch's key.
            *state = SendEpoch { keys, started: now };
        }
    }

    // The state is replaced in a single assignment, so it is consistent even
    // if a holder panicked: recovering from poisoning is safe.
    fn read_state(&self) -> RwLockReadGuard<'_, SendEpoch> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The session's ID.
    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    /// The negotiated suite.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// This node's role in the handshake.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The epoch new frames are sealed in (before any ratchet `seal` may do).
    pub fn epoch(&self) -> u32 {
        self.read_state().keys.epoch
    }

    /// Frames sealed so far.
    pub fn frames_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// The largest plaintext this sender seals.
    pub fn max_plaintext(&self) -> usize {
        self.max_plaintext
    }
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("session_id", &self.session_id)
            .field("suite", &self.suite)
            .field("role", &self.role)
            .field("epoch", &self.epoch())
            .field("frames_sent", &self.frames_sent())
            .finish_non_exhaustive()
    }
}

/// A sliding window over received sequence numbers.
struct ReplayWindow {
    /// How far behind `newest` a seq may be.
    size: u64,
    /// The highest authenticated seq, if any.
    newest: Option<u64>,
    /// A ring of bits indexed by `seq % (64 * bits.len())`; its capacity is
    /// at least `size`, so every seq inside the window has its own bit.
    bits: Vec<u64>,
}

impl ReplayWindow {
    fn new(size: u64) -> ReplayWindow {
        let words = usize::try_from(size.div_ceil(64)).unwrap_or(1).max(1);
        ReplayWindow {
            size,
            newest: None,
            bits: vec![0; words],
        }
    }

    fn capacity(&self) -> u64 {
        64 * self.bits.len() as u64
    }

    fn slot(&self, seq: u64) -> (usize, u64) {
        let index = seq % self.capacity();
        // `index` is below `capacity`, which came from a `usize`.
        let word = usize::try_from(index / 64).unwrap_or(0);
        (word, 1u64 << (index % 64))
    }

    fn is_set(&self, seq: u64) -> bool {
        let (word, mask) = self.slot(seq);
        self.bits.get(word).is_some_and(|w| w & mask != 0)
    }

    fn assign(&mut self, seq: u64, value: bool) {
        let (word, mask) = self.slot(seq);
        if let Some(w) = self.bits.get_mut(word) {
            if value {
                *w |= mask;
            } else {
                *w &= !mask;
            }
        }
    }

    /// Whether `seq` may be accepted. Changes nothing.
    fn check(&self, seq: u64) -> Result<(), FrameError> {
        let Some(newest) = self.newest else {
            return Ok(());
        };
        if seq > newest {
            return Ok(());
        }
        if newest - seq >= self.size {
            return Err(FrameError::TooOld {
                seq,
                newest,
                window: self.size,
            });
        }
        if self.is_set(seq) {
            return Err(FrameError::Replay { seq });
        }
        Ok(())
    }

    /// Records `seq` as received. Call only after the frame authenticated.
    fn mark(&mut self, seq: u64) {
        match self.newest {
            Some(newest) if seq <= newest => {}
            Some(newest) => {
                // Slots between the old and new newest now stand for
                // sequence numbers not yet seen.
                if seq - newest >= self.capacity() {
                    self.bits.iter_mut().for_each(|w| *w = 0);
                } else {
                    for s in newest + 1..seq {
                        self.assign(s, false);
                    }
                }
                self.newest = Some(seq);
            }
            None => self.newest = Some(seq),
        }
        self.assign(seq, true);
    }
}

/// The previous epoch's AEAD, kept for late frames until `until`.
struct PreviousEpoch {
    epoch: u32,
    cipher: FrameCipher,
    until: UnixTime,
}

/// Which key a frame needs, decided from its header alone.
enum KeyChoice {
    Current,
    Next,
    Previous,
}

/// The receiving half of a session. Needs exclusive access: wrap it in a
/// `Mutex` (or use [`Session::open`], which does).
pub struct Receiver {
    session_id: SessionId,
    suite: Suite,
    role: Role,
    grace_s: u64,
    max_plaintext: usize,
    current: EpochKeys,
    previous: Option<PreviousEpoch>,
    window: ReplayWindow,
    received: u64,
}

impl Receiver {
    /// Checks and decrypts one frame; see the module documentation for the
    /// order of checks. On error nothing changes, except that a previous
    /// epoch whose grace ended by `now` is erased.
    pub fn open(&mut self, frame: &[u8], now: UnixTime) -> Result<Vec<u8>, FrameError> {
        self.open_bound(frame, &[], now)
    }

    /// As [`Receiver::open`], for a frame sealed with
    /// [`Sender::seal_bound`] and `bound`; any other `bound` fails
    /// authentication, and a failed frame marks nothing seen.
    pub fn open_bound(
        &mut self,
        frame: &[u8],
        bound: &[u8],
        now: UnixTime,
    ) -> Result<Vec<u8>, FrameError> {
        let (header, body) = FrameHeader::parse(frame)?;
        if header.session_id != self.session_id {
            return Err(FrameError::WrongSession);
        }
        if header.suite != self.suite {
            return Err(FrameError::SuiteMismatch {
                expected: self.suite,
                found: header.suite,
            });
        }
        let ciphertext_len = body.len().saturating_sub(TAG_LEN);
        if ciphertext_len > self.max_plaintext {
            return Err(FrameError::TooLarge {
                len: ciphertext_len,
                max: self.max_plaintext,
            });
        }

        self.erase_expired(now);
        let choice = if header.epoch == self.current.epoch {
            KeyChoice::Current
        } else if Some(header.epoch) == self.current.epoch.checked_add(1) {
            KeyChoice::Next
        } else if self
            .previous
            .as_ref()
            .is_some_and(|p| p.epoch == header.epoch)
        {
            KeyChoice::Previous
        } else {
            return Err(FrameError::EpochRejected {
                epoch: header.epoch,
                current: self.current.epoch,
            });
        };

        self.window.check(header.seq)?;

        let (ciphertext, tag) = body.split_at(ciphertext_len);
        let tag: &[u8; TAG_LEN] = tag
            .try_into()
            .map_err(|_| FrameError::Truncated { len: frame.len() })?;
        let header_bytes = frame
            .get(..HEADER_LEN)
            .ok_or(FrameError::Truncated { len: frame.len() })?;
        let bound_aad;
        let aad = if bound.is_empty() {
            header_bytes
        } else {
            bound_aad = [header_bytes, bound].concat();
            &bound_aad[..]
        };

        let next = match choice {
            KeyChoice::Next => self.current.next(self.suite, self.role.receiving()),
            KeyChoice::Current | KeyChoice::Previous => None,
        };
        let cipher = match (&choice, &next, &self.previous) {
            (KeyChoice::Current, _, _) => &self.current.cipher,
            (KeyChoice::Next, Some(next), _) => &next.cipher,
            (KeyChoice::Previous, _, Some(previous)) => &previous.cipher,
            // Unreachable by construction of `choice`; refuse rather than
            // guess a key.
            _ => {
                return Err(FrameError::EpochRejected {
                    epoch: header.epoch,
                    current: self.current.epoch,
                })
            }
        };
        let mut plaintext = ciphertext.to_vec();
        if cipher
            .decrypt(header.seq, aad, &mut plaintext, tag)
            .is_err()
        {
            plaintext.zeroize();
            return Err(FrameError::Authentication);
        }

        // Authenticated: only now may the frame change any state.
        self.window.mark(header.seq);
        self.received = self.received.saturating_add(1);
        if let Some(next) = next {
            let old = std::mem::replace(&mut self.current, next);
            // The old epoch's raw key is dropped (zeroized) here; only its
            // AEAD instance stays, and only for the grace period.
            self.previous = Some(PreviousEpoch {
                epoch: old.epoch,
                cipher: old.cipher,
                until: now.plus(self.grace_s),
            });
        }
        Ok(plaintext)
    }

    /// Erases the previous epoch's key if its grace period ended by `now`.
    /// [`Receiver::open`] calls it; a lifecycle task may too, so an idle
    /// session does not keep an old key longer than needed.
    pub fn erase_expired(&mut self, now: UnixTime) {
        if self.previous.as_ref().is_some_and(|p| now >= p.until) {
            self.previous = None;
        }
    }

    /// The session's ID.
    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    /// The negotiated suite.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// This node's role in the handshake.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The newest epoch an authenticated frame has moved the receiver to.
    pub fn epoch(&self) -> u32 {
        self.current.epoch
    }

    /// The previous epoch, while it is still accepted.
    pub fn previous_epoch(&self) -> Option<u32> {
        self.previous.as_ref().map(|p| p.epoch)
    }

    /// Frames opened successfully so far.
    pub fn frames_received(&self) -> u64 {
        self.received
    }
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("session_id", &self.session_id)
            .field("suite", &self.suite)
            .field("role", &self.role)
            .field("epoch", &self.current.epoch)
            .field("previous_epoch", &self.previous_epoch())
            .field("frames_received", &self.received)
            .finish_non_exhaustive()
    }
}

/// An established session: a [`Sender`] and a [`Receiver`]. `Sync`, so it
/// can be shared (e.g. in an `Arc`) between concurrent requests: sealing
/// runs in parallel, opening takes an internal lock.
pub struct Session {
    sender: Sender,
    receiver: Mutex<Receiver>,
}

impl Session {
    /// Builds the frame layer from what the finished handshake exports.
    /// `now` starts the sender's first epoch. Out-of-range `config` values
    /// are clamped (see [`EpochConfig::normalized`]).
    pub fn new(
        role: Role,
        suite: Suite,
        h: &[u8; 32],
        split_i2r: &[u8; 32],
        split_r2i: &[u8; 32],
        now: UnixTime,
        config: EpochConfig,
    ) -> Session {
        let config = config.normalized();
        let session_id = SessionId::from_handshake_hash(h);
        let split_for = |direction| match direction {
            Direction::InitiatorToResponder => split_i2r,
            Direction::ResponderToInitiator => split_r2i,
        };
        let send_dir = role.sending();
        let recv_dir = role.receiving();
        let send_keys = EpochKeys::new(
            suite,
            0,
            initial_epoch_key(h, split_for(send_dir), suite, send_dir),
        );
        let recv_keys = EpochKeys::new(
            suite,
            0,
            initial_epoch_key(h, split_for(recv_dir), suite, recv_dir),
        );
        Session {
            sender: Sender {
                session_id,
                suite,
                role,
                epoch_len_s: config.epoch_len_s,
                max_plaintext: DEFAULT_MAX_PLAINTEXT,
                next_seq: AtomicU64::new(0),
                sent: AtomicU64::new(0),
                state: RwLock::new(SendEpoch {
                    keys: send_keys,
                    started: now,
                }),
            },
            receiver: Mutex::new(Receiver {
                session_id,
                suite,
                role,
                grace_s: config.grace_s,
                max_plaintext: DEFAULT_MAX_PLAINTEXT,
                current: recv_keys,
                previous: None,
                window: ReplayWindow::new(config.replay_window),
                received: 0,
            }),
        }
    }

    /// Sets the largest plaintext sealed or opened, in both directions
    /// (default [`DEFAULT_MAX_PLAINTEXT`]).
    pub fn with_max_plaintext(mut self, max: usize) -> Session {
        self.sender.max_plaintext = max;
        self.receiver_mut().max_plaintext = max;
        self
    }

    /// Seals a frame; see [`Sender::seal`].
    pub fn seal(&self, plaintext: &[u8], now: UnixTime) -> Result<Vec<u8>, FrameError> {
        self.sender.seal(plaintext, now)
    }

    /// Opens a frame under the receiver's lock; see [`Receiver::open`].
    pub fn open(&self, frame: &[u8], now: UnixTime) -> Result<Vec<u8>, FrameError> {
        self.lock_receiver().open(frame, now)
    }

    /// Seals a frame bound to `bound`; see [`Sender::seal_bound`].
    pub fn seal_bound(
        &self,
        plaintext: &[u8],
        bound: &[u8],
        now: UnixTime,
    ) -> Result<Vec<u8>, FrameError> {
        self.sender.seal_bound(plaintext, bound, now)
    }

    /// Opens a frame bound to `bound`; see [`Receiver::open_bound`].
    pub fn open_bound(
        &self,
        frame: &[u8],
        bound: &[u8],
        now: UnixTime,
    ) -> Result<Vec<u8>, FrameError> {
        self.lock_receiver().open_bound(frame, bound, now)
    }

    /// Erases an expired previous epoch; see [`Receiver::erase_expired`].
    pub fn erase_expired(&self, now: UnixTime) {
        self.lock_receiver().erase_expired(now)
    }

    /// The sending half.
    pub fn sender(&self) -> &Sender {
        &self.sender
    }

    /// The receiving half, locked.
    pub fn lock_receiver(&self) -> MutexGuard<'_, Receiver> {
        // `open` changes the receiver only after every fallible step, in
        // assignments that cannot panic: a poisoned lock still guards a
        // consistent receiver.
        self.receiver.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The receiving half, without locking.
    pub fn receiver_mut(&mut self) -> &mut Receiver {
        self.receiver
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Splits the session into its halves, to be owned separately.
    pub fn into_split(self) -> (Sender, Receiver) {
        let receiver = self
            .receiver
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        (self.sender, receiver)
    }

    /// The session's ID.
    pub fn session_id(&self) -> SessionId {
        self.sender.session_id
    }

    /// The negotiated suite.
    pub fn suite(&self) -> Suite {
        self.sender.suite
    }

    /// This node's role in the handshake.
    pub fn role(&self) -> Role {
        self.sender.role
    }

    /// The epoch this node seals in.
    pub fn send_epoch(&self) -> u32 {
        self.sender.epoch()
    }

    /// The epoch this node's receiver has moved to.
    pub fn recv_epoch(&self) -> u32 {
        self.lock_receiver().epoch()
    }

    /// Frames sealed so far.
    pub fn frames_sent(&self) -> u64 {
        self.sender.frames_sent()
    }

    /// Frames opened successfully so far.
    pub fn frames_received(&self) -> u64 {
        self.lock_receiver().frames_received()
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("sender", &self.sender)
            .field("receiver", &*self.lock_receiver())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    const T0: UnixTime = UnixTime(1_700_000_000);
    const H: [u8; 32] = [7; 32];
    const I2R: [u8; 32] = [0x11; 32];
    const R2I: [u8; 32] = [0x22; 32];

    fn pair_with(suite: Suite, h: &[u8; 32], config: EpochConfig) -> (Session, Session) {
        (
            Session::new(Role::Initiator, suite, h, &I2R, &R2I, T0, config),
            Session::new(Role::Responder, suite, h, &I2R, &R2I, T0, config),
        )
    }

    fn pair(suite: Suite) -> (Session, Session) {
        pair_with(suite, &H, EpochConfig::default())
    }

    fn suite_from(aes: bool) -> Suite {
        if aes {
            Suite::Aes256Gcm
        } else {
            Suite::ChaCha20Poly1305
        }
    }

    /// Rewrites header fields of a sealed frame (no re-encryption).
    fn with_header(frame: &[u8], edit: impl FnOnce(&mut FrameHeader)) -> Vec<u8> {
        let (mut header, body) = FrameHeader::parse(frame).unwrap();
        edit(&mut header);
        let mut out = header.to_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    fn header_of(frame: &[u8]) -> FrameHeader {
        FrameHeader::parse(frame).unwrap().0
    }

    #[test]
    fn a_bound_frame_opens_only_with_its_binding_and_a_failure_marks_nothing() {
        for suite in Suite::ALL {
            let (a, b) = pair(suite);
            let first = b.seal_bound(b"one", b"request 1", T0).unwrap();
            let second = b.seal_bound(b"two", b"request 2", T0).unwrap();
            // Swapped, unbound, or bound to nothing: refused, seen nowhere.
            assert_eq!(
                a.open_bound(&first, b"request 2", T0),
                Err(FrameError::Authentication)
            );
            assert_eq!(
                a.open_bound(&second, b"request 1", T0),
                Err(FrameError::Authentication)
            );
            assert_eq!(a.open(&first, T0), Err(FrameError::Authentication));
            let plain = b.seal(b"plain", T0).unwrap();
            assert_eq!(
                a.open_bound(&plain, b"request 1", T0),
                Err(FrameError::Authentication)
            );
            // Each with its own binding: once.
            assert_eq!(a.open_bound(&first, b"request 1", T0).unwrap(), b"one");
            assert_eq!(a.open_bound(&second, b"request 2", T0).unwrap(), b"two");
            assert!(a.open_bound(&first, b"request 1", T0).is_err());
            assert_eq!(a.open(&plain, T0).unwrap(), b"plain");
        }
    }

    #[test]
    fn suites_are_a_closed_allowlist() {
        assert_eq!(Suite::default(), Suite::ChaCha20Poly1305);
        assert_eq!(Suite::ChaCha20Poly1305.id(), 1);
        assert_eq!(Suite::Aes256Gcm.id(), 2);
        for suite in Suite::ALL {
            assert_eq!(Suite::from_id(suite.id()), Some(suite));
            assert_eq!(Suite::from_name(suite.name()), Some(suite));
            assert_eq!(suite.to_string(), suite.name());
        }
        for id in (0..=u8::MAX).filter(|id| ![1, 2].contains(id)) {
            assert_eq!(Suite::from_id(id), None, "id {id}");
        }
        assert_eq!(Suite::from_name("des"), None);
        let parsed: Suite = serde_json::from_str("\"aes-256-gcm\"").unwrap();
        assert_eq!(parsed, Suite::Aes256Gcm);
        assert!(serde_json::from_str::<Suite>("\"rot13\"").is_err());
    }

    #[test]
    fn session_id_is_derived_from_h_and_round_trips_as_hex() {
        let id = SessionId::from_handshake_hash(&H);
        let hk = hkdf::Hkdf::<Sha256>::new(Some(&H), &H);
        let mut expected = [0u8; 16];
        hk.expand(b"openred/v1/session-id", &mut expected).unwrap();
        assert_eq!(id.as_bytes(), &expected);
        assert_ne!(id, SessionId::from_handshake_hash(&[8; 32]));

        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text, text.to_lowercase());
        assert_eq!(text.parse::<SessionId>(), Ok(id));
        assert_eq!(text.to_uppercase().parse::<SessionId>(), Ok(id));
        assert_eq!(text[..30].parse::<SessionId>(), Err(SessionIdError));
        assert_eq!(
            format!("{text}00").parse::<SessionId>(),
            Err(SessionIdError)
        );
        assert_eq!("zz".repeat(16).parse::<SessionId>(), Err(SessionIdError));
        assert_eq!(SessionId::from_bytes(*id.as_bytes()), id);
    }

    #[test]
    fn key_schedule_is_rfc5869_hkdf() {
        for suite in Suite::ALL {
            for direction in [
                Direction::InitiatorToResponder,
                Direction::ResponderToInitiator,
            ] {
                let hk = hkdf::Hkdf::<Sha256>::new(Some(&H), &I2R);
                let mut k0 = [0u8; 32];
                hk.expand_multi_info(
                    &[b"openred/v1/frame-key", &[suite.id(), direction.id()]],
                    &mut k0,
                )
                .unwrap();
                assert_eq!(*initial_epoch_key(&H, &I2R, suite, direction), k0);

                let hk = hkdf::Hkdf::<Sha256>::from_prk(&k0).unwrap();
                let mut k1 = [0u8; 32];
                hk.expand_multi_info(
                    &[
                        b"openred/v1/epoch-ratchet",
                        &[suite.id(), direction.id()],
                        &1u32.to_be_bytes(),
                    ],
                    &mut k1,
                )
                .unwrap();
                assert_eq!(*ratchet_epoch_key(&k0, suite, direction, 1), k1);
                assert_eq!(*derive_epoch_key(&H, &I2R, suite, direction, 1), k1);
            }
        }
    }

    #[test]
    fn keys_are_separated_by_direction_and_suite() {
        let mut keys = HashSet::new();
        for suite in Suite::ALL {
            for direction in [
                Direction::InitiatorToResponder,
                Direction::ResponderToInitiator,
            ] {
                for epoch in 0..3 {
                    assert!(keys.insert(*derive_epoch_key(&H, &I2R, suite, direction, epoch)));
                }
            }
        }
    }

    #[test]
    fn a_stolen_epoch_key_does_not_yield_earlier_keys() {
        let dir = Direction::InitiatorToResponder;
        let suite = Suite::ChaCha20Poly1305;
        let k0 = derive_epoch_key(&H, &I2R, suite, dir, 0);
        let k1 = derive_epoch_key(&H, &I2R, suite, dir, 1);
        assert_ne!(*k0, *k1);
        // Everything reachable forward from key_1, under any label input,
        // differs from key_0 (and from key_1: the chain does not cycle).
        let mut key = k1.clone();
        for step in 2..10u32 {
            for e in [0, 1, step, u32::MAX] {
                for s in Suite::ALL {
                    let guess = ratchet_epoch_key(&key, s, dir, e);
                    assert_ne!(*guess, *k0);
                }
            }
            key = ratchet_epoch_key(&key, suite, dir, step);
            assert_ne!(*key, *k0);
            assert_ne!(*key, *k1);
        }

        // A receiver that moved to epoch 1 (say, a stolen state) cannot
        // open epoch-0 frames once the grace period is over.
        let config = EpochConfig {
            grace_s: 0,
            ..EpochConfig::default()
        };
        let (i, r) = pair_with(suite, &H, config);
        let old = i.seal(b"epoch 0", T0).unwrap();
        let later = T0.plus(3600);
        r.open(&i.seal(b"epoch 1", later).unwrap(), later).unwrap();
        assert_eq!(r.recv_epoch(), 1);
        assert_eq!(
            r.open(&old, later),
            Err(FrameError::EpochRejected {
                epoch: 0,
                current: 1
            })
        );
    }

    #[test]
    fn frames_round_trip_in_both_directions_with_both_suites() {
        for suite in Suite::ALL {
            let (i, r) = pair(suite);
            assert_eq!(i.session_id(), r.session_id());
            assert_eq!(i.suite(), suite);
            assert_eq!((i.role(), r.role()), (Role::Initiator, Role::Responder));
            for (n, len) in [0usize, 1, 15, 16, 17, 1000].into_iter().enumerate() {
                let message: Vec<u8> = (0..len).map(|b| b as u8).collect();
                let frame = i.seal(&message, T0).unwrap();
                assert_eq!(frame.len(), message.len() + FRAME_OVERHEAD);
                let header = header_of(&frame);
                assert_eq!(header.version, FRAME_VERSION);
                assert_eq!(header.suite, suite);
                assert_eq!(header.session_id, i.session_id());
                assert_eq!((header.epoch, header.seq), (0, n as u64));
                assert_eq!(r.open(&frame, T0).unwrap(), message);

                let reply = r.seal(&message, T0).unwrap();
                assert_eq!(i.open(&reply, T0).unwrap(), message);
            }
            assert_eq!((i.frames_sent(), i.frames_received()), (6, 6));
            assert_eq!((r.frames_sent(), r.frames_received()), (6, 6));
        }
    }

    #[test]
    fn split_halves_work_like_the_session() {
        let (i, r) = pair(Suite::Aes256Gcm);
        let (tx, _) = i.into_split();
        let (_, mut rx) = r.into_split();
        let frame = tx.seal(b"hello", T0).unwrap();
        assert_eq!(rx.open(&frame, T0).unwrap(), b"hello");
        assert_eq!(rx.frames_received(), 1);
        assert_eq!(tx.frames_sent(), 1);
        // No key material in debug output.
        let debug = format!("{tx:?} {rx:?}");
        assert!(debug.contains("Sender") && debug.contains("Receiver"));
    }

    #[test]
    fn a_frame_cannot_be_reflected_to_its_sender() {
        for suite in Suite::ALL {
            let (i, r) = pair(suite);
            let frame = i.seal(b"to the responder", T0).unwrap();
            assert_eq!(i.open(&frame, T0), Err(FrameError::Authentication));
            let frame = r.seal(b"to the initiator", T0).unwrap();
            assert_eq!(r.open(&frame, T0), Err(FrameError::Authentication));
        }
    }

    proptest! {
        #[test]
        fn tampering_with_any_byte_fails(
            aes in any::<bool>(),
            message in proptest::collection::vec(any::<u8>(), 0..64),
            index in any::<prop::sample::Index>(),
            mask in 1u8..=255,
        ) {
            let (i, r) = pair(suite_from(aes));
            let frame = i.seal(&message, T0).unwrap();
            let mut altered = frame.clone();
            let at = index.index(altered.len());
            altered[at] ^= mask;
            prop_assert!(r.open(&altered, T0).is_err());
            // The forgery left no trace: the genuine frame still opens.
            prop_assert_eq!(r.open(&frame, T0).unwrap(), message);
            prop_assert_eq!(r.recv_epoch(), 0);
        }

        #[test]
        fn truncating_or_extending_a_frame_fails(
            aes in any::<bool>(),
            message in proptest::collection::vec(any::<u8>(), 0..64),
            cut in any::<prop::sample::Index>(),
            extra in proptest::collection::vec(any::<u8>(), 1..8),
        ) {
            let (i, r) = pair(suite_from(aes));
            let frame = i.seal(&message, T0).unwrap();
            let len = cut.index(frame.len());
            prop_assert!(r.open(&frame[..len], T0).is_err());
            let mut longer = frame.clone();
            longer.extend_from_slice(&extra);
            prop_assert_eq!(r.open(&longer, T0), Err(FrameError::Authentication));
            prop_assert_eq!(r.open(&frame, T0).unwrap(), message);
        }

        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let (_, r) = pair(Suite::ChaCha20Poly1305);
            if let Ok((header, body)) = FrameHeader::parse(&bytes) {
                prop_assert_eq!(&header.to_bytes()[..], &bytes[..HEADER_LEN]);
                prop_assert_eq!(body.len(), bytes.len() - HEADER_LEN);
            }
            prop_assert!(r.open(&bytes, T0).is_err());
        }
    }

    #[test]
    fn short_frames_are_truncated_and_headers_are_checked_before_crypto() {
        let (i, r) = pair(Suite::ChaCha20Poly1305);
        let frame = i.seal(b"", T0).unwrap();
        assert_eq!(frame.len(), FRAME_OVERHEAD);
        for len in 0..FRAME_OVERHEAD {
            assert_eq!(
                r.open(&frame[..len], T0),
                Err(FrameError::Truncated { len })
            );
        }
        let mut bad = frame.clone();
        bad[0] = 2;
        assert_eq!(r.open(&bad, T0), Err(FrameError::Version(2)));
        let mut bad = frame.clone();
        bad[1] = 9;
        assert_eq!(r.open(&bad, T0), Err(FrameError::UnknownSuite(9)));
        assert_eq!(r.open(&frame, T0).unwrap(), b"");
    }

    #[test]
    fn a_replayed_frame_fails_and_reordering_within_the_window_succeeds_once() {
        let (i, r) = pair(Suite::ChaCha20Poly1305);
        let frames: Vec<Vec<u8>> = (0..5u8).map(|n| i.seal(&[n], T0).unwrap()).collect();
        assert_eq!(r.open(&frames[0], T0).unwrap(), [0]);
        assert_eq!(r.open(&frames[0], T0), Err(FrameError::Replay { seq: 0 }));
        // Out of order: 4 before 2, 3, 1.
        assert_eq!(r.open(&frames[4], T0).unwrap(), [4]);
        for n in [2usize, 3, 1] {
            assert_eq!(r.open(&frames[n], T0).unwrap(), [n as u8]);
            assert_eq!(
                r.open(&frames[n], T0),
                Err(FrameError::Replay { seq: n as u64 })
            );
        }
        assert_eq!(r.open(&frames[4], T0), Err(FrameError::Replay { seq: 4 }));
        assert_eq!(r.frames_received(), 5);
    }

    #[test]
    fn a_frame_older_than_the_window_fails() {
        let config = EpochConfig {
            replay_window: 64,
            ..EpochConfig::default()
        };
        let (i, r) = pair_with(Suite::Aes256Gcm, &H, config);
        let frames: Vec<Vec<u8>> = (0..200u8).map(|n| i.seal(&[n], T0).unwrap()).collect();
        r.open(&frames[199], T0).unwrap();
        assert_eq!(
            r.open(&frames[199 - 64], T0),
            Err(FrameError::TooOld {
                seq: 135,
                newest: 199,
                window: 64
            })
        );
        assert_eq!(
            r.open(&frames[0], T0).map(|_| ()).unwrap_err(),
            FrameError::TooOld {
                seq: 0,
                newest: 199,
                window: 64
            }
        );
        // The oldest seq still inside the window is accepted, once.
        assert_eq!(r.open(&frames[199 - 63], T0).unwrap(), [136]);
        assert_eq!(
            r.open(&frames[136], T0),
            Err(FrameError::Replay { seq: 136 })
        );
    }

    #[test]
    fn replay_window_survives_large_jumps_and_ring_wraps() {
        let mut w = ReplayWindow::new(100);
        assert_eq!(w.capacity(), 128);
        for seq in (0..1000u64).step_by(3) {
            w.check(seq).unwrap();
            w.mark(seq);
        }
        for seq in 900..1000u64 {
            let expected = if seq % 3 == 0 {
                Err(FrameError::Replay { seq })
            } else {
                Ok(())
            };
            assert_eq!(w.check(seq), expected, "seq {seq}");
        }
        w.mark(1_000_000);
        for seq in 1_000_000 - 99..1_000_000 {
            assert_eq!(w.check(seq), Ok(()), "seq {seq}");
        }
        assert_eq!(
            w.check(1_000_000),
            Err(FrameError::Replay { seq: 1_000_000 })
        );
        assert!(matches!(
            w.check(1_000_000 - 100),
            Err(FrameError::TooOld { .. })
        ));
    }

    #[test]
    fn a_frame_from_another_session_fails() {
        let (i, _) = pair(Suite::ChaCha20Poly1305);
        let (_, other) = pair_with(Suite::ChaCha20Poly1305, &[9; 32], EpochConfig::default());
        let frame = i.seal(b"hi", T0).unwrap();
        assert_eq!(other.open(&frame, T0), Err(FrameError::WrongSession));
        // Relabelled with the other session's ID, it still fails: the ID is
        // only a routing hint, the keys differ.
        let spliced = with_header(&frame, |h| h.session_id = other.session_id());
        assert_eq!(other.open(&spliced, T0), Err(FrameError::Authentication));
    }

    #[test]
    fn spliced_frames_fail() {
        let (i, r) = pair(Suite::ChaCha20Poly1305);
        let a = i.seal(b"first frame", T0).unwrap();
        let b = i.seal(b"other frame", T0).unwrap();
        // Header of one frame, ciphertext of the other (same length).
        let mut spliced = a[..HEADER_LEN].to_vec();
        spliced.extend_from_slice(&b[HEADER_LEN..]);
        assert_eq!(r.open(&spliced, T0), Err(FrameError::Authentication));
        // Ciphertext of one, tag of the other.
        let mut spliced = a[..a.len() - TAG_LEN].to_vec();
        spliced.extend_from_slice(&b[b.len() - TAG_LEN..]);
        assert_eq!(r.open(&spliced, T0), Err(FrameError::Authentication));
        assert_eq!(r.open(&a, T0).unwrap(), b"first frame");
        assert_eq!(r.open(&b, T0).unwrap(), b"other frame");
    }

    #[test]
    fn suite_downgrade_fails() {
        let (i, r) = pair(Suite::Aes256Gcm);
        let frame = i.seal(b"hi", T0).unwrap();
        let downgraded = with_header(&frame, |h| h.suite = Suite::ChaCha20Poly1305);
        assert_eq!(
            r.open(&downgraded, T0),
            Err(FrameError::SuiteMismatch {
                expected: Suite::Aes256Gcm,
                found: Suite::ChaCha20Poly1305
            })
        );
        // Same handshake, ChaCha keys: an AES session refuses its frames.
        let (chacha_i, _) = pair(Suite::ChaCha20Poly1305);
        let chacha_frame = chacha_i.seal(b"hi", T0).unwrap();
        assert_eq!(
            r.open(&chacha_frame, T0),
            Err(FrameError::SuiteMismatch {
                expected: Suite::Aes256Gcm,
                found: Suite::ChaCha20Poly1305
            })
        );
        // And with the suite byte forged to match, the key still differs.
        let forged = with_header(&chacha_frame, |h| h.suite = Suite::Aes256Gcm);
        assert_eq!(r.open(&forged, T0), Err(FrameError::Authentication));
        assert_eq!(r.open(&frame, T0).unwrap(), b"hi");
    }

    #[test]
    fn the_receiver_follows_the_sender_into_the_next_epoch_only_on_an_authentic_frame() {
        for suite in Suite::ALL {
            let (i, r) = pair(suite);
            let e0 = i.seal(b"e0", T0).unwrap();
            assert_eq!(i.send_epoch(), 0);
            let later = T0.plus(3599);
            let still_e0 = i.seal(b"still e0", later).unwrap();
            assert_eq!(header_of(&still_e0).epoch, 0);

            let t1 = T0.plus(3600);
            let e1 = i.seal(b"e1", t1).unwrap();
            assert_eq!(i.send_epoch(), 1);
            assert_eq!(header_of(&e1).epoch, 1);
            assert_eq!(header_of(&e1).seq, 2, "seq never resets");

            r.open(&e0, t1).unwrap();
            // A forged frame claiming epoch 1 does not move the receiver.
            let forged = with_header(&still_e0, |h| h.epoch = 1);
            assert_eq!(r.open(&forged, t1), Err(FrameError::Authentication));
            assert_eq!(r.recv_epoch(), 0);

            assert_eq!(r.open(&e1, t1).unwrap(), b"e1");
            assert_eq!(r.recv_epoch(), 1);
            assert_eq!(r.lock_receiver().previous_epoch(), Some(0));

            // The sender's epoch-0 key is gone: the next frames are epoch 1.
            assert_eq!(header_of(&i.seal(b"x", t1).unwrap()).epoch, 1);
        }
    }

    #[test]
    fn a_late_previous_epoch_frame_is_accepted_within_grace_only() {
        let (i, r) = pair(Suite::ChaCha20Poly1305);
        let late_a = i.seal(b"late a", T0).unwrap();
        let late_b = i.seal(b"late b", T0).unwrap();
        let t1 = T0.plus(4000);
        r.open(&i.seal(b"e1", t1).unwrap(), t1).unwrap();
        assert_eq!(r.recv_epoch(), 1);

        assert_eq!(r.open(&late_a, t1.plus(119)).unwrap(), b"late a");
        assert_eq!(
            r.open(&late_b, t1.plus(120)),
            Err(FrameError::EpochRejected {
                epoch: 0,
                current: 1
            })
        );
        assert_eq!(r.lock_receiver().previous_epoch(), None);
    }

    #[test]
    fn an_idle_receiver_can_erase_the_previous_key() {
        let (i, r) = pair(Suite::Aes256Gcm);
        let late = i.seal(b"late", T0).unwrap();
        let t1 = T0.plus(3600);
        r.open(&i.seal(b"e1", t1).unwrap(), t1).unwrap();
        r.erase_expired(t1.plus(60));
        assert_eq!(r.lock_receiver().previous_epoch(), Some(0));
        r.erase_expired(t1.plus(120));
        assert_eq!(r.lock_receiver().previous_epoch(), None);
        assert!(matches!(
            r.open(&late, t1.plus(1)),
            Err(FrameError::EpochRejected { epoch: 0, .. })
        ));
    }

    #[test]
    fn a_frame_two_epochs_ahead_is_rejected() {
        let (i, r) = pair(Suite::ChaCha20Poly1305);
        let t1 = T0.plus(3600);
        let t2 = T0.plus(7200);
        let e1 = i.seal(b"e1", t1).unwrap();
        let e2 = i.seal(b"e2", t2).unwrap();
        assert_eq!(header_of(&e2).epoch, 2);
        assert_eq!(
            r.open(&e2, t2),
            Err(FrameError::EpochRejected {
                epoch: 2,
                current: 0
            })
        );
        assert_eq!(r.recv_epoch(), 0);
        // Once epoch 1 is seen, epoch 2 is the next one and is accepted.
        r.open(&e1, t2).unwrap();
        assert_eq!(r.open(&e2, t2).unwrap(), b"e2");
        assert_eq!(r.recv_epoch(), 2);
    }

    #[test]
    fn a_long_idle_sender_moves_one_epoch_only() {
        let (i, r) = pair(Suite::ChaCha20Poly1305);
        let much_later = T0.plus(10 * 3600);
        let frame = i.seal(b"back", much_later).unwrap();
        assert_eq!(header_of(&frame).epoch, 1);
        assert_eq!(r.open(&frame, much_later).unwrap(), b"back");
        // The new epoch started when the sender moved.
        assert_eq!(
            header_of(&i.seal(b"", much_later.plus(3599)).unwrap()).epoch,
            1
        );
        assert_eq!(
            header_of(&i.seal(b"", much_later.plus(3600)).unwrap()).epoch,
            2
        );
    }

    #[test]
    fn concurrent_sealing_yields_unique_seqs() {
        const THREADS: usize = 4;
        const PER_THREAD: usize = 1000;
        let config = EpochConfig {
            replay_window: MAX_REPLAY_WINDOW,
            ..EpochConfig::default()
        };
        let (i, r) = pair_with(Suite::ChaCha20Poly1305, &H, config);
        let frames: Vec<Vec<u8>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let i = &i;
                    scope.spawn(move || {
                        (0..PER_THREAD)
                            .map(|n| {
                                // Half-way through time crosses into epoch 1.
                                let now = if n < PER_THREAD / 2 {
                                    T0
                                } else {
                                    T0.plus(3600)
                                };
                                i.seal(format!("{t}/{n}").as_bytes(), now).unwrap()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let seqs: HashSet<u64> = frames.iter().map(|f| header_of(f).seq).collect();
        assert_eq!(seqs.len(), THREADS * PER_THREAD);
        assert_eq!(i.frames_sent(), (THREADS * PER_THREAD) as u64);
        // Open in seq order, as an ordered transport would deliver them.
        let mut frames = frames;
        frames.sort_by_key(|f| header_of(f).seq);
        let mut texts = HashSet::new();
        for frame in &frames {
            texts.insert(r.open(frame, T0.plus(3600)).unwrap());
        }
        assert_eq!(texts.len(), THREADS * PER_THREAD);
        for frame in &frames {
            assert!(r.open(frame, T0.plus(3600)).is_err());
        }
        assert_eq!(r.recv_epoch(), 1);
    }

    #[test]
    fn sequence_exhaustion_is_an_error_not_a_wrap() {
        let (i, r) = pair(Suite::ChaCha20Poly1305);
        i.sender.next_seq.store(u64::MAX - 1, Ordering::Relaxed);
        let last = i.seal(b"last", T0).unwrap();
        assert_eq!(header_of(&last).seq, u64::MAX - 1);
        assert_eq!(i.seal(b"one more", T0), Err(FrameError::SeqExhausted));
        assert_eq!(i.seal(b"and again", T0), Err(FrameError::SeqExhausted));
        assert_eq!(r.open(&last, T0).unwrap(), b"last");
    }

    #[test]
    fn size_limits_apply_to_sealing_and_opening() {
        let (i, r) = pair(Suite::ChaCha20Poly1305);
        let i = i.with_max_plaintext(100);
        let big = pair(Suite::ChaCha20Poly1305).0.seal(&[0; 101], T0).unwrap();
        let r = r.with_max_plaintext(100);
        assert_eq!(
            i.seal(&[0; 101], T0),
            Err(FrameError::TooLarge { len: 101, max: 100 })
        );
        assert_eq!(
            r.open(&big, T0),
            Err(FrameError::TooLarge { len: 101, max: 100 })
        );
        let fits = i.seal(&[0; 100], T0).unwrap();
        assert_eq!(r.open(&fits, T0).unwrap(), vec![0; 100]);
    }

    #[test]
    fn config_is_clamped() {
        let c = EpochConfig {
            epoch_len_s: 0,
            grace_s: 5,
            replay_window: 1 << 40,
        }
        .normalized();
        assert_eq!(
            (c.epoch_len_s, c.grace_s, c.replay_window),
            (1, 5, MAX_REPLAY_WINDOW)
        );
        assert_eq!(
            EpochConfig {
                replay_window: 0,
                ..EpochConfig::default()
            }
            .normalized()
            .replay_window,
            1
        );
        let d = EpochConfig::default();
        assert_eq!(
            (d.epoch_len_s, d.grace_s, d.replay_window),
            (3600, 120, 1024)
        );
        let parsed: EpochConfig = serde_json::from_str(r#"{"grace_s": 30}"#).unwrap();
        assert_eq!(parsed.grace_s, 30);
        assert_eq!(parsed.epoch_len_s, 3600);
    }

    #[test]
    fn key_material_is_erased_on_drop() {
        fn zeroizes_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        zeroizes_on_drop::<FrameCipher>();
        zeroizes_on_drop::<Zeroizing<[u8; 32]>>();
    }
}
