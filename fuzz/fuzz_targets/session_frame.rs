//! Session frames (`openred_core::session`): the header parser, and a
//! receiver driven through its replay window and epochs by a script of
//! the fuzzer's choosing (seal, deliver again, deliver altered, deliver
//! arbitrary bytes, let time pass). Also the route label that every frame's
//! plaintext starts with (`openred_node::peer::frames`).
//!
//! What must hold whatever the script:
//! - nothing panics;
//! - a header that parses writes back to the same 30 bytes;
//! - a frame opens only if it is byte for byte one that was sealed, gives
//!   back exactly what was sealed, and opens at most once (no replay);
//! - delivered in order and without loss, every frame opens (the window and
//!   the epoch ratchet never refuse an honest stream).

#![no_main]

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use openred_core::session::{EpochConfig, FrameHeader, Suite, HEADER_LEN};
use openred_core::UnixTime;
use openred_node::peer::frames::{labelled, unlabel};

/// Each execution gets its own session keys. With the same keys in every
/// execution, a frame sealed in one is valid in the next; libFuzzer learns
/// its bytes from this model's own comparisons and plays it back as
/// "arbitrary bytes", which then opens though nothing sealed it in this run
/// (what the first CI run of this target reported). Run 0 is the seeds'.
static RUN: AtomicU64 = AtomicU64::new(1);

struct Sealed {
    frame: Vec<u8>,
    plaintext: Vec<u8>,
}

fn run(u: &mut Unstructured) -> Result<()> {
    let suite = if u.arbitrary::<bool>()? {
        Suite::Aes256Gcm
    } else {
        Suite::ChaCha20Poly1305
    };
    let config = EpochConfig {
        epoch_len_s: u.int_in_range(0..=100)?,
        grace_s: u.int_in_range(0..=100)?,
        replay_window: u.int_in_range(0..=200)?,
    };
    let mut now = UnixTime(1_000_000);
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let (initiator, responder) = openred_fuzz::session_pair(suite, now, config, run);
    let (sender, _) = initiator.into_split();
    let (_, mut receiver) = responder.into_split();

    let mut sealed: Vec<Sealed> = Vec::new();
    let by_frame = |sealed: &[Sealed], frame: &[u8]| sealed.iter().position(|s| s.frame == frame);
    let mut opened: HashSet<usize> = HashSet::new();
    // True while every frame sealed so far was delivered, in order, once.
    let mut in_order = true;
    let mut delivered_up_to = 0usize;

    let open = |receiver: &mut openred_core::session::Receiver,
                sealed: &[Sealed],
                frame: &[u8],
                now: UnixTime,
                opened: &mut HashSet<usize>| {
        let result = receiver.open(frame, now);
        if let Ok(plaintext) = &result {
            let Some(i) = by_frame(sealed, frame) else {
                panic!("a frame nobody sealed opened");
            };
            assert_eq!(
                plaintext, &sealed[i].plaintext,
                "a frame opened to other bytes"
            );
            assert!(opened.insert(i), "frame {i} opened twice (replay)");
        }
        result.is_ok()
    };

    while !u.is_empty() {
        match u.int_in_range(0..=4u8)? {
            // Seal a frame, maybe after some time.
            0 => {
                now = now.plus(u.int_in_range(0..=150)?);
                let len = u.int_in_range(0..=64)?;
                let plaintext = u.bytes(len)?.to_vec();
                let frame = sender
                    .seal(&plaintext, now)
                    .expect("a small plaintext seals");
                let (header, _) = FrameHeader::parse(&frame).expect("a sealed frame parses");
                assert_eq!(header.to_bytes()[..], frame[..HEADER_LEN]);
                sealed.push(Sealed { frame, plaintext });
            }
            // Deliver a sealed frame (again, out of order, or the next one).
            1 => {
                if sealed.is_empty() {
                    continue;
                }
                let i = u.choose_index(sealed.len())?;
                let frame = sealed[i].frame.clone();
                let ok = open(&mut receiver, &sealed, &frame, now, &mut opened);
                if i < delivered_up_to {
                    // A replay, refused (checked above) and without effect.
                } else if in_order && i == delivered_up_to {
                    assert!(ok, "frame {i} delivered in order did not open");
                    delivered_up_to += 1;
                } else {
                    in_order = false;
                }
            }
            // Deliver a sealed frame with one byte changed or cut short.
            2 => {
                if sealed.is_empty() {
                    continue;
                }
                let i = u.choose_index(sealed.len())?;
                let mut frame = sealed[i].frame.clone();
                let at = u.choose_index(frame.len())?;
                if u.arbitrary::<bool>()? {
                    frame[at] ^= u.int_in_range(1..=255)?;
                } else {
                    frame.truncate(at);
                }
                assert!(!open(&mut receiver, &sealed, &frame, now, &mut opened));
            }
            // Deliver arbitrary bytes.
            3 => {
                let len = u.int_in_range(0..=120)?;
                let frame = u.bytes(len)?.to_vec();
                if let Ok((header, _)) = FrameHeader::parse(&frame) {
                    assert_eq!(header.to_bytes()[..], frame[..HEADER_LEN]);
                }
                in_order &= by_frame(&sealed, &frame).is_none();
                open(&mut receiver, &sealed, &frame, now, &mut opened);
            }
            // Let time pass.
            _ => {
                now = now.plus(u.int_in_range(0..=1000)?);
                receiver.erase_expired(now);
            }
        }
    }
    Ok(())
}

/// The route label: whatever `unlabel` accepts writes back the same.
fn label(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let answer = flags & 1 == 1;
    let path_len = usize::from(flags >> 1).min(rest.len());
    let Ok(path) = std::str::from_utf8(&rest[..path_len]) else {
        return;
    };
    let plaintext = &rest[path_len..];
    if let Some(payload) = unlabel(path, answer, plaintext) {
        assert_eq!(
            labelled(path, answer, payload),
            plaintext,
            "label round trip"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok((header, _)) = FrameHeader::parse(data) {
        assert_eq!(
            header.to_bytes()[..],
            data[..HEADER_LEN],
            "header round trip"
        );
    }
    label(data);
    let _ = run(&mut Unstructured::new(data));
});
