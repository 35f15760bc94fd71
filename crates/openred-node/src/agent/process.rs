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
//! socket pair as its standard input. The launcher exists because the
//! node, once confined, can no longer read the key directory, and a
//! process it spawned itself would inherit that confinement; agents started
//! by the launcher do not, and are outside the node's Landlock domain, so
//! the node cannot ptrace them either.

use std::ffi::OsStr;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
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

/// Starts `program` with `args`, one end of a new socket pair as its
/// standard input; returns the child and the other end.
pub fn spawn_with_socket(program: &Path, args: &[&OsStr]) -> io::Result<(Child, UnixStream)> {
    let (ours, theirs) = UnixStream::pair()?;
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .spawn()?;
    Ok((child, ours))
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

/// The launcher's loop: one agent per request on `control`, its socket end
/// passed back with SCM_RIGHTS and its pid as the 4 data bytes (0 and no
/// descriptor when it could not be started). Ends, stopping its agents,
/// when the node closes `control`.
pub fn run_launcher(control: UnixStream, program: &Path, key_dir: &Path) -> io::Result<()> {
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
        let started = spawn_with_socket(
            program,
            &[
                OsStr::new("agent"),
                OsStr::new("--keys"),
                key_dir_arg.as_os_str(),
            ],
        );
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
    /// Starts `program agent --launcher --keys KEY_DIR`.
    pub fn start(program: &Path, key_dir: &Path) -> io::Result<Launcher> {
        let (child, control) = spawn_with_socket(
            program,
            &[
                OsStr::new("agent"),
                OsStr::new("--launcher"),
                OsStr::new("--keys"),
                key_dir.as_os_str(),
            ],
        )?;
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
