//! The directory's own Ed25519 key, created on first start in the data
//! directory. Nodes pin its fingerprint; it signs token envelopes.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use openred_core::IdentityKeypair;
use zeroize::Zeroizing;

const KEY_FILE: &str = "directory.key";

/// Why the key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: io::Error,
    },
    /// The key file does not hold a key.
    #[error("key file {0} is malformed (expected 64 hex characters)")]
    Malformed(String),
    /// The key file is readable by others.
    #[error("key file {0} is readable by group or others; chmod 600 it")]
    Permissions(String),
    /// No randomness available.
    #[error("no randomness for a new key: {0}")]
    Random(String),
}

/// Loads the directory key from `data_dir`, creating it (mode 0600) if it
/// does not exist yet. Returns the key and whether it was just created.
pub fn load_or_create(data_dir: &Path) -> Result<(IdentityKeypair, bool), KeyError> {
    let path = data_dir.join(KEY_FILE);
    let shown = path.display().to_string();
    let io_err = |source| KeyError::Io {
        path: shown.clone(),
        source,
    };
    match OpenOptions::new().read(true).open(&path) {
        Ok(mut file) => {
            let mode = file.metadata().map_err(io_err)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(KeyError::Permissions(shown));
            }
            let mut text = Zeroizing::new(String::new());
            file.read_to_string(&mut text).map_err(io_err)?;
            let decoded = Zeroizing::new(
                data_encoding::HEXLOWER_PERMISSIVE
                    .decode(text.trim().as_bytes())
                    .map_err(|_| KeyError::Malformed(shown.clone()))?,
            );
            let secret: Zeroizing<[u8; 32]> = Zeroizing::new(
                decoded
                    .as_slice()
                    .try_into()
                    .map_err(|_| KeyError::Malformed(shown.clone()))?,
            );
            Ok((IdentityKeypair::from_secret_bytes(&secret), false))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(data_dir).map_err(io_err)?;
            let mut secret = Zeroizing::new([0u8; 32]);
            getrandom::fill(&mut secret[..]).map_err(|e| KeyError::Random(e.to_string()))?;
            let key = IdentityKeypair::from_secret_bytes(&secret);
            let text = Zeroizing::new(data_encoding::HEXLOWER.encode(&secret[..]));
            // create_new: never overwrite a key that appeared meanwhile.
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io_err)?;
            file.write_all(text.as_bytes()).map_err(io_err)?;
            file.write_all(b"\n").map_err(io_err)?;
            file.sync_all().map_err(io_err)?;
            Ok((key, true))
        }
        Err(e) => Err(io_err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_loaded_with_0600() {
        let dir = tempfile::tempdir().unwrap();
        let (a, created) = load_or_create(dir.path()).unwrap();
        assert!(created);
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (b, created) = load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(a.public(), b.public());
    }

    #[test]
    fn refuses_a_world_readable_or_malformed_key() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_create(dir.path()),
            Err(KeyError::Permissions(_))
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "not hex").unwrap();
        assert!(matches!(
            load_or_create(dir.path()),
            Err(KeyError::Malformed(_))
        ));
    }
}
