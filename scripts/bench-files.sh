#!/usr/bin/env bash
# Benchmark of file sharing: a SIZE file (1 GiB by default) from one
# `openred node run` to another on loopback, encrypted, verified and
# flushed to disk, next to, in the same run, iperf3 on loopback, scp of
# the same file through a local OpenSSH server, and a plain copy of it over
# loopback TCP into the same folder (scripts/plain-copy.py: no encryption,
# no hashing, the floor under any transfer).
#
#   scripts/bench-files.sh
#
# Prints, for each: MB/s (10^6 bytes per second); for OpenRed also the peak
# resident memory (VmHWM) of both node processes, and the ratios to iperf3
# scp and the plain copy. Targets (issue 6): at least 40 % of iperf3, faster than scp,
# peak RSS at most 64 MiB on each side.
#
# Settings (environment):
#   SIZE=1073741824   bytes in the file
#   IPERF_SECONDS=5   length of the iperf3 run
#   OUT_DIR=          where OpenRed writes the file received (default: the
#                     work folder, on the disk; /dev/shm shows the transfer
#                     without the disk)
#   SKIP_BUILD=1      use what is already built
#   OPENRED=          the binary to run (default: the release build); to
#                     compare two builds in one sitting
#   PERF=1            record the fetch with `perf record -a` and print where
#                     each side's CPU time goes, in ns per byte
#                     (scripts/files-cpu-profile.py)
#   KEEP=1            keep the work directory
#
# Installs iperf3 and openssh-server with apt-get when missing, starts
# sshd on 127.0.0.1 on a spare port with a throwaway host key and a
# throwaway authorized key in a temporary folder (never the system's), and
# iperf3 on 127.0.0.1; stops them at the end. Contacts only 127.0.0.1.
# Figures and how to read them: docs/BENCHMARKS.md, "File sharing".
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE=${SIZE:-1073741824}
IPERF_SECONDS=${IPERF_SECONDS:-5}
TARGET=${CARGO_TARGET_DIR:-target}/release
OPENRED=${OPENRED:-$TARGET/openred}

. scripts/bench/common.sh

need=()
command -v iperf3 >/dev/null || need+=(iperf3)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v scp >/dev/null || need+=(openssh-client)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ -z "${SKIP_BUILD:-}" ] && [ "$OPENRED" = "$TARGET/openred" ]; then
  log "building (release)"
  timeout 1800 cargo build --release --quiet -p openred --bin openred
fi
[ -x "$OPENRED" ] || fail "$OPENRED is missing"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/openred-bench-files.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; [ -n "${OUT:-}" ] && rm -rf "$OUT"; else log "kept $WORK"; fi
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  fail "nothing listens on 127.0.0.1:$1"
}
now() { date +%s.%N; }
mbps() { python3 -c "print(f'{$1 / ($2) / 1e6:.1f}')"; }

mkdir -p "$WORK/shared"
# Made before the nodes start: a confined node writes only in folders that
# existed when it started.
OUT=${OUT_DIR:-$WORK}/openred-out.$$
mkdir -p "$OUT"
FILE=$WORK/shared/file.bin
log "writing a $SIZE-byte file of random bytes"
head -c "$SIZE" /dev/urandom >"$FILE"

# --- iperf3 on loopback ---------------------------------------------------
log "iperf3 on 127.0.0.1 ($IPERF_SECONDS s)"
IPERF_PORT=$(free_port)
iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT" >/dev/null 2>&1 &
PIDS+=($!)
# Not by connecting: iperf3 would take the probe for a client.
for _ in $(seq 1 200); do
  ss -Hltn "sport = :$IPERF_PORT" | grep -q . && break
  sleep 0.05
done
timeout 60 iperf3 -c 127.0.0.1 -p "$IPERF_PORT" -t "$IPERF_SECONDS" -J >"$WORK/iperf3.json"
IPERF_MBPS=$(python3 -c "import json; d=json.load(open('$WORK/iperf3.json')); print(f\"{d['end']['sum_received']['bits_per_second'] / 8e6:.1f}\")")

# --- scp through a throwaway sshd on 127.0.0.1 -----------------------------
log "scp through sshd on 127.0.0.1"
SSH_PORT=$(free_port)
mkdir -p "$WORK/ssh" /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$WORK/ssh/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/ssh/client_key"
cp "$WORK/ssh/client_key.pub" "$WORK/ssh/authorized_keys"
chmod 600 "$WORK/ssh/authorized_keys"
cat >"$WORK/ssh/sshd_config" <<CONF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $WORK/ssh/host_key
AuthorizedKeysFile $WORK/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile $WORK/ssh/sshd.pid
Subsystem sftp internal-sftp
CONF
/usr/sbin/sshd -f "$WORK/ssh/sshd_config" -D -e 2>"$WORK/ssh/sshd.log" &
PIDS+=($!)
wait_port "$SSH_PORT"
SSH_OPTS=(-P "$SSH_PORT" -i "$WORK/ssh/client_key" -o BatchMode=yes
  -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR)
# Into the same folder as OpenRed's copy; timed to scp's exit (the data
# in the page cache) and to the end of an fsync of the copy (on the disk,
# as OpenRed's figure is).
SCP_OUT=$OUT/scp.bin
t0=$(now)
timeout 600 scp -q "${SSH_OPTS[@]}" "$FILE" "$(id -un)@127.0.0.1:$SCP_OUT"
t1=$(now)
sync "$SCP_OUT"
t2=$(now)
SCP_S=$(python3 -c "print($t1 - $t0)")
SCP_SYNC_S=$(python3 -c "print($t2 - $t0)")
cmp -s "$FILE" "$SCP_OUT" || fail "scp's copy differs"
SCP_CIPHER=$(ssh -G -p "$SSH_PORT" 127.0.0.1 2>/dev/null | awk '/^ciphers /{print $2}' | cut -d, -f1)
rm -f "$SCP_OUT"
SCP_MBPS=$(mbps "$SIZE" "$SCP_S")
SCP_SYNC_MBPS=$(mbps "$SIZE" "$SCP_SYNC_S")

# --- plain copy over loopback into the same folder as OpenRed's -----------
log "plain copy over loopback TCP (read/send, then sendfile)"
PLAIN_READ_MBPS=$(timeout 600 scripts/plain-copy.py "$FILE" "$OUT/plain.bin" read)
cmp -s "$FILE" "$OUT/plain.bin" || fail "the plain copy differs"
rm -f "$OUT/plain.bin"
PLAIN_SENDFILE_MBPS=$(timeout 600 scripts/plain-copy.py "$FILE" "$OUT/plain.bin" sendfile)
rm -f "$OUT/plain.bin"

# --- OpenRed: a directory and two confined nodes ---------------------------
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
log "OpenRed: directory and two nodes"
export OPENRED_LOG=warn
"$OPENRED" directory serve --listen 127.0.0.1:0 --danger-allow-private-addresses \
  --data "$WORK/directory" >"$WORK/directory.out" 2>"$WORK/directory.err" &
PIDS+=($!)
for _ in $(seq 1 200); do grep -q '^listening on ' "$WORK/directory.out" 2>/dev/null && break; sleep 0.05; done
DIRECTORY=$(sed -n 's/^listening on //p' "$WORK/directory.out")
KEY=$(sed -n 's/^directory key fingerprint: //p' "$WORK/directory.out")
[ -n "$DIRECTORY" ] && [ -n "$KEY" ] || fail "the directory did not start"
declare -A NODE_PID
for n in a b; do
  "$OPENRED" node init --data "$WORK/$n" >/dev/null
  "$OPENRED" node run --data "$WORK/$n" --listen 127.0.0.1:0 --directory "$DIRECTORY" \
    --directory-key "$KEY" --danger-allow-private-addresses >"$WORK/$n.out" 2>"$WORK/$n.err" &
  NODE_PID[$n]=$!
  PIDS+=($!)
done
for n in a b; do
  for _ in $(seq 1 300); do
    "$OPENRED" --data "$WORK/$n" status --json 2>/dev/null | grep -q '"registered": true' && break
    sleep 0.1
  done
done
A_ID=$("$OPENRED" node id --data "$WORK/a")
B_ID=$("$OPENRED" node id --data "$WORK/b")
log "sharing (hashes the file once)"
t0=$(now)
FILE_ID=$("$OPENRED" --data "$WORK/a" --json file share "$FILE" --to "$B_ID" | python3 -c 'import json,sys; print(json.load(sys.stdin)["share"]["file_id"])')
t1=$(now)
SHARE_S=$(python3 -c "print($t1 - $t0)")
cpu() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }
A_CPU0=$(cpu "${NODE_PID[a]}"); B_CPU0=$(cpu "${NODE_PID[b]}")
if [ -n "${PERF:-}" ]; then
  # System-wide: `-p` would miss the threads a download starts.
  perf record -F 2000 -a -o "$WORK/perf.data" >/dev/null 2>&1 &
  PERF_PID=$!
  sleep 0.5
fi
log "fetching"
t0=$(now)
"$OPENRED" --data "$WORK/b" file fetch "$A_ID" "$FILE_ID" --out "$OUT/file.bin" >"$WORK/fetch.jsonl"
t1=$(now)
if [ -n "${PERF:-}" ]; then kill -INT "$PERF_PID"; wait "$PERF_PID" || true; fi
WALL_S=$(python3 -c "print($t1 - $t0)")
A_CPU=$(python3 -c "print(f'{$(cpu "${NODE_PID[a]}") - $A_CPU0:.2f}')")
B_CPU=$(python3 -c "print(f'{$(cpu "${NODE_PID[b]}") - $B_CPU0:.2f}')")
NODE_S=$(tail -1 "$WORK/fetch.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["elapsed_s"])')
hwm() { awk '/^VmHWM:/{print int($2/1024)}' "/proc/$1/status"; }
A_HWM=$(hwm "${NODE_PID[a]}")
B_HWM=$(hwm "${NODE_PID[b]}")
cmp -s "$FILE" "$OUT/file.bin" || fail "OpenRed's copy differs"
WALL_MBPS=$(mbps "$SIZE" "$WALL_S")
NODE_MBPS=$(mbps "$SIZE" "$NODE_S")
SUITE=$("$OPENRED" --data "$WORK/b" status --json | python3 -c 'import json,sys; s=json.load(sys.stdin)["sessions"]; print(s[0]["suite"] if s else "?")')

OUT_FS=$(df --output=fstype "$OUT" | tail -1)
# The files module's default chunk_suite is `auto`: AES-256-GCM where the
# CPU has AES instructions.
if grep -qw aes /proc/cpuinfo && grep -qw pclmulqdq /proc/cpuinfo; then CHUNKS=aes-256-gcm; else CHUNKS=chacha20-poly1305; fi
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
cat <<OUT

File sharing benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r)
file: $SIZE bytes of random data, in the page cache for every tool

| tool | seconds | MB/s | notes |
|---|---|---|---|
| iperf3 (loopback, ${IPERF_SECONDS} s, 1 stream) | $IPERF_SECONDS | $IPERF_MBPS | memory to memory |
| scp (OpenSSH, 127.0.0.1) | $(printf %.2f "$SCP_S") | $SCP_MBPS | cipher $SCP_CIPHER, into $OUT_FS, timed to its exit (the page cache) |
| scp, then fsync of the copy | $(printf %.2f "$SCP_SYNC_S") | $SCP_SYNC_MBPS | the same, timed until the copy is on the disk |
| plain copy, read/send (no crypto, no hash) | | $PLAIN_READ_MBPS | loopback TCP into $OUT_FS, fsynced |
| plain copy, sendfile (no crypto, no hash) | | $PLAIN_SENDFILE_MBPS | the same, the sender's file read left to the kernel |
| OpenRed file fetch, node's own timing | $(printf %.2f "$NODE_S") | $NODE_MBPS | link request to verified, fsynced and renamed in $OUT_FS; session $SUITE, chunks $CHUNKS |
| OpenRed file fetch, CLI wall time | $(printf %.2f "$WALL_S") | $WALL_MBPS | plus the CLI start and its 200 ms polling |

OpenRed / iperf3: $(ratio "$NODE_MBPS" "$IPERF_MBPS") (target >= 0.40)
OpenRed / scp:    $(ratio "$NODE_MBPS" "$SCP_MBPS"); / scp then fsync: $(ratio "$NODE_MBPS" "$SCP_SYNC_MBPS") (target > 1)
plain copy / iperf3: read/send $(ratio "$PLAIN_READ_MBPS" "$IPERF_MBPS"), sendfile $(ratio "$PLAIN_SENDFILE_MBPS" "$IPERF_MBPS")
OpenRed / plain copy: read/send $(ratio "$NODE_MBPS" "$PLAIN_READ_MBPS"), sendfile $(ratio "$NODE_MBPS" "$PLAIN_SENDFILE_MBPS")
peak RSS (VmHWM): sender $A_HWM MiB, receiver $B_HWM MiB (target <= 64 MiB each)
CPU seconds during the fetch: sender $A_CPU, receiver $B_CPU (2 cores: at most $(printf %.2f "$(python3 -c "print(2 * $WALL_S)")") in all)
load average before the OpenRed run: $LOAD
sharing (BLAKE3 of the file, once, on the sender): $(printf %.2f "$SHARE_S") s
OUT
if [ -n "${PERF:-}" ]; then
  echo
  echo "CPU per byte during the fetch (perf, leaf symbols):"
  scripts/files-cpu-profile.py "$WORK/perf.data" "$SIZE" "${NODE_PID[a]}" "${NODE_PID[b]}"
fi
