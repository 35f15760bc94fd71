//! Files on disk: what a share records of its file (canonical path and
//! identity), opening it again at serve time without being fooled by a
//! swapped file or a symbolic link, hashing, the names that come from
//! peers, and the receiver's partial file.
//!
//! What this module must never do: turn a name from a peer into a path
//! other than one plain component inside the folder the owner chose
//! ([`safe_file_name`]), follow a symbolic link at the last component of
//! a shared file, serve a file whose identity differs from the one
//! recorded when it was shared, or share a file of the node's data folder
//! (the admin token, the owner's TOTP secret and password hash, the
//! database, the audit log) by any path ([`refuse_data_folder`]).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use openred_core::file_transfer::TransferShape;

/// What identifies the file that was shared: a file put in its place, a
/// symbolic link swapped in, or an edit that changed its size or
/// modification time is caught at serve time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    /// The device holding it.
    pub device: u64,
    /// Its inode.
    pub inode: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time in nanoseconds since 1970.
    pub mtime_ns: i64,
}

impl FileIdentity {
    fn of(meta: &std::fs::Metadata) -> FileIdentity {
        FileIdentity {
            device: meta.dev(),
            inode: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime().saturating_mul(1_000_000_000) + meta.mtime_nsec(),
        }
    }
}

/// Why a file could not be shared or served.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The path is not absolute.
    #[error("the path must be absolute")]
    NotAbsolute,
    /// Nothing there, or the node may not read it.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A folder, a device, a socket…
    #[error("{0} is not a regular file")]
    NotAFile(String),
    /// The file is not the one shared any more (replaced, a symbolic link
    /// swapped in, edited).
    #[error("the shared file was replaced or changed since it was shared")]
    Changed,
    /// Reading failed.
    #[error("reading the file failed: {0}")]
    Read(std::io::Error),
    /// The file is one of the node's own (its data folder), reached by its
    /// path, a symbolic link, a hard link or another mount.
    #[error(
        "{0} is inside the node's data folder (or is one of its files under another name); \
         the node's own files are never shared or written by a transfer"
    )]
    InsideDataFolder(String),
}

/// The most entries of the data folder [`refuse_data_folder`] looks at:
/// far more than a node's folder holds, so that a huge folder costs a
/// bounded walk.
const DATA_FOLDER_WALK: usize = 100_000;

/// The data folder as the kernel names it (symbolic links resolved); the
/// path as given if it cannot be resolved.
fn canonical_data_folder(data_dir: &Path) -> PathBuf {
    std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf())
}

/// Whether `canonical` (a path with its symbolic links resolved) lies in
/// the data folder.
pub fn in_data_folder(canonical: &Path, data_dir: &Path) -> bool {
    canonical.starts_with(canonical_data_folder(data_dir)) || canonical.starts_with(data_dir)
}

/// Refuses a file of the node's data folder: by its resolved path (which
/// covers symbolic links, `..` and `/proc/self/fd` paths), and by its
/// identity (device and inode), compared with every entry of the data
/// folder, which covers hard links and other mounts of the folder. Folders
/// the node may not read (its key folder, under Landlock) are skipped: the
/// node cannot open their files by any name either. Blocking.
pub fn refuse_data_folder(
    canonical: &Path,
    meta: &std::fs::Metadata,
    data_dir: &Path,
) -> Result<(), DiskError> {
    let inside = || DiskError::InsideDataFolder(canonical.display().to_string());
    if in_data_folder(canonical, data_dir) {
        return Err(inside());
    }
    let (device, inode) = (meta.dev(), meta.ino());
    let mut folders = vec![canonical_data_folder(data_dir)];
    let mut seen = 0;
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > DATA_FOLDER_WALK {
                return Ok(());
            }
            // Not followed: a link in the data folder points elsewhere,
            // and what it points to is not the node's.
            let Ok(found) = entry.path().symlink_metadata() else {
                continue;
            };
            if found.dev() == device && found.ino() == inode {
                return Err(inside());
            }
            if found.is_dir() {
                folders.push(entry.path());
            }
        }
    }
    Ok(())
}

/// Opens `path` for reading without following a symbolic link at its last
/// component.
fn open_nofollow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// A file the owner shares, as found when sharing it: canonical path,
/// identity, and BLAKE3 hash of the contents. Blocking: call off the
/// async runtime.
#[derive(Debug, Clone)]
pub struct Examined {
    /// The canonical path (no symbolic link, no `..`).
    pub path: PathBuf,
    /// The last component, as shown to peers.
    pub name: String,
    /// The file's identity.
    pub identity: FileIdentity,
    /// BLAKE3 of the contents.
    pub blake3: [u8; 32],
}

/// Examines a file to share: resolves its canonical path, opens it without
/// following a link, checks it is a regular file, not one of the data
/// folder `data_dir`, and hashes it; refuses a file that changed while it
/// was hashed.
pub fn examine(path: &Path, data_dir: &Path) -> Result<Examined, DiskError> {
    if !path.is_absolute() {
        return Err(DiskError::NotAbsolute);
    }
    let open_error = |source| DiskError::Open {
        path: path.display().to_string(),
        source,
    };
    let canonical = std::fs::canonicalize(path).map_err(open_error)?;
    if in_data_folder(&canonical, data_dir) {
        return Err(DiskError::InsideDataFolder(path.display().to_string()));
    }
    let file = open_nofollow(&canonical).map_err(open_error)?;
    let meta = file.metadata().map_err(DiskError::Read)?;
    if !meta.is_file() {
        return Err(DiskError::NotAFile(path.display().to_string()));
    }
    // The opened file itself, whatever path led to it.
    refuse_data_folder(&canonical, &meta, data_dir)?;
    let identity = FileIdentity::of(&meta);
    let blake3 = hash_prefix(&file, identity.size)?;
    let after = FileIdentity::of(&file.metadata().map_err(DiskError::Read)?);
    if after != identity {
        return Err(DiskError::Changed);
    }
    let name = canonical
        .file_name()
        .map(|n| safe_file_name(&n.to_string_lossy()))
        .unwrap_or_else(|| "file".into());
    Ok(Examined {
        path: canonical,
        name,
        identity,
        blake3: *blake3.as_bytes(),
    })
}

/// Opens a shared file again to serve it: the recorded canonical path,
/// without following a link at its last component, and only if the opened
/// file (checked on its descriptor, not by path) has the recorded
/// identity. Blocking.
pub fn open_shared(path: &Path, identity: &FileIdentity) -> Result<File, DiskError> {
    let file = open_nofollow(path).map_err(|e| match e.raw_os_error() {
        // O_NOFOLLOW on a link: someone swapped one in.
        Some(libc::ELOOP) => DiskError::Changed,
        _ => DiskError::Open {
            path: path.display().to_string(),
            source: e,
        },
    })?;
    let meta = file.metadata().map_err(DiskError::Read)?;
    if !meta.is_file() || FileIdentity::of(&meta) != *identity {
        return Err(DiskError::Changed);
    }
    Ok(file)
}

/// The size of the pieces read to hash or copy.
const READ_PIECE: usize = 1024 * 1024;

/// BLAKE3 of the first `len` bytes of `file`.
pub fn hash_prefix(file: &File, len: u64) -> Result<blake3::Hash, DiskError> {
    let mut hasher = blake3::Hasher::new();
    feed_prefix(file, len, &mut hasher)?;
    Ok(hasher.finalize())
}

fn feed_prefix(file: &File, len: u64, hasher: &mut blake3::Hasher) -> Result<(), DiskError> {
    let mut buffer = vec![0u8; READ_PIECE];
    let mut at = 0u64;
    while at < len {
        let want = (len - at).min(READ_PIECE as u64) as usize;
        file.read_exact_at(&mut buffer[..want], at)
            .map_err(DiskError::Read)?;
        hasher.update(&buffer[..want]);
        at += want as u64;
    }
    Ok(())
}

/// The longest name kept, in bytes (file systems allow 255).
const MAX_NAME_BYTES: usize = 200;

/// A name from a peer made into one harmless path component: letters,
/// digits, and `.-_+,()[]@ ` and spaces are kept; everything else (path
/// separators, `\`, NUL and other control characters, bidirectional
/// overrides, …) becomes `_`; leading dots and spaces and trailing dots
/// and spaces are dropped (no `.`, `..` or hidden file), and the result is
/// cut to 200 bytes. An empty result becomes `file`.
pub fn safe_file_name(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || " .-_+,()[]@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let trimmed = mapped.trim_matches(|c| c == '.' || c == ' ');
    let mut out = String::new();
    for c in trimmed.chars() {
        if out.len() + c.len_utf8() > MAX_NAME_BYTES {
            break;
        }
        out.push(c);
    }
    let out = out.trim_end_matches(['.', ' ']).to_owned();
    if out.is_empty() {
        "file".into()
    } else {
        out
    }
}

/// Where a download goes: `out` itself, or, when `out` is an existing
/// folder, the peer's name made safe inside it. The result is always
/// `out` or exactly one plain component below it.
pub fn destination(out: &Path, peer_name: &str) -> PathBuf {
    if out.is_dir() {
        let name = safe_file_name(peer_name);
        debug_assert!(matches!(
            Path::new(&name).components().collect::<Vec<_>>()[..],
            [Component::Normal(_)]
        ));
        out.join(name)
    } else {
        out.to_path_buf()
    }
}

/// The partial file of a download to `out`: beside it, so that the final
/// rename stays on one file system.
pub fn part_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".openred-part");
    out.with_file_name(name)
}

/// The receiver's partial file: the verified prefix of the download, and
/// the BLAKE3 state over it.
pub struct PartFile {
    writer: PartWriter,
    hasher: blake3::Hasher,
}

/// The partial file without its hasher, for a writer that hashes on
/// another thread (see [`PartFile::into_parts`]).
pub struct PartWriter {
    file: File,
    verified: u64,
}

impl PartFile {
    /// Opens (creating if `create`) the partial file and takes its longest
    /// prefix made of whole chunks as verified: only verified plaintext is
    /// ever written to it, so what survives a crash of this process is
    /// good (a power loss that leaves garbage is caught by the final
    /// BLAKE3 check). Rehashes that prefix. Blocking.
    pub fn open(path: &Path, shape: &TransferShape, create: bool) -> std::io::Result<PartFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(std::io::Error::other(
                "the partial file is not a regular file",
            ));
        }
        let len = meta.len().min(shape.size);
        let verified = if len == 0 {
            0
        } else {
            shape.offset(shape.chunk_at(len))
        };
        file.set_len(verified)?;
        let mut hasher = blake3::Hasher::new();
        feed_prefix(&file, verified, &mut hasher).map_err(|e| match e {
            DiskError::Read(e) => e,
            other => std::io::Error::other(other.to_string()),
        })?;
        Ok(PartFile {
            writer: PartWriter { file, verified },
            hasher,
        })
    }

    /// Plaintext bytes verified and written so far.
    pub fn verified(&self) -> u64 {
        self.writer.verified
    }

    /// Appends a verified chunk.
    pub fn append(&mut self, plaintext: &[u8]) -> std::io::Result<()> {
        self.writer.append(plaintext)?;
        self.hasher.update(plaintext);
        Ok(())
    }

    /// Forgets anything written past the verified prefix (a write cut
    /// short) before more is appended.
    pub fn rewind(&mut self) -> std::io::Result<()> {
        self.writer.rewind()
    }

    /// The BLAKE3 of everything written.
    pub fn hash(&self) -> [u8; 32] {
        *self.hasher.finalize().as_bytes()
    }

    /// Flushes the contents to disk, then renames `part` to `out` unless
    /// `out` exists (never replacing a file), and flushes the folder.
    pub fn commit(self, part: &Path, out: &Path) -> std::io::Result<()> {
        self.writer.commit(part, out)
    }

    /// The file and the hasher apart: the hasher holds the state over the
    /// verified prefix, and whoever holds it must feed it exactly what is
    /// appended to the writer, in order, before comparing its hash.
    pub fn into_parts(self) -> (PartWriter, blake3::Hasher) {
        (self.writer, self.hasher)
    }
}

impl PartWriter {
    /// Plaintext bytes verified and written so far.
    pub fn verified(&self) -> u64 {
        self.verified
    }

    /// Appends a verified chunk (not hashed: see [`PartFile::into_parts`]).
    pub fn append(&mut self, plaintext: &[u8]) -> std::io::Result<()> {
        self.file.write_all(plaintext)?;
        self.verified += plaintext.len() as u64;
        Ok(())
    }

    /// Forgets anything written past the verified prefix (a write cut
    /// short) before more is appended.
    pub fn rewind(&mut self) -> std::io::Result<()> {
        use std::io::Seek;
        self.file.set_len(self.verified)?;
        self.file.seek(std::io::SeekFrom::Start(self.verified))?;
        Ok(())
    }

    /// Flushes the contents to disk, then renames `part` to `out` unless
    /// `out` exists (never replacing a file), and flushes the folder.
    pub fn commit(self, part: &Path, out: &Path) -> std::io::Result<()> {
        self.file.sync_all()?;
        drop(self.file);
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            part,
            rustix::fs::CWD,
            out,
            rustix::fs::RenameFlags::NOREPLACE,
        )?;
        if let Some(parent) = out.parent() {
            open_folder_after_rename(parent)?.sync_all()?;
        }
        Ok(())
    }
}

/// Opens the folder whose entry a rename just changed, to fsync it. The
/// file is in place already, so a failure here would end a complete
/// download: a process out of descriptors for a moment is waited out
/// (about a second at most), anything else is an error.
fn open_folder_after_rename(folder: &Path) -> std::io::Result<File> {
    let mut tries = 0;
    loop {
        match File::open(folder) {
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) && tries < 100 =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_from_peers_become_one_harmless_component() {
        let cases = [
            ("report.pdf", "report.pdf"),
            ("../../etc/passwd", "_.._etc_passwd"),
            ("/etc/passwd", "_etc_passwd"),
            ("..", "file"),
            (".", "file"),
            ("", "file"),
            ("...", "file"),
            (".bashrc", "bashrc"),
            ("a\0b", "a_b"),
            ("..\\..\\windows\\system32", "_.._windows_system32"),
            ("C:\\x", "C__x"),
            ("evil\u{202e}fdp.exe", "evil_fdp.exe"),
            ("line\nbreak\r", "line_break_"),
            ("name. ", "name"),
            ("~/x", "__x"),
            ("$(rm -rf)", "_(rm -rf)"),
            ("été à Zürich.txt", "été à Zürich.txt"),
        ];
        for (name, want) in cases {
            let safe = safe_file_name(name);
            assert_eq!(safe, want, "{name:?}");
            let parts: Vec<_> = Path::new(&safe).components().collect();
            assert!(
                matches!(parts[..], [Component::Normal(_)]),
                "{name:?} → {safe:?}"
            );
        }
        let long = "é".repeat(300);
        assert!(safe_file_name(&long).len() <= MAX_NAME_BYTES);
        assert!(safe_file_name(&long).chars().all(|c| c == 'é'));
    }

    #[test]
    fn a_destination_stays_inside_the_chosen_folder() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "../../x",
            "/etc/shadow",
            "..",
            "a/../../b",
            "\0",
            "sub/dir/f",
        ] {
            let dest = destination(dir.path(), name);
            assert_eq!(dest.parent().unwrap(), dir.path(), "{name:?} → {dest:?}");
        }
        // A path that is not a folder is used as it is: the owner's choice.
        let file = dir.path().join("chosen.bin");
        assert_eq!(destination(&file, "../../x"), file);
        assert_eq!(part_path(&file), dir.path().join("chosen.bin.openred-part"));
    }

    #[test]
    fn a_swapped_file_or_link_is_refused_at_serve_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.txt");
        std::fs::write(&path, b"the shared contents").unwrap();
        let data = tempfile::tempdir().unwrap();
        let examined = examine(&path, data.path()).unwrap();
        assert_eq!(examined.name, "shared.txt");
        assert_eq!(
            examined.blake3,
            *blake3::hash(b"the shared contents").as_bytes()
        );
        assert!(open_shared(&examined.path, &examined.identity).is_ok());

        // A symbolic link to another file in its place.
        let secret = dir.path().join("secret.txt");
        std::fs::write(&secret, b"not shared, same size!!").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&secret, &path).unwrap();
        assert!(matches!(
            open_shared(&examined.path, &examined.identity),
            Err(DiskError::Changed)
        ));
        // Another regular file under the same name.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"the shared contents").unwrap();
        assert!(matches!(
            open_shared(&examined.path, &examined.identity),
            Err(DiskError::Changed)
        ));
        // Relative paths and folders are refused when sharing.
        assert!(matches!(
            examine(Path::new("shared.txt"), data.path()),
            Err(DiskError::NotAbsolute)
        ));
        assert!(matches!(
            examine(dir.path(), data.path()),
            Err(DiskError::NotAFile(_))
        ));
    }

    #[test]
    fn a_file_of_the_data_folder_is_refused_by_any_name() {
        let data = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(data.path().join("owner")).unwrap();
        let token = data.path().join("admin.token");
        let totp = data.path().join("owner").join("totp");
        std::fs::write(&token, b"0123").unwrap();
        std::fs::write(&totp, b"JBSWY3DPEHPK3PXP").unwrap();
        let refused = |path: &Path| {
            matches!(
                examine(path, data.path()),
                Err(DiskError::InsideDataFolder(_))
            )
        };
        // Its own path, with `..`, through a link to the folder or to the
        // file, through the data folder named by a link.
        assert!(refused(&token));
        assert!(refused(
            &outside
                .path()
                .join("..")
                .join(
                    data.path()
                        .strip_prefix(outside.path().parent().unwrap())
                        .unwrap()
                )
                .join("admin.token")
        ));
        let to_file = outside.path().join("notes.txt");
        std::os::unix::fs::symlink(&totp, &to_file).unwrap();
        assert!(refused(&to_file));
        let to_folder = outside.path().join("photos");
        std::os::unix::fs::symlink(data.path().join("owner"), &to_folder).unwrap();
        assert!(refused(&to_folder.join("totp")));
        let linked_data = outside.path().join("data-link");
        std::os::unix::fs::symlink(data.path(), &linked_data).unwrap();
        assert!(matches!(
            examine(&token, &linked_data),
            Err(DiskError::InsideDataFolder(_))
        ));
        // A hard link outside: the same inode under another name.
        let hard = outside.path().join("innocent.txt");
        std::fs::hard_link(&token, &hard).unwrap();
        assert!(refused(&hard));
        // A file outside is still shared.
        let fine = outside.path().join("fine.txt");
        std::fs::write(&fine, b"ok").unwrap();
        assert!(examine(&fine, data.path()).is_ok());
    }

    #[test]
    fn a_part_file_resumes_at_its_last_whole_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("x.openred-part");
        let chunk = openred_core::file_transfer::MIN_CHUNK_SIZE as usize;
        let shape = TransferShape::new(
            [0; 16],
            (3 * chunk) as u64,
            chunk as u32,
            openred_core::session::Suite::ChaCha20Poly1305,
        )
        .unwrap();
        let data: Vec<u8> = (0..3 * chunk).map(|i| (i % 253) as u8).collect();
        // A chunk and a half written: the half is dropped.
        std::fs::write(&part, &data[..chunk + chunk / 2]).unwrap();
        let mut file = PartFile::open(&part, &shape, false).unwrap();
        assert_eq!(file.verified(), chunk as u64);
        file.rewind().unwrap();
        file.append(&data[chunk..]).unwrap();
        assert_eq!(file.hash(), *blake3::hash(&data).as_bytes());
        let out = dir.path().join("x");
        file.commit(&part, &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), data);
        // The final rename never replaces a file.
        std::fs::write(&part, b"").unwrap();
        let file = PartFile::open(&part, &shape, false).unwrap();
        assert!(file.commit(&part, &out).is_err());
        assert_eq!(std::fs::read(&out).unwrap(), data);
    }
}
