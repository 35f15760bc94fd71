//! The sandboxes of the crypto agent, of its launcher and of the node
//! (Linux only).
//!
//! This module owns the self-confinement each of these processes applies to
//! itself: `no_new_privs`, not dumpable, a seccomp filter and a Landlock
//! domain. Every step is irreversible and covers the whole process, so each
//! `confine_*` function is called once, early, by the process's entry point.
//! It never reads configuration or the environment: callers pass the key
//! directory.
//!
//! Fail closed: a `prctl` or seccomp failure, or a Landlock ruleset that
//! cannot be built, is an error and the caller must not go on. The one
//! exception is a kernel without Landlock: the other protections stay and
//! the report says [`Landlock::Unsupported`].
//!
//! Landlock before ABI 8 restricts only the calling thread (and the threads
//! and processes it starts later), so every `confine_*` function must run
//! before the process starts any thread, in particular before the tokio
//! runtime is built. If other threads exist anyway, Landlock is asked to
//! cover them (ABI 8 can); where it cannot, the report says
//! [`Landlock::Partial`] and a warning is logged. The seccomp filter is
//! installed on every thread (`SECCOMP_FILTER_FLAG_TSYNC`).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// What a process applied to itself; reported by `openred status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protections {
    /// `PR_SET_NO_NEW_PRIVS` is set: no exec can gain privileges.
    pub no_new_privs: bool,
    /// false once PR_SET_DUMPABLE 0 took effect
    pub dumpable: bool,
    /// A seccomp filter is installed.
    pub seccomp: bool,
    /// The Landlock domain the process put itself in.
    pub landlock: Landlock,
    /// Signals and abstract Unix sockets are scoped to the process's
    /// Landlock domain (Landlock ABI 6 and later): the process can signal,
    /// or connect to an abstract socket of, no process outside it.
    #[serde(default)]
    pub landlock_scoped: bool,
    /// The process's user ID.
    #[serde(default)]
    pub uid: u32,
}

/// The state of a process's Landlock domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Landlock {
    /// Fully enforced with this ABI version.
    Enforced {
        /// The kernel's Landlock ABI version.
        abi: u8,
    },
    /// Enforced with a subset of the requested rights (older kernel).
    Partial {
        /// The kernel's Landlock ABI version.
        abi: u8,
    },
    /// The kernel has no Landlock (or it is disabled); the other protections stay.
    Unsupported,
    /// Not requested for this process.
    NotApplied,
}

/// Why a process could not confine itself. Each one means the process is
/// not (fully) confined and must stop.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// This operating system has no sandbox implementation.
    #[error("sandboxing is only implemented on Linux")]
    UnsupportedOs,
    /// No seccomp filter is written for this CPU architecture.
    #[error("no seccomp filter for the CPU architecture {0}")]
    UnsupportedArch(&'static str),
    /// A `prctl` call failed.
    #[error("prctl({operation}) failed: {source}")]
    Prctl {
        /// The `prctl` operation.
        operation: &'static str,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
    /// The seccomp filter could not be built or installed.
    #[error("seccomp: {0}")]
    Seccomp(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The key directory could not be opened or listed.
    #[error("key directory {path}: {source}")]
    KeyDir {
        /// The key directory as given.
        path: std::path::PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The key directory is the file system root: nothing would be left
    /// to allow outside it.
    #[error("the key directory must not be the file system root")]
    KeyDirIsRoot,
    /// Reading a directory on the way to the key directory failed while
    /// building the node's Landlock rules.
    #[error("Landlock rules for {path}: {source}")]
    Walk {
        /// The directory or entry being read.
        path: std::path::PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A writable folder is the key folder or inside it, or cannot be opened.
    #[error("writable folder {path}: {reason}")]
    Writable {
        /// The folder as given.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The Landlock ruleset could not be built or enforced.
    #[error("Landlock: {0}")]
    Landlock(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The crypto agent: no_new_privs; not dumpable; seccomp; Landlock restricting the
/// filesystem to `key_dir`, read-only (and, where the ABI supports it, no TCP bind/connect
/// at all). Called before the agent reads any request and before it starts any thread.
///
/// The seccomp filter answers `EPERM` to: sockets other than `AF_UNIX`
/// (the agent talks over a socket pair), `ptrace`, `process_vm_readv`,
/// `process_vm_writev`, the three io_uring calls (io_uring operations
/// escape the seccomp filter), `execve` and `execveat`.
///
/// Landlock (ABI 6 requested, best effort) also scopes signals and abstract
/// Unix sockets to the agent's own domain. Connecting to a *pathname* Unix
/// socket is only controlled from Landlock ABI 9 on, which is not requested
/// yet: the seccomp filter lets `AF_UNIX` sockets through.
pub fn confine_agent(key_dir: &Path) -> Result<Protections, SandboxError> {
    imp::confine_agent(key_dir)
}

/// The agent launcher (a small process that spawns agents on request):
/// no_new_privs; not dumpable; the same seccomp filter as the agent minus
/// the execve denial; Landlock: everything readable and executable (it
/// executes the program, whose libraries and key folder the agents it
/// starts must read), nothing writable but the one file `writable_file`
/// (the agents' signing state, `keys/agent.state`, which its agents inherit
/// the right to write), no TCP, and signals and abstract Unix sockets scoped
/// to its own domain (its agents are inside it: it starts them).
pub fn confine_launcher(writable_file: &Path) -> Result<Protections, SandboxError> {
    imp::confine_launcher(writable_file)
}

/// The node, once its agent launcher runs: not dumpable; no_new_privs; a seccomp filter
/// denying ptrace and process_vm_readv/process_vm_writev; Landlock giving read access to
/// everything EXCEPT `key_dir`, write access only beneath the `writable` folders (minus
/// `key_dir`), and scoping signals and abstract Unix sockets to the node's own domain.
///
/// Landlock only allows, so "everything but `key_dir`" is built from the
/// directories on the way to it: in each ancestor of the canonical
/// `key_dir` (from `/` down to its parent), every entry other than the next
/// step towards `key_dir` gets rights beneath it, and the ancestor itself
/// gets only `ReadDir`. Those rights are the read rights (read, list,
/// execute), or all rights where the ancestor is inside one of the
/// `writable` folders (the data folder: its entries but `keys/`). A
/// `writable` folder elsewhere (a download folder) gets all rights beneath
/// it; one inside `key_dir` is refused. System folders, the program's own
/// file and everything else are therefore read-only for the node: it cannot
/// replace the program its launcher runs, nor write anywhere it has no
/// reason to. Landlock also stops the node from tracing any process
/// outside its domain, and (ABI 6) from signalling one, which includes the
/// launcher and every agent.
///
/// Consequences:
/// - The entries are read at confinement time. A file or directory created
///   later directly inside an ancestor of `key_dir` (a new file in the data
///   directory itself, or directly in `/tmp` when the data directory is
///   under `/tmp`) cannot be opened, and nothing directly inside an
///   ancestor can be created, renamed or deleted. The node therefore
///   creates everything it needs before confining itself (SQLite's `-wal`
///   and `-shm` files exist while the database is open).
/// - The names of the files in `key_dir` can still be listed (`ReadDir` on
///   the ancestors is inherited); their contents cannot be read.
/// - Symbolic links found in the ancestors get no rule of their own: the
///   rule would land on their target, which may be an ancestor of
///   `key_dir`. Their target stays reachable through its own path.
/// - Rules hold inodes: an entry that is `key_dir`, one of its ancestors
///   or one of the entries directly in `key_dir` under another name (a bind
///   mount, a hard link) gets no rule. Something deeper inside `key_dir`
///   bind-mounted or hard-linked into an ancestor would be exposed: keep
///   the key directory flat and do not link into it.
/// - Files already open (descriptors) are not affected: the node must not
///   hold key files open when it confines itself.
pub fn confine_node(
    key_dir: &Path,
    writable: &[std::path::PathBuf],
) -> Result<Protections, SandboxError> {
    imp::confine_node(key_dir, writable)
}

/// A description of the current process's protections read back from the kernel,
/// with `landlock` as given (the kernel cannot be asked whether a domain applies).
///
/// `no_new_privs`, `dumpable` and the seccomp mode come from `prctl`
/// (`PR_GET_NO_NEW_PRIVS`, `PR_GET_DUMPABLE`, `PR_GET_SECCOMP`) rather than
/// `/proc/self/status`, because the agent's Landlock domain hides `/proc`;
/// `/proc/thread-self/status` is the fallback when a `prctl` fails. A value
/// that cannot be read is reported as the unprotected one.
pub fn current(landlock: Landlock) -> Protections {
    imp::current(landlock)
}

#[cfg(target_os = "linux")]
mod imp {
    use std::collections::{BTreeMap, HashSet};
    use std::ffi::OsStr;
    use std::os::fd::{AsFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Component, Path, PathBuf};

    use landlock::{
        Access, AccessFs, AccessNet, LandlockStatus, PathBeneath, RestrictSelfAttr,
        RestrictionStatus, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetStatus,
        Scope, ABI,
    };
    use rustix::fs::{FileType, Mode, OFlags};
    use rustix::process::DumpableBehavior;
    use rustix::thread::SecureComputingMode;
    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };

    use super::{Landlock, Protections, SandboxError};

    /// The Landlock ABI whose rights are requested (best effort on older
    /// kernels). Raise it only together with a test on a kernel that has it:
    /// a newer ABI handles more rights, which can deny what worked before.
    const LANDLOCK_ABI: ABI = ABI::V6;

    /// `AF_UNIX`, the one socket domain the agent and the launcher keep.
    const AF_UNIX: u64 = libc::AF_UNIX as u64;

    /// The errno a denied system call returns: callers see an ordinary
    /// permission error instead of a killed process, which keeps failures
    /// diagnosable.
    const DENIED: SeccompAction = SeccompAction::Errno(libc::EPERM as u32);

    /// Which process a seccomp filter is built for.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Role {
        Agent,
        Launcher,
        Node,
    }

    pub(super) fn confine_agent(key_dir: &Path) -> Result<Protections, SandboxError> {
        // Opened before anything else changes, so a bad path fails early.
        let keys = rustix::fs::open(
            key_dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| SandboxError::KeyDir {
            path: key_dir.to_path_buf(),
            source: e.into(),
        })?;
        confine_read_only(Role::Agent, keys, None)
    }

    pub(super) fn confine_launcher(writable_file: &Path) -> Result<Protections, SandboxError> {
        let walk = |path: &Path| {
            let path = path.to_path_buf();
            move |e: rustix::io::Errno| SandboxError::Walk {
                path,
                source: e.into(),
            }
        };
        let root = rustix::fs::open(
            "/",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(walk(Path::new("/")))?;
        let file = rustix::fs::open(
            writable_file,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(walk(writable_file))?;
        let write = PathBeneath::new(file, AccessFs::ReadFile | AccessFs::WriteFile);
        confine_read_only(Role::Launcher, root, Some(write))
    }

    /// The agent's and the launcher's confinement: the process flags, the
    /// role's seccomp filter, and a Landlock domain where only `readable`
    /// can be read (and executed) beneath, nothing written but what `extra`
    /// allows, no TCP, and signals and abstract sockets scoped.
    fn confine_read_only(
        role: Role,
        readable: OwnedFd,
        extra: Option<PathBeneath<OwnedFd>>,
    ) -> Result<Protections, SandboxError> {
        let filter = seccomp_filter(role)?;
        set_process_flags()?;
        let threads = other_threads_exist();
        let ruleset = Ruleset::default()
            .handle_access(AccessFs::from_all(LANDLOCK_ABI))
            .and_then(|r| r.handle_access(AccessNet::from_all(LANDLOCK_ABI)))
            .and_then(|r| r.scope(Scope::from_all(LANDLOCK_ABI)))
            .and_then(|r| r.create())
            .and_then(|r| {
                r.add_rule(PathBeneath::new(
                    readable,
                    AccessFs::from_read(LANDLOCK_ABI),
                ))
            })
            .and_then(|r| r.add_rules(extra.map(Ok::<_, landlock::RulesetError>)))
            .map_err(landlock_error)?;
        let landlock = restrict(ruleset, threads)?;
        install(&filter)?;
        Ok(super::current(landlock))
    }

    pub(super) fn confine_node(
        key_dir: &Path,
        writable: &[PathBuf],
    ) -> Result<Protections, SandboxError> {
        let filter = seccomp_filter(Role::Node)?;
        // The rules are built before any protection is applied, so a key
        // directory that cannot be walked changes nothing.
        let ruleset = node_ruleset(key_dir, writable)?;
        set_process_flags()?;
        let threads = other_threads_exist();
        let landlock = restrict(ruleset, threads)?;
        install(&filter)?;
        Ok(super::current(landlock))
    }

    pub(super) fn current(landlock: Landlock) -> Protections {
        let field = |name: &str| {
            let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(|v| v.trim() != "0")
        };
        let no_new_privs = rustix::thread::no_new_privs()
            .ok()
            .or_else(|| field("NoNewPrivs:"))
            .unwrap_or(false);
        let seccomp = match rustix::thread::secure_computing_mode() {
            Ok(mode) => mode != SecureComputingMode::Disabled,
            Err(_) => field("Seccomp:").unwrap_or(false),
        };
        let dumpable = !matches!(
            rustix::process::dumpable_behavior(),
            Ok(DumpableBehavior::NotDumpable)
        );
        // Every domain built here asks for the scopes, and a kernel applies
        // them from ABI 6 on. (`Partial` with such a kernel means other
        // threads could not be covered, not that a scope was dropped.)
        let landlock_scoped = matches!(
            landlock,
            Landlock::Enforced { abi } | Landlock::Partial { abi } if abi >= 6
        );
        Protections {
            no_new_privs,
            dumpable,
            seccomp,
            landlock,
            landlock_scoped,
            uid: rustix::process::getuid().as_raw(),
        }
    }

    /// Not dumpable first: from here on no core dump and no `/proc/<pid>/mem`
    /// by another process of the same user, even if a later step fails.
    fn set_process_flags() -> Result<(), SandboxError> {
        rustix::process::set_dumpable_behavior(DumpableBehavior::NotDumpable).map_err(|e| {
            SandboxError::Prctl {
                operation: "PR_SET_DUMPABLE",
                source: e.into(),
            }
        })?;
        rustix::thread::set_no_new_privs(true).map_err(|e| SandboxError::Prctl {
            operation: "PR_SET_NO_NEW_PRIVS",
            source: e.into(),
        })
    }

    /// The seccomp filter of a role: everything is allowed but the listed
    /// calls, which fail with `EPERM`.
    fn seccomp_filter(role: Role) -> Result<BpfProgram, SandboxError> {
        let arch = match std::env::consts::ARCH {
            "x86_64" => TargetArch::x86_64,
            "aarch64" => TargetArch::aarch64,
            other => return Err(SandboxError::UnsupportedArch(other)),
        };
        let seccomp = |e: seccompiler::BackendError| SandboxError::Seccomp(Box::new(e));
        let not_unix = || -> Result<Vec<SeccompRule>, SandboxError> {
            let condition =
                SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, AF_UNIX)
                    .map_err(seccomp)?;
            Ok(vec![SeccompRule::new(vec![condition]).map_err(seccomp)?])
        };

        // An empty rule list matches on the number alone.
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        // Setting the clock: the agent bounds the times it signs by the
        // system clock, so a node running as root must not move it.
        for nr in [
            libc::SYS_ptrace,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
            libc::SYS_clock_settime,
            libc::SYS_settimeofday,
            libc::SYS_adjtimex,
            libc::SYS_clock_adjtime,
        ] {
            rules.insert(nr, Vec::new());
        }
        if role != Role::Node {
            rules.insert(libc::SYS_socket, not_unix()?);
            rules.insert(libc::SYS_socketpair, not_unix()?);
            for nr in [
                libc::SYS_io_uring_setup,
                libc::SYS_io_uring_enter,
                libc::SYS_io_uring_register,
            ] {
                rules.insert(nr, Vec::new());
            }
        }
        if role == Role::Agent {
            rules.insert(libc::SYS_execve, Vec::new());
            rules.insert(libc::SYS_execveat, Vec::new());
        }
        #[cfg(target_arch = "x86_64")]
        add_x32_aliases(&mut rules);

        let filter =
            SeccompFilter::new(rules, SeccompAction::Allow, DENIED, arch).map_err(seccomp)?;
        BpfProgram::try_from(filter).map_err(|e| SandboxError::Seccomp(Box::new(e)))
    }

    /// The x32 ABI shares `AUDIT_ARCH_X86_64` with 64-bit code, so the
    /// filter's architecture check lets it through; its calls carry bit 30
    /// and, for some calls, their own numbers. Where the kernel has x32,
    /// each denied call is denied under its x32 number too. (32-bit `int
    /// 0x80` calls have another audit arch and kill the process.)
    #[cfg(target_arch = "x86_64")]
    fn add_x32_aliases(rules: &mut BTreeMap<i64, Vec<SeccompRule>>) {
        const X32_SYSCALL_BIT: i64 = 0x4000_0000;
        // From arch/x86/entry/syscalls/syscall_64.tbl: the x32 entries of
        // the calls whose 64-bit entry is "64" only.
        let x32_number = |nr: i64| match nr {
            libc::SYS_execve => 520,
            libc::SYS_ptrace => 521,
            libc::SYS_process_vm_readv => 539,
            libc::SYS_process_vm_writev => 540,
            libc::SYS_execveat => 545,
            common => common,
        };
        let aliases: Vec<(i64, Vec<SeccompRule>)> = rules
            .iter()
            .map(|(nr, chain)| (X32_SYSCALL_BIT | x32_number(*nr), chain.clone()))
            .collect();
        rules.extend(aliases);
    }

    /// Installs the filter on every thread of the process (TSYNC), so a
    /// thread some library started earlier is not left unfiltered; the
    /// kernel also sets `no_new_privs` on those threads. If a thread cannot
    /// be synchronised the call fails and nothing is installed.
    fn install(filter: &BpfProgram) -> Result<(), SandboxError> {
        seccompiler::apply_filter_all_threads(filter)
            .map_err(|e| SandboxError::Seccomp(Box::new(e)))
    }

    /// Whether the process has threads besides the caller, which a Landlock
    /// domain before ABI 8 would not cover. Unknown counts as yes.
    fn other_threads_exist() -> bool {
        let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
            return true;
        };
        status
            .lines()
            .find_map(|line| line.strip_prefix("Threads:"))
            .and_then(|n| n.trim().parse::<u32>().ok())
            .is_none_or(|n| n > 1)
    }

    /// Enforces the ruleset on the calling thread, and on the others when
    /// there are any and the kernel can (ABI 8).
    fn restrict(ruleset: RulesetCreated, other_threads: bool) -> Result<Landlock, SandboxError> {
        let ruleset = if other_threads {
            ruleset.all_threads(true).map_err(landlock_error)?
        } else {
            ruleset
        };
        let status = ruleset.restrict_self().map_err(landlock_error)?;
        let mut landlock = report(&status);
        if other_threads && !status.all_threads {
            if let Landlock::Enforced { abi } = landlock {
                landlock = Landlock::Partial { abi };
            }
            tracing::warn!(
                "Landlock confines only the calling thread: other threads existed and the kernel \
                 cannot restrict them (Landlock ABI 8 can); confine before starting threads"
            );
        }
        Ok(landlock)
    }

    fn report(status: &RestrictionStatus) -> Landlock {
        let abi = match status.landlock {
            LandlockStatus::Available {
                effective_abi,
                kernel_abi,
            } => kernel_abi
                .and_then(|v| u8::try_from(v).ok())
                .unwrap_or_else(|| abi_number(effective_abi)),
            LandlockStatus::NotEnabled | LandlockStatus::NotImplemented => {
                return Landlock::Unsupported
            }
        };
        match status.ruleset {
            RulesetStatus::FullyEnforced => Landlock::Enforced { abi },
            RulesetStatus::PartiallyEnforced => Landlock::Partial { abi },
            RulesetStatus::NotEnforced => Landlock::Unsupported,
        }
    }

    /// The number of an ABI version; `ABI` is non-exhaustive, so the
    /// versions this crate does not name yet report as the newest it does.
    fn abi_number(abi: ABI) -> u8 {
        match abi {
            ABI::Unsupported => 0,
            ABI::V1 => 1,
            ABI::V2 => 2,
            ABI::V3 => 3,
            ABI::V4 => 4,
            ABI::V5 => 5,
            ABI::V6 => 6,
            ABI::V7 => 7,
            ABI::V8 => 8,
            ABI::V9 => 9,
            _ => 10,
        }
    }

    fn landlock_error(e: landlock::RulesetError) -> SandboxError {
        SandboxError::Landlock(Box::new(e))
    }

    /// The node's ruleset: all rights everywhere but beneath `key_dir`
    /// (see `confine_node`). Directories are opened step by step from `/`
    /// without following symbolic links, so what gets a rule is what was
    /// looked at.
    fn node_ruleset(key_dir: &Path, writable: &[PathBuf]) -> Result<RulesetCreated, SandboxError> {
        let key_dir_error = |source: std::io::Error| SandboxError::KeyDir {
            path: key_dir.to_path_buf(),
            source,
        };
        let canonical_keys = std::fs::canonicalize(key_dir).map_err(key_dir_error)?;
        let canonical = canonical_keys.clone();
        let components: Vec<&OsStr> = canonical
            .components()
            .filter_map(|c| match c {
                Component::Normal(name) => Some(name),
                _ => None,
            })
            .collect();
        if components.is_empty() {
            return Err(SandboxError::KeyDirIsRoot);
        }

        // chain[i] is the directory at depth i; the last one is key_dir.
        let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut chain: Vec<OwnedFd> = Vec::with_capacity(components.len() + 1);
        chain.push(
            rustix::fs::open("/", dir_flags, Mode::empty()).map_err(|e| key_dir_error(e.into()))?,
        );
        for name in &components {
            let parent = chain.last().ok_or(SandboxError::KeyDirIsRoot)?;
            let fd = rustix::fs::openat(parent, *name, dir_flags, Mode::empty())
                .map_err(|e| key_dir_error(e.into()))?;
            chain.push(fd);
        }
        // Landlock rules hold inodes, not paths: an entry that is one of
        // these directories, or a key file, under another name (a bind
        // mount, a hard link) would carry its rule onto the key directory.
        let mut protected = HashSet::new();
        for fd in &chain {
            let st = rustix::fs::fstat(fd).map_err(|e| key_dir_error(e.into()))?;
            protected.insert((st.st_dev, st.st_ino));
        }
        if let Some(keys) = chain.last() {
            let entries = rustix::fs::Dir::read_from(keys).map_err(|e| key_dir_error(e.into()))?;
            for entry in entries {
                let entry = entry.map_err(|e| key_dir_error(e.into()))?;
                let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                if let Ok(fd) = rustix::fs::openat(keys, entry.file_name(), flags, Mode::empty()) {
                    let st = rustix::fs::fstat(&fd).map_err(|e| key_dir_error(e.into()))?;
                    protected.insert((st.st_dev, st.st_ino));
                }
            }
        }

        // Writable folders: those on the way to the key folder make their
        // part of the walk writable; the others get a rule of their own.
        let mut writable_ancestors = Vec::new();
        let mut writable_elsewhere = Vec::new();
        for folder in writable {
            let writable_error = |reason: String| SandboxError::Writable {
                path: folder.clone(),
                reason,
            };
            let canonical =
                std::fs::canonicalize(folder).map_err(|e| writable_error(e.to_string()))?;
            if canonical.starts_with(&canonical_keys) {
                return Err(writable_error("it is the key folder or inside it".into()));
            }
            if canonical_keys.starts_with(&canonical) {
                writable_ancestors.push(canonical);
            } else {
                let fd = rustix::fs::open(&canonical, dir_flags, Mode::empty())
                    .map_err(|e| writable_error(std::io::Error::from(e).to_string()))?;
                let st = rustix::fs::fstat(&fd)
                    .map_err(|e| writable_error(std::io::Error::from(e).to_string()))?;
                if protected.contains(&(st.st_dev, st.st_ino)) {
                    return Err(writable_error(
                        "it is the key folder or one of its ancestors under another name".into(),
                    ));
                }
                writable_elsewhere.push(fd);
            }
        }

        let mut ruleset = Ruleset::default()
            .handle_access(AccessFs::from_all(LANDLOCK_ABI))
            .and_then(|r| r.scope(Scope::from_all(LANDLOCK_ABI)))
            .and_then(|r| r.create())
            .map_err(landlock_error)?;
        let mut path = PathBuf::from("/");
        for (ancestor, next) in chain.iter().zip(&components) {
            let rights = if writable_ancestors.iter().any(|w| path.starts_with(w)) {
                Rights::All
            } else {
                Rights::Read
            };
            ruleset = allow_siblings(ruleset, ancestor, next, &path, &protected, rights)?;
            ruleset = ruleset
                .add_rule(PathBeneath::new(ancestor.as_fd(), AccessFs::ReadDir))
                .map_err(landlock_error)?;
            path.push(next);
        }
        for fd in writable_elsewhere {
            ruleset = ruleset
                .add_rule(PathBeneath::new(fd, AccessFs::from_all(LANDLOCK_ABI)))
                .map_err(landlock_error)?;
        }
        Ok(ruleset)
    }

    /// What the entries beside the way to the key folder get.
    #[derive(Clone, Copy)]
    enum Rights {
        /// Read, list and execute.
        Read,
        /// Everything (inside a writable folder).
        All,
    }

    /// Allows `rights` beneath each entry of `ancestor` but `next`.
    fn allow_siblings(
        mut ruleset: RulesetCreated,
        ancestor: &OwnedFd,
        next: &OsStr,
        path: &Path,
        protected: &HashSet<(u64, u64)>,
        rights: Rights,
    ) -> Result<RulesetCreated, SandboxError> {
        let walk_error = |path: PathBuf| {
            move |e: rustix::io::Errno| SandboxError::Walk {
                path,
                source: e.into(),
            }
        };
        let entries = rustix::fs::Dir::read_from(ancestor).map_err(walk_error(path.into()))?;
        for entry in entries {
            let entry = entry.map_err(walk_error(path.into()))?;
            let name = entry.file_name();
            let bytes = name.to_bytes();
            if bytes == b"." || bytes == b".." || bytes == next.as_bytes() {
                continue;
            }
            let entry_path = path.join(OsStr::from_bytes(bytes));
            let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let fd = match rustix::fs::openat(ancestor, name, flags, Mode::empty()) {
                Ok(fd) => fd,
                // Removed since it was listed: nothing to allow.
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(walk_error(entry_path)(e)),
            };
            let st = rustix::fs::fstat(&fd).map_err(walk_error(entry_path.clone()))?;
            let access = match FileType::from_raw_mode(st.st_mode) {
                FileType::Symlink => continue,
                _ if protected.contains(&(st.st_dev, st.st_ino)) => {
                    tracing::warn!(
                        path = %entry_path.display(),
                        "not allowing an entry that is the key directory, one of its \
                         ancestors or one of its files under another name"
                    );
                    continue;
                }
                FileType::Directory => match rights {
                    Rights::All => AccessFs::from_all(LANDLOCK_ABI),
                    Rights::Read => AccessFs::from_read(LANDLOCK_ABI),
                },
                _ => match rights {
                    Rights::All => AccessFs::from_file(LANDLOCK_ABI),
                    Rights::Read => {
                        AccessFs::from_read(LANDLOCK_ABI) & AccessFs::from_file(LANDLOCK_ABI)
                    }
                },
            };
            ruleset = ruleset
                .add_rule(PathBeneath::new(fd, access))
                .map_err(landlock_error)?;
        }
        Ok(ruleset)
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::path::Path;

    use super::{Landlock, Protections, SandboxError};

    pub(super) fn confine_agent(_key_dir: &Path) -> Result<Protections, SandboxError> {
        Err(SandboxError::UnsupportedOs)
    }

    pub(super) fn confine_launcher(_writable_file: &Path) -> Result<Protections, SandboxError> {
        Err(SandboxError::UnsupportedOs)
    }

    pub(super) fn confine_node(
        _key_dir: &Path,
        _writable: &[std::path::PathBuf],
    ) -> Result<Protections, SandboxError> {
        Err(SandboxError::UnsupportedOs)
    }

    pub(super) fn current(landlock: Landlock) -> Protections {
        Protections {
            no_new_privs: false,
            dumpable: true,
            seccomp: false,
            landlock,
            landlock_scoped: false,
            uid: 0,
        }
    }
}

/// The environment variables that carry the master key's passphrase.
pub const PASSPHRASE_VARIABLES: [&str; 2] = ["OPENRED_PASSPHRASE", "OPENRED_PASSPHRASE_FILE"];

/// Removes `names` from this process's environment, and overwrites their
/// values in the environment block the process started with, which
/// `/proc/PID/environ` (and anything reading this process's memory) shows
/// whatever `remove_var` did. Call before any thread exists (`remove_var`
/// is not thread-safe). Returns how many values were overwritten.
///
/// The block is read and written through `/proc/self/mem` (the process's
/// own memory, no `unsafe`), between `env_start` and `env_end` of
/// `/proc/self/stat`.
pub fn scrub_environment(names: &[&str]) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    for name in names {
        std::env::remove_var(name);
    }
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: env_start and env_end are fields 50 and 51 (1-based).
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| std::io::Error::other("unreadable /proc/self/stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| -> std::io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| std::io::Error::other("no environment bounds in /proc/self/stat"))
    };
    let (start, end) = (field(50)?, field(51)?);
    if end <= start || end - start > 16 * 1024 * 1024 {
        return Ok(0);
    }
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/proc/self/mem")?;
    let len = usize::try_from(end - start).map_err(std::io::Error::other)?;
    let mut block = vec![0u8; len];
    mem.read_exact_at(&mut block, start)?;
    let mut scrubbed = 0;
    let mut offset = 0;
    for entry in block.split(|b| *b == 0) {
        let value_at = names.iter().find_map(|name| {
            let prefix = name.len() + 1;
            (entry.len() >= prefix
                && entry.starts_with(name.as_bytes())
                && entry[name.len()] == b'=')
                .then_some(prefix)
        });
        if let Some(prefix) = value_at {
            let value = offset + prefix..offset + entry.len();
            if !value.is_empty() {
                let zeros = vec![0u8; value.len()];
                mem.write_all_at(&zeros, start + value.start as u64)?;
                scrubbed += 1;
            }
        }
        offset += entry.len() + 1;
    }
    Ok(scrubbed)
}
