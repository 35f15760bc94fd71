#!/usr/bin/env bash
# Benchmark of the messaging module between two nodes on loopback, next to
# an axum hello-world measured in the same run
# (crates/openred/examples/bench_messaging.rs):
#
#  - pipelined messaging: MESSAGES messages through Messaging::send, from
#    the first send until A's outbox has them all delivered (acknowledged
#    by B after its inbox commit): messages/s, also from B's side;
#  - round trips, one at a time: one message frame (seal, POST
#    /p2p/message, B commits to its inbox, receipt), and send -> delivered
#    through the outbox;
#  - the same client against a bare axum hello-world (in the benchmark's
#    process, and the hello_world example in its own process), an axum
#    POST of a frame-sized body and an encrypted ping, sequentially and
#    with CONCURRENCY requests in flight: where the time goes.
#
#   scripts/bench-messaging.sh
#
# Settings (environment):
#   MESSAGES=50000     messages in the pipelined run (and requests per
#                      concurrent run of the other measurements)
#   SAMPLES=2000       sequential round trips timed per kind
#   SEND_SAMPLES=300   messages timed one at a time from send to delivered
#   CONCURRENCY=64     requests in flight (the module's in_flight_per_peer)
#   SENDERS=512        concurrent Messaging::send callers
#   BODY_BYTES=100     length of each message's text
#   ROUNDS=1           rounds (rates: median of the rounds)
#   DATA_DIR=          where the nodes' SQLite files go (default: TMPDIR or
#                      /tmp, i.e. the disk: the durable figure)
#   SHM=1              also run with the data in /dev/shm (SHM=0: skip)
#   HELLO_EXT=1        also time the hello_world example in its own process
#   AGENT=1            keys in crypto agent processes (default: in process;
#                      messages never use the keys)
#   TARGET_RATE=20000 TARGET_P50_MS=1   the issue's targets
#   SKIP_BUILD=1       use what is already built
#   KEEP=1             keep the work directory (raw outputs, summaries)
#   NICE=-10           run the measured processes at this nice level (root;
#                      start the script with `setsid -w` for it to matter,
#                      see scripts/bench-directory.sh)
#
# Builds in release mode (CARGO_TARGET_DIR is honoured), installs nothing,
# contacts only 127.0.0.1. After the first build one pass takes about a
# minute with the defaults; every step is bounded by `timeout`.
# Figures and how to read them: docs/BENCHMARKS.md, "Messaging".
set -euo pipefail
cd "$(dirname "$0")/.."

MESSAGES=${MESSAGES:-50000}
SAMPLES=${SAMPLES:-2000}
SEND_SAMPLES=${SEND_SAMPLES:-300}
CONCURRENCY=${CONCURRENCY:-64}
SENDERS=${SENDERS:-512}
BODY_BYTES=${BODY_BYTES:-100}
ROUNDS=${ROUNDS:-1}
DATA_DIR=${DATA_DIR:-${TMPDIR:-/tmp}}
SHM=${SHM:-1}
HELLO_EXT=${HELLO_EXT:-1}
TARGET_RATE=${TARGET_RATE:-20000}
TARGET_P50_MS=${TARGET_P50_MS:-1}
TARGET=${CARGO_TARGET_DIR:-target}/release

. scripts/bench/common.sh

if [ -z "${SKIP_BUILD:-}" ]; then
  log "building (release)"
  bins=()
  [ -n "${AGENT:-}" ] && bins=(--bin openred)
  timeout 1800 cargo build --release --quiet -p openred "${bins[@]}" --example bench_messaging
  if [ "$HELLO_EXT" != 0 ]; then
    timeout 1800 cargo build --release --quiet -p openred-directory --example hello_world
  fi
fi
BENCH=$TARGET/examples/bench_messaging
HELLO=$TARGET/examples/hello_world
[ -x "$BENCH" ] || fail "$BENCH is not built"
[ "$HELLO_EXT" = 0 ] || [ -x "$HELLO" ] || fail "$HELLO is not built (or set HELLO_EXT=0)"
[ -z "${AGENT:-}" ] || [ -x "$TARGET/openred" ] || fail "$TARGET/openred is not built"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/openred-bench-messaging.XXXXXX")
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
{
  echo "date        $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "machine     $(nproc) CPUs, $cpu_model, $(uname -r)"
  echo "rustc       $(rustc --version)"
  if git rev-parse --git-dir >/dev/null 2>&1; then
    echo "commit      $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo ' (+ local changes)')"
  fi
  fs=$(df -PT "$DATA_DIR" | awk 'NR == 2 { print $2 }')
  if [ "$SHM" != 0 ]; then
    echo "data        $DATA_DIR ($fs), then /dev/shm (tmpfs)"
  else
    echo "data        $DATA_DIR ($fs)"
  fi
  echo "settings    MESSAGES=$MESSAGES SAMPLES=$SAMPLES SEND_SAMPLES=$SEND_SAMPLES CONCURRENCY=$CONCURRENCY SENDERS=$SENDERS BODY_BYTES=$BODY_BYTES ROUNDS=$ROUNDS${AGENT:+ AGENT=1}${NICE:+ NICE=$NICE}"
  echo "load        $(cut -d' ' -f1-3 /proc/loadavg) (before)"
} | tee "$WORK/header.txt"

ARGS=(--messages "$MESSAGES" --samples "$SAMPLES" --send-samples "$SEND_SAMPLES"
  --concurrency "$CONCURRENCY" --senders "$SENDERS" --body-bytes "$BODY_BYTES"
  --rounds "$ROUNDS" --target-rate "$TARGET_RATE" --target-p50-ms "$TARGET_P50_MS")
[ -n "${AGENT:-}" ] && ARGS+=(--agent --agent-program "$TARGET/openred")

if [ "$HELLO_EXT" != 0 ]; then
  # As scripts/bench-directory.sh runs it: its own process, port 0, it
  # prints "listening on URL".
  "${RUN[@]}" "$HELLO" 127.0.0.1:0 >"$WORK/hello.out" 2>"$WORK/hello.log" &
  PIDS+=("$!")
  HELLO_URL=
  for _ in $(seq 1 100); do
    HELLO_URL=$(sed -n 's/^listening on //p' "$WORK/hello.out")
    [ -n "$HELLO_URL" ] && break
    kill -0 "${PIDS[-1]}" 2>/dev/null || { cat "$WORK/hello.log" >&2; fail "hello_world exited"; }
    sleep 0.1
  done
  [ -n "$HELLO_URL" ] || fail "hello_world did not start within 10 s"
  ARGS+=(--hello-url "$HELLO_URL")
fi

# Generous: a few seconds per 10,000 requests of each kind and round.
bound=$(awk -v m="$MESSAGES" -v s="$SAMPLES" -v k="$SEND_SAMPLES" -v r="$ROUNDS" \
  'BEGIN { printf "%d", 120 + r * (6 * m / 1000 + 6 * s * 0.005 + k * 0.05) }')

passes=(disk)
[ "$SHM" != 0 ] && [ -d /dev/shm ] && [ -w /dev/shm ] && passes+=(shm)
for pass in "${passes[@]}"; do
  dir=$DATA_DIR
  [ "$pass" = shm ] && dir=/dev/shm
  log "messaging benchmark, data in $dir (bound ${bound} s)"
  timeout "$bound" "${RUN[@]}" "$BENCH" "${ARGS[@]}" --data-dir "$dir" \
    --summary "$WORK/$pass.tsv" | tee "$WORK/$pass.txt"
done
echo "load        $(cut -d' ' -f1-3 /proc/loadavg) (after)" | tee -a "$WORK/header.txt"

# The summary: figure per pass, target, verdict.
get() { [ -f "$WORK/$1.tsv" ] && awk -F'\t' -v k="$2" '$2 == k { v = $3 } END { print v }' "$WORK/$1.tsv"; }
verdict() { # value op limit
  awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN {
    if (v == "" || v == "nan" || v == "NaN") { print "n/a"; exit }
    ok = (op == "<=") ? (v + 0 <= l + 0) : (v + 0 >= l + 0)
    print ok ? "met" : "MISSED" }'
}
fmt() { awk -v v="$1" -v f="$2" 'BEGIN { if (v == "") print "-"; else printf f, v }'; }
pct() { awk -v v="$1" 'BEGIN { if (v == "") print "-"; else printf "%.1f%%", 100 * v }'; }

{
  echo
  echo "Summary"
  sed 's/^/  /' "$WORK/header.txt"
  printf '%-58s %14s %14s %12s  %s\n' "figure" "disk" "/dev/shm" "target" "verdict (disk)"
  row() { # label key format [op target]
    local d s
    d=$(get disk "$2")
    s=$(get shm "$2")
    printf '%-58s %14s %14s %12s  %s\n' "$1" "$(fmt "$d" "$3")" "$(fmt "$s" "$3")" \
      "${4:+$4 $5}" "$([ -n "${4:-}" ] && verdict "$d" "$4" "$5")"
  }
  row "messaging pipelined, msg/s (send -> delivered)" module_per_s '%.0f' '>=' "$TARGET_RATE"
  row "  from B's side, msg/s (first -> last inbox commit)" module_b_per_s '%.0f'
  row "  into A's outbox, msg/s (all sends returned)" module_enqueue_per_s '%.0f'
  row "  CPU µs per message (whole process)" module_cpu_us '%.1f'
  row "  cores used" module_cores '%.2f'
  row "  delivery retries" module_retries '%.0f'
  row "message exchanges/s, $CONCURRENCY in flight (no outbox)" exchange_per_s '%.0f'
  row "encrypted pings/s, $CONCURRENCY in flight (no storage)" ping_per_s '%.0f'
  row "axum POST /echo req/s, $CONCURRENCY in flight" echo_per_s '%.0f'
  row "axum hello-world req/s, $CONCURRENCY in flight" hello_per_s '%.0f'
  row "axum hello-world req/s, own process" hello_ext_per_s '%.0f'
  row "exchange round trip p50, ms (seal, POST, commit, receipt)" exchange_rtt_p50_ms '%.3f' '<=' "$TARGET_P50_MS"
  row "exchange round trip p99, ms" exchange_rtt_p99_ms '%.3f'
  row "send -> delivered p50, ms (outbox, 4 commits)" send_delivered_rtt_p50_ms '%.3f'
  row "send -> delivered p99, ms" send_delivered_rtt_p99_ms '%.3f'
  row "send -> in B's inbox p50, ms" send_inbox_rtt_p50_ms '%.3f'
  row "encrypted ping round trip p50, ms" ping_rtt_p50_ms '%.3f'
  row "axum POST /echo round trip p50, ms" echo_rtt_p50_ms '%.3f'
  row "axum hello-world round trip p50, ms" hello_rtt_p50_ms '%.3f'
  row "axum hello-world round trip p99, ms" hello_rtt_p99_ms '%.3f'
  row "axum hello-world, own process, round trip p50, ms" hello_ext_rtt_p50_ms '%.3f'
  printf '%-58s %14s %14s\n' "ratio: pipelined messaging / hello-world req/s" \
    "$(pct "$(get disk module_vs_hello)")" "$(pct "$(get shm module_vs_hello)")"
  printf '%-58s %14s %14s\n' "ratio: message exchanges / hello-world req/s" \
    "$(pct "$(get disk exchange_vs_hello)")" "$(pct "$(get shm exchange_vs_hello)")"
  printf '%-58s %14s %14s\n' "ratio: exchange / hello-world round trip p50" \
    "$(fmt "$(get disk exchange_rtt_vs_hello)" '%.1fx')" "$(fmt "$(get shm exchange_rtt_vs_hello)" '%.1fx')"
  printf '%-58s %14s %14s\n' "ratio: send -> delivered / hello-world round trip p50" \
    "$(fmt "$(get disk send_rtt_vs_hello)" '%.1fx')" "$(fmt "$(get shm send_rtt_vs_hello)" '%.1fx')"
} | tee "$WORK/summary.txt"
