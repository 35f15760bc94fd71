//! Session frame throughput, next to `openssl speed` for the same AEAD.
//!
//! ```text
//! cargo bench -p openred-core --bench frames [-- --seconds 1.5] [--openssl-seconds 2]
//!     [--no-openssl] [--only "chacha20-poly1305 1024"] [--summary FILE]
//! ```
//!
//! For ChaCha20-Poly1305 and AES-256-GCM, at 1 KiB and 64 KiB of payload,
//! it measures, each for about `--seconds`:
//!
//! - `frame seal+open`: the initiator's [`Session::seal`] then the
//!   responder's [`Session::open`] of the same frame, in one thread (the
//!   issue's "encrypt + decrypt");
//! - `frame seal` and `frame open` alone (the frames to open are sealed
//!   outside the timed part);
//! - `ring enc` and `ring enc+dec`: ring's AEAD (which the frame layer
//!   uses) in place on one buffer, without the frame layer (no header, no
//!   allocation, no replay window), to tell the library's speed from the
//!   frame layer's;
//! - `rustcrypto enc` and `rustcrypto enc+dec`: the same with the
//!   RustCrypto crates (`chacha20poly1305`, `aes-gcm`), which the frame
//!   layer used before; kept as a reference for that decision.
//!
//! Then, unless `--no-openssl` (or no `openssl` on the `PATH`), it runs
//! `openssl speed -mr -aead [-decrypt] -evp <cipher> -bytes <size>
//! -seconds <s>` for each cipher and size. `-aead` makes openssl set a
//! fresh IV, 13 bytes of AAD and compute the tag for every buffer (a
//! TLS-like record), the closest match to a frame. openssl speed measures
//! encryption only unless told `-decrypt`, so both are run, and the
//! comparison is per round trip: openssl's encrypt+decrypt time per byte
//! (`1 / (1/enc + 1/dec)`) against our seal+open.
//!
//! Timing: openssl speed divides by the process's *user CPU time* (not wall
//! time) unless `-elapsed`. On a shared machine that matters, so this bench
//! reads both wall time and the thread's on-CPU time
//! (`/proc/thread-self/schedstat`) and compares CPU time with CPU time;
//! wall-time figures are printed beside them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::Aes256Gcm;
use chacha20poly1305::ChaCha20Poly1305;
use openred_core::session::{EpochConfig, Role, Session, Suite, HEADER_LEN};
use openred_core::UnixTime;

const SIZES: [usize; 2] = [1024, 64 * 1024];
const NOW: UnixTime = UnixTime(1_700_000_000);

/// The calling thread's on-CPU time in nanoseconds (user + system).
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Accumulated time of the timed parts of a measurement.
#[derive(Default, Clone, Copy)]
struct Sample {
    frames: u64,
    wall: Duration,
    cpu: Option<Duration>,
}

impl Sample {
    fn per_s(&self, use_cpu: bool) -> f64 {
        let t = if use_cpu {
            self.cpu.unwrap_or(self.wall)
        } else {
            self.wall
        };
        self.frames as f64 / t.as_secs_f64()
    }
}

/// Runs `setup` (untimed) then `work` (timed, returns how many frames it
/// processed) until the timed parts add up to `budget`.
fn measure(budget: Duration, mut setup: impl FnMut(), mut work: impl FnMut() -> u64) -> Sample {
    let mut sample = Sample {
        cpu: Some(Duration::ZERO),
        ..Sample::default()
    };
    while sample.wall < budget {
        setup();
        let cpu0 = thread_cpu_ns();
        let t0 = Instant::now();
        sample.frames += work();
        sample.wall += t0.elapsed();
        let cpu1 = thread_cpu_ns();
        sample.cpu = match (sample.cpu, cpu0, cpu1) {
            (Some(acc), Some(a), Some(b)) => Some(acc + Duration::from_nanos(b.saturating_sub(a))),
            _ => None,
        };
    }
    sample
}

fn session_pair(suite: Suite) -> (Session, Session) {
    let h = [7u8; 32];
    let i2r = [1u8; 32];
    let r2i = [2u8; 32];
    let config = EpochConfig::default();
    let a = Session::new(Role::Initiator, suite, &h, &i2r, &r2i, NOW, config);
    let b = Session::new(Role::Responder, suite, &h, &i2r, &r2i, NOW, config);
    (a, b)
}

/// Frames per timed batch: about 1 MiB (64 KiB frames) to 1 MiB (1 KiB).
fn batch(size: usize) -> usize {
    (1 << 20) / size
}

fn frame_roundtrip(suite: Suite, size: usize, budget: Duration) -> Sample {
    let (a, b) = session_pair(suite);
    let payload = vec![0x5au8; size];
    let n = batch(size);
    measure(
        budget,
        || {},
        || {
            for _ in 0..n {
                let frame = a.seal(&payload, NOW).unwrap();
                let plain = b.open(&frame, NOW).unwrap();
                black_box(plain);
            }
            n as u64
        },
    )
}

fn frame_seal(suite: Suite, size: usize, budget: Duration) -> Sample {
    let (a, _) = session_pair(suite);
    let payload = vec![0x5au8; size];
    let n = batch(size);
    measure(
        budget,
        || {},
        || {
            for _ in 0..n {
                black_box(a.seal(&payload, NOW).unwrap());
            }
            n as u64
        },
    )
}

fn frame_open(suite: Suite, size: usize, budget: Duration) -> Sample {
    let (a, b) = session_pair(suite);
    let payload = vec![0x5au8; size];
    let n = batch(size);
    let frames = std::cell::RefCell::new(Vec::<Vec<u8>>::with_capacity(n));
    measure(
        budget,
        || {
            let mut f = frames.borrow_mut();
            f.clear();
            for _ in 0..n {
                f.push(a.seal(&payload, NOW).unwrap());
            }
        },
        || {
            let f = frames.borrow();
            for frame in f.iter() {
                black_box(b.open(frame, NOW).unwrap());
            }
            n as u64
        },
    )
}

enum Raw {
    ChaCha(ChaCha20Poly1305),
    Aes(Box<Aes256Gcm>),
}

impl Raw {
    fn new(suite: Suite) -> Raw {
        let key = [3u8; 32];
        match suite {
            Suite::ChaCha20Poly1305 => Raw::ChaCha(ChaCha20Poly1305::new((&key).into())),
            Suite::Aes256Gcm => Raw::Aes(Box::new(Aes256Gcm::new((&key).into()))),
        }
    }

    fn nonce(seq: u64) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&seq.to_be_bytes());
        n
    }

    fn encrypt(&self, seq: u64, aad: &[u8], buf: &mut [u8]) -> [u8; 16] {
        let n = Raw::nonce(seq);
        let tag = match self {
            Raw::ChaCha(c) => c.encrypt_in_place_detached((&n).into(), aad, buf),
            Raw::Aes(c) => c.encrypt_in_place_detached((&n).into(), aad, buf),
        };
        tag.unwrap().into()
    }

    fn decrypt(&self, seq: u64, aad: &[u8], buf: &mut [u8], tag: &[u8; 16]) {
        let n = Raw::nonce(seq);
        match self {
            Raw::ChaCha(c) => c.decrypt_in_place_detached((&n).into(), aad, buf, tag.into()),
            Raw::Aes(c) => c.decrypt_in_place_detached((&n).into(), aad, buf, tag.into()),
        }
        .unwrap();
    }
}

fn raw(suite: Suite, size: usize, budget: Duration, decrypt: bool) -> Sample {
    let cipher = Raw::new(suite);
    let aad = [9u8; HEADER_LEN];
    let mut buf = vec![0x5au8; size];
    let n = batch(size);
    let mut seq = 0u64;
    measure(
        budget,
        || {},
        || {
            for _ in 0..n {
                let tag = cipher.encrypt(seq, &aad, &mut buf);
                if decrypt {
                    cipher.decrypt(seq, &aad, &mut buf, &tag);
                }
                black_box(&buf);
                seq += 1;
            }
            n as u64
        },
    )
}

fn raw_ring(suite: Suite, size: usize, budget: Duration, decrypt: bool) -> Sample {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};
    let algorithm = match suite {
        Suite::ChaCha20Poly1305 => &CHACHA20_POLY1305,
        Suite::Aes256Gcm => &AES_256_GCM,
    };
    let key = LessSafeKey::new(UnboundKey::new(algorithm, &[3u8; 32]).unwrap());
    let aad = [9u8; HEADER_LEN];
    let mut buf = vec![0x5au8; size];
    let n = batch(size);
    let mut seq = 0u64;
    measure(
        budget,
        || {},
        || {
            for _ in 0..n {
                let nonce = || Nonce::assume_unique_for_key(Raw::nonce(seq));
                let tag = key
                    .seal_in_place_separate_tag(nonce(), Aad::from(&aad), &mut buf)
                    .unwrap();
                if decrypt {
                    key.open_in_place_separate_tag(nonce(), Aad::from(&aad), tag, &mut buf, 0..)
                        .unwrap();
                }
                black_box(&buf);
                seq += 1;
            }
            n as u64
        },
    )
}

/// openssl's figure in bytes per second, or `None` if it did not run.
fn openssl_speed(suite: Suite, size: usize, seconds: u64, decrypt: bool) -> Option<f64> {
    let cipher = match suite {
        Suite::ChaCha20Poly1305 => "chacha20-poly1305",
        Suite::Aes256Gcm => "aes-256-gcm",
    };
    let mut cmd = Command::new("openssl");
    cmd.args(["speed", "-mr", "-aead"]);
    if decrypt {
        cmd.arg("-decrypt");
    }
    cmd.args(["-evp", cipher, "-bytes", &size.to_string()]);
    cmd.args(["-seconds", &seconds.to_string()]);
    let out = cmd.output().ok()?;
    if !out.status.success() {
        return None;
    }
    // `+F:<n>:<name>:<bytes per second>` (one size, so one value).
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("+F:"))
        .and_then(|l| l.rsplit(':').next())
        .and_then(|v| v.trim().parse().ok())
}

fn mb(bytes_per_s: f64) -> f64 {
    bytes_per_s / 1e6
}

fn main() {
    let mut seconds = 1.5f64;
    let mut openssl_seconds = 2u64;
    let mut openssl = true;
    let mut summary: Option<String> = None;
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    // `cargo bench` passes `--bench`; anything unknown is ignored.
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => seconds = args.next().and_then(|v| v.parse().ok()).unwrap_or(seconds),
            "--openssl-seconds" => {
                openssl_seconds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(openssl_seconds)
            }
            "--no-openssl" => openssl = false,
            "--only" => only = args.next(),
            "--summary" => summary = args.next(),
            _ => {}
        }
    }
    let budget = Duration::from_secs_f64(seconds);
    let cpu_ok = thread_cpu_ns().is_some();
    if openssl {
        match Command::new("openssl").arg("version").output() {
            Ok(v) => println!("openssl: {}", String::from_utf8_lossy(&v.stdout).trim()),
            Err(_) => {
                eprintln!("openssl not found: no comparison (apt-get install -y openssl)");
                openssl = false;
            }
        }
    }
    println!(
        "timing: {} per measurement; rates on {} time (wall-time rates in brackets)",
        format_args!("{seconds:.1} s"),
        if cpu_ok { "thread CPU" } else { "wall" }
    );
    println!();
    println!(
        "{:<18} {:>7}  {:<17} {:>12} {:>20}",
        "suite", "payload", "what", "frames/s", "MB/s (wall MB/s)"
    );

    let mut tsv = String::new();
    let mut comparisons = Vec::new();
    for suite in Suite::ALL {
        for size in SIZES {
            if only
                .as_deref()
                .is_some_and(|o| !format!("{} {size}", suite.name()).contains(o))
            {
                continue;
            }
            let label = if size >= 1024 * 1024 {
                format!("{} MiB", size >> 20)
            } else {
                format!("{} KiB", size >> 10)
            };
            let rows: [(&str, Sample); 7] = [
                ("frame seal+open", frame_roundtrip(suite, size, budget)),
                ("frame seal", frame_seal(suite, size, budget)),
                ("frame open", frame_open(suite, size, budget)),
                ("ring enc", raw_ring(suite, size, budget, false)),
                ("ring enc+dec", raw_ring(suite, size, budget, true)),
                ("rustcrypto enc", raw(suite, size, budget, false)),
                ("rustcrypto enc+dec", raw(suite, size, budget, true)),
            ];
            for (what, s) in &rows {
                let fps = s.per_s(true);
                println!(
                    "{:<18} {:>7}  {:<17} {:>12.0} {:>10.1} ({:>7.1})",
                    suite.name(),
                    label,
                    what,
                    fps,
                    mb(fps * size as f64),
                    mb(s.per_s(false) * size as f64),
                );
                let _ = writeln!(
                    tsv,
                    "frames\t{}\t{}\t{what} MB/s\t{:.1}",
                    suite.name(),
                    size,
                    mb(fps * size as f64),
                );
                let _ = writeln!(
                    tsv,
                    "frames\t{}\t{}\t{what} frames/s\t{:.0}",
                    suite.name(),
                    size,
                    fps,
                );
            }
            if openssl {
                let enc = openssl_speed(suite, size, openssl_seconds, false);
                let dec = openssl_speed(suite, size, openssl_seconds, true);
                for (what, v) in [("openssl -aead enc", enc), ("openssl -aead dec", dec)] {
                    if let Some(v) = v {
                        println!(
                            "{:<18} {:>7}  {:<17} {:>12.0} {:>10.1}",
                            suite.name(),
                            label,
                            what,
                            v / size as f64,
                            mb(v)
                        );
                    }
                }
                if let (Some(enc), Some(dec)) = (enc, dec) {
                    comparisons.push((suite, size, label.clone(), rows, enc, dec));
                }
            }
        }
    }

    if comparisons.is_empty() {
        if let Some(path) = summary {
            std::fs::write(path, tsv).expect("writing the summary");
        }
        return;
    }
    println!();
    println!("Comparison, MB/s of payload on CPU time (openssl: its user CPU time).");
    println!("e+d: each byte encrypted once and decrypted once; openssl e+d = 1/(1/enc + 1/dec).");
    println!(
        "{:<18} {:>7}  {:>10} {:>10} {:>6}  {:>10} {:>6}  {:>10} {:>6}  {:>10} {:>10} {:>6}",
        "suite",
        "payload",
        "frames e+d",
        "openssl",
        "ratio",
        "ring e+d",
        "ratio",
        "rustcr e+d",
        "ratio",
        "frame seal",
        "ossl enc",
        "ratio"
    );
    for (suite, size, label, rows, enc, dec) in comparisons {
        let bytes = |s: &Sample| s.per_s(true) * size as f64;
        let ours_rt = bytes(&rows[0].1);
        let ossl_rt = 1.0 / (1.0 / enc + 1.0 / dec);
        let ours_seal = bytes(&rows[1].1);
        let ring_rt = bytes(&rows[4].1);
        let raw_rt = bytes(&rows[6].1);
        println!(
            "{:<18} {:>7}  {:>10.1} {:>10.1} {:>5.0}%  {:>10.1} {:>5.0}%  {:>10.1} {:>5.0}%  {:>10.1} {:>10.1} {:>5.0}%",
            suite.name(),
            label,
            mb(ours_rt),
            mb(ossl_rt),
            100.0 * ours_rt / ossl_rt,
            mb(ring_rt),
            100.0 * ring_rt / ossl_rt,
            mb(raw_rt),
            100.0 * raw_rt / ossl_rt,
            mb(ours_seal),
            mb(enc),
            100.0 * ours_seal / enc,
        );
        for (what, v) in [
            ("openssl enc MB/s", mb(enc)),
            ("openssl dec MB/s", mb(dec)),
            ("openssl e+d MB/s", mb(ossl_rt)),
            ("ratio frames e+d / openssl e+d", ours_rt / ossl_rt),
            ("ratio ring e+d / openssl e+d", ring_rt / ossl_rt),
            ("ratio rustcrypto e+d / openssl e+d", raw_rt / ossl_rt),
            ("ratio frame seal / openssl enc", ours_seal / enc),
        ] {
            let _ = writeln!(
                tsv,
                "frames\t{}\t{}\t{}\t{:.3}",
                suite.name(),
                size,
                what,
                v
            );
        }
    }
    println!();
    println!("target: frames at 64 KiB >= 70% of openssl (seal+open against openssl enc+dec)");
    if let Some(path) = summary {
        std::fs::write(path, tsv).expect("writing the summary");
    }
}
