#!/usr/bin/env bash
# Benchmarks of introductions and the P2P session layer:
#
#  1. introduction latency: a directory and NODES nodes in one process on
#     loopback, COUNT introductions, each timed from `NodeState::connect`
#     (request-connection) to the session established, and to the session
#     confirmed by the first encrypted ping
#     (crates/openred/examples/bench_introductions.rs);
#  2. session frame throughput, seal + open at 1 KiB and 64 KiB for
#     ChaCha20-Poly1305 and AES-256-GCM, next to `openssl speed -aead` for
#     the same AEADs, run by the same bench binary in the same run
#     (crates/openred-core/benches/frames.rs).
#
#   scripts/bench-p2p.sh
#
# Settings (environment):
#   COUNT=1000          introductions timed
#   NODES=10            nodes (introductions cycle over every ordered pair)
#   SPLIT=200           samples of each part of an introduction (0: skip)
#   TMPFS=1             also run the introductions with the SQLite files on
#                       /dev/shm (no fsync cost): a diagnostic, not the figure
#   FRAME_SECONDS=1.5   seconds per frame measurement
#   OPENSSL_SECONDS=2   seconds per `openssl speed` run
#   SKIP_BUILD=1        use what is already built
#   KEEP=1              keep the work directory (raw outputs, summaries)
#   NICE=-10            run the measured processes at this nice level (root)
#
# Installs openssl from Debian's packages if missing, builds in release
# mode, contacts only 127.0.0.1. After the first build it runs in about two
# minutes; every step is bounded by `timeout`, the whole in under 5 minutes.
# Figures and how to read them: docs/BENCHMARKS.md, "Introductions and P2P sessions".
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-1000}
NODES=${NODES:-10}
SPLIT=${SPLIT:-200}
TMPFS=${TMPFS:-1}
FRAME_SECONDS=${FRAME_SECONDS:-1.5}
OPENSSL_SECONDS=${OPENSSL_SECONDS:-2}
TARGET=${CARGO_TARGET_DIR:-target}/release

. scripts/bench/common.sh

if ! command -v openssl >/dev/null; then
    log "installing openssl"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y openssl >/dev/null; then
        apt-get update >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y openssl >/dev/null
    fi
fi
command -v openssl >/dev/null || fail "openssl is missing"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/openred-bench-p2p.XXXXXX")
cleanup() {
    if [ -n "${KEEP:-}" ]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

if [ -z "${SKIP_BUILD:-}" ]; then
    log "building (release)"
    cargo build --release -p openred --example bench_introductions
    cargo bench -p openred-core --bench frames --no-run
fi
INTRO=$TARGET/examples/bench_introductions
[ -x "$INTRO" ] || fail "$INTRO is not built"

cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
{
    echo "date        $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "machine     $(nproc) CPUs, $cpu_model, $(uname -r)"
    echo "rustc       $(rustc --version)"
    echo "openssl     $(openssl version)"
    echo "load        $(cut -d' ' -f1-3 /proc/loadavg) (before)"
} | tee "$WORK/header.txt"

log "introductions: $COUNT over $NODES nodes, SQLite in ${TMPDIR:-/tmp}"
timeout 150 "${RUN[@]}" "$INTRO" --count "$COUNT" --nodes "$NODES" --split "$SPLIT" \
    --summary "$WORK/intro.tsv" | tee "$WORK/intro.txt"

if [ "$TMPFS" = 1 ] && [ -d /dev/shm ]; then
    log "introductions again, SQLite on /dev/shm (diagnostic: no fsync cost)"
    timeout 120 "${RUN[@]}" "$INTRO" --count "$COUNT" --nodes "$NODES" --split 0 \
        --data-dir /dev/shm --summary "$WORK/intro-tmpfs.tsv" | tee "$WORK/intro-tmpfs.txt"
fi

log "session frames and openssl speed"
timeout 240 "${RUN[@]}" cargo bench -q -p openred-core --bench frames -- \
    --seconds "$FRAME_SECONDS" --openssl-seconds "$OPENSSL_SECONDS" \
    --summary "$WORK/frames.tsv" | tee "$WORK/frames.txt"
echo "load        $(cut -d' ' -f1-3 /proc/loadavg) (after)" | tee -a "$WORK/header.txt"

# The summary: figure, target, verdict.
get() { awk -F'\t' -v k="$2" '$2 == k { print $3 }' "$1"; }
fget() { awk -F'\t' -v s="$1" -v z="$2" -v k="$3" '$2 == s && $3 == z && $4 == k { print $5 }' "$WORK/frames.tsv"; }
verdict() { # value op limit
    awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN {
        if (v == "") { print "n/a"; exit }
        ok = (op == "<=") ? (v + 0 <= l + 0) : (v + 0 >= l + 0)
        print ok ? "met" : "MISSED" }'
}

echo
echo "Summary"
printf '%-60s %12s %12s  %s\n' "figure" "value" "target" "verdict"
row() { printf '%-60s %12s %12s  %s\n' "$1" "$2" "${3:-}" "${4:-}"; }
p50=$(get "$WORK/intro.tsv" p50_ms)
p99=$(get "$WORK/intro.tsv" p99_ms)
row "introduction p50 (ms)" "$p50" "<= 3" "$(verdict "$p50" '<=' 3)"
row "introduction p90 (ms)" "$(get "$WORK/intro.tsv" p90_ms)"
row "introduction p99 (ms)" "$p99" "<= 15" "$(verdict "$p99" '<=' 15)"
row "introduction max (ms)" "$(get "$WORK/intro.tsv" max_ms)"
row "introduction mean (ms)" "$(get "$WORK/intro.tsv" mean_ms)"
row "introduction + confirming ping p50 (ms)" "$(get "$WORK/intro.tsv" confirmed_p50_ms)"
row "introduction + confirming ping p99 (ms)" "$(get "$WORK/intro.tsv" confirmed_p99_ms)"
row "introductions/s (one at a time)" "$(get "$WORK/intro.tsv" per_s)"
row "CPU per introduction, whole process (ms)" "$(get "$WORK/intro.tsv" cpu_ms)"
if [ -s "$WORK/intro-tmpfs.tsv" ]; then
    row "introduction p50, SQLite on tmpfs (ms)" "$(get "$WORK/intro-tmpfs.tsv" p50_ms)"
    row "introduction p99, SQLite on tmpfs (ms)" "$(get "$WORK/intro-tmpfs.tsv" p99_ms)"
    row "CPU per introduction, SQLite on tmpfs (ms)" "$(get "$WORK/intro-tmpfs.tsv" cpu_ms)"
fi
for part in directory token_open handshake_cpu sqlite_write ping http_rtt; do
    v=$(get "$WORK/intro.tsv" "split_${part}_p50_ms")
    [ -n "$v" ] && row "  part p50: $part (ms)" "$v"
done
for suite in chacha20-poly1305 aes-256-gcm; do
    for size in 1024 65536; do
        kib=$((size / 1024))
        row "$suite ${kib} KiB frames seal+open (MB/s)" "$(fget "$suite" "$size" 'frame seal+open MB/s')"
        row "$suite ${kib} KiB frames seal+open (frames/s)" "$(fget "$suite" "$size" 'frame seal+open frames/s')"
        row "$suite ${kib} KiB openssl enc+dec (MB/s)" "$(fget "$suite" "$size" 'openssl e+d MB/s')"
        ratio=$(fget "$suite" "$size" 'ratio frames e+d / openssl e+d')
        if [ "$size" = 65536 ]; then
            row "$suite ${kib} KiB ratio frames / openssl" "$ratio" ">= 0.70" "$(verdict "$ratio" '>=' 0.70)"
        else
            row "$suite ${kib} KiB ratio frames / openssl" "$ratio"
        fi
        row "$suite ${kib} KiB ratio raw ring AEAD / openssl" "$(fget "$suite" "$size" 'ratio ring e+d / openssl e+d')"
        row "$suite ${kib} KiB ratio RustCrypto / openssl (previous)" "$(fget "$suite" "$size" 'ratio rustcrypto e+d / openssl e+d')"
    done
done
