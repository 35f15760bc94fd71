//! Fixtures shared by the fuzz targets and by the seed writer (`seeds/`,
//! which includes this file by path): fixed keys, nodes and sessions, so
//! that a target and its committed seeds agree on who is who, and the seeds
//! are valid encodings the fuzzer can mutate from.
//!
//! Everything is deterministic: a crash found on one machine replays on
//! another from the same input file.

#![forbid(unsafe_code)]

use openred_core::record::NodeRecord;
use openred_core::session::{EpochConfig, Role, Session, Suite};
use openred_core::token::{mint_pair, TokenPair};
use openred_core::{AgreementSecret, ApiUrl, IdentityKeypair, SignedRecord, UnixTime};

/// When every fixture record and token is issued.
pub const ISSUED_AT: UnixTime = UnixTime(1_000_000);
/// When every fixture record and token expires.
pub const EXPIRES_AT: UnixTime = UnixTime(2_000_000);

/// A node of the fixtures: its agreement key and its signed record.
pub struct Fixture {
    /// The X25519 key of its record.
    pub agreement: AgreementSecret,
    /// Its record, signed.
    pub record: SignedRecord,
}

/// Fixture node `n` (1 = initiator A, 2 = target B).
pub fn node(n: u8) -> Fixture {
    let identity = IdentityKeypair::from_secret_bytes(&[n; 32]);
    let agreement = AgreementSecret::from_secret_bytes([n.wrapping_add(100); 32]);
    let url = format!("https://node{n}.example.com:8443");
    let api_url = match ApiUrl::parse_origin(&url) {
        Ok(url) => url,
        Err(e) => panic!("fixture URL {url}: {e}"),
    };
    let record = NodeRecord::sign(
        &identity,
        agreement.public(),
        api_url,
        u64::from(n),
        ISSUED_AT,
        EXPIRES_AT,
    );
    Fixture { agreement, record }
}

/// The fixture directory's key.
pub fn directory() -> IdentityKeypair {
    IdentityKeypair::from_secret_bytes(&[42; 32])
}

/// The pair of tokens the fixture directory mints to introduce node 1 to
/// node 2.
pub fn token_pair() -> TokenPair {
    let rng = &mut openred_core::random::SeededRng::new([7; 32]);
    match mint_pair(
        &directory(),
        &node(1).record,
        &node(2).record,
        [3; 16],
        [4; 32],
        ISSUED_AT,
        EXPIRES_AT,
        rng,
    ) {
        Ok(pair) => pair,
        Err(e) => panic!("fixture tokens: {e}"),
    }
}

/// The two ends of one session, as a finished handshake would build them.
/// Sessions of different `run`s have unrelated keys.
pub fn session_pair(
    suite: Suite,
    now: UnixTime,
    config: EpochConfig,
    run: u64,
) -> (Session, Session) {
    let (mut h, i2r, r2i) = ([11; 32], [12; 32], [13; 32]);
    h[..8].copy_from_slice(&run.to_be_bytes());
    (
        Session::new(Role::Initiator, suite, &h, &i2r, &r2i, now, config),
        Session::new(Role::Responder, suite, &h, &i2r, &r2i, now, config),
    )
}
