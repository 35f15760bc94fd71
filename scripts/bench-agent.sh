#!/usr/bin/env bash
# Benchmark of the crypto agent's overhead:
#
#  1. a signature through the agent process next to the same request
#     handled in process, on the same keys, interleaved in rounds: latency
#     of one call (p50/p90/p99), signatures/s with 1, 4 and 16 concurrent
#     callers, raw Ed25519 signing and bare socket round trips for
#     reference (crates/openred/examples/bench_agent.rs);
#  2. introduction latency with every node's keys in an agent process, then
#     with the keys in process (`danger_in_process_crypto`), same setup
#     otherwise (crates/openred/examples/bench_introductions.rs).
#
#   scripts/bench-agent.sh
#
# Settings (environment):
#   SAMPLES=2000        timed calls per operation, mode and round
#   ROUNDS=5            rounds (each measures both modes, order alternating)
#   PACED=500           timed calls after an idle pause, per mode and round
#   PAUSE_US=1000       that pause (the tokio timer makes it at least 1 ms)
#   CONCURRENCY=1,4,16  concurrent callers for the throughput runs
#   SECONDS_PER_RUN=1   seconds per throughput run
#   INTRO_COUNT=500     introductions timed, per mode
#   NODES=10            nodes for the introductions
#   TARGET_US=30        the overhead target (µs, p50)
#   SKIP_BUILD=1        use what is already built
#   KEEP=1              keep the work directory (raw outputs, summaries)
#   NICE=-10            run the measured processes at this nice level (root)
#
# Builds in release mode, contacts only 127.0.0.1. After the first build it
# runs in about a minute; every step is bounded by `timeout`. Run it as
# `setsid -w env NICE=-10 scripts/bench-agent.sh` on a shared machine, and
# do not edit the script while it runs (bash reads it as it goes).
# Figures and how to read them: docs/BENCHMARKS.md, "The crypto agent".
set -euo pipefail
cd "$(dirname "$0")/.."

SAMPLES=${SAMPLES:-2000}
ROUNDS=${ROUNDS:-5}
PACED=${PACED:-500}
PAUSE_US=${PAUSE_US:-1000}
CONCURRENCY=${CONCURRENCY:-1,4,16}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-1}
INTRO_COUNT=${INTRO_COUNT:-500}
NODES=${NODES:-10}
TARGET_US=${TARGET_US:-30}
TARGET=${CARGO_TARGET_DIR:-target}/release

. scripts/bench/common.sh

WORK=$(mktemp -d "${TMPDIR:-/tmp}/openred-bench-agent.XXXXXX")
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
    timeout 1800 cargo build --release -p openred --bin openred \
        --example bench_agent --example bench_introductions
fi
OPENRED=$TARGET/openred
AGENT=$TARGET/examples/bench_agent
INTRO=$TARGET/examples/bench_introductions
for f in "$OPENRED" "$AGENT" "$INTRO"; do
    [ -x "$f" ] || fail "$f is not built"
done

cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
{
    echo "date        $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "machine     $(nproc) CPUs, $cpu_model, $(uname -r)"
    echo "rustc       $(rustc --version)"
    if git rev-parse --git-dir >/dev/null 2>&1; then
        echo "commit      $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo ' (+ local changes)')"
    fi
    echo "load        $(cut -d' ' -f1-3 /proc/loadavg) (before)"
} | tee "$WORK/header.txt"

# The run's length grows with the settings: rounds x (latency + throughput).
IFS=, read -r -a levels <<< "$CONCURRENCY"
bound=$(awk -v r="$ROUNDS" -v n="${#levels[@]}" -v s="$SECONDS_PER_RUN" -v k="$SAMPLES" \
    -v p="$PACED" -v w="$PAUSE_US" \
    'BEGIN { printf "%d", 60 + r * (2 * n * s * 1.5 + k * 0.002 + 2 * p * (w / 1e6 + 0.003)) }')
log "agent vs in process: $ROUNDS rounds, $SAMPLES samples, concurrency $CONCURRENCY (bound ${bound} s)"
timeout "$bound" "${RUN[@]}" "$AGENT" --samples "$SAMPLES" --rounds "$ROUNDS" \
    --paced-samples "$PACED" --pause-us "$PAUSE_US" \
    --concurrency "$CONCURRENCY" --seconds "$SECONDS_PER_RUN" --target-us "$TARGET_US" \
    --agent-program "$OPENRED" --summary "$WORK/agent.tsv" | tee "$WORK/agent.txt"

log "introductions with crypto agents: $INTRO_COUNT over $NODES nodes"
timeout 150 "${RUN[@]}" "$INTRO" --count "$INTRO_COUNT" --nodes "$NODES" --split 0 \
    --agent-program "$OPENRED" --summary "$WORK/intro-agent.tsv" | tee "$WORK/intro-agent.txt"

log "introductions with the keys in process: $INTRO_COUNT over $NODES nodes"
timeout 150 "${RUN[@]}" "$INTRO" --count "$INTRO_COUNT" --nodes "$NODES" --split 0 \
    --in-process --summary "$WORK/intro-inproc.tsv" | tee "$WORK/intro-inproc.txt"
echo "load        $(cut -d' ' -f1-3 /proc/loadavg) (after)" | tee -a "$WORK/header.txt"

# The summary: figure, target, verdict.
get() { awk -F'\t' -v k="$2" '$2 == k { print $3 }' "$1"; }
a() { get "$WORK/agent.tsv" "$1"; }
verdict() { # value op limit
    awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN {
        if (v == "") { print "n/a"; exit }
        ok = (op == "<=") ? (v + 0 <= l + 0) : (v + 0 >= l + 0)
        print ok ? "met" : "MISSED" }'
}
diff_of() { awk -v x="$1" -v y="$2" 'BEGIN { if (x == "" || y == "") print ""; else printf "%.3f", x - y }'; }
ratio_of() { awk -v x="$1" -v y="$2" 'BEGIN { if (x == "" || y == "" || y == 0) print ""; else printf "%.2f", x / y }'; }

echo
echo "Summary"
printf '%-60s %12s %12s  %s\n' "figure" "value" "target" "verdict"
row() { printf '%-60s %12s %12s  %s\n' "$1" "$2" "${3:-}" "${4:-}"; }
cat "$WORK/header.txt" | sed 's/^/  /'
row "sign_connection_request p50, agent (µs)" "$(a sign_agent_p50_us)"
row "sign_connection_request p50, in process (µs)" "$(a sign_inproc_p50_us)"
overhead=$(a overhead_p50_us)
row "agent overhead p50 (µs)" "$overhead" "<= $TARGET_US" "$(verdict "$overhead" '<=' "$TARGET_US")"
row "  overhead, lowest / highest round (µs)" "$(a overhead_round_min_us) / $(a overhead_round_max_us)"
row "sign_connection_request p90 / p99, agent (µs)" "$(a sign_agent_p90_us) / $(a sign_agent_p99_us)"
row "sign_connection_request p90 / p99, in process (µs)" "$(a sign_inproc_p90_us) / $(a sign_inproc_p99_us)"
row "sign_connection_request p50 after idling, agent / in process (µs)" \
    "$(a sign_paced_agent_p50_us) / $(a sign_paced_inproc_p50_us)"
row "  overhead after idling (µs)" "$(a paced_overhead_p50_us)"
row "agent_status p50, agent / in process (µs)" "$(a status_agent_p50_us) / $(a status_inproc_p50_us)"
row "sign_record p50, agent / in process (µs)" "$(a record_agent_p50_us) / $(a record_inproc_p50_us)"
row "raw Ed25519 sign p50 (µs)" "$(a raw_sign_p50_us)"
row "socket round trip p50, no work: threads / tokio / agent's shape (µs)" \
    "$(a floor_threads_rtt_p50_us) / $(a floor_tokio_rtt_p50_us) / $(a floor_handoff_rtt_p50_us)"
for c in "${levels[@]}"; do
    ta=$(a "tput_agent_c${c}_per_s")
    ti=$(a "tput_inproc_c${c}_per_s")
    row "signatures/s, $c callers, agent / in process" "$(printf '%.0f / %.0f' "${ta:-0}" "${ti:-0}")"
    row "  ratio agent / in process" "$(ratio_of "$ta" "$ti")"
    row "  CPU µs per signature, agent (node + agent) / in process" \
        "$(awk -v n="$(a "cpu_agent_c${c}_node_us")" -v g="$(a "cpu_agent_c${c}_agent_us")" 'BEGIN { printf "%.1f", n + g }') / $(a "cpu_inproc_c${c}_us")"
done
row "raw Ed25519 signatures/s, one thread" "$(printf '%.0f' "$(a raw_sign_per_s)")"
ia=$(get "$WORK/intro-agent.tsv" p50_ms)
ii=$(get "$WORK/intro-inproc.tsv" p50_ms)
row "introduction p50, agent (ms)" "$ia"
row "introduction p50, in process (ms)" "$ii"
row "  difference (ms)" "$(diff_of "$ia" "$ii")"
row "introduction p99, agent / in process (ms)" "$(get "$WORK/intro-agent.tsv" p99_ms) / $(get "$WORK/intro-inproc.tsv" p99_ms)"
row "CPU per introduction, agent (this process only) / in process (ms)" \
    "$(get "$WORK/intro-agent.tsv" cpu_ms) / $(get "$WORK/intro-inproc.tsv" cpu_ms)"
