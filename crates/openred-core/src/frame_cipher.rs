//! The AEAD instance behind one epoch key of a session, and the one place
//! in the core that needs `unsafe`: erasing ring's key schedule on drop.
//! See docs/decisions/0015-frame-ciphers-from-ring.md for why ring and why
//! this erase.

#![allow(unsafe_code)]

use std::mem::MaybeUninit;

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};
use ring::error::Unspecified;

use crate::session::{Suite, TAG_LEN};

/// The nonce of frame `seq`: four zero bytes, then `seq` big-endian.
fn nonce(seq: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    for (dst, src) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
        *dst = src;
    }
    n
}

/// An AEAD instance for one epoch key, backed by `ring` (BoringSSL's
/// assembly: about twice the speed of the RustCrypto crates for
/// ChaCha20-Poly1305 and three times for AES-256-GCM on x86-64, see
/// docs/BENCHMARKS.md).
///
/// ring keeps its key schedule in a plain value without `Drop` and does not
/// erase it. This wrapper does: the key lives at one heap address for its
/// whole life (a `Box`, so moves of the `FrameCipher` do not copy it), and
/// `Drop` overwrites those bytes with volatile writes. The value sits in a
/// `MaybeUninit`, so after the overwrite no typed value with an invalid bit
/// pattern is left behind. What is not covered: copies ring itself makes on
/// the stack while it expands the key (the RustCrypto crates do the same);
/// the decision is recorded in docs/decisions/0015-frame-ciphers-from-ring.md.
pub(crate) struct FrameCipher {
    key: Box<MaybeUninit<LessSafeKey>>,
}

// Skipping `LessSafeKey`'s drop glue is only sound if it has none: a key
// schedule that owned heap memory would leak (and not be erased) here.
const _: () = assert!(!std::mem::needs_drop::<LessSafeKey>());

impl FrameCipher {
    pub(crate) fn new(suite: Suite, key: &[u8; 32]) -> FrameCipher {
        let algorithm = match suite {
            Suite::ChaCha20Poly1305 => &CHACHA20_POLY1305,
            Suite::Aes256Gcm => &AES_256_GCM,
        };
        // Both algorithms take 32-byte keys, the only length given here;
        // ring also fails if the CPU feature detection fails, which its
        // portable fallbacks make impossible on supported targets.
        #[allow(clippy::expect_used)]
        let unbound = UnboundKey::new(algorithm, key).expect("32-byte key for a 32-byte AEAD");
        FrameCipher {
            key: Box::new(MaybeUninit::new(LessSafeKey::new(unbound))),
        }
    }

    fn key(&self) -> &LessSafeKey {
        // SAFETY: initialised in `new`; only `drop` erases it.
        unsafe { self.key.assume_init_ref() }
    }

    pub(crate) fn encrypt(
        &self,
        seq: u64,
        aad: &[u8],
        buffer: &mut [u8],
    ) -> Result<[u8; TAG_LEN], Unspecified> {
        let tag = self.key().seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce(seq)),
            Aad::from(aad),
            buffer,
        )?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    pub(crate) fn decrypt(
        &self,
        seq: u64,
        aad: &[u8],
        buffer: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), Unspecified> {
        let tag = Tag::from(*tag);
        self.key()
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce(seq)),
                Aad::from(aad),
                tag,
                buffer,
                0..,
            )
            .map(|_| ())
    }
}

impl Drop for FrameCipher {
    fn drop(&mut self) {
        self.erase();
    }
}

impl FrameCipher {
    /// Overwrites the key schedule; the cipher must not be used afterwards
    /// (only `drop` and the test below call it).
    fn erase(&mut self) {
        // SAFETY: the pointer is to a live, exclusively borrowed
        // `MaybeUninit`, which owns no outside data, has no drop glue, and
        // for which all-zero bytes are valid. The key is never read again.
        unsafe { zeroize::zeroize_flat_type(&mut *self.key as *mut MaybeUninit<LessSafeKey>) }
    }
}

impl zeroize::ZeroizeOnDrop for FrameCipher {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn erasing_a_frame_cipher_overwrites_its_whole_key_schedule() {
        for suite in [Suite::ChaCha20Poly1305, Suite::Aes256Gcm] {
            let mut cipher = FrameCipher::new(suite, &[0x5a; 32]);
            let mut buf = *b"payload";
            let tag = cipher.encrypt(7, b"aad", &mut buf).unwrap();
            cipher.decrypt(7, b"aad", &mut buf, &tag).unwrap();
            assert_eq!(&buf, b"payload");

            cipher.erase();
            let len = std::mem::size_of::<LessSafeKey>();
            let base = (&*cipher.key as *const MaybeUninit<LessSafeKey>).cast::<u8>();
            // SAFETY: `erase` wrote every one of these bytes, padding
            // included, so all are initialised; the box is still alive.
            let bytes = unsafe { std::slice::from_raw_parts(base, len) };
            assert!(len >= 32, "{suite}: a key schedule smaller than the key");
            assert!(
                bytes.iter().all(|b| *b == 0),
                "{suite}: key bytes survived erase"
            );
        }
    }
}
