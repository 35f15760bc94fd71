#!/usr/bin/env bash
# Load benchmark of the directory: single-node lookups and signed
# registrations with NODES registered nodes, next to an axum hello-world
# server measured in the same run on the same machine (the framework's
# ceiling). Figures and how to read them: docs/BENCHMARKS.md.
#
#   scripts/bench-directory.sh
#
# Settings (environment):
#   NODES=100000      registered nodes
#   ROUNDS=3          rounds of hello-world, lookups, registrations
#   DURATION=10       seconds of each GET run
#   REG_DURATION=10   seconds of each registration run
#   THREADS=2 CONNECTIONS=64   wrk's -t and -c
#   BREAKDOWN=0       skip timing the parts of a registration without HTTP
#   SKIP_BUILD=1      use the binaries already in target/release
#   KEEP=1            keep the work directory (logs, wrk output, results.tsv)
#   NICE=-10          run servers, fixture and wrk at this nice level, so that
#                     other work on a shared machine disturbs less (root
#                     only). With the kernel's autogroups on, nice only acts
#                     within a session, so start the script as a session
#                     leader for it to matter (`setsid -w scripts/...`); it
#                     then gives its own session's autogroup that nice too.
#
# Installs wrk and curl from Debian's packages if missing, builds in release
# mode, starts both servers on free loopback ports with a fresh data
# directory, and stops everything it started on exit. Only 127.0.0.1 is
# contacted. After the first build it runs in about four minutes.
#
# Each round runs hello-world, then lookups, then registrations, so slow
# drift of a shared machine hits all three alike; the summary gives the
# median of the rounds for each column.
set -euo pipefail
cd "$(dirname "$0")/.."

NODES=${NODES:-100000}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
REG_DURATION=${REG_DURATION:-10}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
TARGET=${CARGO_TARGET_DIR:-target}/release
LUA=scripts/bench/replay.lua
TIMEFORMAT='%U %S' # `time` prints the client's CPU seconds
CLK_TCK=$(getconf CLK_TCK)

. scripts/bench/common.sh

if ! command -v wrk >/dev/null || ! command -v curl >/dev/null; then
  log "installing wrk and curl (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq wrk curl >&2
fi

if [ -z "${SKIP_BUILD:-}" ]; then
  log "building (release)"
  cargo build --release --quiet -p openred
  cargo build --release --quiet -p openred-directory --example bench_fixture --example hello_world
fi
FIXTURE=$TARGET/examples/bench_fixture

WORK=$(mktemp -d "${TMPDIR:-/tmp}/openred-bench.XXXXXX")
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME COMMAND...: runs a server that prints "listening on URL" and
# sets STARTED_PID and STARTED_URL once it does.
start() {
  local name=$1
  shift
  "${RUN[@]}" "$@" >"$WORK/$name.out" 2>"$WORK/$name.log" &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
  for _ in $(seq 1 300); do
    STARTED_URL=$(sed -n 's/^listening on //p' "$WORK/$name.out")
    [ -n "$STARTED_URL" ] && return 0
    kill -0 "$STARTED_PID" 2>/dev/null || { cat "$WORK/$name.log" >&2; fail "$name exited"; }
    sleep 0.1
  done
  fail "$name did not start within 30 s"
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# User and system ticks of the whole machine, to show how much CPU other
# processes took. Interrupt time is left out: on loopback much of it is this
# benchmark's own packets, not charged to any process.
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 }' /proc/stat; }

registrations_ok() {
  curl -fsS "$DIRECTORY_URL/metrics" |
    awk '/^openred_directory_registrations_total\{.*outcome="ok"/ { n += $NF } END { print n + 0 }'
}

# measure ROUND NAME SERVER_PID SECONDS URL LUA_ARGS...: one wrk run; appends
# a row to $WORK/results.tsv.
measure() {
  local round=$1 name=$2 pid=$3 seconds=$4 url=$5
  shift 5
  local before after machine_before machine_after result ok_before=0 ok_after=0
  [ "$name" = registrations ] && ok_before=$(registrations_ok)
  before=$(cpu_ticks "$pid")
  machine_before=$(machine_ticks)
  { time "${RUN[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${seconds}s" --latency -s "$LUA" "$url" -- "$@" \
      >"$WORK/wrk.out" 2>&1; } 2>"$WORK/time.out"
  after=$(cpu_ticks "$pid")
  machine_after=$(machine_ticks)
  [ "$name" = registrations ] && ok_after=$(registrations_ok)
  result=$(grep '^RESULT' "$WORK/wrk.out") || { cat "$WORK/wrk.out" >&2; fail "wrk failed"; }
  [ "$round" = warmup ] && return 0
  field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$result"; }
  local secs rps server_cores wrk_cores other_cores
  secs=$(field seconds)
  rps=$(field rps)
  if [ "$name" = registrations ]; then
    [ "$(field wrapped)" = 0 ] || log "warning: wrk ran out of signed bodies; repeats answered 409"
    # Only committed registrations count, as the directory itself counted them.
    rps=$(awk -v n=$((ok_after - ok_before)) -v s="$secs" 'BEGIN { printf "%.1f", n / s }')
  fi
  server_cores=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v s="$secs" 'BEGIN { printf "%.2f", t / hz / s }')
  wrk_cores=$(awk -v s="$secs" '{ printf "%.2f", ($1 + $2) / s }' "$WORK/time.out")
  other_cores=$(awk -v t=$((machine_after - machine_before)) -v hz="$CLK_TCK" -v s="$secs" \
    -v a="$server_cores" -v b="$wrk_cores" 'BEGIN { o = t / hz / s - a - b; printf "%.2f", o < 0 ? 0 : o }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$rps" \
    "$(field p50_ms)" "$(field p90_ms)" "$(field p99_ms)" "$(field non2xx)" \
    "$server_cores" "$wrk_cores" "$other_cores" | tee -a "$WORK/results.tsv" >&2
}

log "starting hello-world and the directory (fresh data directory, rate limits off)"
start hello "$TARGET/examples/hello_world" 127.0.0.1:0
HELLO_PID=$STARTED_PID
HELLO_URL=$STARTED_URL
cat >"$WORK/directory.toml" <<'EOF'
[directory.rate_limits]
enabled = false
EOF
start directory "$TARGET/openred" directory serve --listen 127.0.0.1:0 --data "$WORK/data" \
  --danger-allow-private-addresses --config "$WORK/directory.toml"
DIRECTORY_PID=$STARTED_PID
DIRECTORY_URL=$STARTED_URL

log "registering $NODES nodes (seq 1)"
# First registrations: the fixture also answers the directory's reachability
# challenges, and writes the node URLs that later heartbeats must repeat.
SEED=$("${RUN[@]}" "$FIXTURE" seed --url "$DIRECTORY_URL" --nodes "$NODES" \
  --concurrency "$CONNECTIONS" --node-urls-out "$WORK/node-urls.txt" | tee /dev/stderr)
"$FIXTURE" ids --nodes "$NODES" --out "$WORK/ids.txt"
printf '/\n' >"$WORK/hello.txt"

log "warming up"
measure warmup hello "$HELLO_PID" 2 "$HELLO_URL" get "$WORK/hello.txt" "$THREADS"
measure warmup lookups "$DIRECTORY_PID" 2 "$DIRECTORY_URL" get "$WORK/ids.txt" "$THREADS" /api/v3/nodes/

printf 'round\tbenchmark\treq/s\tp50_ms\tp90_ms\tp99_ms\tnon2xx\tserver_cores\twrk_cores\tother_cores\n' |
  tee "$WORK/results.tsv" >&2
for round in $(seq 1 "$ROUNDS"); do
  measure "$round" hello "$HELLO_PID" "$DURATION" "$HELLO_URL" get "$WORK/hello.txt" "$THREADS"
  measure "$round" lookups "$DIRECTORY_PID" "$DURATION" "$DIRECTORY_URL" \
    get "$WORK/ids.txt" "$THREADS" /api/v3/nodes/
  # Heartbeats (same URL and key, next seq), freshly signed each round:
  # issued_at must be within 300 s of the directory's clock, and every
  # node's seq must grow. Two records a node (2 x NODES bodies) is more than
  # one run can send.
  "$FIXTURE" bodies --nodes "$NODES" --from-seq $((2 * round)) --to-seq $((2 * round + 1)) \
    --node-urls "$WORK/node-urls.txt" --out "$WORK/bodies.txt" 2>/dev/null
  measure "$round" registrations "$DIRECTORY_PID" "$REG_DURATION" \
    "$DIRECTORY_URL/api/v3/nodes/register" post "$WORK/bodies.txt" "$THREADS"
done

if [ "${BREAKDOWN:-1}" != 0 ]; then
  log "timing the parts of a registration in-process (no HTTP)"
  BREAKDOWN_OUT=$(TMPDIR="$WORK" "${RUN[@]}" "$FIXTURE" breakdown --nodes "$NODES" --concurrency "$CONNECTIONS")
fi

median() { # median of column $2 for benchmark $1
  awk -F'\t' -v b="$1" -v c="$2" 'NR > 1 && $2 == b { print $c }' "$WORK/results.tsv" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

{
  echo
  echo "Directory benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git describe --always --dirty 2>/dev/null || echo '?')"
  echo "Machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), $(uname -sr)"
  echo "Load: $(wrk --version 2>&1 | head -n 1 | cut -d' ' -f1-2), -t$THREADS -c$CONNECTIONS, ${DURATION} s GET / ${REG_DURATION} s POST runs, $ROUNDS rounds, $NODES nodes${NICE:+, nice $NICE}"
  echo "Seed: $(head -n 1 <<<"$SEED")"
  echo
  echo "| Benchmark | requests/s | p50 ms | p90 ms | p99 ms | non-2xx | server cores | wrk cores | other cores |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  for b in hello lookups registrations; do
    label=$b
    [ "$b" = hello ] && label="axum hello-world"
    [ "$b" = lookups ] && label="directory lookups (GET /api/v3/nodes/{id})"
    [ "$b" = registrations ] && label="directory registrations (POST, signed, SQLite)"
    printf '| %s | %.0f | %s | %s | %s | %s | %s | %s | %s |\n' "$label" "$(median "$b" 3)" \
      "$(median "$b" 4)" "$(median "$b" 5)" "$(median "$b" 6)" "$(median "$b" 7)" \
      "$(median "$b" 8)" "$(median "$b" 9)" "$(median "$b" 10)"
  done
  echo
  hello=$(median hello 3)
  lookups=$(median lookups 3)
  registrations=$(median registrations 3)
  awk -v h="$hello" -v l="$lookups" -v r="$registrations" 'BEGIN {
    printf "lookups / hello-world: %.0f%% (target >= 50%%: %s)\n", 100 * l / h, (l >= h / 2 ? "met" : "NOT met")
    printf "registrations: %.0f/s (target >= 5000/s: %s)\n", r, (r >= 5000 ? "met" : "NOT met")
  }'
  if [ -n "${BREAKDOWN_OUT:-}" ]; then
    echo
    echo "Registration parts, in-process, no HTTP:"
    sed 's/^/  /' <<<"$BREAKDOWN_OUT"
  fi
  echo
  echo "(medians of $ROUNDS rounds, each column separately; registrations/s counts only"
  echo " registrations the directory committed, from its openred_directory_registrations_total;"
  echo " cores: CPU time / wall time; other = the rest of the machine, i.e. noise)"
} | tee "$WORK/summary.md"
