//! File-transfer chunks (`openred_core::file_transfer`): transfer shapes
//! from arbitrary parameters (the peer announces size and chunk size), and
//! chunk records as they arrive from the stream. Nothing may panic, even
//! for indexes past the end; a record opens only if it is the one sealed
//! for that index, and then gives back the sealed plaintext.

#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use openred_core::file_transfer::{ChunkCipher, ChunkError, TransferShape, CHUNK_OVERHEAD};
use openred_core::session::Suite;

/// Keeps the plaintext the target seals small, so that each input runs in
/// microseconds whatever chunk size it names.
const MAX_SEALED: usize = 4096;

fn run(u: &mut Unstructured) -> Result<()> {
    let suite = if u.arbitrary::<bool>()? {
        Suite::Aes256Gcm
    } else {
        Suite::ChaCha20Poly1305
    };
    let size: u64 = u.arbitrary()?;
    let chunk_size: u32 = u.arbitrary()?;
    let Ok(shape) = TransferShape::new([5; 16], size, chunk_size, suite) else {
        return Ok(());
    };
    let chunks = shape.chunks();
    assert!(chunks >= 1, "a transfer without a final chunk");
    for index in [0, 1, chunks - 1, chunks, u64::MAX, u.arbitrary()?] {
        let _ = shape.is_final(index);
        let _ = shape.offset(index);
        let _ = shape.record_len(index);
        let _ = shape.chunk_at(index);
        match shape.plain_len(index) {
            Ok(len) => assert!(index < chunks && len <= chunk_size as usize),
            Err(e) => assert_eq!(e, ChunkError::OutOfRange(index)),
        }
    }
    assert!(shape.chunk_at(u.arbitrary()?) < chunks);

    let cipher = ChunkCipher::new(&[6; 32], &shape, &[7; 16], &[8; 16]);
    let index: u64 = if u.arbitrary::<bool>()? {
        u.arbitrary()?
    } else {
        chunks - 1
    };
    // An arbitrary record for an arbitrary index.
    let len = u.int_in_range(0..=MAX_SEALED + CHUNK_OVERHEAD)?;
    let mut record = u.bytes(len)?.to_vec();
    let _ = cipher.open(index, &mut record);

    // A sealed record opens once, at its own index, to its plaintext; any
    // change to it fails.
    let Ok(plain_len) = shape.plain_len(index) else {
        return Ok(());
    };
    if plain_len > MAX_SEALED {
        return Ok(());
    }
    let plaintext: Vec<u8> = (0..plain_len).map(|i| i as u8).collect();
    let mut sealed = plaintext.clone();
    cipher
        .seal(index, &mut sealed)
        .expect("a chunk of the right length seals");
    assert_eq!(sealed.len(), shape.record_len(index).expect("in range"));
    let mut copy = sealed.clone();
    assert_eq!(
        cipher.open(index, &mut copy).expect("opens"),
        &plaintext[..]
    );
    let other = index.wrapping_add(u.int_in_range(1..=u64::MAX)?);
    let mut copy = sealed.clone();
    assert!(
        cipher.open(other, &mut copy).is_err(),
        "a chunk opened at another index"
    );
    let at = u.choose_index(sealed.len())?;
    sealed[at] ^= u.int_in_range(1..=255)?;
    assert!(
        cipher.open(index, &mut sealed).is_err(),
        "an altered chunk opened"
    );
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
