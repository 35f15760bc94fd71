#!/usr/bin/env bash
# Tries the HTTP APIs against their own OpenAPI documents with Schemathesis
# (4.x), a tool nobody here wrote: the directory's `/api/v3/openapi.json`,
# and a node's admin API (`/admin/v1/openapi.json`, with the node's bearer
# token). Every check is on (`--checks all`); the few expectations widened
# for operations a fuzzer cannot sign for are in scripts/schemathesis/*.toml,
# each with its reason. Exits non-zero on any failure.
#
#   scripts/schemathesis.sh
#
# Settings (environment):
#   EXAMPLES=50       generated cases per operation and phase (--max-examples)
#   SEED=1            Schemathesis' random seed (a fixed seed: CI reruns the
#                     same cases; set SEED= for a fresh draw)
#   SKIP_BUILD=1      use the `openred` binary already in target/debug
#   KEEP=1            keep the work directory (logs, reports)
#
# Installs Schemathesis with pip in a venv under ~/.cache (once; later runs
# reuse it), builds `openred`, starts a directory and a node on free
# loopback ports with fresh data directories (--danger-allow-private-addresses,
# as in README "Running your own"), and stops everything it started on exit.
# Only 127.0.0.1 is contacted, apart from the package index on the first run.
set -euo pipefail
cd "$(dirname "$0")/.."

EXAMPLES=${EXAMPLES:-50}
SEED=${SEED-1}
TARGET=${CARGO_TARGET_DIR:-target}/debug
VENV=${XDG_CACHE_HOME:-$HOME/.cache}/openred-schemathesis/venv
ST=$VENV/bin/st

if ! "$ST" --version 2>/dev/null | grep -q 'version 4\.'; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet 'schemathesis>=4,<5'
fi
"$ST" --version

if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --quiet -p openred
fi
OPENRED=$TARGET/openred

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ -n "${KEEP:-}" ]; then
    echo "work directory kept: $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Polls `url` until it answers 200, for at most 60 s (a loaded machine).
wait_for() {
  local url=$1 deadline=$((SECONDS + 60))
  until curl -fsS -o /dev/null "$url" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "no answer from $url" >&2
      return 1
    fi
    sleep 0.2
  done
}

DIR_PORT=$(free_port)
DIR_URL=http://127.0.0.1:$DIR_PORT
"$OPENRED" --data "$WORK/directory" directory serve --listen "127.0.0.1:$DIR_PORT" \
  --danger-allow-private-addresses >"$WORK/directory.log" 2>&1 &
PIDS+=($!)
wait_for "$DIR_URL/api/v3/health"
FINGERPRINT=$(sed -n 's/^directory key fingerprint: //p' "$WORK/directory.log")

"$OPENRED" node init --data "$WORK/node" >/dev/null
NODE_PORT=$(free_port)
ADMIN_PORT=$(free_port)
"$OPENRED" node run --data "$WORK/node" --listen "127.0.0.1:$NODE_PORT" \
  --admin-listen "127.0.0.1:$ADMIN_PORT" --directory "$DIR_URL" --directory-key "$FINGERPRINT" \
  --danger-allow-private-addresses >"$WORK/node.log" 2>&1 &
PIDS+=($!)
ADMIN_URL=http://127.0.0.1:$ADMIN_PORT
wait_for "$ADMIN_URL/admin/v1/openapi.json"
TOKEN=$(cat "$WORK/node/admin.token")

COMMON=(--checks all --max-examples "$EXAMPLES" --workers 1 --no-color)
if [ -n "$SEED" ]; then
  COMMON+=(--seed "$SEED")
fi

# Schemathesis keeps a cache of failures (.schemathesis/) in its working
# directory: the work directory, not the checkout.
ROOT=$PWD
cd "$WORK"
status=0
echo "== the directory: $DIR_URL/api/v3/openapi.json"
"$ST" --config-file "$ROOT/scripts/schemathesis/directory.toml" run "${COMMON[@]}" \
  --url "$DIR_URL" --report junit --report-dir "$WORK/directory-report" \
  "$DIR_URL/api/v3/openapi.json" || status=1

echo "== the node's admin API: $ADMIN_URL/admin/v1/openapi.json"
"$ST" --config-file "$ROOT/scripts/schemathesis/admin.toml" run "${COMMON[@]}" \
  --url "$ADMIN_URL" --header "Authorization: Bearer $TOKEN" \
  --report junit --report-dir "$WORK/admin-report" \
  "$ADMIN_URL/admin/v1/openapi.json" || status=1

if [ "$status" -ne 0 ]; then
  echo "schemathesis: failures (see above)" >&2
fi
exit "$status"
