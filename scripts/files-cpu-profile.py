#!/usr/bin/env python3
"""Where the CPU time of a file transfer goes, per byte.

    scripts/files-cpu-profile.py PERF_DATA BYTES SENDER_PID RECEIVER_PID [HZ]

PERF_DATA is a system-wide recording taken during the transfer
(`perf record -F 2000 -a`; scripts/bench-files.sh makes one with PERF=1).
System-wide, because `perf record -p` misses threads started after it
attaches, such as a download's hasher. Each sample of the two node
processes is put in a category by its leaf symbol; a sample is 1/HZ
seconds of CPU, so a category costs samples / HZ / BYTES seconds per byte.
Prints ns per byte per category and per thread, for each side.
"""
import collections
import subprocess
import sys

CATEGORIES = [
    ("BLAKE3", ["blake3"]),
    ("AES-GCM / ChaCha20-Poly1305", ["aes_gcm", "gcm_", "aesni", "ghash", "chacha", "poly1305"]),
    ("kernel copy to user (sender: pread; receiver: recv)", ["_copy_to_iter", "copy_page_to_iter"]),
    ("kernel copy from user (sender: send)", ["_copy_from_iter"]),
    ("kernel copy into the file (receiver: write)", ["copy_folio_from_iter"]),
    ("page cache / tmpfs pages: allocation, accounting", [
        "shmem", "folio", "rmqueue", "alloc_pages", "page_from_freelist", "memcg",
        "_lru", "list_del", "vm_enough", "dquot", "percpu_counter", "xas_",
        "alloc_frozen", "charge", "_raw_spin_unlock_irq", "filemap_", "free_frozen",
        "free_pcp", "clear_page"]),
    ("memmove / memcpy (user)", ["memmove", "memcpy"]),
    ("memset (user)", ["memset"]),
]


def main() -> None:
    data, size, sender, receiver = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
    hz = float(sys.argv[5]) if len(sys.argv) > 5 else 2000.0
    side = {sender: "sender", receiver: "receiver"}
    out = subprocess.run(
        ["perf", "script", "-i", data, "-F", "pid,tid,ip,sym", "-G"],
        capture_output=True, text=True, check=True,
    ).stdout
    per_category = collections.Counter()
    per_thread = collections.Counter()
    total = collections.Counter()
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 2 or "/" not in parts[0]:
            continue
        pid, tid = parts[0].split("/", 1)
        if pid not in side:
            continue
        ip = parts[1]
        sym = parts[2] if len(parts) > 2 else "?"
        s = side[pid]
        total[s] += 1
        per_thread[(s, tid)] += 1
        kernel = ip.startswith("ffff")
        category = "other kernel (TCP, syscalls, scheduling)" if kernel else "other user"
        for name, patterns in CATEGORIES:
            if any(p in sym for p in patterns):
                category = name
                break
        per_category[(s, category)] += 1
    ns = 1e9 / hz / size
    for s in ("sender", "receiver"):
        print(f"{s}: {total[s] * ns:.2f} ns/B")
        for (owner, category), n in per_category.most_common():
            if owner == s:
                print(f"  {category:52s} {n * ns:.3f}")
        for (owner, tid), n in per_thread.most_common():
            if owner == s and n * ns >= 0.01:
                print(f"  thread {tid:>8s}{'':44s} {n * ns:.3f}")


if __name__ == "__main__":
    main()
