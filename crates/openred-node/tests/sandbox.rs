#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The sandboxes, attacked from the inside.
//!
//! Confinement is irreversible and process-wide, so each check runs in a
//! child process: the parent test re-executes this test binary with one
//! ignored `*_child` test selected and environment variables saying what to
//! use, then asserts on the child's exit status and on the lines it prints.
//! A child prints `ok: <check>` or `FAIL: <check>` for each check, and
//! `skipped: <check> (...)` for a Landlock check on a kernel without
//! Landlock; it panics at the end if anything failed. Each child first
//! checks that what it will try works unconfined, so a check that passes
//! proves the sandbox, not the environment.
#![cfg(target_os = "linux")]

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use openred_node::agent::sandbox::{self, Landlock, Protections};

const KEYS: &str = "OPENRED_SANDBOX_KEYS";
const OUTSIDE: &str = "OPENRED_SANDBOX_OUTSIDE";
const TCP_PORT: &str = "OPENRED_SANDBOX_TCP_PORT";
const TARGET_PID: &str = "OPENRED_SANDBOX_TARGET_PID";
const DATA: &str = "OPENRED_SANDBOX_DATA";
const OTHER: &str = "OPENRED_SANDBOX_OTHER";
const WRITABLE: &str = "OPENRED_SANDBOX_WRITABLE";

const KEY_BYTES: &[u8] = b"secret identity key";

// ---------------------------------------------------------------- parent side

/// Runs the ignored test `name` of this binary in a child process and
/// returns its standard output, after asserting it exited successfully.
///
/// A broken sandbox can leave the child stopped (a `PTRACE_TRACEME` that
/// succeeded makes this process its tracer), so the child gets a deadline
/// and is killed when stopped or late, instead of hanging the test run.
fn run_child(name: &str, env: &[(&str, OsString)]) -> String {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        match child.try_wait().unwrap() {
            Some(status) if status.stopped_signal().is_none() => break Some(status),
            Some(_) => break None,
            None if Instant::now() > deadline => break None,
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    if status.is_none() {
        child.kill().unwrap();
    }
    let stdout = stdout.join().unwrap();
    let stderr = stderr.join().unwrap();
    if status.is_none() {
        // A thread that made itself our tracee stays a zombie until we
        // reap it by its thread ID; only then can the process be reaped.
        let tracee = stdout
            .lines()
            .find_map(|l| l.strip_prefix("traceme tid: "))
            .and_then(|tid| tid.parse().ok());
        if let Some(tid) = tracee {
            let _ = waitpid(Pid::from_raw(tid), Some(WaitPidFlag::__WALL));
        }
        let _ = child.wait();
    }
    println!("--- {name} stdout\n{stdout}--- {name} stderr\n{stderr}");
    let status = status.unwrap_or_else(|| panic!("{name} stopped or hung and was killed"));
    assert!(status.success(), "{name} failed: {status}");
    assert!(!stdout.contains("FAIL: "), "{name} reported a failure");
    // libtest prints this only if the selected test actually ran.
    assert!(stdout.contains("1 passed"), "{name} did not run");
    stdout
}

/// Asserts that the child passed `check`.
fn assert_ok(stdout: &str, check: &str) {
    assert!(
        stdout.lines().any(|l| l == format!("ok: {check}")),
        "missing `ok: {check}`"
    );
}

/// Whether the child skipped `check`, saying why.
fn skipped(stdout: &str, check: &str) -> bool {
    stdout
        .lines()
        .any(|l| l.starts_with(&format!("skipped: {check} (")))
}

/// Asserts that the child passed `check`, or skipped it because the kernel
/// has no Landlock (which the confinement must then have reported).
fn assert_ok_or_no_landlock(stdout: &str, check: &str) {
    if skipped(stdout, check) {
        assert!(stdout.contains(r#"landlock: {"state":"unsupported"}"#));
    } else {
        assert_ok(stdout, check);
    }
}

/// Asserts that the child passed `check`, or skipped it because the
/// kernel's Landlock cannot scope signals (ABI < 6), which the confinement
/// must then have reported.
fn assert_ok_or_no_scoping(stdout: &str, check: &str) {
    if skipped(stdout, check) {
        assert!(stdout.contains("landlock_scoped: false"));
    } else {
        assert_ok(stdout, check);
    }
}

/// Asserts that the child denied io_uring, or skipped the check because
/// io_uring did not work even before confinement.
fn assert_io_uring_denied(stdout: &str) {
    if !skipped(stdout, "io_uring denied") {
        assert_ok(stdout, "io_uring denied");
    }
}

/// A process standing for another one (the agent), to attack.
fn stand_in() -> Child {
    Command::new("sleep").arg("30").spawn().unwrap()
}

#[test]
fn agent_is_confined_to_reading_its_keys() {
    let keys = tempfile::tempdir().unwrap();
    fs::write(keys.path().join("identity.key"), KEY_BYTES).unwrap();
    let outside = tempfile::NamedTempFile::new().unwrap();
    fs::write(outside.path(), b"outside").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut target = stand_in();

    let stdout = run_child(
        "agent_child",
        &[
            (KEYS, keys.path().into()),
            (OUTSIDE, outside.path().into()),
            (TCP_PORT, port.to_string().into()),
            (TARGET_PID, target.id().to_string().into()),
        ],
    );
    target.kill().unwrap();
    target.wait().unwrap();

    assert_io_uring_denied(&stdout);

    for check in [
        "reads a key file",
        "unix socket pair carries bytes",
        "tcp bind denied",
        "tcp connect denied",
        "udp bind denied",
        "spawning a process denied",
        "ptrace traceme denied",
        "ptrace attach denied",
        "process_vm_readv denied",
        "no_new_privs",
        "not dumpable",
        "seccomp",
        "reported protections match the kernel",
    ] {
        assert_ok(&stdout, check);
    }
    for check in [
        "writing a key file denied",
        "creating a file in the key directory denied",
        "reading a file outside the key directory denied",
        "reading a system file denied",
    ] {
        assert_ok_or_no_landlock(&stdout, check);
    }
}

#[test]
fn node_is_kept_away_from_the_keys_and_cannot_write_or_signal_outside_its_folders() {
    let data = tempfile::tempdir().unwrap();
    fs::create_dir(data.path().join("keys")).unwrap();
    fs::write(data.path().join("keys/identity.key"), KEY_BYTES).unwrap();
    fs::write(data.path().join("node.db"), b"database").unwrap();
    let other = tempfile::tempdir().unwrap();
    fs::write(other.path().join("before.txt"), b"before").unwrap();
    fs::write(other.path().join("program"), b"the program").unwrap();
    let downloads = tempfile::tempdir().unwrap();

    let stdout = run_child(
        "node_child",
        &[
            (DATA, data.path().into()),
            (OTHER, other.path().into()),
            (WRITABLE, downloads.path().into()),
        ],
    );
    let stand_in = stdout
        .lines()
        .find_map(|l| l.strip_prefix("stand-in pid: "))
        .and_then(|pid| pid.parse().ok())
        .map(Pid::from_raw);
    if let Some(pid) = stand_in {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }

    // The node could not have written a file into its data directory
    // itself, nor anywhere outside its writable folders.
    assert!(!data.path().join("created-after.txt").exists());
    assert!(!other.path().join("created-after.txt").exists());
    assert_eq!(
        fs::read(other.path().join("before.txt")).unwrap(),
        b"before"
    );
    assert_eq!(
        fs::read(other.path().join("program")).unwrap(),
        b"the program"
    );
    assert_eq!(
        fs::read(downloads.path().join("created-after.txt")).unwrap(),
        b"after"
    );
    for check in [
        "reads the database",
        "writes the database",
        "reads a file in another directory",
        "tcp still works",
        "ptrace attach denied",
        "process_vm_readv denied",
        "signals itself",
        "no_new_privs",
        "not dumpable",
        "seccomp",
        "reported protections match the kernel",
    ] {
        assert_ok(&stdout, check);
    }
    for check in [
        "opening the identity key denied",
        "creating a file in the key directory denied",
        "creating a file in the data directory denied",
        "opening the agent's memory denied",
        "creates a file in a download folder",
        "creating a file in another directory denied",
        "writing a file in another directory denied",
        "replacing a program file denied",
        "writing a system file denied",
    ] {
        assert_ok_or_no_landlock(&stdout, check);
    }
    if nix::unistd::Uid::effective().is_root() {
        assert_ok(&stdout, "setting the clock denied");
    }
    for check in [
        "signalling the agent denied",
        "signalling the parent denied",
    ] {
        assert_ok_or_no_scoping(&stdout, check);
    }
}

#[test]
fn a_writable_folder_inside_the_key_folder_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let keys = data.path().join("keys");
    fs::create_dir_all(keys.join("inner")).unwrap();
    let before = sandbox::current(Landlock::NotApplied);
    for writable in [keys.clone(), keys.join("inner")] {
        assert!(matches!(
            sandbox::confine_node(&keys, &[writable]),
            Err(sandbox::SandboxError::Writable { .. })
        ));
    }
    assert_eq!(sandbox::current(Landlock::NotApplied), before);
}

#[test]
fn launcher_can_spawn_but_not_reach_the_network_nor_write() {
    let other = tempfile::tempdir().unwrap();
    fs::write(other.path().join("before.txt"), b"before").unwrap();
    fs::write(other.path().join("agent.state"), b"").unwrap();
    let stdout = run_child("launcher_child", &[(OTHER, other.path().into())]);
    assert_eq!(
        fs::read(other.path().join("agent.state")).unwrap(),
        b"state"
    );
    assert_eq!(
        fs::read(other.path().join("before.txt")).unwrap(),
        b"before"
    );
    assert_io_uring_denied(&stdout);
    for check in [
        "ptrace attach denied",
        "stops an agent it started",
        "process_vm_readv denied",
        "spawns a process",
        "reads a file",
        "writes the agents' state file",
        "unix socket pair carries bytes",
        "tcp bind denied",
        "udp bind denied",
        "ptrace traceme denied",
        "no_new_privs",
        "not dumpable",
        "seccomp",
        "reported protections match the kernel",
    ] {
        assert_ok(&stdout, check);
    }
    for check in ["writing a file denied", "creating a file denied"] {
        assert_ok_or_no_landlock(&stdout, check);
    }
    assert_ok_or_no_scoping(&stdout, "signalling the parent denied");
}

#[test]
fn a_root_key_directory_is_refused_before_anything_changes() {
    let before = sandbox::current(Landlock::NotApplied);
    assert!(matches!(
        sandbox::confine_node(Path::new("/"), &[]),
        Err(sandbox::SandboxError::KeyDirIsRoot)
    ));
    let missing = tempfile::tempdir().unwrap().path().join("missing");
    assert!(matches!(
        sandbox::confine_agent(&missing),
        Err(sandbox::SandboxError::KeyDir { .. })
    ));
    assert_eq!(sandbox::current(Landlock::NotApplied), before);
}

#[test]
fn protections_serialise_with_a_tagged_landlock_state() {
    let protections = Protections {
        no_new_privs: true,
        dumpable: false,
        seccomp: true,
        landlock: Landlock::Enforced { abi: 7 },
        landlock_scoped: true,
        uid: 1000,
    };
    let json = serde_json::to_string(&protections).unwrap();
    assert_eq!(
        json,
        r#"{"no_new_privs":true,"dumpable":false,"seccomp":true,"landlock":{"state":"enforced","abi":7},"landlock_scoped":true,"uid":1000}"#
    );
    assert_eq!(
        serde_json::from_str::<Protections>(&json).unwrap(),
        protections
    );
    assert_eq!(
        serde_json::to_string(&Landlock::NotApplied).unwrap(),
        r#"{"state":"not_applied"}"#
    );
}

// ----------------------------------------------------------------- child side

/// The results of one child's checks.
struct Checks {
    failed: Vec<String>,
    landlock: bool,
}

impl Checks {
    fn new(landlock: &Landlock) -> Self {
        // libtest has printed "test <name> ... " without a line break.
        println!();
        println!("landlock: {}", serde_json::to_string(landlock).unwrap());
        let landlock = match landlock {
            Landlock::Enforced { .. } | Landlock::Partial { .. } => true,
            Landlock::Unsupported => false,
            Landlock::NotApplied => panic!("Landlock was requested"),
        };
        Checks {
            failed: Vec::new(),
            landlock,
        }
    }

    /// Landlock checks, and scope checks if `reported` says the domain
    /// scopes signals.
    fn with_scopes(reported: &Protections) -> Self {
        let checks = Checks::new(&reported.landlock);
        println!("landlock_scoped: {}", reported.landlock_scoped);
        checks
    }

    /// A check that only Landlock's scoping (ABI 6) makes pass.
    fn scope_check(&mut self, reported: &Protections, name: &str, passed: impl FnOnce() -> bool) {
        if reported.landlock_scoped {
            self.check(name, passed());
        } else {
            println!("skipped: {name} (the kernel's Landlock cannot scope signals)");
        }
    }

    fn check(&mut self, name: &str, passed: bool) {
        if passed {
            println!("ok: {name}");
        } else {
            println!("FAIL: {name}");
            self.failed.push(name.to_owned());
        }
    }

    /// A check that only Landlock makes pass.
    fn landlock_check(&mut self, name: &str, passed: impl FnOnce() -> bool) {
        if self.landlock {
            self.check(name, passed());
        } else {
            println!("skipped: {name} (the kernel has no Landlock)");
        }
    }

    /// The protections every confined process has, as the kernel reports
    /// them, and as the confinement function reported them.
    fn protections(&mut self, reported: &Protections) {
        let now = sandbox::current(reported.landlock);
        self.check("no_new_privs", now.no_new_privs);
        self.check("not dumpable", !now.dumpable);
        self.check("seccomp", now.seccomp);
        self.check("reported protections match the kernel", &now == reported);
    }

    fn finish(self) {
        assert!(self.failed.is_empty(), "failed: {:?}", self.failed);
    }
}

fn env_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run through the parent test"))
}

fn is_eperm(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc_eperm())
}

fn libc_eperm() -> i32 {
    Errno::EPERM as i32
}

fn pair_carries_bytes() -> bool {
    let Ok((mut a, mut b)) = UnixStream::pair() else {
        return false;
    };
    let mut buf = [0u8; 4];
    a.write_all(b"ping").is_ok() && b.read_exact(&mut buf).is_ok() && &buf == b"ping"
}

/// Reads this process's own memory with `process_vm_readv`: allowed
/// unconfined, so `EPERM` afterwards comes from the filter.
fn read_own_memory() -> Result<(), Errno> {
    let source = [7u8; 16];
    let mut copy = [0u8; 16];
    let remote = [RemoteIoVec {
        base: source.as_ptr() as usize,
        len: source.len(),
    }];
    process_vm_readv(
        Pid::this(),
        &mut [std::io::IoSliceMut::new(&mut copy)],
        &remote,
    )?;
    assert_eq!(copy, source);
    Ok(())
}

fn try_io_uring() -> std::io::Result<()> {
    io_uring::IoUring::new(8).map(drop)
}

/// A file every system has, outside any key directory.
fn system_file() -> &'static str {
    ["/etc/hostname", "/etc/passwd", "/proc/version"]
        .into_iter()
        .find(|p| fs::read(p).is_ok())
        .expect("no readable system file")
}

#[test]
#[ignore = "run by agent_is_confined_to_reading_its_keys in a child process"]
fn agent_child() {
    let keys = PathBuf::from(env_var(KEYS));
    let outside = PathBuf::from(env_var(OUTSIDE));
    let port: u16 = env_var(TCP_PORT).parse().unwrap();
    let target = Pid::from_raw(env_var(TARGET_PID).parse().unwrap());
    let key_file = keys.join("identity.key");
    let system_file = system_file();

    // Unconfined, everything tried below works.
    assert_eq!(fs::read(&key_file).unwrap(), KEY_BYTES);
    fs::OpenOptions::new().append(true).open(&key_file).unwrap();
    fs::read(&outside).unwrap();
    drop(TcpListener::bind("127.0.0.1:0").unwrap());
    drop(TcpStream::connect(("127.0.0.1", port)).unwrap());
    drop(UdpSocket::bind("127.0.0.1:0").unwrap());
    assert!(Command::new("/bin/true").status().unwrap().success());
    read_own_memory().unwrap();
    let io_uring_works = try_io_uring().is_ok();

    let reported = sandbox::confine_agent(&keys).unwrap();
    let mut checks = Checks::new(&reported.landlock);

    checks.check(
        "reads a key file",
        fs::read(&key_file).is_ok_and(|b| b == KEY_BYTES),
    );
    checks.landlock_check("writing a key file denied", || {
        fs::OpenOptions::new()
            .append(true)
            .open(&key_file)
            .is_err_and(|e| is_eperm(&e) || e.kind() == std::io::ErrorKind::PermissionDenied)
    });
    checks.landlock_check("creating a file in the key directory denied", || {
        fs::write(keys.join("new.key"), b"x").is_err() && !keys.join("new.key").exists()
    });
    checks.landlock_check("reading a file outside the key directory denied", || {
        fs::read(&outside).is_err()
    });
    checks.landlock_check("reading a system file denied", || {
        fs::read(system_file).is_err()
    });
    checks.check("unix socket pair carries bytes", pair_carries_bytes());
    checks.check(
        "tcp bind denied",
        TcpListener::bind("127.0.0.1:0").is_err_and(|e| is_eperm(&e)),
    );
    checks.check(
        "tcp connect denied",
        TcpStream::connect(("127.0.0.1", port)).is_err_and(|e| is_eperm(&e)),
    );
    checks.check(
        "udp bind denied",
        UdpSocket::bind("127.0.0.1:0").is_err_and(|e| is_eperm(&e)),
    );
    checks.check(
        "spawning a process denied",
        Command::new("/bin/true").status().is_err(),
    );
    checks.check("ptrace attach denied", ptrace::attach(target).is_err());
    checks.check(
        "process_vm_readv denied",
        read_own_memory() == Err(Errno::EPERM),
    );
    if io_uring_works {
        checks.check(
            "io_uring denied",
            try_io_uring().is_err_and(|e| is_eperm(&e)),
        );
    } else {
        println!("skipped: io_uring denied (io_uring is unavailable even unconfined)");
    }
    checks.protections(&reported);
    // Last: if it wrongly succeeded, this thread would be traced by the
    // parent test, which needs the thread ID to clean up.
    println!("traceme tid: {}", nix::unistd::gettid());
    checks.check(
        "ptrace traceme denied",
        ptrace::traceme() == Err(Errno::EPERM),
    );
    checks.finish();
}

#[test]
#[ignore = "run by node_is_kept_away_from_the_keys_and_cannot_write_or_signal_outside_its_folders in a child process"]
// The confined child cannot signal its stand-in: the parent ends it.
#[allow(clippy::zombie_processes)]
fn node_child() {
    let data = PathBuf::from(env_var(DATA));
    let other = PathBuf::from(env_var(OTHER));
    let downloads = PathBuf::from(env_var(WRITABLE));
    let keys = data.join("keys");
    let key_file = keys.join("identity.key");
    let database = data.join("node.db");
    let program = other.join("program");

    // The agent stand-in, started before the node confines itself, like
    // the real agent launcher.
    let agent = stand_in();
    let agent_pid = Pid::from_raw(i32::try_from(agent.id()).unwrap());
    let agent_mem = format!("/proc/{}/mem", agent.id());
    // Unconfined (and root), all of this works.
    assert_eq!(fs::read(&key_file).unwrap(), KEY_BYTES);
    fs::File::open(&agent_mem).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(other.join("before.txt"))
        .unwrap();
    nix::sys::signal::kill(agent_pid, None).unwrap();
    nix::sys::signal::kill(nix::unistd::getppid(), None).unwrap();

    let reported = sandbox::confine_node(&keys, &[data.clone(), downloads.clone()]).unwrap();
    let mut checks = Checks::with_scopes(&reported);

    checks.landlock_check("opening the identity key denied", || {
        fs::File::open(&key_file).is_err()
    });
    checks.landlock_check("creating a file in the key directory denied", || {
        fs::write(keys.join("new.key"), b"x").is_err()
    });
    checks.landlock_check("creating a file in the data directory denied", || {
        fs::write(data.join("created-after.txt"), b"after").is_err()
    });
    checks.check(
        "reads the database",
        fs::read(&database).is_ok_and(|b| b == b"database"),
    );
    checks.check(
        "writes the database",
        fs::OpenOptions::new()
            .append(true)
            .open(&database)
            .and_then(|mut f| f.write_all(b"+"))
            .is_ok(),
    );
    checks.check(
        "reads a file in another directory",
        fs::read(other.join("before.txt")).is_ok_and(|b| b == b"before"),
    );
    checks.landlock_check("creates a file in a download folder", || {
        fs::write(downloads.join("created-after.txt"), b"after").is_ok()
    });
    checks.landlock_check("creating a file in another directory denied", || {
        fs::write(other.join("created-after.txt"), b"after").is_err()
    });
    checks.landlock_check("writing a file in another directory denied", || {
        fs::OpenOptions::new()
            .append(true)
            .open(other.join("before.txt"))
            .is_err()
    });
    // What a compromised node did to get its code run outside the
    // sandbox: put another file where the program is.
    checks.landlock_check("replacing a program file denied", || {
        fs::rename(&database, &program).is_err() && fs::remove_file(&program).is_err()
    });
    checks.landlock_check("writing a system file denied", || {
        fs::OpenOptions::new()
            .append(true)
            .open("/etc/passwd")
            .is_err()
    });
    checks.check("tcp still works", TcpListener::bind("127.0.0.1:0").is_ok());
    checks.check("ptrace attach denied", ptrace::attach(agent_pid).is_err());
    checks.landlock_check("opening the agent's memory denied", || {
        fs::File::open(&agent_mem).is_err()
    });
    if nix::unistd::Uid::effective().is_root() {
        // Setting the clock to what it shows changes nothing if allowed.
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME).unwrap();
        checks.check(
            "setting the clock denied",
            nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, now) == Err(Errno::EPERM),
        );
    } else {
        println!("skipped: setting the clock denied (only root could set it anyway)");
    }
    checks.check(
        "signals itself",
        nix::sys::signal::kill(Pid::this(), None).is_ok(),
    );
    checks.scope_check(&reported, "signalling the agent denied", || {
        nix::sys::signal::kill(agent_pid, nix::sys::signal::Signal::SIGKILL) == Err(Errno::EPERM)
    });
    checks.scope_check(&reported, "signalling the parent denied", || {
        nix::sys::signal::kill(nix::unistd::getppid(), None) == Err(Errno::EPERM)
    });
    let mut byte = [0u8; 1];
    checks.check(
        "process_vm_readv denied",
        process_vm_readv(
            agent_pid,
            &mut [std::io::IoSliceMut::new(&mut byte)],
            &[RemoteIoVec {
                base: 0x1000,
                len: 1,
            }],
        ) == Err(Errno::EPERM),
    );
    checks.protections(&reported);
    // The confined child may not be able to end its stand-in: the parent
    // does.
    println!("stand-in pid: {}", agent.id());
    checks.finish();
}

#[test]
#[ignore = "run by launcher_can_spawn_but_not_reach_the_network_nor_write in a child process"]
fn launcher_child() {
    let other = PathBuf::from(env_var(OTHER));
    drop(TcpListener::bind("127.0.0.1:0").unwrap());
    drop(UdpSocket::bind("127.0.0.1:0").unwrap());
    let io_uring_works = try_io_uring().is_ok();
    fs::OpenOptions::new()
        .append(true)
        .open(other.join("before.txt"))
        .unwrap();
    nix::sys::signal::kill(nix::unistd::getppid(), None).unwrap();

    read_own_memory().unwrap();

    let reported = sandbox::confine_launcher(&other.join("agent.state")).unwrap();
    let mut checks = Checks::with_scopes(&reported);

    // An agent it spawned, inside its domain: Landlock lets it signal the
    // agent; only the filter stands against ptrace.
    let mut agent = stand_in();
    let agent_pid = Pid::from_raw(i32::try_from(agent.id()).unwrap());
    checks.check(
        "ptrace attach denied",
        ptrace::attach(agent_pid) == Err(Errno::EPERM),
    );
    checks.check("stops an agent it started", agent.kill().is_ok());
    agent.wait().unwrap();
    checks.check(
        "process_vm_readv denied",
        read_own_memory() == Err(Errno::EPERM),
    );

    checks.check(
        "spawns a process",
        Command::new("/bin/true")
            .status()
            .is_ok_and(|s| s.success()),
    );
    checks.check(
        "reads a file",
        fs::read(other.join("before.txt")).is_ok_and(|b| b == b"before"),
    );
    checks.check(
        "writes the agents' state file",
        fs::OpenOptions::new()
            .write(true)
            .open(other.join("agent.state"))
            .and_then(|mut f| f.write_all(b"state"))
            .is_ok(),
    );
    checks.landlock_check("writing a file denied", || {
        fs::OpenOptions::new()
            .append(true)
            .open(other.join("before.txt"))
            .is_err()
    });
    checks.landlock_check("creating a file denied", || {
        fs::write(other.join("created-after.txt"), b"after").is_err()
    });
    checks.scope_check(&reported, "signalling the parent denied", || {
        nix::sys::signal::kill(nix::unistd::getppid(), None) == Err(Errno::EPERM)
    });
    checks.check("unix socket pair carries bytes", pair_carries_bytes());
    checks.check(
        "tcp bind denied",
        TcpListener::bind("127.0.0.1:0").is_err_and(|e| is_eperm(&e)),
    );
    checks.check(
        "udp bind denied",
        UdpSocket::bind("127.0.0.1:0").is_err_and(|e| is_eperm(&e)),
    );
    if io_uring_works {
        checks.check(
            "io_uring denied",
            try_io_uring().is_err_and(|e| is_eperm(&e)),
        );
    } else {
        println!("skipped: io_uring denied (io_uring is unavailable even unconfined)");
    }
    checks.protections(&reported);
    // Last, see agent_child.
    println!("traceme tid: {}", nix::unistd::gettid());
    checks.check(
        "ptrace traceme denied",
        ptrace::traceme() == Err(Errno::EPERM),
    );
    checks.finish();
}
