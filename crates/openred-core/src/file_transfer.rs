//! The chunk codec of a file transfer: how a shared file travels from its
//! owner to a peer as a stream of encrypted chunks, and how the peer checks
//! each one. Pure computation: the node reads the file, sends the bytes and
//! writes them; this module only derives keys and seals or opens chunks.
//!
//! # Layout of a transfer
//!
//! A file of `size` bytes is cut into chunks of `chunk_size` bytes (the
//! last one shorter); an empty file is one empty chunk, so that every
//! transfer ends with an authenticated final chunk. Chunk `i` travels as
//! `AEAD(plaintext_i) || tag(16)`; its length is known to both sides from
//! `size` and `chunk_size`, so the stream carries no lengths.
//!
//! # Keys, nonces, associated data
//!
//! - **Key**: `HKDF-SHA256(salt = "openred/v1/file-transfer",
//!   ikm = link_secret, info = "openred/v1/file-chunk-key" || suite ||
//!   file_id || transfer_id || client_nonce || size || chunk_size)`. The
//!   link secret is fresh random bytes per link that travel only inside a
//!   session frame; the transfer ID is fresh per stream (drawn by the
//!   owner), the client nonce fresh per request (drawn by the peer). So no
//!   two streams share a key — a resumed download re-sends chunks under a
//!   new one — and the key never meets a session frame key.
//! - **Nonce**: `0^4 || u64_be(index | final << 63)`: the chunk index and
//!   the final-chunk flag.
//! - **Associated data**: `"openred/v1/file-chunk" || 0 || file_id ||
//!   transfer_id || u64_be(index) || final(1) || u64_be(size) ||
//!   u32_be(chunk_size)`.
//!
//! Whether a chunk is final is never read from the stream: both sides
//! compute it from `size` and `chunk_size`. A stream cut short (no final
//! chunk), chunks in another order (index in nonce and AAD), a chunk from
//! another transfer or file (key and AAD), a non-final chunk passed off as
//! the last (flag in nonce and AAD) or a flipped bit all fail to open.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::frame_cipher::FrameCipher;
use crate::session::{Suite, TAG_LEN};

/// The bytes a chunk grows by on the wire: the AEAD tag.
pub const CHUNK_OVERHEAD: usize = TAG_LEN;
/// The smallest chunk size accepted (16 KiB).
pub const MIN_CHUNK_SIZE: u32 = 16 * 1024;
/// The largest chunk size accepted (4 MiB): what bounds memory per chunk.
pub const MAX_CHUNK_SIZE: u32 = 4 * 1024 * 1024;
/// The largest file size: chunk indexes stay below 2^63 (the final flag
/// takes the top bit of the nonce), and sizes fit SQLite's signed integers.
pub const MAX_FILE_SIZE: u64 = (1 << 62) - 1;

const KEY_SALT: &[u8] = b"openred/v1/file-transfer";
const KEY_INFO: &[u8] = b"openred/v1/file-chunk-key";
const AAD_LABEL: &[u8] = b"openred/v1/file-chunk";
const FINAL_FLAG: u64 = 1 << 63;
const AAD_LEN: usize = 21 + 1 + 16 + 16 + 8 + 1 + 8 + 4;
const _: () = assert!(AAD_LABEL.len() == 21);

/// Why a transfer's parameters or a chunk were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// The chunk size is outside [`MIN_CHUNK_SIZE`]..=[`MAX_CHUNK_SIZE`],
    /// or the size above [`MAX_FILE_SIZE`].
    #[error("transfer parameters out of range")]
    BadParameters,
    /// The index is past the last chunk.
    #[error("chunk {0} is past the end of the file")]
    OutOfRange(u64),
    /// The record has not the length chunk `index` must have.
    #[error("chunk {0} has the wrong length")]
    WrongLength(u64),
    /// The chunk does not authenticate: tampered, reordered, from another
    /// transfer, or a non-final chunk passed off as the last.
    #[error("chunk {0} does not authenticate")]
    Forged(u64),
}

/// What both sides know of a transfer before the first chunk: the file,
/// its size, the chunk size and the AEAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferShape {
    /// The share's file ID.
    pub file_id: [u8; 16],
    /// The file's size in bytes.
    pub size: u64,
    /// Plaintext bytes per chunk (the last one may be shorter).
    pub chunk_size: u32,
    /// The AEAD, from the core's allowlist.
    pub suite: Suite,
}

impl TransferShape {
    /// Checks the ranges.
    pub fn new(
        file_id: [u8; 16],
        size: u64,
        chunk_size: u32,
        suite: Suite,
    ) -> Result<TransferShape, ChunkError> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) || size > MAX_FILE_SIZE {
            return Err(ChunkError::BadParameters);
        }
        Ok(TransferShape {
            file_id,
            size,
            chunk_size,
            suite,
        })
    }

    /// How many chunks: at least one (an empty file is one empty chunk).
    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(u64::from(self.chunk_size)).max(1)
    }

    /// Whether chunk `index` is the last one. Any index answers, even
    /// `u64::MAX` (no overflow): `chunks()` is at least 1.
    pub fn is_final(&self, index: u64) -> bool {
        index == self.chunks() - 1
    }

    /// The plaintext offset of chunk `index`.
    pub fn offset(&self, index: u64) -> u64 {
        index.saturating_mul(u64::from(self.chunk_size))
    }

    /// The plaintext length of chunk `index`.
    pub fn plain_len(&self, index: u64) -> Result<usize, ChunkError> {
        if index >= self.chunks() {
            return Err(ChunkError::OutOfRange(index));
        }
        let left = self.size - self.offset(index).min(self.size);
        // At most `chunk_size`, which fits a u32.
        Ok(left.min(u64::from(self.chunk_size)) as usize)
    }

    /// The length of chunk `index` on the wire.
    pub fn record_len(&self, index: u64) -> Result<usize, ChunkError> {
        Ok(self.plain_len(index)? + CHUNK_OVERHEAD)
    }

    /// The chunk holding plaintext byte `offset` rounded down: where a
    /// download with `offset` verified bytes resumes.
    pub fn chunk_at(&self, offset: u64) -> u64 {
        (offset / u64::from(self.chunk_size)).min(self.chunks() - 1)
    }
}

/// The AEAD of one transfer (one stream): seals chunks on the owner's
/// side, opens them on the peer's. The key is erased on drop.
pub struct ChunkCipher {
    cipher: FrameCipher,
    shape: TransferShape,
    transfer_id: [u8; 16],
}

impl std::fmt::Debug for ChunkCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkCipher")
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

impl ChunkCipher {
    /// The cipher of the stream `transfer_id` of a link whose secret is
    /// `link_secret`, asked for with `client_nonce`.
    pub fn new(
        link_secret: &[u8; 32],
        shape: &TransferShape,
        transfer_id: &[u8; 16],
        client_nonce: &[u8; 16],
    ) -> ChunkCipher {
        let mut info = Vec::with_capacity(KEY_INFO.len() + 1 + 16 * 3 + 8 + 4);
        info.extend_from_slice(KEY_INFO);
        info.push(shape.suite.id());
        info.extend_from_slice(&shape.file_id);
        info.extend_from_slice(transfer_id);
        info.extend_from_slice(client_nonce);
        info.extend_from_slice(&shape.size.to_be_bytes());
        info.extend_from_slice(&shape.chunk_size.to_be_bytes());
        let mut key = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's limit of 8160: cannot fail.
        let _ = Hkdf::<Sha256>::new(Some(KEY_SALT), link_secret).expand(&info, &mut key[..]);
        ChunkCipher {
            cipher: FrameCipher::new(shape.suite, &key),
            shape: *shape,
            transfer_id: *transfer_id,
        }
    }

    /// The transfer's shape.
    pub fn shape(&self) -> &TransferShape {
        &self.shape
    }

    fn nonce_and_aad(&self, index: u64) -> (u64, [u8; AAD_LEN]) {
        let fin = self.shape.is_final(index);
        let mut aad = [0u8; AAD_LEN];
        let mut at = 0;
        for part in [
            AAD_LABEL,
            &[0],
            &self.shape.file_id,
            &self.transfer_id,
            &index.to_be_bytes(),
            &[u8::from(fin)],
            &self.shape.size.to_be_bytes(),
            &self.shape.chunk_size.to_be_bytes(),
        ] {
            aad[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        debug_assert_eq!(at, aad.len());
        (index | if fin { FINAL_FLAG } else { 0 }, aad)
    }

    /// Seals chunk `index` in place: `record` holds exactly its plaintext
    /// on entry and its wire form (with the tag) on return.
    pub fn seal(&self, index: u64, record: &mut Vec<u8>) -> Result<(), ChunkError> {
        if record.len() != self.shape.plain_len(index)? {
            return Err(ChunkError::WrongLength(index));
        }
        let (seq, aad) = self.nonce_and_aad(index);
        let tag = self
            .cipher
            .encrypt(seq, &aad, record)
            .map_err(|_| ChunkError::Forged(index))?;
        record.extend_from_slice(&tag);
        Ok(())
    }

    /// Opens chunk `index` in place: `record` is its wire form; on success
    /// the returned slice (a prefix of `record`) is the plaintext.
    pub fn open<'a>(&self, index: u64, record: &'a mut [u8]) -> Result<&'a [u8], ChunkError> {
        if record.len() != self.shape.record_len(index)? {
            return Err(ChunkError::WrongLength(index));
        }
        let (seq, aad) = self.nonce_and_aad(index);
        let (body, tag) = record.split_at_mut(record.len() - TAG_LEN);
        let tag: [u8; TAG_LEN] = (&*tag)
            .try_into()
            .map_err(|_| ChunkError::WrongLength(index))?;
        self.cipher
            .decrypt(seq, &aad, body, &tag)
            .map_err(|_| ChunkError::Forged(index))?;
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    const SECRET: [u8; 32] = [9; 32];
    const TRANSFER: [u8; 16] = [1; 16];
    const NONCE: [u8; 16] = [2; 16];

    fn shape(size: u64, suite: Suite) -> TransferShape {
        TransferShape::new([7; 16], size, MIN_CHUNK_SIZE, suite).unwrap()
    }

    fn file(size: u64) -> Vec<u8> {
        (0..size).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// The whole stream: each chunk sealed, in order.
    fn stream(cipher: &ChunkCipher, data: &[u8]) -> Vec<Vec<u8>> {
        let s = cipher.shape();
        (0..s.chunks())
            .map(|i| {
                let at = s.offset(i) as usize;
                let mut record = data[at..at + s.plain_len(i).unwrap()].to_vec();
                cipher.seal(i, &mut record).unwrap();
                record
            })
            .collect()
    }

    /// What a receiver does: opens chunk after chunk, expecting every
    /// index from 0; fails on the first bad one or on a missing final one.
    fn receive(cipher: &ChunkCipher, records: &[Vec<u8>]) -> Result<Vec<u8>, ChunkError> {
        let mut out = Vec::new();
        for (i, record) in records.iter().enumerate() {
            let mut record = record.clone();
            out.extend_from_slice(cipher.open(i as u64, &mut record)?);
        }
        if (records.len() as u64) < cipher.shape().chunks() {
            return Err(ChunkError::OutOfRange(records.len() as u64));
        }
        Ok(out)
    }

    #[test]
    fn shapes_count_chunks_and_lengths() {
        let s = shape(0, Suite::ChaCha20Poly1305);
        assert_eq!((s.chunks(), s.plain_len(0).unwrap()), (1, 0));
        assert!(s.is_final(0));
        let c = u64::from(MIN_CHUNK_SIZE);
        let s = shape(2 * c + 5, Suite::ChaCha20Poly1305);
        assert_eq!(s.chunks(), 3);
        assert_eq!(s.plain_len(2).unwrap(), 5);
        assert_eq!(s.record_len(1).unwrap(), c as usize + CHUNK_OVERHEAD);
        assert_eq!(s.plain_len(3), Err(ChunkError::OutOfRange(3)));
        assert_eq!(s.chunk_at(c + 1), 1);
        assert_eq!(shape(2 * c, Suite::ChaCha20Poly1305).chunks(), 2);
        for (size, chunk) in [(0, MIN_CHUNK_SIZE - 1), (0, MAX_CHUNK_SIZE + 1)] {
            assert_eq!(
                TransferShape::new([0; 16], size, chunk, Suite::Aes256Gcm),
                Err(ChunkError::BadParameters)
            );
        }
        assert!(
            TransferShape::new([0; 16], MAX_FILE_SIZE + 1, MIN_CHUNK_SIZE, Suite::Aes256Gcm)
                .is_err()
        );
    }

    /// A peer-chosen index (a resume point, a chunk count) reaches the
    /// shape's queries before any range check in a caller that forgets one:
    /// they must answer, not overflow. Found with the `file_chunk` fuzz
    /// target, which sweeps these queries over extreme indexes.
    #[test]
    fn shape_queries_on_the_largest_index_do_not_overflow() {
        for size in [0, 5, MAX_FILE_SIZE] {
            let s = shape(size, Suite::ChaCha20Poly1305);
            assert!(!s.is_final(u64::MAX));
            assert!(s.is_final(s.chunks() - 1));
            assert_eq!(s.plain_len(u64::MAX), Err(ChunkError::OutOfRange(u64::MAX)));
            assert_eq!(s.offset(u64::MAX), u64::MAX);
            assert_eq!(s.chunk_at(u64::MAX), s.chunks() - 1);
        }
    }

    #[test]
    fn a_stream_round_trips_under_both_suites() {
        for suite in Suite::ALL {
            for size in [
                0,
                1,
                u64::from(MIN_CHUNK_SIZE),
                3 * u64::from(MIN_CHUNK_SIZE) + 7,
            ] {
                let cipher = ChunkCipher::new(&SECRET, &shape(size, suite), &TRANSFER, &NONCE);
                let data = file(size);
                assert_eq!(receive(&cipher, &stream(&cipher, &data)).unwrap(), data);
            }
        }
    }

    #[test]
    fn a_tampered_chunk_fails() {
        let cipher = ChunkCipher::new(
            &SECRET,
            &shape(40_000, Suite::ChaCha20Poly1305),
            &TRANSFER,
            &NONCE,
        );
        let mut records = stream(&cipher, &file(40_000));
        records[1][10] ^= 1;
        assert_eq!(receive(&cipher, &records), Err(ChunkError::Forged(1)));
        let mut records = stream(&cipher, &file(40_000));
        let last = records[2].len() - 1;
        records[2][last] ^= 0x80; // the tag
        assert_eq!(receive(&cipher, &records), Err(ChunkError::Forged(2)));
    }

    #[test]
    fn a_truncated_stream_never_completes() {
        let cipher = ChunkCipher::new(
            &SECRET,
            &shape(40_000, Suite::ChaCha20Poly1305),
            &TRANSFER,
            &NONCE,
        );
        let records = stream(&cipher, &file(40_000));
        // The last chunk dropped: nothing final was authenticated.
        assert!(receive(&cipher, &records[..2]).is_err());
        // The last chunk cut short: wrong length.
        let mut cut = records.clone();
        cut[2].truncate(4);
        assert_eq!(receive(&cipher, &cut), Err(ChunkError::WrongLength(2)));
    }

    #[test]
    fn reordered_or_spliced_chunks_fail() {
        let s = shape(3 * u64::from(MIN_CHUNK_SIZE), Suite::Aes256Gcm);
        let cipher = ChunkCipher::new(&SECRET, &s, &TRANSFER, &NONCE);
        let records = stream(&cipher, &file(s.size));
        // Two full chunks swapped (same length).
        let mut swapped = records.clone();
        swapped.swap(0, 1);
        assert_eq!(receive(&cipher, &swapped), Err(ChunkError::Forged(0)));
        // A chunk from another transfer of the same file and link.
        let other = ChunkCipher::new(&SECRET, &s, &[3; 16], &NONCE);
        let mut spliced = records.clone();
        spliced[1] = stream(&other, &file(s.size))[1].clone();
        assert_eq!(receive(&cipher, &spliced), Err(ChunkError::Forged(1)));
        // Another client nonce, another link secret: another key.
        for other in [
            ChunkCipher::new(&SECRET, &s, &TRANSFER, &[4; 16]),
            ChunkCipher::new(&[8; 32], &s, &TRANSFER, &NONCE),
        ] {
            assert_eq!(receive(&other, &records), Err(ChunkError::Forged(0)));
        }
    }

    #[test]
    fn a_non_final_chunk_cannot_pass_for_the_last() {
        // A 3-chunk file; the receiver told (falsely) the file is 2 chunks
        // long sees chunk 1 opened with the final flag: it fails.
        let size = 3 * u64::from(MIN_CHUNK_SIZE);
        let long = ChunkCipher::new(
            &SECRET,
            &shape(size, Suite::ChaCha20Poly1305),
            &TRANSFER,
            &NONCE,
        );
        let records = stream(&long, &file(size));
        let short = ChunkCipher::new(
            &SECRET,
            &TransferShape {
                size: 2 * u64::from(MIN_CHUNK_SIZE),
                ..*long.shape()
            },
            &TRANSFER,
            &NONCE,
        );
        assert_eq!(
            receive(&short, &records[..2]),
            Err(ChunkError::Forged(0)),
            "the size is in the key and the AAD"
        );
        // Same key, same AAD but the flag: still refused (the flag is in the
        // nonce and the AAD).
        let mut record = records[1].clone();
        let (seq, mut aad) = long.nonce_and_aad(1);
        aad[AAD_LABEL.len() + 1 + 32 + 8] = 1;
        let (body, tag) = record.split_at_mut(records[1].len() - TAG_LEN);
        let tag: [u8; TAG_LEN] = (&*tag).try_into().unwrap();
        assert!(long
            .cipher
            .decrypt(seq | FINAL_FLAG, &aad, body, &tag)
            .is_err());
    }

    proptest! {
        #[test]
        fn opening_arbitrary_bytes_never_panics(
            index in 0u64..8,
            bytes in proptest::collection::vec(any::<u8>(), 0..40_000),
        ) {
            let cipher = ChunkCipher::new(&SECRET, &shape(100_000, Suite::ChaCha20Poly1305), &TRANSFER, &NONCE);
            let mut bytes = bytes;
            prop_assert!(cipher.open(index, &mut bytes).is_err());
        }
    }
}
