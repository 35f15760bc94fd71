//! A deterministic random stream from a seed, for APIs that want an RNG
//! (HPKE's ephemeral keys): the caller draws 32 bytes from the operating
//! system and the core stays free of randomness of its own.
//!
//! The stream is BLAKE3's extendable output keyed with the seed: a PRF, so
//! its output is indistinguishable from random to anyone without the seed.
//! Each seed must be used for one stream only.

use std::convert::Infallible;

use crate::token::rand_core::{TryCryptoRng, TryRng};

/// A cryptographic random stream expanded from a 32-byte seed.
pub struct SeededRng(blake3::OutputReader);

impl SeededRng {
    /// The stream of `seed`, which must come from a CSPRNG and not be
    /// reused.
    pub fn new(seed: [u8; 32]) -> SeededRng {
        let mut seed = zeroize::Zeroizing::new(seed);
        let rng = SeededRng(
            blake3::Hasher::new_keyed(&seed)
                .update(b"openred/v1/seeded-rng")
                .finalize_xof(),
        );
        zeroize::Zeroize::zeroize(&mut *seed);
        rng
    }
}

impl TryRng for SeededRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.0.fill(&mut b);
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.0.fill(&mut b);
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.0.fill(dst);
        Ok(())
    }
}

impl TryCryptoRng for SeededRng {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_depend_on_the_seed_and_do_not_repeat() {
        let mut a = SeededRng::new([1; 32]);
        let mut b = SeededRng::new([2; 32]);
        let (mut x, mut y, mut z) = ([0u8; 32], [0u8; 32], [0u8; 32]);
        a.try_fill_bytes(&mut x).unwrap();
        a.try_fill_bytes(&mut y).unwrap();
        b.try_fill_bytes(&mut z).unwrap();
        assert_ne!(x, y);
        assert_ne!(x, z);
        let mut again = SeededRng::new([1; 32]);
        let mut w = [0u8; 32];
        again.try_fill_bytes(&mut w).unwrap();
        assert_eq!(x, w, "deterministic for a seed");
    }
}
