//! Values sealed at rest (`Sealer`): XChaCha20-Poly1305 with a random
//! nonce, one value at a time and a group commit's worth at once.
//!
//! ```text
//! cargo bench -p openred-node --bench sealer
//! # the same with poly1305's AVX2 backend (a build without the
//! # repository's `--cfg poly1305_force_soft`, in a target folder of its own):
//! RUSTFLAGS=" " CARGO_TARGET_DIR=target/poly1305-avx2 cargo bench -p openred-node --bench sealer
//! ```
//!
//! Prints nanoseconds per value (the best of five rounds of about 0.3 s:
//! the machine is shared) for `seal` (a `getrandom` call per value),
//! `seal_each` over 512 values (one `getrandom` call for all) and `open`,
//! at 100 B (a short message), 1 KiB and 64 KiB (the largest body).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use openred_node::store::Sealer;

/// The best time per value of five rounds of `round`, each repeated for
/// about 0.3 s; `round` handles `per_round` values.
fn best_ns(per_round: usize, mut round: impl FnMut()) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let started = Instant::now();
        let mut values = 0usize;
        while started.elapsed() < Duration::from_millis(300) {
            round();
            values += per_round;
        }
        best = best.min(started.elapsed().as_nanos() as f64 / values as f64);
    }
    best
}

fn main() {
    let sealer = Sealer::new(&[7; 32]);
    let aad = [b"openred/v1/inbox".as_slice(), &[1; 32], &[2; 16]].concat();
    let backend = if cfg!(poly1305_force_soft) {
        "portable (--cfg poly1305_force_soft)"
    } else {
        "chosen at run time (AVX2 where the CPU has it)"
    };
    println!("poly1305 backend: {backend}");
    println!(
        "{:>8} {:>12} {:>16} {:>12}",
        "bytes", "seal ns", "seal_each ns", "open ns"
    );
    for size in [100usize, 1024, 64 * 1024] {
        let plaintext = vec![0x5a; size];
        let seal = best_ns(1, || {
            black_box(sealer.seal(&aad, black_box(&plaintext)).unwrap());
        });
        let batch = 512;
        let seal_each = best_ns(batch, || {
            let values = (0..batch).map(|_| (&aad, black_box(&plaintext)));
            black_box(sealer.seal_each(values).unwrap());
        });
        let sealed = sealer.seal(&aad, &plaintext).unwrap();
        let open = best_ns(1, || {
            black_box(sealer.open(&aad, black_box(&sealed)).unwrap());
        });
        println!("{size:>8} {seal:>12.0} {seal_each:>16.0} {open:>12.0}");
    }
}
