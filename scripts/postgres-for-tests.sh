#!/usr/bin/env bash
# Installs (Debian packages) and starts a local PostgreSQL on 127.0.0.1:5432
# for the test suite, idempotently, and prints the URL to export as
# OPENRED_TEST_POSTGRES_URL. The role may create databases: each test makes
# its own, so tests run in parallel without sharing state.
set -euo pipefail

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
fi

version=$(ls /usr/lib/postgresql | sort -n | tail -n 1)
if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -q "^$version main$"; then
  pg_createcluster "$version" main >&2
fi
if ! pg_lsclusters -h | awk -v v="$version" '$1==v && $2=="main" {print $4}' | grep -q online; then
  pg_ctlcluster "$version" main start >&2
fi

for _ in $(seq 1 30); do
  su postgres -c "psql -qtAc 'SELECT 1'" >/dev/null 2>&1 && break
  sleep 1
done

# Databases left by earlier test runs (each test makes one).
for db in $(su postgres -c "psql -qtAc \"SELECT datname FROM pg_database WHERE datname ~ '^openred_t_[0-9a-f]{16}\$'\""); do
  su postgres -c "dropdb --if-exists '$db'" >&2
done

su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='openred_test'\"" | grep -q 1 ||
  su postgres -c "psql -qc \"CREATE ROLE openred_test LOGIN CREATEDB PASSWORD 'openred_test'\"" >&2
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='openred_test'\"" | grep -q 1 ||
  su postgres -c "createdb -O openred_test openred_test" >&2

echo "postgres://openred_test:openred_test@127.0.0.1:5432/openred_test"
