//! The processes: the agent's serving loop, the launcher that starts
//! agents, and the inherited socket pairs between them and the node.
//!
//! ```text
//! node ──control socket pair──▶ launcher (spawned first, before the node
//!   ▲                              confines itself; holds no secret)
//!   │  SCM_RIGHTS: one end of a        │ spawns, with the other end
//!   │  new socket pair per agent       ▼ inherited as its stdin
//!   └────────── IPC frames ───────▶ agent (loads the keys, confines
//!                                      itself, then serves)
//! ```
//!
//! No socket has a path in the filesystem: each child gets its end of a
//! socket pair as its standard input. No child is started from a path
//! either: the node opens the program once at start, the launcher opens
//! its own running image (`/proc/self/exe`) before it confines itself, and
//! every child is executed from that descriptor ([`Executable`]). A
//! compromised node that replaces the file at the program's path therefore
//! changes nothing that the launcher starts. The launcher exists because the
//! node, once confined, can no longer read the key directory, and a
//! process it spawned itself would inherit that confinement; agents started
//! by the launcher do not, and are outside the node's Landlock domain, so
//! the node cannot ptrace them either.

use std::ffi::OsStr;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use super::core::AgentCore;
use super::proto::{self, ErrorKind, FrameError, Request, Response, WireError};

/// Threads answering requests in the agent.
const WORKERS: usize = 2;
/// The byte the node sends the launcher to ask for an agent.
const SPAWN: u8 = b'S';

/// A program held open by a descriptor (`O_PATH`), so that what is
/// started is the file that was opened, whatever happens at its path
/// afterwards (a rename over it, a replaced symbolic link).
#[derive(Debug)]
pub struct Executable {
    fd: OwnedFd,
}

impl Executable {
    /// Opens the program at `path` (following symbolic links: the file
    /// they name at this moment is the one kept).
    pub fn open(path: &Path) -> io::Result<Executable> {
        let fd = rustix::fs::open(
            path,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        let stat = rustix::fs::fstat(&fd)?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", path.display()),
            ));
        }
        Ok(Executable { fd })
    }

    /// The image this process runs: `/proc/self/exe` names the inode that
    /// was executed, not the path it was found at.
    pub fn current() -> io::Result<Executable> {
        Executable::open(Path::new("/proc/self/exe"))
    }

    /// The file's device and inode numbers.
    pub fn identity(&self) -> io::Result<(u64, u64)> {
        let stat = rustix::fs::fstat(&self.fd)?;
        Ok((stat.st_dev, stat.st_ino))
    }

    /// A command that executes this descriptor. `/proc/self/fd/N` is a
    /// link to the open file itself, resolved in the child, which has the
    /// descriptor until the exec succeeds (it is close-on-exec): this is
    /// how `fexecve(3)` works, with no `unsafe` code and no path to the
    /// program's file involved.
    fn command(&self) -> Command {
        let mut command = Command::new(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        command.arg0("openred");
        command
    }
}

/// The user a child runs as (`--agent-user`), resolved by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    /// The user ID.
    pub uid: u32,
    /// The primary group ID (supplementary groups are dropped).
    pub gid: u32,
}

impl RunAs {
    /// `UID:GID`, as passed to the launcher.
    pub fn to_arg(self) -> String {
        format!("{}:{}", self.uid, self.gid)
    }

    /// Parses [`RunAs::to_arg`]'s form.
    pub fn parse(text: &str) -> Option<RunAs> {
        let (uid, gid) = text.split_once(':')?;
        Some(RunAs {
            uid: uid.parse().ok()?,
            gid: gid.parse().ok()?,
        })
    }
}

/// Starts `program` with `args`, one end of a new socket pair as its
/// standard input, as `run_as` when given; returns the child and the other
/// end.
pub fn spawn_with_socket(
    program: &Executable,
    args: &[&OsStr],
    run_as: Option<RunAs>,
) -> io::Result<(Child, UnixStream)> {
    let (ours, theirs) = UnixStream::pair()?;
    let mut command = program.command();
    command.args(args).stdin(Stdio::from(OwnedFd::from(theirs)));
    if let Some(user) = run_as {
        // std drops the supplementary groups when it changes the user.
        command.uid(user.uid).gid(user.gid);
    }
    let child = command.spawn()?;
    Ok((child, ours))
}

/// The passphrase an agent started with `--passphrase-on-stdin` reads
/// first from its socket: `length u32 BE || bytes`, at most 4 KiB.
pub fn read_passphrase(mut stream: &UnixStream) -> io::Result<zeroize::Zeroizing<Vec<u8>>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > 4096 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "passphrase longer than 4 KiB",
        ));
    }
    let mut passphrase = zeroize::Zeroizing::new(vec![0u8; len]);
    stream.read_exact(&mut passphrase)?;
    Ok(passphrase)
}

/// The socket this process was given as its standard input by
/// [`spawn_with_socket`].
pub fn inherited_socket() -> io::Result<UnixStream> {
    let fd = io::stdin().as_fd().try_clone_to_owned()?;
    let stat = rustix::fs::fstat(&fd).map_err(io::Error::from)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "standard input is not a socket: this command is started by the node",
        ));
    }
    Ok(UnixStream::from(fd))
}

fn reply(writer: &Mutex<UnixStream>, id: u64, response: &Response) {
    let frame = match proto::encode(id, response) {
        Ok(f) => f,
        Err(_) => match proto::encode(
            id,
            &Response::Error(WireError {
                kind: ErrorKind::Internal,
                message: "the answer could not be encoded".into(),
            }),
        ) {
            Ok(f) => f,
            Err(_) => return,
        },
    };
    let mut writer = writer.lock().unwrap_or_else(PoisonError::into_inner);
    // A write error means the node is gone; the reader sees it too.
    let _ = writer.write_all(&frame);
}

fn malformed(writer: &Mutex<UnixStream>, id: u64, error: &FrameError) {
    reply(
        writer,
        id,
        &Response::Error(WireError {
            kind: ErrorKind::Malformed,
            message: error.to_string(),
        }),
    );
}

/// Serves requests on `stream` until the node closes it. Malformed frames
/// are answered with an error and skipped; the loop goes on.
pub fn serve(stream: UnixStream, core: Arc<AgentCore>) -> io::Result<()> {
    let writer = Arc::new(Mutex::new(stream.try_clone()?));
    let (jobs, queue) = mpsc::sync_channel::<(u64, Request)>(64);
    let queue = Arc::new(Mutex::new(queue));
    // Requests handed to the workers and not answered yet.
    let busy = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::with_capacity(WORKERS);
    for _ in 0..WORKERS {
        let queue = queue.clone();
        let writer = writer.clone();
        let core = core.clone();
        let busy = busy.clone();
        workers.push(std::thread::spawn(move || loop {
            let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
            let Ok((id, request)) = job else { return };
            reply(&writer, id, &core.handle(request));
            busy.fetch_sub(1, Ordering::AcqRel);
        }));
    }
    let mut reader = io::BufReader::new(stream);
    let result = loop {
        let mut prefix = [0u8; 4];
        match reader.read_exact(&mut prefix) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break Ok(()),
            Err(e) => break Err(e),
        }
        let len = match proto::body_len(prefix) {
            Ok(len) => len,
            Err(e) => {
                // Skip what the prefix announced, without keeping it.
                let announced = u64::from(u32::from_be_bytes(prefix));
                if let Err(e) = io::copy(&mut (&mut reader).take(announced), &mut io::sink()) {
                    break Err(e);
                }
                malformed(&writer, 0, &e);
                continue;
            }
        };
        let mut body = vec![0u8; len];
        if let Err(e) = reader.read_exact(&mut body) {
            break if e.kind() == io::ErrorKind::UnexpectedEof {
                Ok(())
            } else {
                Err(e)
            };
        }
        match proto::decode::<Request>(&body) {
            // Alone, with nothing else read ahead: answered on this thread,
            // a thread wake-up fewer (the common case: one request at a
            // time). Under load the workers answer in parallel.
            Ok((id, request))
                if busy.load(Ordering::Acquire) == 0 && reader.buffer().is_empty() =>
            {
                reply(&writer, id, &core.handle(request));
            }
            Ok(job) => {
                busy.fetch_add(1, Ordering::AcqRel);
                if jobs.send(job).is_err() {
                    break Ok(());
                }
            }
            Err(e) => malformed(&writer, proto::body_id(&body).unwrap_or(0), &e),
        }
    };
    drop(jobs);
    for worker in workers {
        let _ = worker.join();
    }
    result
}

/// The launcher's loop: one agent per request on `control` (given the
/// `passphrase` variables, which the launcher no longer has in its own
/// environment), its socket end
/// passed back with SCM_RIGHTS and its pid as the 4 data bytes (0 and no
/// descriptor when it could not be started). Ends, stopping its agents,
/// when the node closes `control`.
pub fn run_launcher(
    control: UnixStream,
    program: &Executable,
    key_dir: &Path,
    run_as: Option<RunAs>,
    passphrase: Option<&[u8]>,
) -> io::Result<()> {
    let mut control = control;
    let mut children: Vec<Child> = Vec::new();
    let key_dir_arg = key_dir.to_path_buf();
    loop {
        let mut byte = [0u8; 1];
        match control.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == SPAWN => {}
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        // Reap agents that ended.
        children.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
        let mut args = vec![
            OsStr::new("agent"),
            OsStr::new("--keys"),
            key_dir_arg.as_os_str(),
        ];
        if passphrase.is_some() {
            args.push(OsStr::new("--passphrase-on-stdin"));
        }
        let started = spawn_with_socket(program, &args, run_as).and_then(|(child, mut end)| {
            // The first bytes the agent reads, before the node's requests.
            if let Some(passphrase) = passphrase {
                let len = u32::try_from(passphrase.len()).map_err(io::Error::other)?;
                end.write_all(&len.to_be_bytes())?;
                end.write_all(passphrase)?;
            }
            Ok((child, end))
        });
        let sent = match started {
            Ok((child, end)) => {
                let pid = child.id().to_be_bytes();
                children.push(child);
                let fds = [end.as_fd()];
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut ancillary = SendAncillaryBuffer::new(&mut space);
                ancillary.push(SendAncillaryMessage::ScmRights(&fds));
                sendmsg(
                    &control,
                    &[IoSlice::new(&pid)],
                    &mut ancillary,
                    SendFlags::empty(),
                )
                .map(|_| ())
                .map_err(io::Error::from)
            }
            Err(e) => {
                tracing::error!(error = %e, "could not start a crypto agent");
                control.write_all(&0u32.to_be_bytes())
            }
        };
        if sent.is_err() {
            break;
        }
    }
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(())
}

/// The node's end of the launcher.
pub struct Launcher {
    control: Mutex<UnixStream>,
    child: Mutex<Child>,
}

impl Launcher {
    /// Starts `program agent --launcher --keys KEY_DIR [--agent-user
    /// UID:GID]`.
    pub fn start(
        program: &Executable,
        key_dir: &Path,
        agent_user: Option<RunAs>,
    ) -> io::Result<Launcher> {
        let user = agent_user.map(RunAs::to_arg);
        let mut args = vec![
            OsStr::new("agent"),
            OsStr::new("--launcher"),
            OsStr::new("--keys"),
            key_dir.as_os_str(),
        ];
        if let Some(user) = &user {
            args.extend([OsStr::new("--agent-user"), OsStr::new(user.as_str())]);
        }
        let (child, control) = spawn_with_socket(program, &args, None)?;
        Ok(Launcher {
            control: Mutex::new(control),
            child: Mutex::new(child),
        })
    }

    /// Asks for a new agent; blocking. Returns its pid and socket.
    pub fn spawn_agent(&self) -> io::Result<(u32, UnixStream)> {
        let mut control = self.control.lock().unwrap_or_else(PoisonError::into_inner);
        control.write_all(&[SPAWN])?;
        let mut pid = [0u8; 4];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut ancillary = RecvAncillaryBuffer::new(&mut space);
        let received = recvmsg(
            &*control,
            &mut [IoSliceMut::new(&mut pid)],
            &mut ancillary,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        let mut fd = None;
        for message in ancillary.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                for received_fd in fds {
                    fd.get_or_insert(received_fd);
                }
            }
        }
        if received.bytes != 4 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the launcher is gone",
            ));
        }
        let pid = u32::from_be_bytes(pid);
        match fd {
            Some(fd) if pid != 0 => Ok((pid, UnixStream::from(fd))),
            _ => Err(io::Error::other("the launcher could not start an agent")),
        }
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        // Closing the control socket makes the launcher stop its agents and
        // exit; wait for it so that no zombie is left.
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = self
            .control
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .shutdown(std::net::Shutdown::Both);
        let _ = child.wait();
    }
}
