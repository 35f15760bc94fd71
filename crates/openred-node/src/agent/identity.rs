//! The node's long-term keys on disk: `DATA/keys/identity.key` (Ed25519),
//! `DATA/keys/agreement.key` (X25519), hex, and `DATA/keys/master.key` (see
//! `master_key`), mode 0600, in a 0700 folder.
//!
//! Only [`NodeKeys`] touches the secret halves, and it signs only the kinds
//! of message a node has a reason to sign, each under its own context label.
//! A `NodeKeys` lives in the crypto agent process (`agent`), which exposes
//! only typed requests, so that it cannot be used as a signing oracle; the
//! node process itself holds one only with `danger_in_process_crypto`.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use openred_core::keys::SignatureContext;
use openred_core::{
    AgreementPublicKey, AgreementSecret, IdentityKeypair, IdentityPublicKey, NodeId,
};
use zeroize::Zeroizing;

/// The key folder inside the data directory.
pub const KEY_DIR: &str = "keys";
const IDENTITY_FILE: &str = "identity.key";
const AGREEMENT_FILE: &str = "agreement.key";
/// The identity's public half, in hex (0644): what `openred audit verify`
/// checks signatures with, offline, without any secret. It is written by
/// `node init` and, for a key folder from before it, by whoever loads the
/// keys first (the agent, before it confines itself). The node process
/// cannot write the key folder once confined, so it cannot swap this key.
pub const PUBLIC_FILE: &str = "identity.pub";

pub use super::master_key::IdentityError;

/// What a node may sign with its identity key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeSignature {
    /// Its own record.
    Record,
    /// A deregistration.
    Deregistration,
    /// A request to be introduced.
    ConnectionRequest,
    /// The answer to the directory's reachability challenge.
    ReachabilityProof,
    /// The answer to a peer's auth challenge.
    AuthChallenge,
    /// An entry of the node's audit log.
    AuditEntry,
    /// The head of the node's audit log.
    AuditHead,
}

impl NodeSignature {
    fn context(self) -> SignatureContext {
        match self {
            NodeSignature::Record => SignatureContext::NodeRecord,
            NodeSignature::Deregistration => SignatureContext::Deregistration,
            NodeSignature::ConnectionRequest => SignatureContext::ConnectionRequest,
            NodeSignature::ReachabilityProof => SignatureContext::ReachabilityProof,
            NodeSignature::AuthChallenge => SignatureContext::AuthChallenge,
            NodeSignature::AuditEntry => SignatureContext::AuditEntry,
            NodeSignature::AuditHead => SignatureContext::AuditHead,
        }
    }
}

/// The node's long-term keys.
pub struct NodeKeys {
    identity: IdentityKeypair,
    agreement: AgreementSecret,
    /// Derived once: a scalar multiplication the handshake would otherwise
    /// repeat on every call.
    agreement_public: AgreementPublicKey,
    /// The root of the storage keys (see `master_key`).
    master: Zeroizing<[u8; 32]>,
}

impl NodeKeys {
    /// Creates a new identity in `data_dir`, refusing to overwrite one,
    /// under the passphrase of the environment if one is set.
    pub fn create(data_dir: &Path) -> Result<NodeKeys, IdentityError> {
        let passphrase = crate::agent::master_key::passphrase_from_env()?;
        NodeKeys::create_with(data_dir, passphrase.as_ref().map(|p| p.as_slice()))
    }

    /// [`NodeKeys::create`] with the passphrase given.
    pub fn create_with(
        data_dir: &Path,
        passphrase: Option<&[u8]>,
    ) -> Result<NodeKeys, IdentityError> {
        let dir = data_dir.join(KEY_DIR);
        if dir.join(IDENTITY_FILE).exists() || dir.join(AGREEMENT_FILE).exists() {
            return Err(IdentityError::Exists(data_dir.display().to_string()));
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(&dir))?;
        let mut identity = Zeroizing::new([0u8; 32]);
        let mut agreement = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut identity[..]).map_err(|e| IdentityError::Random(e.to_string()))?;
        getrandom::fill(&mut agreement[..]).map_err(|e| IdentityError::Random(e.to_string()))?;
        let master = crate::agent::master_key::create(&dir, passphrase)?;
        // With a passphrase, every private key file is sealed (under the
        // wrapped master key), not only the master key.
        let seal = passphrase.is_some().then_some(&*master);
        write_key(&dir.join(IDENTITY_FILE), &identity, seal, false)?;
        write_key(&dir.join(AGREEMENT_FILE), &agreement, seal, false)?;
        let keys = NodeKeys::from_parts(&identity, *agreement, master);
        write_public(&dir, &keys.identity_public())?;
        Ok(keys)
    }

    /// Loads the identity from `data_dir`.
    pub fn load(data_dir: &Path) -> Result<NodeKeys, IdentityError> {
        NodeKeys::load_key_dir(&data_dir.join(KEY_DIR))
    }

    /// Loads the identity from the key folder itself (the agent is given
    /// only that folder).
    pub fn load_key_dir(dir: &Path) -> Result<NodeKeys, IdentityError> {
        let passphrase = crate::agent::master_key::passphrase_from_env()?;
        NodeKeys::load_key_dir_with(dir, passphrase.as_ref().map(|p| p.as_slice()))
    }

    /// [`NodeKeys::load_key_dir`] with the master key's passphrase given
    /// (the agent gets it from its launcher, not from its environment).
    pub fn load_key_dir_with(
        dir: &Path,
        passphrase: Option<&[u8]>,
    ) -> Result<NodeKeys, IdentityError> {
        if !dir.join(IDENTITY_FILE).exists() {
            return Err(IdentityError::Missing(dir.display().to_string()));
        }
        // A key folder from before the master key gets one now (the agent
        // loads its keys before it confines itself, so it may still write).
        let master = crate::agent::master_key::load_or_create(dir, passphrase)?;
        let identity = read_key(&dir.join(IDENTITY_FILE), &master, passphrase.is_some())?;
        let agreement = read_key(&dir.join(AGREEMENT_FILE), &master, passphrase.is_some())?;
        let keys = NodeKeys::from_parts(&identity, *agreement, master);
        if !dir.join(PUBLIC_FILE).exists() {
            // Best effort: a read-only key folder still serves.
            if let Err(e) = write_public(dir, &keys.identity_public()) {
                tracing::warn!(error = %e, "could not write the public key file");
            }
        }
        Ok(keys)
    }

    /// Keys from raw secrets, for tests and simulations; the master key is
    /// derived from them.
    pub fn from_secrets(identity: &[u8; 32], agreement: [u8; 32]) -> NodeKeys {
        let mut hasher = blake3::Hasher::new_derive_key("openred/v1/test-master-key");
        hasher.update(identity);
        hasher.update(&agreement);
        let master = Zeroizing::new(*hasher.finalize().as_bytes());
        NodeKeys::from_parts(identity, agreement, master)
    }

    fn from_parts(
        identity: &[u8; 32],
        agreement: [u8; 32],
        master: Zeroizing<[u8; 32]>,
    ) -> NodeKeys {
        let agreement = AgreementSecret::from_secret_bytes(agreement);
        NodeKeys {
            identity: IdentityKeypair::from_secret_bytes(identity),
            agreement_public: agreement.public(),
            agreement,
            master,
        }
    }

    /// The storage key for `purpose`, derived from the master key.
    pub fn storage_key(&self, purpose: crate::agent::master_key::Purpose) -> Zeroizing<[u8; 32]> {
        crate::agent::master_key::storage_key(&self.master, purpose)
    }

    /// The node's ID.
    pub fn node_id(&self) -> NodeId {
        self.identity.node_id()
    }

    /// The identity public key.
    pub fn identity_public(&self) -> IdentityPublicKey {
        self.identity.public()
    }

    /// The agreement public key.
    pub fn agreement_public(&self) -> AgreementPublicKey {
        self.agreement_public
    }

    /// Signs `message` as `kind`.
    pub fn sign(&self, kind: NodeSignature, message: &[u8]) -> [u8; 64] {
        self.identity.sign(kind.context(), message)
    }

    /// The identity key pair, for signing records with `NodeRecord::sign`.
    pub fn identity(&self) -> &IdentityKeypair {
        &self.identity
    }

    /// The X25519 secret, for opening tokens and the Noise handshake.
    pub fn agreement_secret(&self) -> Zeroizing<[u8; 32]> {
        self.agreement.secret_bytes()
    }
}

/// Fails with [`IdentityError::Missing`] unless `data_dir` holds an
/// identity; reads no key (the node leaves that to its agent).
pub fn check_present(data_dir: &Path) -> Result<(), IdentityError> {
    if key_dir(data_dir).join(IDENTITY_FILE).exists() {
        Ok(())
    } else {
        Err(IdentityError::Missing(data_dir.display().to_string()))
    }
}

/// The node's identity public key, from `keys/identity.pub` (no secret
/// is read).
pub fn public_key(data_dir: &Path) -> Result<IdentityPublicKey, IdentityError> {
    let path = key_dir(data_dir).join(PUBLIC_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(IdentityError::Missing(path.display().to_string()))
        }
        Err(e) => return Err(io_err(&path)(e)),
    };
    let malformed = || IdentityError::Malformed(path.display().to_string());
    let bytes = data_encoding::HEXLOWER_PERMISSIVE
        .decode(text.trim().as_bytes())
        .map_err(|_| malformed())?;
    let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| malformed())?;
    IdentityPublicKey::from_bytes(&bytes).map_err(|_| malformed())
}

fn write_public(dir: &Path, public: &IdentityPublicKey) -> Result<(), IdentityError> {
    let path = dir.join(PUBLIC_FILE);
    let text = format!("{}\n", data_encoding::HEXLOWER.encode(&public.to_bytes()));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&path)
        .map_err(io_err(&path))?;
    file.write_all(text.as_bytes()).map_err(io_err(&path))?;
    file.sync_all().map_err(io_err(&path))
}

/// Hands the key folder and its files to the agent's user (`--agent-user`,
/// a node running as root), so that the agent, which never runs as root,
/// can read them and discretionary access control keeps every other
/// non-root user out (0700 folder, 0600 files). Fails with a clear message
/// if that user could not reach the folder through its parents (no search
/// permission), which would otherwise surface as an agent that cannot start.
pub fn hand_keys_to(dir: &Path, user: crate::agent::process::RunAs) -> Result<(), IdentityError> {
    use std::os::unix::fs::MetadataExt;
    let canonical = fs::canonicalize(dir).map_err(io_err(dir))?;
    for ancestor in canonical.ancestors().skip(1) {
        let meta = fs::metadata(ancestor).map_err(io_err(ancestor))?;
        let mode = meta.mode();
        let searchable = if meta.uid() == user.uid {
            mode & 0o100 != 0
        } else if meta.gid() == user.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !searchable {
            return Err(IdentityError::Io {
                path: ancestor.display().to_string(),
                source: io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "the agent user (uid {}) cannot search this folder on the way to the \
                         key folder; allow it (e.g. chmod o+x) or move the data folder",
                        user.uid
                    ),
                ),
            });
        }
    }
    let chown = |path: &Path| {
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).map_err(io_err(path))
    };
    chown(&canonical)?;
    for entry in fs::read_dir(&canonical).map_err(io_err(&canonical))? {
        let entry = entry.map_err(io_err(&canonical))?;
        if entry.file_type().map_err(io_err(&entry.path()))?.is_file() {
            chown(&entry.path())?;
        }
    }
    Ok(())
}

/// The key folder of a data directory (the crypto agent's).
pub fn key_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_DIR)
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes a private key file (0600): sealed under `seal` (the master key,
/// when a passphrase wraps it), else in hex. `replace`: over an existing
/// file, through a new file renamed over it.
fn write_key(
    path: &Path,
    secret: &[u8; 32],
    seal: Option<&[u8; 32]>,
    replace: bool,
) -> Result<(), IdentityError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let text = match seal {
        Some(master) => crate::agent::master_key::seal_key_file(master, name, secret)?,
        None => Zeroizing::new(format!("{}\n", data_encoding::HEXLOWER.encode(secret))),
    };
    let target = if replace {
        path.with_extension("key.new")
    } else {
        path.to_path_buf()
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&target)
        .map_err(io_err(&target))?;
    file.write_all(text.as_bytes()).map_err(io_err(&target))?;
    file.sync_all().map_err(io_err(&target))?;
    if replace {
        fs::rename(&target, path).map_err(io_err(path))?;
    }
    Ok(())
}

/// Reads a private key file: sealed (opened with `master`) or in hex. A key
/// in clear in a folder whose master key is wrapped (`sealing`) is sealed
/// now, in place: the agent reads its keys before it confines itself.
fn read_key(
    path: &Path,
    master: &[u8; 32],
    sealing: bool,
) -> Result<Zeroizing<[u8; 32]>, IdentityError> {
    let mut file = OpenOptions::new()
        .read(true)
        .open(path)
        .map_err(io_err(path))?;
    let mode = file.metadata().map_err(io_err(path))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(IdentityError::Permissions(path.display().to_string()));
    }
    let mut text = Zeroizing::new(String::new());
    file.read_to_string(&mut text).map_err(io_err(path))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if let Some(opened) = crate::agent::master_key::open_key_file(master, path, name, &text) {
        return opened;
    }
    let malformed = || IdentityError::Malformed(path.display().to_string());
    let bytes = Zeroizing::new(
        data_encoding::HEXLOWER_PERMISSIVE
            .decode(text.trim().as_bytes())
            .map_err(|_| malformed())?,
    );
    let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| malformed())?;
    if sealing {
        write_key(path, &key, Some(master), true)?;
    }
    Ok(Zeroizing::new(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The passphrase wrapped only `master.key`: the identity and agreement
    /// keys sat in clear beside it.
    #[test]
    fn a_passphrase_seals_every_private_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let pass: &[u8] = b"a passphrase";
        let keys = NodeKeys::create_with(dir.path(), Some(pass)).unwrap();
        let key_dir = dir.path().join(KEY_DIR);
        let agreement_hex = data_encoding::HEXLOWER.encode(&keys.agreement_secret()[..]);
        for file in [IDENTITY_FILE, AGREEMENT_FILE] {
            let text = fs::read_to_string(key_dir.join(file)).unwrap();
            assert!(text.starts_with("openred-key v1 sealed "), "{file}: {text}");
            assert!(!text.contains(&agreement_hex), "{file}");
        }
        assert!(NodeKeys::load_key_dir_with(&key_dir, None).is_err());
        assert!(NodeKeys::load_key_dir_with(&key_dir, Some(b"wrong")).is_err());
        let loaded = NodeKeys::load_key_dir_with(&key_dir, Some(pass)).unwrap();
        assert_eq!(loaded.node_id(), keys.node_id());
        assert_eq!(loaded.agreement_public(), keys.agreement_public());

        // A sealed file under another name does not open: the name is bound.
        let identity = fs::read(key_dir.join(IDENTITY_FILE)).unwrap();
        let agreement = fs::read(key_dir.join(AGREEMENT_FILE)).unwrap();
        fs::write(key_dir.join(AGREEMENT_FILE), &identity).unwrap();
        assert!(NodeKeys::load_key_dir_with(&key_dir, Some(pass)).is_err());

        // A key left in clear from before is sealed at the next load.
        fs::write(key_dir.join(AGREEMENT_FILE), format!("{agreement_hex}\n")).unwrap();
        let reloaded = NodeKeys::load_key_dir_with(&key_dir, Some(pass)).unwrap();
        assert_eq!(reloaded.agreement_public(), keys.agreement_public());
        let text = fs::read_to_string(key_dir.join(AGREEMENT_FILE)).unwrap();
        assert!(text.starts_with("openred-key v1 sealed "), "{text}");
        assert_ne!(text.as_bytes(), &agreement[..], "a fresh nonce");
        let mode = fs::metadata(key_dir.join(AGREEMENT_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn create_refuses_to_overwrite_and_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let keys = NodeKeys::create(dir.path()).unwrap();
        assert!(matches!(
            NodeKeys::create(dir.path()),
            Err(IdentityError::Exists(_))
        ));
        let again = NodeKeys::load(dir.path()).unwrap();
        assert_eq!(keys.node_id(), again.node_id());
        assert_eq!(keys.agreement_public(), again.agreement_public());
        for file in [IDENTITY_FILE, AGREEMENT_FILE] {
            let mode = fs::metadata(key_dir(dir.path()).join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
    }

    #[test]
    fn load_without_identity_or_with_open_permissions_fails() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            NodeKeys::load(dir.path()),
            Err(IdentityError::Missing(_))
        ));
        NodeKeys::create(dir.path()).unwrap();
        let path = key_dir(dir.path()).join(IDENTITY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            NodeKeys::load(dir.path()),
            Err(IdentityError::Permissions(_))
        ));
    }

    #[test]
    fn signatures_carry_their_kind() {
        let keys = NodeKeys::from_secrets(&[1; 32], [2; 32]);
        let sig = keys.sign(NodeSignature::ReachabilityProof, b"challenge");
        let public = keys.identity_public();
        assert!(public
            .verify(SignatureContext::ReachabilityProof, b"challenge", &sig)
            .is_ok());
        assert!(public
            .verify(SignatureContext::NodeRecord, b"challenge", &sig)
            .is_err());
    }
}
