#!/usr/bin/env python3
"""The floor under any file transfer: a plain copy over loopback TCP.

    scripts/plain-copy.py SRC DST read|sendfile

Sends SRC over one TCP connection on 127.0.0.1 and writes what arrives
to DST, then fsyncs it: the kernel work every file transfer between two
processes does (read the file, send, receive, write the file), with no
encryption, no hashing and no protocol. `read` reads the file into a
1 MiB buffer and sends it, as a sender that must encrypt has to;
`sendfile` lets the kernel send from the page cache without the copy to
user space, the least work any sender can do. The receiver reads into
one 1 MiB buffer and writes it out. Prints MB/s (10^6 bytes per second)
from the first byte asked for to the fsync's end.

scripts/bench-files.sh runs it in the same sitting as iperf3 and OpenRed,
so that the ratio OpenRed / plain copy shows what the protocol costs on
top of the copy itself.
"""
import os
import socket
import sys
import time

BUF = 1 << 20


def send(port: int, src: str, size: int, mode: str) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    with open(src, "rb") as f:
        if mode == "sendfile":
            off = 0
            while off < size:
                off += os.sendfile(s.fileno(), f.fileno(), off, size - off)
        else:
            buf = bytearray(BUF)
            view = memoryview(buf)
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                s.sendall(view[:n])
    s.close()


def receive(listener: socket.socket, dst: str, size: int) -> None:
    conn, _ = listener.accept()
    buf = bytearray(BUF)
    view = memoryview(buf)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    got = 0
    try:
        while got < size:
            n = conn.recv_into(view)
            if not n:
                break
            os.write(fd, view[:n])
            got += n
        os.fsync(fd)
    finally:
        os.close(fd)
    if got != size:
        sys.exit(f"received {got} of {size} bytes")


def main() -> None:
    src, dst, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode not in ("read", "sendfile"):
        sys.exit("mode: read or sendfile")
    size = os.path.getsize(src)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    start = time.perf_counter()
    child = os.fork()
    if child == 0:
        send(port, src, size, mode)
        os._exit(0)
    receive(listener, dst, size)
    elapsed = time.perf_counter() - start
    _, status = os.waitpid(child, 0)
    if status != 0:
        sys.exit("the sender failed")
    print(f"{size / elapsed / 1e6:.1f}")


if __name__ == "__main__":
    main()
