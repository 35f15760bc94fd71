//! The master key: 32 random bytes in the agent's key folder
//! (`keys/master.key`, mode 0600), from which the storage keys are derived.
//! It never leaves the agent; the node receives only derived keys.
//!
//! At rest it is either in clear (protected by the file's mode and the
//! node's confinement) or wrapped under a passphrase:
//!
//! ```text
//! openred-master-key v1
//! plain <64 hex>
//! ```
//! ```text
//! openred-master-key v1
//! argon2id m=<KiB> t=<passes> p=<lanes> salt=<32 hex> nonce=<48 hex> sealed=<96 hex>
//! ```
//!
//! Wrapping: `k = Argon2id(passphrase, salt, m, t, p)`, then
//! XChaCha20-Poly1305 under `k` with the 24-byte random nonce and the
//! associated data `openred/v1/master-key`. A wrong passphrase fails the
//! tag check. The passphrase comes from `OPENRED_PASSPHRASE` or from the file
//! named by `OPENRED_PASSPHRASE_FILE` (read by the agent before it confines
//! itself). Storage keys: `HKDF-SHA256(salt = "openred/v1/storage",
//! ikm = master, info = purpose)`, for the purposes in [`Purpose`] only.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::XChaCha20Poly1305;
use zeroize::Zeroizing;

/// Why keys could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The data directory already holds an identity.
    #[error("{0} already holds a node identity; refusing to overwrite it")]
    Exists(String),
    /// No identity yet.
    #[error("no node identity in {0}; run `openred node init --data DIR` first")]
    Missing(String),
    /// A key file is readable by group or others.
    #[error("key file {0} is readable by group or others; chmod 600 it")]
    Permissions(String),
    /// A key file does not hold a key.
    #[error("key file {0} is malformed")]
    Malformed(String),
    /// File system failure.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// No randomness.
    #[error("no randomness available: {0}")]
    Random(String),
    /// The master key's passphrase is missing or wrong.
    #[error("{0}")]
    Passphrase(String),
}

/// The file in the key folder.
pub const MASTER_FILE: &str = "master.key";
const HEADER: &str = "openred-master-key v1";
const AAD: &[u8] = b"openred/v1/master-key";
const STORAGE_SALT: &[u8] = b"openred/v1/storage";
/// Argon2id cost: 64 MiB, 3 passes, 1 lane (about a quarter second here).
const M_KIB: u32 = 64 * 1024;
const T: u32 = 3;
const P: u32 = 1;

/// What a derived storage key is for; the agent derives no other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Purpose {
    /// Sealing secrets in the node's database.
    NodeDatabase,
    /// The key of the keyed hashes that stand for node IDs in the audit
    /// log (BLAKE3 keyed mode).
    AuditNodeIds,
    /// Sealing the sensitive details of audit log entries.
    AuditDetails,
}

impl Purpose {
    fn info(self) -> &'static [u8] {
        match self {
            Purpose::NodeDatabase => b"openred/v1/storage/node-db",
            Purpose::AuditNodeIds => b"openred/v1/storage/audit-node-ids",
            Purpose::AuditDetails => b"openred/v1/storage/audit-details",
        }
    }
}

/// The passphrase from the environment, if any.
pub fn passphrase_from_env() -> Result<Option<Zeroizing<Vec<u8>>>, IdentityError> {
    if let Some(p) = std::env::var_os("OPENRED_PASSPHRASE") {
        return Ok(Some(Zeroizing::new(p.into_encoded_bytes())));
    }
    match std::env::var_os("OPENRED_PASSPHRASE_FILE") {
        Some(path) => {
            let path = Path::new(&path);
            let mut text = Zeroizing::new(Vec::new());
            std::fs::File::open(path)
                .and_then(|mut f| f.read_to_end(&mut text))
                .map_err(|source| IdentityError::Io {
                    path: path.display().to_string(),
                    source,
                })?;
            // One trailing newline, as editors write it, is not part of it.
            if text.last() == Some(&b'\n') {
                text.pop();
            }
            Ok(Some(text))
        }
        None => Ok(None),
    }
}

fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

fn malformed(path: &Path) -> IdentityError {
    IdentityError::Malformed(path.display().to_string())
}

fn kdf(
    passphrase: &[u8],
    salt: &[u8],
    m: u32,
    t: u32,
    p: u32,
) -> Result<Zeroizing<[u8; 32]>, IdentityError> {
    let params = argon2::Params::new(m, t, p, Some(32))
        .map_err(|e| IdentityError::Passphrase(format!("Argon2 parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase, salt, &mut key[..])
        .map_err(|e| IdentityError::Passphrase(format!("Argon2: {e}")))?;
    Ok(key)
}

/// The file's text for `master`, wrapped if a passphrase is given.
fn render(
    master: &[u8; 32],
    passphrase: Option<&[u8]>,
) -> Result<Zeroizing<String>, IdentityError> {
    let Some(passphrase) = passphrase else {
        return Ok(Zeroizing::new(format!("{HEADER}\nplain {}\n", hex(master))));
    };
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 24];
    getrandom::fill(&mut salt).map_err(|e| IdentityError::Random(e.to_string()))?;
    getrandom::fill(&mut nonce).map_err(|e| IdentityError::Random(e.to_string()))?;
    let key = kdf(passphrase, &salt, M_KIB, T, P)?;
    let sealed = XChaCha20Poly1305::new((&*key).into())
        .encrypt(
            (&nonce).into(),
            Payload {
                msg: master,
                aad: AAD,
            },
        )
        .map_err(|_| IdentityError::Passphrase("sealing the master key failed".into()))?;
    Ok(Zeroizing::new(format!(
        "{HEADER}\nargon2id m={M_KIB} t={T} p={P} salt={} nonce={} sealed={}\n",
        hex(&salt),
        hex(&nonce),
        hex(&sealed)
    )))
}

fn parse(
    path: &Path,
    text: &str,
    passphrase: Option<&[u8]>,
) -> Result<Zeroizing<[u8; 32]>, IdentityError> {
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(malformed(path));
    }
    let line = lines.next().ok_or_else(|| malformed(path))?;
    let decode = |h: &str| {
        data_encoding::HEXLOWER_PERMISSIVE
            .decode(h.as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| malformed(path))
    };
    if let Some(h) = line.strip_prefix("plain ") {
        let bytes = decode(h.trim())?;
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| malformed(path))?;
        return Ok(Zeroizing::new(key));
    }
    let fields = line
        .strip_prefix("argon2id ")
        .ok_or_else(|| malformed(path))?;
    let field = |name: &str| {
        fields
            .split_whitespace()
            .find_map(|f| f.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .ok_or_else(|| malformed(path))
    };
    let number = |name: &str| field(name)?.parse::<u32>().map_err(|_| malformed(path));
    let (m, t, p) = (number("m")?, number("t")?, number("p")?);
    // Bounds, so that a tampered file cannot make the agent allocate or
    // spin without limit.
    if !(8..=4 * 1024 * 1024).contains(&m) || !(1..=64).contains(&t) || !(1..=16).contains(&p) {
        return Err(malformed(path));
    }
    let salt = decode(field("salt")?)?;
    let nonce: [u8; 24] = decode(field("nonce")?)?
        .as_slice()
        .try_into()
        .map_err(|_| malformed(path))?;
    let sealed = decode(field("sealed")?)?;
    let passphrase = passphrase.ok_or_else(|| {
        IdentityError::Passphrase(
            "the master key is protected by a passphrase: set OPENRED_PASSPHRASE or OPENRED_PASSPHRASE_FILE".into(),
        )
    })?;
    let key = kdf(passphrase, &salt, m, t, p)?;
    let opened = Zeroizing::new(
        XChaCha20Poly1305::new((&*key).into())
            .decrypt(
                (&nonce).into(),
                Payload {
                    msg: &sealed,
                    aad: AAD,
                },
            )
            .map_err(|_| {
                IdentityError::Passphrase(
                    "wrong passphrase, or the master key file was altered".into(),
                )
            })?,
    );
    let master: [u8; 32] = opened.as_slice().try_into().map_err(|_| malformed(path))?;
    Ok(Zeroizing::new(master))
}

/// Creates `dir/master.key` with a new random key (refusing to overwrite).
pub fn create(dir: &Path, passphrase: Option<&[u8]>) -> Result<Zeroizing<[u8; 32]>, IdentityError> {
    let path = dir.join(MASTER_FILE);
    let mut master = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut master[..]).map_err(|e| IdentityError::Random(e.to_string()))?;
    let text = render(&master, passphrase)?;
    let io = |source| IdentityError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(master)
}

/// Loads `dir/master.key`, creating it first if the folder predates it.
pub fn load_or_create(
    dir: &Path,
    passphrase: Option<&[u8]>,
) -> Result<Zeroizing<[u8; 32]>, IdentityError> {
    let path = dir.join(MASTER_FILE);
    let mut file = match OpenOptions::new().read(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return create(dir, passphrase),
        Err(source) => {
            return Err(IdentityError::Io {
                path: path.display().to_string(),
                source,
            })
        }
    };
    let io = |source| IdentityError::Io {
        path: path.display().to_string(),
        source,
    };
    if file.metadata().map_err(io)?.permissions().mode() & 0o077 != 0 {
        return Err(IdentityError::Permissions(path.display().to_string()));
    }
    let mut text = Zeroizing::new(String::new());
    file.read_to_string(&mut text).map_err(io)?;
    parse(&path, &text, passphrase)
}

const KEY_FILE_HEADER: &str = "openred-key v1 sealed";

/// The key that seals the other private key files (identity, agreement)
/// when the master key is wrapped under a passphrase: derived from the
/// master key, so that one passphrase (one Argon2id run) guards them all.
fn key_file_key(master: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(STORAGE_SALT), master);
    let mut key = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's limit of 8160: cannot fail.
    let _ = hk.expand(b"openred/v1/key-file", &mut key[..]);
    key
}

/// The text of a private key file named `name`, sealed under the master
/// key: `openred-key v1 sealed nonce=<48 hex> sealed=<96 hex>`,
/// XChaCha20-Poly1305 with the file's name in the associated data (a
/// sealed identity key cannot pass for the agreement key).
pub fn seal_key_file(
    master: &[u8; 32],
    name: &str,
    secret: &[u8; 32],
) -> Result<Zeroizing<String>, IdentityError> {
    let mut nonce = [0u8; 24];
    getrandom::fill(&mut nonce).map_err(|e| IdentityError::Random(e.to_string()))?;
    let aad = format!("openred/v1/key-file/{name}");
    let sealed = XChaCha20Poly1305::new((&*key_file_key(master)).into())
        .encrypt(
            (&nonce).into(),
            Payload {
                msg: secret,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| IdentityError::Passphrase("sealing a key file failed".into()))?;
    Ok(Zeroizing::new(format!(
        "{KEY_FILE_HEADER} nonce={} sealed={}\n",
        hex(&nonce),
        hex(&sealed)
    )))
}

/// Opens a key file's text written by [`seal_key_file`]; `None` if the
/// text is not a sealed key file (a key in clear, hex).
pub fn open_key_file(
    master: &[u8; 32],
    path: &Path,
    name: &str,
    text: &str,
) -> Option<Result<Zeroizing<[u8; 32]>, IdentityError>> {
    let fields = text.trim().strip_prefix(KEY_FILE_HEADER)?;
    let field = |label: &str| {
        fields
            .split_whitespace()
            .find_map(|f| f.strip_prefix(label).and_then(|v| v.strip_prefix('=')))
            .and_then(|h| data_encoding::HEXLOWER_PERMISSIVE.decode(h.as_bytes()).ok())
            .ok_or_else(|| malformed(path))
    };
    let open = || {
        let nonce: [u8; 24] = field("nonce")?
            .as_slice()
            .try_into()
            .map_err(|_| malformed(path))?;
        let sealed = field("sealed")?;
        let aad = format!("openred/v1/key-file/{name}");
        let opened = Zeroizing::new(
            XChaCha20Poly1305::new((&*key_file_key(master)).into())
                .decrypt(
                    (&nonce).into(),
                    Payload {
                        msg: &sealed,
                        aad: aad.as_bytes(),
                    },
                )
                .map_err(|_| {
                    IdentityError::Passphrase(format!(
                        "{} does not open under this master key (altered, or from another node)",
                        path.display()
                    ))
                })?,
        );
        let key: [u8; 32] = opened.as_slice().try_into().map_err(|_| malformed(path))?;
        Ok(Zeroizing::new(key))
    };
    Some(open())
}

/// The storage key for `purpose`.
pub fn storage_key(master: &[u8; 32], purpose: Purpose) -> Zeroizing<[u8; 32]> {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(STORAGE_SALT), master);
    let mut key = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's limit of 8160: cannot fail.
    let _ = hk.expand(purpose.info(), &mut key[..]);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_key_round_trips_and_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let key = create(dir.path(), None).unwrap();
        assert_eq!(*load_or_create(dir.path(), None).unwrap(), *key);
        let mode = std::fs::metadata(dir.path().join(MASTER_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            create(dir.path(), None),
            Err(IdentityError::Io { .. })
        ));
    }

    #[test]
    fn a_wrapped_key_opens_only_with_its_passphrase_and_unaltered() {
        let dir = tempfile::tempdir().unwrap();
        let key = create(dir.path(), Some(b"correct horse")).unwrap();
        let path = dir.path().join(MASTER_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("argon2id"));
        assert!(!text.contains(&hex(&key[..])), "the key is in clear");
        assert_eq!(
            *load_or_create(dir.path(), Some(b"correct horse")).unwrap(),
            *key
        );
        for wrong in [None, Some(&b"wrong horse"[..])] {
            assert!(matches!(
                load_or_create(dir.path(), wrong),
                Err(IdentityError::Passphrase(_))
            ));
        }
        // One flipped hex digit of the sealed key fails the tag.
        let sealed_at = text.find("sealed=").unwrap() + "sealed=".len();
        let mut bytes = text.clone().into_bytes();
        bytes[sealed_at] = if bytes[sealed_at] == b'0' { b'1' } else { b'0' };
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            load_or_create(dir.path(), Some(b"correct horse")),
            Err(IdentityError::Passphrase(_))
        ));
        // An absurd cost is refused before any work.
        std::fs::write(&path, text.replace(&format!("m={M_KIB}"), "m=4294967295")).unwrap();
        assert!(matches!(
            load_or_create(dir.path(), Some(b"correct horse")),
            Err(IdentityError::Malformed(_))
        ));
    }

    #[test]
    fn storage_keys_differ_from_the_master_and_by_master() {
        let a = storage_key(&[1; 32], Purpose::NodeDatabase);
        let b = storage_key(&[2; 32], Purpose::NodeDatabase);
        assert_ne!(*a, *b);
        assert_ne!(*a, [1; 32]);
        assert_eq!(*a, *storage_key(&[1; 32], Purpose::NodeDatabase));
    }

    #[test]
    fn each_purpose_has_its_own_key() {
        let purposes = [
            Purpose::NodeDatabase,
            Purpose::AuditNodeIds,
            Purpose::AuditDetails,
        ];
        for (i, a) in purposes.iter().enumerate() {
            for b in &purposes[i + 1..] {
                assert_ne!(*storage_key(&[1; 32], *a), *storage_key(&[1; 32], *b));
            }
        }
    }
}
